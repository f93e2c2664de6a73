// Web client of webrtc-sip-gateway.
//
// Plain ES module, no build step. Served by the gateway under a strict CSP
// (`default-src 'self'; connect-src 'self' wss:`): no inline code or styles,
// no eval. Signaling follows PROTOCOL.md section 3.
//
// Test hooks: `window.gatewayClient.pc` is the current RTCPeerConnection
// (or null), `window.gatewayClient.state` the call state, also shown as
// `data-state` on #call-status: idle | dialing | ringing | incoming |
// connected | ended. While an incoming call is offered the page rings:
// `data-ringing="true"` on <body> (else "false"), `data-ring-audio` on <body>
// says what the WebAudio ringer is doing (off | running | suspended, i.e.
// waiting for a click or key press | unavailable), and
// `window.gatewayClient.ringLevel()` is the ringer's current output level
// (RMS, 0 when silent), so tests need no audio hardware.
// While an outgoing call rings, `data-ringback` on <body> says which
// ringback plays: `local` (180 without early media: the page's own WebAudio
// tone), `network` (183: the trunk's early media through the call's audio),
// else `off`. A transfer shows on #call-status as `data-transfer`
// (pending | done | failed) with `data-transfer-code`.

const TOKEN_KEY = 'gateway.token';
const ACCOUNT_KEY = 'gateway.account';
const EXPIRES_KEY = 'gateway.expires';

