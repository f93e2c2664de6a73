#!/usr/bin/env node
// End-to-end call through the gateway from headless Chromium.
//
// Signs in on the gateway's web client, dials GW_NUMBER with the dial pad,
// waits for the call to connect, lets media flow, then asserts on the
// browser's own WebRTC statistics (packets both ways, received audio energy)
// and on the security lock. Exit code 0 = pass, 1 = fail, 2 = bad usage.
//
// Env: GATEWAY_URL (https://127.0.0.1:8443), GW_ACCOUNT, GW_PASSWORD,
// GW_NUMBER, ARTIFACT_DIR (default ./artifacts), EXPECT_TRUNK_SECURITY
// (optional, e.g. "sdes-srtp"), MEDIA_SECONDS (default 6),
// CHROMIUM_PATH (default /usr/bin/chromium), DTMF_DIGITS (optional: pressed
// on the dial pad once connected, 300 ms apart; the page must show them as
// sent and no error), HOLD (optional, "1": before
// hanging up, click Hold, check the button and status show the hold and
// the far end's audio stops, click Resume, check it flows again),
// EXPECT_RINGBACK (optional, "local" or "network": the ringback the page
// must have played while the call rang, from body[data-ringback]),
// TRANSFER_TO (optional: instead of hanging up, click Transfer, answer its
// prompt with this number, and expect the gateway's `transferred` 2xx to
// show and the call to end "transferred"), EXPECT_CODEC (optional, e.g.
// "PCMA": the trunk changes the codec during the media time, so once it is
// over both directions must use that codec, and 2 s more of media must
// bring packets and audio energy; the gateway's `offer` is answered by the
// web client itself).

import { chromium } from 'playwright-core';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';

const env = process.env;
const GATEWAY_URL = env.GATEWAY_URL || '';
const ACCOUNT = env.GW_ACCOUNT || '';
const PASSWORD = env.GW_PASSWORD || '';
const NUMBER = env.GW_NUMBER || '';
const ARTIFACT_DIR = path.resolve(env.ARTIFACT_DIR || 'artifacts');
const EXPECT_TRUNK = env.EXPECT_TRUNK_SECURITY || '';
// The lock's level when it is not what the trunk leg implies ("private").
const EXPECT_LEVEL = env.EXPECT_LOCK_LEVEL || '';
const MEDIA_MS = Math.round(1000 * Number(env.MEDIA_SECONDS || 6));
const CHROMIUM = env.CHROMIUM_PATH || '/usr/bin/chromium';
const DTMF = env.DTMF_DIGITS || '';
const HOLD = env.HOLD === '1';
const EXPECT_RINGBACK = env.EXPECT_RINGBACK || '';
const TRANSFER_TO = env.TRANSFER_TO || '';
const EXPECT_CODEC = env.EXPECT_CODEC || '';

const CONNECT_TIMEOUT_MS = 20000;
const OVERALL_TIMEOUT_MS = 120000;
const MIN_PACKETS = 100;

const missing = [
  ['GATEWAY_URL', GATEWAY_URL], ['GW_ACCOUNT', ACCOUNT], ['GW_PASSWORD', PASSWORD], ['GW_NUMBER', NUMBER],
].filter(([, v]) => !v).map(([k]) => k);
if (missing.length) {
  console.error(`chromium-call: missing environment variable(s): ${missing.join(', ')}`);
  console.error('usage: GATEWAY_URL=https://127.0.0.1:8443 GW_ACCOUNT=alice GW_PASSWORD=... GW_NUMBER=100 '
    + 'ARTIFACT_DIR=out [EXPECT_TRUNK_SECURITY=sdes-srtp] node chromium-call.mjs');
  process.exit(2);
}
let baseUrl;
try {
  baseUrl = new URL(GATEWAY_URL);
} catch {
  console.error(`chromium-call: GATEWAY_URL is not a URL: ${GATEWAY_URL}`);
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

// Shortens signaling frames for the log: SDP bodies become their line count.
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
let summary = { result: 'fail', gateway: baseUrl.origin, number: NUMBER };

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
          totalSamplesReceived: s.totalSamplesReceived, concealedSamples: s.concealedSamples, ssrc: s.ssrc,
          codecId: s.codecId,
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
          currentRoundTripTime: pair.currentRoundTripTime,
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
      text: el.textContent.trim().replace(/\s+/g, ' '),
    } : null;
  });
}

