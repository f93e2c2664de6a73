"""DTMF both ways (issue 13 item 1) with real peers.

- browser -> trunk: an aiortc browser (harness.BrowserPeer, which offers no
  telephone-event) sends `dtmf`; the gateway offered baresip
  telephone-event/8000 itself and sends RFC 4733 events in the browser's
  stream; baresip 1.0 logs each digit it decodes.
- trunk -> browser: baresip sends digits (ctrl_tcp `sndcode`, RFC 4733);
  an aiortc browser whose offer carries telephone-event/8000 gets the
  events as RTP (counted by payload type) and one `dtmf` message per digit.
- SIP INFO: SIPp calls the account and sends INFO application/dtmf-relay
  and application/dtmf (200, `dtmf` at the browser) and one with another
  body type (415).

Artifacts in tests/artifacts/<test name>/.
"""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from conftest import TRUNK_NUMBER
from harness import BrowserPeer, async_wait_until, save_result, wait_until

pytestmark = pytest.mark.gateway

TE_PT = 126


def _received_digits(trunk) -> str:
    """The digits baresip logged as received, in order. baresip 1.0 logs
    "received event: '5' (end=0)" when an RFC 4733 event starts and
    "(end=1)" when it ends (found by experiment); its jitter buffer holds
    the last packets until more arrive, so the call's voice must go on."""
    return "".join(re.findall(r"received event: '(.)' \(end=0\)", trunk.log()))


async def _connected_call(gw, trunk, mangle=None) -> BrowserPeer:
    peer = await BrowserPeer(gw.base_url, gw.login()).connect()
    connected = await peer.call(TRUNK_NUMBER, mangle=mangle)
    assert connected["type"] == "connected", f"expected connected, got {connected}"
    trunk.wait_established()
    # Media flows both ways before the digits.
    await peer.receive(25, timeout=10)
    return peer


def test_dtmf_browser_to_baresip(workdir, gateway_sdes, baresip_sdes):
    """`dtmf` {digits: "19#"} during an SDES-SRTP call to baresip: baresip
    logs 1, 9, # (RFC 4733 events in the stream it already decrypts, so
    SSRC, sequence and SRTP index continue). The INVITE offered
    telephone-event/8000 although the browser did not. Then the errors:
    an invalid digit (400), an unknown call id (404)."""
    gw, trunk = gateway_sdes, baresip_sdes

    async def run():
        peer = await _connected_call(gw, trunk)
        try:
            t0 = time.monotonic()
            await peer.send({"type": "dtmf", "id": peer.call_id, "digits": "19#"})
            # Not wait_until: aiortc's media must keep flowing meanwhile.
            await async_wait_until(lambda: len(_received_digits(trunk)) >= 3, 10,
                                   f"three digits in baresip's log ({trunk.log_path})")
            elapsed = time.monotonic() - t0
            await peer.send({"type": "dtmf", "id": peer.call_id, "digits": "1x"})
            bad = await peer.next_message({"error"}, 5)
            await peer.send({"type": "dtmf", "id": "nosuchcall", "digits": "1"})
            unknown = await peer.next_message({"error"}, 5)
            # The call goes on: audio still arrives after the digits.
            before = peer.packets_received
            await peer.receive(before + 25, timeout=5)
            await peer.hangup()
            trunk.wait_bye()
            return elapsed, bad, unknown
        finally:
            await peer.close()

    elapsed, bad, unknown = asyncio.run(run())
    digits = _received_digits(trunk)
    save_result(workdir, baresip_digits=digits, seconds_to_third_digit=round(elapsed, 2),
                invalid=bad, unknown=unknown)
    invite = trunk.received("INVITE")[0]
    assert re.search(r"a=rtpmap:\d+ telephone-event/8000", invite.text), invite.text
    assert digits == "19#", f"baresip logged {digits!r}"
    # The events continued the stream baresip decrypts: nothing lost
    # (X-RTP-Stat of its 200 to our BYE: PL=<lost>,...).
    stat = trunk.sent(status=200)[-1].text
    lost = re.search(r"X-RTP-Stat:.*;PL=(\d+),", stat)
    assert lost and lost.group(1) == "0", stat
    assert bad["code"] == 400 and "not a DTMF digit" in bad["message"], bad
    assert unknown["code"] == 404 and unknown["id"] == "nosuchcall", unknown


