"""A trunk's media end on libsrtp 2 (Debian libsrtp2-1, what Asterisk,
FreeSWITCH and Janus protect media with), through ctypes: every SDES suite
the gateway runs (AES_CM_128, AES_192_CM and AES_256_CM with HMAC-SHA1
80/32, AEAD_AES_128_GCM and AEAD_AES_256_GCM), with or without an MKI, on
SRTP and SRTCP. baresip 1.0 speaks only four of those suites and no MKI, so
this is the independent peer for the others; SIPp carries the signaling.

`TrunkMedia` owns one UDP socket (rtcp-mux): it plays a 440 Hz PCMU tone as
SRTP every 20 ms with a sender report as SRTCP every second, and unprotects
everything that arrives, keeping the decoded samples and the counts of what
authenticated and what did not.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import threading
import time
from typing import Optional

from test_early_media import _tone_second_ulaw, _ulaw_decode

PCMU = 0
SSRC = 0x11B5A7C0
# srtp_ssrc_type_t
SSRC_ANY_INBOUND, SSRC_ANY_OUTBOUND = 2, 3
# Room libsrtp may append (tag, MKI, SRTCP index): SRTP_MAX_TRAILER_LEN.
TRAILER = 16 + 4 + 128

# suite -> (rtp policy setter, rtcp policy setter). SRTCP keeps an 80-bit
# tag with the _32 suites (RFC 3711 5.2, RFC 4568 6.2.1).
SETTERS = {
    "AES_CM_128_HMAC_SHA1_80": ("rtp_default", "rtcp_default"),
    "AES_CM_128_HMAC_SHA1_32": ("aes_cm_128_hmac_sha1_32", "rtcp_default"),
    "AES_192_CM_HMAC_SHA1_80": ("aes_cm_192_hmac_sha1_80", "aes_cm_192_hmac_sha1_80"),
    "AES_192_CM_HMAC_SHA1_32": ("aes_cm_192_hmac_sha1_32", "aes_cm_192_hmac_sha1_80"),
    "AES_256_CM_HMAC_SHA1_80": ("aes_cm_256_hmac_sha1_80", "aes_cm_256_hmac_sha1_80"),
    "AES_256_CM_HMAC_SHA1_32": ("aes_cm_256_hmac_sha1_32", "aes_cm_256_hmac_sha1_80"),
    "AEAD_AES_128_GCM": ("aes_gcm_128_16_auth", "aes_gcm_128_16_auth"),
    "AEAD_AES_256_GCM": ("aes_gcm_256_16_auth", "aes_gcm_256_16_auth"),
}
# Master key + salt bytes (the SDES inline key).
KEY_SALT_LEN = {
    "AES_CM_128_HMAC_SHA1_80": 30, "AES_CM_128_HMAC_SHA1_32": 30,
    "AES_192_CM_HMAC_SHA1_80": 38, "AES_192_CM_HMAC_SHA1_32": 38,
    "AES_256_CM_HMAC_SHA1_80": 46, "AES_256_CM_HMAC_SHA1_32": 46,
    "AEAD_AES_128_GCM": 28, "AEAD_AES_256_GCM": 44,
}


class CryptoPolicy(ctypes.Structure):
    _fields_ = [("cipher_type", ctypes.c_uint32), ("cipher_key_len", ctypes.c_int),
                ("auth_type", ctypes.c_uint32), ("auth_key_len", ctypes.c_int),
                ("auth_tag_len", ctypes.c_int), ("sec_serv", ctypes.c_int)]


class Ssrc(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("value", ctypes.c_uint)]


class MasterKey(ctypes.Structure):
    _fields_ = [("key", ctypes.c_char_p), ("mki_id", ctypes.c_char_p), ("mki_size", ctypes.c_uint)]


class Policy(ctypes.Structure):
    pass


Policy._fields_ = [("ssrc", Ssrc), ("rtp", CryptoPolicy), ("rtcp", CryptoPolicy),
                   ("key", ctypes.c_char_p), ("keys", ctypes.POINTER(ctypes.POINTER(MasterKey))),
                   ("num_master_keys", ctypes.c_ulong), ("deprecated_ekt", ctypes.c_void_p),
                   ("window_size", ctypes.c_ulong), ("allow_repeat_tx", ctypes.c_int),
                   ("enc_xtn_hdr", ctypes.POINTER(ctypes.c_int)), ("enc_xtn_hdr_count", ctypes.c_int),
                   ("next", ctypes.POINTER(Policy))]

_lib: Optional[ctypes.CDLL] = None


def lib() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        _lib = ctypes.CDLL("libsrtp2.so.1")
        if _lib.srtp_init() != 0:
            raise RuntimeError("srtp_init failed")
    return _lib


class Session:
    """One direction of SRTP+SRTCP keyed with `key_salt` (and `mki` bytes,
    which every packet then carries)."""

    def __init__(self, suite: str, key_salt: bytes, outbound: bool, mki: bytes = b""):
        assert len(key_salt) == KEY_SALT_LEN[suite], (suite, len(key_salt))
        self.suite, self.mki = suite, mki
        srtp = lib()
        policy = Policy()
        rtp_setter, rtcp_setter = SETTERS[suite]
        getattr(srtp, f"srtp_crypto_policy_set_{rtp_setter}")(ctypes.byref(policy.rtp))
        getattr(srtp, f"srtp_crypto_policy_set_{rtcp_setter}")(ctypes.byref(policy.rtcp))
        policy.ssrc = Ssrc(SSRC_ANY_OUTBOUND if outbound else SSRC_ANY_INBOUND, 0)
        policy.window_size = 128
        # Kept referenced: libsrtp copies the key at srtp_create.
        self._key = ctypes.create_string_buffer(key_salt, len(key_salt))
        if mki:
            self._mki = ctypes.create_string_buffer(mki, len(mki))
            self._mk = MasterKey(ctypes.cast(self._key, ctypes.c_char_p),
                                 ctypes.cast(self._mki, ctypes.c_char_p), len(mki))
            self._arr = (ctypes.POINTER(MasterKey) * 1)(ctypes.pointer(self._mk))
            policy.keys = self._arr
            policy.num_master_keys = 1
        else:
            policy.key = ctypes.cast(self._key, ctypes.c_char_p)
        self.ctx = ctypes.c_void_p()
        status = srtp.srtp_create(ctypes.byref(self.ctx), ctypes.byref(policy))
        if status != 0:
            raise RuntimeError(f"srtp_create({suite}) failed: status {status}")

    def _call(self, fn: str, data: bytes, *extra: int) -> Optional[bytes]:
        """Runs libsrtp's `fn` on a copy of `data` with room for the trailer;
        the result, or None when libsrtp refused it."""
        buf = ctypes.create_string_buffer(data, len(data) + TRAILER)
        n = ctypes.c_int(len(data))
        status = getattr(lib(), fn)(self.ctx, buf, ctypes.byref(n), *extra)
        return buf.raw[:n.value] if status == 0 else None

    def protect_rtp(self, rtp: bytes) -> bytes:
        out = self._call("srtp_protect_mki", rtp, int(bool(self.mki)), 0)
        assert out is not None, "srtp_protect failed"
        return out

    def protect_rtcp(self, rtcp: bytes) -> bytes:
        out = self._call("srtp_protect_rtcp_mki", rtcp, int(bool(self.mki)), 0)
        assert out is not None, "srtp_protect_rtcp failed"
        return out

    def unprotect_rtp(self, srtp: bytes) -> Optional[bytes]:
        return self._call("srtp_unprotect_mki", srtp, int(bool(self.mki)))

    def unprotect_rtcp(self, srtcp: bytes) -> Optional[bytes]:
        return self._call("srtp_unprotect_rtcp_mki", srtcp, int(bool(self.mki)))


def _is_rtcp(data: bytes) -> bool:
    return len(data) >= 8 and 192 <= data[1] <= 223


class TrunkMedia:
    """The trunk's end of the call: a socket on `host`, the keys set later
    (`key`), a tone out and everything in unprotected and counted."""

    def __init__(self, host: str):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.tx: Optional[Session] = None
        self.rx: Optional[Session] = None
        self.dest: Optional[tuple] = None
        self.sent_rtp = self.sent_rtcp = 0
        self.rtp_ok = self.rtcp_ok = self.failed = 0
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def key(self, suite: str, ours: bytes, theirs: bytes, dest: tuple, our_mki: bytes = b"",
            their_mki: bytes = b""):
        self.tx = Session(suite, ours, outbound=True, mki=our_mki)
        self.rx = Session(suite, theirs, outbound=False, mki=their_mki)
        self.dest = dest

    def start(self):
        self._threads = [threading.Thread(target=self._send, daemon=True, name="libsrtp-send"),
                         threading.Thread(target=self._recv, daemon=True, name="libsrtp-recv")]
        for t in self._threads:
            t.start()

    def _send(self):
        tone, t0, n = _tone_second_ulaw(), time.monotonic(), 0
        while not self._stop.is_set():
            off = (n * 160) % len(tone)
            header = struct.pack("!BBHII", 0x80, (0x80 if n == 0 else 0) | PCMU, (7000 + n) & 0xFFFF,
                                 (320000 + 160 * n) & 0xFFFFFFFF, SSRC)
            self.sock.sendto(self.tx.protect_rtp(header + tone[off:off + 160]), self.dest)
            self.sent_rtp += 1
            if n % 50 == 25:
                # A sender report (RFC 3550 6.4.1) without report blocks.
                ntp = int((time.time() + 2208988800) * 2**32)
                sr = struct.pack("!BBHIIIIII", 0x80, 200, 6, SSRC, ntp >> 32, ntp & 0xFFFFFFFF,
                                 (320000 + 160 * n) & 0xFFFFFFFF, n, n * 160)
                self.sock.sendto(self.tx.protect_rtcp(sr), self.dest)
                self.sent_rtcp += 1
            n += 1
            delay = t0 + n * 0.020 - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)

    def _recv(self):
        while not self._stop.is_set():
            try:
                data, _ = self.sock.recvfrom(2048)
            except (socket.timeout, BlockingIOError):
                continue
            except OSError:
                return
            if _is_rtcp(data):
                if self.rx.unprotect_rtcp(data) is not None:
                    self.rtcp_ok += 1
                else:
                    self.failed += 1
                continue
            plain = self.rx.unprotect_rtp(data)
            if plain is None:
                self.failed += 1
                continue
            self.rtp_ok += 1
            if plain[1] & 0x7F == PCMU:
                cc = plain[0] & 0x0F
                self.samples.extend(_ulaw_decode(b) for b in plain[12 + 4 * cc:])

    def close(self):
        self._stop.set()
        for t in self._threads:
            t.join(5)
        self.sock.close()
