"""Incoming calls: a SIP trunk calls an account, every browser session of
that account rings, the first `accept` wins (PROTOCOL.md sections 3 and 4).

The callers are real SIP stacks nobody here wrote: baresip (dialling over
its ctrl_tcp `dial`, SDES-SRTP with mediaenc=srtp-mand or plain RTP/AVP)
and SIPp 3.6.1 (sipp/uac_invite_alice.xml, sipp/uac_invite_answered.xml:
RTP/AVP PCMU; sipp/uac_invite_sdes.xml: RTP/SAVP with two a=crypto). The browsers are aiortc peers (harness.BrowserPeer) signed
in as the gateway's account, answering the gateway's offer.

Each test starts its own gateway and peers on free ports and leaves configs,
logs and SIP traces in tests/artifacts/<test name>/: gateway/gateway.log,
trunk/baresip.log (baresip -s trace), trunk/dump/*-dec.wav (what baresip
heard), sipp_uac/messages.log (SIPp -trace_msg), result.json.
"""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from conftest import BOTH_PORT_MODES, _gateway
from harness import (
    GWT_HOST,
    TONE_RMS_MIN,
    BrowserPeer,
    Gateway,
    SippUac,
    TrunkSpec,
    save_result,
    sip_header,
    wait_until,
)
from test_calls import _check_media

pytestmark = pytest.mark.gateway

ACCOUNT = "alice"  # harness.Gateway's account; also its SIP user for inbound calls
SUITE_80 = "AES_CM_128_HMAC_SHA1_80"


# --------------------------------------------------------------------------
# fixtures


@pytest.fixture
def start_gateway(workdir):
    """Starts a gateway with options (ring_timeout, a trunk's reject_code);
    at teardown SIGTERM must give exit 0 and the log no panic."""
    started: list[Gateway] = []

    def start(trunk: TrunkSpec, **kw) -> Gateway:
        gw = Gateway(workdir, trunk=trunk, **kw)
        started.append(gw)
        return gw.start()

    yield start
    for gw in started:
        code = gw.stop()
        assert code == 0, f"gateway did not exit 0 on SIGTERM (exit {code}); log: {gw.log_path}"
        assert "panicked" not in gw.log(), f"gateway panicked; log: {gw.log_path}"


@pytest.fixture
def start_sipp(workdir):
    started: list[SippUac] = []

    def start(scenario: str, gw: Gateway, service: str = ACCOUNT, **kw) -> SippUac:
        s = SippUac(workdir, scenario, remote=f"127.0.0.1:{gw.sip_port}", service=service, **kw)
        started.append(s)
        return s.start()

    yield start
    for s in started:
        s.stop()


def sdes_trunk(baresip, **kw) -> TrunkSpec:
    return TrunkSpec("carrier", f"sip:127.0.0.1:{baresip.sip_port};transport=udp",
                     callee_stream="sdes", secure_media="mandatory", **kw)


def plain_trunk(uri: str, **kw) -> TrunkSpec:
    return TrunkSpec("carrier", uri, callee_stream="decrypted", secure_media="forbidden", **kw)


@pytest.fixture
def gateway_sdes_ring3(workdir, baresip_sdes):
    """gateway_sdes with [sip] ring_timeout = 3."""
    yield from _gateway(workdir, sdes_trunk(baresip_sdes), ring_timeout=3)


@pytest.fixture
def gateway_for_sipp(workdir):
    """A plain-RTP trunk (SIPp offers RTP/AVP); its uri points at a port
    nobody listens on: SIPp calls in, nothing is called out."""
    from harness import free_port
    yield from _gateway(workdir, plain_trunk(f"sip:127.0.0.1:{free_port()};transport=udp"))


# --------------------------------------------------------------------------
# SDP and SIP helpers

STATIC_PT = {"0": "PCMU", "3": "GSM", "4": "G723", "8": "PCMA", "9": "G722", "18": "G729"}


def sdp_body(text: str) -> str:
    """The SDP of a traced SIP message (from its v= line on)."""
    m = re.search(r"^v=0.*", text, re.M | re.S)
    return m.group(0) if m else ""


