#!/usr/bin/env node
// Behaviour checks of the web client against mock-gateway.mjs (run by
// selftest.sh inside a network namespace): sign-in errors, session kept in
// sessionStorage, refused calls, incoming calls (ring tone, flashing title,
// accept/decline, ended by the caller, ring timeout, answered on another
// device, an AudioContext that is refused or waits for a gesture),
// reconnects, microphone denied, sign-out, CSP. Prints "N passed, N failed";
// exit 0 when none failed.
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

const NORMAL_TITLE = 'Gateway phone';
const RING_TITLE = 'Incoming call…';

/** Rings every signed-in session through the mock; returns the call id. */
async function ringAll(page, query = '') {
  const res = await page.request.post(`${BASE}/mock/incoming${query}`);
  expect(res.ok(), `mock incoming ${res.status()}`);
  return (await res.json()).id;
}

async function endIncoming(page, id, code, reason) {
  const q = new URLSearchParams({ id, code: String(code), reason });
  const res = await page.request.post(`${BASE}/mock/incoming-end?${q}`);
  expect(res.ok(), `mock incoming-end ${res.status()}`);
}

const ringing = (page) => page.evaluate(() => document.body.dataset.ringing);
const ringAudio = (page) => page.evaluate(() => document.body.dataset.ringAudio);

/** The distinct document titles seen over `ms`, sampled every 100 ms. */
async function titlesDuring(page, ms) {
  return page.evaluate(async (ms) => {
    const seen = [];
    const end = performance.now() + ms;
    while (performance.now() < end) {
      if (seen[seen.length - 1] !== document.title) seen.push(document.title);
      await new Promise((r) => setTimeout(r, 100));
    }
    return seen;
  }, ms);
}

/** The highest ringer output level (RMS) seen over `ms`. */
async function peakRingLevel(page, ms) {
  return page.evaluate(async (ms) => {
    let peak = 0;
    const end = performance.now() + ms;
    while (performance.now() < end) {
      peak = Math.max(peak, window.gatewayClient.ringLevel());
      await new Promise((r) => setTimeout(r, 50));
    }
    return peak;
  }, ms);
}

/** Asserts the page rings: data attribute, audible tone, flashing title. */
async function expectRinging(page, { audio = 'running' } = {}) {
  await page.waitForSelector('#call-status[data-state="incoming"]');
  expect(await page.isVisible('#incoming-panel'), 'incoming panel hidden');
  expect((await ringing(page)) === 'true', `body data-ringing="${await ringing(page)}"`);
  if (audio) {
    const a = await ringAudio(page);
    expect(a === audio, `data-ring-audio="${a}", expected "${audio}"`);
  }
  const titles = await titlesDuring(page, 2300);
  expect(titles.includes(RING_TITLE) && titles.includes(NORMAL_TITLE), `title did not flash: ${JSON.stringify(titles)}`);
  if (audio === 'running') {
    // 3 s cycle: the first double ring starts at once; 1.2 s covers a burst.
    const peak = await peakRingLevel(page, 1200);
    expect(peak > 0.01, `ring tone level ${peak} (silent)`);
  }
}

