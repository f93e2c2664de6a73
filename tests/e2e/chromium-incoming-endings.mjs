#!/usr/bin/env node
// How incoming calls end, seen in the web client: two browser sessions of the
// same account (two Chromium contexts) ring together, and the caller's side
// is driven by whoever runs this script. Exit 0 = pass, 1 = fail, 2 = usage.
//
// The script asks for the caller's actions on stdout with a line
// `ACTION dial` or `ACTION hangup` and waits for a line `OK` (or `ERR why`)
// on stdin; tests/integration/test_chromium_incoming.py answers them with
// baresip. Scenarios, in order:
//   answered: both ring; A answers -> A connected, B "Answered on another
//             device" and quiet; the caller hangs up -> A "the other party
//             hung up (200)".
//   declined: both ring; B declines -> B "Declined", A rings on; the caller
//             hangs up (CANCEL) -> A "The caller hung up".
//   all-declined: both ring; both decline (the trunk gets the reject code).
//   timeout (only with RING_TIMEOUT set, seconds): both ring until the
//             gateway's ring timeout -> both "Missed call from ...".
// Each session's ring must stop (body data-ringing="false", title restored,
// panel hidden) whenever its call stops ringing.
//
// Env: GATEWAY_URL, GW_ACCOUNT, GW_PASSWORD, ARTIFACT_DIR, EXPECT_FROM
// (the caller as shown), RING_TIMEOUT (optional), CHROMIUM_PATH.

import { chromium } from 'playwright-core';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';

const env = process.env;
const GATEWAY_URL = env.GATEWAY_URL || '';
const ACCOUNT = env.GW_ACCOUNT || '';
const PASSWORD = env.GW_PASSWORD || '';
const ARTIFACT_DIR = path.resolve(env.ARTIFACT_DIR || 'artifacts');
const EXPECT_FROM = env.EXPECT_FROM || '';
const RING_TIMEOUT_S = Number(env.RING_TIMEOUT || 0);
const CHROMIUM = env.CHROMIUM_PATH || '/usr/bin/chromium';
const NORMAL_TITLE = 'Gateway phone';
const RING_TITLE = 'Incoming call…';

if (!GATEWAY_URL || !ACCOUNT || !PASSWORD) {
  console.error('usage: GATEWAY_URL=... GW_ACCOUNT=alice GW_PASSWORD=... [EXPECT_FROM=1000] [RING_TIMEOUT=8] '
    + 'node chromium-incoming-endings.mjs  (answers ACTION lines on stdin with OK)');
  process.exit(2);
}
mkdirSync(ARTIFACT_DIR, { recursive: true });

const started = Date.now();
const t = () => ((Date.now() - started) / 1000).toFixed(1).padStart(5);
const pageLog = [];
const note = (line) => pageLog.push(`[${t()}s] ${line}`);
const step = (line) => { console.log(`[${t()}s] ${line}`); note(`== ${line}`); };
class TestFailure extends Error {}
const fail = (msg) => { throw new TestFailure(msg); };
const expect = (cond, msg) => { if (!cond) fail(msg); };

// --- the caller's actions, answered on stdin ---------------------------------
const stdinLines = [];
let stdinWaiter = null;
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  if (stdinWaiter) { const w = stdinWaiter; stdinWaiter = null; w(line); } else stdinLines.push(line);
});
async function action(name) {
  step(`ACTION ${name}`);
  console.log(`ACTION ${name}`);
  const line = stdinLines.length ? stdinLines.shift() : await new Promise((resolve, reject) => {
    const timer = setTimeout(() => { stdinWaiter = null; reject(new TestFailure(`no answer to ACTION ${name} within 15 s`)); }, 15000);
    stdinWaiter = (l) => { clearTimeout(timer); resolve(l); };
  });
  if (line.trim() !== 'OK') fail(`ACTION ${name} failed: ${line}`);
}

// --- pages ------------------------------------------------------------------
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream', '--ignore-certificate-errors',
  '--autoplay-policy=no-user-gesture-required'];

function describeFrame(payload) {
  try {
    const msg = JSON.parse(payload);
    if (msg && typeof msg.sdp === 'string') msg.sdp = '<sdp>';
    return JSON.stringify(msg);
  } catch {
    return String(payload).slice(0, 300);
  }
}

