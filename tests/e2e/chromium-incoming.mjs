#!/usr/bin/env node
// An incoming call answered in headless Chromium through the gateway's web
// client. Exit code 0 = pass, 1 = fail, 2 = bad usage.
//
// Signs in, prints the line `READY-FOR-INCOMING` on stdout (the test driving
// this script then makes the trunk call the account; or set TRIGGER_URL and
// the script POSTs to it itself, as selftest.sh does with the mock gateway),
// waits for the incoming panel, checks the ring (body data-ringing="true",
// the WebAudio ringer running and audible, the title flashing), clicks
// Answer, waits for `connected`, lets media flow, asserts on getStats()
// (packets received and sent rising, received audio energy > 0) and on the
// security lock, hangs up (or, with HANGUP=remote, waits for the far end to).
// The last stdout line before PASS/FAIL is a one-line JSON summary with
// wall-clock timestamps (epoch ms) of each step, so that the caller can
// measure from its own dial.
//
// Env: GATEWAY_URL, GW_ACCOUNT, GW_PASSWORD, ARTIFACT_DIR (default
// ./artifacts), EXPECT_FROM (optional: text the caller display must contain),
// EXPECT_TRUNK_SECURITY (optional, e.g. "sdes-srtp"), MEDIA_SECONDS (6),
// INCOMING_TIMEOUT (seconds to wait for the call, 30), TRIGGER_URL
// (optional), HANGUP (browser | remote, default browser), CHROMIUM_PATH.

import { chromium } from 'playwright-core';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';

const env = process.env;
const GATEWAY_URL = env.GATEWAY_URL || '';
const ACCOUNT = env.GW_ACCOUNT || '';
const PASSWORD = env.GW_PASSWORD || '';
const ARTIFACT_DIR = path.resolve(env.ARTIFACT_DIR || 'artifacts');
const EXPECT_FROM = env.EXPECT_FROM || '';
const EXPECT_TRUNK = env.EXPECT_TRUNK_SECURITY || '';
const MEDIA_MS = Math.round(1000 * Number(env.MEDIA_SECONDS || 6));
const INCOMING_TIMEOUT_MS = Math.round(1000 * Number(env.INCOMING_TIMEOUT || 30));
const TRIGGER_URL = env.TRIGGER_URL || '';
const HANGUP = env.HANGUP || 'browser';
const CHROMIUM = env.CHROMIUM_PATH || '/usr/bin/chromium';

const CONNECT_TIMEOUT_MS = 20000;
const OVERALL_TIMEOUT_MS = 150000;
const MIN_PACKETS = 100;
const NORMAL_TITLE = 'Gateway phone';
const RING_TITLE = 'Incoming call…';

const missing = [['GATEWAY_URL', GATEWAY_URL], ['GW_ACCOUNT', ACCOUNT], ['GW_PASSWORD', PASSWORD]]
  .filter(([, v]) => !v).map(([k]) => k);
if (missing.length || !['browser', 'remote'].includes(HANGUP)) {
  if (missing.length) console.error(`chromium-incoming: missing environment variable(s): ${missing.join(', ')}`);
  console.error('usage: GATEWAY_URL=https://127.0.0.1:8443 GW_ACCOUNT=alice GW_PASSWORD=... ARTIFACT_DIR=out '
    + '[EXPECT_FROM=1000] [EXPECT_TRUNK_SECURITY=sdes-srtp] [TRIGGER_URL=...] [HANGUP=browser|remote] node chromium-incoming.mjs');
  process.exit(2);
}
let baseUrl;
try {
  baseUrl = new URL(GATEWAY_URL);
} catch {
  console.error(`chromium-incoming: GATEWAY_URL is not a URL: ${GATEWAY_URL}`);
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

function describeFrame(payload) {
  const text = typeof payload === 'string' ? payload : String(payload);
  try {
    const msg = JSON.parse(text);
    if (msg && typeof msg.sdp === 'string') msg.sdp = `<sdp ${msg.sdp.split(/\r?\n/).filter(Boolean).length} lines>`;
    if (msg && msg.token) msg.token = '<token>';
    return JSON.stringify(msg);
  } catch {
    return text.length > 300 ? `${text.slice(0, 300)}…` : text;
  }
}

const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--ignore-certificate-errors',
  // The remote audio must be played out for Chromium to measure its energy.
  '--autoplay-policy=no-user-gesture-required',
];

let browser = null;
let page = null;
const summary = { result: 'fail', gateway: baseUrl.origin, times: {} };
const mark = (name) => { summary.times[name] = Date.now(); };