async function run() {
  step(`launching ${CHROMIUM}`);
  try {
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ARGS, timeout: 30000 });
  } catch (err) {
    fail(`could not start Chromium at ${CHROMIUM}: ${err.message.split('\n')[0]}`);
  }
  note(`chromium ${browser.version()}`);
  // Playwright gives the browser a fresh temporary --user-data-dir and removes it on close.
  const context = await browser.newContext({
    permissions: ['microphone'],
    ignoreHTTPSErrors: true,
    viewport: { width: 480, height: 800 },
  });
  page = await context.newPage();
  page.setDefaultTimeout(15000);

  page.on('console', (m) => note(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => note(`pageerror: ${e.message}`));
  page.on('requestfailed', (r) => note(`requestfailed: ${r.method()} ${r.url().replace(/token=[^&]+/, 'token=<token>')} ${r.failure() ? r.failure().errorText : ''}`));
  page.on('response', (r) => { if (r.status() >= 400) note(`http ${r.status()}: ${r.request().method()} ${r.url()}`); });
  page.on('websocket', (ws) => {
    const url = ws.url().replace(/token=[^&]+/, 'token=<token>');
    note(`websocket open ${url}`);
    ws.on('framesent', (f) => note(`ws -> ${describeFrame(f.payload)}`));
    ws.on('framereceived', (f) => note(`ws <- ${describeFrame(f.payload)}`));
    ws.on('socketerror', (e) => note(`websocket error ${e}`));
    ws.on('close', () => note('websocket closed'));
  });

  const pageUrl = new URL('/', baseUrl).href;
  step(`opening ${pageUrl}`);
  let response;
  try {
    response = await page.goto(pageUrl, { waitUntil: 'load', timeout: 15000 });
  } catch (err) {
    const reason = err.message.split('\n')[0];
    fail(`the gateway is not reachable at ${pageUrl} (${reason}); is it running, and is GATEWAY_URL right?`);
  }
  if (!response || !response.ok()) {
    fail(`GET ${pageUrl} answered HTTP ${response ? response.status() : 'nothing'}; expected the web client`);
  }
  if (!(await page.locator('#login-form').count()) && !(await page.locator('#phone-view').count())) {
    fail(`${pageUrl} did not serve the web client (no #login-form)`);
  }

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

  step('waiting for the signaling WebSocket');
  await page.waitForSelector('#conn-status[data-state="open"]', { timeout: 10000 })
    .catch(async () => fail(`signaling WebSocket did not open within 10 s (status: ${await page.textContent('#conn-status').catch(() => '?')})`));

  // Record every call state the page goes through, and every ringback.
  await page.evaluate(() => {
    const el = document.getElementById('call-status');
    window.__e2eStates = [el.dataset.state];
    new MutationObserver(() => {
      const s = el.dataset.state;
      if (window.__e2eStates[window.__e2eStates.length - 1] !== s) window.__e2eStates.push(s);
    }).observe(el, { attributes: true, attributeFilter: ['data-state'] });
    window.__e2eRingback = [document.body.dataset.ringback];
    new MutationObserver(() => {
      const r = document.body.dataset.ringback;
      if (window.__e2eRingback[window.__e2eRingback.length - 1] !== r) window.__e2eRingback.push(r);
    }).observe(document.body, { attributes: true, attributeFilter: ['data-ringback'] });
  });

  step(`dialling ${NUMBER} on the dial pad`);
  await page.fill('#number', '');
  for (const ch of NUMBER) {
    const key = page.locator(`#dialpad button[data-digit="${ch}"]`);
    if (await key.count()) {
      await key.click();
    } else {
      await page.locator('#number').press(ch === ' ' ? 'Space' : ch);
    }
  }
  const typed = await page.inputValue('#number');
  if (typed !== NUMBER) fail(`the number field shows "${typed}" after dialling "${NUMBER}"`);

  const callStarted = Date.now();
  step('clicking Call');
  await page.click('#call-button');
  try {
    await page.waitForFunction(() => {
      const s = document.getElementById('call-status').dataset.state;
      return s === 'connected' || s === 'ended';
    }, null, { timeout: CONNECT_TIMEOUT_MS, polling: 100 });
  } catch {
    const st = await readState(page);
    fail(`call not connected within ${CONNECT_TIMEOUT_MS / 1000} s (state ${st ? `${st.state}: ${st.text}` : 'unknown'})`);
  }
  let st = await readState(page);
  if (st.state !== 'connected') {
    const msg = await page.evaluate(() => {
      const m = document.getElementById('call-message');
      return m && !m.hidden ? m.textContent : '';
    });
    fail(`call ended before connecting: ${st.text}${msg ? ` / ${msg}` : ''}`);
  }
  summary.connectMs = Date.now() - callStarted;
  step(`connected after ${summary.connectMs} ms; letting media flow for ${MEDIA_MS / 1000} s`);

  await page.waitForTimeout(MEDIA_MS);
  st = await readState(page);
  if (st.state !== 'connected') fail(`call dropped during media: ${st.text}`);

  if (DTMF) {
    step(`pressing ${DTMF} on the dial pad during the call`);
    for (const ch of DTMF) {
      await page.locator(`#dialpad button[data-digit="${ch}"]`).click();
      await page.waitForTimeout(300);
    }
    // The gateway plays them 200 ms apart; the call's audio goes on.
    await page.waitForTimeout(1500);
    const tones = await page.evaluate(() => ({
      shown: !document.getElementById('call-dtmf').hidden,
      sent: document.getElementById('dtmf-sent').textContent,
      message: document.getElementById('call-message').hidden ? '' : document.getElementById('call-message').textContent,
    }));
    summary.dtmf = tones;
    if (!tones.shown || tones.sent !== DTMF) fail(`the page shows tones sent "${tones.sent}" (visible: ${tones.shown}), expected "${DTMF}"`);
    if (tones.message) fail(`the page shows a message after the tones: ${tones.message}`);
    st = await readState(page);
    if (st.state !== 'connected') fail(`call dropped after the tones: ${st.text}`);
  }

  const stats = await readStats(page);
  summary.stats = stats;
  if (stats.error) fail(stats.error);
  const security = await readSecurity(page);
  summary.security = security && { browser: security.browser, trunk: security.trunk, level: security.level };

  step('taking the connected screenshot');
  await page.mouse.move(0, 0);
  await page.screenshot({ path: path.join(ARTIFACT_DIR, 'chromium-connected.png'), fullPage: true });

  const problems = [];
  const inb = stats.inbound;
  const outb = stats.outbound;
  if (!inb) problems.push('no inbound-rtp audio stats');
  else {
    if (!(inb.packetsReceived > MIN_PACKETS)) problems.push(`inbound packetsReceived ${inb.packetsReceived} <= ${MIN_PACKETS}`);
    if (!(inb.totalAudioEnergy > 0)) problems.push(`inbound totalAudioEnergy ${inb.totalAudioEnergy} is not > 0 (silence received)`);
  }
  if (!outb) problems.push('no outbound-rtp audio stats');
  else if (!(outb.packetsSent > MIN_PACKETS)) problems.push(`outbound packetsSent ${outb.packetsSent} <= ${MIN_PACKETS}`);
  if (stats.transport && stats.transport.dtlsState && stats.transport.dtlsState !== 'connected') {
    problems.push(`DTLS transport state is ${stats.transport.dtlsState}`);
  }

  if (!security || !security.visible) problems.push('the security lock (#call-security) is not shown');
  else {
    if (!/dtls-srtp/i.test(security.browser)) problems.push(`lock shows browser leg "${security.browser}", expected dtls-srtp`);
    if (EXPECT_TRUNK && !security.trunk.toLowerCase().includes(EXPECT_TRUNK.toLowerCase())) {
      problems.push(`lock shows trunk leg "${security.trunk}", expected ${EXPECT_TRUNK}`);
    }
    if (EXPECT_LEVEL) {
      if (security.level !== EXPECT_LEVEL) problems.push(`lock level is "${security.level}", expected "${EXPECT_LEVEL}"`);
      if (EXPECT_LEVEL === 'private' && !/not decrypted by the gateway/i.test(security.text)) {
        problems.push(`the private lock reads "${security.text}", expected "not decrypted by the gateway"`);
      }
    } else if (EXPECT_TRUNK) {
      const trunkEncrypted = /srtp/i.test(EXPECT_TRUNK);
      const want = trunkEncrypted ? 'secure' : 'insecure';
      if (security.level !== want) problems.push(`lock level is "${security.level}", expected "${want}" for trunk ${EXPECT_TRUNK}`);
    }
  }

  summary.ringback = await page.evaluate(() => window.__e2eRingback || []);
  if (EXPECT_RINGBACK && !summary.ringback.includes(EXPECT_RINGBACK)) {
    problems.push(`ringback went ${JSON.stringify(summary.ringback)}, expected "${EXPECT_RINGBACK}" among them`);
  }
  if (summary.ringback[summary.ringback.length - 1] !== 'off') {
    problems.push(`ringback still "${summary.ringback[summary.ringback.length - 1]}" once connected`);
  }

  if (EXPECT_CODEC) await checkCodec(page, stats, problems);

  if (HOLD) await holdAndResume(page, problems);

  if (TRANSFER_TO) {
    await transfer(page, problems);
    if (problems.length) fail(problems.join('; '));
    summary.result = 'pass';
    return;
  }

  step('clicking Hang up');
  await page.click('#hangup-button');
  await page.waitForSelector('#call-status[data-state="ended"]', { timeout: 5000 })
    .catch(() => problems.push('call state did not become "ended" within 5 s of Hang up'));
  // Give the gateway a moment to confirm with its own hangup (code and reason).
  await page.waitForTimeout(500);
  st = await readState(page);
  summary.endedText = st && st.text;
  summary.states = await page.evaluate(() => window.__e2eStates || []);
  const micLive = await page.evaluate(() => window.gatewayClient.pc !== null);
  if (micLive) problems.push('window.gatewayClient.pc still set after hang-up');

  if (problems.length) fail(problems.join('; '));
  summary.result = 'pass';
}

