"""DTLS-SRTP toward the trunk (issue 11 item 4), against baresip 1.0's
dtls_srtp module (`mediaenc=dtls_srtp`): the trunk leg is UDP/TLS/RTP/SAVP
with a=fingerprint and a=setup, keyed by DTLS, no ICE on that side.

- outgoing: callee_stream = "dtls" -> the INVITE offers UDP/TLS/RTP/SAVP
  with the gateway's fingerprint and setup:actpass; audio both ways;
- incoming: baresip offers UDP/TLS/RTP/SAVP; the browser accepts, the 200
  answers with our fingerprint and setup:passive; audio both ways;
- a trunk whose certificate is not the one its SDP names (the INVITE's
  a=fingerprint altered on the way by a small SIP relay): the call ends with
  a hangup naming the fingerprint, no media is forwarded either way;
- secure_media mandatory / optional toward a trunk that cannot do DTLS
  (plain baresip): 488 and a hangup naming the policy, or a re-offer of
  plain RTP that carries audio;
- the browser's hold and resume: re-INVITEs with our fingerprint and role,
  the association and its keys stay.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading

import pytest

from conftest import TRUNK_NUMBER, _gateway
from harness import (
    GWT_HOST,
    SILENCE_RMS,
    Baresip,
    BrowserPeer,
    TrunkSpec,
    free_port,
    save_result,
    wait_until,
)
from test_calls import _audio_call, _check_media
from test_incoming import ACCOUNT, _gateway_200, _incoming_audio_call, gw_uri, sdp_body, sessions

pytestmark = pytest.mark.gateway

FINGERPRINT = re.compile(r"^a=fingerprint:(\S+) ([0-9A-Fa-f:]+)\s*$", re.M)
SETUP = re.compile(r"^a=setup:(\w+)\s*$", re.M)


@pytest.fixture
def baresip_dtls(workdir, tone_wav):
    """baresip answering TRUNK_NUMBER with mediaenc=dtls_srtp."""
    b = Baresip(workdir, tone_wav, user=TRUNK_NUMBER, srtp=False, mediaenc="dtls_srtp", name="trunk")
    try:
        yield b.start()
    finally:
        b.stop()


@pytest.fixture
def baresip_plain_trunk(workdir, tone_wav):
    b = Baresip(workdir, tone_wav, user=TRUNK_NUMBER, srtp=False, name="trunk")
    try:
        yield b.start()
    finally:
        b.stop()


def dtls_trunk(baresip, **kw) -> TrunkSpec:
    options = dict(callee_stream="dtls", secure_media="mandatory")
    options.update(kw)
    return TrunkSpec("carrier", f"sip:127.0.0.1:{baresip.sip_port};transport=udp", **options)


def _fingerprint(sdp: str) -> tuple[str, str]:
    m = FINGERPRINT.search(sdp)
    assert m, f"no a=fingerprint in\n{sdp}"
    return m.group(1).lower(), m.group(2).upper()


def _setup(sdp: str) -> str:
    m = SETUP.search(sdp)
    assert m, f"no a=setup in\n{sdp}"
    return m.group(1)


def _gateway_fingerprint(gw) -> str:
    """The gateway's DTLS fingerprint, as its browser answers carry it."""
    m = re.search(r"fingerprint[^0-9A-F]*sha-256 ([0-9A-F:]{95})", gw.log())
    return m.group(1) if m else ""


