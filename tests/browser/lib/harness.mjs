// The browser-test harness: one scenario per script, run by a Rust test
// (tests/browser.rs) that starts the servers and passes their addresses and
// logins in environment variables. A scenario drives Debian's headless
// Chromium through Playwright, saves screenshots for reviewers, may ask the
// Rust side to act (enrol a gateway, flip its switch, ...), and exits
// non-zero with a clear message at the first failed check.
//
// Protocol with the Rust side: a line `@ferry-ask {"id":N,"kind":...,...}`
// on stdout is a request; the answer comes back as one JSON line on stdin,
// `{"id":N,...}` (with `"error"` when the Rust side could not do it).
// Everything else on stdout and stderr is the scenario's log.

import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import tls from 'node:tls';
import { chromium } from 'playwright-core';

/** A failed check: its message is what the test reports. */
export class CheckFailed extends Error {}

export function check(condition, message) {
  if (!condition) throw new CheckFailed(message);
}

export function env(name) {
  const value = process.env[name];
  if (!value) throw new CheckFailed(`the environment variable ${name} is not set (the Rust test sets it)`);
  return value;
}

export function log(...parts) {
  console.log(`[${new Date().toISOString().slice(11, 23)}]`, ...parts);
}

// --- Requests to the Rust side --------------------------------------------

let nextAsk = 1;
const waiting = new Map();
let lines = null;

function listen() {
  if (lines) return;
  lines = readline.createInterface({ input: process.stdin });
  lines.on('line', (line) => {
    let answer;
    try {
      answer = JSON.parse(line);
    } catch (_) {
      return;
    }
    const done = waiting.get(answer.id);
    if (done) {
      waiting.delete(answer.id);
      done(answer);
    }
  });
}

/** Asks the Rust side to do something; resolves to its answer. */
export async function ask(kind, fields = {}) {
  listen();
  const id = nextAsk++;
  const answer = await new Promise((resolve) => {
    waiting.set(id, resolve);
    process.stdout.write(`@ferry-ask ${JSON.stringify({ id, kind, ...fields })}\n`);
  });
  if (answer.error) throw new CheckFailed(`the test could not ${kind}: ${answer.error}`);
  return answer;
}

// --- TLS: trust exactly the server's pinned certificate --------------------

const normalizePin = (pin) => pin.replace(/:/g, '').toUpperCase();

/**
 * Connects to `url`, checks that its certificate has the SHA-256
 * fingerprint `pin` (as the server printed it at start), and returns the
 * base64 SHA-256 of its public key, which Chromium then trusts
 * (--ignore-certificate-errors-spki-list): the browser accepts that one
 * key and nothing else, rather than ignoring certificate errors.
 */
export async function pinnedSpki(url, pin) {
  const { hostname, port } = new URL(url);
  const cert = await new Promise((resolve, reject) => {
    const socket = tls.connect({ host: hostname, port: Number(port), rejectUnauthorized: false, servername: undefined }, () => {
      const peer = socket.getPeerCertificate(false);
      socket.end();
      resolve(peer);
    });
    socket.on('error', reject);
  });
  check(cert && cert.raw, `no certificate from ${url}`);
  const fingerprint = crypto.createHash('sha256').update(cert.raw).digest('hex').toUpperCase();
  check(fingerprint === normalizePin(pin), `the certificate at ${url} has fingerprint ${fingerprint}, not the pinned ${pin}`);
  const spki = new crypto.X509Certificate(cert.raw).publicKey.export({ type: 'spki', format: 'der' });
  return crypto.createHash('sha256').update(spki).digest('base64');
}

/**
 * A request from outside the browser (as curl would send it), to a server
 * whose certificate must have the fingerprint `pin` (for https).
 * Resolves to {status, headers, body, json}.
 */
export function request(url, { method = 'GET', headers = {}, body, pin } = {}) {
  const target = new URL(url);
  const secure = target.protocol === 'https:';
  const lib = secure ? https : http;
  return new Promise((resolve, reject) => {
    // A connection of its own (no keep-alive agent), its certificate checked
    // as soon as the handshake is done, before the request is sent: in the
    // response's callback the server may already have closed the socket,
    // and a closed socket has no certificate to show.
    const req = lib.request(target, { method, headers, rejectUnauthorized: false, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json = null;
        try {
          json = JSON.parse(text);
        } catch (_) {
          json = null;
        }
        resolve({ status: res.statusCode, headers: res.headers, body: text, json });
      });
    });
    if (secure && pin) {
      req.on('socket', (socket) => {
        socket.once('secureConnect', () => {
          const cert = socket.getPeerCertificate(false);
          const fingerprint = cert && cert.raw
            ? crypto.createHash('sha256').update(cert.raw).digest('hex').toUpperCase()
            : '(none)';
          if (fingerprint !== normalizePin(pin)) {
            reject(new CheckFailed(`${url}: certificate ${fingerprint} is not the pinned ${pin}`));
            req.destroy();
          }
        });
      });
    }
    req.on('error', reject);
    if (body !== undefined) req.write(typeof body === 'string' ? body : JSON.stringify(body));
    req.end();
  });
}

// --- TOTP (RFC 6238: SHA-1, 6 digits, 30 s), for logins with a second factor

function base32(text) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const ch of text.replace(/=+$/, '').toUpperCase()) {
    const value = alphabet.indexOf(ch);
    check(value >= 0, `"${text}" is not base32`);
    bits += value.toString(2).padStart(5, '0');
  }
  const bytes = [];
  for (let i = 0; i + 8 <= bits.length; i += 8) bytes.push(parseInt(bits.slice(i, i + 8), 2));
  return Buffer.from(bytes);
}

