// Steps on the gateway's local panel that several scenarios share.

import { check, expectText, eventually } from '../lib/harness.mjs';

/** Logs in on the panel's login page; returns once the main page shows. */
export async function panelLogin(page, url, password) {
  await page.goto(`${url}/login`);
  await page.fill('#login input[name=password]', password);
  await Promise.all([
    page.waitForURL((u) => u.pathname === '/', { timeout: 15000 }),
    page.click('#login button[type=submit]'),
  ]);
  await expectText(page.locator('#live-status'), /^live$/, 'the panel follows the gateway live');
}

/** Fails if the page is wider than its window (horizontal scrolling). */
export async function noHorizontalScroll(page, what) {
  const { width, inner } = await page.evaluate(() => ({
    width: document.documentElement.scrollWidth,
    inner: window.innerWidth,
  }));
  check(width <= inner, `${what}: the page is ${width} px wide in a ${inner} px window (horizontal scrolling)`);
}

/** Every button and form control is at least `min` px tall: touchable. */
export async function bigTouchTargets(page, what, min = 44) {
  const small = await page.$$eval('button, input:not([type=hidden]), a.button, .main-nav a', (nodes, least) => nodes
    .filter((n) => n.offsetParent !== null)
    .map((n) => ({ text: (n.textContent || n.name || '').trim(), h: n.getBoundingClientRect().height }))
    .filter((n) => n.h < least), min);
  check(small.length === 0, `${what}: controls smaller than ${min} px: ${JSON.stringify(small)}`);
}

/** The switch as the panel shows it: true for on. */
export async function switchShows(page) {
  return (await page.getAttribute('#switch-button', 'aria-checked')) === 'true';
}

/** Waits for the switch to show `on`. */
export async function expectSwitch(page, on, message) {
  await eventually(async () => (await switchShows(page)) === on, `${message}: the switch should show ${on ? 'on' : 'off'}`);
  await expectText(page.locator('#switch-state'), on ? /^ON$/ : /^OFF$/, message);
}

/** The card of a session in a section (`waiting`, `active`) by its id. */
export function sessionCard(page, section, id) {
  return page.locator(`#${section} article[data-session="${id}"]`);
}
