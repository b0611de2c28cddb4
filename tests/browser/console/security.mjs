// What a browser needs beyond the API's security: the headers on every
// console response, a Content-Security-Policy that stops injected script,
// no framing by another site, the session cookie's flags and nothing in
// web storage, the CSRF checks against a foreign origin, and a logout that
// ends the session at the server (the old cookie opens nothing after it).

import { check, env, eventually, expectText, request, scenario } from '../lib/harness.mjs';
import { expectedRefusals, login } from './common.mjs';

const url = env('FERRY_URL');
const pin = env('FERRY_PIN');
const user = env('FERRY_USER');
const password = env('FERRY_USER_PASSWORD');

const CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
  + "frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

function securityHeaders(headers, what, cache) {
  check(headers['content-security-policy'] === CSP, `${what}: Content-Security-Policy is "${headers['content-security-policy']}"`);
  check(headers['x-frame-options'] === 'DENY', `${what}: X-Frame-Options is "${headers['x-frame-options']}"`);
  check(headers['x-content-type-options'] === 'nosniff', `${what}: X-Content-Type-Options is "${headers['x-content-type-options']}"`);
  check(headers['referrer-policy'] === 'no-referrer', `${what}: Referrer-Policy is "${headers['referrer-policy']}"`);
  check(headers['cache-control'] === cache, `${what}: Cache-Control is "${headers['cache-control']}", not "${cache}"`);
}