def sdp_codecs(sdp: str) -> set[str]:
    """Encoding names (upper case) of the audio m= line's payload types."""
    m = re.search(r"^m=audio \d+ \S+ ([0-9 ]+)", sdp, re.M)
    assert m, f"no m=audio line in:\n{sdp}"
    rtpmap = {pt: name.upper() for pt, name in re.findall(r"^a=rtpmap:(\d+) ([^/\s]+)", sdp, re.M)}
    return {rtpmap.get(pt, STATIC_PT.get(pt, f"PT{pt}")) for pt in m.group(1).split()}


def sdp_cryptos(sdp: str) -> list[tuple[str, str, str]]:
    """(tag, suite, key params) of every a=crypto line."""
    return re.findall(r"^a=crypto:(\d+) (\S+) (\S+)", sdp, re.M)


def check_incoming(msg: dict, caller: str, trunk_offer: str):
    """The `incoming` message per PROTOCOL.md: id, from naming the caller,
    verstat, and an ICE-lite DTLS-SRTP offer with rtcp-mux whose codecs are
    a subset of what the trunk offered."""
    assert msg.get("type") == "incoming", msg
    assert msg.get("id"), msg
    assert caller in str(msg.get("from", "")), f"incoming 'from' {msg.get('from')!r} does not name {caller!r}"
    assert "verstat" in msg, f"incoming without verstat: {sorted(msg)}"
    sdp = msg.get("sdp") or ""
    for line in ("a=ice-lite", "a=setup:actpass", "a=rtcp-mux", "a=ice-ufrag:", "a=ice-pwd:"):
        assert re.search(rf"^{re.escape(line)}", sdp, re.M), f"gateway offer lacks {line}:\n{sdp}"
    assert re.search(r"^a=fingerprint:sha-256 ([0-9A-F]{2}:){31}[0-9A-F]{2}\s*$", sdp, re.M | re.I), sdp
    assert re.search(r"^m=audio \d+ UDP/TLS/RTP/SAVPF? ", sdp, re.M), sdp
    assert re.search(rf"^a=candidate:.* {re.escape(GWT_HOST)} \d+ typ host", sdp, re.M), \
        f"gateway offer has no host candidate on {GWT_HOST}:\n{sdp}"
    offered, trunk = sdp_codecs(sdp), sdp_codecs(trunk_offer)
    assert offered and offered <= trunk, f"gateway offered {offered} to the browser, the trunk offered {trunk}"


def final_response(msgs) -> "object":
    return next((m for m in msgs if m.status >= 200 and (sip_header(m.text, "CSeq") or "").endswith("INVITE")),
                None)


def _cseq_method(m) -> str:
    return (sip_header(m.text, "CSeq") or " ").split()[-1]


async def sessions(gw: Gateway, n: int) -> list[BrowserPeer]:
    """n signaling sessions of the account, each live on the gateway's side."""
    peers = []
    for _ in range(n):
        p = await BrowserPeer(gw.base_url, gw.login()).connect()
        peers.append(p)
        await p.barrier()
    return peers


async def close_all(peers):
    for p in peers:
        await p.close()


def gw_uri(gw: Gateway, user: str = ACCOUNT) -> str:
    return f"sip:{user}@127.0.0.1:{gw.sip_port}"


# --------------------------------------------------------------------------
# 1, 2. baresip calls alice, two sessions ring, one answers: audio both ways


