#!/usr/bin/env node
// A stand-in for the gateway, to check the web client and chromium-call.mjs
// without the Rust gateway. Not a test of the gateway.
//
// Serves ../../web-client over plain HTTP on 127.0.0.1 (a secure context),
// answers POST /api/login (MOCK_ACCOUNT / MOCK_PASSWORD, default alice /
// secret) and speaks the signaling protocol of PROTOCOL.md section 3 on /ws.
// The far end of each call is a second headless Chromium page with the fake
// microphone, so real DTLS-SRTP media flows: run it inside a network
// namespace (see selftest.sh), never on the host's interfaces.
//
// Test hooks: POST /mock/incoming?from=&verstat= rings every signed-in
// session ({id} back), POST /mock/incoming-end?id=&code=&reason= ends it from
// the caller's side, POST /mock/drop-sockets closes every signaling socket.
//
// The operator's stats page: /stats, POST /api/admin/login (password
// MOCK_ADMIN_PASSWORD, default admin-secret; MOCK_ADMIN_MAX_TRIES wrong ones,
// default 5, give 429 with Retry-After MOCK_ADMIN_LOCK_S, default 3),
// /api/admin/logout, GET /api/stats, /api/stats/stream (SSE) and
// /api/stats/calls/{id}, with fake calls whose counters rise every second.
// Hooks: POST /mock/stats/end-call?id=&code=&cause=&by=, /mock/stats/new-call,
// /mock/stats/refuse-stream?seconds= (cuts the event streams and answers new
// ones 503 meanwhile), /mock/stats/expire-sessions, /mock/stats/reset-login,
// /mock/stats/reset (the seeded calls again, every admin session ended).
//
// Env: MOCK_PORT (default 8088), MOCK_TRUNK_SECURITY (default
// "sdes-srtp AES_CM_128_HMAC_SHA1_80"), MOCK_RING_MS (default 300),
// MOCK_TLS=1 to serve HTTPS/WSS with a fresh self-signed certificate
// (needs the openssl command), as the real gateway does.

import { chromium } from 'playwright-core';
import { createServer } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import os from 'node:os';
import { createHash, randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../web-client');
const PORT = Number(process.env.MOCK_PORT || 8088);
const ACCOUNT = process.env.MOCK_ACCOUNT || 'alice';
const PASSWORD = process.env.MOCK_PASSWORD || 'secret';
const TRUNK_SECURITY = process.env.MOCK_TRUNK_SECURITY || 'sdes-srtp AES_CM_128_HMAC_SHA1_80';
const RING_MS = Number(process.env.MOCK_RING_MS || 300);
const CSP = "default-src 'self'; connect-src 'self' wss:";
const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8', '.svg': 'image/svg+xml' };

const tokens = new Set();
const log = (...a) => console.error('[mock]', ...a);

// --- far end: a Chromium page that answers offers ---------------------------
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
    '--autoplay-policy=no-user-gesture-required'],
});
const farContext = await browser.newContext({ permissions: ['microphone'], ignoreHTTPSErrors: true });
const far = await farContext.newPage();
far.on('console', (m) => log('far:', m.text()));

async function farAnswer(id, offer) {
  // getUserMedia needs a secure context: http://127.0.0.1 is one, about:blank is not.
  if (!far.url().startsWith('http')) await far.goto(`${TLS ? 'https' : 'http'}://127.0.0.1:${PORT}/healthz`);
  return far.evaluate(async ({ id, offer }) => {
    window.pcs = window.pcs || {};
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' });
    window.pcs[id] = pc;
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    await pc.setRemoteDescription({ type: 'offer', sdp: offer });
    stream.getTracks().forEach((tr) => pc.addTrack(tr, stream));
    const audio = new Audio();
    pc.ontrack = (e) => { audio.srcObject = e.streams[0]; audio.play().catch(() => {}); };
    await pc.setLocalDescription(await pc.createAnswer());
    await new Promise((r) => {
      if (pc.iceGatheringState === 'complete') r();
      pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r();
      setTimeout(r, 1000);
    });
    return pc.localDescription.sdp;
  }, { id, offer });
}

async function farOffer(id) {
  if (!far.url().startsWith('http')) await far.goto(`${TLS ? 'https' : 'http'}://127.0.0.1:${PORT}/healthz`);
  return far.evaluate(async (id) => {
    window.pcs = window.pcs || {};
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' });
    window.pcs[id] = pc;
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    stream.getTracks().forEach((tr) => pc.addTrack(tr, stream));
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((r) => {
      if (pc.iceGatheringState === 'complete') r();
      pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r();
      setTimeout(r, 1000);
    });
    return pc.localDescription.sdp;
  }, id);
}

async function farAccept(id, answer) {
  await far.evaluate(({ id, answer }) => window.pcs[id].setRemoteDescription({ type: 'answer', sdp: answer }), { id, answer });
}

async function farHangup(id) {
  await far.evaluate((id) => {
    const pc = window.pcs && window.pcs[id];
    if (pc) { pc.getSenders().forEach((s) => s.track && s.track.stop()); pc.close(); delete window.pcs[id]; }
  }, id).catch(() => {});
}

