"""Blind transfer from the browser (issue 13 item 6): `transfer` becomes a
REFER toward the trunk, whose NOTIFYs come back as `transferred`.

SIPp plays the trunk (sipp/uas_accept_refer.xml, plain RTP, no RTP sent):
it answers the browser's call, accepts the REFER with 202 and reports the
transferred call with NOTIFY 100 then NOTIFY 200 (message/sipfrag); the
gateway must answer both 200 and then leave the call with BYE. SIPp exits
non-zero when a step does not come (its ereg checks the Refer-To).

Artifacts in tests/artifacts/<test name>/: sipp/messages.log, gateway/gateway.log.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from harness import GWT_HOST, save_result, sip_header

pytestmark = pytest.mark.gateway


def test_browser_transfer_sends_refer_and_reports_the_notify(workdir):
    from harness import run_browser_against_sipp
    from conftest import TRUNK_NUMBER

    async def browser(peer, gw):
        connected = await peer.call(TRUNK_NUMBER)
        assert connected["type"] == "connected", connected
        await peer.send({"type": "transfer", "id": peer.call_id, "to": "200"})
        done = await peer.wait_for({"transferred"}, 10, call_id=peer.call_id)
        hangup = await peer.wait_for({"hangup"}, 10)
        return done, hangup, peer.call_id, [m.get("type") for m in peer.messages]

    run = run_browser_against_sipp(workdir, "uas_accept_refer.xml", browser)
    done, hangup, call_id, types = run.result
    code, sipp, gw = run.sipp_code, run.sipp, run.gw
    refers = sipp.received("REFER")
    save_result(workdir, sipp_exit=code, transferred=done, hangup=hangup, types=types,
                refer_to=[sip_header(m.text, "Refer-To") for m in refers])
    assert code == 0, f"sipp exit {code} ({sipp.msg_path}, {sipp.err_path})"
    assert run.gw_code == 0 and "panicked" not in gw.log()
    assert done == {"type": "transferred", "id": call_id, "to": "200", "code": 200}, done
    assert hangup.get("code") == 200 and hangup.get("reason") == "transferred", hangup
    assert len(refers) == 1 and sip_header(refers[0].text, "Refer-To").startswith("<sip:200@127.0.0.1:")
    assert types.count("hangup") == 1, types


def test_trunk_refer_moves_the_call_to_the_target_on_the_same_browser_media(workdir):
    """The trunk's REFER (issue 13 item 6, the other way): SIPp
    (sipp/uas_refer_to_target.xml, -m 2 -rtp_echo) answers the browser's
    call on its media port, REFERs the gateway to 200 after 1.5 s and wants
    202 and the NOTIFYs (100 Trying, then 200 OK terminated), then answers
    the gateway's new INVITE to sip:200@ (with Referred-By) on media port + 2.
    The browser (aiortc, a 440 Hz tone) keeps its one peer connection: it
    hears the echo of its tone before the transfer and, from the new port,
    after it (the gateway's trunk leg only takes plain RTP from the signaled
    address, so the old port's echo would not count)."""
    from harness import async_wait_until, run_browser_against_sipp
    from conftest import TRUNK_NUMBER

    async def browser(peer, gw):
        connected = await peer.call(TRUNK_NUMBER)
        assert connected["type"] == "connected", connected
        await peer.receive(40, timeout=10)
        loud_before = peer.sink.loud_frames

        def final():
            return next((m for m in peer.messages if m.get("type") == "transferred"
                         and m.get("code", 0) >= 200), None)
        done = await async_wait_until(final, 15, "transferred with a final code")
        at = time.monotonic()
        packets_at, loud_at = peer.packets_received, peer.sink.loud_frames
        # a figure, not an assertion: how soon the target's echo arrives
        await peer.receive(packets_at + 5, timeout=10)
        first_ms = round((time.monotonic() - at) * 1000)
        await peer.receive(packets_at + 100, timeout=10)
        figures = {"packets_before": packets_at, "loud_frames_before": loud_before,
                   "ms_from_transferred_to_5_packets": first_ms,
                   "packets_after": peer.packets_received - packets_at,
                   "loud_frames_after": peer.sink.loud_frames - loud_at}
        await peer.hangup()
        hangup = await peer.wait_for({"hangup"}, 10)
        transferred = [m for m in peer.messages if m.get("type") == "transferred"]
        return done, transferred, hangup, figures, peer.call_id

    run = run_browser_against_sipp(workdir, "uas_refer_to_target.xml", browser,
                                   extra=["-rtp_echo"], calls=2)
    done, transferred, hangup, figures, call_id = run.result
    sipp, gw = run.sipp, run.gw
    invites = sipp.received("INVITE")
    notifies = sipp.received("NOTIFY")
    save_result(workdir, sipp_exit=run.sipp_code, transferred=transferred, hangup=hangup, **figures,
                invites=[m.first_line for m in invites],
                referred_by=[sip_header(m.text, "Referred-By") for m in invites],
                notify_bodies=[m.text.split("\r\n\r\n", 1)[-1].strip() for m in notifies],
                answers_to_refer=[m.first_line for m in sipp.received(status=202)])
    assert run.sipp_code == 0, f"sipp exit {run.sipp_code} ({sipp.msg_path}, {sipp.err_path})"
    assert run.gw_code == 0 and "panicked" not in gw.log()
    assert [m.get("code") for m in transferred] == [100, 200], transferred
    assert all(m.get("by") == "trunk" and m.get("to") == "200" and m.get("id") == call_id
               for m in transferred), transferred
    assert len(sipp.received(status=202)) == 1
    assert [m.text.split("\r\n\r\n", 1)[-1].strip() for m in notifies] == \
        ["SIP/2.0 100 Trying", "SIP/2.0 200 OK"], notifies
    assert len(invites) == 2 and invites[1].first_line.startswith("INVITE sip:200@127.0.0.1:"), invites
    assert "transferor" in (sip_header(invites[1].text, "Referred-By") or "")
    assert sip_header(invites[0].text, "Call-ID") != sip_header(invites[1].text, "Call-ID")
    # one BYE for the old dialog (after the NOTIFY 200), one for the new
    byes = sipp.received("BYE")
    assert [sip_header(b.text, "Call-ID") for b in byes] == \
        [sip_header(invites[0].text, "Call-ID"), sip_header(invites[1].text, "Call-ID")], byes
    # the echo from the target's port: 100 packets (2 s at 50/s) of the tone
    assert figures["packets_after"] >= 100 and figures["loud_frames_after"] > 50, figures
    assert hangup.get("type") == "hangup" and hangup.get("code") == 200, hangup


def incoming_refer(workdir, gw, target, after: int = 100, refer_headers: str = "") -> dict:
    """The browser side of a trunk's REFER on an incoming call: SIPp as the
    caller (sipp/uac_refer_in.xml, -rtp_echo) calls alice on `gw`, the
    browser (aiortc) answers; SIPp REFERs to 200 after 1.5 s, the gateway
    calls `target` (a SippUas, started). Once `transferred` has its final
    code the browser takes `after` more packets and hangs up. Returns the
    figures and both SIPps' exit codes; the caller SIPp is stopped.
    `refer_headers` ends the Refer-To URI ("?Replaces=..." for an attended
    transfer)."""
    from harness import BrowserPeer, SippUac, async_wait_until
    caller = None

    async def run():
        nonlocal caller
        peer = await BrowserPeer(gw.base_url, gw.login()).connect()
        try:
            caller = SippUac(workdir, "uac_refer_in.xml", remote=f"127.0.0.1:{gw.sip_port}",
                             service="alice", extra=["-rtp_echo"],
                             keys={"refer_headers": refer_headers}).start()
            await peer.wait_incoming(10)
            await peer.accept()
            connected = await peer.wait_for({"connected"}, 20, call_id=peer.call_id)
            assert connected["type"] == "connected", connected

            def final():
                return next((m for m in peer.messages if m.get("type") == "transferred"
                             and m.get("code", 0) >= 200), None)
            await async_wait_until(final, 15, "transferred with a final code")
            packets_at, loud_at = peer.packets_received, peer.sink.loud_frames
            await peer.receive(packets_at + after, timeout=10)
            figures = {"packets_after": peer.packets_received - packets_at,
                       "loud_frames_after": peer.sink.loud_frames - loud_at}
            await peer.hangup()
            figures["hangup"] = await peer.wait_for({"hangup"}, 10)
            figures["transferred"] = [m for m in peer.messages if m.get("type") == "transferred"]
            return figures
        finally:
            await peer.close()

    try:
        out = asyncio.run(run())
        out["caller_exit"] = caller.wait(20)
        out["target_exit"] = target.wait(20)
        out["caller_log"] = str(caller.msg_path)
        return out
    finally:
        if caller is not None:
            caller.stop()


def test_attended_transfer_by_the_trunk_replaces_its_dialog(workdir):
    """An attended transfer (RFC 3891): the caller SIPp's REFER names
    `<sip:200@...?Replaces=consult%40pbx%3Bto-tag%3Dtt1%3Bfrom-tag%3Dff2>`,
    the dialog its PBX holds with the target. The gateway answers 202, and
    its new INVITE to the target carries `Replaces:
    consult@pbx;to-tag=tt1;from-tag=ff2` and `Require: replaces` besides
    the Referred-By; the rest is the blind transfer's: NOTIFYs 100/200, the
    browser hears the target, the transferor gets our BYE."""
    from harness import Gateway, SippUas, TrunkSpec
    target = SippUas(workdir, "uas_transfer_target.xml", extra=["-rtp_echo"], name="sipp_target").start()
    gw = Gateway(workdir, trunk=TrunkSpec("carrier", target.uri, callee_stream="decrypted",
                                          secure_media="forbidden")).start()
    try:
        r = incoming_refer(workdir, gw, target, after=50,
                           refer_headers="?Replaces=consult%40pbx%3Bto-tag%3Dtt1%3Bfrom-tag%3Dff2")
    finally:
        target.stop()
        gw_code = gw.stop()
    invite = target.received("INVITE")[0].text
    save_result(workdir, caller_exit=r["caller_exit"], target_exit=r["target_exit"],
                transferred=r["transferred"], replaces=sip_header(invite, "Replaces"),
                require=sip_header(invite, "Require"))
    assert r["caller_exit"] == 0, f"caller sipp exit {r['caller_exit']} ({r['caller_log']})"
    assert r["target_exit"] == 0, f"target sipp exit {r['target_exit']} ({target.msg_path})"
    assert gw_code == 0 and "panicked" not in gw.log()
    assert (sip_header(invite, "Replaces") or "").strip() == "consult@pbx;to-tag=tt1;from-tag=ff2", invite
    assert "replaces" in (sip_header(invite, "Require") or ""), invite
    assert [m.get("code") for m in r["transferred"]] == [100, 200], r["transferred"]
    assert r["packets_after"] >= 50 and r["loud_frames_after"] > 25, r


def test_trunk_refer_on_an_incoming_call(workdir):
    """The trunk's REFER on a call the trunk placed (the gateway's server
    dialog): SIPp as the caller (sipp/uac_refer_in.xml, -rtp_echo) calls
    alice, the browser (aiortc) answers; after 1.5 s SIPp REFERs to 200 and
    wants 202 and the NOTIFYs 100 / 200. The gateway's new INVITE goes to
    the trunk's URI, a second SIPp (sipp/uas_transfer_target.xml,
    -rtp_echo), which checks its Request-URI (200) and Referred-By and
    answers; the caller's dialog gets our BYE; the browser, on its one peer
    connection, hears its tone echoed by the target, then hangs up (BYE to
    the target)."""
    from harness import Gateway, SippUas, TrunkSpec
    target = SippUas(workdir, "uas_transfer_target.xml", extra=["-rtp_echo"], name="sipp_target").start()
    gw = Gateway(workdir, trunk=TrunkSpec("carrier", target.uri, callee_stream="decrypted",
                                          secure_media="forbidden")).start()
    try:
        r = incoming_refer(workdir, gw, target)
    finally:
        target.stop()
        gw_code = gw.stop()
    transferred, hangup = r["transferred"], r["hangup"]
    caller_code, target_code = r["caller_exit"], r["target_exit"]
    figures = {k: r[k] for k in ("packets_after", "loud_frames_after")}
    export = gw.cli("cdr", "export", "--account", "alice", "--format", "json")
    records = json.loads(export.stdout) if export.returncode == 0 else export.stderr.decode()
    save_result(workdir, caller_exit=caller_code, target_exit=target_code, transferred=transferred,
                hangup=hangup, **figures, records=records,
                target_invite=[m.first_line for m in target.received("INVITE")])
    assert caller_code == 0, f"caller sipp exit {caller_code} ({r['caller_log']})"
    assert target_code == 0, f"target sipp exit {target_code} ({target.msg_path})"
    assert gw_code == 0 and "panicked" not in gw.log()
    assert [(m.get("code"), m.get("by"), m.get("to")) for m in transferred] == \
        [(100, "trunk", "200"), (200, "trunk", "200")], transferred
    assert figures["packets_after"] >= 100 and figures["loud_frames_after"] > 50, figures
    assert hangup.get("code") == 200, hangup
    # The call's record names the target and the new dialog's Call-ID.
    assert isinstance(records, list) and len(records) == 1, records
    target_call_id = sip_header(target.received("INVITE")[0].text, "Call-ID")
    assert (records[0]["transferred_to"], records[0]["transfer_sip_call_id"]) == ("200", target_call_id), \
        records[0]


def test_trunk_refer_plays_the_targets_early_media(workdir):
    """The target's early media during a carried-out REFER: as in
    test_trunk_refer_on_an_incoming_call, but the target (a variant of
    sipp/uas_transfer_target.xml) answers 183 with SDP, 2 s before its 200,
    and its media port is an echo socket of the test that records when each
    packet came. The gateway moves the trunk leg to the 183's address, so
    the browser's tone reaches the target (and its echo the browser) before
    the 200: the browser hears the target's ringback or announcement rather
    than the transferor. Before, nothing reached the target until its 200."""
    from harness import SIPP_DIR, Gateway, SippUas, TrunkSpec
    from test_codec_change import PtEcho
    text = (SIPP_DIR / "uas_transfer_target.xml").read_text()
    i = text.index("  <send>")
    j = text.index("  </send>", i) + len("  </send>\n")
    answer = text[i:j].replace("[media_port]", "[echo_port]")
    early = answer.replace("SIP/2.0 200 OK", "SIP/2.0 183 Session Progress")
    scenario = workdir / "uas_transfer_target_early.xml"
    scenario.write_text(text[:i] + early + '  <pause milliseconds="2000" />\n' + answer + text[j:])
    with PtEcho(GWT_HOST) as echo:
        target = SippUas(workdir, str(scenario), keys={"echo_port": echo.port}, name="sipp_target").start()
        gw = Gateway(workdir, trunk=TrunkSpec("carrier", target.uri, callee_stream="decrypted",
                                              secure_media="forbidden")).start()
        try:
            r = incoming_refer(workdir, gw, target, after=50)
        finally:
            target.stop()
            gw_code = gw.stop()
    transferred, caller_code, target_code = r["transferred"], r["caller_exit"], r["target_exit"]
    answered_at = target.sent(status=200)[0].time
    early_sent_at = target.sent(status=183)[0].time
    before = [t for t in echo.times if t < answered_at]
    figures = {"early_packets_at_target": len(before),
               "ms_from_183_to_first_packet": round((before[0] - early_sent_at) * 1000) if before else None,
               "packets_at_target": len(echo.times)}
    save_result(workdir, caller_exit=caller_code, target_exit=target_code, transferred=transferred, **figures)
    assert caller_code == 0, f"caller sipp exit {caller_code} ({r['caller_log']})"
    assert target_code == 0, f"target sipp exit {target_code} ({target.msg_path})"
    assert gw_code == 0 and "panicked" not in gw.log()
    assert [(m.get("code"), m.get("by")) for m in transferred] == [(100, "trunk"), (200, "trunk")], transferred
    # 2 s of early media at 50 packets/s
    assert figures["early_packets_at_target"] >= 50, figures