async def _incoming_audio_call(gw: Gateway, trunk, n_sessions: int = 2, uri: str = ""):
    """baresip dials the account; every session gets `incoming`; the first
    accepts, the others must get hangup 200 "answered elsewhere"; media
    both ways measured; the browser hangs up and baresip must get BYE."""
    peers = await sessions(gw, n_sessions)
    winner, others = peers[0], peers[1:]
    try:
        t_dial = time.monotonic()
        trunk.dial(uri or gw_uri(gw))
        incoming = [await p.wait_incoming(10) for p in peers]
        t_incoming = time.monotonic()
        invite = wait_until(lambda: (trunk.sent("INVITE") or [None])[0], 5, "baresip's INVITE in its trace")
        for msg in incoming:
            check_incoming(msg, trunk.user, sdp_body(invite.text))
        trying = trunk.wait_received(status=100, timeout=5)
        ringing = trunk.wait_received(status=180, timeout=5)

        t_accept = time.monotonic()
        answer_sdp = await winner.accept()
        connected = await winner.wait_for({"connected"}, 20, call_id=winner.call_id)
        t_connected = time.monotonic()
        assert connected["type"] == "connected", f"expected connected, got {connected}"
        elsewhere = [await p.wait_for({"hangup"}, 10) for p in others]
        trunk.wait_established()
        await winner.receive(150, timeout=20)  # ~3 s of 20 ms packets
        trunk.wait_heard_seconds(2.0, timeout=20, gateway=gw)
        received, sent = await winner.stats()
        result = {"received": received, "counted": winner.packets_received, "sent": sent,
                  "rms": winner.sink.rms, "loud_frames": winner.sink.loud_frames,
                  "ssrcs": dict(winner.rtp_by_ssrc)}
        t_hangup = time.monotonic()
        await winner.hangup()
        bye = trunk.wait_bye()
        t_bye = time.monotonic()
        # the losing sessions saw nothing but their ring and its end
        for p in others:
            await p.barrier()
            kinds = [m["type"] for m in p.messages if m["type"] not in ("error",)]
            assert kinds == ["incoming", "hangup"], f"a losing session got {p.messages}"
        timing = {
            "dial_to_incoming_s": round(t_incoming - t_dial, 3),
            "dial_to_connected_s": round(t_connected - t_dial, 3),
            # aiortc's setRemoteDescription .. setLocalDescription (it gathers)
            "browser_answer_build_s": round(winner.accept_sent_at - t_accept, 3),
            # from the `accept` message to `connected` (ICE, DTLS, 200, ACK)
            "accept_to_connected_s": round(t_connected - winner.accept_sent_at, 3),
            "hangup_to_bye_s": round(t_bye - t_hangup, 3),
        }
        return dict(incoming=incoming, connected=connected, elsewhere=elsewhere, result=result,
                    timing=timing, invite=invite, trying=trying, ringing=ringing, answer_sdp=answer_sdp, bye=bye)
    finally:
        await close_all(peers)


def _check_answered_elsewhere(r):
    for h in r["elsewhere"]:
        assert h["type"] == "hangup", h
        assert h.get("code") == 200, f"losing session's hangup: {h}"
        assert "elsewhere" in str(h.get("reason", "")).lower(), f"losing session's hangup: {h}"


def _gateway_200(trunk):
    ok = [m for m in trunk.received(status=200) if _cseq_method(m) == "INVITE" and m.sdp_media()]
    assert ok, f"baresip received no 200 OK with SDP for its INVITE ({trunk.log_path})"
    return ok[0]


@BOTH_PORT_MODES
def test_incoming_sdes_two_sessions(workdir, gateway_sdes, baresip_sdes):
    """baresip (srtp-mand) calls alice, who has two sessions: both ring
    (after 100 and 180 at baresip), the first accepts; its `connected`
    names dtls-srtp and sdes-srtp AES_CM_128_HMAC_SHA1_80; the gateway's 200
    answers SDES with one a=crypto of baresip's offer (the trunk's first
    suite, same tag, a fresh key); the tone crosses both ways; the other
    session gets hangup 200 "answered elsewhere"; the browser's hangup
    reaches baresip as BYE."""
    gw, trunk = gateway_sdes, baresip_sdes
    r = asyncio.run(_incoming_audio_call(gw, trunk))
    ok = _gateway_200(trunk)
    offer_cryptos, answer_cryptos = sdp_cryptos(sdp_body(r["invite"].text)), sdp_cryptos(sdp_body(ok.text))
    save_result(workdir, timing=r["timing"], connected=r["connected"], elsewhere=r["elsewhere"],
                incoming_from=[m.get("from") for m in r["incoming"]],
                offer_cryptos=[c[:2] for c in offer_cryptos], answer_cryptos=[c[:2] for c in answer_cryptos])
    security = r["connected"].get("security") or {}
    assert "dtls-srtp" in str(security.get("browser", "")).lower(), security
    assert str(security.get("trunk", "")).lower().startswith("sdes-srtp"), security
    assert SUITE_80.lower() in str(security.get("trunk", "")).lower(), security
    _check_answered_elsewhere(r)

    assert r["invite"].sdp_media()[2] == "RTP/SAVP", r["invite"].text
    addr, _, profile = ok.sdp_media()
    assert (addr, profile) == (GWT_HOST, "RTP/SAVP"), ok.text
    assert len(answer_cryptos) == 1, f"the gateway's answer must hold one a=crypto:\n{ok.text}"
    tag, suite, key = answer_cryptos[0]
    offered = {s: (t, k) for t, s, k in offer_cryptos}
    assert suite == SUITE_80 and SUITE_80 in offered, (answer_cryptos, offer_cryptos)
    assert tag == offered[suite][0], f"answer tag {tag} != the offer's tag {offered[suite][0]} for {suite}"
    assert key not in [k for _, _, k in offer_cryptos], "the gateway answered with baresip's own key"
    assert trunk.srtp_enabled(), f"baresip did not enable SRTP ({trunk.log_path})"
    _check_media(r["result"], trunk, workdir)