const ICE_GATHER_MAX_MS = 1000;
const RECONNECT_MIN_MS = 1000;
const RECONNECT_MAX_MS = 30000;
const NUMBER_RE = /^\+?[0-9A-Za-z*#._-]{1,64}$/;
const NORMAL_TITLE = document.title;
const RING_TITLE = 'Incoming call…';
const TITLE_FLASH_MS = 1000;
const DTMF_RE = /^[0-9*#A-D]$/;

const $ = (id) => document.getElementById(id);

const ui = {
  loginView: $('login-view'),
  loginForm: $('login-form'),
  loginAccount: $('login-account'),
  loginPassword: $('login-password'),
  loginError: $('login-error'),
  loginButton: $('login-button'),
  phoneView: $('phone-view'),
  sessionBar: $('session-bar'),
  connStatus: $('conn-status'),
  accountName: $('account-name'),
  signoutButton: $('signout-button'),
  callStatus: $('call-status'),
  callStatusText: $('call-status-text'),
  callTimer: $('call-timer'),
  security: $('call-security'),
  securitySummary: $('security-summary'),
  securityBrowser: $('security-browser'),
  securityTrunk: $('security-trunk'),
  message: $('call-message'),
  dtmf: $('call-dtmf'),
  dtmfSent: $('dtmf-sent'),
  dtmfReceived: $('dtmf-received'),
  incomingPanel: $('incoming-panel'),
  incomingText: $('incoming-text'),
  incomingFrom: $('incoming-from'),
  incomingVerstat: $('incoming-verstat'),
  acceptButton: $('accept-button'),
  rejectButton: $('reject-button'),
  dialForm: $('dial-form'),
  number: $('number'),
  dialpad: $('dialpad'),
  callButton: $('call-button'),
  hangupButton: $('hangup-button'),
  holdButton: $('hold-button'),
  transferButton: $('transfer-button'),
  backspaceButton: $('backspace-button'),
  remoteAudio: $('remote-audio'),
};

// ---------------------------------------------------------------------------
// State

/** Signed-in session: { token, account, expiresAt } or null. */
let session = null;

/** Signaling socket and its reconnect bookkeeping. */
const conn = { ws: null, attempts: 0, timer: null, wanted: false };

/**
 * The one call this page handles at a time, or null.
 * { id, direction: 'out'|'in', pc, stream, state, offerSdp?, connectedAt?, timer? }
 */
let call = null;

/** Call state shown when there is no call (idle, or ended after one). */
let idleState = 'idle';
/** Id of the call that last ended locally, so a late `hangup` can fill in its code. */
let lastEndedId = null;
/** Status text to keep when the gateway confirms that call (e.g. "Declined"), or null. */
let lastEndedText = null;

window.gatewayClient = {
  get pc() { return call ? call.pc : null; },
  get state() { return ui.callStatus.dataset.state; },
  get callId() { return call ? call.id : null; },
  get connection() { return ui.connStatus.dataset.state; },
  get ringing() { return ringer.active; },
  /** 'none' | 'pending' | 'browser' | 'trunk' | 'both': who holds the call. */
  get hold() { return call ? holdState(call) : 'none'; },
  ringLevel() { return ringer.level(); },
};

// ---------------------------------------------------------------------------
// Helpers

function show(el, visible) { el.hidden = !visible; }

function setText(el, text) { el.textContent = text; }

function uuid() {
  if (typeof crypto.randomUUID === 'function') return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function formatDuration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const hh = Math.floor(s / 3600);
  const mm = String(Math.floor((s % 3600) / 60)).padStart(2, '0');
  const ss = String(s % 60).padStart(2, '0');
  return hh > 0 ? `${hh}:${mm}:${ss}` : `${mm}:${ss}`;
}

function showMessage(text, kind = 'error') {
  if (!text) {
    show(ui.message, false);
    setText(ui.message, '');
    return;
  }
  ui.message.dataset.kind = kind;
  setText(ui.message, text);
  show(ui.message, true);
}

function log(...args) { console.info('[gateway]', ...args); }

// ---------------------------------------------------------------------------
// Ringing: a WebAudio ring tone, the flashing title, vibration, a system
// notification when one is already allowed. No audio file: two oscillators
// (400 + 450 Hz, the UK/Commonwealth ring) through a gain envelope with the
// double-ring cadence 0.4 s on, 0.2 s off, 0.4 s on, 2 s off.

const RING_FREQS = [400, 450];
const RING_CADENCE = [[0, 0.4], [0.6, 1.0]]; // bursts within one cycle, seconds
const RING_CYCLE_S = 3.0;
const RING_VOLUME = 0.18;
const RING_RAMP_S = 0.015; // soft edges: no clicks
const VIBRATE_PATTERN = [400, 200, 400];

const ringer = {
  active: false,
  ctx: null,
  unavailable: false,
  nodes: null, // { oscillators, envelope, analyser }
  nextCycle: 0,
  scheduler: null,
  titleTimer: null,
  vibrateTimer: null,
  notification: null,

  audioContext(create) {
    if (this.ctx || this.unavailable || !create) return this.ctx;
    const Ctor = window.AudioContext || window.webkitAudioContext;
    if (typeof Ctor !== 'function') {
      this.unavailable = true;
      return null;
    }
    try {
      this.ctx = new Ctor();
      this.ctx.addEventListener('statechange', () => this.report());
    } catch (err) {
      log('AudioContext unavailable', err && err.name);
      this.unavailable = true;
      this.ctx = null;
    }
    return this.ctx;
  },

  // Browsers keep an AudioContext suspended until the person interacts with
  // the page; every click or key press tries again. resume() may reject or
  // never settle: neither may break the page.
  resume() {
    const ctx = this.ctx;
    if (!ctx || ctx.state !== 'suspended') return;
    try {
      const p = ctx.resume();
      if (p && typeof p.then === 'function') p.then(() => this.report(), () => this.report());
    } catch { /* not allowed yet */ }
  },

  onGesture() {
    // Create the context inside the gesture, so that a later ring may start.
    const ctx = this.audioContext(true);
    if (!ctx) return;
    if (this.active) this.resume();
    else if (ctx.state === 'suspended') {
      // Unlock it now, then let it sleep again until needed.
      try {
        const p = ctx.resume();
        if (p && typeof p.then === 'function') {
          p.then(() => { if (!this.active && ctx.state === 'running') ctx.suspend().catch(() => {}); }, () => {});
        }
      } catch { /* ignore */ }
    }
  },

  start(from) {
    if (this.active) return;
    this.active = true;
    document.body.dataset.ringing = 'true';
    this.startTitle();
    this.startAudio();
    this.vibrate(true);
    this.notify(from);
    this.report();
  },

  stop() {
    if (!this.active) return;
    this.active = false;
    document.body.dataset.ringing = 'false';
    this.stopTitle();
    this.stopAudio();
    this.vibrate(false);
    if (this.notification) {
      try { this.notification.close(); } catch { /* gone */ }
      this.notification = null;
    }
    this.report();
  },

  report() {
    let s = 'off';
    if (this.active) {
      if (!this.ctx) s = 'unavailable';
      else s = this.ctx.state === 'running' ? 'running' : 'suspended';
    }
    document.body.dataset.ringAudio = s;
  },

  startAudio() {
    const ctx = this.audioContext(true);
    if (!ctx) return;
    try {
      const envelope = ctx.createGain();
      envelope.gain.value = 0;
      const analyser = ctx.createAnalyser();
      analyser.fftSize = 1024;
      const oscillators = RING_FREQS.map((f) => {
        const o = ctx.createOscillator();
        o.type = 'sine';
        o.frequency.value = f;
        o.connect(envelope);
        o.start();
        return o;
      });
      envelope.connect(ctx.destination);
      envelope.connect(analyser);
      this.nodes = { oscillators, envelope, analyser };
      this.nextCycle = 0;
      this.schedule();
      this.scheduler = setInterval(() => this.schedule(), 250);
    } catch (err) {
      log('ring tone failed', err && err.name);
      this.stopAudio();
      return;
    }
    this.resume();
  },

  // Schedules the envelope about a second ahead. While the context is
  // suspended its clock stands still, so the ring starts where it left off.
  schedule() {
    const ctx = this.ctx;
    const n = this.nodes;
    if (!ctx || !n) return;
    const now = ctx.currentTime;
    if (this.nextCycle < now) this.nextCycle = now + 0.05;
    const gain = n.envelope.gain;
    const peak = RING_VOLUME / RING_FREQS.length;
    while (this.nextCycle < now + 1.0) {
      const t0 = this.nextCycle;
      for (const [on, off] of RING_CADENCE) {
        gain.setValueAtTime(0, t0 + on);
        gain.linearRampToValueAtTime(peak, t0 + on + RING_RAMP_S);
        gain.setValueAtTime(peak, t0 + off - RING_RAMP_S);
        gain.linearRampToValueAtTime(0, t0 + off);
      }
      this.nextCycle = t0 + RING_CYCLE_S;
    }
  },

  stopAudio() {
    clearInterval(this.scheduler);
    this.scheduler = null;
    const n = this.nodes;
    this.nodes = null;
    if (!n) return;
    const ctx = this.ctx;
    try {
      const now = ctx.currentTime;
      n.envelope.gain.cancelScheduledValues(now);
      n.envelope.gain.setValueAtTime(n.envelope.gain.value, now);
      n.envelope.gain.linearRampToValueAtTime(0, now + 0.03);
      for (const o of n.oscillators) o.stop(now + 0.05);
    } catch { /* context closed */ }
    setTimeout(() => {
      try {
        n.envelope.disconnect();
        n.analyser.disconnect();
        for (const o of n.oscillators) o.disconnect();
      } catch { /* already disconnected */ }
      // Nothing else plays through this context: let it sleep.
      if (!this.active && ctx && ctx.state === 'running') ctx.suspend().catch(() => {});
    }, 100);
  },

  level() {
    const n = this.nodes;
    if (!n) return 0;
    const buf = new Float32Array(n.analyser.fftSize);
    n.analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const v of buf) sum += v * v;
    return Math.sqrt(sum / buf.length);
  },

  startTitle() {
    let flash = true;
    document.title = RING_TITLE;
    this.titleTimer = setInterval(() => {
      flash = !flash;
      document.title = flash ? RING_TITLE : NORMAL_TITLE;
    }, TITLE_FLASH_MS);
  },

  stopTitle() {
    clearInterval(this.titleTimer);
    this.titleTimer = null;
    document.title = NORMAL_TITLE;
  },

  vibrate(on) {
    if (typeof navigator.vibrate !== 'function') return;
    try {
      // Once per ring cycle, in step with the tone.
      clearInterval(this.vibrateTimer);
      this.vibrateTimer = null;
      if (!on) { navigator.vibrate(0); return; }
      navigator.vibrate(VIBRATE_PATTERN);
      this.vibrateTimer = setInterval(() => navigator.vibrate(VIBRATE_PATTERN), RING_CYCLE_S * 1000);
    } catch { /* not allowed */ }
  },

  // Only when the person has already allowed notifications for this site and
  // the page is in the background: the phone never asks for the permission.
  notify(from) {
    if (typeof Notification !== 'function' || Notification.permission !== 'granted') return;
    if (document.visibilityState === 'visible') return;
    try {
      const n = new Notification('Incoming call', {
        body: from, tag: 'gateway-incoming', requireInteraction: true, icon: 'favicon.svg',
      });
      n.addEventListener('click', () => { window.focus(); n.close(); });
      this.notification = n;
    } catch { /* e.g. Android Chrome needs a service worker */ }
  },
};

// ---------------------------------------------------------------------------
// Sign in / sign out

function loadSession() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const account = sessionStorage.getItem(ACCOUNT_KEY);
  const expiresAt = Number(sessionStorage.getItem(EXPIRES_KEY) || 0);
  if (!token || !account) return null;
  if (expiresAt && Date.now() >= expiresAt) {
    clearSession();
    return null;
  }
  return { token, account, expiresAt };
}

