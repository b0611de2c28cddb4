// The console's half of a session's life cycle, through the pages:
// an Administrator's first login, a technician, a gateway and a session;
// the technician's refused start (gateway offline), the gateway enrolling,
// the start waiting for the customer, the approval, the peer and its path,
// and the customer switching off, each seen live on the pages.
//
// The customer's side is a parameter, `customer`, with
//   enrol(command)           runs the enrolment command the console shows
//   approve(sessionId)       approves the waiting start at the gateway
//   connectPeer(sessionId)   (optional) a technician's client connects
//   switchOff()              switches remote maintenance off at the gateway
// console/lifecycle.mjs gives one that asks the Rust test (a control-channel
// gateway on loopback); a lab scenario gives one that runs the real
// ferry-gateway and clicks its local panel, and reuses these steps as they are.

import { check, eventually, expectText, VIEWPORTS } from '../lib/harness.mjs';
import {
  choosePassword, expectSessionState, expectedRefusals, login, navLabels, sessionId, sessionRow,
} from './common.mjs';

export const SESSION = 'Press 4 maintenance';
export const GATEWAY = 'Press line 4';

/**
 * `env`: {url, pin, adminOneTime, adminPassword, techPassword}, and
 * optionally `plc: {address, port}` (the gateway's first target; default
 * 192.168.10.5, port 502) and `relay` (the name of a relay the relays
 * page lists online; default: none registered).
 * `customer` may name the gateway's `softwareVersion` (a RegExp) as the
 * console shows it once enrolled.
 * Returns {sessionId} for scenarios that go on.
 */
