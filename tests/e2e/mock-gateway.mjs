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
  if (url.pathname === '/healthz') { res.removeHeader('Content-Security-Policy'); res.end('ok'); return; }
  const rel = url.pathname === '/' ? 'index.html' : url.pathname.slice(1);
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
