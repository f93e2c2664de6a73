"""linphone as the far end: a second SIP and media stack beside baresip
(liblinphone 5.1 with belle-sip and mediastreamer2; SRTP through libsrtp,
DTLS through bctoolbox's mbedTLS), driven by linphonec
(tests/integration/linphone_peer.py).

Each test proves media both ways, not only signaling: the aiortc browser
counts RTP packets and the tone's energy, linphone records what it hears to
a WAV whose energy the test measures, and each side's verdict on the
encryption is read (`connected.security` at the browser, liblinphone's
"Negotiated media encryption" in its log).

Artifacts in tests/artifacts/<test name>/: gateway/gateway.log,
linphone/linphone.log (SIP trace), linphone/linphonec.out,
linphone/heard.wav, result.json.
"""

from __future__ import annotations

import asyncio

import pytest

from harness import TONE_RMS_MIN, BrowserPeer, TrunkSpec, save_result, wait_until
from linphone_peer import Linphone
from test_incoming import gw_uri, sessions
from test_sip_trunk import start_gateway  # noqa: F401  (fixture)

pytestmark = pytest.mark.gateway

PACKETS = 100     # 2 s of 20 ms frames at the browser
HEARD_S = 1.5     # seconds of the browser's tone in linphone's recording

# linphone media_encryption -> (trunk callee_stream, secure_media, extra trunk
# keys, linphone's verdict, security.trunk prefix, trunk profile)
MODES = {
    "srtp": ("sdes", "mandatory", {}, "LinphoneMediaEncryptionSRTP", "sdes-srtp", "RTP/SAVP"),
    # linphone signals 127.0.0.1 and sends from 10.99.0.1: plain RTP latches
    "none": ("decrypted", "forbidden", {"media_source": "latch"}, "LinphoneMediaEncryptionNone", "rtp",
             "RTP/AVP"),
    "dtls": ("dtls", "mandatory", {"media_source": "latch"}, "LinphoneMediaEncryptionDTLS", "dtls-srtp", "UDP/TLS/RTP/SAVP"),
}


@pytest.fixture
def start_linphone(workdir, tone_wav):
    started: list[Linphone] = []

    def start(encryption: str, rfc2833: bool = True, delayed_offer: bool = False) -> Linphone:
        lp = Linphone(workdir, tone_wav, encryption=encryption, rfc2833=rfc2833, delayed_offer=delayed_offer)
        started.append(lp)
        return lp.start()

    yield start
    for lp in started:
        lp.stop()


def _trunk(lp: Linphone, mode: str) -> TrunkSpec:
    callee_stream, secure_media, extra, *_ = MODES[mode]
    return TrunkSpec("carrier", f"{lp.uri};transport=udp", callee_stream=callee_stream,
                     secure_media=secure_media, **extra)


def _heard(lp: Linphone):
    """linphone's recording once it holds HEARD_S seconds of the browser's
    tone (it is written while the call runs)."""
    return wait_until(lambda: (lambda w: w if w.seconds >= HEARD_S + 1 else None)(lp.heard()), 20,
                      f"{HEARD_S + 1}s recorded by linphone ({lp.record_path})")


async def _talk(peer: BrowserPeer, lp: Linphone) -> dict:
    """Media both ways once linphone says the call is up: packets and energy
    at the browser, energy in linphone's recording."""
    lp.wait_connected()
    await peer.receive(PACKETS, timeout=20)
    heard = await asyncio.to_thread(_heard, lp)
    received, sent = await peer.stats()
    return {"received": received, "sent": sent, "rms": peer.sink.rms, "linphone_heard_rms": heard.rms,
            "linphone_heard_s": heard.seconds}


async def _connected_to(gw, lp: Linphone) -> BrowserPeer:
    """A browser session whose call to linphone (as the trunk) is up at both ends."""
    peer = await BrowserPeer(gw.base_url, gw.login()).connect()
    connected = await peer.call("1000")
    assert connected.get("type") == "connected", connected
    lp.wait_connected()
    return peer


