"""Self-checks of the harness, independent of the gateway: the baresip trunk
answers a real SIP peer, plays its tone, records what it hears, counts RTP
and logs the BYE; the aiortc stand-in sends and measures a tone. They run
first, so that a failure of the gateway tests is the gateway's."""

from __future__ import annotations

import asyncio
import subprocess

from conftest import TRUNK_NUMBER
from harness import (
    GWT_HOST,
    SILENCE_RMS,
    TONE_RMS_MIN,
    Baresip,
    async_wait_until,
    free_port,
    make_tone_track,
    wav_info,
)


def test_tone_wav(tone_wav):
    info = wav_info(tone_wav)
    assert info.rate == 8000 and info.seconds >= 5
    assert 5000 < info.rms < 6000


def test_baresip_plain_answers_sipp(workdir, baresip_plain):
    """sipp's built-in uac (INVITE with SDP, ACK, 2 s, BYE) against the
    plain-RTP trunk: baresip auto-answers, sends RTP to sipp's media port on
    GWT_HOST, hears nothing (sipp sends no RTP) and logs the BYE."""
    b = baresip_plain
    out = workdir / "sipp.log"
    with open(out, "wb") as log:
        rc = subprocess.run(
            ["sipp", "-sn", "uac", "-s", TRUNK_NUMBER, "-i", "127.0.0.1", "-p", str(free_port()),
             "-mi", GWT_HOST, "-mp", str(free_port()), "-d", "2000", "-m", "1", "-l", "1",
             "-timeout", "20", "-timeout_error", "-nostdin", f"127.0.0.1:{b.sip_port}"],
            stdout=log, stderr=subprocess.STDOUT, cwd=workdir, timeout=60,
        ).returncode
    assert rc == 0, f"sipp failed ({rc}), see {out}"
    assert b.received("INVITE") and b.sent(status=200)
    b.wait_bye()
    tx, rx = b.wait_rtp_stats()
    assert tx > 50, f"baresip sent only {tx} RTP packets"
    assert rx == 0
    heard = b.dec_wav()
    assert heard.samples == 0 or heard.rms < SILENCE_RMS


def test_baresip_sdes_call_between_two_baresips(workdir, tone_wav, baresip_sdes):
    """A second baresip (srtp-mand) calls the SDES trunk through ctrl_tcp:
    both negotiate SRTP, each hears the other's tone, the trunk logs the BYE
    and its packet counts."""
    callee = baresip_sdes
    caller = Baresip(workdir, tone_wav, user="caller", srtp=True, name="caller").start()
    try:
        resp = caller.command("dial", callee.uri)
        assert resp["ok"], resp
        callee.wait_established()
        assert callee.received("INVITE")[0].sdp_media()[2] == "RTP/SAVP"
        assert callee.srtp_enabled() and caller.srtp_enabled()
        callee.wait_heard_seconds(2.0)
        caller.wait_heard_seconds(2.0)
        assert caller.command("hangup")["ok"]
        callee.wait_bye()
        tx, rx = callee.wait_rtp_stats()
        assert tx > 50 and rx > 50, (tx, rx)
        assert callee.dec_wav().rms > TONE_RMS_MIN
        assert caller.dec_wav().rms > TONE_RMS_MIN
        media = callee.gateway_media_target()
        assert media[0] == GWT_HOST and media[1] > 0
    finally:
        caller.stop()


def test_aiortc_tone_loopback():
    """Two aiortc peers in the namespace: the tone track and the audio/packet
    measurements of the browser stand-in work."""

    async def run():
        from aiortc import RTCConfiguration, RTCPeerConnection
        from harness import AudioSink

        a = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        b = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        a.addTrack(make_tone_track())
        sink = AudioSink()
        b.on("track", lambda track: sink.start(track))
        b.addTrack(make_tone_track())
        await a.setLocalDescription(await a.createOffer())
        assert f"c=IN IP4 {GWT_HOST}" in a.localDescription.sdp
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
        try:
            await async_wait_until(lambda: sink.frames >= 100, 20, "100 audio frames at the receiver")
            stats = await b.getStats()
            received = sum(s.packetsReceived for s in stats.values() if s.type == "inbound-rtp")
            assert received >= 90
            assert sink.rms > TONE_RMS_MIN, sink.rms
        finally:
            await sink.stop()
            await a.close()
            await b.close()

    asyncio.run(run())
