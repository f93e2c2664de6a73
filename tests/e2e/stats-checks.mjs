#!/usr/bin/env node
// Checks of the operator's stats page (web-client/stats.html, stats.js)
// against mock-gateway.mjs (run by selftest.sh inside a network namespace):
// sign-in refusals (wrong password, 429 with Retry-After), the dashboard
// (charts, trunks, bans, live calls with both legs' security, counters rising
// without a reload, drops by reason), a call ending, server strings shown as
// text, the detail view (SDPs, SIP ladder, counters; keyboard and focus),
// the event stream falling back to polling and coming back, a session ended
// by the gateway, phone width (tables as cards), dark mode, sign-out.
// Prints "N passed, N failed"; exit 0 when none failed.
//
// Env: GATEWAY_URL (the mock, e.g. http://127.0.0.1:8088), ARTIFACT_DIR
// (screenshots stats-*.png), ADMIN_PASSWORD (default admin-secret, the
// mock's), CHROMIUM_PATH.

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import path from 'node:path';

const BASE = process.env.GATEWAY_URL || 'http://127.0.0.1:8088';
const ADMIN_PASSWORD = process.env.ADMIN_PASSWORD || 'admin-secret';
const ARTIFACT_DIR = path.resolve(process.env.ARTIFACT_DIR || 'artifacts');
mkdirSync(ARTIFACT_DIR, { recursive: true });
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync', '--ignore-certificate-errors'];
const PRIVATE_TEXT = 'private: end-to-end, not decrypted by the gateway';

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

const shot = (page, name, fullPage = true) => page.screenshot({ path: path.join(ARTIFACT_DIR, name), fullPage });

async function hook(page, pathAndQuery) {
  const res = await page.request.post(`${BASE}${pathAndQuery}`);
  expect(res.ok(), `mock hook ${pathAndQuery}: HTTP ${res.status()}`);
  return res.json();
}

/** Console errors that are not the expected HTTP refusals (Chromium logs every 4xx/5xx fetch). */
function unexpectedErrors(page) {
  return page.errors.filter((e) => !/Failed to load resource: the server responded with a status of (401|404|429|503)/.test(e));
}