// --- minimal WebSocket (RFC 6455) server side --------------------------------
function wsAccept(req, socket) {
  const key = req.headers['sec-websocket-key'];
  const accept = createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
  socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
  const peer = {
    send(obj) {
      const data = Buffer.from(JSON.stringify(obj));
      const head = data.length < 126 ? Buffer.from([0x81, data.length])
        : data.length < 65536 ? Buffer.from([0x81, 126, data.length >> 8, data.length & 255])
          : (() => { const b = Buffer.alloc(10); b[0] = 0x81; b[1] = 127; b.writeBigUInt64BE(BigInt(data.length), 2); return b; })();
      if (!socket.destroyed) socket.write(Buffer.concat([head, data]));
    },
    close() { socket.destroy(); },
    onmessage: () => {},
    onclose: () => {},
  };
  let buf = Buffer.alloc(0);
  socket.on('data', (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    for (;;) {
      if (buf.length < 2) return;
      const opcode = buf[0] & 0x0f;
      let len = buf[1] & 0x7f;
      let off = 2;
      if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); off = 4; }
      else if (len === 127) { if (buf.length < 10) return; len = Number(buf.readBigUInt64BE(2)); off = 10; }
      const masked = buf[1] & 0x80;
      const maskOff = off;
      if (masked) off += 4;
      if (buf.length < off + len) return;
      const payload = Buffer.from(buf.subarray(off, off + len));
      if (masked) for (let i = 0; i < len; i++) payload[i] ^= buf[maskOff + (i % 4)];
      buf = buf.subarray(off + len);
      if (opcode === 1) peer.onmessage(payload.toString('utf8'));
      else if (opcode === 8) { socket.end(Buffer.from([0x88, 0])); }
      else if (opcode === 9) socket.write(Buffer.concat([Buffer.from([0x8a, payload.length]), payload]));
    }
  });
  socket.on('close', () => peer.onclose());
  socket.on('error', () => {});
  return peer;
}

const sessions = new Set();
/** Incoming calls still ringing: id -> { ringing: Set<peer>, owner: peer|null }. */
const incoming = new Map();
/** Answered incoming calls: id -> the peer that took it. */
const answered = new Map();

async function ringIncoming(from, verstat) {
  const id = randomBytes(8).toString('hex');
  const sdp = await farOffer(id);
  incoming.set(id, { ringing: new Set(sessions), owner: null });
  for (const p of sessions) p.send({ type: 'incoming', id, from, sdp, verstat });
  return id;
}

// The trunk's side of a ringing call ends it (CANCEL: 487, ring timeout:
// 408): every session still ringing gets `hangup`, as PROTOCOL.md says.
async function endIncoming(id, code, reason) {
  const inc = incoming.get(id);
  if (inc) {
    incoming.delete(id);
    for (const p of inc.ringing) p.send({ type: 'hangup', id, code, reason });
    await farHangup(id);
    return true;
  }
  const owner = answered.get(id);
  if (owner) {
    // BYE from the trunk during the call.
    answered.delete(id);
    owner.send({ type: 'hangup', id, code, reason });
    await farHangup(id);
    return true;
  }
  return false;
}

