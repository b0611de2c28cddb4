// Steps on the cloud's web console that several scenarios share.

import { check, expectText, eventually } from '../lib/harness.mjs';

/** Logs in on the login page; returns once the next page has loaded. */
export async function login(page, url, name, password, { totp } = {}) {
  await page.goto(`${url}/login`);
  await page.fill('#login input[name=name]', name);
  await page.fill('#login input[name=password]', password);
  if (totp) {
    await page.click('#login button[type=submit]');
    await page.waitForSelector('#totp-field:not([hidden])');
    await page.fill('#login input[name=totp]', totp);
  }
  await Promise.all([
    page.waitForURL((u) => !u.pathname.startsWith('/login'), { timeout: 15000 }),
    page.click('#login button[type=submit]'),
  ]);
}

/** The first-login page: replaces the one-time password. */
export async function choosePassword(page, oneTime, password) {
  check(new URL(page.url()).pathname === '/password', `expected the password page, got ${page.url()}`);
  await page.fill('#password-form input[name=current]', oneTime);
  await page.fill('#password-form input[name=new]', password);
  await page.fill('#password-form input[name=again]', password);
  await Promise.all([
    page.waitForURL((u) => u.pathname === '/sessions', { timeout: 15000 }),
    page.click('#password-form button[type=submit]'),
  ]);
}

/** The main navigation's labels. */
export async function navLabels(page) {
  return page.$$eval('.main-nav a', (links) => links.map((a) => a.textContent.trim()));
}

/** The row of the sessions table for the session named `name`. */
export function sessionRow(page, name) {
  return page.locator(`#sessions tbody tr[data-session="${name}"]`);
}

/** Waits for a session row to show a state (the badge's data-state). */
export async function expectSessionState(page, name, state, message) {
  await eventually(
    async () => (await sessionRow(page, name).getAttribute('data-state', { timeout: 1000 })) === state,
    `${message}: session "${name}" should be ${state}`,
  );
}

/** The session's id from its row's details link. */
export async function sessionId(page, name) {
  const href = await sessionRow(page, name).locator('a[href^="/sessions/"]').first().getAttribute('href');
  return Number(href.split('/').pop());
}

/** A problem box's text, once it shows. */
export async function problemText(locator, pattern, message) {
  return expectText(locator, pattern, message);
}

/** Browser errors every console scenario expects: Chrome logs refused
 *  requests (4xx) as console errors, and the refusals are the point. */
export const expectedRefusals = (problem) => /Failed to load resource: the server responded with a status of (40[1349]|409)/.test(problem);