async def _linphone_calls(gw, lp: Linphone) -> tuple[dict, dict]:
    """linphone dials alice, her one session accepts; once media flows both
    ways, linphone hangs up. Returns the browser's `connected` (or what came
    instead) and the figures of `_talk` with the browser's `hangup`."""
    (peer,) = await sessions(gw, 1)
    try:
        lp.dial(gw_uri(gw))
        await peer.wait_incoming(10)
        await peer.accept()
        connected = await peer.wait_for({"connected", "hangup"}, 20, call_id=peer.call_id)
        if connected.get("type") != "connected":
            return connected, {}
        r = await _talk(peer, lp)
        lp.hangup()
        r["hangup"] = await peer.wait_for({"hangup"}, 10, call_id=peer.call_id)
        return connected, r
    finally:
        await peer.close()


def _check(workdir, mode: str, lp: Linphone, connected: dict, r: dict, sdp_text: str):
    *_, verdict, security, profile = MODES[mode]
    save_result(workdir, mode=mode, connected=connected, browser=r, linphone_encryption=lp.negotiated_encryption())
    assert connected.get("type") == "connected", f"expected connected, got {connected}"
    assert str((connected.get("security") or {}).get("trunk", "")).startswith(security), connected
    assert "m=audio" in sdp_text and f" {profile} " in sdp_text, f"trunk-side SDP not {profile}:\n{sdp_text}"
    assert lp.negotiated_encryption() == verdict, f"linphone negotiated {lp.negotiated_encryption()}"
    assert r["received"] >= PACKETS and r["rms"] > TONE_RMS_MIN, f"the browser heard linphone's tone: {r}"
    assert r["linphone_heard_rms"] > TONE_RMS_MIN, f"linphone heard the browser's tone: {r}"


@pytest.mark.parametrize("mode", list(MODES))
def test_browser_calls_linphone(workdir, start_gateway, start_linphone, mode):
    """aiortc → gateway → linphone as the trunk, in each of linphone's media
    encryptions (mandatory): SDES, plain RTP, DTLS-SRTP."""
    lp = start_linphone(mode)
    gw = start_gateway(_trunk(lp, mode))

    async def run():
        peer = await BrowserPeer(gw.base_url, gw.login()).connect()
        try:
            connected = await peer.call("1000")
            if connected.get("type") != "connected":
                return connected, {}
            r = await _talk(peer, lp)
            await peer.hangup()
            return connected, r
        finally:
            await peer.close()

    connected, r = asyncio.run(run())
    invites = lp.received("INVITE")
    assert invites, f"linphone got no INVITE ({lp.log_path})"
    _check(workdir, mode, lp, connected, r, invites[0].text)
    wait_until(lambda: lp.received("BYE"), 10, "the browser's hangup reaching linphone as BYE")
    lp.wait_ended()


@pytest.mark.parametrize("mode", ["srtp", "dtls"])
def test_linphone_calls_the_browser(workdir, start_gateway, start_linphone, mode):
    """linphone → gateway → the account's browser session, linphone's offer
    SDES or DTLS-SRTP (mandatory); linphone hangs up."""
    lp = start_linphone(mode)
    gw = start_gateway(_trunk(lp, mode))

    connected, r = asyncio.run(_linphone_calls(gw, lp))
    oks = [m for m in lp.received(status=200) if "INVITE" in (m.text.split("CSeq:", 1)[-1].split("\n", 1)[0])]
    assert oks, f"linphone got no 200 to its INVITE ({lp.log_path})"
    _check(workdir, mode, lp, connected, r, oks[0].text)
    assert r["hangup"].get("code") == 200, r["hangup"]
    lp.wait_ended()


