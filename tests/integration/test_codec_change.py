"""The trunk changes the codec mid-call (issue 13 item 3): SIPp answers the
browser's call with PCMU, then re-INVITEs with PCMA only
(sipp/uas_codec_change.xml). The gateway re-offers the browser (`offer`),
the aiortc browser answers (`answer`, harness.BrowserPeer.answer_offer) and
the gateway answers SIPp's re-INVITE with PCMA. The trunk's media goes to an
echo socket of the test, which records the payload type of every packet it
gets from the gateway and sends each one back: after the change it must get
PT 8, and the browser must still hear its tone, echoed.

Artifacts in tests/artifacts/<test name>/: gateway/gateway.log,
sipp/messages.log, result.json.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from harness import GWT_HOST, SIPP_DIR, run_browser_against_sipp, save_result

pytestmark = pytest.mark.gateway


class PtEcho:
    """A UDP socket that echoes RTP to its source and records the payload
    types, in order of arrival."""

    def __init__(self, host: str):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.pts: list[int] = []
        self.times: list[float] = []  # time.time() of each, for SIPp's clock
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while self.running:
            try:
                data, src = self.sock.recvfrom(2048)
            except socket.timeout:
                continue
            except OSError:
                return
            if len(data) >= 12 and data[0] >> 6 == 2:
                self.pts.append(data[1] & 0x7F)
                self.times.append(time.time())
                self.sock.sendto(data, src)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join(2)
        self.sock.close()


def update_variant(workdir) -> str:
    """sipp/uas_codec_change.xml with an UPDATE (RFC 3311) in place of the
    re-INVITE: same SDP, CSeq method UPDATE, no ACK after its 200."""
    text = (SIPP_DIR / "uas_codec_change.xml").read_text()
    assert text.count("      INVITE [next_url] SIP/2.0") == 1 and text.count("CSeq: 1 INVITE") == 1
    text = text.replace("      INVITE [next_url] SIP/2.0", "      UPDATE [next_url] SIP/2.0")
    text = text.replace("CSeq: 1 INVITE", "CSeq: 1 UPDATE")
    ack = text.index("      ACK [next_url] SIP/2.0")
    start = text.rindex("  <send>", 0, ack)
    end = text.index("  </send>", ack) + len("  </send>\n")
    scenario = workdir / "uas_codec_change_update.xml"
    scenario.write_text(text[:start] + text[end:])
    return str(scenario)


@pytest.mark.parametrize("method", ["INVITE", "UPDATE"])
def test_trunk_reinvite_to_pcma_is_reoffered_to_the_browser(workdir, method):
    """The trunk's re-INVITE (or, the same with UPDATE, RFC 3311) drops
    PCMU for PCMA: the browser gets our `offer`, answers, the trunk gets a
    200 with PCMA and only PCMA from then on; the browser hears its echo."""
    from conftest import TRUNK_NUMBER

    async def browser(peer, gw):
        connected = await peer.call(TRUNK_NUMBER)
        assert connected["type"] == "connected", connected
        offer = await peer.wait_for({"offer"}, 10, call_id=peer.call_id)
        assert offer["type"] == "offer", offer
        before = echo.pts.copy()
        loud_before, rtp_before = peer.sink.loud_frames, peer.packets_received
        answer = await peer.answer_offer(offer)
        hangup = await peer.wait_for({"hangup"}, 15)
        return dict(offer=offer["sdp"], answer=answer, hangup=hangup, pts_before=before,
                    loud_after=peer.sink.loud_frames - loud_before, loud_before=loud_before,
                    rtp_before=rtp_before, rtp_after=peer.packets_received - rtp_before,
                    frames=peer.sink.frames)

    with PtEcho(GWT_HOST) as echo:
        scenario = "uas_codec_change.xml" if method == "INVITE" else update_variant(workdir)
        run = run_browser_against_sipp(workdir, scenario, browser, keys={"echo_port": echo.port})
    r = run.result
    after = echo.pts[len(r["pts_before"]):]
    figures = dict(sipp_exit=run.sipp_code, pts_before={pt: r["pts_before"].count(pt) for pt in (0, 8)},
                   pts_after={pt: after.count(pt) for pt in (0, 8)}, loud_frames_before=r["loud_before"],
                   loud_frames_after=r["loud_after"], browser_rtp_before=r["rtp_before"],
                   browser_rtp_after=r["rtp_after"], frames=r["frames"], hangup=r["hangup"])
    save_result(workdir, **figures, offer=r["offer"], answer=r["answer"])
    assert run.sipp_code == 0, f"sipp exit {run.sipp_code} ({run.sipp.msg_path}, {run.sipp.err_path})"
    assert run.gw_code == 0 and "panicked" not in run.gw.log()
    # The re-offer keeps ICE and DTLS, offers PCMA; the browser took it.
    assert "a=rtpmap:8 PCMA/8000" in r["offer"] and "PCMU" not in r["offer"], r["offer"]
    assert "a=ice-lite" in r["offer"]
    assert "PCMA/8000" in r["answer"], r["answer"]
    # PCMU before the change, PCMA after it at the trunk.
    assert r["pts_before"].count(0) >= 50 and 8 not in r["pts_before"], figures
    assert after.count(8) >= 50, figures
    assert after[-50:] == [8] * 50, figures
    # The browser still hears its tone, echoed by the trunk, in PCMA.
    assert r["loud_after"] >= 50, figures
    assert r["hangup"].get("code") == 200, r["hangup"]


def late_variant(workdir) -> str:
    """sipp/uas_codec_change.xml whose re-INVITE must be refused: 488 (the
    browser does not answer in time), ACKed with the INVITE's Via, then 6 s
    of media before the BYE."""
    text = (SIPP_DIR / "uas_codec_change.xml").read_text()
    ok = """  <recv response="200">
    <action>
      <ereg regexp="a=rtpmap:8 PCMA/8000" search_in="body" check_it="true" assign_to="v1" />
    </action>
  </recv>"""
    assert text.count(ok) == 1 and text.count('<Reference variables="v1" />') == 1
    text = text.replace(ok, '  <recv response="488" />').replace('<Reference variables="v1" />', "")
    ack = text.index("      ACK [next_url] SIP/2.0")
    via = text.index("      Via:", ack)
    text = text[:via] + "      [last_Via:]" + text[text.index("\n", via):]
    text = text.replace('<pause milliseconds="3000" />', '<pause milliseconds="6000" />')
    scenario = workdir / "uas_codec_change_refused.xml"
    scenario.write_text(text)
    return str(scenario)


def test_a_late_answer_to_the_reoffer_is_taken_back(workdir):
    """The browser answers our re-offer (PCMA) only after the 4 s the trunk
    waits: SIPp's re-INVITE gets 488 and the trunk keeps PCMU. The late
    answer brings the browser a second `offer` (PCMU again, its o= version
    one above the first), which it answers; the trunk never gets PCMA, and
    after the second answer the echo socket gets PCMU and the browser hears
    its tone again."""
    from conftest import TRUNK_NUMBER

    async def browser(peer, gw):
        connected = await peer.call(TRUNK_NUMBER)
        assert connected["type"] == "connected", connected
        first = await peer.wait_for({"offer"}, 10, call_id=peer.call_id)
        assert first["type"] == "offer", first
        await asyncio.sleep(4.6)  # past the gateway's wait: the trunk got 488
        since = len(peer.messages)
        await peer.answer_offer(first)
        second = await peer.wait_for({"offer"}, 5, since=since, call_id=peer.call_id)
        assert second["type"] == "offer", second
        pts_at = len(echo.pts)
        loud_at = peer.sink.loud_frames
        await peer.answer_offer(second)
        hangup = await peer.wait_for({"hangup"}, 15)
        errors = [m for m in peer.messages if m.get("type") == "error"]
        return dict(first=first["sdp"], second=second["sdp"], hangup=hangup, errors=errors,
                    pts_at=pts_at, loud_after=peer.sink.loud_frames - loud_at)

    with PtEcho(GWT_HOST) as echo:
        run = run_browser_against_sipp(workdir, late_variant(workdir), browser, keys={"echo_port": echo.port},
                                       sipp_wait=30)
    r = run.result
    after = echo.pts[r["pts_at"]:]
    version = [int(sdp.split("o=", 1)[1].split()[2]) for sdp in (r["first"], r["second"])]
    save_result(workdir, sipp_exit=run.sipp_code, versions=version, errors=r["errors"], hangup=r["hangup"],
                pts_all={pt: echo.pts.count(pt) for pt in (0, 8)}, pts_after={pt: after.count(pt) for pt in (0, 8)},
                loud_after=r["loud_after"])
    assert run.sipp_code == 0, f"sipp exit {run.sipp_code} ({run.sipp.msg_path}, {run.sipp.err_path})"
    assert run.gw_code == 0 and "panicked" not in run.gw.log()
    assert "PCMA/8000" in r["first"] and "PCMU" not in r["first"], r["first"]
    assert "a=rtpmap:0 PCMU/8000" in r["second"] and "PCMA" not in r["second"], r["second"]
    assert version[1] == version[0] + 1, version
    assert not r["errors"], r["errors"]
    assert 8 not in echo.pts, "the trunk refused PCMA and never got it"
    assert after.count(0) >= 50, after[-10:]
    assert r["loud_after"] >= 50, r
    assert r["hangup"].get("code") == 200, r["hangup"]


WAIT_FOR_BYE = """  <recv request="BYE" />
  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
  <Reference variables="v1" />
  <timewait milliseconds="500" />
