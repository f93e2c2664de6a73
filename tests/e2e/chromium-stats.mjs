#!/usr/bin/env node
// The operator's stats page against the real gateway, in Debian's Chromium
// (driven by tests/integration/test_stats_page.py).
//
// 1. /stats shows the sign-in form; a wrong admin password is refused (401,
//    "Wrong password" shown); the right one opens the dashboard.
// 2. Prints `ACTION call` and waits for `OK {"placed_at_ms": epoch ms}` on
//    stdin (the test places a call through the gateway, placed_at_ms being
//    when its `call` message left, and answers once it is connected and media
//    flows). Within ROW_TIMEOUT_MS (2000) of placing the call a row of EXPECT_ACCOUNT appears in the live calls; once connected it
//    shows both legs' security (EXPECT_BROWSER_SECURITY, EXPECT_TRUNK_SECURITY) and
//    its packet counters (in and out, both legs) rising between two
//    refreshes, without a reload. Its detail view shows the SDPs (no SDES key
//    in them) and the SIP ladder.
// 3. Prints `ACTION hangup`, waits for `OK`: the call leaves the live table
//    and is among the ended calls with a cause (ENDED_TIMEOUT_MS, 10000: the
//    gateway lists a call as ended once its SIP wind-down is over, about 5 s
//    after a BYE over UDP). How long that took is in the summary (endedMs).
// 4. Sign-out: the sign-in form again, and GET /api/stats answers 401.
// Screenshots in ARTIFACT_DIR: stats-real-refused.png, stats-real-live.png,
// stats-real-detail.png, stats-real-ended.png, stats-real-failure.png.
//
// Exit 0 = pass, 1 = fail (reason printed); the line before PASS/FAIL is a
// JSON summary (timings, counters, feed mode, cookie flags, problems).
// Checks that do not stop the run (the event stream in use, the detail view,
// keys absent from the SDPs, the session cookie's flags) are gathered in
// `problems` and fail the run at its end.
//
// Env: GATEWAY_URL, ADMIN_PASSWORD, ARTIFACT_DIR (default ./artifacts),
// EXPECT_ACCOUNT (alice), EXPECT_TRUNK (carrier), EXPECT_BROWSER_SECURITY
// (dtls-srtp), EXPECT_TRUNK_SECURITY (sdes-srtp), ROW_TIMEOUT_MS,
// ENDED_TIMEOUT_MS, CHROMIUM_PATH.

import { chromium } from 'playwright-core';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';

const BASE = (process.env.GATEWAY_URL || '').replace(/\/$/, '');
const ADMIN_PASSWORD = process.env.ADMIN_PASSWORD || '';
if (!BASE || !ADMIN_PASSWORD) {
  console.error('usage: GATEWAY_URL=https://127.0.0.1:8443 ADMIN_PASSWORD=... node chromium-stats.mjs');
  process.exit(2);
}
const ARTIFACT_DIR = path.resolve(process.env.ARTIFACT_DIR || 'artifacts');
mkdirSync(ARTIFACT_DIR, { recursive: true });
const ACCOUNT = process.env.EXPECT_ACCOUNT || 'alice';
const TRUNK = process.env.EXPECT_TRUNK || 'carrier';
const BROWSER_SEC = process.env.EXPECT_BROWSER_SECURITY || 'dtls-srtp';
const TRUNK_SEC = process.env.EXPECT_TRUNK_SECURITY || 'sdes-srtp';
const ROW_TIMEOUT_MS = Number(process.env.ROW_TIMEOUT_MS || 2000);
const ENDED_TIMEOUT_MS = Number(process.env.ENDED_TIMEOUT_MS || 10000);

const summary = { problems: [], notes: [] };
const problem = (text) => { summary.problems.push(text); console.log(`PROBLEM ${text}`); };
const pageLog = [];

// --- stdin: the test answers each ACTION with a line "OK [json]" -------------
const lines = [];
let waiter = null;
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  lines.push(line);
  if (waiter) { const w = waiter; waiter = null; w(); }
});
async function action(name, timeoutMs = 60000) {
  console.log(`ACTION ${name}`);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const i = lines.findIndex((l) => /^(OK|FAIL)\b/.test(l));
    if (i >= 0) {
      const [line] = lines.splice(i, 1);
      if (line.startsWith('FAIL')) throw new Error(`the test could not ${name}: ${line}`);
      const rest = line.slice(2).trim();
      return rest ? JSON.parse(rest) : {};
    }
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`no OK for ACTION ${name} within ${timeoutMs} ms`);
    await new Promise((r) => { waiter = r; setTimeout(r, left); });
  }
}