def _offer_telephone_event(sdp: str, pt: int = TE_PT) -> str:
    """aiortc offers no telephone-event; a browser (RTCDTMFSender) does:
    add telephone-event/8000 as `pt` (126, as Chrome numbers it)."""
    sdp = re.sub(r"^(m=audio .*?)\r?$", lambda m: m.group(1) + f" {pt}", sdp, count=1, flags=re.M)
    return re.sub(r"(a=rtpmap:\d+ PCMU/8000\r\n)", rf"\1a=rtpmap:{pt} telephone-event/8000\r\n", sdp, count=1)


def _count_telephone_events(peer, pt: int = TE_PT) -> list:
    """RTP packets of PT TE_PT reaching aiortc, as (timestamp, payload),
    taken where its DTLS transport routes decrypted RTP: aiortc knows no
    telephone-event, and its router drops payload types it did not
    negotiate before any receiver sees them."""
    seen = []
    router = peer.pc.getTransceivers()[0].receiver.transport._rtp_router
    orig = router.route_rtp

    def tap(packet):
        if packet.payload_type == pt:
            seen.append((packet.timestamp, bytes(packet.payload)))
        return orig(packet)

    router.route_rtp = tap
    return seen


def test_dtmf_baresip_to_browser(workdir, gateway_sdes, baresip_sdes):
    """baresip sends 5 and 8 (ctrl_tcp `sndcode 58`, RFC 4733) during a
    call from a browser that offered telephone-event/8000: the browser gets
    the events as RTP under its own PT 126 and exactly two `dtmf` messages,
    5 then 8 (one per event, not per packet)."""
    gw, trunk = gateway_sdes, baresip_sdes

    async def run():
        peer = await _connected_call(gw, trunk, mangle=_offer_telephone_event)
        try:
            events = _count_telephone_events(peer)
            since = len(peer.messages)
            r = trunk.command("sndcode", "58")
            assert r.get("ok"), r
            await async_wait_until(
                lambda: len([m for m in peer.messages[since:] if m.get("type") == "dtmf"]) >= 2, 10,
                f"two dtmf messages (got {peer.messages[since:]})")
            # A second more of the call: no further dtmf message may come
            # from the events' update and end packets.
            await peer.receive(peer.packets_received + 50, timeout=5)
            dtmf = [m for m in peer.messages[since:] if m.get("type") == "dtmf"]
            await peer.hangup()
            trunk.wait_bye()
            return dtmf, list(events)
        finally:
            await peer.close()

    dtmf, events = asyncio.run(run())
    timestamps = sorted({ts for ts, _ in events})
    codes = [payload[0] for ts, payload in sorted(events) if payload]
    save_result(workdir, dtmf=dtmf, te_packets=len(events), te_timestamps=timestamps)
    invite = trunk.received("INVITE")[0]
    assert f"a=rtpmap:{TE_PT} telephone-event/8000" in invite.text, invite.text
    assert [m["digit"] for m in dtmf] == ["5", "8"], dtmf
    assert all(m["id"] for m in dtmf), dtmf
    assert len(events) >= 4, f"{len(events)} telephone-event packets reached the browser"
    assert len(timestamps) == 2, timestamps
    assert set(codes) == {5, 8}, codes


@pytest.fixture
def gateway_for_sipp(workdir):
    """A plain-RTP trunk (SIPp calls in; its uri is never called)."""
    from conftest import _gateway
    from harness import free_port
    from test_incoming import plain_trunk
    yield from _gateway(workdir, plain_trunk(f"sip:127.0.0.1:{free_port()};transport=udp"))


