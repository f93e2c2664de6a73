"""SIP over TLS toward and from a trunk (issue 10, item 1).

The trunk is baresip 1.0 with a certificate for 127.0.0.1 signed by a CA
this test makes (harness.make_pki); baresip listens for TLS on its SIP
port + 1. The gateway checks the trunk's certificate against the trunk's
`ca_file` (or a pinned `tls_fingerprint`) and the URI's host; the trunk
reaches the gateway's `sip.tls_listen` (baresip 1.0 does not check server
certificates, so that direction proves the listener and the dialog over it).

With a `ca_file` that did not sign the trunk's certificate, the call must
fail fast with a reason, and baresip must see no SIP at all, on any
transport: there is no plaintext fallback.

Artifacts in tests/artifacts/<test name>/: gateway/gateway.log,
trunk/baresip.log (baresip -s trace), pki/.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time

import pytest

from conftest import TRUNK_NUMBER, _gateway
from harness import (
    BrowserPeer,
    Baresip,
    TrunkSpec,
    make_pki,
    save_result,
    unverified_ssl,
    wait_until,
)
from test_calls import _audio_call, _check_media
from test_incoming import _incoming_audio_call, _check_answered_elsewhere

pytestmark = pytest.mark.gateway


@pytest.fixture
def pki(workdir):
    return make_pki(workdir)


@pytest.fixture
def baresip_tls(workdir, tone_wav, pki):
    b = Baresip(workdir, tone_wav, user=TRUNK_NUMBER, srtp=True, name="trunk", tls_certificate=pki.server)
    try:
        yield b.start()
    finally:
        b.stop()


def tls_trunk(baresip, **kw) -> TrunkSpec:
    return TrunkSpec("carrier", f"sip:127.0.0.1:{baresip.tls_port};transport=tls",
                     callee_stream="sdes", secure_media="mandatory", **kw)


def test_outgoing_call_over_tls_audio_both_ways(workdir, baresip_tls, pki):
    """Browser -> gateway -> baresip over SIP/TLS with the CA's ca_file:
    the INVITE (with its a=crypto keys) travels only over TLS, Via says
    TLS, and the tone crosses both ways."""
    gens = _gateway(workdir, tls_trunk(baresip_tls, ca_file=str(pki.ca)), tls=True)
    gw = next(gens)
    try:
        baresip_tls.peers = {f"127.0.0.1:{gw.sip_tls_port}"}
        connected, result = asyncio.run(_audio_call(gw, baresip_tls))
        invite = baresip_tls.received("INVITE")[0]
        assert invite.transport == "TLS", invite.text
        assert "SIP/2.0/TLS" in invite.text, invite.text
        assert f";transport=tls" in invite.text.lower(), "Contact should name transport=tls"
        assert "a=crypto:" in invite.text
        assert all(m.transport == "TLS" for m in baresip_tls.sip_messages()), \
            "some SIP travelled outside TLS"
        _check_media(result, baresip_tls, workdir)
        assert "SIP TLS" in gw.log() or "TLS" in gw.log()
    finally:
        next(gens, None)


def test_incoming_call_over_tls_audio_both_ways(workdir, baresip_tls, pki):
    """baresip dials the account at the gateway's sips port; the session
    accepts; audio both ways; the BYE goes back over TLS."""
    gens = _gateway(workdir, tls_trunk(baresip_tls, ca_file=str(pki.ca)), tls=True)
    gw = next(gens)
    try:
        baresip_tls.peers = {f"127.0.0.1:{gw.sip_tls_port}"}
        uri = f"sip:{gw.account}@127.0.0.1:{gw.sip_tls_port};transport=tls"
        r = asyncio.run(_incoming_audio_call(gw, baresip_tls, n_sessions=1, uri=uri))
        assert r["invite"].transport == "TLS", r["invite"].text
        assert r["bye"].transport == "TLS", r["bye"].text
        res = r["result"]
        save_result(workdir, browser=res)
        assert res["received"] > 100 and res["sent"] > 100, res
        _check_media(res, baresip_tls, workdir)
    finally:
        next(gens, None)


def _failed_call(gw, trunk):
    async def run():
        peer = await BrowserPeer(gw.base_url, gw.login()).connect()
        try:
            t0 = time.monotonic()
            msg = await peer.call(TRUNK_NUMBER, timeout=25)
            return msg, time.monotonic() - t0
        finally:
            await peer.close()
    return asyncio.run(run())


@pytest.mark.parametrize("how", ["wrong_ca", "wrong_pin"])
def test_untrusted_trunk_certificate_fails_fast_and_nothing_is_sent(workdir, baresip_tls, pki, how):
    """The trunk's certificate does not verify (another CA; another
    certificate's fingerprint pinned): the browser gets a hangup naming the
    certificate within 20 s, the gateway logs it, and baresip receives no
    SIP at all on UDP, TCP or TLS."""
    other = make_pki(workdir, "other")
    if how == "wrong_ca":
        trunk = tls_trunk(baresip_tls, ca_file=str(other.ca))
    else:
        trunk = tls_trunk(baresip_tls, tls_verify="pinned", tls_fingerprint=other.fingerprint)
    gens = _gateway(workdir, trunk, tls=True)
    gw = next(gens)
    try:
        msg, took = _failed_call(gw, baresip_tls)
        save_result(workdir, hangup=msg, seconds=took)
        assert msg["type"] == "hangup", msg
        assert took < 20, f"the failed call took {took:.1f} s"
        assert "certificate" in str(msg.get("reason", "")).lower(), msg
        assert "certificate not accepted" in gw.log(), gw.log()[-3000:]
        time.sleep(0.5)
        assert baresip_tls.sip_messages() == [], \
            f"baresip received SIP although its certificate was refused ({baresip_tls.log_path})"
        assert gw.metrics().sum("gateway_sip_tls_failures_total") >= 1
    finally:
        next(gens, None)


def test_pinned_trunk_certificate_carries_the_call(workdir, baresip_tls, pki):
    """tls_verify = "pinned" with the trunk certificate's own fingerprint
    (no CA at all): the call connects over TLS."""
    trunk = tls_trunk(baresip_tls, tls_verify="pinned", tls_fingerprint=pki.fingerprint)
    gens = _gateway(workdir, trunk, tls=True)
    gw = next(gens)
    try:
        baresip_tls.peers = {f"127.0.0.1:{gw.sip_tls_port}"}
        connected, result = asyncio.run(_audio_call(gw, baresip_tls))
        assert connected["type"] == "connected"
        assert baresip_tls.received("INVITE")[0].transport == "TLS"
    finally:
        next(gens, None)


def _closed_within(sock, seconds: float) -> float:
    """Seconds until the peer closes `sock` (reads until EOF)."""
    t0 = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except (ConnectionResetError, ssl.SSLError):
        pass
    return time.monotonic() - t0


def test_stalled_tcp_and_tls_connections_are_closed(workdir, baresip_tls, pki):
    """[sip.limits] message_seconds = 2, idle_seconds = 3: half a message
    then silence is closed after ~2 s, on TCP and TLS; a TLS handshake
    never finished likewise; a whole message then silence after ~3 s."""
    gens = _gateway(workdir, tls_trunk(baresip_tls, ca_file=str(pki.ca)), tls=True, tcp=True,
                    sip_limits={"message_seconds": 2, "idle_seconds": 3})
    gw = next(gens)
    half = (b"OPTIONS sip:alice@127.0.0.1 SIP/2.0\r\n"
            b"Via: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKstall\r\n")
    whole = (b"OPTIONS sip:alice@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:9;branch=z9hG4bKidle\r\n"
             b"From: <sip:t@127.0.0.1>;tag=1\r\nTo: <sip:alice@127.0.0.1>\r\nCall-ID: idle-1\r\n"
             b"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
    timings = {}
    try:
        tcp = socket.create_connection(("127.0.0.1", gw.sip_tcp_port))
        tcp.sendall(half)
        timings["tcp_half"] = _closed_within(tcp, 10)
        raw = socket.create_connection(("127.0.0.1", gw.sip_tls_port))
        timings["tls_no_handshake"] = _closed_within(raw, 10)
        tls = unverified_ssl().wrap_socket(socket.create_connection(("127.0.0.1", gw.sip_tls_port)),
                                           server_hostname="127.0.0.1")
        tls.sendall(half)
        timings["tls_half"] = _closed_within(tls, 10)
        tls = unverified_ssl().wrap_socket(socket.create_connection(("127.0.0.1", gw.sip_tls_port)),
                                           server_hostname="127.0.0.1")
        tls.sendall(whole)
        timings["tls_idle"] = _closed_within(tls, 10)
        save_result(workdir, **timings)
        for k in ("tcp_half", "tls_no_handshake", "tls_half"):
            assert 1.5 <= timings[k] < 5, timings
        assert 2.5 <= timings["tls_idle"] < 6, timings
        assert gw.metrics().sum("gateway_sip_connections_timed_out_total") >= 4
    finally:
        next(gens, None)


def test_malformed_corpus_over_tls_during_a_tls_call(workdir, baresip_tls, pki, monkeypatch):
    """The malformed-SIP corpus of test_sip_malformed.py, each message on a
    fresh TLS connection to sip.tls_listen, during a call carried over TLS:
    every message gets the answer it gets over UDP, or (where framing is all
    a stream has: Content-Length problems) its connection is closed; nothing
    else is answered; the call keeps its audio; /healthz stays 200; a valid
    OPTIONS afterwards is answered 200."""
    from test_sip_malformed import (TRANSPORT_DEBUG, _end_call, _hangups, _start_call, judge,
                                    live_dialog, tcp_closed_by_peer, tcp_read_reply, torture_cases)
    monkeypatch.setenv("RUST_LOG", f"info,{TRANSPORT_DEBUG}")
    gens = _gateway(workdir, tls_trunk(baresip_tls, ca_file=str(pki.ca)), tls=True,
                    sip_limits={"message_seconds": 2})
    gw = next(gens)
    baresip_tls.peers = {f"127.0.0.1:{gw.sip_tls_port}"}
    ctx = unverified_ssl()

    def connect():
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", gw.sip_tls_port), timeout=5),
                            server_hostname="127.0.0.1")
        return s, "127.0.0.1:%d" % s.getsockname()[1]

    def battery(live):
        _, me = connect()
        cases = torture_cases(me, f"sip:gw@127.0.0.1:{gw.sip_tls_port};transport=tls", live)
        outcome = {}
        for case in cases:
            s, _ = connect()
            s.sendall(case.data)
            wait = 2.5 if case.expect and (case.expect - {None}) else 1.0
            case.got = tcp_read_reply(s, wait)
            while case.got is not None and 100 <= case.got.status < 200:  # 100 Trying: the final follows
                case.got = tcp_read_reply(s, wait)
            closed = case.got is None and tcp_closed_by_peer(s, 3.0)
            s.close()
            case.dropped_lines = 1  # silence over a stream is judged by the connection, below
            judge(case)
            framing = case.name.startswith("content_length")
            if not case.ok and case.got is None and (closed or framing):
                case.ok, case.problem = True, ""
            outcome[case.name] = {"got": case.got.first_line if case.got else ("closed" if closed else "silence"),
                                  "ok": case.ok, "problem": case.problem}
        return cases, outcome

    async def run():
        peer = await _start_call(gw, baresip_tls)
        try:
            live = live_dialog(baresip_tls)
            cases, outcome = await asyncio.to_thread(battery, live)
            before = peer.packets_received
            await peer.receive(before + 100, timeout=10)
            hangups = _hangups(peer)
            health = gw.http("GET", "/healthz", timeout=5)[0]
            s, me = connect()
            s.sendall(("OPTIONS sip:gw@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS %s;branch=z9hG4bK-after\r\n"
                       "From: <sip:t@127.0.0.1>;tag=a\r\nTo: <sip:gw@127.0.0.1>\r\nCall-ID: after-corpus\r\n"
                       "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n" % me).encode())
            after = tcp_read_reply(s, 5.0)
            s.close()
            await _end_call(peer, baresip_tls)
            return cases, outcome, hangups, health, after
        finally:
            await peer.close()

    try:
        cases, outcome, hangups, health, after = asyncio.run(run())
        save_result(workdir, cases=outcome, health=health, after=after.first_line if after else None)
        bad = {n: o for n, o in outcome.items() if not o["ok"]}
        assert not bad, f"over TLS: {bad}"
        assert len(cases) >= 25
        answered = sum(1 for o in outcome.values() if o["got"].startswith("SIP/2.0"))
        assert answered >= len(cases) // 2, outcome
        assert not hangups, hangups
        assert health == 200
        assert after is not None and after.status == 200, after
    finally:
        next(gens, None)