def test_incoming_plain_rtp(workdir, gateway_plain, baresip_plain):
    """The same with a plain baresip (RTP/AVP offer) and a trunk with
    secure_media forbidden: the gateway answers RTP/AVP without a=crypto,
    `connected` says the trunk leg is unencrypted, audio both ways."""
    gw, trunk = gateway_plain, baresip_plain
    r = asyncio.run(_incoming_audio_call(gw, trunk))
    ok = _gateway_200(trunk)
    save_result(workdir, timing=r["timing"], connected=r["connected"], elsewhere=r["elsewhere"])
    security = r["connected"].get("security") or {}
    assert "dtls-srtp" in str(security.get("browser", "")).lower(), security
    assert str(security.get("trunk", "")).lower().split()[0:1] == ["rtp"], security
    _check_answered_elsewhere(r)
    assert r["invite"].sdp_media()[2] == "RTP/AVP", r["invite"].text
    addr, _, profile = ok.sdp_media()
    assert (addr, profile) == (GWT_HOST, "RTP/AVP"), ok.text
    assert not sdp_cryptos(sdp_body(ok.text)), ok.text
    _check_media(r["result"], trunk, workdir)


# --------------------------------------------------------------------------
# 3. the trunk hangs up


def test_incoming_bye_from_trunk(workdir, gateway_sdes, baresip_sdes):
    """After an answered incoming call carried audio, baresip hangs up: its
    BYE is answered 200 and the browser gets `hangup` code 200."""
    gw, trunk = gateway_sdes, baresip_sdes

    async def run():
        (peer,) = await sessions(gw, 1)
        try:
            trunk.dial(gw_uri(gw))
            await peer.wait_incoming(10)
            await peer.accept()
            connected = await peer.wait_for({"connected"}, 20, call_id=peer.call_id)
            assert connected["type"] == "connected", connected
            trunk.wait_established()
            await peer.receive(100, timeout=20)
            trunk.wait_heard_seconds(1.0, timeout=20)
            t0 = time.monotonic()
            assert trunk.command("hangup").get("ok")
            hangup = await peer.wait_for({"hangup"}, 10)
            return hangup, time.monotonic() - t0, peer.packets_received, peer.sink.rms
        finally:
            await peer.close()

    hangup, elapsed, packets, level = asyncio.run(run())
    ok_bye = wait_until(lambda: [m for m in trunk.received(status=200) if _cseq_method(m) == "BYE"], 10,
                        f"the gateway's 200 OK for baresip's BYE ({trunk.log_path})")
    save_result(workdir, hangup=hangup, bye_to_hangup_s=round(elapsed, 3), browser_packets=packets,
                browser_rms=level)
    assert trunk.sent("BYE"), "baresip sent no BYE"
    assert ok_bye
    assert hangup["type"] == "hangup" and hangup.get("code") == 200, f"browser's hangup: {hangup}"
    assert packets >= 100 and level > TONE_RMS_MIN, (packets, level)


# --------------------------------------------------------------------------
# 4. every session rejects