function saveSession(s) {
  sessionStorage.setItem(TOKEN_KEY, s.token);
  sessionStorage.setItem(ACCOUNT_KEY, s.account);
  sessionStorage.setItem(EXPIRES_KEY, String(s.expiresAt || 0));
}

function clearSession() {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(ACCOUNT_KEY);
  sessionStorage.removeItem(EXPIRES_KEY);
}

function loginError(text) {
  setText(ui.loginError, text);
  show(ui.loginError, Boolean(text));
}

async function onLoginSubmit(event) {
  event.preventDefault();
  const account = ui.loginAccount.value.trim();
  const password = ui.loginPassword.value;
  if (!account || !password) {
    loginError('Enter your account name and password.');
    (account ? ui.loginPassword : ui.loginAccount).focus();
    return;
  }
  loginError('');
  ui.loginButton.disabled = true;
  setText(ui.loginButton, 'Signing in…');
  try {
    let res;
    try {
      res = await fetch('/api/login', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ account, password }),
        cache: 'no-store',
        credentials: 'same-origin',
      });
    } catch (err) {
      log('login fetch failed', err);
      loginError('Cannot reach the gateway server. Check your network connection and try again.');
      return;
    }
    if (res.status === 401 || res.status === 403) {
      loginError('Wrong account name or password.');
      ui.loginPassword.select();
      ui.loginPassword.focus();
      return;
    }
    if (res.status === 429) {
      loginError('Too many sign-in attempts. Wait a minute and try again.');
      return;
    }
    if (!res.ok) {
      loginError(`The gateway could not sign you in (HTTP ${res.status}). Try again later.`);
      return;
    }
    let body;
    try {
      body = await res.json();
    } catch {
      loginError('The gateway sent an unreadable answer. Try again later.');
      return;
    }
    if (!body || typeof body.token !== 'string' || !body.token) {
      loginError('The gateway sent an unreadable answer. Try again later.');
      return;
    }
    const ttl = Number(body.expires_in);
    session = {
      token: body.token,
      account,
      expiresAt: Number.isFinite(ttl) && ttl > 0 ? Date.now() + ttl * 1000 : 0,
    };
    saveSession(session);
    ui.loginPassword.value = '';
    enterPhone();
  } finally {
    ui.loginButton.disabled = false;
    setText(ui.loginButton, 'Sign in');
  }
}

function enterPhone() {
  show(ui.loginView, false);
  show(ui.phoneView, true);
  show(ui.sessionBar, true);
  setText(ui.accountName, session.account);
  setCallState('idle', 'Ready');
  showMessage('');
  conn.wanted = true;
  conn.attempts = 0;
  connect();
  ui.number.focus();
}

function signOut(reason) {
  if (call) hangup('Signed out');
  conn.wanted = false;
  clearTimeout(conn.timer);
  if (conn.ws) {
    const ws = conn.ws;
    conn.ws = null;
    ws.close(1000, 'sign out');
  }
  session = null;
  clearSession();
  setConnStatus('closed', 'Offline');
  show(ui.phoneView, false);
  show(ui.sessionBar, false);
  show(ui.loginView, true);
  loginError(reason || '');
  ui.loginAccount.focus();
}

// ---------------------------------------------------------------------------
// Signaling socket

function setConnStatus(state, text) {
  ui.connStatus.dataset.state = state;
  setText(ui.connStatus, text);
}