/** TRANSFER_TO: the Transfer button, its prompt, the gateway's outcome. */
async function transfer(p, problems) {
  const before = await p.evaluate(() => document.getElementById('transfer-button').disabled);
  if (before) problems.push('the Transfer button is disabled in a connected call');
  p.once('dialog', (d) => { note(`dialog: ${d.message()}`); d.accept(TRANSFER_TO); });
  step(`clicking Transfer, to ${TRANSFER_TO}`);
  await p.click('#transfer-button');
  await p.waitForSelector('#call-status[data-transfer="done"]', { timeout: 10000 })
    .catch(() => problems.push('no successful `transferred` shown within 10 s of the click'));
  await p.waitForSelector('#call-status[data-state="ended"]', { timeout: 10000 })
    .catch(() => problems.push('the call did not end within 10 s of the transfer'));
  await p.waitForTimeout(500);
  const shown = await p.evaluate(() => ({
    transfer: document.getElementById('call-status').dataset.transfer,
    code: document.getElementById('call-status').dataset.transferCode,
    text: document.getElementById('call-status-text').textContent.trim(),
    pc: window.gatewayClient.pc !== null,
  }));
  summary.transfer = shown;
  await p.screenshot({ path: path.join(ARTIFACT_DIR, 'chromium-transferred.png'), fullPage: true });
  if (shown.code !== '200') problems.push(`data-transfer-code is "${shown.code}", expected 200`);
  if (!/transferred/i.test(shown.text)) problems.push(`the status line shows "${shown.text}" after the transfer`);
  if (shown.pc) problems.push('window.gatewayClient.pc still set after the transfer');
}

