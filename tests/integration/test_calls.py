"""Browser (aiortc) -> gateway -> baresip trunk, with real media both ways.

Each test starts its own gateway and baresip (fixtures in conftest.py) and
leaves their logs, configs and WAV dumps in tests/artifacts/<test name>/.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time

import pytest

from conftest import BOTH_PORT_MODES, TRUNK_NUMBER
from harness import (
    GWT_HOST,
    SILENCE_RMS,
    TONE_RMS_MIN,
    BrowserPeer,
    async_wait_until,
    mangle_fingerprint,
    save_result,
    wait_until,
)

pytestmark = pytest.mark.gateway

FOREIGN_SSRC = 0x0BADC0DE


async def _audio_call(gw, trunk, number=TRUNK_NUMBER):
    """Places a call, checks media both ways, hangs up. Returns
    (connected message, browser measurements)."""
    peer = await BrowserPeer(gw.base_url, gw.login()).connect()
    try:
        connected = await peer.call(number)
        assert connected["type"] == "connected", f"expected connected, got {connected}"
        trunk.wait_established()
        await peer.receive(150, timeout=20)  # ~3 s of 20 ms packets
        trunk.wait_heard_seconds(2.0, timeout=20)
        received, sent = await peer.stats()
        result = {
            "received": received,
            "counted": peer.packets_received,
            "sent": sent,
            "rms": peer.sink.rms,
            "ssrcs": dict(peer.rtp_by_ssrc),
        }
        await peer.hangup()
        trunk.wait_bye()
    finally:
        await peer.close()
    return connected, result


def _check_media(result, trunk, workdir):
    tx, rx = trunk.wait_rtp_stats()
    heard = trunk.dec_wav()
    save_result(workdir, browser=result, trunk_tx=tx, trunk_rx=rx, trunk_heard_rms=heard.rms,
                trunk_heard_seconds=heard.seconds)
    assert result["received"] > 100, f"browser received {result['received']} RTP packets"
    assert result["sent"] > 100, f"browser sent {result['sent']} RTP packets"
    assert result["rms"] > TONE_RMS_MIN, f"browser heard RMS {result['rms']:.0f}, expected the trunk's tone"
    assert rx > 100, f"baresip received {rx} RTP packets"
    assert tx > 100, f"baresip sent {tx} RTP packets"
    assert heard.rms > TONE_RMS_MIN, f"baresip heard RMS {heard.rms:.0f} in {heard.path}, expected the browser's tone"


@BOTH_PORT_MODES
def test_call_sdes_trunk_audio_both_ways(workdir, gateway_sdes, baresip_sdes):
    """DTLS-SRTP toward the browser, SDES-SRTP toward the trunk: the tone
    crosses both ways, security reports both, the trunk gets a BYE."""
    connected, result = asyncio.run(_audio_call(gateway_sdes, baresip_sdes))
    security = connected.get("security") or {}
    assert "dtls-srtp" in str(security.get("browser", "")).lower(), security
    assert "sdes-srtp" in str(security.get("trunk", "")).lower(), security
    invite = baresip_sdes.received("INVITE")[0]
    assert invite.sdp_media()[2] == "RTP/SAVP", invite.text
    assert "a=crypto:" in invite.text
    assert baresip_sdes.srtp_enabled()
    _check_media(result, baresip_sdes, workdir)


def test_call_plain_rtp_trunk(workdir, gateway_plain, baresip_plain):
    """callee_stream "decrypted": the gateway terminates DTLS-SRTP and sends
    plain RTP/AVP to the trunk; audio both ways."""
    connected, result = asyncio.run(_audio_call(gateway_plain, baresip_plain))
    security = connected.get("security") or {}
    assert "dtls-srtp" in str(security.get("browser", "")).lower(), security
    assert str(security.get("trunk", "")).lower().split()[0:1] == ["rtp"], security
    invite = baresip_plain.received("INVITE")[0]
    assert invite.sdp_media()[2] == "RTP/AVP", invite.text
    assert "a=crypto:" not in invite.text
    _check_media(result, baresip_plain, workdir)


def test_wrong_fingerprint_no_media(workdir, gateway_sdes, baresip_sdes):
    """An offer whose a=fingerprint does not match the browser's certificate:
    the DTLS handshake must fail, the browser gets a hangup with a reason,
    and not one packet of the browser's media reaches the trunk."""
    gw, trunk = gateway_sdes, baresip_sdes

    async def run():
        peer = await BrowserPeer(gw.base_url, gw.login()).connect()
        try:
            t0 = time.monotonic()
            msg = await peer.call(TRUNK_NUMBER, mangle=mangle_fingerprint, timeout=15)
            if msg["type"] == "connected":
                msg = await peer.next_message({"hangup"}, 15)
            return msg, time.monotonic() - t0, peer.packets_received
        finally:
            await peer.close()

    msg, elapsed, browser_packets = asyncio.run(run())
    save_result(workdir, hangup=msg, elapsed=elapsed, browser_packets=browser_packets)
    assert msg["type"] == "hangup", f"expected hangup, got {msg}"
    assert str(msg.get("reason", "")).strip() or msg.get("code"), f"hangup without a reason: {msg}"
    assert elapsed < 20, f"hangup came after {elapsed:.1f}s"
    assert browser_packets == 0, f"browser got {browser_packets} RTP packets without a verified DTLS peer"

    if trunk.received("INVITE"):
        wait_until(lambda: trunk.received("BYE") or trunk.received("CANCEL"), 10,
                   f"BYE or CANCEL at baresip ({trunk.log_path})")
        if trunk.call_established():
            trunk.wait_call_ended()
    stats = trunk.rtp_stats()
    assert stats is None or stats[1] == 0, f"baresip received {stats[1]} RTP packets"
    heard = trunk.dec_wav()
    assert heard.samples == 0 or heard.rms < SILENCE_RMS, f"baresip heard RMS {heard.rms:.0f}"

    metrics = gw.metrics()
    assert metrics.has("gateway_media_packets_total"), metrics.text[:2000]
    out = metrics.sum("gateway_media_packets_total", leg="trunk", direction="out")
    assert out == 0, f"gateway sent {out:.0f} packets to the trunk"


