// TOTP enrolment in the console: a QR code drawn by the server and the
// secret; the code confirms it; from then on the login asks for a code,
// refuses a wrong one, and lets the right one in.

import { check, env, expectText, scenario, totp } from '../lib/harness.mjs';
import { expectedRefusals, login } from './common.mjs';

const url = env('FERRY_URL');
const pin = env('FERRY_PIN');
const user = env('FERRY_USER');
const password = env('FERRY_USER_PASSWORD');

await scenario('totp', async (t) => {
  await t.trust(url, pin);
  const page = await t.page('user');
  let secret;

  await t.step('enrolment shows a QR code and the secret', async () => {
    await login(page, url, user, password);
    await page.goto(`${url}/account`);
    await expectText(page.locator('#totp-state'), /off/, 'two-factor login is off');
    await page.click('#totp-start');
    secret = await expectText(page.locator('#totp-secret'), /^[A-Z2-7]{16,}$/, 'the secret shows');
    await page.waitForFunction(() => {
      const img = document.querySelector('#totp-qr');
      return img && img.complete && img.naturalWidth >= 200;
    });
    const qr = await page.evaluate(async () => {
      const response = await fetch(document.querySelector('#totp-qr').src);
      return { type: response.headers.get('content-type'), text: await response.text() };
    });
    check(qr.type === 'image/svg+xml' && qr.text.includes('<svg'), `the QR code is an SVG image: ${qr.type}`);
    await t.screenshot(page, 'totp-enrolment');
  });

  await t.step('the code from the secret turns it on', async () => {
    await page.fill('#totp-confirm input[name=code]', totp(secret));
    await page.click('#totp-confirm button[type=submit]');
    await expectText(page.locator('#totp-state'), /is on/, 'two-factor login is on');
  });

  await t.step('the login then asks for the code', async () => {
    await Promise.all([page.waitForURL((u) => u.pathname === '/login'), page.click('#logout')]);
    await page.fill('#login input[name=name]', user);
    await page.fill('#login input[name=password]', password);
    await page.click('#login button[type=submit]');
    await page.waitForSelector('#totp-field:not([hidden])');
    await expectText(page.locator('#login .problem'), /TOTP code required/, 'the page asks for the code');
    await t.screenshot(page, 'login-totp');
    await page.fill('#login input[name=totp]', '000000' === totp(secret) ? '111111' : '000000');
    await page.click('#login button[type=submit]');
    await expectText(page.locator('#login .problem'), /Wrong TOTP code/, 'a wrong code is refused');
    // The enrolment used this 30-second step's code; a code can be used once,
    // so the login takes the next step's (accepted within one step of skew).
    await page.fill('#login input[name=totp]', totp(secret, Date.now() + 30000));
    await Promise.all([
      page.waitForURL((u) => u.pathname === '/sessions'),
      page.click('#login button[type=submit]'),
    ]);
    await t.screenshot(page, 'logged-in-with-totp');
  });

  t.noBrowserErrors(expectedRefusals);
});