function session(peer) {
  const calls = new Map();
  sessions.add(peer);
  peer.onmessage = async (text) => {
    let msg;
    try { msg = JSON.parse(text); } catch { peer.send({ type: 'error', code: 400, message: 'malformed JSON' }); return; }
    log('<-', msg.type, msg.id || '');
    if (msg.type === 'call') {
      if (!msg.id || !msg.to || typeof msg.sdp !== 'string') { peer.send({ type: 'error', id: msg.id, code: 400, message: 'call needs id, to, sdp' }); return; }
      if (msg.to === '404') { peer.send({ type: 'progress', id: msg.id, code: 100 }); peer.send({ type: 'hangup', id: msg.id, code: 404, reason: 'Not Found' }); return; }
      calls.set(msg.id, true);
      peer.send({ type: 'progress', id: msg.id, code: 100 });
      let sdp;
      try {
        sdp = await farAnswer(msg.id, msg.sdp);
      } catch (err) {
        log('far end failed', err.message);
        calls.delete(msg.id);
        peer.send({ type: 'hangup', id: msg.id, code: 500, reason: 'Mock far end failed' });
        return;
      }
      await new Promise((r) => setTimeout(r, RING_MS));
      if (!calls.has(msg.id)) return;
      peer.send({ type: 'progress', id: msg.id, code: 180 });
      peer.send({ type: 'answer', id: msg.id, sdp });
      await new Promise((r) => setTimeout(r, RING_MS));
      if (!calls.has(msg.id)) return;
      peer.send({ type: 'connected', id: msg.id, security: { browser: 'dtls-srtp AEAD_AES_128_GCM', trunk: TRUNK_SECURITY } });
    } else if (msg.type === 'accept' || msg.type === 'reject') {
      const inc = incoming.get(msg.id);
      if (!inc || inc.owner || !inc.ringing.has(peer)) { peer.send({ type: 'error', id: msg.id, code: 404, message: 'no such call' }); return; }
      if (msg.type === 'reject') {
        // This session declines; the others ring on. When none is left the
        // trunk gets 486.
        inc.ringing.delete(peer);
        peer.send({ type: 'hangup', id: msg.id, code: 486, reason: 'declined' });
        if (inc.ringing.size === 0) {
          incoming.delete(msg.id);
          await farHangup(msg.id);
        }
        return;
      }
      inc.owner = peer;
      for (const p of inc.ringing) if (p !== peer) p.send({ type: 'hangup', id: msg.id, code: 200, reason: 'answered elsewhere' });
      await farAccept(msg.id, msg.sdp);
      calls.set(msg.id, true);
      incoming.delete(msg.id);
      answered.set(msg.id, peer);
      peer.send({ type: 'connected', id: msg.id, security: { browser: 'dtls-srtp AEAD_AES_128_GCM', trunk: TRUNK_SECURITY } });
    } else if (msg.type === 'hangup') {
      answered.delete(msg.id);
      if (calls.delete(msg.id)) {
        await farHangup(msg.id);
        peer.send({ type: 'hangup', id: msg.id, code: 200, reason: 'Normal call clearing' });
      } else {
        peer.send({ type: 'error', id: msg.id, code: 404, message: 'no such call' });
      }
    } else if (msg.type === 'dtmf') {
      // accepted silently
    } else {
      peer.send({ type: 'error', id: msg.id, code: 400, message: `unsupported message type ${msg.type}` });
    }
  };
  peer.onclose = () => {
    sessions.delete(peer);
    for (const id of calls.keys()) { farHangup(id); answered.delete(id); }
    calls.clear();
    for (const [id, inc] of incoming) {
      inc.ringing.delete(peer);
      if (inc.ringing.size === 0 && !inc.owner) { incoming.delete(id); farHangup(id); }
    }
  };
}

// --- the operator's stats page (/stats) --------------------------------------
// The backend contract of web-client/stats.js: admin sign-in with a session
// cookie, /api/stats (JSON), /api/stats/stream (Server-Sent Events, once a
// second), /api/stats/calls/{id}. Fake calls whose packet counters rise every
// second; hooks under /mock/stats/ change them.
const ADMIN_PASSWORD = process.env.MOCK_ADMIN_PASSWORD || 'admin-secret';
const ADMIN_MAX_TRIES = Number(process.env.MOCK_ADMIN_MAX_TRIES || 5);
const ADMIN_LOCK_S = Number(process.env.MOCK_ADMIN_LOCK_S || 3);
const ADMIN_COOKIE = 'gw_admin';
const adminSessions = new Set();
const admin = { failures: 0, lockedUntil: 0 };
/** Open event streams: { res, sid, timer }. */
const streams = new Set();
const statsStart = Date.now();
const stats = { refuseStreamUntil: 0, seq: 0 };

const PKT_RATE = 50; // packets per second per direction and leg (20 ms audio)
const RTP_BYTES = { 'PCMU/8000': 172, 'PCMA/8000': 172, 'opus/48000/2': 120 };