</scenario>
"""


# The Opus variant of sipp/uas_codec_change.xml: the call starts on Opus
# with telephone-event/48000 (Chromium's PTs 111 and 110), the re-INVITE
# moves it to PCMA with telephone-event/8000 under the trunk's own PT 101.
OPUS_ANSWER = ("m=audio [echo_port] RTP/AVP 111 110\n      a=rtpmap:111 opus/48000/2\n"
               "      a=rtpmap:110 telephone-event/48000")
PCMA_TE_REOFFER = ("m=audio [echo_port] RTP/AVP 8 101\n      a=rtpmap:8 PCMA/8000\n"
                   "      a=rtpmap:101 telephone-event/8000")


@pytest.mark.chromium
@pytest.mark.timeout(240)
@pytest.mark.parametrize("start", ["pcmu", "opus_then_dtmf"])
def test_chromium_follows_the_trunks_codec_change(workdir, start):
    """The same change with headless Chromium and the web client
    (tests/e2e/chromium-call.mjs, EXPECT_CODEC=PCMA): SIPp answers PCMU,
    re-INVITEs PCMA only 2.5 s after its ACK, and waits for the page's
    hangup (the scenario's own BYE replaced by a wait for ours). The page
    answers the gateway's `offer` itself; after 5 s of media both of its
    directions use PCMA, and 2 s more bring packets and audio energy (the
    echo socket returns its audio). The echo socket gets PCMU before and
    only PCMA after.

    opus_then_dtmf: the call starts on Opus (48 kHz), and the change to
    PCMA also gives the browser's telephone-event another number and clock
    (110/48000 → 126/8000) and the trunk's another number (101): a digit
    pressed on the dial pad after the change must reach the trunk as
    telephone-event PT 101 (the relay used to look the event up by the
    browser's old number and send nothing)."""
    from harness import SIPP_DIR, Gateway, SippUas, TrunkSpec
    from test_chromium import _run_script
    text = (SIPP_DIR / "uas_codec_change.xml").read_text()
    text = text[:text.index('  <pause milliseconds="3000" />')] + WAIT_FOR_BYE
    before_pt, extra = 0, {}
    if start == "opus_then_dtmf":
        answer = "m=audio [echo_port] RTP/AVP 0\n      a=rtpmap:0 PCMU/8000"
        reoffer = "m=audio [echo_port] RTP/AVP 8\n      a=rtpmap:8 PCMA/8000"
        assert answer in text and reoffer in text
        text = text.replace(answer, OPUS_ANSWER).replace(reoffer, PCMA_TE_REOFFER)
        before_pt, extra = 111, {"DTMF_DIGITS": "5"}
    scenario = workdir / "uas_codec_change_wait_bye.xml"
    scenario.write_text(text)
    with PtEcho(GWT_HOST) as echo:
        sipp = SippUas(workdir, str(scenario), keys={"echo_port": echo.port}).start()
        gw = Gateway(workdir, trunk=TrunkSpec("carrier", sipp.uri, callee_stream="decrypted",
                                              secure_media="forbidden")).start()
        try:
            out = _run_script(workdir, gw, EXPECT_TRUNK_SECURITY="rtp", EXPECT_CODEC="PCMA",
                              MEDIA_SECONDS="5", **extra)
            code = sipp.wait(20)
        finally:
            sipp.stop()
            gw_code = gw.stop()
    pts = echo.pts
    first8 = pts.index(8) if 8 in pts else len(pts)
    summary = [line for line in out.splitlines() if line.startswith("{")]
    save_result(workdir, sipp_exit=code, before=pts[:first8].count(before_pt), pcma_after=pts[first8:].count(8),
                before_after=pts[first8:].count(before_pt), events_after=pts[first8:].count(101),
                page=summary[-1] if summary else None)
    assert code == 0, f"sipp exit {code} ({sipp.msg_path}, {sipp.err_path})"
    assert gw_code == 0 and "panicked" not in gw.log()
    assert pts[:first8].count(before_pt) >= 50, pts[:first8][:20]
    assert pts[first8:].count(8) >= 100 and pts[-50:] == [8] * 50, pts[first8:][:20]
    assert before_pt not in pts[first8:], "the old codec after the change"
    if extra:
        # One digit: ≥ 3 end packets plus the tone's (RFC 4733), PT 101.
        assert pts[first8:].count(101) >= 4, sorted(set(pts[first8:]))


def test_incoming_call_follows_the_trunks_codec_change(workdir):
    """An incoming call: SIPp (sipp/uac_codec_change.xml) calls alice
    offering PCMU and PCMA; the aiortc browser accepts (its answer lists
    both, it sends PCMU, the first); 2.5 s after the ACK SIPp re-INVITEs
    with PCMA only: the browser gets `offer`, answers, SIPp's 200 carries
    PCMA (its ereg), the echo socket gets PCMU before and only PCMA after,
    and the browser hears its tone echoed after the change."""
    from harness import Gateway, SippUac, free_port
    from test_incoming import plain_trunk, sessions

    with PtEcho(GWT_HOST) as echo:
        gw = Gateway(workdir, trunk=plain_trunk(f"sip:127.0.0.1:{free_port()};transport=udp")).start()
        sipp = None
        try:
            async def run():
                nonlocal sipp
                (peer,) = await sessions(gw, 1)
                try:
                    sipp = SippUac(workdir, "uac_codec_change.xml", remote=f"127.0.0.1:{gw.sip_port}",
                                   service="alice", keys={"echo_port": echo.port}).start()
                    await peer.wait_incoming(10)
                    accepted = await peer.accept()
                    connected = await peer.wait_for({"connected"}, 20, call_id=peer.call_id)
                    assert connected["type"] == "connected", connected
                    offer = await peer.wait_for({"offer"}, 10, call_id=peer.call_id)
                    assert offer["type"] == "offer", offer
                    before = echo.pts.copy()
                    loud_before = peer.sink.loud_frames
                    answer = await peer.answer_offer(offer)
                    hangup = await peer.wait_for({"hangup"}, 15)
                    return dict(accepted=accepted, offer=offer["sdp"], answer=answer, hangup=hangup,
                                pts_before=before, loud_after=peer.sink.loud_frames - loud_before)
                finally:
                    await peer.close()

            r = asyncio.run(run())
            code = sipp.wait(20)
        finally:
            if sipp is not None:
                sipp.stop()
            gw_code = gw.stop()
    after = echo.pts[len(r["pts_before"]):]
    figures = dict(sipp_exit=code, pts_before={pt: r["pts_before"].count(pt) for pt in (0, 8)},
                   pts_after={pt: after.count(pt) for pt in (0, 8)}, loud_frames_after=r["loud_after"],
                   hangup=r["hangup"])
    save_result(workdir, **figures, accepted=r["accepted"], offer=r["offer"], answer=r["answer"])
    assert code == 0, f"sipp exit {code} ({sipp.msg_path}, {sipp.err_path})"
    assert gw_code == 0 and "panicked" not in gw.log()
    assert "PCMA/8000" in r["accepted"] and "a=rtpmap:8 PCMA/8000" in r["offer"], r["offer"]
    assert r["pts_before"].count(0) >= 50 and 8 not in r["pts_before"], figures
    assert after.count(8) >= 50 and after[-50:] == [8] * 50, figures
    assert r["loud_after"] >= 50, figures
    assert r["hangup"].get("code") == 200, r["hangup"]