function wsUrl() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/ws?token=${encodeURIComponent(session.token)}`;
}

function connect() {
  clearTimeout(conn.timer);
  if (!conn.wanted || !session) return;
  if (session.expiresAt && Date.now() >= session.expiresAt) {
    signOut('Your session has expired. Sign in again.');
    return;
  }
  setConnStatus('connecting', conn.attempts ? 'Reconnecting…' : 'Connecting…');
  let ws;
  try {
    ws = new WebSocket(wsUrl());
  } catch (err) {
    log('websocket failed', err);
    scheduleReconnect();
    return;
  }
  conn.ws = ws;
  let opened = false;
  ws.addEventListener('open', () => {
    if (conn.ws !== ws) return;
    opened = true;
    conn.attempts = 0;
    setConnStatus('open', 'Connected');
    if (ui.message.dataset.kind === 'conn') showMessage('');
  });
  ws.addEventListener('message', (event) => {
    if (conn.ws !== ws) return;
    onSignal(event.data);
  });
  ws.addEventListener('close', (event) => {
    if (conn.ws !== ws) return;
    conn.ws = null;
    log('websocket closed', event.code, event.reason);
    if (call) endCall('Connection to the gateway was lost', null);
    if (!opened && conn.attempts >= 2) {
      showMessage('Cannot connect to the gateway. Retrying…', 'conn');
    }
    scheduleReconnect();
    if (!opened) probeToken();
  });
  // 'error' is always followed by 'close'; nothing to do here.
}

// A browser does not say why a WebSocket handshake failed. The gateway answers
// 401 to /ws with a missing, expired or forged token, so a plain GET tells
// whether retrying can ever work; if not, ask the person to sign in again.
async function probeToken() {
  if (!session) return;
  const token = session.token;
  try {
    const res = await fetch(`/ws?token=${encodeURIComponent(token)}`, { cache: 'no-store', credentials: 'same-origin' });
    if (res.status === 401 && session && session.token === token) {
      signOut('Your session has expired or is no longer valid. Sign in again.');
    }
  } catch {
    // Server unreachable: keep retrying.
  }
}

function scheduleReconnect() {
  if (!conn.wanted) {
    setConnStatus('closed', 'Offline');
    return;
  }
  const base = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * 2 ** conn.attempts);
  const delay = Math.round(base * (0.75 + Math.random() * 0.5));
  conn.attempts += 1;
  setConnStatus('reconnecting', `Offline, retrying in ${Math.ceil(delay / 1000)} s`);
  conn.timer = setTimeout(connect, delay);
}

function send(msg) {
  if (!conn.ws || conn.ws.readyState !== WebSocket.OPEN) return false;
  conn.ws.send(JSON.stringify(msg));
  return true;
}

function onSignal(data) {
  let msg;
  try {
    msg = JSON.parse(data);
  } catch {
    log('unreadable message', data);
    return;
  }
  if (!msg || typeof msg.type !== 'string') return;
  log('<-', msg.type, msg.id || '', msg.code || '');

  if (msg.type === 'incoming') { onIncoming(msg); return; }

  if (msg.type === 'error') {
    const text = `Gateway error${msg.code !== undefined ? ` ${msg.code}` : ''}: ${msg.message || 'request refused'}`;
    if (call && msg.id === call.id && call.holdPending !== undefined) {
      // The hold or resume was refused: the call goes on as it was.
      call.holdPending = undefined;
      showHold();
    }
    if (call && msg.id === call.id && call.direction === 'in' && call.state === 'dialing'
        && /elsewhere/i.test(msg.message || '')) {
      // Answer lost the race against another session.
      endCall(msg.message, msg.code ?? null, true, 'Answered on another device');
    } else if (call && msg.id === call.id && (call.state === 'dialing' || call.state === 'ringing')) {
      endCall(msg.message || 'Call refused', msg.code ?? null);
      showMessage(text);
    } else {
      showMessage(text);
    }
    return;
  }

  if (msg.type === 'hangup' && !call && msg.id && msg.id === lastEndedId) {
    // The gateway confirms a call we already ended: show its code and reason
    // (unless what we showed says it better, e.g. "Declined").
    if (!lastEndedText) setCallState('ended', endedText(msg.reason, msg.code));
    lastEndedId = null;
    lastEndedText = null;
    return;
  }

  if (!call || msg.id !== call.id) {
    log('message for another call ignored', msg.type, msg.id);
    return;
  }

  switch (msg.type) {
    case 'progress': onProgress(msg); break;
    case 'answer': onAnswer(msg); break;
    case 'offer': onOffer(msg); break;
    case 'connected': onConnected(msg); break;
    case 'hangup': onHangup(msg); break;
    case 'dtmf': onDtmf(msg); break;
    case 'held': onHold(msg, true); break;
    case 'resumed': onHold(msg, false); break;
    case 'transferred': onTransferred(msg); break;
    default: log('unknown message type', msg.type);
  }
}

// ---------------------------------------------------------------------------
// Call state and display

const STATE_TEXT = {
  idle: 'Ready',
  dialing: 'Calling…',
  ringing: 'Ringing…',
  incoming: 'Incoming call',
  connected: 'Connected',
  ended: 'Call ended',
};

function setCallState(state, text) {
  ui.callStatus.dataset.state = state;
  setText(ui.callStatusText, text || STATE_TEXT[state] || state);
  if (call) call.state = state;

  const active = Boolean(call) && state !== 'ended' && state !== 'idle';
  ui.callButton.disabled = active;
  ui.hangupButton.disabled = !active;
  if (state !== 'connected') ui.holdButton.disabled = true;
  if (state !== 'connected') ui.transferButton.disabled = true;
  if (state !== 'ringing' && state !== 'dialing') ringback.set('off');
  ui.number.readOnly = active;
  show(ui.incomingPanel, state === 'incoming');
  if (state !== 'incoming') ringer.stop();
  show(ui.callTimer, state === 'connected');
  if (state !== 'connected') stopTimer();
  if (state === 'dialing' || state === 'incoming') showTones('', '');
  if (state === 'dialing' || state === 'incoming') showTransfer('', undefined);
  if (state === 'idle' || state === 'dialing' || state === 'incoming') show(ui.security, false);
}

function endedText(reason, code) {
  let text = 'Call ended';
  if (reason) text += `: ${reason}`;
  if (code !== null && code !== undefined && code !== '') text += ` (${code})`;
  return text;
}

function startTimer() {
  stopTimer();
  call.connectedAt = Date.now();
  setText(ui.callTimer, '00:00');
  call.timer = setInterval(() => {
    if (call && call.connectedAt) setText(ui.callTimer, formatDuration(Date.now() - call.connectedAt));
  }, 1000);
}

function stopTimer() {
  if (call && call.timer) {
    clearInterval(call.timer);
    call.timer = null;
  }
}

function isEncrypted(leg) {
  return typeof leg === 'string' && /srtp/i.test(leg) && !/^\s*(plain|rtp\b|none|unencrypted)/i.test(leg);
}

function showSecurity(security) {
  const browser = security && typeof security.browser === 'string' ? security.browser : 'unknown';
  const trunk = security && typeof security.trunk === 'string' ? security.trunk : 'unknown';
  setText(ui.securityBrowser, `Browser: ${browser}`);
  setText(ui.securityTrunk, `Trunk: ${trunk}`);
  let level;
  let summary;
  if (security && security.private === true) {
    // A private call: the browser's DTLS peer is the far end; the gateway
    // only relays the encrypted stream (issue 11, PortaSwitch forced_relay).
    level = 'private';
    summary = 'End-to-end, not decrypted by the gateway';
  } else if (isEncrypted(browser) && isEncrypted(trunk)) {
    level = 'secure';
    summary = 'Encrypted on both legs';
  } else if (isEncrypted(browser) && trunk !== 'unknown') {
    level = 'insecure';
    summary = 'Trunk leg is not encrypted';
  } else if (browser === 'unknown' && trunk === 'unknown') {
    level = 'unknown';
    summary = 'Security unknown';
  } else {
    level = 'insecure';
    summary = 'Not encrypted on every leg';
  }
  ui.security.dataset.level = level;
  setText(ui.securitySummary, summary);
  ui.security.setAttribute('aria-label', `${summary}. Browser: ${browser}. Trunk: ${trunk}.`);
  show(ui.security, true);
}

// ---------------------------------------------------------------------------
// Media

function micErrorText(err) {
  const name = err && err.name;
  switch (name) {
    case 'NotAllowedError':
    case 'PermissionDeniedError':
      return 'Microphone access was denied. Allow microphone access for this site in your browser settings and try again.';
    case 'NotFoundError':
    case 'DevicesNotFoundError':
      return 'No microphone found. Connect a microphone and try again.';
    case 'NotReadableError':
    case 'TrackStartError':
      return 'The microphone could not be started. It may be in use by another application.';
    case 'OverconstrainedError':
      return 'No microphone matches the requested settings.';
    case 'AbortError':
      return 'Microphone access was interrupted. Try again.';
    case 'SecurityError':
      return 'Microphone access is blocked on this page (it must be opened over HTTPS).';
    case 'TypeError':
      return 'This browser cannot use the microphone here (the page must be opened over HTTPS).';
    default:
      return `Could not use the microphone${err && err.message ? `: ${err.message}` : '.'}`;
  }
}

async function getMicrophone() {
  if (!navigator.mediaDevices || typeof navigator.mediaDevices.getUserMedia !== 'function') {
    const err = new Error('getUserMedia unavailable');
    err.name = 'TypeError';
    throw err;
  }
  return navigator.mediaDevices.getUserMedia({ audio: true, video: false });
}

function newPeerConnection(c) {
  // No ICE servers: the gateway is ICE-lite and puts its candidate in its SDP.
  const pc = new RTCPeerConnection({ iceServers: [], bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' });
  pc.addEventListener('track', (event) => {
    const stream = event.streams && event.streams[0] ? event.streams[0] : new MediaStream([event.track]);
    ui.remoteAudio.srcObject = stream;
    const p = ui.remoteAudio.play();
    if (p && typeof p.catch === 'function') p.catch((err) => log('audio play refused', err && err.name));
  });
  pc.addEventListener('connectionstatechange', () => {
    log('pc connection state', pc.connectionState);
    if (call !== c) return;
    if (pc.connectionState === 'failed') {
      send({ type: 'hangup', id: c.id });
      endCall('Media connection failed (ICE/DTLS)', null);
    }
  });
  return pc;
}

function waitIceGathering(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', onChange);
      pc.removeEventListener('icecandidate', onCandidate);
      resolve();
    };
    const onChange = () => { if (pc.iceGatheringState === 'complete') done(); };
    const onCandidate = (e) => { if (!e.candidate) done(); };
    const timer = setTimeout(done, ICE_GATHER_MAX_MS);
    pc.addEventListener('icegatheringstatechange', onChange);
    pc.addEventListener('icecandidate', onCandidate);
  });
}

function releaseMedia(c) {
  if (c.stream) {
    for (const t of c.stream.getTracks()) t.stop();
    c.stream = null;
  }
  if (c.pc) {
    try { c.pc.close(); } catch { /* already closed */ }
  }
  ui.remoteAudio.pause();
  ui.remoteAudio.srcObject = null;
}

// ---------------------------------------------------------------------------
// Outgoing calls

function normalizeNumber(raw) {
  return raw.replace(/[\s()]/g, '');
}

async function startCall() {
  if (call && call.state !== 'ended') return;
  showMessage('');
  const to = normalizeNumber(ui.number.value);
  if (!to) {
    showMessage('Enter a number to call.');
    ui.number.focus();
    return;
  }
  if (!NUMBER_RE.test(to)) {
    showMessage('That number contains characters that cannot be dialled.');
    ui.number.focus();
    return;
  }
  if (!conn.ws || conn.ws.readyState !== WebSocket.OPEN) {
    showMessage('Not connected to the gateway. Wait until the status shows Connected.');
    return;
  }

  const c = { id: uuid(), direction: 'out', pc: null, stream: null, state: 'dialing', to };
  call = c;
  lastEndedId = null;
  setCallState('dialing', `Calling ${to}…`);

  try {
    c.stream = await getMicrophone();
  } catch (err) {
    log('getUserMedia failed', err);
    if (call === c) {
      endCall('Microphone unavailable', null);
      showMessage(micErrorText(err));
    }
    return;
  }
  if (call !== c) { releaseMedia(c); return; }

  try {
    c.pc = newPeerConnection(c);
    for (const track of c.stream.getAudioTracks()) c.pc.addTrack(track, c.stream);
    const offer = await c.pc.createOffer();
    await c.pc.setLocalDescription(offer);
    await waitIceGathering(c.pc);
  } catch (err) {
    log('offer failed', err);
    if (call === c) {
      endCall('Could not prepare the call', null);
      showMessage(`Could not prepare the call: ${err && err.message ? err.message : err}`);
    }
    return;
  }
  if (call !== c) { releaseMedia(c); return; }

  const sent = send({ type: 'call', id: c.id, to, sdp: c.pc.localDescription.sdp });
  if (!sent) {
    endCall('Not connected to the gateway', null);
    showMessage('Not connected to the gateway. Try again when the status shows Connected.');
  }
}

function onProgress(msg) {
  const code = Number(msg.code);
  if (code === 183) call.earlyMedia = true;
  if (code === 180 || code === 183) {
    setCallState('ringing', call.earlyMedia ? 'Ringing… (early media)' : 'Ringing…');
    // 183 brings the network's ringback (or announcement) as early media;
    // a bare 180 has none, so the page plays its own.
    ringback.set(call.earlyMedia ? 'network' : 'local');
  }
  // 100 Trying: stay in `dialing`.
}

// ---------------------------------------------------------------------------
// Ringback while an outgoing call rings: a 180 without early media gets the
// page's own tone (WebAudio: 440 + 480 Hz, 2 s on, 4 s off, as in North
// America); with a 183 the trunk's early media plays through the call's
// audio element instead. The call button's click started the context.

const ringback = {
  mode: 'off',
  ctx: null,
  gain: null,
  oscillators: [],
  cadence: null,

  set(mode) {
    if (mode === this.mode) return;
    this.mode = mode;
    document.body.dataset.ringback = mode;
    if (mode === 'local') this.start();
    else this.stop();
  },

  start() {
    const AC = window.AudioContext || window.webkitAudioContext;
    if (!AC) return;
    try {
      if (!this.ctx) this.ctx = new AC();
      if (this.ctx.state === 'suspended') this.ctx.resume().catch(() => {});
      this.gain = this.ctx.createGain();
      this.gain.gain.value = 0;
      this.gain.connect(this.ctx.destination);
      this.oscillators = [440, 480].map((f) => {
        const o = this.ctx.createOscillator();
        o.frequency.value = f;
        o.connect(this.gain);
        o.start();
        return o;
      });
      let on = false;
      const tick = () => {
        on = !on;
        if (this.gain) this.gain.gain.value = on ? 0.1 : 0;
        this.cadence = setTimeout(tick, on ? 2000 : 4000);
      };
      tick();
    } catch (err) {
      log('ringback unavailable', err);
    }
  },

  stop() {
    clearTimeout(this.cadence);
    this.cadence = null;
    for (const o of this.oscillators) {
      try { o.stop(); o.disconnect(); } catch { /* already stopped */ }
    }
    this.oscillators = [];
    if (this.gain) { try { this.gain.disconnect(); } catch { /* gone */ } }
    this.gain = null;
  },
};

// ---------------------------------------------------------------------------
// Blind transfer (PROTOCOL.md `transfer`, answered by `transferred`): the
// Transfer button asks for the number; `transferred` reports the outcome,
// also of a transfer the other party (the trunk's REFER) carries out.

function showTransfer(state, code) {
  ui.callStatus.dataset.transfer = state;
  ui.callStatus.dataset.transferCode = code === undefined ? '' : String(code);
  const c = call;
  ui.transferButton.disabled = !c || c.state !== 'connected' || state === 'pending';
}

function startTransfer() {
  const c = call;
  if (!c || c.state !== 'connected' || c.transferPending) return;
  const answer = window.prompt('Transfer the call to which number?', '');
  if (answer === null) return;
  const to = answer.trim();
  if (!NUMBER_RE.test(to)) {
    showMessage(`"${to}" is not a number to transfer to.`);
    return;
  }
  if (!send({ type: 'transfer', id: c.id, to })) {
    showMessage('Not connected to the gateway: the call could not be transferred.');
    return;
  }
  c.transferPending = to;
  setText(ui.callStatusText, `Transferring to ${to}…`);
  showTransfer('pending');
}

function onTransferred(msg) {
  const c = call;
  const code = Number(msg.code);
  const to = String(msg.to || '');
  const byTrunk = msg.by === 'trunk';
  if (!byTrunk) c.transferPending = undefined;
  if (code < 200) {
    setText(ui.callStatusText, `The other party transfers the call to ${to}…`);
    showTransfer('pending', code);
  } else if (code < 300) {
    showTransfer('done', code);
    // Ours ends our part (a `hangup` follows); theirs goes on with `to`.
    setText(ui.callStatusText, byTrunk ? `Connected (transferred to ${to})` : `Transferred to ${to}`);
  } else {
    showTransfer('failed', code);
    showMessage(`The transfer to ${to} failed (${code}); the call goes on.`);
    setText(ui.callStatusText, 'Connected');
  }
}

async function onAnswer(msg) {
  const c = call;
  if (!c.pc || typeof msg.sdp !== 'string') return;
  if (c.pc.signalingState !== 'have-local-offer') {
    log('answer ignored in signaling state', c.pc.signalingState);
    return;
  }
  try {
    await c.pc.setRemoteDescription({ type: 'answer', sdp: msg.sdp });
  } catch (err) {
    log('setRemoteDescription failed', err);
    if (call === c) {
      send({ type: 'hangup', id: c.id });
      endCall('The gateway answer could not be used', null);
      showMessage(`The gateway's answer was rejected by the browser: ${err && err.message ? err.message : err}`);
    }
  }
}