function sdpBrowserOffer(port) {
  return ['v=0', 'o=- 4611731400430051336 2 IN IP4 127.0.0.1', 's=-', 't=0 0', 'a=group:BUNDLE 0',
    'a=msid-semantic: WMS', `m=audio ${port} UDP/TLS/RTP/SAVPF 111 0 8 126`, 'c=IN IP4 192.0.2.10',
    'a=rtcp:9 IN IP4 0.0.0.0', 'a=candidate:1 1 udp 2122260223 192.0.2.10 54400 typ host',
    'a=ice-ufrag:Xk3f', 'a=ice-pwd:<removed>',
    'a=fingerprint:sha-256 3B:9A:12:77:0C:5E:AA:41:6D:90:12:FE:33:28:91:0B:64:5A:70:1C:E8:D2:4F:9B:0A:7E:55:13:C6:2D:8F:01',
    'a=setup:actpass', 'a=mid:0', 'a=sendrecv', 'a=rtcp-mux', 'a=rtpmap:111 opus/48000/2',
    'a=fmtp:111 minptime=10;useinbandfec=1', 'a=rtpmap:0 PCMU/8000', 'a=rtpmap:8 PCMA/8000',
    'a=rtpmap:126 telephone-event/8000', 'a=ssrc:2270148592 cname:QmX5yqsJ3Jc4nOa6', ''].join('\r\n');
}
function sdpBrowserAnswer(codec) {
  const [pt, name] = codec === 'PCMA/8000' ? [8, 'PCMA/8000'] : [0, 'PCMU/8000'];
  return ['v=0', 'o=webrtc-sip-gateway 1 1 IN IP4 10.99.0.1', 's=-', 't=0 0', 'a=ice-lite', 'a=group:BUNDLE 0',
    `m=audio 20010 UDP/TLS/RTP/SAVPF ${pt} 126`, 'c=IN IP4 10.99.0.1',
    'a=candidate:1 1 udp 2130706431 10.99.0.1 20010 typ host', 'a=ice-ufrag:gw7Q', 'a=ice-pwd:<removed>',
    'a=fingerprint:sha-256 A1:0F:5C:22:9E:71:3D:C0:8B:44:E2:19:6A:FD:07:B3:52:8E:11:CA:90:6F:D4:3B:27:E8:05:9C:71:AA:36:4D',
    'a=setup:passive', 'a=mid:0', 'a=sendrecv', 'a=rtcp-mux', `a=rtpmap:${pt} ${name}`,
    'a=rtpmap:126 telephone-event/8000', ''].join('\r\n');
}
function sdpTrunkOffer(codec, sdes) {
  const pt = codec === 'PCMA/8000' ? 8 : 0;
  const lines = ['v=0', 'o=webrtc-sip-gateway 2 1 IN IP4 10.99.0.1', 's=-', 't=0 0',
    `m=audio 20011 ${sdes ? 'RTP/SAVP' : 'RTP/AVP'} ${pt} 101`, 'c=IN IP4 10.99.0.1',
    `a=rtpmap:${pt} ${codec}`, 'a=rtpmap:101 telephone-event/8000', 'a=sendrecv'];
  if (sdes) lines.push('a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:<removed>', 'a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:<removed>');
  return [...lines, ''].join('\r\n');
}
function sdpTrunkAnswer(codec, sdes) {
  const pt = codec === 'PCMA/8000' ? 8 : 0;
  const lines = ['v=0', 'o=carrier 8721 8722 IN IP4 198.51.100.20', 's=carrier', 't=0 0',
    `m=audio 31040 ${sdes ? 'RTP/SAVP' : 'RTP/AVP'} ${pt} 101`, 'c=IN IP4 198.51.100.20',
    `a=rtpmap:${pt} ${codec}`, 'a=rtpmap:101 telephone-event/8000', 'a=sendrecv'];
  if (sdes) lines.push('a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:<removed>');
  return [...lines, ''].join('\r\n');
}

function ladderOf(c) {
  const remote = c.remote;
  const L = (t_ms, direction, peer, summary) => ({ t_ms, direction, peer, summary });
  if (c.direction === 'outgoing') {
    const out = [L(0, 'in', 'browser', `call ${remote} (SDP offer)`), L(3, 'out', 'trunk', `INVITE sip:***@${c.trunk}.example (SDP)`),
      L(21, 'in', 'trunk', '100 Trying'), L(190, 'in', 'trunk', '180 Ringing'), L(191, 'out', 'browser', 'progress 180')];
    if (c.answeredAt) out.push(L(2130, 'in', 'trunk', '200 OK (SDP)'), L(2131, 'out', 'trunk', 'ACK'),
      L(2132, 'out', 'browser', 'answer (SDP)'), L(2190, 'out', 'browser', 'connected'));
    return out;
  }
  const out = [L(0, 'in', 'trunk', `INVITE sip:${c.account}@gw.example (SDP)`), L(1, 'out', 'trunk', '100 Trying'),
    L(4, 'out', 'browser', `incoming from ${remote} (SDP offer)`), L(6, 'out', 'trunk', '180 Ringing')];
  if (c.answeredAt) out.push(L(3300, 'in', 'browser', 'accept (SDP answer)'), L(3302, 'out', 'trunk', '200 OK (SDP)'),
    L(3340, 'in', 'trunk', 'ACK'), L(3341, 'out', 'browser', 'connected'));
  return out;
}

/** A fake call; `answeredAgo` null = not answered yet (ringing). */
function fakeCall(o) {
  const now = Date.now();
  return {
    id: o.id, direction: o.direction, account: o.account, remote: o.remote, trunk: o.trunk,
    state: o.state || (o.answeredAgo === null ? 'ringing' : 'connected'),
    startedAt: now - o.startedAgo * 1000,
    answeredAt: o.answeredAgo === null || o.answeredAgo === undefined ? null : now - o.answeredAgo * 1000,
    codec: o.codec ?? null, private: Boolean(o.private),
    security: { browser: o.browserSecurity ?? null, trunk: o.trunkSecurity ?? null },
    quality: o.quality || { browser: {}, trunk: {} },
    dropRates: o.dropRates || { browser: {}, trunk: {} }, // reason -> [base, per second]
  };
}

function legNow(c, leg, now) {
  const secs = c.answeredAt ? Math.max(0, (now - c.answeredAt) / 1000) : 0;
  const size = RTP_BYTES[c.codec] || 172;
  // Slightly different counts per direction and leg, all rising every second.
  const skew = leg === 'browser' ? 1 : 0.98;
  const packets_in = Math.floor(secs * PKT_RATE * skew);
  const packets_out = Math.floor(secs * PKT_RATE * (2 - skew));
  const drops = { unknown_ssrc: 0, auth_failed: 0, replay: 0, malformed: 0, unknown_payload_type: 0, not_ready: 0, wrong_source: 0, stun_rejected: 0 };
  for (const [reason, [base, rate]] of Object.entries(c.dropRates[leg] || {})) drops[reason] = base + Math.floor(secs * rate);
  const q = c.quality[leg] || {};
  return {
    security: c.security[leg], packets_in, packets_out,
    bytes_in: packets_in * (leg === 'browser' ? size + 16 : size), bytes_out: packets_out * (leg === 'browser' ? size + 16 : size),
    drops, loss: q.loss ?? null, jitter_ms: q.jitter_ms ?? null, rtt_ms: q.rtt_ms ?? null,
  };
}