/** What the Hold button and the status line show. */
async function readHold(p) {
  return p.evaluate(() => {
    const b = document.getElementById('hold-button');
    return {
      label: b.textContent.trim(), pressed: b.getAttribute('aria-pressed'), disabled: b.disabled,
      state: b.dataset.state, status: document.getElementById('call-status-text').textContent.trim(),
      client: window.gatewayClient.hold,
    };
  });
}

/** EXPECT_CODEC: both directions use it now, and media still flows with it. */
async function checkCodec(p, stats, problems) {
  const want = `audio/${EXPECT_CODEC}`.toLowerCase();
  for (const side of ['inbound', 'outbound']) {
    const got = (stats.codecs[side] || '').toLowerCase();
    if (!got.startsWith(`${want}/`)) problems.push(`${side} codec is "${stats.codecs[side]}", expected ${want}`);
  }
  step(`codec ${EXPECT_CODEC} in use; 2 s more of media`);
  await p.waitForTimeout(2000);
  const after = await readStats(p);
  const packets = after.inbound.packetsReceived - stats.inbound.packetsReceived;
  const energy = after.inbound.totalAudioEnergy - stats.inbound.totalAudioEnergy;
  const sent = after.outbound.packetsSent - stats.outbound.packetsSent;
  summary.afterCodecChange = { packets, energy, sent, codecs: after.codecs };
  if (!(packets > 50)) problems.push(`${packets} packets received in the 2 s after the codec change`);
  if (!(energy > 0)) problems.push(`no audio energy received after the codec change (${energy})`);
  if (!(sent > 50)) problems.push(`${sent} packets sent in the 2 s after the codec change`);
}

