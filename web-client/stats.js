// Operator's live stats page of webrtc-sip-gateway (/stats).
//
// Plain ES module, no build step, served under the same strict CSP as the
// web client (`default-src 'self'`): no inline code or styles, no eval. The
// charts are uPlot (/vendor/uplot.min.js, the global `uPlot`); it styles
// through the CSSOM only, which the CSP allows.
//
// Data (all same-origin, the session is an HttpOnly cookie this page never sees):
//   POST /api/admin/login {password} → 200 | 401 | 429 (Retry-After, seconds)
//   POST /api/admin/logout
//   GET  /api/stats                  → the figures as JSON, 401 when signed out
//   GET  /api/stats/stream           → Server-Sent Events `stats`, once a second
//   GET  /api/stats/calls/{id}       → one call: SDPs, SIP ladder, counters; 404
// The stream is preferred; when it fails the page polls /api/stats every
// second and tries the stream again with a growing delay.
//
// Every string from the gateway goes into the page as text (textContent,
// attributes), never as HTML.
//
// Test hooks: `data-updated-at` on <body> (the snapshot's generated_at, set on
// every refresh), `data-view` on <body> (loading | login | dashboard |
// detail), `#calls-active`, `tr[data-call-id]` rows in #live-calls and
// #ended-calls, `[data-leg="browser"|"trunk"]` cells with
// `[data-field][data-value]` counters inside, `#detail-view[data-call-id]`,
// `pre[data-sdp]`, `#detail-ladder li`, `#feed-status[data-state]`
// (connecting | stream | poll | offline), and `window.statsPage` (mode,
// snapshot, refreshes, charts).

const STATS_URL = '/api/stats';
const STREAM_URL = '/api/stats/stream';
const LOGIN_URL = '/api/admin/login';
const LOGOUT_URL = '/api/admin/logout';
const CALL_URL = '/api/stats/calls/';

const POLL_MS = 1000;
const OFFLINE_POLL_MS = 2000;
const STREAM_SILENCE_MS = 3500; // the stream sends every second; this much silence means it is stuck
const STREAM_RETRY_MIN_MS = 2000;
const STREAM_RETRY_MAX_MS = 30000;
const BOOT_RETRY_MS = 5000;
const HISTORY_S = 3600;
const CHART_HEIGHT = 170;
const DEFAULT_LOCKOUT_S = 30;

const PRIVATE_TEXT = 'private: end-to-end, not decrypted by the gateway';

const DIRECTION = { incoming: 'Incoming', outgoing: 'Outgoing' };
const DIRECTION_ARROW = { incoming: '↙', outgoing: '↗' };
const STATE = { ringing: 'Ringing', answering: 'Answering', connected: 'Connected', ending: 'Ending' };
const HUNG_UP_BY = { browser: 'Browser', trunk: 'Trunk', gateway: 'Gateway' };
const DROP_REASONS = {
  unknown_ssrc: 'unknown SSRC',
  auth_failed: 'auth failed',
  replay: 'replay',
  malformed: 'malformed',
  unknown_payload_type: 'unknown payload type',
  not_ready: 'not ready',
  wrong_source: 'wrong source',
  stun_rejected: 'STUN rejected',
};
const LEGS = [['browser', 'Browser leg'], ['trunk', 'Trunk leg']];

const $ = (id) => document.getElementById(id);

const ui = {
  serverInfo: $('server-info'),
  serverVersion: $('server-version'),
  serverUptime: $('server-uptime'),
  sessionBar: $('session-bar'),
  feedStatus: $('feed-status'),
  signoutButton: $('signout-button'),
  main: $('main'),
  loading: $('loading-view'),
  pageMessage: $('page-message'),
  loginView: $('login-view'),
  loginForm: $('login-form'),
  password: $('login-password'),
  loginError: $('login-error'),
  loginButton: $('login-button'),
  dashboard: $('dashboard'),
  callsActive: $('calls-active'),
  pps: $('pps'),
  trunksUp: $('trunks-up'),
  bansCount: $('bans-count'),
  chartCalls: $('chart-calls'),
  chartCallsSummary: $('chart-calls-summary'),
  chartPps: $('chart-pps'),
  chartPpsSummary: $('chart-pps-summary'),
  trunks: $('trunks'),
  trunksEmpty: $('trunks-empty'),
  bans: $('bans'),
  bansBody: document.querySelector('#bans tbody'),
  bansEmpty: $('bans-empty'),
  liveHeading: $('live-heading'),
  liveBody: document.querySelector('#live-calls tbody'),
  liveEmpty: $('live-empty'),
  endedBody: document.querySelector('#ended-calls tbody'),
  endedEmpty: $('ended-empty'),
  endedCount: $('ended-count'),
  detailView: $('detail-view'),
  detailBack: $('detail-back'),
  detailHeading: $('detail-heading'),
  detailId: $('detail-id'),
  detailMessage: $('detail-message'),
  detailBody: $('detail-body'),
  detailSummary: $('detail-summary'),
  detailCounters: document.querySelector('#detail-counters tbody'),
  detailLadder: $('detail-ladder'),
  ladderEmpty: $('ladder-empty'),
  sdp: Object.fromEntries([...document.querySelectorAll('pre[data-sdp]')].map((p) => [p.dataset.sdp, p])),
  announcer: $('announcer'),
};

// ---------------------------------------------------------------------------
// State

const state = {
  signedIn: false,
  /** Bumped on sign-in and sign-out: answers to older requests are ignored. */
  generation: 0,
  /** connecting | stream | poll | offline */
  mode: 'connecting',
  snapshot: null,
  /** performance.now() when `snapshot` arrived: durations tick from there. */
  receivedAt: 0,
  refreshes: 0,
  es: null,
  streamFailures: 0,
  streamRetry: null,
  watchdog: null,
  pollToken: null,
  pollTimer: null,
  ticker: null,
  bootRetry: null,
  lockedUntil: 0,
  lockTimer: null,
  trunksSig: '',
  bansSig: '',
  lastActive: null,
};

/** Rows of the two call tables, by call id: { tr, link, cells, legs, base }. */
const liveRows = new Map();
const endedRows = new Map();
/** Ban rows: [{ remaining: element, until: Date }] */
let banRows = [];

const charts = { calls: null, pps: null, xMax: 0, observer: null };

/** The call shown in the detail view. */
const detail = { id: null, data: null, gen: 0, inFlight: false, again: false, fields: null, counters: null, ladderSig: '' };

window.statsPage = {
  get mode() { return state.mode; },
  get snapshot() { return state.snapshot; },
  get refreshes() { return state.refreshes; },
  get detail() { return detail.data; },
  charts,
};

// ---------------------------------------------------------------------------
// Small helpers

function show(node, visible) { node.hidden = !visible; }