async function openPage(browser, options = {}) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, ...options });
  const page = await context.newPage();
  page.setDefaultTimeout(8000);
  page.errors = [];
  page.foreign = [];
  page.on('console', (m) => { if (m.type() === 'error') page.errors.push(m.text()); });
  page.on('pageerror', (e) => page.errors.push(e.message));
  page.on('request', (r) => { if (!r.url().startsWith(BASE) && !r.url().startsWith('data:')) page.foreign.push(r.url()); });
  await page.addInitScript(() => {
    window.__csp = [];
    document.addEventListener('securitypolicyviolation', (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  await page.goto(`${BASE}/stats`);
  return page;
}

async function signIn(page, password = ADMIN_PASSWORD) {
  await page.waitForSelector('#login-password');
  await page.fill('#login-password', password);
  await page.click('#login-button');
}

async function signedIn(page) {
  await signIn(page);
  await page.waitForSelector('body[data-view="dashboard"]');
  await page.waitForSelector('#live-calls tr[data-call-id]');
}

const view = (page) => page.getAttribute('body', 'data-view');
const text = (page, sel) => page.textContent(sel).then((s) => (s || '').replace(/\s+/g, ' ').trim());
const row = (id) => `#live-calls tr[data-call-id="${id}"]`;
const endedRow = (id) => `#ended-calls tr[data-call-id="${id}"]`;
const legValue = (page, id, leg, field) => page.getAttribute(`${row(id)} [data-leg="${leg}"] [data-field="${field}"]`, 'data-value').then(Number);

/** Waits until <body data-updated-at> has changed `times` times (each a refresh of the figures). */
async function refreshes(page, times = 1, timeout = 5000) {
  for (let i = 0; i < times; i++) {
    const before = await page.getAttribute('body', 'data-updated-at');
    await page.waitForFunction((b) => document.body.dataset.updatedAt && document.body.dataset.updatedAt !== b, before, { timeout })
      .catch(() => { throw new Error(`data-updated-at stayed ${before} for ${timeout} ms`); });
  }
}

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium', args: ARGS });

try {
  const page = await openPage(browser, { viewport: { width: 1280, height: 900 } });
  await hook(page, '/mock/stats/reset');
  await page.reload();

  await check('signed out: the sign-in form, focused, no console errors or CSP violations', async () => {
    await page.waitForSelector('body[data-view="login"]');
    expect(await page.isVisible('#login-form'), 'sign-in form hidden');
    expect(!(await page.isVisible('#dashboard')), 'dashboard visible before sign-in');
    expect(await page.evaluate(() => document.activeElement && document.activeElement.id) === 'login-password', 'password field not focused');
    expect(await page.evaluate(() => document.querySelector('label[for="login-password"]') !== null), 'password field has no label');
    expect(unexpectedErrors(page).length === 0, `console errors: ${unexpectedErrors(page).join(' | ')}`);
    expect((await page.evaluate(() => window.__csp)).length === 0, `CSP violations: ${await page.evaluate(() => window.__csp.join(' | '))}`);
  });

  await check('an empty password is refused on the page', async () => {
    await page.fill('#login-password', '');
    await page.click('#login-button');
    await page.waitForSelector('#login-error:visible');
    expect(/Enter the admin password/.test(await text(page, '#login-error')), await text(page, '#login-error'));
  });

  await check('a wrong password is refused with a visible message', async () => {
    await signIn(page, 'not-the-password');
    await page.waitForFunction(() => /Wrong password/.test(document.getElementById('login-error').textContent));
    expect(await page.isVisible('#login-error'), 'message not visible');
    expect(await page.getAttribute('#login-error', 'role') === 'alert', 'message is not an alert');
    expect(await page.getAttribute('#login-password', 'aria-invalid') === 'true', 'field not marked invalid');
    expect(await view(page) === 'login', `view ${await view(page)}`);
    await shot(page, 'stats-login-refused.png', false);
  });

  await check('too many tries: 429, "try again in N s", the button held until then', async () => {
    // The mock answers 429 at the 5th wrong password in a row (one came above), Retry-After 3.
    const statuses = [];
    for (let i = 0; i < 4; i++) {
      const answer = page.waitForResponse((r) => r.url().endsWith('/api/admin/login'));
      await signIn(page, `wrong-${i}`);
      statuses.push((await answer).status());
    }
    expect(statuses.join() === '401,401,401,429', `answers ${statuses.join()}`);
    await page.waitForFunction(() => /Too many sign-in attempts\. Try again in \d+ s/.test(document.getElementById('login-error').textContent));
    expect(await page.isDisabled('#login-button'), 'button not disabled during the lockout');
    await page.waitForFunction(() => !document.getElementById('login-button').disabled, null, { timeout: 6000 });
    expect(!(await page.isVisible('#login-error')), 'message still shown after the lockout');
    await hook(page, '/mock/stats/reset-login');
  });

  await check('sign-in: the dashboard with version, uptime and #calls-active', async () => {
    await signedIn(page);
    expect(!(await page.isVisible('#login-view')), 'sign-in form still visible');
    expect(await page.isVisible('#signout-button'), 'no sign-out button');
    expect(/version 0\.1\.0-mock/.test(await text(page, '#server-version')), await text(page, '#server-version'));
    expect(/\d+ h \d+ min/.test(await text(page, '#server-uptime')), `uptime "${await text(page, '#server-uptime')}"`);
    const rows = await page.locator('#live-calls tbody tr[data-call-id]').count();
    expect(rows === 3, `${rows} live rows`);
    expect(await text(page, '#calls-active') === '3', `#calls-active "${await text(page, '#calls-active')}"`);
    expect(await page.evaluate(() => document.cookie.includes('gw_admin')) === false, 'the session cookie is readable by the page');
  });

  await check('two uPlot charts over the last hour', async () => {
    expect(await page.evaluate(() => typeof window.uPlot === 'function'), 'uPlot not loaded');
    for (const id of ['chart-calls', 'chart-pps']) {
      const box = await page.evaluate((id) => {
        const c = document.querySelector(`#${id} canvas`);
        return c ? [c.width, c.height] : null;
      }, id);
      expect(box && box[0] > 200 && box[1] > 80, `#${id} canvas ${JSON.stringify(box)}`);
    }
    const points = await page.evaluate(() => window.statsPage.charts.calls.data[0].length);
    expect(points >= 360, `${points} points in the calls chart`);
    const span = await page.evaluate(() => { const s = window.statsPage.charts.pps.scales.x; return s.max - s.min; });
    expect(Math.abs(span - 3600) < 1, `x axis spans ${span} s`);
    expect(/now 3 · peak \d+/.test(await text(page, '#chart-calls-summary')), await text(page, '#chart-calls-summary'));
    expect(/now 400 · peak/.test(await text(page, '#chart-pps-summary')), await text(page, '#chart-pps-summary'));
  });

  await check('trunk status badges and OPTIONS round trip; current bans', async () => {
    expect(await text(page, 'li[data-trunk="carrier"] .badge') === 'up', 'carrier not up');
    expect(await text(page, 'li[data-trunk="backup"] .badge') === 'down', 'backup not down');
    expect(/OPTIONS round trip \d+(\.\d)? ms/.test(await text(page, 'li[data-trunk="carrier"] .rtt')), await text(page, 'li[data-trunk="carrier"] .rtt'));
    expect(/OPTIONS round trip –/.test(await text(page, 'li[data-trunk="backup"] .rtt')), await text(page, 'li[data-trunk="backup"] .rtt'));
    expect(await text(page, '#trunks-up') === '1 of 3', await text(page, '#trunks-up'));
    const ban = await text(page, '#bans tr[data-source="203.0.113.9"]');
    expect(/203\.0\.113\.9/.test(ban) && /requests per second/.test(ban) && /left\)/.test(ban), `ban row "${ban}"`);
  });

  await check('a live call row: both legs\' security, drops by reason, loss/jitter/RTT', async () => {
    const id = 'out-7c1e9a2b';
    const b = await text(page, `${row(id)} [data-leg="browser"] .sec`);
    const t = await text(page, `${row(id)} [data-leg="trunk"] .sec`);
    expect(/dtls-srtp AEAD_AES_128_GCM/.test(b), `browser leg "${b}"`);
    expect(/sdes-srtp AES_CM_128_HMAC_SHA1_80/.test(t), `trunk leg "${t}"`);
    expect(await page.getAttribute(`${row(id)} [data-leg="browser"] .sec`, 'data-level') === 'secure', 'browser lock not secure');
    expect(await page.getAttribute(`${row(id)} [data-leg="trunk"] .sec`, 'data-level') === 'secure', 'trunk lock not secure');
    expect(await page.locator(`${row(id)} [data-leg="trunk"] .sec svg`).count() === 1, 'no lock icon');
    const drops = await text(page, `${row(id)} [data-leg="trunk"] [data-field="drops"]`);
    expect(/unknown SSRC \d+/.test(drops) && /replay 2/.test(drops) && !/auth failed|malformed|stun/i.test(drops), `trunk drops "${drops}"`);
    expect(await text(page, `${row(id)} [data-leg="browser"] [data-field="drops"]`) === 'no drops', 'browser leg shows drops');
    expect(await text(page, `${row(id)} [data-leg="trunk"] [data-field="loss"]`) === '1.2 %', 'trunk loss');
    expect(await text(page, `${row(id)} [data-leg="trunk"] [data-field="jitter_ms"]`) === '1.8 ms', 'trunk jitter');
    expect(await text(page, `${row(id)} [data-leg="trunk"] [data-field="rtt_ms"]`) === '24 ms', 'trunk RTT');
    const cells = await text(page, row(id));
    for (const want of ['Outgoing', 'alice', '+4930******89', 'carrier', 'Connected', 'PCMU/8000']) {
      expect(cells.includes(want), `row lacks "${want}": ${cells}`);
    }
    // The plain-RTP trunk leg: open lock, no RTCP figures.
    const plain = `${row('in-3f2a91d0')} [data-leg="trunk"]`;
    expect(await page.getAttribute(`${plain} .sec`, 'data-level') === 'insecure', 'rtp leg not marked insecure');
    expect(/rtp \(unencrypted\)/.test(await text(page, `${plain} .sec`)), 'rtp leg text');
    expect(await text(page, `${plain} [data-field="rtt_ms"]`) === '–', 'null RTT not shown as –');
    // A private call: the words instead of the lock, on both legs.
    for (const leg of ['browser', 'trunk']) {
      expect((await text(page, `${row('in-5b0c33e1')} [data-leg="${leg}"] .sec`)).includes(PRIVATE_TEXT), `private call, ${leg} leg`);
    }
    expect(await text(page, `${row('in-5b0c33e1')} .state`) === 'Ringing', 'ringing state');
    await shot(page, 'stats-desktop.png');
  });

  await check('counters rise between two snapshots without a reload; duration ticks', async () => {
    const id = 'out-7c1e9a2b';
    await page.evaluate(() => { window.__sameDocument = true; });
    const fields = ['packets_in', 'packets_out', 'bytes_in', 'bytes_out'];
    const read = async () => {
      const out = {};
      for (const leg of ['browser', 'trunk']) for (const f of fields) out[`${leg}.${f}`] = await legValue(page, id, leg, f);
      out.duration = await text(page, `${row(id)} td[data-label="Duration"]`);
      return out;
    };
    const first = await read();
    await refreshes(page, 2);
    const second = await read();
    for (const k of Object.keys(first).filter((k) => k !== 'duration')) {
      expect(second[k] > first[k], `${k}: ${first[k]} then ${second[k]}`);
    }
    expect(second.duration !== first.duration, `duration stayed ${first.duration}`);
    expect(await page.evaluate(() => window.__sameDocument === true), 'the page was reloaded');
    expect(await page.evaluate(() => window.statsPage.mode) === 'stream', `feed mode ${await page.evaluate(() => window.statsPage.mode)}`);
    expect(await page.getAttribute('#feed-status', 'data-state') === 'stream', 'feed pill not "stream"');
  });

  let daveId = null;
  await check('a new call appears within 2 s, #calls-active follows', async () => {
    const { id } = await hook(page, '/mock/stats/new-call?account=dave');
    daveId = id;
    const t0 = Date.now();
    await page.waitForSelector(row(id), { timeout: 2000 });
    const ms = Date.now() - t0;
    await page.waitForFunction(() => document.getElementById('calls-active').textContent === '4', null, { timeout: 2000 });
    expect(/dtls-srtp/.test(await text(page, `${row(id)} [data-leg="browser"] .sec`)), 'new row without security');
    console.log(`     (row shown after ${ms} ms)`);
  });

  await check('an ended call leaves the live table and heads the ended table', async () => {
    const id = 'out-7c1e9a2b';
    await hook(page, `/mock/stats/end-call?id=${id}&code=200&cause=${encodeURIComponent('the other party hung up')}&by=trunk`);
    await page.waitForSelector(row(id), { state: 'detached', timeout: 3000 });
    await page.waitForSelector(endedRow(id), { timeout: 3000 });
    const first = await page.getAttribute('#ended-calls tbody tr:first-child', 'data-call-id');
    expect(first === id, `first ended row is ${first}`);
    const r = await text(page, endedRow(id));
    for (const want of ['Outgoing', 'alice', '+4930******89', 'the other party hung up (200)', 'Trunk']) {
      expect(r.includes(want), `ended row lacks "${want}": ${r}`);
    }
    expect(/^\d\d:\d\d$/.test(await text(page, `${endedRow(id)} td[data-label="Duration"]`)), 'duration not mm:ss');
    expect(/dtls-srtp/.test(await text(page, `${endedRow(id)} [data-leg="browser"]`)), 'browser security missing');
    expect(/sdes-srtp/.test(await text(page, `${endedRow(id)} [data-leg="trunk"]`)), 'trunk security missing');
    const unanswered = await text(page, `${endedRow('in-33cc44dd')} td[data-label="Duration"]`);
    expect(unanswered === 'not answered', `unanswered call duration "${unanswered}"`);
    expect(/cancelled by the caller \(487\)/.test(await text(page, endedRow('in-33cc44dd'))), 'cause with code');
    expect(await text(page, '#calls-active') === '3', 'calls-active did not drop');
  });

  await check('strings from the gateway are shown as text, never as markup', async () => {
    const id = 'out-<b>55ee</b>';
    const account = await page.textContent(`${endedRow(id)} td[data-label="Account"]`);
    expect(account === 'eve<script>window.__xss=1</script>', `account cell "${account}"`);
    const remote = await page.textContent(`${endedRow(id)} td[data-label="Remote party"]`);
    expect(remote === '<img src=x onerror="window.__xss=1">', `remote cell "${remote}"`);
    expect(await page.locator('#ended-calls tbody img, #ended-calls tbody script, #ended-calls tbody b, #ended-calls tbody i').count() === 0,
      'markup from the gateway became elements');
    await page.click(`${endedRow(id)} a.row-link`);
    await page.waitForSelector('#detail-view[data-loaded="true"]');
    expect(await page.locator('#detail-view img, #detail-view script, #detail-view b, #detail-view i').count() === 0,
      'markup became elements in the detail view');
    expect((await text(page, '#detail-heading')).includes('<img src=x'), 'detail heading does not show the text');
    expect(await page.evaluate(() => window.__xss) === undefined, 'injected script ran');
    await page.goBack();
    await page.waitForSelector('body[data-view="dashboard"]');
  });

  await check('row click opens the detail: both legs\' SDPs, SIP ladder, counters, focus', async () => {
    const id = 'in-3f2a91d0';
    await page.click(`${row(id)} td[data-label="Account"]`);
    await page.waitForSelector(`#detail-view[data-call-id="${id}"][data-loaded="true"]`);
    expect(await page.evaluate(() => location.hash) === `#call=${id}`, `hash ${await page.evaluate(() => location.hash)}`);
    expect(await view(page) === 'detail', 'not in the detail view');
    expect(!(await page.isVisible('#dashboard')), 'the dashboard is still shown');
    expect(await page.evaluate(() => document.activeElement.id) === 'detail-heading', 'focus not on the detail heading');
    for (const key of ['browser_offer', 'browser_answer', 'trunk_offer', 'trunk_answer']) {
      const sdp = await page.textContent(`pre[data-sdp="${key}"]`);
      expect(/^v=0\n/.test(sdp) && /\nm=audio /.test(sdp), `${key}: ${sdp.slice(0, 60)}`);
    }
    expect(/a=ice-lite/.test(await page.textContent('pre[data-sdp="browser_offer"]')), 'gateway offer to the browser lacks ice-lite');
    const ladder = await page.$$eval('#detail-ladder li', (lis) => lis.map((li) => [li.dataset.peer, li.dataset.direction, li.textContent]));
    expect(ladder.length >= 6, `${ladder.length} ladder entries`);
    expect(ladder[0][0] === 'trunk' && ladder[0][1] === 'in' && /INVITE/.test(ladder[0][2]), `first entry ${JSON.stringify(ladder[0])}`);
    expect(ladder.some(([p, d, t]) => p === 'browser' && d === 'out' && /incoming/.test(t)), 'no incoming to the browser');
    expect(/from the trunk/.test(ladder[0][2]), 'ladder entry lacks words for screen readers');
    const pin = Number(await page.getAttribute('#detail-counters tr[data-counter="packets_in"] td[data-leg="browser"]', 'data-value'));
    expect(pin > 0, `detail browser packets in ${pin}`);
    expect(/rtp \(unencrypted\)/.test(await text(page, '#detail-counters tr[data-counter="security"] td[data-leg="trunk"]')), 'trunk security in detail');
    expect(/Connected \(live\)/.test(await text(page, '#detail-summary')), 'status not live');
    await refreshes(page, 2);
    await page.waitForFunction((v) => Number(document.querySelector('#detail-counters tr[data-counter="packets_in"] td[data-leg="browser"]').dataset.value) > v, pin, { timeout: 3000 })
      .catch(() => { throw new Error('detail counters did not rise'); });
    await shot(page, 'stats-detail.png');
  });

  await check('Escape goes back to the list, focus on that call\'s row link', async () => {
    await page.keyboard.press('Escape');
    await page.waitForSelector('body[data-view="dashboard"]');
    const focused = await page.evaluate(() => {
      const a = document.activeElement;
      const tr = a && a.closest('tr');
      return a && tr ? `${a.className}|${tr.dataset.callId}` : String(a && a.id);
    });
    expect(focused === 'row-link|in-3f2a91d0', `focus on ${focused}`);
  });

  await check('keyboard: Enter on an ended call\'s link opens its record; Back returns', async () => {
    const id = 'out-11aa22bb';
    await page.focus(`${endedRow(id)} a.row-link`);
    await page.keyboard.press('Enter');
    await page.waitForSelector(`#detail-view[data-call-id="${id}"][data-loaded="true"]`);
    expect(/Ended: the other party hung up \(200\)/.test(await text(page, '#detail-summary')), await text(page, '#detail-summary'));
    expect(/Trunk/.test(await text(page, '#detail-summary dd[data-field="hung_up_by"]')), 'hung up by');
    const ladder = await page.$$eval('#detail-ladder li', (lis) => lis.map((li) => li.textContent));
    expect(ladder.some((t) => /BYE/.test(t)), `ladder without BYE: ${ladder.join(' | ')}`);
    expect(/a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:<removed>/.test(await page.textContent('pre[data-sdp="trunk_offer"]')), 'trunk offer SDP');
    await page.goBack();
    await page.waitForSelector('body[data-view="dashboard"]');
  });

  await check('a detail left open follows its call to the end', async () => {
    expect(daveId, 'no call from the new-call check');
    await page.click(`${row(daveId)} a.row-link`);
    await page.waitForSelector(`#detail-view[data-call-id="${daveId}"][data-loaded="true"]`);
    expect(/Connected \(live\)/.test(await text(page, '#detail-summary')), await text(page, '#detail-summary'));
    expect(await page.isHidden('#detail-summary dd[data-field="ended"]'), '"Ended" shown for a live call');
    expect(await page.isHidden('#detail-summary dd[data-field="hung_up_by"]'), '"Hung up by" shown for a live call');
    await hook(page, `/mock/stats/end-call?id=${daveId}&code=200&cause=${encodeURIComponent('hung up by the browser')}&by=browser`);
    await page.waitForFunction(() => /Ended: hung up by the browser \(200\)/.test(document.getElementById('detail-summary').textContent), null, { timeout: 4000 })
      .catch(async () => { throw new Error(`detail says: ${await text(page, '#detail-summary')}`); });
    expect(await page.isVisible('#detail-summary dd[data-field="ended"]'), '"Ended" not shown');
    expect(await text(page, '#detail-summary dd[data-field="hung_up_by"]') === 'Browser', 'hung up by');
    const before = await text(page, '#detail-summary dd[data-field="duration"]');
    await refreshes(page, 2);
    expect(await text(page, '#detail-summary dd[data-field="duration"]') === before, 'duration of an ended call still ticks');
    await page.goBack();
    await page.waitForSelector('body[data-view="dashboard"]');
  });

  await check('a link to an unknown call says so', async () => {
    await page.evaluate(() => { location.hash = 'call=nope-404'; });
    await page.waitForSelector('#detail-view[data-loaded="missing"]');
    expect(/No such call/.test(await text(page, '#detail-message')), await text(page, '#detail-message'));
    await page.click('#detail-back');
    await page.waitForSelector('body[data-view="dashboard"]');
  });

  await check('the event stream cut: polling every second, then the stream again', async () => {
    await hook(page, '/mock/stats/refuse-stream?seconds=4');
    await page.waitForSelector('#feed-status[data-state="poll"]', { timeout: 5000 });
    await refreshes(page, 2, 3000); // polling keeps the figures moving
    expect(await page.evaluate(() => window.statsPage.mode) === 'poll', 'not polling');
    await page.waitForSelector('#feed-status[data-state="stream"]', { timeout: 15000 });
    await refreshes(page, 1);
  });

  await check('a session ended by the gateway: back to the sign-in form with a message', async () => {
    await hook(page, '/mock/stats/expire-sessions');
    await page.waitForSelector('body[data-view="login"]', { timeout: 6000 });
    expect(/session has ended/i.test(await text(page, '#page-message')), await text(page, '#page-message'));
    expect(await page.locator('tr[data-call-id]').count() === 0, 'call rows left on the page');
    await signedIn(page);
  });

  await check('sign-out: the sign-in form, nothing left on the page, the cookie no longer works', async () => {
    await page.click('#signout-button');
    await page.waitForSelector('body[data-view="login"]');
    expect(/Signed out/.test(await text(page, '#page-message')), await text(page, '#page-message'));
    expect(await page.locator('tr[data-call-id]').count() === 0, 'call rows left on the page');
    expect(await page.getAttribute('body', 'data-updated-at') === null, 'data-updated-at left');
    const status = await page.evaluate(() => fetch('/api/stats', { credentials: 'same-origin' }).then((r) => r.status));
    expect(status === 401, `GET /api/stats after sign-out: ${status}`);
    await shot(page, 'stats-signed-out.png', false);
  });

  await check('no request left the origin; no console errors; no CSP violations', async () => {
    expect(page.foreign.length === 0, `foreign requests: ${page.foreign.join(' ')}`);
    expect(unexpectedErrors(page).length === 0, `console errors: ${unexpectedErrors(page).join(' | ')}`);
    expect((await page.evaluate(() => window.__csp)).length === 0, 'CSP violations');
  });
  await page.context().close();

  await check('phone width: calls as cards, no sideways scrolling, screenshots', async () => {
    const phone = await openPage(browser, { viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
    await signedIn(phone);
    await refreshes(phone, 1);
    const layout = await phone.evaluate(() => {
      const tr = document.querySelector('#live-calls tbody tr');
      const td = tr.querySelector('td[data-label="Account"]');
      return {
        tr: getComputedStyle(tr).display,
        label: getComputedStyle(td, '::before').content,
        theadHeight: document.querySelector('#live-calls thead').getBoundingClientRect().height,
        scroll: document.documentElement.scrollWidth,
        width: window.innerWidth,
      };
    });
    expect(layout.tr === 'block', `rows are display ${layout.tr}`);
    expect(/Account/.test(layout.label), `cell label ${layout.label}`);
    expect(layout.theadHeight <= 1, `table head shown (${layout.theadHeight}px)`);
    expect(layout.scroll <= layout.width, `page scrolls sideways: ${layout.scroll} > ${layout.width}`);
    await shot(phone, 'stats-phone.png');
    await phone.click(`${row('in-3f2a91d0')} a.row-link`);
    await phone.waitForSelector('#detail-view[data-loaded="true"]');
    const scroll = await phone.evaluate(() => document.documentElement.scrollWidth);
    expect(scroll <= 390, `detail scrolls sideways: ${scroll}`);
    await shot(phone, 'stats-phone-detail.png');
    expect(unexpectedErrors(phone).length === 0, `console errors: ${unexpectedErrors(phone).join(' | ')}`);
    await phone.context().close();
  });

  await check('dark colour scheme renders (screenshot)', async () => {
    const dark = await openPage(browser, { viewport: { width: 1280, height: 900 }, colorScheme: 'dark' });
    await signedIn(dark);
    const bg = await dark.evaluate(() => getComputedStyle(document.body).backgroundColor);
    expect(bg === 'rgb(17, 21, 27)', `background ${bg}`);
    await shot(dark, 'stats-dark.png');
    expect(unexpectedErrors(dark).length === 0, `console errors: ${unexpectedErrors(dark).join(' | ')}`);
    await dark.context().close();
  });
} finally {
  await browser.close();
}

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