def test_dtmf_sip_info_from_trunk(workdir, gateway_for_sipp):
    """SIPp calls alice (the browser accepts, with telephone-event/8000 added
    to aiortc's answer under the trunk's PT 101) and sends INFO
    application/dtmf-relay Signal=5, INFO application/dtmf "#" and an INFO
    of another body type: 200, 200 and 415 with Accept (the scenario
    fails on anything else); the browser gets `dtmf` 5 then #, nothing for
    the third, and the two digits as RFC 4733 events played into its
    stream (4 packets each, one timestamp each, codes 5 and 11); SIPp's BYE
    ends the call."""
    from harness import SippUac
    from test_incoming import sessions
    gw = gateway_for_sipp
    sipp = SippUac(workdir, "uac_info_dtmf.xml", remote=f"127.0.0.1:{gw.sip_port}", service="alice")

    async def run():
        (peer,) = await sessions(gw, 1)
        try:
            sipp.start()
            await peer.wait_incoming(10)
            await peer.accept(mangle=lambda sdp: _offer_telephone_event(sdp, 101))
            events = _count_telephone_events(peer, 101)
            connected = await peer.wait_for({"connected"}, 20, call_id=peer.call_id)
            assert connected["type"] == "connected", connected
            hangup = await peer.wait_for({"hangup"}, 20, call_id=peer.call_id)
            return [m for m in peer.messages if m.get("type") == "dtmf"], hangup, list(events)
        finally:
            await peer.close()

    try:
        dtmf, hangup, events = asyncio.run(run())
        code = sipp.wait(20)
    finally:
        sipp.stop()
    refused = sipp.received(status=415)
    played = sorted({(ts, payload[0]) for ts, payload in events if payload})
    save_result(workdir, dtmf=dtmf, hangup=hangup, sipp_exit=code, te_packets=len(events), played=played,
                info_answers=[m.status for m in sipp.received() if m.text.startswith("SIP/2.0")
                              and "INFO" in (re.search(r"^CSeq:.*$", m.text, re.M | re.I) or [""])[0]])
    assert code == 0, f"SIPp scenario failed (trace: {sipp.msg_path})"
    assert [m["digit"] for m in dtmf] == ["5", "#"], dtmf
    assert refused and re.search(r"^Accept:.*application/dtmf-relay", refused[0].text, re.M | re.I), refused
    assert hangup["type"] == "hangup", hangup
    assert [code for _, code in played] == [5, 11] and len(events) == 8, (played, len(events))


def test_dtmf_by_sip_info_to_a_trunk_without_telephone_event(workdir):
    """SIPp (sipp/uas_info_dtmf_in.xml, -rtp_echo) answers PCMU without
    telephone-event: the browser's `dtmf` "19#" reaches it as three SIP
    INFOs, application/dtmf-relay Signal=1, 9, # with Duration=100, in
    order, one after the other's 200 and at least 200 ms apart (the cadence
    of our RFC 4733 digits); no `error` at the browser, whose echoed audio
    goes on; the browser's hangup is SIPp's BYE."""
    from harness import run_browser_against_sipp

    async def browser(peer, gw):
        connected = await peer.call(TRUNK_NUMBER)
        assert connected["type"] == "connected", connected
        await peer.receive(50, timeout=20)
        await peer.send({"type": "dtmf", "id": peer.call_id, "digits": "19#"})
        await asyncio.sleep(1.5)
        received, _ = await peer.stats()
        errors = [m for m in peer.messages if m.get("type") == "error"]
        counted = gw.metrics().sum("gateway_dtmf_digits_total", direction="to_trunk", method="info")
        await peer.hangup()
        return errors, received, counted

    run = run_browser_against_sipp(workdir, "uas_info_dtmf_in.xml", browser, extra=["-rtp_echo"])
    errors, received, counted = run.result
    infos = run.sipp.received("INFO")
    texts = [m.text.replace("\r", "") for m in infos]
    bodies = [t.split("\n\n", 1)[-1].strip() for t in texts]
    save_result(workdir, sipp_exit=run.sipp_code, errors=errors, browser_received=received,
                infos=[(round(m.time - infos[0].time, 3), b) for m, b in zip(infos, bodies)])
    assert run.sipp_code == 0, f"sipp exit {run.sipp_code} ({run.sipp.msg_path}, {run.sipp.err_path})"
    assert run.gw_code == 0 and "panicked" not in run.gw.log()
    assert not errors, errors
    assert len(infos) == 3, [m.first_line for m in infos]
    for text, body, digit in zip(texts, bodies, "19#"):
        assert re.search(r"^Content-Type: *application/dtmf-relay$", text, re.M | re.I), text
        assert body == f"Signal={digit}\nDuration=100", body
    gaps = [b.time - a.time for a, b in zip(infos, infos[1:])]
    assert all(g >= 0.19 for g in gaps), f"INFOs {gaps} s apart"
    # no digit is ever logged (PINs, card numbers)
    assert "Signal=" not in run.gw.log()
    assert received > 100, received
    assert counted == 3, f"gateway_dtmf_digits_total{{to_trunk,info}} is {counted}"