export function totp(secret, timeMs = Date.now()) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(timeMs / 1000 / 30)));
  const mac = crypto.createHmac('sha1', base32(secret)).update(counter).digest();
  const offset = mac[mac.length - 1] & 0x0f;
  const code = (mac.readUInt32BE(offset) & 0x7fffffff) % 1_000_000;
  return String(code).padStart(6, '0');
}

// --- The browser ------------------------------------------------------------

/** Chromium as the network lab notes say: headless, quiet, a fresh profile. */
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];

export const VIEWPORTS = {
  desktop: { width: 1366, height: 900 },
  tablet: { width: 1024, height: 768 },
  touch: { width: 800, height: 480 },
};

/**
 * Runs one scenario: `body(t)` gets the toolkit below. Any failure prints
 * `FAILED: <message>` (with the step it happened in), saves a screenshot of
 * every open page as `failure-*.png`, and exits 1.
 */
export async function scenario(name, body) {
  const screenshots = process.env.FERRY_SCREENSHOTS || path.join(os.tmpdir(), 'ferry-screenshots');
  fs.mkdirSync(screenshots, { recursive: true });
  // A failure's pictures of an earlier run would mislead a reviewer.
  for (const file of fs.readdirSync(screenshots)) {
    if (file.startsWith(`failure-${name}-`)) fs.rmSync(path.join(screenshots, file), { force: true });
  }
  const pages = [];
  const problems = [];
  let step = 'starting';
  // Chromium takes the keys it trusts at launch: a server trusted later
  // (one that starts during the scenario) gets a browser of its own, with
  // every key trusted so far; pages opened before keep theirs.
  const browsers = [];
  const spki = [];
  const servers = [];

  const t = {
    /** Trusts the server at `url` whose certificate has fingerprint `pin`. */
    async trust(url, pin) {
      spki.push(await pinnedSpki(url, pin));
    },
    async browser() {
      const latest = browsers[browsers.length - 1];
      if (latest && latest.trusted === spki.length) return latest.browser;
      const args = [...CHROMIUM_ARGS];
      if (spki.length) args.push(`--ignore-certificate-errors-spki-list=${spki.join(',')}`);
      // Playwright starts Chromium with a fresh temporary profile
      // (--user-data-dir) of its own and removes it at close.
      const browser = await chromium.launch({
        executablePath: process.env.FERRY_CHROMIUM || '/usr/bin/chromium',
        headless: true,
        args,
      });
      browsers.push({ browser, trusted: spki.length });
      return browser;
    },
    /** A new browser context (its own cookies) and a page in it. */
    async page(label, { viewport = VIEWPORTS.desktop } = {}) {
      const context = await (await t.browser()).newContext({ viewport });
      const page = await context.newPage();
      page.label = label;
      page.on('pageerror', (error) => problems.push(`${label}: script error: ${error.message}`));
      page.on('console', (message) => {
        if (message.type() === 'error') problems.push(`${label}: console error: ${message.text()}`);
      });
      pages.push(page);
      return page;
    },
    /** Saves a screenshot of the whole page as <name>.png. */
    async screenshot(page, shot) {
      const file = path.join(screenshots, `${shot}.png`);
      await page.screenshot({ path: file, fullPage: true });
      log(`screenshot ${file}`);
      return file;
    },
    async step(title, fn) {
      step = title;
      log(`step: ${title}`);
      return fn();
    },
    /** Browser problems (script errors, console errors) seen so far; clears them. */
    takeProblems() {
      return problems.splice(0);
    },
    /** Fails if a page logged a script or console error, except those `allowed` matches. */
    noBrowserErrors(allowed = () => false) {
      const unexpected = problems.splice(0).filter((p) => !allowed(p));
      check(unexpected.length === 0, `the pages reported errors:\n  ${unexpected.join('\n  ')}`);
    },
    /**
     * Serves `routes` ({path: html}) from another site: http://localhost:PORT
     * while the server under test is at an IP address, so the browser
     * treats it as cross-site (as an attacker's page would be).
     */
    async site(routes) {
      const server = http.createServer((req, res) => {
        const body = routes[new URL(req.url, 'http://localhost').pathname];
        res.writeHead(body === undefined ? 404 : 200, { 'Content-Type': 'text/html; charset=utf-8' });
        res.end(body === undefined ? 'not here' : body);
      });
      await new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(0, '127.0.0.1', resolve);
      });
      servers.push(server);
      return `http://localhost:${server.address().port}`;
    },
    ask,
    log,
  };

  let failed = null;
  try {
    await body(t);
  } catch (error) {
    failed = error;
  }
  if (failed) {
    const message = failed instanceof CheckFailed ? failed.message : (failed.stack || String(failed));
    console.log(`FAILED in scenario "${name}", step "${step}": ${message}`);
    for (const [i, page] of pages.entries()) {
      try {
        await page.screenshot({ path: path.join(screenshots, `failure-${name}-${i}-${page.label}.png`), fullPage: true });
        console.log(`  ${page.label} was at ${page.url()}`);
      } catch (_) {
        // A closed page has nothing to show.
      }
    }
  }
  for (const { browser } of browsers) await browser.close().catch(() => {});
  for (const server of servers) server.close();
  if (lines) lines.close();
  if (failed) process.exit(1);
  log(`scenario "${name}" passed`);
  process.exit(0);
}

/** Waits until `fn()` is truthy (polling), or fails with `message`. */
export async function eventually(fn, message, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new CheckFailed(`${message} (last seen: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Waits for `locator` to contain text matching `pattern`; returns the text. */
export async function expectText(locator, pattern, message, timeoutMs = 15000) {
  return eventually(async () => {
    const text = (await locator.first().textContent({ timeout: 1000 })) || '';
    return pattern.test(text) ? text : null;
  }, `${message}: expected ${pattern}`, timeoutMs);
}