function liveJson(c, now) {
  return {
    id: c.id, direction: c.direction, account: c.account, remote: c.remote, trunk: c.trunk, state: c.state,
    started_at: new Date(c.startedAt).toISOString(), answered_at: c.answeredAt ? new Date(c.answeredAt).toISOString() : null,
    duration_s: Math.round((now - (c.answeredAt || c.startedAt)) / 100) / 10, codec: c.codec, private: c.private,
    legs: { browser: legNow(c, 'browser', now), trunk: legNow(c, 'trunk', now) },
  };
}

function endedRecord(c, now, cause_code, cause, hung_up_by) {
  const total = (l) => ({ packets_in: l.packets_in, packets_out: l.packets_out, bytes_in: l.bytes_in, bytes_out: l.bytes_out,
    drops_total: Object.values(l.drops).reduce((a, b) => a + b, 0) });
  return {
    id: c.id, direction: c.direction, account: c.account, remote: c.remote, trunk: c.trunk,
    started_at: new Date(c.startedAt).toISOString(), answered_at: c.answeredAt ? new Date(c.answeredAt).toISOString() : null,
    ended_at: new Date(now).toISOString(),
    duration_s: c.answeredAt ? Math.round((now - c.answeredAt) / 100) / 10 : null,
    cause_code, cause, hung_up_by, codec: c.codec,
    browser_security: c.security.browser, trunk_security: c.security.trunk, private: c.private,
    browser: total(legNow(c, 'browser', now)), trunk: total(legNow(c, 'trunk', now)),
  };
}

/** Live calls, and ended ones newest first ({ record, call }: call keeps what the detail needs). */
const liveCalls = [];
const endedCalls = [];

/** The fake calls the page starts with (again on POST /mock/stats/reset). */
function seedStats() {
  liveCalls.length = 0;
  endedCalls.length = 0;
  stats.refuseStreamUntil = 0;
  admin.failures = 0;
  admin.lockedUntil = 0;
  liveCalls.push(
    fakeCall({ id: 'out-7c1e9a2b', direction: 'outgoing', account: 'alice', remote: '+4930******89', trunk: 'carrier',
      startedAgo: 95, answeredAgo: 92, codec: 'PCMU/8000',
      browserSecurity: 'dtls-srtp AEAD_AES_128_GCM', trunkSecurity: 'sdes-srtp AES_CM_128_HMAC_SHA1_80',
      quality: { browser: { loss: 0, jitter_ms: 0.6, rtt_ms: 3.1 }, trunk: { loss: 0.012, jitter_ms: 1.8, rtt_ms: 24 } },
      dropRates: { browser: {}, trunk: { unknown_ssrc: [4, 0.5], replay: [2, 0] } } }),
    fakeCall({ id: 'in-3f2a91d0', direction: 'incoming', account: 'bob', remote: '+15550100', trunk: 'backup',
      startedAgo: 40, answeredAgo: 36, codec: 'PCMA/8000',
      browserSecurity: 'dtls-srtp AES_CM_128_HMAC_SHA1_80', trunkSecurity: 'rtp (unencrypted)',
      quality: { browser: { loss: 0.004, jitter_ms: 2.4, rtt_ms: 9.5 }, trunk: {} } }),
    fakeCall({ id: 'in-5b0c33e1', direction: 'incoming', account: 'carol', remote: '+4989******12', trunk: 'carrier',
      startedAgo: 3, answeredAgo: null, private: true }),
  );
  const t = Date.now();
  const past = [
    [fakeCall({ id: 'out-11aa22bb', direction: 'outgoing', account: 'alice', remote: '+4930******55', trunk: 'carrier',
      startedAgo: 900, answeredAgo: 896, codec: 'PCMU/8000', browserSecurity: 'dtls-srtp AEAD_AES_128_GCM',
      trunkSecurity: 'sdes-srtp AES_CM_128_HMAC_SHA1_80' }), 600, 200, 'the other party hung up', 'trunk'],
    [fakeCall({ id: 'in-33cc44dd', direction: 'incoming', account: 'bob', remote: '+15550123', trunk: 'carrier',
      startedAgo: 700, answeredAgo: null }), 680, 487, 'cancelled by the caller', 'trunk'],
    // Markup in every string the gateway relays: it must show as text.
    [fakeCall({ id: 'out-<b>55ee</b>', direction: 'outgoing', account: 'eve<script>window.__xss=1</script>',
      remote: '<img src=x onerror="window.__xss=1">', trunk: '<i>carrier</i>', startedAgo: 500, answeredAgo: 498,
      codec: 'PCMU/8000', browserSecurity: 'dtls-srtp <b>AEAD</b>', trunkSecurity: 'rtp (unencrypted)' }),
    400, 200, '<img src=y onerror="window.__xss=2">', 'browser'],
    [fakeCall({ id: 'in-66ff7788', direction: 'incoming', account: 'carol', remote: '+4989******12', trunk: 'carrier',
      startedAgo: 300, answeredAgo: 296, codec: 'PCMU/8000', private: true,
      browserSecurity: 'dtls-srtp AEAD_AES_128_GCM', trunkSecurity: 'dtls-srtp AEAD_AES_128_GCM' }),
    120, 200, 'you hung up', 'browser'],
  ];
  past.sort((x, y) => y[1] - x[1]); // oldest first: each is put in front
  for (const [c, agoEnded, code, cause, by] of past) {
    endedCalls.unshift({ call: c, record: endedRecord(c, t - agoEnded * 1000, code, cause, by) });
  }
}