async function readState(p) {
  return p.evaluate(() => {
    const s = document.getElementById('call-status');
    const text = document.getElementById('call-status-text') || s;
    return s ? { state: s.dataset.state, text: text.textContent.trim().replace(/\s+/g, ' ') } : null;
  }).catch(() => null);
}

async function readStats(p) {
  return p.evaluate(async () => {
    const pc = window.gatewayClient && window.gatewayClient.pc;
    if (!pc) return { error: 'window.gatewayClient.pc is not set' };
    const report = await pc.getStats();
    const out = { inbound: null, outbound: null, transport: null, pair: null, codecs: {} };
    const all = new Map();
    report.forEach((s) => all.set(s.id, s));
    report.forEach((s) => {
      const kind = s.kind || s.mediaType;
      if (s.type === 'inbound-rtp' && kind === 'audio') {
        out.inbound = {
          packetsReceived: s.packetsReceived, packetsLost: s.packetsLost, bytesReceived: s.bytesReceived,
          jitter: s.jitter, totalAudioEnergy: s.totalAudioEnergy, audioLevel: s.audioLevel,
          totalSamplesReceived: s.totalSamplesReceived, totalSamplesDuration: s.totalSamplesDuration,
          concealedSamples: s.concealedSamples, ssrc: s.ssrc, codecId: s.codecId,
        };
      } else if (s.type === 'outbound-rtp' && kind === 'audio') {
        out.outbound = { packetsSent: s.packetsSent, bytesSent: s.bytesSent, ssrc: s.ssrc, codecId: s.codecId };
      } else if (s.type === 'transport') {
        out.transport = {
          dtlsState: s.dtlsState, iceState: s.iceState, tlsVersion: s.tlsVersion, dtlsCipher: s.dtlsCipher,
          srtpCipher: s.srtpCipher, dtlsRole: s.dtlsRole, selectedCandidatePairId: s.selectedCandidatePairId,
        };
      }
    });
    if (out.transport && out.transport.selectedCandidatePairId) {
      const pair = all.get(out.transport.selectedCandidatePairId);
      if (pair) {
        const local = all.get(pair.localCandidateId) || {};
        const remote = all.get(pair.remoteCandidateId) || {};
        out.pair = {
          state: pair.state,
          local: `${local.address || local.ip}:${local.port}/${local.protocol}`,
          remote: `${remote.address || remote.ip}:${remote.port}/${remote.protocol}`,
        };
      }
    }
    for (const side of ['inbound', 'outbound']) {
      const codec = out[side] && all.get(out[side].codecId);
      if (codec) out.codecs[side] = `${codec.mimeType}/${codec.clockRate}`;
      if (out[side]) delete out[side].codecId;
    }
    return out;
  });
}

async function readSecurity(p) {
  return p.evaluate(() => {
    const el = document.getElementById('call-security');
    const text = (id) => (document.getElementById(id) || {}).textContent || '';
    return el ? {
      visible: !el.hidden,
      level: el.dataset.level,
      browser: text('security-browser').replace(/^Browser:\s*/, ''),
      trunk: text('security-trunk').replace(/^Trunk:\s*/, ''),
    } : null;
  });
}

async function readRing(p) {
  return p.evaluate(() => ({
    ringing: document.body.dataset.ringing,
    audio: document.body.dataset.ringAudio,
    title: document.title,
    level: window.gatewayClient.ringLevel(),
  }));
}

/** Samples the title and the ringer's level for `ms`. */
async function watchRing(p, ms) {
  return p.evaluate(async (ms) => {
    const titles = [];
    let peak = 0;
    const end = performance.now() + ms;
    while (performance.now() < end) {
      if (titles[titles.length - 1] !== document.title) titles.push(document.title);
      peak = Math.max(peak, window.gatewayClient.ringLevel());
      await new Promise((r) => setTimeout(r, 50));
    }
    return { titles, peak };
  }, ms);
}