@pytest.mark.parametrize("reject_code", [None, 603], ids=["default_486", "reject_code_603"])
def test_incoming_rejected_by_every_session(workdir, baresip_sdes, start_gateway, reject_code):
    """Two sessions ring; the first rejects (its hangup: 486, "declined"),
    the call goes on ringing for the second (no final answer at baresip, no
    hangup there); the second rejects: baresip gets 486 (603 with the
    trunk's reject_code = 603)."""
    trunk = baresip_sdes
    gw = start_gateway(sdes_trunk(trunk, reject_code=reject_code))
    expected = reject_code or 486

    async def run():
        a, b = await sessions(gw, 2)
        try:
            trunk.dial(gw_uri(gw))
            await a.wait_incoming(10)
            await b.wait_incoming(10)
            trunk.wait_received(status=180, timeout=5)
            await a.reject()
            first = await a.wait_for({"hangup"}, 10)
            await b.barrier()
            still_ringing = (final_response(trunk.received()) is None
                             and not any(m["type"] == "hangup" for m in b.messages))
            await b.reject()
            second = await b.wait_for({"hangup"}, 10)
            return first, second, still_ringing
        finally:
            await close_all([a, b])

    first, second, still_ringing = asyncio.run(run())
    final = trunk.wait_received(status=expected, timeout=10)
    finals = [m.status for m in trunk.received() if m.status >= 200 and _cseq_method(m) == "INVITE"]
    save_result(workdir, first=first, second=second, still_ringing_after_first=still_ringing,
                trunk_finals=finals)
    assert still_ringing, f"one rejection of two ended the call: trunk finals {finals}"
    for h in (first, second):
        assert h["type"] == "hangup" and h.get("code") == 486, f"rejecting session's hangup: {h}"
        assert "declin" in str(h.get("reason", "")).lower(), f"rejecting session's hangup: {h}"
    assert final.status == expected and set(finals) == {expected}, finals
    assert trunk.sent("ACK"), "baresip did not ACK the rejection"


# --------------------------------------------------------------------------
# 5. nobody to ring


@pytest.mark.parametrize("case", ["no_session", "unknown_user"])
def test_incoming_nobody_to_ring(workdir, gateway_sdes, baresip_sdes, case):
    """alice has no session: 480. A Request-URI user that is no account
    (while alice has a session, which must not ring): 404."""
    gw, trunk = gateway_sdes, baresip_sdes
    expected = 480 if case == "no_session" else 404

    async def run():
        peers = [] if case == "no_session" else await sessions(gw, 1)
        try:
            t0 = time.monotonic()
            trunk.dial(gw_uri(gw, ACCOUNT if case == "no_session" else "nobody"))
            final = await asyncio.to_thread(
                wait_until, lambda: final_response(trunk.received()), 10, f"a final answer at baresip ({trunk.log_path})")
            elapsed = time.monotonic() - t0
            for p in peers:
                await p.barrier()
            return final, elapsed, [m for p in peers for m in p.messages if m["type"] != "error"]
        finally:
            await close_all(peers)

    final, elapsed, seen = asyncio.run(run())
    save_result(workdir, final=final.first_line, elapsed_s=round(elapsed, 3), session_saw=seen)
    assert final.status == expected, f"expected {expected}, baresip got {final.first_line}"
    assert not seen, f"alice's session got {seen} for a call to another user"
    assert trunk.sent("ACK"), "baresip did not ACK the final answer"


# --------------------------------------------------------------------------
# 6. CANCEL while ringing


def test_incoming_cancel_while_ringing(workdir, gateway_sdes, baresip_sdes):
    """baresip hangs up before anyone accepts: its CANCEL is answered 200,
    the INVITE 487, and both ringing sessions get hangup 487."""
    gw, trunk = gateway_sdes, baresip_sdes

    async def run():
        a, b = await sessions(gw, 2)
        try:
            trunk.dial(gw_uri(gw))
            await a.wait_incoming(10)
            await b.wait_incoming(10)
            trunk.wait_received(status=180, timeout=5)
            t0 = time.monotonic()
            assert trunk.command("hangup").get("ok")
            ha = await a.wait_for({"hangup"}, 10)
            hb = await b.wait_for({"hangup"}, 10)
            return ha, hb, time.monotonic() - t0
        finally:
            await close_all([a, b])

    ha, hb, elapsed = asyncio.run(run())
    final = trunk.wait_received(status=487, timeout=10)
    cancel_ok = [m for m in trunk.received(status=200) if _cseq_method(m) == "CANCEL"]
    save_result(workdir, hangups=[ha, hb], cancel_to_hangups_s=round(elapsed, 3),
                trunk_received=[m.first_line for m in trunk.received()])
    assert trunk.sent("CANCEL"), f"baresip sent no CANCEL ({trunk.log_path})"
    assert cancel_ok, "the gateway did not answer the CANCEL 200"
    assert final.status == 487
    for h in (ha, hb):
        assert h["type"] == "hangup" and h.get("code") == 487, f"session's hangup after CANCEL: {h}"