// The gateway's re-offer in a connected call: the trunk changed the codec.
// Same ICE and DTLS, only the codec differs; our answer tells the gateway
// which one we now send. No answer (e.g. a failure here) makes the gateway
// refuse the trunk's change after a few seconds; the call goes on.
async function onOffer(msg) {
  const c = call;
  if (!c.pc || typeof msg.sdp !== 'string') return;
  try {
    await c.pc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
    const answer = await c.pc.createAnswer();
    await c.pc.setLocalDescription(answer);
    if (call === c) send({ type: 'answer', id: c.id, sdp: c.pc.localDescription.sdp });
  } catch (err) {
    log('re-offer not taken', err);
  }
}

function onConnected(msg) {
  setCallState('connected', 'Connected');
  startTimer();
  showSecurity(msg.security);
  showHold();
  showTransfer('', undefined);
}

// ---------------------------------------------------------------------------
// Hold and resume (PROTOCOL.md: `hold` / `resume`, answered by `held` /
// `resumed` with `by`: "browser" for ours, "trunk" for the other party's)

/** Who holds the call now: 'none' | 'pending' | 'browser' | 'trunk' | 'both'. */
function holdState(c) {
  if (c.holdPending !== undefined) return 'pending';
  if (c.heldByUs && c.heldByThem) return 'both';
  if (c.heldByUs) return 'browser';
  if (c.heldByThem) return 'trunk';
  return 'none';
}

