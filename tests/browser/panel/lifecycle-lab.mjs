// THE life cycle of a session through the pages, against the real
// ferry-cloud and the real ferry-gateway in the network lab: the console's
// steps (console/lifecycle-steps.mjs) with the customer's side played on the
// gateway's local panel, on an 800x480 touchscreen.
//
// The Rust test (tests/panel_browser.rs) runs the lab, the browser reaches
// the cloud and the panel through loopback forwarders (the console at
// FERRY_URL, the panel at the URL the enrolment answer names), and does
// what only it can: run the enrolment command on the gateway (with the
// cloud's lab address), start the daemon, and bring up the technician's
// WireGuard tunnel.
//
// Screenshots: target/screenshots/panel/ (console-*.png, panel-*.png).

import { ask, check, env, expectText, eventually, scenario, VIEWPORTS } from '../lib/harness.mjs';
import { lifecycle } from '../console/lifecycle-steps.mjs';
import { bigTouchTargets, expectSwitch, noHorizontalScroll, panelLogin, sessionCard } from './common.mjs';

const escape = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

const settings = {
  url: env('FERRY_URL'),
  pin: env('FERRY_PIN'),
  adminOneTime: env('FERRY_ADMIN_ONE_TIME'),
  adminPassword: 'admin passphrase for the panel lab test',
  techPassword: 'technician passphrase for the panel lab test',
  plc: { address: env('FERRY_PLC_ADDRESS'), port: env('FERRY_PLC_PORT') },
  relay: env('FERRY_RELAY_NAME'),
};

await scenario('panel-lifecycle', async (t) => {
  await t.trust(settings.url, settings.pin);
  // The console's screenshots beside the panel's, told apart by name.
  const consoleT = { ...t, screenshot: (page, shot) => t.screenshot(page, `console-${shot}`) };
  let panel = null;
  let panelUrl = null;

  /** A screenshot of the panel at 800x480, which must not scroll sideways. */
  const touchShot = async (shot) => {
    await noHorizontalScroll(panel, shot);
    await bigTouchTargets(panel, shot);
    await t.screenshot(panel, `panel-${shot}`);
  };

  const customer = {
    softwareVersion: new RegExp(`^${escape(env('FERRY_GATEWAY_VERSION'))}$`),

    async enrol(command) {
      const answer = await ask('enrol', { command });
      panelUrl = answer.panel_url;
      await t.trust(panelUrl, answer.panel_pin);
      panel = await t.page('customer', { viewport: VIEWPORTS.touch });
      await t.step('the plant operator logs in on the gateway panel: remote maintenance is off', async () => {
        await panel.goto(`${panelUrl}/`);
        check(new URL(panel.url()).pathname === '/login', `an anonymous visit should land on the login page, not ${panel.url()}`);
        await noHorizontalScroll(panel, 'login');
        await t.screenshot(panel, 'panel-login');
        await panelLogin(panel, panelUrl, answer.panel_password);
        const cookie = (await panel.context().cookies()).find((c) => c.name === 'ferry_panel');
        check(cookie && cookie.httpOnly && cookie.secure && cookie.sameSite === 'Strict',
          `the panel's session cookie is HttpOnly, Secure and SameSite=Strict: ${JSON.stringify(cookie)}`);
        check(!(await panel.evaluate(() => document.cookie)).includes('ferry_panel'), 'no script can read the cookie');
        await expectSwitch(panel, false, 'off after installation');
        await expectText(panel.locator('#waiting .empty'), /No session waits/, 'nothing waits');
        await touchShot('switch-off');
      });
      await t.step('the plant operator switches remote maintenance on at the panel', async () => {
        await Promise.all([panel.waitForURL((u) => u.pathname === '/'), panel.click('#switch-button')]);
        await expectSwitch(panel, true, 'after the tap');
        await touchShot('switch-on');
      });
    },

    async approve(id) {
      await t.step('the panel shows the start waiting for approval: who asks, for which machines, how long', async () => {
        const card = sessionCard(panel, 'waiting', id);
        // Live: the page was open before the technician started.
        await card.waitFor({ timeout: 15000 });
        await expectText(card.locator('.who'), /^tech$/, 'who asks');
        await expectText(card.locator('.targets'), new RegExp(`plc ${escape(settings.plc.address)} · tcp ${settings.plc.port}`), 'the machine');
        await expectText(card.locator('.duration'), /1h00m once approved/, 'for how long');
        await touchShot('waiting-approval');
      });
      await t.step('the plant operator approves on the panel', async () => {
        await Promise.all([panel.waitForURL((u) => u.pathname === '/'), sessionCard(panel, 'waiting', id).locator('button.approve').click()]);
        await sessionCard(panel, 'active', id).waitFor({ timeout: 15000 });
      });
    },

    async connectPeer(id) {
      const peer = await ask('connect_peer', { session: id, user: 'tech', password: settings.techPassword });
      await t.step('the panel shows the technician, the path and the traffic', async () => {
        const row = sessionCard(panel, 'active', id).locator('.peer[data-user="tech"]');
        await expectText(row.locator('.badge'), new RegExp(`^${escape(peer.panel_path)}$`), 'the path');
        await expectText(row.locator('.endpoint'), new RegExp(`^${escape(peer.endpoint)}$`), 'where from');
        await expectText(row.locator('.bytes'), /↓ [1-9][\d.]* (B|KiB|MiB) · ↑ [1-9][\d.]* (B|KiB|MiB)/, 'the bytes');
        await expectText(sessionCard(panel, 'active', id).locator('.traffic'), /[1-9][\d.]* (B|KiB) sent/, 'the traffic to the machines');
        await touchShot('active-session');
        // The same page on a desktop.
        await panel.setViewportSize(VIEWPORTS.desktop);
        await noHorizontalScroll(panel, 'desktop');
        await t.screenshot(panel, 'panel-desktop');
        await panel.setViewportSize(VIEWPORTS.touch);
      });
      return { path: escape(peer.console_path), endpoint: peer.endpoint };
    },

    async switchOff() {
      await Promise.all([panel.waitForURL((u) => u.pathname === '/'), panel.click('#switch-button')]);
      await expectSwitch(panel, false, 'after the tap');
      await eventually(async () => (await panel.locator('#active article').count()) === 0, 'no session runs any more');
      await touchShot('switched-off');
    },
  };

  await lifecycle(consoleT, settings, customer);

  await t.step('the diagnostics for the site\'s IT', async () => {
    await panel.goto(`${panelUrl}/diagnostics`);
    await expectText(panel.locator('#cloud-reachable'), /Cloud reachable: yes/, 'the cloud is reachable');
    await expectText(panel.locator('#checks'), /TLS \+ pin/, 'the checks');
    await touchShot('diagnostics');
  });

  await t.step('logging out of the panel ends its session', async () => {
    await Promise.all([panel.waitForURL((u) => u.pathname === '/login'), panel.click('#logout')]);
    await panel.goto(`${panelUrl}/`);
    check(new URL(panel.url()).pathname === '/login', `after logout the panel asks for the password again, not ${panel.url()}`);
  });

  t.noBrowserErrors();
});