# --------------------------------------------------------------------------
# 7. nobody answers


def test_incoming_ring_timeout(workdir, gateway_sdes_ring3, baresip_sdes):
    """[sip] ring_timeout = 3: two sessions ring, nobody answers; after ~3 s
    baresip gets 408 and both sessions hangup 408."""
    gw, trunk = gateway_sdes_ring3, baresip_sdes

    async def run():
        a, b = await sessions(gw, 2)
        try:
            trunk.dial(gw_uri(gw))
            await a.wait_incoming(10)
            await b.wait_incoming(10)
            t0 = time.monotonic()
            ha = await a.wait_for({"hangup"}, 15)
            hb = await b.wait_for({"hangup"}, 5)
            return ha, hb, time.monotonic() - t0
        finally:
            await close_all([a, b])

    ha, hb, elapsed = asyncio.run(run())
    final = wait_until(lambda: final_response(trunk.received()), 5, f"a final answer at baresip ({trunk.log_path})")
    save_result(workdir, hangups=[ha, hb], ring_seconds=round(elapsed, 3), final=final.first_line)
    assert final.status == 408, f"baresip got {final.first_line}, expected 408"
    for h in (ha, hb):
        assert h["type"] == "hangup" and h.get("code") == 408, f"session's hangup at ring timeout: {h}"
    assert 2.5 <= elapsed <= 6.0, f"rang {elapsed:.1f}s with ring_timeout = 3"


# --------------------------------------------------------------------------
# 8. SIPp as the caller (RTP/AVP, PCMU only)


def _sipp_invite_and_final(sipp):
    invite = sipp.sent("INVITE")
    assert invite, f"sipp sent no INVITE ({sipp.msg_path})"
    finals = [m for m in sipp.received() if m.status >= 200]
    return invite[0], finals


@pytest.mark.parametrize("case", ["reject_486", "unknown_user_404", "no_session_480"])
def test_sipp_caller_not_answered(workdir, gateway_for_sipp, start_sipp, case):
    """SIPp (uac_invite_alice.xml) calls: reject_486 - alice's one session
    gets `incoming` (PCMU only, as SIPp offered), rejects, SIPp gets 486;
    unknown_user_404 - sip:nobody@, 404 and alice's session does not ring;
    no_session_480 - alice has no session, 480. SIPp ACKs and exits 0."""
    gw = gateway_for_sipp
    expected = {"reject_486": 486, "unknown_user_404": 404, "no_session_480": 480}[case]

    async def run():
        peers = [] if case == "no_session_480" else await sessions(gw, 1)
        try:
            sipp = start_sipp("uac_invite_alice.xml", gw, service="nobody" if case == "unknown_user_404" else ACCOUNT)
            incoming = hangup = None
            if case == "reject_486":
                incoming = await peers[0].wait_incoming(10)
                await peers[0].reject()
                hangup = await peers[0].wait_for({"hangup"}, 10)
            code = await asyncio.to_thread(sipp.wait, 20)
            for p in peers:
                await p.barrier()
            return sipp, code, incoming, hangup, [m for p in peers for m in p.messages if m["type"] != "error"]
        finally:
            await close_all(peers)

    sipp, code, incoming, hangup, seen = asyncio.run(run())
    invite, finals = _sipp_invite_and_final(sipp)
    save_result(workdir, sipp_exit=code, sipp_received=[m.first_line for m in sipp.received()],
                session_saw=seen, hangup=hangup)
    assert [m.status for m in finals][:1] == [expected], \
        f"SIPp got {[m.first_line for m in finals]}, expected {expected} ({sipp.msg_path})"
    assert code == 0, f"sipp exit {code} ({sipp.msg_path}, {sipp.err_path})"
    assert sipp.sent("ACK"), "sipp sent no ACK"
    if case == "reject_486":
        check_incoming(incoming, "sipp", sdp_body(invite.text))
        assert sdp_codecs(incoming["sdp"]) == {"PCMU"}, incoming["sdp"]
        assert hangup["type"] == "hangup" and hangup.get("code") == 486, hangup
        assert "declin" in str(hangup.get("reason", "")).lower(), hangup
        assert [m["type"] for m in seen] == ["incoming", "hangup"], seen
    else:
        assert not seen, f"alice's session got {seen}"