export async function lifecycle(t, env, customer) {
  const { url, pin } = env;
  const plc = env.plc || { address: '192.168.10.5', port: '502' };
  const softwareVersion = customer.softwareVersion || /^console-test-gateway 1\.0$/;
  const admin = await t.page('admin');
  const tech = await t.page('technician', { viewport: VIEWPORTS.tablet });
  let techOneTime;
  let enrolCommand;
  let id;

  await t.step('the console asks for a login, then for a new password', async () => {
    await admin.goto(`${url}/`);
    check(new URL(admin.url()).pathname === '/login', `an anonymous visit should land on the login page, not ${admin.url()}`);
    await t.screenshot(admin, 'login');
    await login(admin, url, 'admin', env.adminOneTime);
    await t.screenshot(admin, 'first-login-password');
    await choosePassword(admin, env.adminOneTime, env.adminPassword);
    const nav = await navLabels(admin);
    check(JSON.stringify(nav) === JSON.stringify(['Sessions', 'Gateways', 'Users', 'Audit log', 'Relays']),
      `an Administrator's navigation: ${nav}`);
  });

  await t.step('the Administrator adds a technician', async () => {
    await admin.goto(`${url}/users`);
    await admin.click('#create-panel summary');
    await admin.fill('#create-user input[name=name]', 'tech');
    await admin.selectOption('#create-user select[name=role]', 'remote_connect_user');
    await admin.click('#create-user button[type=submit]');
    techOneTime = await expectText(admin.locator('#one-time-password'), /^\S{12,}$/, 'the one-time password shows');
    await admin.locator('#users tr[data-user="tech"]').waitFor();
    await t.screenshot(admin, 'users');
  });

  await t.step('the Administrator adds a gateway and gets its enrolment command', async () => {
    await admin.goto(`${url}/gateways`);
    await admin.click('#add-panel summary');
    await admin.fill('#add-gateway input[name=name]', GATEWAY);
    await admin.fill('#add-gateway input[name=site]', 'Plant Ulm');
    const first = admin.locator('#target-rows tr').nth(0);
    await first.locator('[name=t-name]').fill('plc');
    await first.locator('[name=t-address]').fill(plc.address);
    await first.locator('[name=t-ports]').fill(plc.port);
    await admin.click('#add-target');
    const second = admin.locator('#target-rows tr').nth(1);
    await second.locator('[name=t-name]').fill('hmi');
    await second.locator('[name=t-address]').fill('192.168.10.6');
    await second.locator('[name=t-ports]').fill('80, 443');
    await admin.click('#add-gateway button[type=submit]');
    enrolCommand = await expectText(admin.locator('#enrol-command'), /^ferry-gateway enroll /, 'the enrolment command shows');
    const expected = `ferry-gateway enroll --cloud ${url} --pin ${pin} --token `;
    check(enrolCommand.startsWith(expected) && /--token fye\.\S+$/.test(enrolCommand),
      `the enrolment command should be "${expected}<token>", is "${enrolCommand}"`);
    const row = admin.locator(`#gateways tr[data-gateway="${GATEWAY}"]`);
    await expectText(row, /offline/, 'the new gateway is offline');
    const target = new RegExp(`plc ${plc.address.replace(/[.]/g, '\\.')} tcp:${plc.port}`);
    await expectText(row, target, 'the gateway lists its targets');
    // The copy button puts the command on the clipboard.
    await admin.context().grantPermissions(['clipboard-read', 'clipboard-write'], { origin: url });
    await admin.click('#enrolment button.copy');
    const copied = await admin.evaluate(() => navigator.clipboard.readText());
    check(copied === enrolCommand, `the clipboard holds "${copied}"`);
    await t.screenshot(admin, 'gateway-enrolment');
  });

  await t.step('the Administrator prepares a session released to the technician', async () => {
    await admin.goto(`${url}/sessions`);
    await admin.click('#prepare-panel summary');
    await admin.fill('#prepare input[name=name]', SESSION);
    await admin.locator('#prepare select[name=gateway] option', { hasText: GATEWAY }).waitFor({ state: 'attached' });
    const option = await admin.locator('#prepare select[name=gateway] option', { hasText: GATEWAY }).getAttribute('value');
    await admin.selectOption('#prepare select[name=gateway]', option);
    await admin.check('#prepare-targets input[value=plc]');
    await admin.locator('#prepare-users label', { hasText: 'tech' }).locator('input').check();
    await admin.selectOption('#prepare select[name=duration]', '3600');
    check(await admin.isChecked('#prepare input[name=approval]'), 'approval is required by default');
    await admin.click('#prepare button[type=submit]');
    await expectSessionState(admin, SESSION, 'prepared', 'the new session is listed');
    id = await sessionId(admin, SESSION);
    await expectText(sessionRow(admin, SESSION), /tech/, 'the session names the technician');
    await t.screenshot(admin, 'sessions-admin');
  });

  await t.step('the technician logs in, sees only their session, and cannot start it yet', async () => {
    await login(tech, url, 'tech', techOneTime);
    await choosePassword(tech, techOneTime, env.techPassword);
    const nav = await navLabels(tech);
    check(JSON.stringify(nav) === JSON.stringify(['My sessions']), `a technician's navigation: ${nav}`);
    await expectSessionState(tech, SESSION, 'prepared', 'the technician sees the session');
    const rows = await tech.locator('#sessions tbody tr').count();
    check(rows === 1, `the technician sees exactly one session, not ${rows}`);
    await expectText(tech.locator('#login-command'), new RegExp(`^ferry login --cloud ${url} --pin ${pin} --user tech$`),
      'the client login command');
    await sessionRow(tech, SESSION).locator('button', { hasText: 'Start' }).click();
    await expectText(tech.locator('#sessions-problem'), /Gateway offline/, 'the refusal is shown');
    await expectText(tech.locator('#sessions-problem'), /no control connection/, 'the refusal says why');
    await t.screenshot(tech, 'technician-start-refused');
  });

  await t.step('the gateway enrols and shows online without a reload', async () => {
    await admin.goto(`${url}/gateways`);
    await expectText(admin.locator('#live'), /live/, 'the gateways page listens for changes');
    await customer.enrol(enrolCommand);
    const row = admin.locator(`#gateways tr[data-gateway="${GATEWAY}"]`);
    await expectText(row, /online/, 'the gateway turns online on the open page');
    await expectText(row.locator('td').nth(3), /^on$/, 'its switch shows on');
    await expectText(row.locator('td').nth(4), softwareVersion, 'its software version');
    await t.screenshot(admin, 'gateways-online');
  });

  await t.step('the technician starts the session; it waits for the customer', async () => {
    await admin.goto(`${url}/sessions/${id}`);
    await expectText(admin.locator('#session-state'), /prepared/, 'the session page shows it prepared');
    await sessionRow(tech, SESSION).locator('button', { hasText: 'Start' }).click();
    await expectSessionState(tech, SESSION, 'waiting_for_approval', 'the technician sees it waiting');
    await expectText(admin.locator('#session-state'), /waiting for approval/, 'the admin\'s open page follows');
    await t.screenshot(admin, 'session-waiting-for-approval');
  });

  await t.step('the customer approves; both pages show it active', async () => {
    await customer.approve(id);
    await expectSessionState(tech, SESSION, 'active', 'the technician sees it active');
    await expectText(admin.locator('#session-state'), /^active$/, 'the admin sees it active');
    await expectText(sessionRow(tech, SESSION).locator('code'), new RegExp(`^ferry connect ${id}$`),
      'the hand-off command to the client');
    await expectText(admin.locator('#session-facts'), /Time left/, 'the time left shows');
    await t.screenshot(tech, 'technician-active');
  });

  if (customer.connectPeer) {
    await t.step('a technician\'s client connects: the peer, its path and traffic show', async () => {
      const peer = await customer.connectPeer(id);
      const row = admin.locator('#peers tr[data-peer="tech"]');
      await expectText(row, new RegExp(peer.path), 'the peer\'s path');
      await expectText(row, new RegExp(peer.endpoint.replace(/[.]/g, '\\.')), 'the peer\'s endpoint');
      await expectText(admin.locator('#session-facts'), /received/, 'the traffic');
      if (peer.bytes) await expectText(admin.locator('#session-facts'), new RegExp(peer.bytes), 'the reported bytes');
      await t.screenshot(admin, 'session-active-peers');
    });
  }

  await t.step('the customer switches off; the technician\'s page shows the end within seconds', async () => {
    await customer.switchOff();
    await expectSessionState(tech, SESSION, 'ended', 'the technician sees it ended');
    await expectText(sessionRow(tech, SESSION), /ended by the customer/, 'and why');
    await expectText(admin.locator('#session-state'), /ended by the customer/, 'the admin\'s page too');
    await t.screenshot(tech, 'technician-ended-by-customer');
    await t.screenshot(admin, 'session-ended');
  });

  await t.step('the audit log shows it all and its chain verifies', async () => {
    await admin.goto(`${url}/audit`);
    await admin.fill('#audit-filter input[name=session]', String(id));
    await admin.click('#audit-filter button[type=submit]');
    for (const action of ['session.create', 'session.start', 'session.approve', 'session.end']) {
      await expectText(admin.locator('#audit tbody'), new RegExp(action.replace('.', '\\.')), `the audit log has ${action}`);
    }
    await admin.click('#verify');
    await expectText(admin.locator('#verify-result'), /intact: \d+ entries/, 'the chain verifies');
    const href = await admin.getAttribute('#export', 'href');
    check(href === `/api/v1/audit/export?session=${id}`, `the export link keeps the filter: ${href}`);
    const [download] = await Promise.all([admin.waitForEvent('download'), admin.click('#export')]);
    const file = await download.path();
    const text = (await import('node:fs')).readFileSync(file, 'utf8');
    const lines = text.trim().split('\n').map((l) => JSON.parse(l));
    check(lines.length >= 4 && lines.every((e) => e.session === String(id)), `the export has the session's entries: ${lines.length}`);
    await t.screenshot(admin, 'audit');
  });

  await t.step('the relays page', async () => {
    await admin.goto(`${url}/relays`);
    if (env.relay) {
      await expectText(admin.locator(`#relays tr[data-relay="${env.relay}"]`), /online/, 'the relay is online');
    } else {
      await eventually(async () => !(await admin.isHidden('#relays-empty')), 'the relays page says there are none');
    }
    await t.screenshot(admin, 'relays');
  });

  t.noBrowserErrors(expectedRefusals);
  return { sessionId: id };
}
