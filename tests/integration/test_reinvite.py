"""The trunk's re-INVITEs (RFC 3261 14, issue 13 item 3): hold, a silence
longer than media.timeout while held, resume, a new media port, the end at
media.hold_timeout, an SDES re-key and a refused downgrade.

SIPp 3.6.1 plays the trunk and sends no RTP of its own: it calls the account
(sipp/uac_reinvite_*.xml; an aiortc browser, harness.BrowserPeer, accepts)
or answers the browser's call (sipp/uas_answer_hold_resume.xml). The
gateway runs with short media timeouts (timeout 5, hold_timeout 60; or 3
and 8), so a silence that would end an unheld call is survived while held.
A new port is a UDP socket of the test, which counts the RTP the gateway
relays from the browser once the re-INVITE moved the leg.

Artifacts in tests/artifacts/<test name>/: gateway/gateway.log,
sipp_uac/messages.log (SIPp's trace), result.json.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time

import pytest

from conftest import _gateway
from harness import GWT_HOST, save_result, sip_header
from test_incoming import _cseq_method, plain_trunk, sdp_body, sessions

pytestmark = pytest.mark.gateway

MEDIA_TIMEOUT = 5
HOLD_TIMEOUT = 60


@pytest.fixture
def gateway_short_timeouts(workdir):
    """A plain-RTP trunk (SIPp calls in; its uri is never called) and
    [media] timeout = 5, hold_timeout = 60."""
    from harness import free_port
    yield from _gateway(workdir, plain_trunk(f"sip:127.0.0.1:{free_port()};transport=udp"),
                        media={"timeout": MEDIA_TIMEOUT, "hold_timeout": HOLD_TIMEOUT})


@pytest.fixture
def start_sipp(workdir):
    from harness import SippUac
    started = []

    def start(gw, **kw):
        s = SippUac(workdir, "uac_reinvite_hold_move.xml", remote=f"127.0.0.1:{gw.sip_port}",
                    service="alice", **kw)
        started.append(s)
        return s.start()

    yield start
    for s in started:
        s.stop()


def _origin_version(sdp: str) -> int:
    m = re.search(r"^o=\S+ \S+ (\d+) ", sdp, re.M)
    assert m, sdp
    return int(m.group(1))


def _rtp_count(sock: socket.socket, seconds: float) -> tuple[int, set]:
    """RTP packets (version 2) arriving at `sock` within `seconds`, and
    their sources."""
    n, sources = 0, set()
    end = time.monotonic() + seconds
    sock.settimeout(0.2)
    while time.monotonic() < end:
        try:
            data, src = sock.recvfrom(2048)
        except socket.timeout:
            continue
        if len(data) >= 12 and data[0] >> 6 == 2:
            n += 1
            sources.add(src)
    return n, sources


def test_trunk_hold_silence_resume_and_move(workdir, gateway_short_timeouts, start_sipp):
    """SIPp calls alice, the browser accepts. re-INVITE a=sendonly: 200 with
    a=recvonly, the browser gets `held` {by: trunk}; 8 s without any RTP
    from SIPp (media.timeout is 5) and the call is up: the next re-INVITE
    (a=sendrecv) gets 200 a=sendrecv and the browser `resumed`; a re-INVITE
    naming a UDP socket of the test as the new port gets 200 (same gateway
    address and port, o= version one up each time), and the browser's audio
    arrives at that socket within 1.5 s; SIPp's BYE is answered 200 and the
    browser gets `hangup`. Before this change each re-INVITE got 488 and
    the call ended in the media timeout."""
    gw = gateway_short_timeouts
    new_media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    new_media.bind((GWT_HOST, 0))
    new_port = new_media.getsockname()[1]

    async def run():
        (peer,) = await sessions(gw, 1)
        try:
            sipp = start_sipp(gw, keys={"newport": new_port})
            incoming = await peer.wait_incoming(10)
            await peer.accept()
            connected = await peer.wait_for({"connected"}, 20, call_id=peer.call_id)
            assert connected["type"] == "connected", connected
            t_connected = time.monotonic()
            held = await peer.wait_for({"held"}, 10, call_id=peer.call_id)
            t_held = time.monotonic()
            resumed = await peer.wait_for({"resumed"}, 20, call_id=peer.call_id)
            t_resumed = time.monotonic()
            # The move comes 0.3 s after the resume; count for 2 s.
            moved, sources = await asyncio.to_thread(_rtp_count, new_media, 2.0)
            hangup = await peer.wait_for({"hangup"}, 10)
            code = await asyncio.to_thread(sipp.wait, 20)
            return dict(sipp=sipp, code=code, incoming=incoming, held=held, resumed=resumed, hangup=hangup,
                        moved=moved, sources=sorted(map(str, sources)),
                        held_for_s=round(t_resumed - t_held, 2), held_after_s=round(t_held - t_connected, 2),
                        messages=[m for m in peer.messages if m.get("type") != "error"])
        finally:
            await peer.close()

    try:
        r = asyncio.run(run())
    finally:
        new_media.close()
    sipp = r["sipp"]
    oks = [m for m in sipp.received(status=200) if _cseq_method(m) == "INVITE"]
    save_result(workdir, sipp_exit=r["code"], held=r["held"], resumed=r["resumed"], hangup=r["hangup"],
                moved_packets=r["moved"], moved_sources=r["sources"], held_for_s=r["held_for_s"],
                browser_messages=[m.get("type") for m in r["messages"]],
                sipp_received=[m.first_line for m in sipp.received()])
    assert r["code"] == 0, f"sipp exit {r['code']} ({sipp.msg_path}, {sipp.err_path})"
    assert r["held"] == {"type": "held", "id": r["incoming"]["id"], "by": "trunk"}, r["held"]
    assert r["resumed"] == {"type": "resumed", "id": r["incoming"]["id"], "by": "trunk"}, r["resumed"]
    assert r["held_for_s"] > MEDIA_TIMEOUT + 1, f"held only {r['held_for_s']} s"
    # One 200 per INVITE (retransmissions aside): the call's, then three.
    by_cseq = {}
    for m in oks:
        by_cseq.setdefault(sip_header(m.text, "CSeq").split()[0], m)
    assert sorted(by_cseq) == ["1", "2", "3", "4"], [m.first_line for m in oks]
    sdps = [sdp_body(by_cseq[c].text) for c in ["1", "2", "3", "4"]]
    assert "a=recvonly" in sdps[1], sdps[1]
    assert "a=sendrecv" in sdps[2] and "a=sendrecv" in sdps[3], sdps[2:]
    media = [by_cseq[c].sdp_media() for c in ["1", "2", "3", "4"]]
    assert len(set(media)) == 1 and media[0][0] == GWT_HOST and media[0][2] == "RTP/AVP", media
    versions = [_origin_version(s) for s in sdps]
    assert versions == list(range(versions[0], versions[0] + 4)), versions
    assert r["moved"] > 20, f"{r['moved']} RTP packets at the new port {new_port}"
    assert r["sources"] == [str((GWT_HOST, media[0][1]))], r["sources"]
    assert r["hangup"].get("code") == 200, r["hangup"]
    assert "hangup" not in [m.get("type") for m in r["messages"][:-1]], r["messages"]
    assert "panicked" not in gw.log()


def test_trunk_holds_and_resumes_an_outgoing_call(workdir):
    """The browser calls SIPp (sipp/uas_answer_hold_resume.xml, plain
    RTP/AVP, no RTP from SIPp); 1 s after its ACK SIPp re-INVITEs with
    a=sendonly: 200 a=recvonly from the gateway's dialog as UAC, `held`
    {by: trunk} at the browser; 7 s of silence (media.timeout is 5) and
    SIPp's re-INVITE a=sendrecv gets 200 a=sendrecv, `resumed`; SIPp's BYE
    ends the call (browser `hangup` 200, its only hangup)."""
    from harness import BrowserPeer, Gateway, SippUas, TrunkSpec
    from conftest import TRUNK_NUMBER
    sipp = SippUas(workdir, "uas_answer_hold_resume.xml").start()
    gw = Gateway(workdir, trunk=TrunkSpec("carrier", sipp.uri, callee_stream="decrypted",
                                          secure_media="forbidden"),
                 media={"timeout": MEDIA_TIMEOUT, "hold_timeout": HOLD_TIMEOUT}).start()
    try:
        async def run():
            peer = await BrowserPeer(gw.base_url, gw.login()).connect()
            try:
                connected = await peer.call(TRUNK_NUMBER)
                assert connected["type"] == "connected", connected
                held = await peer.wait_for({"held"}, 10, call_id=peer.call_id)
                t_held = time.monotonic()
                resumed = await peer.wait_for({"resumed"}, 20, call_id=peer.call_id)
                held_for = time.monotonic() - t_held
                hangup = await peer.wait_for({"hangup"}, 10)
                return dict(held=held, resumed=resumed, hangup=hangup, held_for_s=round(held_for, 2),
                            id=peer.call_id, types=[m.get("type") for m in peer.messages])
            finally:
                await peer.close()

        r = asyncio.run(run())
        code = sipp.wait(20)
    finally:
        sipp.stop()
        gw_code = gw.stop()
    save_result(workdir, sipp_exit=code, **{k: r[k] for k in ("held", "resumed", "hangup", "held_for_s", "types")})
    assert code == 0, f"sipp exit {code} ({sipp.msg_path}, {sipp.err_path})"
    assert gw_code == 0 and "panicked" not in gw.log()
    assert r["held"] == {"type": "held", "id": r["id"], "by": "trunk"}, r["held"]
    assert r["resumed"] == {"type": "resumed", "id": r["id"], "by": "trunk"}, r["resumed"]
    assert r["held_for_s"] > MEDIA_TIMEOUT + 1, r["held_for_s"]
    assert r["hangup"].get("code") == 200 and r["types"].count("hangup") == 1, r["types"]
    oks = [m for m in sipp.received(status=200) if _cseq_method(m) == "INVITE"]
    sdps = {sip_header(m.text, "CSeq").split()[0]: sdp_body(m.text) for m in oks}
    assert "a=recvonly" in sdps["1"] and "a=sendrecv" in sdps["2"], sdps
    assert _origin_version(sdps["2"]) == _origin_version(sdps["1"]) + 1, sdps


def test_a_held_call_ends_at_the_hold_timeout(workdir):
    """SIPp calls alice, holds (a=sendonly, 200 a=recvonly, `held`) and
    never sends RTP nor resumes. With media.timeout = 3 and
    media.hold_timeout = 8 the call outlives the 3 s but the gateway ends
    it at the hold timeout: the browser's `hangup` is 408 "no media
    received" about 8 s after the call connected, and SIPp gets the BYE."""
    from harness import free_port, Gateway, SippUac
    gw = Gateway(workdir, trunk=plain_trunk(f"sip:127.0.0.1:{free_port()};transport=udp"),
                 media={"timeout": 3, "hold_timeout": 8}).start()
    sipp = None
    try:
        async def run():
            nonlocal sipp
            (peer,) = await sessions(gw, 1)
            try:
                sipp = SippUac(workdir, "uac_reinvite_hold_forever.xml", remote=f"127.0.0.1:{gw.sip_port}",
                               service="alice").start()
                await peer.wait_incoming(10)
                await peer.accept()
                connected = await peer.wait_for({"connected"}, 20, call_id=peer.call_id)
                assert connected["type"] == "connected", connected
                t_connected = time.monotonic()
                held = await peer.wait_for({"held"}, 10, call_id=peer.call_id)
                hangup = await peer.wait_for({"hangup"}, 20)
                return dict(held=held, hangup=hangup, ended_after_s=round(time.monotonic() - t_connected, 2))
            finally:
                await peer.close()

        r = asyncio.run(run())
        code = sipp.wait(20)
    finally:
        if sipp is not None:
            sipp.stop()
        gw_code = gw.stop()
    save_result(workdir, sipp_exit=code, **r)
    assert r["held"].get("type") == "held", r
    assert r["hangup"].get("code") == 408, r["hangup"]
    assert 6.5 <= r["ended_after_s"] <= 11, f"ended {r['ended_after_s']} s after connected"
    assert code == 0, f"sipp exit {code} ({sipp.msg_path}, {sipp.err_path})"
    assert sipp.received("BYE"), sipp.msg_path
    assert gw_code == 0 and "panicked" not in gw.log()