function endLiveCall(id, code, cause, by) {
  const i = liveCalls.findIndex((c) => c.id === id);
  if (i < 0) return false;
  const [c] = liveCalls.splice(i, 1);
  endedCalls.unshift({ call: c, record: endedRecord(c, Date.now(), code, cause, by) });
  endedCalls.length = Math.min(endedCalls.length, 100);
  return true;
}

function historyPoints(now) {
  const last = Math.floor(now / 10000) * 10;
  const out = [];
  for (let i = 0; i < 360; i++) {
    const t = last - (359 - i) * 10;
    const calls = Math.max(0, Math.round(2 + 2 * Math.sin(i / 23) + Math.sin(i / 5)));
    out.push({ t, calls, pps: calls * PKT_RATE * 4 + (i % 3) * 7 });
  }
  return out;
}

seedStats();

function snapshot() {
  const now = Date.now();
  stats.seq += 1;
  const calls = liveCalls.map((c) => liveJson(c, now));
  return {
    generated_at: new Date(now).toISOString(),
    version: '0.1.0-mock',
    uptime_s: Math.floor((now - statsStart) / 1000) + 7380,
    calls_active: calls.length,
    packets_per_second: liveCalls.filter((c) => c.answeredAt).length * PKT_RATE * 4,
    history: historyPoints(now),
    trunks: [
      { name: 'carrier', status: 'up', last_options_rtt_ms: 12.5 + (stats.seq % 5) / 10 },
      { name: 'backup', status: 'down', last_options_rtt_ms: null },
      { name: 'lab', status: 'unknown', last_options_rtt_ms: null },
    ],
    bans: [{ source: '203.0.113.9', until: new Date(statsStart + 600000).toISOString(), reason: 'requests per second' }],
    calls,
    ended: endedCalls.slice(0, 100).map((e) => e.record),
  };
}

function callDetail(id) {
  const now = Date.now();
  const live = liveCalls.find((c) => c.id === id);
  const ended = endedCalls.find((e) => e.call.id === id);
  const c = live || (ended && ended.call);
  if (!c) return null;
  const sdes = typeof c.security.trunk === 'string' && c.security.trunk.startsWith('sdes');
  const codec = c.codec || 'PCMU/8000';
  const answered = Boolean(c.answeredAt);
  const ladder = ladderOf(c);
  if (ended) {
    const t = Date.parse(ended.record.ended_at) - c.startedAt;
    const by = ended.record.hung_up_by === 'browser' ? 'browser' : 'trunk';
    if (!answered) ladder.push({ t_ms: t, direction: 'in', peer: 'trunk', summary: 'CANCEL' }, { t_ms: t + 1, direction: 'out', peer: 'trunk', summary: '487 Request Terminated' });
    else if (by === 'browser') ladder.push({ t_ms: t, direction: 'in', peer: 'browser', summary: 'hangup' }, { t_ms: t + 1, direction: 'out', peer: 'trunk', summary: 'BYE' }, { t_ms: t + 30, direction: 'in', peer: 'trunk', summary: '200 OK' });
    else ladder.push({ t_ms: t, direction: 'in', peer: 'trunk', summary: 'BYE' }, { t_ms: t + 1, direction: 'out', peer: 'trunk', summary: '200 OK' }, { t_ms: t + 2, direction: 'out', peer: 'browser', summary: `hangup ${ended.record.cause_code}` });
  }
  const browserOffer = c.direction === 'outgoing' ? sdpBrowserOffer(9) : sdpBrowserAnswer(codec);
  // Like the gateway, a live call's detail carries its call record in
  // progress (not ended: no ended_at, cause or hung_up_by yet).
  const inProgress = () => ({ ...endedRecord(c, now, null, null, null), ended_at: null, duration_s: null });
  return {
    call: live ? liveJson(c, now) : null,
    record: ended ? ended.record : inProgress(),
    sdp: c.direction === 'outgoing'
      ? { browser_offer: browserOffer, browser_answer: answered ? sdpBrowserAnswer(codec) : null,
        trunk_offer: sdpTrunkOffer(codec, sdes), trunk_answer: answered ? sdpTrunkAnswer(codec, sdes) : null }
      : { browser_offer: sdpBrowserAnswer(codec), browser_answer: answered ? sdpBrowserOffer(9) : null,
        trunk_offer: sdpTrunkAnswer(codec, sdes), trunk_answer: answered ? sdpTrunkOffer(codec, sdes) : null },
    ladder,
  };
}