function setText(node, text) {
  const t = String(text);
  if (node.textContent !== t) node.textContent = t;
}

function setAttr(node, name, value) {
  if (value === null || value === undefined) {
    if (node.hasAttribute(name)) node.removeAttribute(name);
  } else if (node.getAttribute(name) !== String(value)) {
    node.setAttribute(name, String(value));
  }
}

/** createElement with attributes; string children become text nodes. */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') node.className = v;
      else node.setAttribute(k, v === true ? '' : String(v));
    }
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) node.append(c);
  return node;
}

function icon(name) {
  const t = $(`icon-${name}`);
  return t ? t.content.firstElementChild.cloneNode(true) : document.createTextNode('');
}

const isNum = (v) => typeof v === 'number' && Number.isFinite(v);
const str = (v, fallback = '–') => (typeof v === 'string' && v !== '' ? v : isNum(v) ? String(v) : fallback);
const labelOf = (map, v) => map[v] || str(v);

const intFmt = new Intl.NumberFormat();
const oneDecimal = new Intl.NumberFormat(undefined, { minimumFractionDigits: 1, maximumFractionDigits: 1 });
const clockFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });
const dateClockFmt = new Intl.DateTimeFormat(undefined, {
  month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
});
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'long' });

function fmtInt(n) { return isNum(n) ? intFmt.format(Math.round(n)) : '–'; }

function fmtRate(n) {
  if (!isNum(n)) return '–';
  return n >= 100 ? intFmt.format(Math.round(n)) : oneDecimal.format(n);
}

function fmtBytes(n) {
  if (!isNum(n)) return '–';
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let v = n;
  let i = 0;
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i += 1; }
  if (i === 0) return `${Math.round(v)} B`;
  return `${v >= 100 ? Math.round(v) : oneDecimal.format(v)} ${units[i]}`;
}

function fmtDuration(seconds) {
  if (!isNum(seconds)) return '–';
  const s = Math.max(0, Math.floor(seconds));
  const hh = Math.floor(s / 3600);
  const mm = String(Math.floor((s % 3600) / 60)).padStart(2, '0');
  const ss = String(s % 60).padStart(2, '0');
  return hh > 0 ? `${hh}:${mm}:${ss}` : `${mm}:${ss}`;
}

function fmtUptime(seconds) {
  if (!isNum(seconds)) return '–';
  const s = Math.max(0, Math.floor(seconds));
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d > 0) return `${d} d ${h} h`;
  if (h > 0) return `${h} h ${m} min`;
  if (m > 0) return `${m} min ${s % 60} s`;
  return `${s} s`;
}

function fmtMs(v) {
  if (!isNum(v)) return '–';
  return `${v < 10 ? oneDecimal.format(v) : intFmt.format(Math.round(v))} ms`;
}

function fmtLoss(v) { return isNum(v) ? `${oneDecimal.format(v * 100)} %` : '–'; }

function parseTime(s) {
  if (typeof s !== 'string') return null;
  const t = Date.parse(s);
  return Number.isFinite(t) ? new Date(t) : null;
}

function fmtClock(date) {
  if (!date) return '–';
  return date.toDateString() === new Date().toDateString() ? clockFmt.format(date) : dateClockFmt.format(date);
}

function setTime(node, iso) {
  const d = parseTime(iso);
  setText(node, fmtClock(d));
  setAttr(node, 'datetime', d ? iso : null);
  setAttr(node, 'title', d ? fullFmt.format(d) : null);
}

function callHash(id) { return `#call=${encodeURIComponent(id)}`; }

function announce(text) {
  setText(ui.announcer, '');
  // A change of text is what screen readers announce: clear, then set.
  setTimeout(() => setText(ui.announcer, text), 50);
}

function showPageMessage(text, kind = 'error') {
  setText(ui.pageMessage, text || '');
  ui.pageMessage.dataset.kind = kind;
  show(ui.pageMessage, Boolean(text));
}

function setView(view) {
  document.body.dataset.view = view;
  show(ui.loading, view === 'loading');
  show(ui.loginView, view === 'login');
  show(ui.dashboard, view === 'dashboard');
  show(ui.detailView, view === 'detail');
  const inside = view === 'dashboard' || view === 'detail';
  show(ui.sessionBar, inside);
  show(ui.serverInfo, inside);
}

// ---------------------------------------------------------------------------
// Security badges

function securityLevel(security) {
  if (typeof security !== 'string' || !security.trim()) return 'unknown';
  if (/srtp/i.test(security) && !/^\s*(plain|rtp\b|none|unencrypted)/i.test(security)) return 'secure';
  return 'insecure';
}

const LEVEL_PREFIX = { secure: 'Encrypted: ', insecure: 'Not encrypted: ', unknown: 'Security not known yet', private: '' };

/** Fills `badge` (a span.sec) for one leg; rebuilt only when the value changes. */
function setBadge(badge, security, isPrivate) {
  const level = isPrivate ? 'private' : securityLevel(security);
  const key = `${level}|${typeof security === 'string' ? security : ''}`;
  if (badge.dataset.key === key) return;
  badge.dataset.key = key;
  badge.dataset.level = level;
  const text = level === 'private' ? PRIVATE_TEXT : level === 'unknown' ? '–' : security.trim();
  const iconName = level === 'secure' ? 'lock-closed' : level === 'private' ? 'shield' : 'lock-open';
  const parts = [icon(iconName), el('span', { class: 'visually-hidden' }, LEVEL_PREFIX[level])];
  if (level !== 'unknown') parts.push(el('span', { class: 'sec-text' }, text));
  else parts.push(el('span', { class: 'sec-text', 'aria-hidden': 'true' }, text));
  badge.replaceChildren(...parts);
  setAttr(badge, 'title', level === 'private' && typeof security === 'string' ? `${PRIVATE_TEXT} (${security})` : null);
}

// ---------------------------------------------------------------------------
// Counters of one leg (live calls table)

function counter(field, formatter) {
  const node = el('span', { class: 'v', 'data-field': field });
  node.format = formatter;
  return node;
}

function setCounter(node, value) {
  setText(node, node.format(value));
  setAttr(node, 'data-value', isNum(value) ? value : null);
}

/** Non-zero drop reasons, largest first: [[label, n]], and the total. */
function dropsOf(drops) {
  const list = [];
  let total = 0;
  if (drops && typeof drops === 'object') {
    for (const [reason, n] of Object.entries(drops)) {
      if (!isNum(n) || n <= 0) continue;
      total += n;
      list.push([DROP_REASONS[reason] || reason.replace(/_/g, ' '), n]);
    }
  }
  list.sort((a, b) => b[1] - a[1]);
  return { list, total };
}

function dropsText({ list }) {
  return list.length ? `drops: ${list.map(([r, n]) => `${r} ${fmtInt(n)}`).join(', ')}` : 'no drops';
}