/** RTP packets received by the browser over `ms`. */
async function receivedOver(p, ms) {
  const a = await readStats(p);
  await p.waitForTimeout(ms);
  const b = await readStats(p);
  return (b.inbound ? b.inbound.packetsReceived : 0) - (a.inbound ? a.inbound.packetsReceived : 0);
}

/** HOLD=1: Hold, then Resume, through the buttons; the trunk (baresip)
 * stops sending while held (it answers our a=sendonly with recvonly). */
async function holdAndResume(p, problems) {
  const before = await readHold(p);
  if (before.label !== 'Hold' || before.disabled) problems.push(`before the hold the button shows ${JSON.stringify(before)}`);
  step('clicking Hold');
  await p.click('#hold-button');
  await p.waitForSelector('#hold-button[aria-pressed="true"]', { timeout: 10000 })
    .catch(() => problems.push('the Hold button was not pressed within 10 s of the click'));
  const held = await readHold(p);
  summary.held = held;
  if (held.label !== 'Resume' || held.client !== 'browser' || !/on hold/i.test(held.status)) {
    problems.push(`while held the page shows ${JSON.stringify(held)}`);
  }
  await p.waitForTimeout(1000);
  await p.screenshot({ path: path.join(ARTIFACT_DIR, 'chromium-held.png'), fullPage: true });
  summary.receivedWhileHeld = await receivedOver(p, 3000);
  step('clicking Resume');
  await p.click('#hold-button');
  await p.waitForSelector('#hold-button[aria-pressed="false"]', { timeout: 10000 })
    .catch(() => problems.push('the Resume click was not confirmed within 10 s'));
  const resumed = await readHold(p);
  summary.resumed = resumed;
  if (resumed.label !== 'Hold' || resumed.client !== 'none' || resumed.status !== 'Connected') {
    problems.push(`after the resume the page shows ${JSON.stringify(resumed)}`);
  }
  await p.waitForTimeout(500);
  summary.receivedAfterResume = await receivedOver(p, 3000);
  if (summary.receivedWhileHeld > 10) problems.push(`${summary.receivedWhileHeld} RTP packets arrived in 3 s of hold`);
  if (summary.receivedAfterResume < 100) problems.push(`only ${summary.receivedAfterResume} RTP packets in 3 s after the resume`);
}

async function saveFailureScreenshot() {
  if (!page) return null;
  const file = path.join(ARTIFACT_DIR, 'chromium-failure.png');
  try {
    await page.screenshot({ path: file, fullPage: true, timeout: 5000 });
    return file;
  } catch {
    return null;
  }
}

let exitCode = 0;
const watchdog = setTimeout(async () => {
  console.error(`FAIL: overall time limit of ${OVERALL_TIMEOUT_MS / 1000} s reached`);
  console.error('--- page log ---');
  console.error(pageLog.join('\n'));
  await saveFailureScreenshot();
  process.exit(1);
}, OVERALL_TIMEOUT_MS);

try {
  await run();
  console.log(JSON.stringify(summary));
  console.log('chromium-call: PASS');
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
  console.log(JSON.stringify(summary));
} finally {
  try { writeFileSync(path.join(ARTIFACT_DIR, 'chromium-page.log'), `${pageLog.join('\n')}\n`); } catch { /* best effort */ }
  try { if (browser) await browser.close(); } catch { /* already gone */ }
  clearTimeout(watchdog);
}
process.exit(exitCode);