function adminSession(req) {
  for (const part of (req.headers.cookie || '').split(';')) {
    const [k, v] = part.trim().split('=');
    if (k === ADMIN_COOKIE && adminSessions.has(v)) return v;
  }
  return null;
}

function sendJson(res, status, body, headers = {}) {
  res.writeHead(status, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store', ...headers });
  res.end(JSON.stringify(body));
}

function closeStreams(pred = () => true) {
  for (const s of streams) {
    if (!pred(s)) continue;
    clearInterval(s.timer);
    streams.delete(s);
    s.res.end(); // a clean end: the page sees the stream close, not a network error
  }
}

/** Handles the stats page's endpoints; false when the request is not one of them. */
async function statsRoutes(req, res, url) {
  const p = url.pathname;
  if (req.method === 'POST' && p === '/api/admin/login') {
    let body = '';
    for await (const chunk of req) body += chunk;
    const now = Date.now();
    if (admin.lockedUntil > now) {
      sendJson(res, 429, { error: 'too many attempts' }, { 'Retry-After': String(Math.ceil((admin.lockedUntil - now) / 1000)) });
      return true;
    }
    let creds = {};
    try { creds = JSON.parse(body); } catch { /* empty */ }
    if (creds && creds.password === ADMIN_PASSWORD) {
      admin.failures = 0;
      const sid = randomBytes(16).toString('hex');
      adminSessions.add(sid);
      // Secure only over TLS: Chromium drops Secure cookies set over plain http.
      const cookie = `${ADMIN_COOKIE}=${sid}; Path=/; HttpOnly; SameSite=Strict${TLS ? '; Secure' : ''}`;
      sendJson(res, 200, { ok: true }, { 'Set-Cookie': cookie });
    } else {
      admin.failures += 1;
      if (admin.failures >= ADMIN_MAX_TRIES) {
        admin.failures = 0;
        admin.lockedUntil = now + ADMIN_LOCK_S * 1000;
        sendJson(res, 429, { error: 'too many attempts' }, { 'Retry-After': String(ADMIN_LOCK_S) });
      } else {
        sendJson(res, 401, { error: 'wrong password' });
      }
    }
    return true;
  }
  if (req.method === 'POST' && p === '/api/admin/logout') {
    const sid = adminSession(req);
    if (sid) { adminSessions.delete(sid); closeStreams((s) => s.sid === sid); }
    sendJson(res, 200, { ok: true }, { 'Set-Cookie': `${ADMIN_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0${TLS ? '; Secure' : ''}` });
    return true;
  }
  if (req.method === 'GET' && (p === '/api/stats' || p === '/api/stats/stream' || p.startsWith('/api/stats/calls/'))) {
    const sid = adminSession(req);
    if (!sid) { sendJson(res, 401, { error: 'sign in first' }); return true; }
    if (p === '/api/stats') { sendJson(res, 200, snapshot()); return true; }
    if (p === '/api/stats/stream') {
      if (stats.refuseStreamUntil > Date.now()) { sendJson(res, 503, { error: 'stream refused (mock hook)' }); return true; }
      res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-store', Connection: 'keep-alive' });
      const s = { res, sid, timer: null };
      const push = () => res.write(`event: stats\ndata: ${JSON.stringify(snapshot())}\n\n`);
      push();
      s.timer = setInterval(push, 1000);
      streams.add(s);
      req.on('close', () => { clearInterval(s.timer); streams.delete(s); });
      return true;
    }
    let id;
    try { id = decodeURIComponent(p.slice('/api/stats/calls/'.length)); } catch { id = ''; }
    const d = callDetail(id);
    if (d) sendJson(res, 200, d);
    else sendJson(res, 404, { error: 'no such call' });
    return true;
  }
  if (req.method === 'POST' && p.startsWith('/mock/stats/')) {
    const q = url.searchParams;
    if (p === '/mock/stats/end-call') {
      // The call ends: it leaves `calls` and heads `ended`.
      const ok = endLiveCall(q.get('id') || '', Number(q.get('code') || 200), q.get('cause') || 'the other party hung up', q.get('by') || 'trunk');
      sendJson(res, ok ? 200 : 404, { ok });
    } else if (p === '/mock/stats/new-call') {
      const id = `out-${randomBytes(4).toString('hex')}`;
      liveCalls.push(fakeCall({ id, direction: 'outgoing', account: q.get('account') || 'dave', remote: q.get('remote') || '+3361******07',
        trunk: 'carrier', startedAgo: 2, answeredAgo: 1, codec: 'PCMU/8000',
        browserSecurity: 'dtls-srtp AEAD_AES_128_GCM', trunkSecurity: 'sdes-srtp AES_CM_128_HMAC_SHA1_80' }));
      sendJson(res, 200, { id });
    } else if (p === '/mock/stats/refuse-stream') {
      // Open streams are cut and new ones refused (503) for `seconds`.
      stats.refuseStreamUntil = Date.now() + Number(q.get('seconds') || 5) * 1000;
      closeStreams();
      sendJson(res, 200, { ok: true });
    } else if (p === '/mock/stats/expire-sessions') {
      adminSessions.clear();
      closeStreams();
      sendJson(res, 200, { ok: true });
    } else if (p === '/mock/stats/reset') {
      // Back to the seeded calls; every admin session ends.
      seedStats();
      adminSessions.clear();
      closeStreams();
      sendJson(res, 200, { ok: true });
    } else if (p === '/mock/stats/reset-login') {
      admin.failures = 0;
      admin.lockedUntil = 0;
      sendJson(res, 200, { ok: true });
    } else {
      sendJson(res, 404, { error: 'no such hook' });
    }
    return true;
  }
  return false;
}

// --- HTTP --------------------------------------------------------------------
function selfSigned() {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'mock-gw-'));
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', path.join(dir, 'key.pem'), '-out', path.join(dir, 'cert.pem'), '-days', '1',
    '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
  return { key: readFileSync(path.join(dir, 'key.pem')), cert: readFileSync(path.join(dir, 'cert.pem')) };
}