async function openSession(browser, name) {
  const context = await browser.newContext({ permissions: ['microphone'], ignoreHTTPSErrors: true, viewport: { width: 480, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  page.name = name;
  page.errors = [];
  page.on('console', (m) => note(`${name} console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => { note(`${name} pageerror: ${e.message}`); page.errors.push(e.message); });
  page.on('websocket', (ws) => {
    ws.on('framesent', (f) => note(`${name} ws -> ${describeFrame(f.payload)}`));
    ws.on('framereceived', (f) => note(`${name} ws <- ${describeFrame(f.payload)}`));
  });
  await page.goto(new URL('/', GATEWAY_URL).href);
  await page.fill('#login-account', ACCOUNT);
  await page.fill('#login-password', PASSWORD);
  await page.click('#login-button');
  await page.waitForSelector('#conn-status[data-state="open"]', { timeout: 15000 })
    .catch(() => fail(`${name}: signaling socket not open after sign-in`));
  return page;
}

const statusText = (p) => p.textContent('#call-status-text').then((s) => s.trim());
const callState = (p) => p.getAttribute('#call-status', 'data-state');

async function waitState(p, want, ms = 15000) {
  try {
    await p.waitForSelector(`#call-status[data-state="${want}"]`, { timeout: ms });
  } catch {
    fail(`${p.name}: state "${await callState(p)}" ("${await statusText(p)}"), expected "${want}" within ${ms / 1000} s`);
  }
}

async function expectRinging(p) {
  await waitState(p, 'incoming');
  const r = await p.evaluate(async () => {
    const titles = [];
    const end = performance.now() + 1300;
    while (performance.now() < end) {
      if (titles[titles.length - 1] !== document.title) titles.push(document.title);
      await new Promise((res) => setTimeout(res, 100));
    }
    return { ringing: document.body.dataset.ringing, text: document.getElementById('incoming-text').textContent, titles };
  });
  expect(r.ringing === 'true', `${p.name}: data-ringing="${r.ringing}" while offered`);
  expect(r.titles.includes(RING_TITLE) && r.titles.includes(NORMAL_TITLE), `${p.name}: title did not flash ${JSON.stringify(r.titles)}`);
  if (EXPECT_FROM) expect(r.text.includes(EXPECT_FROM), `${p.name}: panel "${r.text}" lacks ${EXPECT_FROM}`);
}

async function expectQuiet(p) {
  const q = await p.evaluate(() => ({
    ringing: document.body.dataset.ringing,
    audio: document.body.dataset.ringAudio,
    title: document.title,
    panel: !document.getElementById('incoming-panel').hidden,
    level: window.gatewayClient.ringLevel(),
  }));
  expect(q.ringing === 'false' && q.audio === 'off' && q.level === 0, `${p.name}: still ringing ${JSON.stringify(q)}`);
  expect(q.title === NORMAL_TITLE, `${p.name}: title "${q.title}" not restored`);
  expect(!q.panel, `${p.name}: incoming panel still shown`);
}

async function expectEnded(p, test, what) {
  await waitState(p, 'ended');
  const text = await statusText(p);
  expect(test(text), `${p.name}: status "${text}", expected ${what}`);
  await expectQuiet(p);
  return text;
}

const results = {};

async function run() {
  step(`launching ${CHROMIUM}`);
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ARGS, timeout: 30000 });
  try {
    const a = await openSession(browser, 'A');
    const b = await openSession(browser, 'B');

    step('scenario answered: A answers, B hears it was answered elsewhere, then the caller hangs up');
    await action('dial');
    await expectRinging(a);
    await expectRinging(b);
    await a.click('#accept-button');
    await waitState(a, 'connected', 20000);
    await expectQuiet(a);
    results.answered = { B: await expectEnded(b, (s) => s === 'Answered on another device', '"Answered on another device"') };
    await a.waitForTimeout(1500);
    await action('hangup');
    results.answered.A = await expectEnded(a, (s) => /other party hung up/i.test(s) && s.includes('200'), '"the other party hung up (200)"');
    await b.screenshot({ path: path.join(ARTIFACT_DIR, 'endings-answered-elsewhere.png') });

    step('scenario declined: B declines, A rings on, the caller gives up');
    await action('dial');
    await expectRinging(a);
    await expectRinging(b);
    await b.click('#reject-button');
    results.declined = { B: await expectEnded(b, (s) => s === 'Declined', '"Declined"') };
    await a.waitForTimeout(800);
    expect((await callState(a)) === 'incoming', `A stopped ringing when B declined: "${await statusText(a)}"`);
    expect((await a.evaluate(() => document.body.dataset.ringing)) === 'true', 'A: data-ringing not "true" after B declined');
    await action('hangup');
    results.declined.A = await expectEnded(a, (s) => s === 'The caller hung up', '"The caller hung up"');
    await a.screenshot({ path: path.join(ARTIFACT_DIR, 'endings-caller-hung-up.png') });

    step('scenario all-declined: both decline');
    await action('dial');
    await expectRinging(a);
    await expectRinging(b);
    await a.click('#reject-button');
    await b.click('#reject-button');
    results.allDeclined = {
      A: await expectEnded(a, (s) => s === 'Declined', '"Declined"'),
      B: await expectEnded(b, (s) => s === 'Declined', '"Declined"'),
    };
    await action('wait-ended');

    if (RING_TIMEOUT_S > 0) {
      step(`scenario timeout: nobody answers for ${RING_TIMEOUT_S} s`);
      await action('dial');
      const t0 = Date.now();
      await expectRinging(a);
      await expectRinging(b);
      await waitState(a, 'ended', (RING_TIMEOUT_S + 10) * 1000);
      results.timeout = {
        afterMs: Date.now() - t0,
        A: await expectEnded(a, (s) => s.startsWith('Missed call') && (!EXPECT_FROM || s.includes(EXPECT_FROM)), '"Missed call from …"'),
        B: await expectEnded(b, (s) => s.startsWith('Missed call'), '"Missed call from …"'),
      };
      await a.screenshot({ path: path.join(ARTIFACT_DIR, 'endings-missed-call.png') });
      await action('wait-ended');
    }
    const errors = [...a.errors, ...b.errors];
    expect(errors.length === 0, `page errors: ${errors.join(' | ')}`);
  } finally {
    await browser.close().catch(() => {});
  }
}

let exitCode = 0;
try {
  await run();
  console.log(JSON.stringify({ result: 'pass', results }));
  console.log('chromium-incoming-endings: PASS');
} catch (err) {
  exitCode = 1;
  const reason = err instanceof TestFailure ? err.message : `unexpected error: ${err && err.stack ? err.stack : err}`;
  console.error(`FAIL: ${reason}`);
  console.error('--- page log ---');
  console.error(pageLog.join('\n'));
  console.log(JSON.stringify({ result: 'fail', reason, results }));
} finally {
  try { writeFileSync(path.join(ARTIFACT_DIR, 'chromium-endings-page.log'), `${pageLog.join('\n')}\n`); } catch { /* best effort */ }
}
process.exit(exitCode);