function expect(cond, msg) { if (!cond) throw new Error(msg); }
const shot = (page, name) => page.screenshot({ path: path.join(ARTIFACT_DIR, name), fullPage: true });
const text = (page, sel) => page.textContent(sel).then((s) => (s || '').replace(/\s+/g, ' ').trim());

/** Waits until <body data-updated-at> has changed `times` times. */
async function refreshes(page, times, timeout = 5000) {
  for (let i = 0; i < times; i++) {
    const before = await page.getAttribute('body', 'data-updated-at');
    await page.waitForFunction((b) => document.body.dataset.updatedAt && document.body.dataset.updatedAt !== b, before, { timeout })
      .catch(() => { throw new Error(`no refresh of the figures within ${timeout} ms (data-updated-at stayed ${before})`); });
  }
}

/** The live row of ACCOUNT: its call id, or null. */
function findRow(page) {
  return page.evaluate((account) => {
    for (const tr of document.querySelectorAll('#live-calls tbody tr[data-call-id]')) {
      const cell = tr.querySelector('td[data-label="Account"]');
      if (cell && cell.textContent.trim() === account) return tr.dataset.callId;
    }
    return null;
  }, ACCOUNT);
}

async function legCounters(page, rowSel) {
  return page.evaluate((sel) => {
    const out = {};
    for (const leg of ['browser', 'trunk']) {
      for (const f of ['packets_in', 'packets_out', 'bytes_in', 'bytes_out']) {
        const n = document.querySelector(`${sel} [data-leg="${leg}"] [data-field="${f}"]`);
        out[`${leg}.${f}`] = n && n.dataset.value !== undefined ? Number(n.dataset.value) : null;
      }
    }
    return out;
  }, rowSel);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
const page = await context.newPage();
page.setDefaultTimeout(10000);
page.on('console', (m) => pageLog.push(`[console.${m.type()}] ${m.text()}`));
page.on('pageerror', (e) => pageLog.push(`[pageerror] ${e.message}`));
page.on('response', (r) => {
  if (r.url().includes('/api/')) pageLog.push(`[http] ${r.request().method()} ${r.url().slice(BASE.length)} ${r.status()}`);
});

let ok = false;
try {
  // 1. Sign-in
  const t0 = Date.now();
  await page.goto(`${BASE}/stats`);
  await page.waitForSelector('body[data-view="login"]');
  summary.loginFormMs = Date.now() - t0;

  let answer = page.waitForResponse((r) => r.url().endsWith('/api/admin/login'));
  await page.fill('#login-password', `${ADMIN_PASSWORD}-wrong`);
  await page.click('#login-button');
  summary.wrongPasswordStatus = (await answer).status();
  expect(summary.wrongPasswordStatus === 401, `wrong admin password answered HTTP ${summary.wrongPasswordStatus}, expected 401`);
  await page.waitForFunction(() => /Wrong password/.test(document.getElementById('login-error').textContent));
  expect(await page.isVisible('#login-error'), 'the refusal is not shown');
  expect(await page.getAttribute('body', 'data-view') === 'login', 'a wrong password got past the sign-in form');
  await shot(page, 'stats-real-refused.png');

  answer = page.waitForResponse((r) => r.url().endsWith('/api/admin/login'));
  await page.fill('#login-password', ADMIN_PASSWORD);
  await page.click('#login-button');
  const loginResponse = await answer;
  summary.loginStatus = loginResponse.status();
  expect(summary.loginStatus === 200, `admin sign-in answered HTTP ${summary.loginStatus}`);
  await page.waitForSelector('body[data-view="dashboard"]', { timeout: 10000 })
    .catch(async () => { throw new Error(`no dashboard after sign-in: ${await text(page, '#page-message')}`); });
  const cookies = await context.cookies(BASE);
  summary.cookies = cookies.map((c) => ({ name: c.name, httpOnly: c.httpOnly, secure: c.secure, sameSite: c.sameSite, path: c.path }));
  if (!cookies.some((c) => c.httpOnly && c.secure && c.sameSite === 'Strict')) {
    problem(`no session cookie with HttpOnly, Secure and SameSite=Strict: ${JSON.stringify(summary.cookies)}`);
  }
  summary.version = await text(page, '#server-version');
  summary.uptime = await text(page, '#server-uptime');
  await page.waitForSelector('#feed-status[data-state="stream"]', { timeout: 5000 }).catch(() => {});
  summary.feedMode = await page.evaluate(() => window.statsPage.mode);
  if (summary.feedMode !== 'stream') problem(`the page is not on the event stream after 5 s (mode ${summary.feedMode})`);
  summary.trunks = await page.$$eval('#trunks li', (lis) => lis.map((li) => `${li.dataset.trunk}:${li.dataset.status}`));
  if (!summary.trunks.some((t) => t.startsWith(`${TRUNK}:`))) problem(`trunk ${TRUNK} not listed: ${summary.trunks.join(' ')}`);
  const before = await findRow(page);
  expect(before === null, `a call of ${ACCOUNT} is listed before any call was placed (${before})`);

  // 2. A live call. The row is looked for from the moment the call is asked
  // for; its time counts from `placed_at_ms` (epoch ms) in the test's OK,
  // else from the OK itself.
  await page.evaluate(() => { window.__sameDocument = true; });
  let rowSeen = null;
  let polling = true;
  const poller = (async () => {
    while (polling && !rowSeen) {
      const found = await findRow(page).catch(() => null);
      if (found) rowSeen = { id: found, at: Date.now() };
      else await page.waitForTimeout(25).catch(() => {});
    }
  })();
  let placed;
  try {
    placed = await action('call');
  } catch (err) {
    polling = false;
    await poller;
    throw err;
  }
  summary.placed = placed;
  const tOk = Date.now();
  const from = Number.isFinite(placed.placed_at_ms) ? placed.placed_at_ms : tOk;
  while (!rowSeen && Date.now() - Math.max(from, tOk) < ROW_TIMEOUT_MS + 3000) await page.waitForTimeout(25);
  polling = false;
  await poller;
  expect(rowSeen, `no live row of ${ACCOUNT} within ${Date.now() - from} ms of placing the call`);
  const id = rowSeen.id;
  summary.rowMs = rowSeen.at - from;
  summary.rowMsFrom = Number.isFinite(placed.placed_at_ms) ? 'call placed' : 'call connected';
  summary.connectedAfterMs = tOk - from;
  expect(summary.rowMs <= ROW_TIMEOUT_MS, `the live row took ${summary.rowMs} ms (from the ${summary.rowMsFrom}), more than ${ROW_TIMEOUT_MS}`);
  summary.callId = id;
  if (placed.call_id && placed.call_id !== id) summary.callIdNote = `row id ${id} differs from the signaling id ${placed.call_id}`;
  const rowSel = `#live-calls tr[data-call-id="${id.replace(/["\\]/g, '\\$&')}"]`;
  await page.waitForFunction(({ sel, b, t }) => {
    const get = (leg) => (document.querySelector(`${sel} [data-leg="${leg}"] .sec`) || {}).textContent || '';
    return get('browser').includes(b) && get('trunk').includes(t);
  }, { sel: rowSel, b: BROWSER_SEC, t: TRUNK_SEC }, { timeout: ROW_TIMEOUT_MS }).catch(() => {});
  summary.security = {
    browser: await text(page, `${rowSel} [data-leg="browser"] .sec`),
    trunk: await text(page, `${rowSel} [data-leg="trunk"] .sec`),
    levels: [await page.getAttribute(`${rowSel} [data-leg="browser"] .sec`, 'data-level'),
      await page.getAttribute(`${rowSel} [data-leg="trunk"] .sec`, 'data-level')],
  };
  summary.securityMs = Date.now() - tOk; // after the call was connected
  expect(summary.security.browser.includes(BROWSER_SEC), `browser leg security "${summary.security.browser}", expected ${BROWSER_SEC}`);
  expect(summary.security.trunk.includes(TRUNK_SEC), `trunk leg security "${summary.security.trunk}", expected ${TRUNK_SEC}`);
  expect(summary.securityMs <= ROW_TIMEOUT_MS + 500, `both legs' security shown only after ${summary.securityMs} ms`);
  summary.row = await text(page, rowSel);
  for (const want of [TRUNK]) if (!summary.row.includes(want)) problem(`live row lacks "${want}": ${summary.row}`);
  expect(await page.locator(`${rowSel} [data-leg="browser"]`).count() === 1 && await page.locator(`${rowSel} [data-leg="trunk"]`).count() === 1,
    'a leg cell is missing');

  const c1 = await legCounters(page, rowSel);
  await refreshes(page, 2);
  const c2 = await legCounters(page, rowSel);
  summary.counters = { first: c1, second: c2 };
  for (const k of ['browser.packets_in', 'browser.packets_out', 'trunk.packets_in', 'trunk.packets_out']) {
    expect(c1[k] !== null && c2[k] !== null, `${k} not shown (${c1[k]}, ${c2[k]})`);
    expect(c2[k] > c1[k], `${k} did not rise between two refreshes: ${c1[k]} then ${c2[k]}`);
  }
  for (const k of ['browser.bytes_in', 'browser.bytes_out', 'trunk.bytes_in', 'trunk.bytes_out']) {
    if (!(c2[k] > c1[k])) problem(`${k} did not rise: ${c1[k]} then ${c2[k]}`);
  }
  expect(await page.evaluate(() => window.__sameDocument === true), 'the page reloaded');
  summary.callsActive = await text(page, '#calls-active');
  if (summary.callsActive !== '1') problem(`#calls-active shows ${summary.callsActive} with one call`);
  summary.duration = await text(page, `${rowSel} td[data-label="Duration"]`);
  summary.codec = await text(page, `${rowSel} td[data-label="Codec"]`);
  await shot(page, 'stats-real-live.png');

  // The detail view of that call
  try {
    await page.click(`${rowSel} a.row-link`);
    await page.waitForSelector('#detail-view[data-loaded]', { timeout: 5000 });
    const loaded = await page.getAttribute('#detail-view', 'data-loaded');
    if (loaded !== 'true') throw new Error(`detail not loaded (${loaded}): ${await text(page, '#detail-message')}`);
    const sdp = {};
    for (const key of ['browser_offer', 'browser_answer', 'trunk_offer', 'trunk_answer']) {
      sdp[key] = await page.textContent(`pre[data-sdp="${key}"]`);
    }
    writeFileSync(path.join(ARTIFACT_DIR, 'stats-real-detail-sdp.txt'),
      Object.entries(sdp).map(([k, v]) => `--- ${k}\n${v}\n`).join('\n'));
    const ladder = await page.$$eval('#detail-ladder li', (lis) => lis.map((li) => `${li.dataset.peer} ${li.dataset.direction} ${li.querySelector('.ladder-msg').textContent}`));
    summary.detail = { sdpPresent: Object.fromEntries(Object.entries(sdp).map(([k, v]) => [k, /^v=0/.test(v)])), ladder };
    for (const [k, v] of Object.entries(sdp)) {
      if (!/^v=0/.test(v)) problem(`detail: ${k} SDP missing ("${v.slice(0, 40)}")`);
      const key = /a=crypto:\d+ \S+ inline:([A-Za-z0-9+/]{20,})/.exec(v);
      if (key) problem(`detail: ${k} shows an SDES key (inline:${key[1].slice(0, 6)}…)`);
    }
    if (!ladder.some((l) => /INVITE/.test(l))) problem(`detail: no INVITE in the SIP ladder (${ladder.length} entries)`);
    const pin = await page.getAttribute('#detail-counters tr[data-counter="packets_in"] td[data-leg="trunk"]', 'data-value');
    if (!(Number(pin) > 0)) problem(`detail: trunk packets in ${pin}`);
    await shot(page, 'stats-real-detail.png');
  } catch (err) {
    problem(`detail view: ${err.message.split('\n')[0]}`);
    await shot(page, 'stats-real-detail.png').catch(() => {});
  }
  await page.keyboard.press('Escape');
  await page.waitForSelector('body[data-view="dashboard"]');

  // 3. Hang-up: among the ended calls
  const endedIds = () => page.$$eval('#ended-calls tbody tr[data-call-id]', (trs) => trs.map((tr) => tr.dataset.callId));
  const endedBefore = new Set(await endedIds());
  summary.liveDurationAtHangup = await text(page, `${rowSel} td[data-label="Duration"]`);
  await action('hangup');
  const tHang = Date.now();
  let endedId = null;
  while (Date.now() - tHang < ENDED_TIMEOUT_MS && !endedId) {
    const now = await endedIds();
    endedId = now.includes(id) ? id : (now.find((x) => !endedBefore.has(x)) || null);
    if (!endedId) await page.waitForTimeout(50);
  }
  summary.endedMs = Date.now() - tHang;
  if (!endedId) {
    summary.afterHangup = await page.evaluate(() => {
      const s = window.statsPage.snapshot || {};
      return { mode: window.statsPage.mode, updatedAt: document.body.dataset.updatedAt, now: new Date().toISOString(),
        calls: (s.calls || []).map((c) => `${c.id}:${c.state}`), ended: (s.ended || []).map((c) => c.id) };
    });
  }
  expect(endedId, `no new ended call ${ENDED_TIMEOUT_MS} ms after the hang-up (live id ${id})`);
  if (endedId !== id) {
    // Give the right id a moment more, then report the mismatch and go on with the row found.
    await page.waitForSelector(`#ended-calls tr[data-call-id="${id.replace(/["\\]/g, '\\$&')}"]`, { timeout: 2000 }).catch(() => {});
    if ((await endedIds()).includes(id)) endedId = id;
    else problem(`the ended call has id ${endedId}, the live one had ${id}: the detail link changes when a call ends`);
  }
  summary.endedId = endedId;
  await page.waitForSelector(rowSel, { state: 'detached', timeout: 3000 })
    .catch(() => { throw new Error(`call ${id} is still among the live calls after it ended`); });
  const endedSel = `#ended-calls tr[data-call-id="${endedId.replace(/["\\]/g, '\\$&')}"]`;
  summary.ended = {
    row: await text(page, endedSel),
    cause: await text(page, `${endedSel} td[data-label="Cause"]`),
    hungUpBy: await text(page, `${endedSel} td[data-label="Hung up by"]`),
    duration: await text(page, `${endedSel} td[data-label="Duration"]`),
    security: await text(page, `${endedSel} td[data-label="Security"]`),
  };
  expect(summary.ended.cause && summary.ended.cause !== 'ended', `ended call without a cause: ${summary.ended.row}`);
  if (!/\(\d{3}\)/.test(summary.ended.cause)) problem(`ended call's cause has no code: "${summary.ended.cause}"`);
  if (!/^\d\d:\d\d$/.test(summary.ended.duration)) problem(`ended call's duration "${summary.ended.duration}"`);
  const secs = (mmss) => { const m = /^(\d+):(\d\d)$/.exec(mmss || ''); return m ? Number(m[1]) * 60 + Number(m[2]) : NaN; };
  if (secs(summary.ended.duration) - secs(summary.liveDurationAtHangup) >= 3) {
    summary.notes.push(`ended duration ${summary.ended.duration} vs ${summary.liveDurationAtHangup} shown just before the hang-up`);
  }
  if (!summary.ended.security.includes(BROWSER_SEC) || !summary.ended.security.includes(TRUNK_SEC)) {
    problem(`ended call's security "${summary.ended.security}"`);
  }
  await shot(page, 'stats-real-ended.png');

  // 4. Sign-out
  await page.click('#signout-button');
  await page.waitForSelector('body[data-view="login"]');
  summary.afterSignOut = await page.evaluate(() => fetch('/api/stats', { credentials: 'same-origin' }).then((r) => r.status));
  expect(summary.afterSignOut === 401, `GET /api/stats after sign-out: ${summary.afterSignOut}`);

  const errors = pageLog.filter((l) => /^\[pageerror\]/.test(l)
    || (/^\[console\.error\]/.test(l) && !/Failed to load resource: the server responded with a status of (401|404|429)/.test(l)));
  if (errors.length) problem(`page errors: ${errors.slice(0, 5).join(' | ')}`);
  ok = summary.problems.length === 0;
  if (!ok) summary.failure = `${summary.problems.length} problem(s)`;
} catch (err) {
  summary.failure = err.message.split('\n')[0];
  await page.screenshot({ path: path.join(ARTIFACT_DIR, 'stats-real-failure.png'), fullPage: true }).catch(() => {});
} finally {
  writeFileSync(path.join(ARTIFACT_DIR, 'chromium-stats-page.log'), `${pageLog.join('\n')}\n`);
  await browser.close().catch(() => {});
}
console.log(JSON.stringify(summary));
if (ok) {
  console.log('PASS');
  process.exit(0);
}
console.log(`FAIL ${summary.failure}`);
if (summary.problems.length) console.log(`problems:\n  ${summary.problems.join('\n  ')}`);
console.log(`page log (last 40 lines):\n${pageLog.slice(-40).join('\n')}`);
process.exit(1);