const TLS = process.env.MOCK_TLS === '1';
const handler = async (req, res) => {
  const url = new URL(req.url, 'http://x');
  res.setHeader('Content-Security-Policy', CSP);
  if (req.method === 'POST' && url.pathname === '/api/login') {
    let body = '';
    for await (const chunk of req) body += chunk;
    let creds = {};
    try { creds = JSON.parse(body); } catch { /* empty */ }
    if (creds.account === ACCOUNT && creds.password === PASSWORD) {
      const token = randomBytes(16).toString('hex');
      tokens.add(token);
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ token, expires_in: 3600 }));
    } else {
      res.writeHead(401, { 'Content-Type': 'application/json' });
      res.end('{"error":"unauthorized"}');
    }
    return;
  }
  if (req.method === 'POST' && url.pathname === '/mock/incoming') {
    // Test hook: ring every signed-in browser with a call from the far end.
    const verstat = url.searchParams.has('verstat') ? url.searchParams.get('verstat') : 'TN-Validation-Passed';
    const id = await ringIncoming(url.searchParams.get('from') || '+15550100', verstat);
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ id, sessions: sessions.size }));
    return;
  }
  if (req.method === 'POST' && url.pathname === '/mock/incoming-end') {
    // Test hook: the caller's side ends an incoming call: CANCEL (487
    // "cancelled by the caller"), ring timeout (408 "no answer"), or BYE
    // after the answer (200 "the other party hung up").
    const ok = await endIncoming(url.searchParams.get('id') || '', Number(url.searchParams.get('code') || 487),
      url.searchParams.get('reason') || 'cancelled by the caller');
    res.writeHead(ok ? 200 : 404);
    res.end(ok ? 'ok' : 'no such call');
    return;
  }
  if (req.method === 'POST' && url.pathname === '/mock/drop-sockets') {
    // Test hook: close every signaling socket, as a restarting gateway would.
    for (const p of sessions) p.close();
    res.end('ok');
    return;
  }
  if (url.pathname === '/ws') {
    // A GET without an upgrade: 401 for a bad token, as the gateway does.
    res.writeHead(tokens.has(url.searchParams.get('token')) ? 426 : 401);
    res.end();
    return;
  }
  if (await statsRoutes(req, res, url)) return;
  if (url.pathname === '/healthz') { res.removeHeader('Content-Security-Policy'); res.end('ok'); return; }
  const rel = url.pathname === '/' ? 'index.html' : url.pathname === '/stats' ? 'stats.html' : url.pathname.slice(1);
  if (req.method !== 'GET' || rel.includes('..') || !TYPES[path.extname(rel)]) { res.writeHead(404); res.end(); return; }
  try {
    const data = await readFile(path.join(ROOT, rel));
    res.writeHead(200, { 'Content-Type': TYPES[path.extname(rel)] });
    res.end(data);
  } catch {
    res.writeHead(404); res.end();
  }
};
const server = TLS ? createTlsServer(selfSigned(), handler) : createServer(handler);
server.on('upgrade', (req, socket) => {
  const url = new URL(req.url, 'http://x');
  if (url.pathname !== '/ws' || !tokens.has(url.searchParams.get('token'))) {
    socket.end('HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n');
    return;
  }
  session(wsAccept(req, socket));
});
server.listen(PORT, '127.0.0.1', () => log(`listening on ${TLS ? 'https' : 'http'}://127.0.0.1:${PORT}`));

const stop = async () => { server.close(); await browser.close().catch(() => {}); process.exit(0); };
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