def _rtp(ssrc, seq, ts, payload, pt=0):
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def _send_spoofed_udp(src: tuple, dst: tuple, payload: bytes):
    """One UDP datagram with a forged source address and port (raw socket,
    root only; both addresses are this namespace's own)."""
    udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload  # checksum 0: none (IPv4)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
                     socket.inet_aton(src[0]), socket.inet_aton(dst[0]))  # the kernel fills id and checksum
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        raw.sendto(ip + udp, (dst[0], 0))


def test_foreign_ssrc_dropped(workdir, gateway_sdes, baresip_sdes):
    """During an established SDES call, a third party sends RTP with an
    unknown SSRC to the gateway's trunk-side port (read from the INVITE's
    SDP): 50 packets and 20 of SRTP-looking garbage from another socket, and
    50 more forged to come from baresip's own RTP address and port (so the
    SSRC check, not only a source check, is exercised). None of it reaches
    the browser and the trunk leg's drop counter rises by >= 100."""
    gw, trunk = gateway_sdes, baresip_sdes

    async def run():
        peer = await BrowserPeer(gw.base_url, gw.login()).connect()
        try:
            connected = await peer.call(TRUNK_NUMBER)
            assert connected["type"] == "connected", connected
            trunk.wait_established()
            await peer.receive(50, timeout=20)

            addr, port, profile = trunk.gateway_media_target()
            assert addr == GWT_HOST, f"gateway offered media on {addr}, expected public_ip {GWT_HOST}"
            answers = [m for m in trunk.sent(status=200) if m.sdp_media()]
            assert answers, "baresip sent no 200 OK with SDP"
            trunk_media = answers[0].sdp_media()  # baresip's own RTP address and port
            drops_before = gw.metrics().sum("gateway_media_drops_total", leg="trunk")

            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((GWT_HOST, 0))
                for i in range(50):  # plain RTP, loud PCMU payload
                    s.sendto(_rtp(FOREIGN_SSRC, 1000 + i, 160 * i, b"\x80" * 160), (addr, port))
                for i in range(20):  # SRTP-looking: random payload and a 10-byte "tag"
                    s.sendto(_rtp(FOREIGN_SSRC + 1, 5000 + i, 160 * i, os.urandom(170)), (addr, port))
            for i in range(50):  # same SSRC, forged to come from baresip's RTP socket
                _send_spoofed_udp(trunk_media[:2], (addr, port),
                                  _rtp(FOREIGN_SSRC, 2000 + i, 160 * (50 + i), b"\x80" * 160))

            def dropped():
                d = gw.metrics().sum("gateway_media_drops_total", leg="trunk") - drops_before
                return d if d >= 100 else None

            await async_wait_until(dropped, 10, 'gateway_media_drops_total{leg="trunk"} to rise by 100',
                                   interval=0.1)
            # the call goes on: keep receiving the trunk's real stream
            before = peer.packets_received
            await peer.receive(before + 50, timeout=20)
            received = peer.packets_received
            ssrcs = dict(peer.rtp_by_ssrc)
            await peer.hangup()
            trunk.wait_bye()
            return received, ssrcs
        finally:
            await peer.close()

    received, ssrcs = asyncio.run(run())
    save_result(workdir, browser_received=received, browser_ssrcs=ssrcs)
    assert FOREIGN_SSRC not in ssrcs and FOREIGN_SSRC + 1 not in ssrcs, ssrcs
    assert len(ssrcs) == 1, f"browser saw several SSRCs: {ssrcs}"
    tx, _ = trunk.wait_rtp_stats()
    # 120 foreign packets were sent; a relay forwards 1:1, so allow a little slack only
    assert received <= tx + 10, f"browser received {received} packets, baresip sent only {tx}: foreign packets forwarded"
