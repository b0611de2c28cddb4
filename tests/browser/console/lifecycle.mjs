// The console's half of the life cycle, with the gateway's side played by
// the Rust test (a control-channel gateway on loopback): see
// lifecycle-steps.mjs for the steps.

import { ask, env, scenario } from '../lib/harness.mjs';
import { lifecycle } from './lifecycle-steps.mjs';

const settings = {
  url: env('FERRY_URL'),
  pin: env('FERRY_PIN'),
  adminOneTime: env('FERRY_ADMIN_ONE_TIME'),
  adminPassword: 'admin passphrase for the console test',
  techPassword: 'technician passphrase for the console test',
};

const customer = {
  enrol: (command) => ask('enrol', { command }),
  approve: (session) => ask('approve', { session }),
  connectPeer: (session) => ask('connect_peer', { session, user: 'tech', password: settings.techPassword }),
  switchOff: () => ask('switch', { on: false }),
};

await scenario('lifecycle', async (t) => {
  await t.trust(settings.url, settings.pin);
  await lifecycle(t, settings, customer);
});