def test_linphone_plain_rtp_is_dropped_without_latch(workdir, start_gateway, start_linphone):
    """The strict default (media_source = "signaled") against linphone's
    plain RTP: its SDP says 127.0.0.1, its packets come from 10.99.0.1, so
    they are dropped and counted as wrong_source, the browser hears
    nothing, and the log says so once, naming media_source
    (test_browser_calls_linphone[none] is the same call with "latch": audio
    both ways)."""
    lp = start_linphone("none")
    gw = start_gateway(TrunkSpec("carrier", f"{lp.uri};transport=udp", callee_stream="decrypted",
                                 secure_media="forbidden"))

    async def run():
        peer = await _connected_to(gw, lp)
        try:
            drops = await asyncio.to_thread(
                wait_until, lambda: gw.metrics().sum("gateway_media_drops_total", leg="trunk",
                                                    reason="wrong_source") >= 100,
                20, "linphone's packets dropped as wrong_source")
            received, _ = await peer.stats()
            await peer.hangup()
            return received, drops
        finally:
            await peer.close()

    received, _ = asyncio.run(run())
    wrong_source = gw.metrics().sum("gateway_media_drops_total", leg="trunk", reason="wrong_source")
    save_result(workdir, browser_received=received, wrong_source_drops=wrong_source)
    assert received == 0, f"the browser got {received} packets from a source the trunk never signaled"
    # the operator is told why, once, with the setting that helps
    warnings = [ln for ln in gw.log().splitlines() if "its SDP does not name" in ln]
    assert len(warnings) == 1 and "media_source" in warnings[0] and "10.99.0.1" in warnings[0], warnings
    assert any(m.sdp_media() and m.sdp_media()[0] == "127.0.0.1" for m in lp.sent(status=200)), \
        "linphone's answer should signal 127.0.0.1"


@pytest.mark.parametrize("how", ["rfc4733", "info"])
def test_browser_dtmf_reaches_linphone(workdir, start_gateway, start_linphone, how):
    """The browser's `dtmf` "19#" during an SDES call to linphone, which
    reports every digit it receives ("Receiving tone 1"): as RFC 4733
    events in the call's Opus stream (48 kHz events, linphone answers
    Opus with telephone-event/48000) when linphone takes telephone-event, and
    as SIP INFO (application/dtmf-relay) when it does not (use_rfc2833=0:
    its answer drops telephone-event). No `error` at the browser either
    way; the call's audio goes on."""
    lp = start_linphone("srtp", rfc2833=how == "rfc4733")
    gw = start_gateway(_trunk(lp, "srtp"))

    async def run():
        peer = await _connected_to(gw, lp)
        try:
            await peer.receive(50, timeout=20)
            await peer.send({"type": "dtmf", "id": peer.call_id, "digits": "19#"})
            await asyncio.to_thread(wait_until, lambda: len(lp.tones()) >= 3, 10,
                                    f"linphone reporting three tones ({lp.out_path})")
            await asyncio.sleep(0.5)  # nothing more may come
            errors = [m for m in peer.messages if m.get("type") == "error"]
            await peer.hangup()
            return errors
        finally:
            await peer.close()

    errors = asyncio.run(run())
    ok = [m for m in lp.sent(status=200) if "INVITE" in (m.text.split("CSeq:", 1)[-1].split("\n", 1)[0])]
    infos = lp.received("INFO")
    save_result(workdir, how=how, tones=lp.tones(), errors=errors, infos=len(infos),
                answer_has_telephone_event=bool(ok) and "telephone-event" in ok[0].text)
    assert lp.tones() == "19#", lp.tones()
    assert not errors, errors
    if how == "info":
        assert ok and "telephone-event" not in ok[0].text, ok[0].text if ok else "no 200"
        assert len(infos) == 3 and all("application/dtmf-relay" in m.text for m in infos), len(infos)
    else:
        # linphone answers Opus: the telephone-event/48000 we add for a
        # browser without one at that clock is what makes RFC 4733 possible
        assert ok and "opus/48000" in ok[0].text and "telephone-event/48000" in ok[0].text, ok[0].text
        assert not infos, [m.first_line for m in infos]


