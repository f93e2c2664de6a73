// Web client of webrtc-sip-gateway.
//
// Plain ES module, no build step. Served by the gateway under a strict CSP
// (`default-src 'self'; connect-src 'self' wss:`): no inline code or styles,
// no eval. Signaling follows PROTOCOL.md section 3.
//
// Test hooks: `window.gatewayClient.pc` is the current RTCPeerConnection
// (or null), `window.gatewayClient.state` the call state, also shown as
// `data-state` on #call-status: idle | dialing | ringing | incoming |
// connected | ended.

const TOKEN_KEY = 'gateway.token';
const ACCOUNT_KEY = 'gateway.account';
const EXPIRES_KEY = 'gateway.expires';

const ICE_GATHER_MAX_MS = 1000;
const RECONNECT_MIN_MS = 1000;
const RECONNECT_MAX_MS = 30000;
const NUMBER_RE = /^\+?[0-9A-Za-z*#._-]{1,64}$/;
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
  incomingPanel: $('incoming-panel'),
  incomingText: $('incoming-text'),
  acceptButton: $('accept-button'),
  rejectButton: $('reject-button'),
  dialForm: $('dial-form'),
  number: $('number'),
  dialpad: $('dialpad'),
  callButton: $('call-button'),
  hangupButton: $('hangup-button'),
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

window.gatewayClient = {
  get pc() { return call ? call.pc : null; },
  get state() { return ui.callStatus.dataset.state; },
  get callId() { return call ? call.id : null; },
  get connection() { return ui.connStatus.dataset.state; },
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
    if (call && msg.id === call.id && (call.state === 'dialing' || call.state === 'ringing')) {
      endCall(msg.message || 'Call refused', msg.code ?? null);
      showMessage(text);
    } else {
      showMessage(text);
    }
    return;
  }

  if (msg.type === 'hangup' && !call && msg.id && msg.id === lastEndedId) {
    // The gateway confirms a call we already ended: show its code and reason.
    setCallState('ended', endedText(msg.reason, msg.code));
    lastEndedId = null;
    return;
  }

  if (!call || msg.id !== call.id) {
    log('message for another call ignored', msg.type, msg.id);
    return;
  }

  switch (msg.type) {
    case 'progress': onProgress(msg); break;
    case 'answer': onAnswer(msg); break;
    case 'connected': onConnected(msg); break;
    case 'hangup': endCall(msg.reason || 'Call ended', msg.code ?? null, true); break;
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
  ui.number.readOnly = active;
  show(ui.incomingPanel, state === 'incoming');
  show(ui.callTimer, state === 'connected');
  if (state !== 'connected') stopTimer();
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
  if (isEncrypted(browser) && isEncrypted(trunk)) {
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
  if (code === 180 || code === 183) {
    setCallState('ringing', code === 183 ? 'Ringing… (early media)' : 'Ringing…');
  }
  // 100 Trying: stay in `dialing`.
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

function onConnected(msg) {
  setCallState('connected', 'Connected');
  startTimer();
  showSecurity(msg.security);
}

// ---------------------------------------------------------------------------
// Incoming calls

function onIncoming(msg) {
  if (!msg.id || typeof msg.sdp !== 'string') return;
  if (call && call.state !== 'ended') {
    // Busy with another call: decline (486 toward the trunk).
    send({ type: 'reject', id: msg.id });
    return;
  }
  showMessage('');
  call = { id: msg.id, direction: 'in', pc: null, stream: null, state: 'incoming', offerSdp: msg.sdp };
  lastEndedId = null;
  const from = typeof msg.from === 'string' && msg.from ? msg.from : 'unknown caller';
  let text = `Incoming call from ${from}`;
  if (msg.verstat) text += ` (${msg.verstat})`;
  setText(ui.incomingText, text);
  setCallState('incoming', text);
  ui.acceptButton.focus();
}

async function acceptCall() {
  const c = call;
  if (!c || c.direction !== 'in' || c.state !== 'incoming') return;
  setCallState('dialing', 'Answering…');
  try {
    c.stream = await getMicrophone();
  } catch (err) {
    if (call === c) {
      send({ type: 'reject', id: c.id });
      endCall('Microphone unavailable', null);
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
    if (call === c) {
      send({ type: 'reject', id: c.id });
      endCall('Could not answer the call', null);
      showMessage(`Could not answer the call: ${err && err.message ? err.message : err}`);
    }
    return;
  }
  if (call !== c) { releaseMedia(c); return; }
  send({ type: 'accept', id: c.id, sdp: c.pc.localDescription.sdp });
  // The gateway follows with `connected` (and `security`).
}

function rejectCall() {
  if (!call || call.state !== 'incoming') return;
  send({ type: 'reject', id: call.id });
  endCall('Declined', null);
}

// ---------------------------------------------------------------------------
// Ending calls

/** Ends the current call locally: releases microphone and peer connection. */
function endCall(reason, code, fromGateway = false) {
  const c = call;
  if (!c) return;
  stopTimer();
  releaseMedia(c);
  lastEndedId = fromGateway ? null : c.id;
  setCallState('ended', endedText(reason, code));
  call = null;
  ui.callButton.disabled = false;
  ui.hangupButton.disabled = true;
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
    if (DTMF_RE.test(digit)) send({ type: 'dtmf', id: call.id, digits: digit });
    return;
  }
  if (ui.number.readOnly) return;
  ui.number.value += digit;
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
  if (call) send({ type: 'hangup', id: call.id });
});

session = loadSession();
if (session) {
  enterPhone();
} else {
  show(ui.loginView, true);
  ui.loginAccount.focus();
}