/** The Hold button and the status line follow the call's hold state. */
function showHold() {
  const c = call;
  const connected = Boolean(c) && c.state === 'connected';
  const state = c ? holdState(c) : 'none';
  ui.holdButton.disabled = !connected || state === 'pending';
  ui.holdButton.dataset.state = state;
  const ours = Boolean(c && c.heldByUs);
  ui.holdButton.setAttribute('aria-pressed', String(ours));
  setText(ui.holdButton, ours ? 'Resume' : 'Hold');
  ui.callStatus.dataset.hold = connected && c.heldByUs ? 'browser' : connected && c.heldByThem ? 'trunk' : '';
  if (!connected) return;
  let text = 'Connected';
  if (state === 'pending') text = c.holdPending ? 'Putting on hold…' : 'Resuming…';
  else if (c.heldByUs) text = 'On hold';
  else if (c.heldByThem) text = 'On hold by the other party';
  setText(ui.callStatusText, text);
}

function toggleHold() {
  const c = call;
  if (!c || c.state !== 'connected' || c.holdPending !== undefined) return;
  const hold = !c.heldByUs;
  if (!send({ type: hold ? 'hold' : 'resume', id: c.id })) {
    showMessage('Not connected to the gateway: the call could not be put on hold or resumed.');
    return;
  }
  c.holdPending = hold;
  showHold();
}