def test_linphone_holds_resumes_and_the_call_goes_on(workdir, start_gateway, start_linphone):
    """The trunk's own hold from a real SIP stack: linphone's `pause` sends
    a re-INVITE (a=sendonly, SDES): the browser gets `held` by the trunk;
    its `resume` (a=sendrecv) brings `resumed`, and the tone flows both ways
    again afterwards (packets and energy at the browser, linphone's
    recording still growing with the browser's tone)."""
    lp = start_linphone("srtp")
    gw = start_gateway(_trunk(lp, "srtp"))

    async def run():
        peer = await _connected_to(gw, lp)
        try:
            await peer.receive(50, timeout=20)
            lp.command("pause")
            held = await peer.wait_for({"held"}, 10, call_id=peer.call_id)
            await asyncio.sleep(1.0)
            since = len(peer.messages)
            lp.command("resume")
            resumed = await peer.wait_for({"resumed"}, 10, since=since, call_id=peer.call_id)
            heard_before = lp.heard().seconds
            packets_at, loud_at = peer.packets_received, peer.sink.loud_frames
            await peer.receive(packets_at + 100, timeout=10)
            await asyncio.to_thread(wait_until, lambda: lp.heard().seconds >= heard_before + 1.5, 10,
                                    "linphone recording after the resume")
            r = {"held": held, "resumed": resumed, "packets_after": peer.packets_received - packets_at,
                 "loud_after": peer.sink.loud_frames - loud_at, "linphone_heard_rms": lp.heard().rms}
            await peer.hangup()
            return r
        finally:
            await peer.close()

    r = asyncio.run(run())
    reinvites = lp.sent("INVITE")
    save_result(workdir, **r, reinvites=len(reinvites))
    assert r["held"].get("type") == "held" and r["held"].get("by") == "trunk", r["held"]
    assert r["resumed"].get("type") == "resumed", r["resumed"]
    assert len(reinvites) == 2 and "a=sendonly" in reinvites[0].text, [m.first_line for m in reinvites]
    assert r["packets_after"] >= 100 and r["loud_after"] >= 50, r
    assert r["linphone_heard_rms"] > TONE_RMS_MIN, r



@pytest.mark.parametrize("mode", ["srtp", "none", "optional"])
def test_linphone_calls_with_a_delayed_offer(workdir, start_gateway, start_linphone, mode):
    """linphone with sdp_200_ack=1 calls alice with an INVITE without SDP (a
    "delayed offer", RFC 3261 13.2.1, as Cisco CUBE/CUCM send by default):
    the browser rings with the gateway's G.711 offer, accepts, and our 200
    carries the offer (SDES `RTP/SAVP` with our a=crypto, or `RTP/AVP` on a
    `forbidden` trunk); linphone answers in its ACK, and audio flows both
    ways (packets and energy at the browser, linphone's recording)."""
    if mode == "optional":
        # SRTP offered (secure_media optional) to a linphone whose own
        # encryption is none but not mandatory: it takes the SRTP offered
        # (the plain-RTP fallback of an ACK is a unit test).
        lp = start_linphone("none", delayed_offer=True)
        gw = start_gateway(TrunkSpec("carrier", f"{lp.uri};transport=udp", callee_stream="sdes",
                                     secure_media="optional", media_source="latch"))
    else:
        lp = start_linphone(mode, delayed_offer=True)
        gw = start_gateway(_trunk(lp, mode))

    connected, r = asyncio.run(_linphone_calls(gw, lp))
    invite = lp.sent("INVITE")[0]
    ok = [m for m in lp.received(status=200) if "INVITE" in (m.text.split("CSeq:", 1)[-1].split("\n", 1)[0])]
    acks = lp.sent("ACK")
    save_result(workdir, mode=mode, connected=connected, browser=r,
                invite_has_sdp="m=audio" in invite.text, ack_has_sdp=bool(acks) and "m=audio" in acks[0].text)
    assert "m=audio" not in invite.text, invite.text
    assert ok and "m=audio" in ok[0].text, "our 200 carries the offer"
    assert acks and "m=audio" in acks[0].text, "linphone answers in its ACK"
    if mode == "optional":
        assert "RTP/SAVP" in ok[0].text and "a=crypto:1 " in ok[0].text, ok[0].text
        assert " RTP/SAVP " in acks[0].text and "a=crypto:1 " in acks[0].text, acks[0].text
        assert gw.metrics().sum("gateway_secure_media_fallbacks_total") == 0
        _check(workdir, "srtp", lp, connected, r, acks[0].text)
    else:
        _check(workdir, mode, lp, connected, r, ok[0].text)
    assert r["hangup"].get("code") == 200, r["hangup"]