function createLegCell(leg, label) {
  const parts = {
    badge: el('span', { class: 'sec' }),
    packets_in: counter('packets_in', fmtInt),
    bytes_in: counter('bytes_in', fmtBytes),
    packets_out: counter('packets_out', fmtInt),
    bytes_out: counter('bytes_out', fmtBytes),
    drops: el('span', { 'data-field': 'drops' }),
    loss: counter('loss', fmtLoss),
    jitter: counter('jitter_ms', fmtMs),
    rtt: counter('rtt_ms', fmtMs),
  };
  const td = el('td', { role: 'cell', class: 'leg', 'data-leg': leg, 'data-label': label },
    parts.badge,
    el('span', { class: 'io' },
      el('span', { class: 'io-dir', title: 'received by the gateway on this leg' }, 'in'),
      parts.packets_in, el('span', { class: 'unit' }, ' pkts'), el('span', { class: 'sep', 'aria-hidden': 'true' }, ' · '),
      parts.bytes_in),
    el('span', { class: 'io' },
      el('span', { class: 'io-dir', title: 'sent by the gateway on this leg' }, 'out'),
      parts.packets_out, el('span', { class: 'unit' }, ' pkts'), el('span', { class: 'sep', 'aria-hidden': 'true' }, ' · '),
      parts.bytes_out),
    el('span', { class: 'drops' }, parts.drops),
    el('span', { class: 'quality' },
      'loss ', parts.loss, el('span', { class: 'sep', 'aria-hidden': 'true' }, ' · '),
      'jitter ', parts.jitter, el('span', { class: 'sep', 'aria-hidden': 'true' }, ' · '),
      'RTT ', parts.rtt));
  return { td, parts };
}

function updateLegCell({ parts }, leg, isPrivate) {
  const l = leg && typeof leg === 'object' ? leg : {};
  setBadge(parts.badge, l.security, isPrivate);
  for (const f of ['packets_in', 'bytes_in', 'packets_out', 'bytes_out']) setCounter(parts[f], l[f]);
  const drops = dropsOf(l.drops);
  setText(parts.drops, dropsText(drops));
  setAttr(parts.drops, 'data-value', drops.total);
  parts.drops.parentElement.dataset.some = drops.total > 0 ? 'true' : 'false';
  setCounter(parts.loss, l.loss);
  setCounter(parts.jitter, l.jitter_ms);
  setCounter(parts.rtt, l.rtt_ms);
}

// ---------------------------------------------------------------------------
// Call tables

function createDirectionCell(id) {
  const arrow = el('span', { class: 'dir-arrow', 'aria-hidden': 'true' });
  const text = el('span');
  const link = el('a', { href: callHash(id), class: 'row-link' }, arrow, text,
    el('span', { class: 'visually-hidden' }, ', details'));
  const td = el('td', { role: 'cell', class: 'dir', 'data-label': 'Direction' }, link);
  return { td, link, arrow, text };
}

function setDirection(cell, direction) {
  setText(cell.arrow, DIRECTION_ARROW[direction] || '·');
  setText(cell.text, labelOf(DIRECTION, direction));
}

function textCell(label, cls) {
  return el('td', { role: 'cell', 'data-label': label, class: cls || null });
}

function createLiveRow(call) {
  const id = String(call.id);
  const dir = createDirectionCell(id);
  const cells = {
    account: textCell('Account', 'account'),
    remote: textCell('Remote party', 'remote'),
    trunk: textCell('Trunk', 'trunk-cell'),
    state: textCell('State'),
    duration: textCell('Duration', 'num'),
    codec: textCell('Codec', 'codec'),
  };
  const stateBadge = el('span', { class: 'state' });
  cells.state.append(stateBadge);
  const legs = {};
  for (const [leg, label] of LEGS) legs[leg] = createLegCell(leg, label);
  const tr = el('tr', { role: 'row', class: 'clickable', 'data-call-id': id },
    dir.td, cells.account, cells.remote, cells.trunk, cells.state, cells.duration, cells.codec,
    legs.browser.td, legs.trunk.td);
  return { tr, link: dir.link, dir, cells, stateBadge, legs, base: null };
}

function updateLiveRow(r, call) {
  setDirection(r.dir, call.direction);
  setText(r.cells.account, str(call.account));
  setText(r.cells.remote, str(call.remote));
  setText(r.cells.trunk, str(call.trunk));
  setText(r.stateBadge, labelOf(STATE, call.state));
  r.stateBadge.dataset.state = str(call.state, 'unknown');
  r.tr.dataset.state = str(call.state, 'unknown');
  r.base = isNum(call.duration_s) ? call.duration_s : null;
  setText(r.cells.duration, fmtDuration(r.base));
  setText(r.cells.codec, str(call.codec));
  const legs = call.legs && typeof call.legs === 'object' ? call.legs : {};
  r.tr.dataset.private = call.private === true ? 'true' : 'false';
  for (const [leg] of LEGS) updateLegCell(r.legs[leg], legs[leg], call.private === true);
}

function createEndedRow(call) {
  const id = String(call.id);
  const dir = createDirectionCell(id);
  const ended = el('time');
  const cells = {
    ended: el('td', { role: 'cell', 'data-label': 'Ended', class: 'when' }, ended),
    account: textCell('Account', 'account'),
    remote: textCell('Remote party', 'remote'),
    duration: textCell('Duration', 'num'),
    cause: textCell('Cause', 'cause'),
    hungUpBy: textCell('Hung up by'),
    security: textCell('Security', 'security'),
  };
  // One child per cell: on phones each cell is a two-column grid (label, value).
  const causeText = el('span');
  const causeCode = el('span', { class: 'code' });
  cells.cause.append(el('span', null, causeText, ' ', causeCode));
  const badges = {};
  const legsBox = el('span', { class: 'sec-legs' });
  for (const [leg, label] of LEGS) {
    badges[leg] = el('span', { class: 'sec' });
    legsBox.append(el('span', { class: 'sec-leg', 'data-leg': leg },
      el('span', { class: 'sec-leg-name' }, `${label.split(' ')[0]}:`), ' ', badges[leg]));
  }
  cells.security.append(legsBox);
  const tr = el('tr', { role: 'row', class: 'clickable', 'data-call-id': id },
    cells.ended, dir.td, cells.account, cells.remote, cells.duration, cells.cause, cells.hungUpBy, cells.security);
  return { tr, link: dir.link, dir, ended, cells, causeText, causeCode, badges };
}