def test_sipp_caller_answered_echo(workdir, gateway_for_sipp, start_sipp):
    """SIPp (uac_invite_answered.xml, -rtp_echo) calls alice, who accepts:
    200 OK with an RTP/AVP PCMU answer on public_ip, ACK, `connected` with an
    unencrypted trunk leg; SIPp sends the browser's RTP straight back, so the
    browser hears its own tone after crossing the gateway both ways; the
    browser hangs up and SIPp gets BYE (exit 0)."""
    gw = gateway_for_sipp

    async def run():
        (peer,) = await sessions(gw, 1)
        try:
            t_dial = time.monotonic()
            sipp = start_sipp("uac_invite_answered.xml", gw, extra=["-rtp_echo"])
            incoming = await peer.wait_incoming(10)
            t_accept = time.monotonic()
            await peer.accept()
            connected = await peer.wait_for({"connected"}, 20, call_id=peer.call_id)
            t_connected = time.monotonic()
            assert connected["type"] == "connected", f"expected connected, got {connected}"
            await peer.receive(150, timeout=20)
            received, sent = await peer.stats()
            await peer.hangup()
            code = await asyncio.to_thread(sipp.wait, 20)
            return dict(sipp=sipp, code=code, incoming=incoming, connected=connected, received=received,
                        sent=sent, rms=peer.sink.rms, ssrcs=dict(peer.rtp_by_ssrc),
                        timing={"dial_to_connected_s": round(t_connected - t_dial, 3),
                                "browser_answer_build_s": round(peer.accept_sent_at - t_accept, 3),
                                "accept_to_connected_s": round(t_connected - peer.accept_sent_at, 3)})
        finally:
            await peer.close()

    r = asyncio.run(run())
    sipp = r["sipp"]
    invite, _ = _sipp_invite_and_final(sipp)
    ok = [m for m in sipp.received(status=200) if _cseq_method(m) == "INVITE"]
    save_result(workdir, sipp_exit=r["code"], connected=r["connected"], timing=r["timing"],
                browser={k: r[k] for k in ("received", "sent", "rms", "ssrcs")},
                sipp_received=[m.first_line for m in sipp.received()])
    check_incoming(r["incoming"], "sipp", sdp_body(invite.text))
    assert ok, f"sipp got no 200 OK ({sipp.msg_path})"
    answer = sdp_body(ok[0].text)
    assert ok[0].sdp_media() and ok[0].sdp_media()[0] == GWT_HOST and ok[0].sdp_media()[2] == "RTP/AVP", ok[0].text
    assert "PCMU" in sdp_codecs(answer) and not sdp_cryptos(answer), answer
    security = r["connected"].get("security") or {}
    assert str(security.get("trunk", "")).lower().split()[0:1] == ["rtp"], security
    assert "dtls-srtp" in str(security.get("browser", "")).lower(), security
    assert r["received"] > 100 and r["sent"] > 100, (r["received"], r["sent"])
    assert r["rms"] > TONE_RMS_MIN, f"browser heard RMS {r['rms']:.0f} through SIPp's echo"
    assert sipp.received("BYE"), f"sipp got no BYE ({sipp.msg_path})"
    assert r["code"] == 0, f"sipp exit {r['code']} ({sipp.msg_path}, {sipp.err_path})"


@pytest.mark.parametrize("suites", [[SUITE_80, "AES_CM_128_HMAC_SHA1_32"], ["AES_CM_128_HMAC_SHA1_32", SUITE_80]],
                         ids=["trunk_prefers_80", "trunk_prefers_32"])
