#!/usr/bin/env node
// Behaviour checks of the web client against mock-gateway.mjs (run by
// selftest.sh inside a network namespace): sign-in errors, session kept in
// sessionStorage, refused calls, incoming calls, reconnects, microphone
// denied, sign-out, CSP. Prints "N passed, N failed"; exit 0 when none failed.
//
// Env: GATEWAY_URL (the mock, e.g. http://127.0.0.1:8088), ARTIFACT_DIR.

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import path from 'node:path';

const BASE = process.env.GATEWAY_URL || 'http://127.0.0.1:8088';
const ARTIFACT_DIR = path.resolve(process.env.ARTIFACT_DIR || 'artifacts');
mkdirSync(ARTIFACT_DIR, { recursive: true });
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--use-fake-device-for-media-stream', '--ignore-certificate-errors', '--autoplay-policy=no-user-gesture-required'];

let passed = 0;
let failed = 0;
async function check(name, fn) {
  try {
    await fn();
    passed += 1;
    console.log(`ok   ${name}`);
  } catch (err) {
    failed += 1;
    console.log(`FAIL ${name}: ${err.message.split('\n')[0]}`);
  }
}
function expect(cond, msg) { if (!cond) throw new Error(msg); }

async function openPage(browser, { mic = true } = {}) {
  const context = await browser.newContext({ permissions: mic ? ['microphone'] : [], ignoreHTTPSErrors: true });
  const page = await context.newPage();
  page.setDefaultTimeout(8000);
  page.errors = [];
  page.on('console', (m) => { if (m.type() === 'error') page.errors.push(m.text()); });
  page.on('pageerror', (e) => page.errors.push(e.message));
  await page.goto(BASE);
  return page;
}

const state = (page) => page.getAttribute('#call-status', 'data-state');
const text = (page, sel) => page.textContent(sel).then((s) => s.trim());

async function signIn(page, account = 'alice', password = 'secret') {
  await page.fill('#login-account', account);
  await page.fill('#login-password', password);
  await page.click('#login-button');
}

// The browsers answer microphone prompts differently: one grants (fake UI), one denies.
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: [...ARGS, '--use-fake-ui-for-media-stream'] });
const denyBrowser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ARGS });

