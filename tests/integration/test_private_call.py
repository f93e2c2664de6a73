"""A private call (issue 11 item 5): the browser (aiortc) and a DTLS-SRTP
baresip agree SRTP keys with each other through the gateway, which relays
the handshake and the encrypted media without ever holding a key.

The account calls with caller_stream = "forced_relay"; baresip runs
mediaenc=dtls_srtp. Proven here: the INVITE offers UDP/TLS/RTP/SAVP with the
browser's fingerprint, the browser's answer carries baresip's, audio crosses
both ways (packet counts and the tone's energy at each end), the call's SRTP
context counter stays 0 in /api/stats/calls/{id}, and `connected.security`,
the stats and /metrics say private. The other way too: baresip (dtls_srtp)
calls the account through a trunk with caller_stream = "forced_relay", the
browser is offered baresip's fingerprint and baresip gets the browser's.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re

import pytest

from conftest import TRUNK_NUMBER, _gateway
from harness import (
    TONE_RMS_MIN,
    Baresip,
    BrowserPeer,
    TrunkSpec,
    save_result,
    unverified_ssl,
)

pytestmark = pytest.mark.gateway

OPERATOR_PASSWORD = "private-call-operator"


@pytest.fixture
def baresip_dtls(workdir, tone_wav):
    """baresip trunk answering TRUNK_NUMBER with mediaenc=dtls_srtp."""
    b = Baresip(workdir, tone_wav, user=TRUNK_NUMBER, srtp=False, mediaenc="dtls_srtp", name="trunk")
    try:
        yield b.start()
    finally:
        b.stop()


@pytest.fixture
def gateway_private(request, workdir, baresip_dtls):
    """The account calls with caller_stream forced_relay: private calls.
    Indirect parameter: media.single_port."""
    trunk = TrunkSpec("carrier", f"sip:127.0.0.1:{baresip_dtls.sip_port};transport=udp",
                      callee_stream="sdes", secure_media="mandatory")
    yield from _gateway(workdir, trunk, caller_stream="forced_relay",
                        operator_password=OPERATOR_PASSWORD,
                        media_single_port=getattr(request, "param", None))


def fingerprint_of(sdp: str) -> str:
    """The sha-256 a=fingerprint (aiortc offers sha-384 and sha-512 too)."""
    found = {f.upper() for f in re.findall(r"^a=fingerprint:sha-256 (\S+)\s*$", sdp, re.M | re.I)}
    assert len(found) == 1, f"expected one sha-256 a=fingerprint in\n{sdp}"
    return found.pop()


def setup_of(sdp: str) -> str:
    found = re.findall(r"^a=setup:(\S+)\s*$", sdp, re.M)
    assert len(found) == 1, f"expected one a=setup in\n{sdp}"
    return found[0]


def call_detail(gw) -> dict:
    """GET /api/stats/calls/{id} with an operator session."""
    conn = http.client.HTTPSConnection("127.0.0.1", gw.https_port, context=unverified_ssl(), timeout=10)
    try:
        conn.request("POST", "/api/admin/login", body=json.dumps({"password": OPERATOR_PASSWORD}),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200, f"operator sign-in: {resp.status}"
        cookie = resp.getheader("Set-Cookie").split(";")[0]
        # The operator's id of the call (not the browser's): the one live call.
        conn.request("GET", "/api/stats", headers={"Cookie": cookie})
        resp = conn.getresponse()
        calls = json.loads(resp.read()).get("calls") or []
        assert len(calls) == 1, f"expected the one call in /api/stats: {calls}"
        call_id = calls[0]["id"]
        conn.request("GET", f"/api/stats/calls/{call_id}", headers={"Cookie": cookie})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, f"GET /api/stats/calls/{call_id}: {resp.status} {body[:200]!r}"
        return json.loads(body)
    finally:
        conn.close()


@pytest.mark.parametrize("gateway_private", [True, False], indirect=True, ids=["single", "percall"])
def test_private_call_dtls_end_to_end_no_key_at_the_gateway(workdir, gateway_private, baresip_dtls):
    gw, trunk = gateway_private, baresip_dtls

    async def run():
        peer = await BrowserPeer(gw.base_url, gw.login()).connect()
        try:
            connected = await peer.call(TRUNK_NUMBER)
            assert connected["type"] == "connected", f"expected connected, got {connected}"
            trunk.wait_established()
            await peer.receive(150, timeout=20)  # ~3 s of 20 ms packets
            trunk.wait_heard_seconds(2.0, timeout=20, gateway=gw)
            detail = call_detail(gw)
            received, sent = await peer.stats()
            result = {
                "received": received,
                "counted": peer.packets_received,
                "sent": sent,
                "rms": peer.sink.rms,
                "browser_offer": peer.pc.localDescription.sdp,
                "browser_answer": next(m["sdp"] for m in peer.messages if m.get("type") == "answer"),
            }
            metrics = gw.metrics()
            await peer.hangup()
            trunk.wait_bye()
        finally:
            await peer.close()
        return connected, result, detail, metrics

    connected, result, detail, metrics = asyncio.run(run())
    tx, rx = trunk.wait_rtp_stats()
    heard = trunk.dec_wav()
    call = detail.get("call") or {}
    save_result(workdir, security=connected.get("security"), browser_received=result["received"],
                browser_sent=result["sent"], browser_rms=result["rms"], trunk_tx=tx, trunk_rx=rx,
                trunk_heard_rms=heard.rms, srtp_contexts=call.get("srtp_contexts"),
                private=call.get("private"), legs=call.get("legs"))

    # The lock: private, end to end.
    security = connected.get("security") or {}
    assert security.get("private") is True, security
    assert "end to end" in str(security.get("browser", "")), security

    # Each side got the other's fingerprint and DTLS role.
    invite = trunk.received("INVITE")[0]
    assert invite.sdp_media()[2] == "UDP/TLS/RTP/SAVP", invite.text
    assert "a=crypto:" not in invite.text
    assert fingerprint_of(invite.text) == fingerprint_of(result["browser_offer"]), invite.text
    assert setup_of(invite.text) == "actpass", invite.text
    ok = trunk.sent(status=200)[0]
    baresip_fp = fingerprint_of(ok.text)
    assert fingerprint_of(result["browser_answer"]) == baresip_fp, result["browser_answer"]
    assert setup_of(result["browser_answer"]) == setup_of(ok.text), result["browser_answer"]

    # Audio both ways, through the relay, never decrypted.
    assert result["received"] > 100, f"browser received {result['received']} RTP packets"
    assert result["sent"] > 100, f"browser sent {result['sent']} RTP packets"
    assert result["rms"] > TONE_RMS_MIN, f"browser heard RMS {result['rms']:.0f}, expected the trunk's tone"
    assert rx > 100, f"baresip received {rx} RTP packets"
    assert tx > 100, f"baresip sent {tx} RTP packets"
    assert heard.rms > TONE_RMS_MIN, f"baresip heard RMS {heard.rms:.0f}, expected the browser's tone"
    legs = call.get("legs") or {}
    assert legs["browser"]["packets_out"] > 100 and legs["trunk"]["packets_out"] > 100, legs
    assert call.get("private") is True, call
    assert call.get("srtp_contexts") == 0, f"the gateway created SRTP contexts for a private call: {call}"
    assert metrics.sum("gateway_private_calls_total") == 1, metrics.text
    assert metrics.sum("gateway_call_legs_total", handling="relayed") == 2, metrics.text
    assert metrics.sum("gateway_call_legs_total", handling="decrypted") == 0, metrics.text
    assert "private call media connected" in gw.log(), gw.log()[-2000:]


@pytest.mark.chromium
@pytest.mark.timeout(240)
def test_chromium_private_call_lock_says_end_to_end(workdir, gateway_private, baresip_dtls):
    """Debian's Chromium through the web client: Chromium's DTLS peer is
    baresip (its fingerprint in the answer), audio flows (Chromium's own
    statistics: packets both ways, received energy), and the lock says
    "End-to-end, not decrypted by the gateway" (chromium-connected.png)."""
    from test_chromium import _run_call_script

    _run_call_script(workdir, gateway_private, baresip_dtls, EXPECT_TRUNK_SECURITY="end to end",
                     EXPECT_LOCK_LEVEL="private", MEDIA_SECONDS="3")
    ok = baresip_dtls.sent(status=200)[0]
    assert "UDP/TLS/RTP/SAVP" in ok.text, ok.text
    assert "dtls_srtp: verified sha-256 fingerprint OK" in baresip_dtls.log()
    assert "private call media connected" in gateway_private.log()


@pytest.fixture
def gateway_private_incoming(workdir, baresip_dtls):
    """The trunk's own calls are private: its caller_stream is forced_relay."""
    trunk = TrunkSpec("carrier", f"sip:127.0.0.1:{baresip_dtls.sip_port};transport=udp",
                      callee_stream="sdes", secure_media="mandatory", caller_stream="forced_relay")
    yield from _gateway(workdir, trunk, operator_password=OPERATOR_PASSWORD)