def _crypto(sdp: str) -> list[tuple[str, str, str]]:
    """(tag, suite, inline key) of every a=crypto line."""
    return re.findall(r"^a=crypto:(\d+) (\S+) inline:([^\s|]+)", sdp, re.M)


def test_sdes_trunk_rekeys_and_a_downgrade_is_refused(workdir):
    """An SDES trunk (secure_media = "mandatory"): SIPp
    (sipp/uac_reinvite_sdes.xml) calls alice, the browser accepts. A
    re-INVITE with the same key and a=sendonly gets 200 a=recvonly with our
    key unchanged (`held`); one with a new key of the trunk gets 200 with a
    fresh key of ours (same tag 2, same suite; `resumed`); an RTP/AVP
    re-INVITE gets 488 and the call goes on: SIPp's BYE gets 200 and the
    browser's only `hangup` is that one."""
    from harness import free_port, Gateway, SippUac, TrunkSpec
    gw = Gateway(workdir, trunk=TrunkSpec("carrier", f"sip:127.0.0.1:{free_port()};transport=udp",
                                          callee_stream="sdes", secure_media="mandatory")).start()
    sipp = None
    try:
        async def run():
            nonlocal sipp
            (peer,) = await sessions(gw, 1)
            try:
                sipp = SippUac(workdir, "uac_reinvite_sdes.xml", remote=f"127.0.0.1:{gw.sip_port}",
                               service="alice").start()
                await peer.wait_incoming(10)
                await peer.accept()
                connected = await peer.wait_for({"connected"}, 20, call_id=peer.call_id)
                assert connected["type"] == "connected", connected
                await peer.wait_for({"hangup"}, 20)
                return [m for m in peer.messages if m.get("type") not in ("error", "incoming")]
            finally:
                await peer.close()

        messages = asyncio.run(run())
        code = sipp.wait(20)
    finally:
        if sipp is not None:
            sipp.stop()
        gw_code = gw.stop()
    finals = {}
    for m in sipp.received():
        if _cseq_method(m) == "INVITE" and not m.first_line.split()[1].startswith("1"):
            finals.setdefault(sip_header(m.text, "CSeq").split()[0], m)
    save_result(workdir, sipp_exit=code, browser=[m.get("type") for m in messages],
                finals={k: v.first_line for k, v in finals.items()})
    assert code == 0, f"sipp exit {code} ({sipp.msg_path}, {sipp.err_path})"
    assert [m.get("type") for m in messages] == ["connected", "held", "resumed", "hangup"], messages
    assert messages[-1].get("code") == 200, messages[-1]
    assert {k: v.first_line.split()[1] for k, v in finals.items()} == \
        {"1": "200", "2": "200", "3": "200", "4": "488"}, finals
    first, hold, rekey = (_crypto(sdp_body(finals[c].text)) for c in ("1", "2", "3"))
    assert len(first) == len(hold) == len(rekey) == 1, (first, hold, rekey)
    assert first[0][:2] == ("2", "AES_CM_128_HMAC_SHA1_80"), first
    assert "a=recvonly" in sdp_body(finals["2"].text)
    assert hold == first, "a direction change keeps our key"
    assert rekey[0][:2] == first[0][:2] and rekey[0][2] != first[0][2], "a re-key gets a fresh key of ours"
    assert gw_code == 0 and "panicked" not in gw.log()