function updateEndedRow(r, call) {
  setTime(r.ended, call.ended_at);
  setDirection(r.dir, call.direction);
  setText(r.cells.account, str(call.account));
  setText(r.cells.remote, str(call.remote));
  const answered = isNum(call.duration_s);
  setText(r.cells.duration, answered ? fmtDuration(call.duration_s) : 'not answered');
  r.cells.duration.dataset.answered = answered ? 'true' : 'false';
  setText(r.causeText, str(call.cause, isNum(call.cause_code) ? '' : '–'));
  setText(r.causeCode, isNum(call.cause_code) ? `(${call.cause_code})` : '');
  setText(r.cells.hungUpBy, labelOf(HUNG_UP_BY, call.hung_up_by));
  const isPrivate = call.private === true;
  setBadge(r.badges.browser, call.browser_security, isPrivate);
  setBadge(r.badges.trunk, call.trunk_security, isPrivate);
}

/** Brings tbody's rows in line with `items` (keyed by id), moving as little as possible. */
function syncRows(tbody, items, rows, create, update) {
  const list = [];
  const seen = new Set();
  for (const item of Array.isArray(items) ? items : []) {
    if (!item || typeof item !== 'object' || item.id === null || item.id === undefined) continue;
    const id = String(item.id);
    if (seen.has(id)) continue;
    seen.add(id);
    list.push([id, item]);
  }
  for (const [id, r] of rows) {
    if (!seen.has(id)) { r.tr.remove(); rows.delete(id); }
  }
  let prev = null;
  for (const [id, item] of list) {
    let r = rows.get(id);
    if (!r) { r = create(item); rows.set(id, r); }
    update(r, item);
    const want = prev ? prev.nextSibling : tbody.firstChild;
    if (want !== r.tr) tbody.insertBefore(r.tr, want);
    prev = r.tr;
  }
  return list.length;
}

function onRowClick(event) {
  if (event.target.closest('a, button, summary, input')) return;
  const sel = window.getSelection();
  if (sel && !sel.isCollapsed && String(sel).trim()) return; // the operator is selecting text
  const tr = event.target.closest('tr[data-call-id]');
  if (tr) location.hash = callHash(tr.dataset.callId);
}

// ---------------------------------------------------------------------------
// Trunks and bans

function renderTrunks(trunks) {
  const list = Array.isArray(trunks) ? trunks.filter((t) => t && typeof t === 'object') : [];
  const up = list.filter((t) => t.status === 'up').length;
  setText(ui.trunksUp, list.length ? `${up} of ${list.length}` : '–');
  const sig = JSON.stringify(list);
  if (sig === state.trunksSig) return;
  state.trunksSig = sig;
  ui.trunks.replaceChildren(...list.map((t) => {
    const status = ['up', 'down', 'unknown'].includes(t.status) ? t.status : 'unknown';
    return el('li', { 'data-trunk': str(t.name, ''), 'data-status': status },
      el('span', { class: 'trunk-name' }, str(t.name)),
      el('span', { class: 'badge', 'data-status': status }, status),
      el('span', { class: 'rtt' }, `OPTIONS round trip ${fmtMs(t.last_options_rtt_ms)}`),
      registrationText(t.registration));
  }));
  show(ui.trunksEmpty, list.length === 0);
}

// A registering trunk's state in words (null: the trunk does not register).
function registrationText(r) {
  if (!r || typeof r !== 'object') return null;
  const text = {
    registered: () => `registered for ${str(r.expires_s)} s`,
    failed: () => `registration failed: ${str(r.code)} ${str(r.reason)}, retry in ${str(r.retry_in_s)} s`,
    registering: () => 'registering…',
    unregistered: () => 'unregistered',
  }[r.state];
  return text ? el('span', { class: 'registration', 'data-state': r.state }, text()) : null;
}

function renderBans(bans) {
  const list = Array.isArray(bans) ? bans.filter((b) => b && typeof b === 'object') : [];
  setText(ui.bansCount, fmtInt(list.length));
  const sig = JSON.stringify(list);
  if (sig === state.bansSig) return;
  state.bansSig = sig;
  banRows = [];
  ui.bansBody.replaceChildren(...list.map((b) => {
    const until = parseTime(b.until);
    const at = el('time');
    setTime(at, b.until);
    const remaining = el('span', { class: 'remaining' });
    banRows.push({ remaining, until });
    return el('tr', { 'data-source': str(b.source, '') },
      el('td', { class: 'mono' }, str(b.source)),
      el('td', null, at, ' ', remaining),
      el('td', null, str(b.reason)));
  }));
  tickBans();
  show(ui.bans, list.length > 0);
  show(ui.bansEmpty, list.length === 0);
}

function tickBans() {
  const now = Date.now();
  for (const b of banRows) {
    const left = b.until ? Math.ceil((b.until.getTime() - now) / 1000) : NaN;
    setText(b.remaining, Number.isFinite(left) ? (left > 0 ? `(${fmtDuration(left)} left)` : '(lifting)') : '');
  }
}

// ---------------------------------------------------------------------------
// Charts (uPlot)

function cssVar(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }

function withAlpha(color, alpha) {
  const m = /^#([0-9a-f]{6})$/i.exec(color);
  if (!m) return color;
  const n = parseInt(m[1], 16);
  return `rgba(${n >> 16}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
}

function makeChart(container, label, color, format, integer) {
  if (typeof window.uPlot !== 'function') return null;
  const muted = cssVar('--muted') || '#5f6b7a';
  const grid = cssVar('--border') || '#d8dee6';
  const axis = {
    stroke: muted,
    grid: { stroke: grid, width: 1 },
    ticks: { stroke: grid, width: 1, size: 4 },
    font: '12px system-ui, sans-serif',
  };
  const opts = {
    width: Math.max(200, container.clientWidth),
    height: CHART_HEIGHT,
    pxAlign: 0,
    cursor: { drag: { x: false, y: false, setScale: false }, points: { size: 7 } },
    legend: { show: true, live: true },
    scales: {
      x: { time: true, range: () => [charts.xMax - HISTORY_S, charts.xMax] },
      y: { range: (u, min, max) => [0, max > 0 ? max * 1.15 : 1] },
    },
    series: [
      { label: 'Time', value: (u, t) => (isNum(t) ? clockFmt.format(new Date(t * 1000)) : '–') },
      {
        label,
        stroke: color,
        fill: withAlpha(color, 0.14),
        width: 2,
        points: { show: false },
        spanGaps: false,
        value: (u, v) => (v === null || v === undefined ? '–' : format(v)),
      },
    ],
    axes: [
      { ...axis, space: 60 },
      {
        ...axis,
        size: 52,
        space: 28,
        incrs: integer ? [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000] : undefined,
        values: (u, vals) => vals.map((v) => (integer ? intFmt.format(v) : compact(v))),
      },
    ],
  };
  return new window.uPlot(opts, [[], []], container);
}

function compact(v) {
  if (v >= 1e6) return `${oneDecimal.format(v / 1e6)} M`;
  if (v >= 1e4) return `${intFmt.format(Math.round(v / 1000))} k`;
  return intFmt.format(v);
}

function destroyCharts() {
  for (const k of ['calls', 'pps']) {
    if (charts[k]) { charts[k].destroy(); charts[k] = null; }
  }
}

function ensureCharts() {
  if (charts.calls && charts.pps) return;
  destroyCharts();
  if (typeof window.uPlot !== 'function') {
    for (const c of [ui.chartCalls, ui.chartPps]) {
      c.replaceChildren(el('p', { class: 'empty' }, 'The chart library did not load.'));
    }
    return;
  }
  charts.calls = makeChart(ui.chartCalls, 'Active calls', cssVar('--accent') || '#2457d6', fmtInt, true);
  charts.pps = makeChart(ui.chartPps, 'Packets/s', cssVar('--green') || '#1a7f45', fmtRate, false);
  if (!charts.observer && typeof ResizeObserver === 'function') {
    charts.observer = new ResizeObserver(() => resizeCharts());
    charts.observer.observe(ui.chartCalls);
    charts.observer.observe(ui.chartPps);
  }
}

function resizeCharts() {
  for (const [k, c] of [['calls', ui.chartCalls], ['pps', ui.chartPps]]) {
    const u = charts[k];
    const w = Math.floor(c.clientWidth);
    if (u && w > 0 && Math.abs(u.width - w) > 1) u.setSize({ width: w, height: CHART_HEIGHT });
  }
}

function updateCharts(snap) {
  const hist = (Array.isArray(snap.history) ? snap.history : [])
    .filter((p) => p && isNum(p.t))
    .sort((a, b) => a.t - b.t);
  const xs = hist.map((p) => p.t);
  const calls = hist.map((p) => (isNum(p.calls) ? p.calls : null));
  const pps = hist.map((p) => (isNum(p.pps) ? p.pps : null));
  const gen = parseTime(snap.generated_at);
  const now = gen ? gen.getTime() / 1000 : Date.now() / 1000;
  // The newest point is now, not up to 10 s ago.
  if (!xs.length || now > xs[xs.length - 1]) {
    xs.push(now);
    calls.push(isNum(snap.calls_active) ? snap.calls_active : null);
    pps.push(isNum(snap.packets_per_second) ? snap.packets_per_second : null);
  }
  charts.xMax = now;
  if (charts.calls) charts.calls.setData([xs, calls]);
  if (charts.pps) charts.pps.setData([xs, pps]);
  const describe = (values, fmt, what) => {
    const known = values.filter(isNum);
    const last = known.length ? known[known.length - 1] : null;
    const peak = known.length ? Math.max(...known) : null;
    return { text: `now ${fmt(last)} · peak ${fmt(peak)}`, label: `${what} over the last hour: now ${fmt(last)}, peak ${fmt(peak)}` };
  };
  const c = describe(calls, fmtInt, 'Active calls');
  setText(ui.chartCallsSummary, c.text);
  setAttr(ui.chartCalls, 'aria-label', c.label);
  const p = describe(pps, fmtRate, 'Packets per second');
  setText(ui.chartPpsSummary, p.text);
  setAttr(ui.chartPps, 'aria-label', p.label);
}

// ---------------------------------------------------------------------------
// A snapshot

function applySnapshot(snap) {
  if (!snap || typeof snap !== 'object' || Array.isArray(snap)) return;
  state.snapshot = snap;
  state.receivedAt = performance.now();
  state.refreshes += 1;

  setText(ui.serverVersion, typeof snap.version === 'string' ? `version ${snap.version}` : 'version –');
  setText(ui.serverUptime, fmtUptime(snap.uptime_s));

  const active = isNum(snap.calls_active) ? snap.calls_active : (Array.isArray(snap.calls) ? snap.calls.length : 0);
  setText(ui.callsActive, fmtInt(active));
  ui.callsActive.dataset.value = String(active);
  setText(ui.pps, fmtRate(snap.packets_per_second));
  if (state.lastActive !== null && state.lastActive !== active) {
    announce(`${active} active call${active === 1 ? '' : 's'}`);
  }
  state.lastActive = active;

  updateCharts(snap);
  renderTrunks(snap.trunks);
  renderBans(snap.bans);
  const live = syncRows(ui.liveBody, snap.calls, liveRows, createLiveRow, updateLiveRow);
  show(ui.liveEmpty, live === 0);
  const ended = syncRows(ui.endedBody, snap.ended, endedRows, createEndedRow, updateEndedRow);
  show(ui.endedEmpty, ended === 0);
  setText(ui.endedCount, ended ? `the last ${fmtInt(ended)}` : '');

  const stamp = typeof snap.generated_at === 'string' ? snap.generated_at : new Date().toISOString();
  document.body.dataset.updatedAt = stamp;
  const at = parseTime(stamp);
  setAttr(ui.feedStatus, 'title', at ? `Updated ${fullFmt.format(at)}` : null);

  refreshDetail(snap);
}

/** Once a second: durations, uptime and bans move on between snapshots. */
function tick() {
  tickBans();
  const snap = state.snapshot;
  if (!snap || state.mode === 'offline') return; // frozen: nothing is known
  const dt = (performance.now() - state.receivedAt) / 1000;
  if (isNum(snap.uptime_s)) setText(ui.serverUptime, fmtUptime(snap.uptime_s + dt));
  for (const r of liveRows.values()) {
    if (r.base !== null) setText(r.cells.duration, fmtDuration(r.base + dt));
  }
  tickDetail();
}

function clearDashboard() {
  state.snapshot = null;
  state.lastActive = null;
  state.trunksSig = '';
  state.bansSig = '';
  banRows = [];
  for (const rows of [liveRows, endedRows]) {
    for (const r of rows.values()) r.tr.remove();
    rows.clear();
  }
  ui.trunks.replaceChildren();
  ui.bansBody.replaceChildren();
  for (const [node, text] of [[ui.callsActive, '0'], [ui.pps, '0'], [ui.trunksUp, '–'], [ui.bansCount, '0'],
    [ui.serverVersion, ''], [ui.serverUptime, '–'], [ui.chartCallsSummary, ''], [ui.chartPpsSummary, '']]) {
    setText(node, text);
  }
  if (charts.calls) charts.calls.setData([[], []]);
  if (charts.pps) charts.pps.setData([[], []]);
  closeDetail(false);
  delete document.body.dataset.updatedAt;
}

// ---------------------------------------------------------------------------
// The feed: Server-Sent Events, or polling while the stream is down

const MODE_TEXT = { connecting: 'Connecting…', stream: 'Live', poll: 'Live (polling)', offline: 'Offline' };

function setMode(mode) {
  if (state.mode === mode) return;
  state.mode = mode;
  ui.feedStatus.dataset.state = mode;
  setText(ui.feedStatus, MODE_TEXT[mode] || mode);
  if (mode === 'offline') {
    showPageMessage('The gateway cannot be reached. The figures below are frozen; the page keeps trying.', 'conn');
  } else if (ui.pageMessage.dataset.kind === 'conn') {
    showPageMessage('');
  }
}

async function fetchStats() {
  try {
    const res = await fetch(STATS_URL, { headers: { Accept: 'application/json' }, credentials: 'same-origin', cache: 'no-store' });
    if (!res.ok) return { status: res.status, data: null };
    return { status: res.status, data: await res.json() };
  } catch (err) {
    return { status: 0, data: null, error: err };
  }
}

function openStream() {
  closeStream();
  if (typeof EventSource !== 'function') { startPolling(); return; }
  const gen = state.generation;
  let es;
  try {
    es = new EventSource(STREAM_URL, { withCredentials: true });
  } catch {
    streamFailed();
    return;
  }
  state.es = es;
  armWatchdog();
  es.addEventListener('stats', (event) => {
    if (state.es !== es || gen !== state.generation) return;
    let snap;
    try { snap = JSON.parse(event.data); } catch { return; }
    state.streamFailures = 0;
    stopPolling();
    setMode('stream');
    armWatchdog();
    applySnapshot(snap);
  });
  // A refused stream (401, 404, 5xx) and a broken one both end here: poll
  // (which also finds out whether the session ended) and try again later.
  es.addEventListener('error', () => {
    if (state.es === es) streamFailed();
  });
}

function closeStream() {
  clearTimeout(state.watchdog);
  state.watchdog = null;
  if (state.es) {
    state.es.close();
    state.es = null;
  }
}

function armWatchdog() {
  clearTimeout(state.watchdog);
  state.watchdog = setTimeout(() => { if (state.es) streamFailed(); }, STREAM_SILENCE_MS);
}

function streamFailed() {
  closeStream();
  if (!state.signedIn) return;
  state.streamFailures += 1;
  if (state.mode === 'stream' || state.mode === 'connecting') setMode('poll');
  startPolling();
  clearTimeout(state.streamRetry);
  const delay = Math.min(STREAM_RETRY_MAX_MS, STREAM_RETRY_MIN_MS * 2 ** Math.min(state.streamFailures - 1, 4));
  state.streamRetry = setTimeout(() => { if (state.signedIn) openStream(); }, delay);
}

function startPolling() {
  if (state.pollToken) return;
  const token = {};
  state.pollToken = token;
  pollOnce(token);
}

function stopPolling() {
  state.pollToken = null;
  clearTimeout(state.pollTimer);
  state.pollTimer = null;
}

async function pollOnce(token) {
  state.pollTimer = null;
  const gen = state.generation;
  const r = await fetchStats();
  if (token !== state.pollToken || gen !== state.generation) return;
  if (r.status === 401) {
    sessionEnded('Your session has ended. Sign in again.');
    return;
  }
  if (r.data) {
    setMode('poll');
    applySnapshot(r.data);
  } else {
    setMode('offline');
  }
  state.pollTimer = setTimeout(() => pollOnce(token), r.data ? POLL_MS : OFFLINE_POLL_MS);
}

function stopFeed() {
  state.generation += 1;
  closeStream();
  stopPolling();
  clearTimeout(state.streamRetry);
  state.streamRetry = null;
  clearInterval(state.ticker);
  state.ticker = null;
  clearTimeout(state.bootRetry);
  state.bootRetry = null;
  state.streamFailures = 0;
}

// ---------------------------------------------------------------------------
// Sign in, sign out, start

function loginError(text) {
  setText(ui.loginError, text || '');
  show(ui.loginError, Boolean(text));
  setAttr(ui.password, 'aria-invalid', text ? 'true' : null);
}

function showLogin(message = '', kind = 'error') {
  state.signedIn = false;
  setView('login');
  showPageMessage(message, kind);
  ui.password.focus();
}

function sessionEnded(message) {
  stopFeed();
  clearDashboard();
  showLogin(message, 'error');
}

/** Seconds from a Retry-After header (delta-seconds or an HTTP date). */
function retryAfterSeconds(value) {
  if (!value) return null;
  if (/^\s*\d+\s*$/.test(value)) return Number(value);
  const t = Date.parse(value);
  return Number.isFinite(t) ? Math.max(1, Math.ceil((t - Date.now()) / 1000)) : null;
}

function lockout(seconds) {
  const known = isNum(seconds) && seconds > 0;
  state.lockedUntil = Date.now() + (known ? seconds : DEFAULT_LOCKOUT_S) * 1000;
  ui.loginButton.disabled = true;
  const update = () => {
    const left = Math.ceil((state.lockedUntil - Date.now()) / 1000);
    if (left <= 0) {
      clearInterval(state.lockTimer);
      state.lockTimer = null;
      state.lockedUntil = 0;
      ui.loginButton.disabled = false;
      loginError('');
      return;
    }
    // Only the first text is announced (role=alert); the countdown just updates.
    setText(ui.loginError, known
      ? `Too many sign-in attempts. Try again in ${left} s.`
      : 'Too many sign-in attempts. Wait a little and try again.');
  };
  clearInterval(state.lockTimer);
  loginError(known ? `Too many sign-in attempts. Try again in ${seconds} s.` : 'Too many sign-in attempts. Wait a little and try again.');
  state.lockTimer = setInterval(update, 1000);
}

async function onLoginSubmit(event) {
  event.preventDefault();
  if (state.lockedUntil > Date.now()) return;
  const password = ui.password.value;
  if (!password) {
    loginError('Enter the admin password.');
    ui.password.focus();
    return;
  }
  loginError('');
  showPageMessage('');
  ui.loginButton.disabled = true;
  setText(ui.loginButton, 'Signing in…');
  let res = null;
  try {
    res = await fetch(LOGIN_URL, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify({ password }),
      credentials: 'same-origin',
      cache: 'no-store',
    });
  } catch {
    res = null;
  } finally {
    setText(ui.loginButton, 'Sign in');
    ui.loginButton.disabled = false;
  }
  if (!res) {
    loginError('Cannot reach the gateway. Check the network connection and try again.');
    return;
  }
  if (res.status === 401 || res.status === 403) {
    loginError('Wrong password.');
    ui.password.select();
    ui.password.focus();
    return;
  }
  if (res.status === 429) {
    lockout(retryAfterSeconds(res.headers.get('Retry-After')));
    return;
  }
  if (!res.ok) {
    loginError(`The gateway could not sign you in (HTTP ${res.status}). Try again later.`);
    return;
  }
  ui.password.value = '';
  await start(true);
}

async function signOut() {
  stopFeed();
  ui.signoutButton.disabled = true;
  let ok = false;
  try {
    const res = await fetch(LOGOUT_URL, { method: 'POST', credentials: 'same-origin', cache: 'no-store' });
    ok = res.ok || res.status === 401;
  } catch {
    ok = false;
  } finally {
    ui.signoutButton.disabled = false;
  }
  clearDashboard();
  if (location.hash) history.replaceState(null, '', location.pathname + location.search);
  showLogin(ok ? 'Signed out.' : 'Signed out of this page, but the gateway could not be reached: its session may stay open until it expires.',
    ok ? 'info' : 'error');
}

/** Loads the figures; shows the dashboard, or the sign-in form on 401. */
async function start(afterLogin = false) {
  stopFeed();
  const gen = state.generation;
  const r = await fetchStats();
  if (gen !== state.generation) return;
  if (r.status === 401) {
    showLogin(afterLogin
      ? 'The gateway accepted the password, but this browser did not keep the session cookie. Open the page over HTTPS and try again.'
      : '');
    return;
  }
  if (!r.data) {
    if (document.body.dataset.view === 'loading' || afterLogin) {
      setView(afterLogin ? 'login' : 'loading');
      showPageMessage(r.status
        ? `The gateway answered HTTP ${r.status}. Trying again…`
        : 'Cannot reach the gateway. Trying again…', 'conn');
    }
    state.bootRetry = setTimeout(() => start(false), BOOT_RETRY_MS);
    return;
  }
  enterDashboard(r.data, afterLogin);
}

function enterDashboard(snap, afterLogin) {
  state.signedIn = true;
  showPageMessage('');
  state.mode = '';
  setMode('connecting');
  setView('dashboard');
  ensureCharts();
  applySnapshot(snap);
  openStream();
  state.ticker = setInterval(tick, 1000);
  route();
  if (afterLogin && document.body.dataset.view === 'dashboard') ui.main.focus({ preventScroll: true });
}

// ---------------------------------------------------------------------------
// One call: #call=ID

function hashCallId() {
  const m = /^#call=(.*)$/.exec(location.hash);
  if (!m) return null;
  try { return decodeURIComponent(m[1]); } catch { return m[1]; }
}

function route() {
  if (!state.signedIn) return;
  const id = hashCallId();
  if (id !== null && id !== '') openDetail(id);
  else closeDetail(true);
}

function detailMessage(text, kind = 'info') {
  setText(ui.detailMessage, text || '');
  ui.detailMessage.dataset.kind = kind;
  show(ui.detailMessage, Boolean(text));
}

const SUMMARY_FIELDS = [
  ['status', 'Status'], ['direction', 'Direction'], ['account', 'Account'], ['remote', 'Remote party'],
  ['trunk', 'Trunk'], ['started', 'Started'], ['answered', 'Answered'], ['ended', 'Ended'],
  ['duration', 'Duration'], ['codec', 'Codec'], ['hung_up_by', 'Hung up by'],
];

const COUNTER_ROWS = [
  ['security', 'Security'], ['packets_in', 'Packets in'], ['packets_out', 'Packets out'],
  ['bytes_in', 'Bytes in'], ['bytes_out', 'Bytes out'], ['drops', 'Drops'],
  ['loss', 'Loss'], ['jitter', 'Jitter'], ['rtt', 'Round trip'],
];

function buildDetailSkeleton() {
  detail.fields = {};
  ui.detailSummary.replaceChildren(...SUMMARY_FIELDS.map(([key, label]) => {
    const dd = el('dd', { 'data-field': key });
    detail.fields[key] = dd;
    const row = el('div', { class: 'summary-item' }, el('dt', null, label), dd);
    dd.row = row;
    return row;
  }));
  detail.counters = {};
  ui.detailCounters.replaceChildren(...COUNTER_ROWS.map(([key, label]) => {
    const cells = {};
    const tr = el('tr', { 'data-counter': key }, el('th', { scope: 'row' }, label));
    for (const [leg, legLabel] of LEGS) {
      const td = el('td', { 'data-leg': leg, 'data-label': legLabel });
      if (key === 'security') td.append(el('span', { class: 'sec' }));
      cells[leg] = td;
      tr.append(td);
    }
    detail.counters[key] = cells;
    return tr;
  }));
  detail.ladderSig = '';
  ui.detailLadder.replaceChildren();
  for (const pre of Object.values(ui.sdp)) setText(pre, '');
}

function openDetail(id) {
  if (detail.id === id && !ui.detailView.hidden) return;
  detail.id = id;
  detail.data = null;
  detail.gen += 1;
  detail.again = false;
  buildDetailSkeleton();
  ui.detailView.dataset.callId = id;
  ui.detailView.dataset.loaded = 'false';
  setText(ui.detailHeading, 'Call');
  setText(ui.detailId, id);
  show(ui.detailBody, false);
  detailMessage('Loading…');
  setView('detail');
  window.scrollTo(0, 0);
  ui.detailHeading.focus();
  loadDetail();
}

function closeDetail(restoreFocus) {
  const id = detail.id;
  detail.id = null;
  detail.data = null;
  detail.gen += 1;
  if (ui.detailView.hidden) return;
  delete ui.detailView.dataset.callId;
  delete ui.detailView.dataset.loaded;
  buildDetailSkeleton();
  if (state.signedIn) setView('dashboard');
  resizeCharts();
  if (restoreFocus) {
    const r = (id !== null && (liveRows.get(id) || endedRows.get(id))) || null;
    (r ? r.link : ui.liveHeading).focus();
  }
}

async function loadDetail() {
  if (detail.inFlight) { detail.again = true; return; }
  const id = detail.id;
  const gen = detail.gen;
  if (id === null) return;
  detail.inFlight = true;
  let res = null;
  let data = null;
  try {
    res = await fetch(CALL_URL + encodeURIComponent(id), {
      headers: { Accept: 'application/json' }, credentials: 'same-origin', cache: 'no-store',
    });
    if (res.ok) data = await res.json();
  } catch {
    /* shown below */
  }
  detail.inFlight = false;
  if (gen !== detail.gen) {
    if (detail.id !== null && detail.again) { detail.again = false; loadDetail(); }
    return;
  }
  detail.again = false;
  if (res && res.status === 401) {
    sessionEnded('Your session has ended. Sign in again.');
    return;
  }
  if (res && res.status === 404) {
    detail.data = null;
    show(ui.detailBody, false);
    ui.detailView.dataset.loaded = 'missing';
    detailMessage('No such call: it is neither live nor among the last 100 ended calls.', 'error');
    return;
  }
  if (!data || typeof data !== 'object') {
    // Keep what is shown; say why it may be stale.
    detailMessage(res ? `The gateway answered HTTP ${res.status} for this call.` : 'Cannot reach the gateway.', 'error');
    return;
  }
  detail.data = data;
  detail.receivedAt = performance.now();
  detailMessage('');
  renderDetail(data);
  ui.detailView.dataset.loaded = 'true';
  show(ui.detailBody, true);
}

/** After each snapshot: a live call's detail is fetched again (ladder and counters move). */
function refreshDetail(snap) {
  if (detail.id === null || ui.detailView.hidden || !detail.data) return;
  const live = Array.isArray(snap.calls) && snap.calls.some((c) => c && String(c.id) === detail.id);
  // Once more after the call ended (it was live when last fetched), to get its
  // final record; then the detail stands still.
  if (live || detail.data.call) loadDetail();
}

function renderDetail(data) {
  const call = data.call && typeof data.call === 'object' ? data.call : null;
  const rec = data.record && typeof data.record === 'object' ? data.record : null;
  // A live call may come with its record in progress: it has not ended yet.
  const over = Boolean(rec && (!call || parseTime(rec.ended_at)));
  const c = call || rec || {};
  const f = detail.fields;
  const dirText = labelOf(DIRECTION, c.direction);
  setText(ui.detailHeading, `${dirText} call · ${str(c.account)} ${c.direction === 'incoming' ? '←' : '→'} ${str(c.remote)}`);
  setText(ui.detailId, str(c.id, detail.id));

  const put = (key, text) => {
    const dd = f[key];
    const has = text !== null && text !== undefined && text !== '';
    dd.row.hidden = !has;
    if (has) setText(dd, text);
  };
  if (call) {
    put('status', `${labelOf(STATE, call.state)} (live)`);
  } else if (over) {
    const cause = [str(rec.cause, ''), isNum(rec.cause_code) ? `(${rec.cause_code})` : ''].filter(Boolean).join(' ');
    put('status', cause ? `Ended: ${cause}` : 'Ended');
  } else {
    put('status', 'Unknown');
  }
  put('direction', dirText);
  put('account', str(c.account));
  put('remote', str(c.remote));
  put('trunk', str(c.trunk));
  put('started', fmtClock(parseTime(c.started_at)));
  put('answered', c.answered_at ? fmtClock(parseTime(c.answered_at)) : 'not answered');
  put('ended', over ? fmtClock(parseTime(rec.ended_at)) : null);
  detail.base = call && isNum(call.duration_s) ? call.duration_s : null;
  put('duration', call ? fmtDuration(call.duration_s) : isNum(rec && rec.duration_s) ? fmtDuration(rec.duration_s) : 'not answered');
  put('codec', str(c.codec));
  put('hung_up_by', over ? labelOf(HUNG_UP_BY, rec.hung_up_by) : null);

  const isPrivate = c.private === true;
  for (const [leg] of LEGS) {
    const cnt = detail.counters;
    let l;
    let security;
    let drops;
    if (call) {
      l = (call.legs && call.legs[leg]) || {};
      security = l.security;
      drops = dropsText(dropsOf(l.drops));
      setAttr(cnt.drops[leg], 'data-value', dropsOf(l.drops).total);
    } else {
      // The contract names the totals `browser`/`trunk`; call records name them `browser_leg`/`trunk_leg`.
      l = (rec && (rec[leg] || rec[`${leg}_leg`])) || {};
      security = rec ? rec[`${leg}_security`] : null;
      drops = isNum(l.drops_total) ? (l.drops_total > 0 ? `${fmtInt(l.drops_total)} in all` : 'no drops') : '–';
      setAttr(cnt.drops[leg], 'data-value', isNum(l.drops_total) ? l.drops_total : null);
    }
    setBadge(cnt.security[leg].firstChild, security, isPrivate);
    for (const [key, fmt] of [['packets_in', fmtInt], ['packets_out', fmtInt], ['bytes_in', fmtBytes], ['bytes_out', fmtBytes]]) {
      setText(cnt[key][leg], fmt(l[key]));
      setAttr(cnt[key][leg], 'data-value', isNum(l[key]) ? l[key] : null);
    }
    setText(cnt.drops[leg], drops);
    setText(cnt.loss[leg], fmtLoss(l.loss));
    setText(cnt.jitter[leg], fmtMs(l.jitter_ms));
    setText(cnt.rtt[leg], fmtMs(l.rtt_ms));
  }

  const sdp = data.sdp && typeof data.sdp === 'object' ? data.sdp : {};
  for (const [key, pre] of Object.entries(ui.sdp)) {
    const text = typeof sdp[key] === 'string' && sdp[key].trim() ? sdp[key].replace(/\r\n/g, '\n').trimEnd() : '';
    setText(pre, text || '(none)');
    pre.dataset.empty = text ? 'false' : 'true';
  }

  renderLadder(Array.isArray(data.ladder) ? data.ladder : []);
}

const PEER = { browser: 'browser', trunk: 'trunk' };

function renderLadder(ladder) {
  const items = ladder.filter((m) => m && typeof m === 'object');
  const sig = JSON.stringify(items);
  if (sig === detail.ladderSig) return;
  detail.ladderSig = sig;
  ui.detailLadder.replaceChildren(...items.map((m) => {
    const peer = PEER[m.peer] || 'trunk';
    const dir = m.direction === 'out' ? 'out' : 'in';
    const words = dir === 'in' ? `from the ${peer}` : `to the ${peer}`;
    return el('li', { 'data-peer': peer, 'data-direction': dir },
      el('span', { class: 'ladder-t' }, isNum(m.t_ms) ? `+${(m.t_ms / 1000).toFixed(3)} s` : '–'),
      el('span', { class: 'lanes', 'aria-hidden': 'true' }, el('span', { class: 'arrow' })),
      el('span', { class: 'ladder-msg' },
        el('span', { class: 'visually-hidden' }, `${words}: `),
        str(m.summary, '')));
  }));
  show(ui.ladderEmpty, items.length === 0);
}

function tickDetail() {
  if (detail.id === null || !detail.data || !detail.fields || !isNum(detail.base)) return;
  setText(detail.fields.duration, fmtDuration(detail.base + (performance.now() - detail.receivedAt) / 1000));
}

// ---------------------------------------------------------------------------
// Wiring

ui.loginForm.addEventListener('submit', onLoginSubmit);
ui.signoutButton.addEventListener('click', () => signOut());
ui.liveBody.addEventListener('click', onRowClick);
ui.endedBody.addEventListener('click', onRowClick);
window.addEventListener('hashchange', route);
document.addEventListener('keydown', (event) => {
  if (event.key === 'Escape' && document.body.dataset.view === 'detail' && !event.defaultPrevented) {
    location.hash = '';
  }
});
// Dark/light switch: redraw the charts in the new colours.
if (window.matchMedia) {
  const mq = window.matchMedia('(prefers-color-scheme: dark)');
  const recolor = () => {
    if (!state.signedIn) return;
    destroyCharts();
    ensureCharts();
    if (state.snapshot) updateCharts(state.snapshot);
  };
  if (typeof mq.addEventListener === 'function') mq.addEventListener('change', recolor);
}
window.addEventListener('pagehide', () => closeStream());

setView('loading');
start(false);