/** Asserts the ring has stopped and everything it changed is restored. */
async function expectQuiet(page) {
  await page.waitForFunction(() => document.body.dataset.ringing === 'false', null, { timeout: 3000 })
    .catch(() => { throw new Error('still ringing'); });
  expect((await ringAudio(page)) === 'off', `data-ring-audio="${await ringAudio(page)}"`);
  expect(!(await page.isVisible('#incoming-panel')), 'incoming panel still shown');
  const titles = await titlesDuring(page, 1300);
  expect(titles.length === 1 && titles[0] === NORMAL_TITLE, `title not restored: ${JSON.stringify(titles)}`);
  const level = await page.evaluate(() => window.gatewayClient.ringLevel());
  expect(level === 0, `ring tone still sounding (level ${level})`);
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

  await check('quiet before any call: data-ringing="false", normal title', async () => {
    expect((await ringing(page)) === 'false', 'data-ringing not "false"');
    expect((await ringAudio(page)) === 'off', 'data-ring-audio not "off"');
    expect((await page.title()) === NORMAL_TITLE, `title "${await page.title()}"`);
  });

  await check('incoming call rings (tone, flashing title), is answered, carries media, hangs up', async () => {
    await ringAll(page, '?from=sip%3A%2B15550123%40trunk.example');
    await expectRinging(page);
    expect((await text(page, '#incoming-text')).includes('+15550123'), 'caller not shown');
    expect((await text(page, '#incoming-from')) === '+15550123', `caller "${await text(page, '#incoming-from')}"`);
    expect((await text(page, '#incoming-verstat')).includes('verified'), 'verstat not shown in words');
    expect(await page.evaluate(() => document.activeElement && document.activeElement.id === 'accept-button'), 'Answer not focused');
    await page.screenshot({ path: path.join(ARTIFACT_DIR, 'web-client-incoming.png') });
    await page.click('#accept-button');
    await expectQuiet(page);
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

  await check('incoming call can be declined; the ring stops', async () => {
    await ringAll(page);
    await expectRinging(page);
    await page.click('#reject-button');
    await page.waitForSelector('#call-status[data-state="ended"]');
    await expectQuiet(page);
    await page.waitForTimeout(300); // the gateway's hangup 486 confirms it
    expect((await text(page, '#call-status-text')) === 'Declined', `status "${await text(page, '#call-status-text')}"`);
  });

  await check('the caller hangs up while ringing: panel closes, ring stops, said in words', async () => {
    const id = await ringAll(page, '?from=%2B15550124');
    await expectRinging(page);
    await endIncoming(page, id, 487, 'cancelled by the caller');
    await page.waitForSelector('#call-status[data-state="ended"]');
    await expectQuiet(page);
    const t = await text(page, '#call-status-text');
    expect(t.includes('The caller hung up'), `status "${t}"`);
    expect(await page.evaluate(() => window.gatewayClient.pc === null), 'pc kept');
  });

  await check('ring timeout: "Missed call" with the caller', async () => {
    const id = await ringAll(page, '?from=%2B15550125');
    await page.waitForSelector('#call-status[data-state="incoming"]');
    await endIncoming(page, id, 408, 'no answer');
    await page.waitForSelector('#call-status[data-state="ended"]');
    await expectQuiet(page);
    const t = await text(page, '#call-status-text');
    expect(t.includes('Missed call') && t.includes('+15550125'), `status "${t}"`);
  });

  await check('answered on another device: the other session stops ringing and says so', async () => {
    const ctx2 = await browser.newContext({ permissions: ['microphone'], ignoreHTTPSErrors: true });
    try {
      const other = await ctx2.newPage();
      await other.goto(BASE);
      await signIn(other);
      await other.waitForSelector('#conn-status[data-state="open"]');
      await ringAll(page);
      await page.waitForSelector('#call-status[data-state="incoming"]');
      await expectRinging(other);
      await other.click('#accept-button');
      await other.waitForSelector('#call-status[data-state="connected"]', { timeout: 10000 });
      await page.waitForSelector('#call-status[data-state="ended"]');
      await expectQuiet(page);
      const t = await text(page, '#call-status-text');
      expect(t === 'Answered on another device', `status "${t}"`);
      await other.click('#hangup-button');
      await other.waitForSelector('#call-status[data-state="ended"]');
    } finally {
      await ctx2.close();
    }
  });

  await check('the caller hangs up an answered incoming call', async () => {
    const id = await ringAll(page);
    await page.waitForSelector('#call-status[data-state="incoming"]');
    await page.click('#accept-button');
    await page.waitForSelector('#call-status[data-state="connected"]', { timeout: 10000 });
    await endIncoming(page, id, 200, 'the other party hung up');
    await page.waitForSelector('#call-status[data-state="ended"]');
    const t = await text(page, '#call-status-text');
    expect(t.includes('the other party hung up') && t.includes('200'), `status "${t}"`);
    expect(await page.evaluate(() => window.gatewayClient.pc === null), 'pc kept');
  });

  await check('a withheld number is said in words; Escape declines', async () => {
    await ringAll(page, '?from=***&verstat=');
    await page.waitForSelector('#call-status[data-state="incoming"]');
    const t = await text(page, '#incoming-text');
    expect(t.includes('withheld'), `incoming text "${t}"`);
    expect(!(await page.isVisible('#incoming-verstat')), 'empty verstat shown');
    await page.keyboard.press('Escape');
    await page.waitForSelector('#call-status[data-state="ended"]');
    await expectQuiet(page);
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

  const p2 = await openPage(denyBrowser, { mic: false });
  await check('microphone denied is explained in words', async () => {
    await signIn(p2);
    await p2.waitForSelector('#conn-status[data-state="open"]');
    await p2.fill('#number', '100');
    await p2.click('#call-button');
    await p2.waitForSelector('#call-status[data-state="ended"]');
    const msg = await text(p2, '#call-message');
    expect(msg.includes('Microphone access was denied') || msg.includes('No microphone found'), `message "${msg}"`);
    await p2.screenshot({ path: path.join(ARTIFACT_DIR, 'web-client-mic-denied.png') });
  });

  await check('microphone denied when answering: said in words, the ring stops', async () => {
    await ringAll(p2);
    await p2.waitForSelector('#call-status[data-state="incoming"]');
    await p2.click('#accept-button');
    await p2.waitForSelector('#call-status[data-state="ended"]');
    await expectQuiet(p2);
    const msg = await text(p2, '#call-message');
    expect(msg.includes('Microphone access was denied') || msg.includes('No microphone found'), `message "${msg}"`);
    const t = await text(p2, '#call-status-text');
    expect(t.includes('Could not answer'), `status "${t}"`);
  });
  await p2.context().close();

  await check('no AudioContext at all: the call still rings (title, panel) and nothing throws', async () => {
    const ctx = await browser.newContext({ permissions: ['microphone'], ignoreHTTPSErrors: true });
    try {
      await ctx.addInitScript(() => {
        const refuse = function AudioContext() { throw new DOMException('refused by the test', 'NotSupportedError'); };
        window.AudioContext = refuse;
        window.webkitAudioContext = refuse;
      });
      const p3 = await ctx.newPage();
      const errors = [];
      p3.on('pageerror', (e) => errors.push(e.message));
      await p3.goto(BASE);
      await signIn(p3);
      await p3.waitForSelector('#conn-status[data-state="open"]');
      await ringAll(p3);
      await expectRinging(p3, { audio: 'unavailable' });
      await p3.click('#reject-button');
      await expectQuiet(p3);
      expect(errors.length === 0, `page errors: ${errors.join(' | ')}`);
    } finally {
      await ctx.close();
    }
  });

  await check('ring before any user gesture: AudioContext waits (suspended), starts on the first click', async () => {
    // Headless Chromium lets an AudioContext start without a gesture whatever
    // --autoplay-policy says (and Playwright's evaluate() counts as user
    // activation), so a desktop browser's policy is emulated: until the page
    // has seen a trusted click or key press, a new context stays suspended
    // and its resume() never settles (as Firefox's does without a sound
    // device).
    const ctx = await browser.newContext({ permissions: ['microphone'], ignoreHTTPSErrors: true });
    try {
      await ctx.addInitScript(() => {
        const Real = window.AudioContext;
        let gesture = false;
        for (const type of ['pointerdown', 'keydown']) {
          window.addEventListener(type, (e) => { if (e.isTrusted) gesture = true; }, { capture: true });
        }
        const active = () => gesture;
        class GatedAudioContext extends Real {
          constructor(...args) {
            super(...args);
            this.gated = !active();
            if (this.gated) super.suspend();
          }
          get state() { return this.gated ? 'suspended' : super.state; }
          resume() {
            if (this.gated && !active()) return new Promise(() => {});
            this.gated = false;
            return super.resume();
          }
        }
        window.AudioContext = GatedAudioContext;
        window.webkitAudioContext = GatedAudioContext;
      });
      const p4 = await ctx.newPage();
      const errors = [];
      p4.on('pageerror', (e) => errors.push(e.message));
      await p4.goto(BASE);
      // Signed in without a click: a token put into sessionStorage.
      const login = await p4.request.post(`${BASE}/api/login`, { data: { account: 'alice', password: 'secret' } });
      expect(login.ok(), `login ${login.status()}`);
      const { token } = await login.json();
      await p4.evaluate((token) => {
        sessionStorage.setItem('gateway.token', token);
        sessionStorage.setItem('gateway.account', 'alice');
      }, token);
      await p4.reload();
      await p4.waitForSelector('#conn-status[data-state="open"]');
      await ringAll(p4);
      await expectRinging(p4, { audio: 'suspended' });
      expect((await peakRingLevel(p4, 300)) === 0, 'ring heard before a gesture');
      const box = await p4.locator('#call-status').boundingBox();
      await p4.mouse.click(box.x + 5, box.y + 5);
      await p4.waitForFunction(() => document.body.dataset.ringAudio === 'running', null, { timeout: 3000 })
        .catch(async () => { throw new Error(`data-ring-audio="${await ringAudio(p4)}" after a click`); });
      const peak = await peakRingLevel(p4, 3100);
      expect(peak > 0.01, `ring tone level ${peak} after the click`);
      expect((await state(p4)) === 'incoming', 'the click changed the call state');
      await p4.click('#reject-button');
      await expectQuiet(p4);
      expect(errors.length === 0, `page errors: ${errors.join(' | ')}`);
    } finally {
      await ctx.close();
    }
  });
} finally {
  await browser.close();
  await denyBrowser.close();
}

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
