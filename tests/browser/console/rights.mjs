// A remoteConnect User sees only the sessions released to them and none of
// the admin pages; what the pages hide, the API refuses too; and a forged
// request fails: from the page without the CSRF token, or as a cross-site
// form post from another site.

import { check, env, expectText, scenario } from '../lib/harness.mjs';
import { expectSessionState, expectedRefusals, login, navLabels } from './common.mjs';

const url = env('FERRY_URL');
const pin = env('FERRY_PIN');
const user = env('FERRY_USER');
const password = env('FERRY_USER_PASSWORD');
const own = env('FERRY_OWN_SESSION');
const ownId = Number(env('FERRY_OWN_SESSION_ID'));
const other = env('FERRY_OTHER_SESSION');
const otherId = Number(env('FERRY_OTHER_SESSION_ID'));

await scenario('rights', async (t) => {
  await t.trust(url, pin);
  const page = await t.page('technician');

  await t.step('the technician sees only the session released to them', async () => {
    await login(page, url, user, password);
    await expectSessionState(page, own, 'prepared', 'their own session is listed');
    const names = await page.$$eval('#sessions tbody tr', (rows) => rows.map((r) => r.dataset.session));
    check(JSON.stringify(names) === JSON.stringify([own]), `only "${own}" is listed, not ${JSON.stringify(names)} (never "${other}")`);
    check(JSON.stringify(await navLabels(page)) === '["My sessions"]', 'no admin pages in the navigation');
    check((await page.locator('#prepare-panel').count()) === 0, 'no form to prepare sessions');
    await t.screenshot(page, 'remote-connect-user-sessions');
  });

  await t.step('the admin pages are refused', async () => {
    for (const path of ['/users', '/gateways', '/audit', '/relays']) {
      const response = await page.goto(`${url}${path}`);
      check(response.status() === 403, `${path} answers ${response.status()}, not 403`);
      await expectText(page.locator('.problem'), /Not allowed\. A remoteConnect User may not/, `${path} says why`);
    }
    await page.goto(`${url}/users`);
    await t.screenshot(page, 'remote-connect-user-forbidden');
    const response = await page.goto(`${url}/sessions/${otherId}`);
    check(response.status() === 200, 'the session page is a shell');
    await expectText(page.locator('#session-problem'), /Not allowed/, 'another user\'s session is refused on its page');
    await t.screenshot(page, 'remote-connect-user-other-session');
  });

  await t.step('the API refuses what the pages hide, and forged requests', async () => {
    await page.goto(`${url}/sessions`);
    const results = await page.evaluate(async ({ ownId, otherId }) => {
      const csrf = document.querySelector('meta[name=csrf-token]').content;
      const call = async (method, path, { token, body } = {}) => {
        const headers = { 'Content-Type': 'application/json' };
        if (token !== undefined) headers['X-CSRF-Token'] = token;
        const response = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined });
        const problem = await response.json().catch(() => null);
        return { status: response.status, type: problem && problem.type };
      };
      return {
        readOther: await call('GET', `/api/v1/sessions/${otherId}`),
        listUsers: await call('GET', '/api/v1/users'),
        listGateways: await call('GET', '/api/v1/gateways'),
        addUser: await call('POST', '/api/v1/users', { token: csrf, body: { name: 'mallory', role: 'administrator' } }),
        startOther: await call('POST', `/api/v1/sessions/${otherId}/start`, { token: csrf }),
        endOwnWithoutToken: await call('POST', `/api/v1/sessions/${ownId}/end`),
        addUserWithoutToken: await call('POST', '/api/v1/users', { body: { name: 'mallory', role: 'administrator' } }),
        startOwnWithWrongToken: await call('POST', `/api/v1/sessions/${ownId}/start`, { token: '0'.repeat(64) }),
      };
    }, { ownId, otherId });
    const expect = (name, status, type) => {
      const got = results[name];
      check(got.status === status && got.type === `urn:ferry:problem:${type}`,
        `${name}: expected ${status} ${type}, got ${got.status} ${got.type}`);
    };
    expect('readOther', 403, 'forbidden');
    expect('listUsers', 403, 'forbidden');
    expect('listGateways', 403, 'forbidden');
    expect('addUser', 403, 'forbidden');
    expect('startOther', 403, 'forbidden');
    expect('endOwnWithoutToken', 403, 'csrf-refused');
    expect('addUserWithoutToken', 403, 'csrf-refused');
    expect('startOwnWithWrongToken', 403, 'csrf-refused');
  });

  await t.step('a cross-site form post is refused', async () => {
    // The technician, logged in, visits another site whose page posts a
    // form to the console: starting the technician's own session.
    const attacker = await t.site({
      '/': `<!doctype html><title>Cheap spare parts</title>
        <form id="f" method="POST" action="${url}/api/v1/sessions/${ownId}/start"><input name="x" value="1"></form>
        <script>document.getElementById('f').submit();</script>`,
    });
    const visit = await page.context().newPage();
    visit.label = 'cross-site';
    const [response] = await Promise.all([
      visit.waitForResponse((r) => r.url().endsWith(`/api/v1/sessions/${ownId}/start`)),
      visit.goto(`${attacker}/`),
    ]);
    check([401, 403].includes(response.status()), `the forged post got ${response.status()}, not a refusal (401/403)`);
    await t.screenshot(visit, 'cross-site-form-refused');
    await visit.close();
    await page.reload();
    await expectSessionState(page, own, 'prepared', 'the session was not touched');
  });

  t.noBrowserErrors(expectedRefusals);
});