def test_incoming_private_call_browser_and_trunk_get_each_others_fingerprint(
        workdir, gateway_private_incoming, baresip_dtls):
    from test_incoming import gw_uri, sessions

    gw, trunk = gateway_private_incoming, baresip_dtls

    async def run():
        (peer,) = await sessions(gw, 1)
        try:
            trunk.dial(gw_uri(gw))
            incoming = await peer.wait_incoming(10)
            answer_sdp = await peer.accept()
            connected = await peer.wait_for({"connected"}, 20, call_id=peer.call_id)
            assert connected["type"] == "connected", connected
            trunk.wait_established()
            await peer.receive(150, timeout=20)
            trunk.wait_heard_seconds(2.0, timeout=20, gateway=gw)
            detail = call_detail(gw)
            received, sent = await peer.stats()
            result = {"received": received, "sent": sent, "rms": peer.sink.rms,
                      "offer": incoming["sdp"], "answer": answer_sdp}
            await peer.hangup()
            trunk.wait_bye()
        finally:
            await peer.close()
        return connected, result, detail

    connected, result, detail = asyncio.run(run())
    tx, rx = trunk.wait_rtp_stats()
    heard = trunk.dec_wav()
    call = detail.get("call") or {}
    save_result(workdir, security=connected.get("security"), browser_received=result["received"],
                browser_sent=result["sent"], browser_rms=result["rms"], trunk_tx=tx, trunk_rx=rx,
                trunk_heard_rms=heard.rms, srtp_contexts=call.get("srtp_contexts"))

    assert (connected.get("security") or {}).get("private") is True, connected
    invite = trunk.sent("INVITE")[0]
    assert invite.sdp_media()[2] == "UDP/TLS/RTP/SAVPF", invite.text  # baresip's spelling
    assert fingerprint_of(result["offer"]) == fingerprint_of(invite.text), result["offer"]
    # baresip offers actpass; the gateway lets it open DTLS (the browser is
    # offered `active` and answers passive: see sdp/private.rs).
    assert setup_of(invite.text) == "actpass", invite.text
    assert setup_of(result["offer"]) == "active", result["offer"]
    ok = [m for m in trunk.received(status=200) if m.sdp_media()][0]
    assert ok.sdp_media()[2] == "UDP/TLS/RTP/SAVPF", ok.text  # the offer's proto
    assert fingerprint_of(ok.text) == fingerprint_of(result["answer"]), ok.text
    assert setup_of(ok.text) == setup_of(result["answer"]), ok.text
    assert result["received"] > 100 and result["sent"] > 100, result
    assert result["rms"] > TONE_RMS_MIN, f"browser heard RMS {result['rms']:.0f}"
    assert rx > 100 and tx > 100, (tx, rx)
    assert heard.rms > TONE_RMS_MIN, f"baresip heard RMS {heard.rms:.0f}"
    assert call.get("private") is True and call.get("srtp_contexts") == 0, call