await scenario('security', async (t) => {
  await t.trust(url, pin);
  const page = await t.page('user');
  let cookie;
  let csrf;

  await t.step('every console response carries the security headers', async () => {
    const loginPage = await page.goto(`${url}/login`);
    securityHeaders(loginPage.headers(), 'the login page', 'no-store');
    await login(page, url, user, password);
    const sessions = await page.goto(`${url}/sessions`);
    securityHeaders(sessions.headers(), 'the sessions page', 'no-store');
    const script = await page.getAttribute('script[src]', 'src');
    const style = await page.getAttribute('link[rel=stylesheet]', 'href');
    check(/^\/static\/console\.[0-9a-f]{16}\.js$/.test(script), `the script has a hashed name: ${script}`);
    for (const asset of [script, style]) {
      const answer = await request(`${url}${asset}`, { pin });
      check(answer.status === 200, `${asset}: ${answer.status}`);
      securityHeaders(answer.headers, asset, 'public, max-age=31536000, immutable');
      check(answer.headers.etag, `${asset} has an ETag`);
      const again = await request(`${url}${asset}`, { pin, headers: { 'If-None-Match': answer.headers.etag } });
      check(again.status === 304, `${asset} with its ETag: ${again.status}, not 304`);
    }
    const api = await request(`${url}/api/v1/version`, { pin });
    securityHeaders(api.headers, 'an API answer', 'no-store');
    const html = await page.content();
    check(!/<script(?![^>]*\bsrc=)[^>]*>/i.test(html), 'no inline script in the page');
    check(!/\sstyle=|<style/i.test(html), 'no inline style in the page');
    check(!/\son[a-z]+=/i.test(html), 'no inline event handler in the page');
  });

  await t.step('the policy stops injected script', async () => {
    const outcome = await page.evaluate(async () => {
      const violations = [];
      document.addEventListener('securitypolicyviolation', (e) => violations.push(e.violatedDirective));
      const inline = document.createElement('script');
      inline.textContent = 'window.__injected = "inline script ran";';
      document.body.append(inline);
      const img = document.createElement('img');
      img.setAttribute('src', 'data:,x');
      img.setAttribute('onerror', 'window.__injected = "handler ran"');
      document.body.append(img);
      const remote = document.createElement('script');
      remote.src = 'http://localhost:9/evil.js';
      document.body.append(remote);
      await new Promise((r) => setTimeout(r, 500));
      return { injected: window.__injected || null, violations };
    });
    check(outcome.injected === null, `injected script ran: ${outcome.injected}`);
    check(outcome.violations.some((d) => d.startsWith('script-src')), `the browser reported the violations: ${outcome.violations}`);
    t.takeProblems();
  });

  await t.step('the session cookie is HttpOnly, Secure, SameSite=Strict; nothing is in web storage', async () => {
    const cookies = await page.context().cookies(url);
    const session = cookies.find((c) => c.name === 'ferry_console');
    check(session, `no ferry_console cookie among ${cookies.map((c) => c.name)}`);
    check(session.httpOnly && session.secure && session.sameSite === 'Strict' && session.path === '/',
      `the cookie's flags: ${JSON.stringify({ ...session, value: '…' })}`);
    check(session.expires === -1, 'a session cookie (no lifetime of its own: the server ends it)');
    cookie = `ferry_console=${session.value}`;
    const seen = await page.evaluate(() => ({
      cookie: document.cookie, local: localStorage.length, session: sessionStorage.length,
      csrf: document.querySelector('meta[name=csrf-token]').content,
    }));
    check(!seen.cookie.includes('ferry_console'), 'the page\'s script cannot read the session cookie');
    check(seen.local === 0 && seen.session === 0, `web storage holds ${seen.local} + ${seen.session} items`);
    csrf = seen.csrf;
    check(/^[0-9a-f]{64}$/.test(csrf), 'the page carries its CSRF token');
  });

  await t.step('another site cannot frame the console', async () => {
    const site = await t.site({ '/': `<!doctype html><title>Framing</title><h1>Another site</h1><iframe src="${url}/sessions" width="800" height="400"></iframe>` });
    const framer = await page.context().newPage();
    framer.label = 'framer';
    await framer.goto(`${site}/`);
    await framer.waitForTimeout(500);
    const frame = framer.frames().find((f) => f !== framer.mainFrame());
    check(frame, 'the iframe exists');
    const loaded = await frame.$('.top').catch(() => null);
    check(!loaded, `the console rendered inside another site's frame (${frame.url()})`);
    await t.screenshot(framer, 'frame-refused');
    await framer.close();
    t.takeProblems();
  });

  await t.step('a request with the cookie and token but from another origin is refused', async () => {
    const headers = { Cookie: cookie, 'X-CSRF-Token': csrf, 'Content-Type': 'application/json' };
    const foreign = await request(`${url}/api/v1/me/totp`, { method: 'POST', pin, headers: { ...headers, Origin: 'https://evil.example' } });
    check(foreign.status === 403 && foreign.json.type === 'urn:ferry:problem:csrf-refused', `foreign Origin: ${foreign.status} ${foreign.body}`);
    const crossSite = await request(`${url}/api/v1/me/totp`, { method: 'POST', pin, headers: { ...headers, 'Sec-Fetch-Site': 'cross-site' } });
    check(crossSite.status === 403, `Sec-Fetch-Site cross-site: ${crossSite.status}`);
    const noOrigin = await request(`${url}/api/v1/me/totp`, { method: 'POST', pin, headers });
    check(noOrigin.status === 403, `no Origin at all: ${noOrigin.status}`);
    const reads = await request(`${url}/api/v1/auth/session`, { pin, headers: { Cookie: cookie } });
    check(reads.status === 200, `a read needs no token: ${reads.status}`);
  });

  await t.step('logout ends the session at the server', async () => {
    await page.goto(`${url}/sessions`);
    await Promise.all([page.waitForURL((u) => u.pathname === '/login'), page.click('#logout')]);
    await t.screenshot(page, 'logged-out');
    const replay = await request(`${url}/api/v1/auth/session`, { pin, headers: { Cookie: cookie } });
    check(replay.status === 401, `the old cookie after logout: ${replay.status}, not 401`);
    const pageReplay = await request(`${url}/sessions`, { pin, headers: { Cookie: cookie } });
    check(pageReplay.status === 303 && pageReplay.headers.location.startsWith('/login'),
      `a page with the old cookie: ${pageReplay.status} ${pageReplay.headers.location}`);
    const cookies = await page.context().cookies(url);
    check(!cookies.some((c) => c.name === 'ferry_console'), 'the browser dropped the cookie');
    await page.goto(`${url}/sessions`);
    await eventually(async () => new URL(page.url()).pathname === '/login', 'a logged-out browser is sent to the login page');
    await expectText(page.locator('h1'), /remote maintenance/, 'the login page');
  });

  t.noBrowserErrors(expectedRefusals);
});