def test_sipp_sdes_suite_follows_trunk_order(workdir, start_gateway, start_sipp, suites):
    """SIPp (uac_invite_sdes.xml) offers RTP/SAVP with a=crypto tag 1 _32
    then tag 2 _80; alice accepts. The gateway's 200 answers with one
    a=crypto: the first of the trunk's srtp_suites (not the offer's first),
    with the offer's tag for that suite and a key of its own; `connected`
    names that suite."""
    from harness import free_port
    gw = start_gateway(TrunkSpec("carrier", f"sip:127.0.0.1:{free_port()};transport=udp", callee_stream="sdes",
                                 secure_media="mandatory", srtp_suites=suites))

    async def run():
        (peer,) = await sessions(gw, 1)
        try:
            sipp = start_sipp("uac_invite_sdes.xml", gw)
            incoming = await peer.wait_incoming(10)
            await peer.accept()
            connected = await peer.wait_for({"connected"}, 20, call_id=peer.call_id)
            assert connected["type"] == "connected", f"expected connected, got {connected}"
            await peer.hangup()
            code = await asyncio.to_thread(sipp.wait, 20)
            return sipp, code, incoming, connected
        finally:
            await peer.close()

    sipp, code, incoming, connected = asyncio.run(run())
    invite, _ = _sipp_invite_and_final(sipp)
    ok = [m for m in sipp.received(status=200) if _cseq_method(m) == "INVITE"]
    assert ok, f"sipp got no 200 OK ({sipp.msg_path})"
    offer, answer = sdp_cryptos(sdp_body(invite.text)), sdp_cryptos(sdp_body(ok[0].text))
    save_result(workdir, trunk_srtp_suites=suites, offer=[c[:2] for c in offer], answer=[c[:2] for c in answer],
                connected=connected, sipp_exit=code)
    check_incoming(incoming, "sipp", sdp_body(invite.text))
    assert ok[0].sdp_media()[2] == "RTP/SAVP", ok[0].text
    assert len(answer) == 1, f"the gateway's answer must hold one a=crypto:\n{ok[0].text}"
    tag, suite, key = answer[0]
    offered = {s: t for t, s, _ in offer}
    assert suite == suites[0], f"gateway chose {suite}; the trunk's srtp_suites order is {suites}"
    assert tag == offered[suite], f"answer tag {tag} != the offer's tag {offered[suite]} for {suite}"
    assert key not in [k for _, _, k in offer], "the gateway answered with the offer's own key"
    assert suites[0].lower() in str((connected.get("security") or {}).get("trunk", "")).lower(), connected
    assert sipp.received("BYE") and code == 0, f"sipp exit {code}, BYE {bool(sipp.received('BYE'))} ({sipp.msg_path})"


def test_incoming_rings_a_session_opened_while_ringing(workdir, gateway_sdes, baresip_sdes):
    """alice has one session when baresip calls; a second tab opens while it
    rings: it gets the same `incoming`, accepts, and talks (audio at both
    ends); the first tab gets "answered elsewhere"."""
    gw, caller = gateway_sdes, baresip_sdes

    async def run():
        first = await BrowserPeer(gw.base_url, gw.login()).connect()
        second = None
        try:
            await first.barrier()
            caller.dial(f"sip:{gw.account}@127.0.0.1:{gw.sip_port}")
            ringing = await first.wait_incoming(10)
            second = await BrowserPeer(gw.base_url, gw.login()).connect()
            late = await second.wait_incoming(10)
            assert late["id"] == ringing["id"] and late["sdp"] == ringing["sdp"], (late, ringing)
            await second.accept()
            connected = await second.wait_for({"connected"}, 15, call_id=late["id"])
            assert connected["type"] == "connected", connected
            elsewhere = await first.wait_for({"hangup"}, 10, call_id=ringing["id"])
            await second.receive(100, timeout=15)
            rms = second.sink.rms
            await asyncio.to_thread(caller.wait_heard_seconds, 1.5, 15)
            await second.hangup()
            await asyncio.to_thread(caller.wait_call_ended, 10)
            return elsewhere, rms, second.packets_received
        finally:
            await first.close()
            if second is not None:
                await second.close()

    elsewhere, rms, packets = asyncio.run(run())
    save_result(workdir, elsewhere=elsewhere, late_session_rms=rms, late_session_packets=packets)
    assert elsewhere.get("code") == 200 and "elsewhere" in elsewhere.get("reason", ""), elsewhere
    assert rms > TONE_RMS_MIN, rms