async function run() {
  step(`launching ${CHROMIUM}`);
  try {
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ARGS, timeout: 30000 });
  } catch (err) {
    fail(`could not start Chromium at ${CHROMIUM}: ${err.message.split('\n')[0]}`);
  }
  note(`chromium ${browser.version()}`);
  const context = await browser.newContext({
    permissions: ['microphone'],
    ignoreHTTPSErrors: true,
    viewport: { width: 480, height: 800 },
  });
  page = await context.newPage();
  page.setDefaultTimeout(15000);
  page.on('console', (m) => note(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => { note(`pageerror: ${e.message}`); (summary.pageErrors ||= []).push(e.message); });
  page.on('requestfailed', (r) => note(`requestfailed: ${r.method()} ${r.url().replace(/token=[^&]+/, 'token=<token>')} ${r.failure() ? r.failure().errorText : ''}`));
  page.on('response', (r) => { if (r.status() >= 400) note(`http ${r.status()}: ${r.request().method()} ${r.url()}`); });
  page.on('websocket', (ws) => {
    note(`websocket open ${ws.url().replace(/token=[^&]+/, 'token=<token>')}`);
    ws.on('framesent', (f) => {
      note(`ws -> ${describeFrame(f.payload)}`);
      try {
        const msg = JSON.parse(f.payload);
        if (msg.type === 'accept') { mark('acceptSent'); summary.answerSdp = msg.sdp; }
      } catch { /* not JSON */ }
    });
    ws.on('framereceived', (f) => {
      note(`ws <- ${describeFrame(f.payload)}`);
      try {
        const msg = JSON.parse(f.payload);
        if (msg.type === 'incoming' && !summary.times.incomingFrame) {
          mark('incomingFrame');
          summary.incoming = { id: msg.id, from: msg.from, verstat: msg.verstat };
          summary.offerSdp = msg.sdp;
        }
        if (msg.type === 'connected') { mark('connectedFrame'); summary.connected = msg; }
        if (msg.type === 'hangup') (summary.hangups ||= []).push({ code: msg.code, reason: msg.reason });
      } catch { /* not JSON */ }
    });
    ws.on('close', () => note('websocket closed'));
  });

  const pageUrl = new URL('/', baseUrl).href;
  step(`opening ${pageUrl}`);
  let response;
  try {
    response = await page.goto(pageUrl, { waitUntil: 'load', timeout: 15000 });
  } catch (err) {
    fail(`the gateway is not reachable at ${pageUrl} (${err.message.split('\n')[0]})`);
  }
  if (!response || !response.ok()) fail(`GET ${pageUrl} answered HTTP ${response ? response.status() : 'nothing'}`);

  step(`signing in as ${ACCOUNT}`);
  await page.fill('#login-account', ACCOUNT);
  await page.fill('#login-password', PASSWORD);
  await page.click('#login-button');
  await page.waitForFunction(() => {
    const err = document.getElementById('login-error');
    return !document.getElementById('phone-view').hidden || (err && !err.hidden);
  }, null, { timeout: 15000 }).catch(() => fail('no answer to sign-in within 15 s'));
  const loginError = await page.evaluate(() => {
    const err = document.getElementById('login-error');
    return err && !err.hidden ? err.textContent : null;
  });
  if (loginError) fail(`sign-in failed: ${loginError}`);
  await page.waitForSelector('#conn-status[data-state="open"]', { timeout: 10000 })
    .catch(() => fail('signaling WebSocket did not open within 10 s'));

  await page.evaluate(() => {
    const el = document.getElementById('call-status');
    window.__e2eStates = [el.dataset.state];
    new MutationObserver(() => {
      const s = el.dataset.state;
      if (window.__e2eStates[window.__e2eStates.length - 1] !== s) window.__e2eStates.push(s);
    }).observe(el, { attributes: true, attributeFilter: ['data-state'] });
  });
  const quiet = await readRing(page);
  if (quiet.ringing !== 'false' || quiet.title !== NORMAL_TITLE) fail(`rings before any call: ${JSON.stringify(quiet)}`);

  mark('ready');
  console.log('READY-FOR-INCOMING');
  note('== READY-FOR-INCOMING');
  if (TRIGGER_URL) {
    step(`POST ${TRIGGER_URL}`);
    // Through the page's context: it accepts the mock's self-signed certificate.
    const res = await page.request.post(TRIGGER_URL).catch((e) => fail(`TRIGGER_URL: ${e.message.split('\n')[0]}`));
    if (!res.ok()) fail(`TRIGGER_URL answered ${res.status()}`);
  }

  step(`waiting up to ${INCOMING_TIMEOUT_MS / 1000} s for the incoming call`);
  try {
    await page.waitForFunction(() => document.getElementById('call-status').dataset.state === 'incoming',
      null, { timeout: INCOMING_TIMEOUT_MS, polling: 50 });
  } catch {
    const st = await readState(page);
    fail(`no incoming call within ${INCOMING_TIMEOUT_MS / 1000} s (state ${st ? `${st.state}: ${st.text}` : '?'})`);
  }
  mark('incomingShown');
  const problems = [];
  const shown = await page.evaluate(() => ({
    panelVisible: !document.getElementById('incoming-panel').hidden,
    text: document.getElementById('incoming-text').textContent.trim().replace(/\s+/g, ' '),
    acceptFocused: document.activeElement && document.activeElement.id === 'accept-button',
  }));
  summary.incomingPanel = shown;
  step(`incoming: "${shown.text}"`);
  if (!shown.panelVisible) problems.push('the incoming panel is hidden');
  if (EXPECT_FROM && !shown.text.includes(EXPECT_FROM)) problems.push(`the panel says "${shown.text}", expected the caller ${EXPECT_FROM}`);

  // The ring: 2.6 s covers a title flash (1 s) and a double ring (0-1.0 s of each 3 s cycle).
  const ring = await readRing(page);
  const watched = await watchRing(page, 2600);
  summary.ring = { ...ring, titles: watched.titles, peakLevel: Number(watched.peak.toFixed(4)) };
  step(`ringing: ${JSON.stringify(summary.ring)}`);
  if (ring.ringing !== 'true') problems.push(`body data-ringing="${ring.ringing}" while the call is offered`);
  if (ring.audio !== 'running') problems.push(`ringer AudioContext is "${ring.audio}", expected running`);
  if (!(watched.peak > 0.01)) problems.push(`ring tone silent (peak level ${watched.peak})`);
  if (!(watched.titles.includes(RING_TITLE) && watched.titles.includes(NORMAL_TITLE))) {
    problems.push(`title did not flash: ${JSON.stringify(watched.titles)}`);
  }
  await page.mouse.move(0, 0);
  await page.screenshot({ path: path.join(ARTIFACT_DIR, 'chromium-incoming-ringing.png'), fullPage: true });
  if (problems.length) fail(problems.join('; '));
  const stillOffered = await readState(page);
  if (stillOffered.state !== 'incoming') fail(`the call stopped ringing before Answer: ${stillOffered.text}`);

  step('clicking Answer');
  mark('acceptClicked');
  await page.click('#accept-button');
  try {
    await page.waitForFunction(() => {
      const s = document.getElementById('call-status').dataset.state;
      return s === 'connected' || s === 'ended';
    }, null, { timeout: CONNECT_TIMEOUT_MS, polling: 50 });
  } catch {
    const st = await readState(page);
    fail(`not connected within ${CONNECT_TIMEOUT_MS / 1000} s of Answer (state ${st ? `${st.state}: ${st.text}` : '?'})`);
  }
  mark('connectedShown');
  let st = await readState(page);
  if (st.state !== 'connected') {
    const msg = await page.evaluate(() => {
      const m = document.getElementById('call-message');
      return m && !m.hidden ? m.textContent : '';
    });
    fail(`the call ended instead of connecting: ${st.text}${msg ? ` / ${msg}` : ''}`);
  }
  summary.acceptToConnectedMs = summary.times.connectedShown - summary.times.acceptClicked;
  step(`connected ${summary.acceptToConnectedMs} ms after Answer; media for ${MEDIA_MS / 1000} s`);

  const after = await readRing(page);
  summary.ringAfterAnswer = after;
  if (after.ringing !== 'false') problems.push(`still ringing after Answer (data-ringing="${after.ringing}")`);
  if (after.title !== NORMAL_TITLE) problems.push(`title "${after.title}" after Answer, expected "${NORMAL_TITLE}"`);
  if (after.level !== 0) problems.push(`ring tone still sounding after Answer (level ${after.level})`);

  await page.waitForTimeout(1000);
  const first = await readStats(page);
  if (first.error) fail(first.error);
  await page.waitForTimeout(Math.max(1000, MEDIA_MS - 1000));
  st = await readState(page);
  if (st.state !== 'connected') fail(`call dropped during media: ${st.text}`);
  const stats = await readStats(page);
  if (stats.error) fail(stats.error);
  summary.statsFirst = { received: first.inbound && first.inbound.packetsReceived, sent: first.outbound && first.outbound.packetsSent };
  summary.stats = stats;
  const security = await readSecurity(page);
  summary.security = security;

  step('taking the connected screenshot');
  await page.mouse.move(0, 0);
  await page.screenshot({ path: path.join(ARTIFACT_DIR, 'chromium-incoming-connected.png'), fullPage: true });

  const inb = stats.inbound;
  const outb = stats.outbound;
  if (!inb) problems.push('no inbound-rtp audio stats');
  else {
    if (!(inb.packetsReceived > MIN_PACKETS)) problems.push(`inbound packetsReceived ${inb.packetsReceived} <= ${MIN_PACKETS}`);
    if (!(inb.packetsReceived > (summary.statsFirst.received || 0))) problems.push(`packetsReceived not rising (${summary.statsFirst.received} -> ${inb.packetsReceived})`);
    if (!(inb.totalAudioEnergy > 0)) problems.push(`inbound totalAudioEnergy ${inb.totalAudioEnergy} is not > 0 (silence received)`);
  }
  if (!outb) problems.push('no outbound-rtp audio stats');
  else {
    if (!(outb.packetsSent > MIN_PACKETS)) problems.push(`outbound packetsSent ${outb.packetsSent} <= ${MIN_PACKETS}`);
    if (!(outb.packetsSent > (summary.statsFirst.sent || 0))) problems.push(`packetsSent not rising (${summary.statsFirst.sent} -> ${outb.packetsSent})`);
  }
  if (stats.transport && stats.transport.dtlsState && stats.transport.dtlsState !== 'connected') {
    problems.push(`DTLS transport state is ${stats.transport.dtlsState}`);
  }
  if (!security || !security.visible) problems.push('the security lock (#call-security) is not shown');
  else {
    if (!/dtls-srtp/i.test(security.browser)) problems.push(`lock shows browser leg "${security.browser}", expected dtls-srtp`);
    if (EXPECT_TRUNK && !security.trunk.toLowerCase().includes(EXPECT_TRUNK.toLowerCase())) {
      problems.push(`lock shows trunk leg "${security.trunk}", expected ${EXPECT_TRUNK}`);
    }
    if (EXPECT_TRUNK && /srtp/i.test(EXPECT_TRUNK) && security.level !== 'secure') {
      problems.push(`lock level is "${security.level}", expected "secure"`);
    }
  }

  if (HANGUP === 'browser') {
    step('clicking Hang up');
    mark('hangupClicked');
    await page.click('#hangup-button');
    await page.waitForSelector('#call-status[data-state="ended"]', { timeout: 5000 })
      .catch(() => problems.push('call state did not become "ended" within 5 s of Hang up'));
    await page.waitForTimeout(500);
  } else {
    console.log('WAITING-FOR-REMOTE-HANGUP');
    step('waiting for the far end to hang up');
    await page.waitForSelector('#call-status[data-state="ended"]', { timeout: 20000 })
      .catch(() => problems.push('the far end did not end the call within 20 s'));
  }
  mark('ended');
  st = await readState(page);
  summary.endedText = st && st.text;
  summary.states = await page.evaluate(() => window.__e2eStates || []);
  if (await page.evaluate(() => window.gatewayClient.pc !== null)) problems.push('window.gatewayClient.pc still set after the call');
  if (summary.pageErrors) problems.push(`page errors: ${summary.pageErrors.join(' | ')}`);

  if (problems.length) fail(problems.join('; '));
  summary.result = 'pass';
}