def test_outgoing_call_to_a_dtls_trunk(workdir, baresip_dtls):
    """callee_stream = "dtls": the INVITE offers UDP/TLS/RTP/SAVP with the
    gateway's sha-256 fingerprint, setup:actpass, rtcp-mux and a=rtcp;
    baresip answers with its own fingerprint; `connected` names the DTLS
    profile negotiated toward the trunk; the tone crosses both ways."""
    trunk = baresip_dtls
    gen = _gateway(workdir, dtls_trunk(trunk))
    gw = next(gen)
    try:
        connected, result = asyncio.run(_audio_call(gw, trunk))
        security = connected.get("security") or {}
        invite = trunk.received("INVITE")[0]
        ok = [m for m in trunk.sent(status=200) if m.sdp_media()][0]
        offer, answer = sdp_body(invite.text), sdp_body(ok.text)
        save_result(workdir, security=security, offer=offer, answer=answer)
        assert str(security.get("trunk", "")).startswith("dtls-srtp AES_CM_128_HMAC_SHA1_80"), security
        assert "dtls-srtp" in str(security.get("browser", "")), security
        assert invite.sdp_media()[2] == "UDP/TLS/RTP/SAVP", offer
        algorithm, value = _fingerprint(offer)
        assert algorithm == "sha-256" and len(value) == 95, offer
        assert _setup(offer) == "actpass", offer
        assert "a=rtcp-mux" in offer and "a=rtcp:" in offer, offer
        assert "a=crypto" not in offer, offer
        assert ok.sdp_media()[2] == "UDP/TLS/RTP/SAVP", answer
        theirs = _fingerprint(answer)
        assert theirs[1] != value, "baresip answered with the gateway's own fingerprint"
        assert _setup(answer) in ("active", "passive"), answer
        _check_media(result, trunk, workdir)
    finally:
        next(gen, None)


def test_incoming_call_from_a_dtls_trunk(workdir, baresip_dtls):
    """baresip (dtls_srtp) calls alice: its INVITE offers UDP/TLS/RTP/SAVP;
    the browser accepts; the 200 answers UDP/TLS/RTP/SAVP with the gateway's
    fingerprint and setup:passive (baresip offered actpass); `connected`
    names the trunk's DTLS profile; the tone crosses both ways."""
    trunk = baresip_dtls
    gen = _gateway(workdir, dtls_trunk(trunk))
    gw = next(gen)
    try:
        r = asyncio.run(_incoming_audio_call(gw, trunk, n_sessions=1))
        ok = _gateway_200(trunk)
        offer, answer = sdp_body(r["invite"].text), sdp_body(ok.text)
        security = r["connected"].get("security") or {}
        save_result(workdir, timing=r["timing"], security=security, offer=offer, answer=answer)
        assert r["invite"].sdp_media()[2].startswith("UDP/TLS/RTP/SAVP"), offer
        offered_setup = _setup(offer)
        addr, _, profile = ok.sdp_media()
        assert (addr, profile) == (GWT_HOST, r["invite"].sdp_media()[2]), answer
        algorithm, value = _fingerprint(answer)
        assert algorithm == "sha-256" and value != _fingerprint(offer)[1], answer
        expected = {"actpass": "passive", "active": "passive", "passive": "active"}[offered_setup]
        assert _setup(answer) == expected, (offered_setup, answer)
        assert "a=crypto" not in answer, answer
        assert str(security.get("trunk", "")).startswith("dtls-srtp "), security
        _check_media(r["result"], trunk, workdir)
    finally:
        next(gen, None)


class FingerprintFlipper:
    """A UDP relay between baresip and the gateway's SIP port that changes
    one hex digit of the a=fingerprint in what baresip sends (the length
    stays, so Content-Length holds): the SDP then names a certificate that
    is not baresip's. Everything else passes unchanged, both ways."""

    def __init__(self, gateway_sip: tuple[str, int]):
        self.gateway = gateway_sip
        self.port = free_port(socket.SOCK_DGRAM)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.settimeout(0.2)
        self.client = None
        self.flipped = 0
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while self.running:
            try:
                data, src = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            if src == self.gateway:
                if self.client:
                    self.sock.sendto(data, self.client)
                continue
            self.client = src
            text = data.decode("utf-8", "replace")
            m = re.search(r"a=fingerprint:\S+ ([0-9A-F]{2})", text)
            if m:
                first = m.group(1)
                other = "00" if first != "00" else "11"
                text = text[:m.start(1)] + other + text[m.end(1):]
                data = text.encode()
                self.flipped += 1
            self.sock.sendto(data, self.gateway)

    def close(self):
        self.running = False
        self.thread.join(2)
        self.sock.close()