function onHold(msg, held) {
  const c = call;
  if (msg.by === 'browser') {
    c.heldByUs = held;
    c.holdPending = undefined;
  } else {
    c.heldByThem = held;
  }
  showHold();
}

// ---------------------------------------------------------------------------
// Incoming calls

/** What to show for the caller: the number or user part, or words when withheld. */
function callerLabel(from) {
  if (typeof from !== 'string' || !from.trim()) return 'an unknown caller';
  let f = from.trim();
  if (/^\*+$/.test(f)) return 'a withheld number';
  const uri = /^(?:"?([^"<]*)"?\s*)?<?\s*(?:sips?|tel):([^@;>]+)/i.exec(f);
  if (uri) f = (uri[1] && uri[1].trim()) || uri[2];
  return f.length > 64 ? `${f.slice(0, 63)}…` : f;
}

const VERSTAT_TEXT = {
  'tn-validation-passed': ['Caller ID verified', 'passed'],
  'tn-validation-failed': ['Caller ID failed verification', 'failed'],
  'no-tn-validation': ['Caller ID not verified', 'none'],
};

function onIncoming(msg) {
  if (!msg.id || typeof msg.sdp !== 'string') return;
  if (call && call.state !== 'ended') {
    // Busy with another call: decline (486 toward the trunk).
    send({ type: 'reject', id: msg.id });
    return;
  }
  showMessage('');
  const from = callerLabel(msg.from);
  call = { id: msg.id, direction: 'in', pc: null, stream: null, state: 'incoming', offerSdp: msg.sdp, from };
  lastEndedId = null;
  lastEndedText = null;
  setText(ui.incomingFrom, from);
  ui.incomingFrom.title = typeof msg.from === 'string' ? msg.from : '';
  const verstat = typeof msg.verstat === 'string' ? msg.verstat.trim() : '';
  if (verstat) {
    const [words, level] = VERSTAT_TEXT[verstat.toLowerCase()] || [`Caller ID: ${verstat}`, 'none'];
    setText(ui.incomingVerstat, words);
    ui.incomingVerstat.dataset.level = level;
  } else {
    setText(ui.incomingVerstat, '');
  }
  show(ui.incomingVerstat, Boolean(verstat));
  setCallState('incoming', `Incoming call from ${from}`);
  ringer.start(from);
  try { ui.incomingPanel.scrollIntoView({ block: 'nearest' }); } catch { /* old browser */ }
  ui.acceptButton.focus();
}

async function acceptCall() {
  const c = call;
  if (!c || c.direction !== 'in' || c.state !== 'incoming') return;
  setCallState('dialing', 'Answering…');
  try {
    c.stream = await getMicrophone();
  } catch (err) {
    log('getUserMedia failed', err);
    if (call === c) {
      send({ type: 'reject', id: c.id });
      endCall('Microphone unavailable', null, false, 'Could not answer: the microphone is unavailable');
      showMessage(micErrorText(err));
    }
    return;
  }
  if (call !== c) { releaseMedia(c); return; }
  try {
    c.pc = newPeerConnection(c);
    await c.pc.setRemoteDescription({ type: 'offer', sdp: c.offerSdp });
    for (const track of c.stream.getAudioTracks()) c.pc.addTrack(track, c.stream);
    const answer = await c.pc.createAnswer();
    await c.pc.setLocalDescription(answer);
    await waitIceGathering(c.pc);
  } catch (err) {
    log('answer failed', err);
    if (call === c) {
      send({ type: 'reject', id: c.id });
      endCall('Could not answer the call', null, false, 'Could not answer the call');
      showMessage(`Could not answer the call: ${err && err.message ? err.message : err}`);
    }
    return;
  }
  if (call !== c) { releaseMedia(c); return; }
  if (!send({ type: 'accept', id: c.id, sdp: c.pc.localDescription.sdp })) {
    endCall('Not connected to the gateway', null);
    showMessage('Not connected to the gateway: the call could not be answered.');
    return;
  }
  setCallState('dialing', 'Connecting…');
  // The gateway follows with `connected` (and `security`).
}