async function saveFailureScreenshot() {
  if (!page) return null;
  const file = path.join(ARTIFACT_DIR, 'chromium-incoming-failure.png');
  try {
    await page.screenshot({ path: file, fullPage: true, timeout: 5000 });
    return file;
  } catch {
    return null;
  }
}

function printSummary() {
  const s = { ...summary };
  delete s.offerSdp;
  delete s.answerSdp;
  console.log(JSON.stringify(s));
}

let exitCode = 0;
const watchdog = setTimeout(async () => {
  console.error(`FAIL: overall time limit of ${OVERALL_TIMEOUT_MS / 1000} s reached`);
  console.error('--- page log ---');
  console.error(pageLog.join('\n'));
  await saveFailureScreenshot();
  printSummary();
  process.exit(1);
}, OVERALL_TIMEOUT_MS);

try {
  await run();
  printSummary();
  console.log('chromium-incoming: PASS');
} catch (err) {
  exitCode = 1;
  const reason = err instanceof TestFailure ? err.message : `unexpected error: ${err && err.stack ? err.stack : err}`;
  summary.reason = reason;
  if (page) summary.states = summary.states || await page.evaluate(() => window.__e2eStates || []).catch(() => undefined);
  const shot = await saveFailureScreenshot();
  console.error(`FAIL: ${reason}`);
  console.error('--- page log ---');
  console.error(pageLog.join('\n') || '(empty)');
  console.error('--- end of page log ---');
  if (shot) console.error(`screenshot: ${shot}`);
  printSummary();
} finally {
  try { writeFileSync(path.join(ARTIFACT_DIR, 'chromium-incoming-page.log'), `${pageLog.join('\n')}\n`); } catch { /* best effort */ }
  for (const [key, file] of [['offerSdp', 'incoming-offer.sdp'], ['answerSdp', 'incoming-answer.sdp']]) {
    if (summary[key]) {
      try { writeFileSync(path.join(ARTIFACT_DIR, file), summary[key]); } catch { /* best effort */ }
    }
  }
  try { if (browser) await browser.close(); } catch { /* already gone */ }
  clearTimeout(watchdog);
}
process.exit(exitCode);