try {
  const page = await openPage(browser);

  await check('sign-in view renders without console errors or CSP violations', async () => {
    expect(await page.isVisible('#login-form'), 'login form hidden');
    expect(!(await page.isVisible('#phone-view')), 'phone view visible before sign-in');
    await page.waitForTimeout(300);
    expect(page.errors.length === 0, `console errors: ${page.errors.join(' | ')}`);
    await page.screenshot({ path: path.join(ARTIFACT_DIR, 'web-client-signin.png') });
  });

  await check('empty sign-in form asks for both fields', async () => {
    await page.click('#login-button');
    expect((await text(page, '#login-error')).includes('Enter your account name and password'), 'no prompt');
  });

  await check('wrong password is reported in words', async () => {
    await signIn(page, 'alice', 'wrong');
    await page.waitForSelector('#login-error:not([hidden])');
    await page.waitForFunction(() => document.getElementById('login-error').textContent.includes('Wrong'));
    expect(!(await page.isVisible('#phone-view')), 'phone view shown after a wrong password');
  });

  await check('unreachable server is reported in words', async () => {
    await page.route('**/api/login', (route) => route.abort('connectionrefused'));
    await signIn(page);
    await page.waitForFunction(() => document.getElementById('login-error').textContent.includes('Cannot reach'));
    await page.unroute('**/api/login');
  });

  await check('sign-in opens the signaling socket and keeps the token in sessionStorage', async () => {
    await signIn(page);
    await page.waitForSelector('#phone-view:not([hidden])');
    await page.waitForSelector('#conn-status[data-state="open"]');
    const token = await page.evaluate(() => sessionStorage.getItem('gateway.token'));
    expect(token && token.length > 8, 'no token in sessionStorage');
    expect((await state(page)) === 'idle', `state ${await state(page)}`);
    expect(await page.evaluate(() => window.gatewayClient.pc === null && window.gatewayClient.state === 'idle'), 'gatewayClient');
  });

  await check('a reload stays signed in', async () => {
    await page.reload();
    await page.waitForSelector('#conn-status[data-state="open"]');
    expect((await text(page, '#account-name')) === 'alice', 'account name not shown');
  });

  await check('Call with an empty number asks for one', async () => {
    await page.fill('#number', '');
    await page.click('#call-button');
    expect((await text(page, '#call-message')).includes('Enter a number'), 'no message');
    expect((await state(page)) === 'idle', 'state changed');
  });

  await check('keyboard: typing a number and Enter places the call; a refusal shows reason and code', async () => {
    await page.focus('#number');
    await page.keyboard.type('404');
    await page.keyboard.press('Enter');
    await page.waitForSelector('#call-status[data-state="ended"]');
    const t = await text(page, '#call-status-text');
    expect(t.includes('Not Found') && t.includes('404'), `status text "${t}"`);
    expect(await page.evaluate(() => window.gatewayClient.pc === null), 'pc kept after the call ended');
  });

  await check('incoming call rings, is answered, carries media, hangs up', async () => {
    const res = await page.request.post(`${BASE}/mock/incoming?from=%2B15550123`);
    expect(res.ok(), `mock incoming ${res.status()}`);
    await page.waitForSelector('#call-status[data-state="incoming"]');
    expect((await text(page, '#incoming-text')).includes('+15550123'), 'caller not shown');
    await page.click('#accept-button');
    await page.waitForSelector('#call-status[data-state="connected"]', { timeout: 10000 });
    await page.waitForTimeout(2500);
    const got = await page.evaluate(async () => {
      let n = 0;
      (await window.gatewayClient.pc.getStats()).forEach((s) => { if (s.type === 'inbound-rtp') n = s.packetsReceived; });
      return n;
    });
    expect(got > 50, `only ${got} packets received`);
    const level = /srtp/i.test(process.env.MOCK_TRUNK_SECURITY || 'sdes-srtp') ? 'secure' : 'insecure';
    expect(await page.isVisible(`#call-security[data-level="${level}"]`), `lock not shown as ${level}`);
    await page.click('#hangup-button');
    await page.waitForSelector('#call-status[data-state="ended"]');
  });

  await check('incoming call can be declined', async () => {
    await page.request.post(`${BASE}/mock/incoming`);
    await page.waitForSelector('#call-status[data-state="incoming"]');
    await page.click('#reject-button');
    await page.waitForSelector('#call-status[data-state="ended"]');
    expect((await text(page, '#call-status-text')).includes('Declined'), 'no Declined text');
  });

  await check('a dropped socket reconnects with backoff', async () => {
    await page.request.post(`${BASE}/mock/drop-sockets`);
    await page.waitForSelector('#conn-status[data-state="reconnecting"]', { timeout: 3000 });
    await page.waitForSelector('#conn-status[data-state="open"]', { timeout: 5000 });
  });

  await check('sign out clears the session and shows the sign-in form', async () => {
    await page.click('#signout-button');
    await page.waitForSelector('#login-form:not([hidden])');
    expect(await page.evaluate(() => sessionStorage.getItem('gateway.token') === null), 'token kept');
    expect((await page.getAttribute('#conn-status', 'data-state')) === 'closed', 'socket state not closed');
  });

  await check('a token the gateway refuses sends the person back to sign-in', async () => {
    await signIn(page);
    await page.waitForSelector('#conn-status[data-state="open"]');
    await page.evaluate(() => sessionStorage.setItem('gateway.token', 'forged'));
    await page.reload();
    await page.waitForSelector('#login-form:not([hidden])');
    const t = await text(page, '#login-error');
    expect(t.includes('Sign in again'), `message "${t}"`);
  });

  await check('no console errors during the whole session', async () => {
    const unexpected = page.errors.filter((e) => !/401|Unauthorized|ERR_CONNECTION_REFUSED|Failed to load resource|WebSocket connection to .*token=forged/.test(e));
    expect(unexpected.length === 0, unexpected.join(' | '));
  });

  await check('microphone denied is explained in words', async () => {
    const p2 = await openPage(denyBrowser, { mic: false });
    await signIn(p2);
    await p2.waitForSelector('#conn-status[data-state="open"]');
    await p2.fill('#number', '100');
    await p2.click('#call-button');
    await p2.waitForSelector('#call-status[data-state="ended"]');
    const msg = await text(p2, '#call-message');
    expect(msg.includes('Microphone access was denied') || msg.includes('No microphone found'), `message "${msg}"`);
    await p2.screenshot({ path: path.join(ARTIFACT_DIR, 'web-client-mic-denied.png') });
  });
} finally {
  await browser.close();
  await denyBrowser.close();
}

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