def test_a_trunk_certificate_that_is_not_its_fingerprint_ends_the_call(workdir, baresip_dtls):
    """baresip's INVITE reaches the gateway with one digit of its
    a=fingerprint changed: the browser accepts, baresip's DTLS handshake
    presents a certificate that does not match, the gateway ends the call:
    the browser gets `hangup` naming the fingerprint, baresip gets the
    gateway's BYE, and no audio crossed either way."""
    trunk = baresip_dtls
    gen = _gateway(workdir, dtls_trunk(trunk))
    gw = next(gen)
    relay = FingerprintFlipper(("127.0.0.1", gw.sip_port))

    async def run():
        (peer,) = await sessions(gw, 1)
        try:
            trunk.dial(f"sip:{ACCOUNT}@127.0.0.1:{relay.port}")
            await peer.wait_incoming(10)
            await peer.accept()
            msg = await peer.wait_for({"connected", "hangup"}, 20, call_id=peer.call_id)
            if msg["type"] == "connected":
                msg = await peer.wait_for({"hangup"}, 15, call_id=peer.call_id)
            await asyncio.sleep(0.5)  # anything that would still arrive
            return msg, peer.packets_received
        finally:
            await peer.close()

    try:
        hangup, browser_packets = asyncio.run(run())
        # No alert goes to a peer that failed the check: the call's BYE
        # ends it at baresip.
        wait_until(lambda: trunk.received("BYE"), 10, f"BYE at baresip ({trunk.log_path})")
        stats = trunk.rtp_stats()
        heard = trunk.dec_wav()
        save_result(workdir, hangup=hangup, browser_packets=browser_packets, flipped=relay.flipped,
                    trunk_rtp=stats, trunk_heard_rms=heard.rms)
        assert relay.flipped >= 1, "the relay saw no fingerprint to change"
        assert hangup["type"] == "hangup", hangup
        reason = str(hangup.get("reason", ""))
        assert "fingerprint" in reason.lower(), f"hangup reason does not name the fingerprint: {hangup}"
        assert browser_packets == 0, f"browser got {browser_packets} RTP packets from an unverified trunk"
        assert stats is None or stats[1] == 0, f"baresip received {stats[1]} RTP packets"
        assert heard.samples == 0 or heard.rms < SILENCE_RMS, f"baresip heard RMS {heard.rms:.0f}"
        assert "does not match the SDP fingerprint" in gw.log(), gw.log_path
    finally:
        relay.close()
        next(gen, None)


def test_dtls_mandatory_toward_a_trunk_without_dtls_fails_with_the_policy(workdir, baresip_plain_trunk):
    """callee_stream = "dtls", secure_media = "mandatory" toward a plain
    baresip: it refuses UDP/TLS/RTP/SAVP; no plain RTP re-offer is made and
    the browser gets a 488-style hangup."""
    trunk = baresip_plain_trunk
    gen = _gateway(workdir, dtls_trunk(trunk))
    gw = next(gen)

    async def run():
        peer = await BrowserPeer(gw.base_url, gw.login()).connect()
        try:
            msg = await peer.call(TRUNK_NUMBER, timeout=15)
            if msg["type"] != "hangup":
                msg = await peer.next_message({"hangup"}, 15)
            return msg, peer.packets_received
        finally:
            await peer.close()

    try:
        hangup, packets = asyncio.run(run())
        invites = trunk.received("INVITE")
        save_result(workdir, hangup=hangup, invites=len(invites),
                    answers=[m.status for m in trunk.sent() if m.status])
        assert hangup["type"] == "hangup", hangup
        assert hangup.get("code") == 488, hangup
        assert 'secure_media is "mandatory"' in str(hangup.get("reason", "")), hangup
        assert len(invites) == 1, "mandatory must not re-offer plain RTP"
        assert invites[0].sdp_media()[2] == "UDP/TLS/RTP/SAVP", invites[0].text
        assert packets == 0
    finally:
        next(gen, None)