function rejectCall() {
  if (!call || call.state !== 'incoming') return;
  send({ type: 'reject', id: call.id });
  endCall('Declined', null, false, 'Declined');
}

/** Words for a `hangup` of an incoming call that was never connected. */
function unansweredText(c, msg) {
  const code = Number(msg.code);
  const reason = typeof msg.reason === 'string' ? msg.reason.toLowerCase() : '';
  if (/elsewhere|another device|other device/.test(reason) || (code === 200 && !reason)) {
    return 'Answered on another device';
  }
  if (code === 487 || /cancel/.test(reason) || /hung up|hangup|bye/.test(reason)) return 'The caller hung up';
  if (code === 408 || code === 480 || /no answer|timeout|timed out/.test(reason)) return `Missed call from ${c.from}`;
  if (code === 486 || code === 603 || /declin|busy/.test(reason)) return 'Declined';
  return null;
}

function onHangup(msg) {
  const c = call;
  if (c.direction === 'in' && c.state !== 'connected') {
    const words = unansweredText(c, msg);
    if (words) {
      endCall(msg.reason || 'Call ended', msg.code ?? null, true, words);
      return;
    }
  }
  endCall(msg.reason || 'Call ended', msg.code ?? null, true);
}

// ---------------------------------------------------------------------------
// Ending calls

/**
 * Ends the current call locally: releases microphone and peer connection,
 * stops the ring. `text` replaces the usual "Call ended: reason (code)".
 */
function endCall(reason, code, fromGateway = false, text = null) {
  const c = call;
  if (!c) return;
  stopTimer();
  ringer.stop();
  releaseMedia(c);
  lastEndedId = fromGateway ? null : c.id;
  lastEndedText = fromGateway ? null : text;
  setCallState('ended', text || endedText(reason, code));
  call = null;
  ui.callButton.disabled = false;
  ui.hangupButton.disabled = true;
  ui.holdButton.disabled = true;
  ui.transferButton.disabled = true;
  ui.holdButton.setAttribute('aria-pressed', 'false');
  setText(ui.holdButton, 'Hold');
  ui.holdButton.dataset.state = 'none';
  ui.callStatus.dataset.hold = '';
  ui.number.readOnly = false;
  show(ui.incomingPanel, false);
}

function hangup(reason = 'You hung up') {
  if (!call) return;
  if (call.state === 'incoming') { rejectCall(); return; }
  send({ type: 'hangup', id: call.id });
  endCall(reason, null);
}

// ---------------------------------------------------------------------------
// Dial pad

function pressDigit(digit) {
  if (call && call.state === 'connected') {
    if (DTMF_RE.test(digit)) {
      send({ type: 'dtmf', id: call.id, digits: digit });
      showTones(ui.dtmfSent.textContent + digit, null);
    }
    return;
  }
  if (ui.number.readOnly) return;
  ui.number.value += digit;
}

/** The tones of this call so far (null keeps a side as it is; two empty
 * strings hide the line). The last 32 of each are shown. */
function showTones(sent, received) {
  if (sent !== null) setText(ui.dtmfSent, sent.slice(-32));
  if (received !== null) setText(ui.dtmfReceived, received.slice(-32));
  show(ui.dtmfSent.parentElement, Boolean(ui.dtmfSent.textContent));
  show(ui.dtmfReceived.parentElement, Boolean(ui.dtmfReceived.textContent));
  show(ui.dtmf, Boolean(ui.dtmfSent.textContent || ui.dtmfReceived.textContent));
}

/** The far end sent a tone (RFC 4733 or SIP INFO). */
function onDtmf(msg) {
  if (typeof msg.digit !== 'string' || !DTMF_RE.test(msg.digit)) return;
  showTones(null, ui.dtmfReceived.textContent + msg.digit);
}

// ---------------------------------------------------------------------------
// Wiring

ui.loginForm.addEventListener('submit', onLoginSubmit);
ui.signoutButton.addEventListener('click', () => signOut());
ui.dialForm.addEventListener('submit', (event) => {
  event.preventDefault();
  startCall();
});
ui.hangupButton.addEventListener('click', () => hangup());
ui.holdButton.addEventListener('click', () => toggleHold());
ui.transferButton.addEventListener('click', () => startTransfer());
ui.acceptButton.addEventListener('click', () => acceptCall());
ui.rejectButton.addEventListener('click', () => rejectCall());
ui.backspaceButton.addEventListener('click', () => {
  if (!ui.number.readOnly) ui.number.value = ui.number.value.slice(0, -1);
  ui.number.focus();
});
ui.dialpad.addEventListener('click', (event) => {
  const button = event.target.closest('button[data-digit]');
  if (button) pressDigit(button.dataset.digit);
});
ui.number.addEventListener('keydown', (event) => {
  // During a call, keys typed in the number field send tones instead.
  if (call && call.state === 'connected' && event.key.length === 1) {
    if (DTMF_RE.test(event.key)) pressDigit(event.key);
    event.preventDefault();
  }
});
document.addEventListener('keydown', (event) => {
  if (event.key === 'Escape' && call && call.state !== 'ended') hangup();
});
window.addEventListener('pagehide', () => {
  ringer.stop();
  if (call) send({ type: call.state === 'incoming' ? 'reject' : 'hangup', id: call.id });
});
// The ringer's AudioContext may only start after a click or key press.
for (const type of ['pointerdown', 'keydown', 'touchend']) {
  window.addEventListener(type, () => ringer.onGesture(), { capture: true, passive: true });
}
document.body.dataset.ringing = 'false';
document.body.dataset.ringAudio = 'off';
document.body.dataset.ringback = 'off';

session = loadSession();
if (session) {
  enterPhone();
} else {
  show(ui.loginView, true);
  ui.loginAccount.focus();
}