def test_dtls_optional_falls_back_to_plain_rtp(workdir, baresip_plain_trunk):
    """secure_media = "optional" with callee_stream = "dtls" toward a plain
    baresip: the DTLS offer is refused, the gateway re-offers RTP/AVP,
    `connected` says the trunk leg is unencrypted and the tone crosses."""
    trunk = baresip_plain_trunk
    gen = _gateway(workdir, dtls_trunk(trunk, secure_media="optional"))
    gw = next(gen)
    try:
        connected, result = asyncio.run(_audio_call(gw, trunk))
        security = connected.get("security") or {}
        profiles = [m.sdp_media()[2] for m in trunk.received("INVITE") if m.sdp_media()]
        save_result(workdir, security=security, profiles=profiles)
        assert profiles[:2] == ["UDP/TLS/RTP/SAVP", "RTP/AVP"], profiles
        assert str(security.get("trunk", "")).startswith("rtp"), security
        _check_media(result, trunk, workdir)
    finally:
        next(gen, None)


def test_browser_hold_and_resume_on_a_dtls_trunk(workdir, baresip_dtls):
    """The browser holds and resumes a call to a DTLS trunk: our re-INVITEs
    keep UDP/TLS/RTP/SAVP, our fingerprint and our role (setup:passive,
    baresip having answered active), baresip accepts both, the DTLS
    association and its keys stay: after the resume the audio flows again
    both ways without a new handshake."""
    trunk = baresip_dtls
    gen = _gateway(workdir, dtls_trunk(trunk))
    gw = next(gen)

    async def run():
        peer = await BrowserPeer(gw.base_url, gw.login()).connect()
        try:
            connected = await peer.call(TRUNK_NUMBER)
            assert connected["type"] == "connected", connected
            trunk.wait_established()
            await peer.receive(100, timeout=20)
            since = len(peer.messages)
            await peer.send({"type": "hold", "id": peer.call_id})
            held = await peer.wait_for({"held", "error", "hangup"}, 10, since=since, call_id=peer.call_id)
            await asyncio.sleep(1)
            since = len(peer.messages)
            await peer.send({"type": "resume", "id": peer.call_id})
            resumed = await peer.wait_for({"resumed", "error", "hangup"}, 10, since=since,
                                          call_id=peer.call_id)
            at_resume = peer.packets_received
            await peer.receive(at_resume + 100, timeout=20)
            after = peer.packets_received - at_resume
            ended = [m for m in peer.messages if m.get("type") == "hangup"]
            await peer.hangup()
            trunk.wait_bye()
            return held, resumed, after, ended
        finally:
            await peer.close()

    try:
        held, resumed, after, ended = asyncio.run(run())
        invites = trunk.received("INVITE")
        tx, rx = trunk.wait_rtp_stats()
        handshakes = gw.log().count("media::relay: trunk DTLS-SRTP connected")
        save_result(workdir, held=held, resumed=resumed, browser_rtp_after_resume=after,
                    trunk_tx=tx, trunk_rx=rx, handshakes=handshakes,
                    reinvites=[sdp_body(m.text) for m in invites[1:]])
        assert held.get("type") == "held", held
        assert resumed.get("type") == "resumed", resumed
        assert not ended, ended
        assert len(invites) == 3, [m.first_line for m in invites]
        ours = _fingerprint(sdp_body(invites[0].text))
        for m in invites[1:]:
            body = sdp_body(m.text)
            assert m.sdp_media()[2] == "UDP/TLS/RTP/SAVP", body
            assert _fingerprint(body) == ours, body
            assert _setup(body) == "passive", body
        assert "a=sendonly" in sdp_body(invites[1].text)
        assert after >= 100, f"browser got {after} packets after the resume"
        assert rx > 150, f"baresip received {rx} RTP packets in all"
        assert handshakes == 1, f"{handshakes} trunk handshakes: the association did not stay"
    finally:
        next(gen, None)
