"""Session timers (RFC 4028, issue 13 item 5) against SIPp as the trunk.

The browser (aiortc) calls SIPp (sipp/uas_session_timer_422.xml, plain
RTP, no RTP sent): SIPp refuses the first INVITE with 422 and Min-SE 3600,
takes the second (which must ask for 3600 s), names itself the refresher,
refreshes once with an UPDATE whose 200 must carry Session-Expires, and
hangs up. SIPp's ereg checks fail the scenario (exit 1) when a header is
missing.

Then a session at the RFC's floor of 90 s with the gateway as refresher
(sipp/uas_session_timer_90.xml, -rtp_echo): its refresh must come at half
the interval, as an UPDATE when the trunk allows UPDATE and as a re-INVITE
with the same session otherwise, and the call's media go on. The BYE when
the trunk's own refresh does not come is unit-tested with an explicit clock
(sip::session_timer, sip::uac, sip::uas).

Artifacts in tests/artifacts/<test name>/: sipp/messages.log, gateway/gateway.log.
"""

from __future__ import annotations

import re

import pytest

from harness import save_result, sip_header

pytestmark = pytest.mark.gateway


def test_422_is_followed_and_the_trunks_refresh_answered(workdir):
    from harness import run_browser_against_sipp
    from conftest import TRUNK_NUMBER

    async def browser(peer, gw):
        connected = await peer.call(TRUNK_NUMBER)
        hangup = await peer.wait_for({"hangup"}, 15)
        return connected, hangup, [m.get("type") for m in peer.messages]

    run = run_browser_against_sipp(workdir, "uas_session_timer_422.xml", browser)
    connected, hangup, types = run.result
    code, gw_code, sipp, gw = run.sipp_code, run.gw_code, run.sipp, run.gw
    invites = sipp.received("INVITE")
    ok_update = [m for m in sipp.received(status=200) if "UPDATE" in (sip_header(m.text, "CSeq") or "")]
    save_result(workdir, sipp_exit=code, types=types, hangup=hangup,
                invite_session_expires=[sip_header(m.text, "Session-Expires") for m in invites],
                update_200_session_expires=[sip_header(m.text, "Session-Expires") for m in ok_update])
    assert code == 0, f"sipp exit {code} ({sipp.msg_path}, {sipp.err_path})"
    assert gw_code == 0 and "panicked" not in gw.log()
    assert connected["type"] == "connected", connected
    assert hangup.get("code") == 200 and types.count("hangup") == 1, (hangup, types)
    assert len(invites) == 2, [m.first_line for m in invites]
    assert sip_header(invites[0].text, "Session-Expires").strip() == "1800"
    assert sip_header(invites[1].text, "Session-Expires").strip() == "3600"
    assert sip_header(invites[1].text, "Min-SE").strip() == "3600"
    assert "timer" in sip_header(invites[0].text, "Supported")
    assert len(ok_update) == 1, [m.text for m in sipp.received(status=200)]
    assert sip_header(ok_update[0].text, "Session-Expires").strip() == "3600;refresher=uac"


@pytest.mark.parametrize("allow", ["INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE", "INVITE, ACK, CANCEL, BYE, OPTIONS"],
                         ids=["update", "reinvite"])
def test_the_gateway_refreshes_a_90s_session(workdir, allow):
    """SIPp's 200 says Session-Expires: 90;refresher=uac: the gateway
    refreshes 45 s after the session started (RFC 4028 10), by UPDATE when
    the trunk's Allow names it, else by a re-INVITE offering the same
    session; the refresh carries Session-Expires 90
    naming the gateway, and the browser keeps hearing its echoed tone
    through and after it."""
    from harness import run_browser_against_sipp
    from conftest import TRUNK_NUMBER

    async def browser(peer, gw):
        connected = await peer.call(TRUNK_NUMBER)
        assert connected["type"] == "connected", connected
        await peer.receive(100, timeout=20)
        # past the refresh (45 s after the 200) and SIPp's BYE 1 s later
        hangup = await peer.wait_for({"hangup"}, 70)
        received, _ = await peer.stats()
        return connected, hangup, received

    run = run_browser_against_sipp(workdir, "uas_session_timer_90.xml", browser, sipp_wait=80,
                                   keys={"allow": allow}, timeout=100, extra=["-rtp_echo"])
    connected, hangup, received = run.result
    sipp = run.sipp
    invites = sipp.received("INVITE")
    updates = sipp.received("UPDATE")
    ack = sipp.received("ACK")[0]
    refresh = (updates or invites[1:] or [None])[0]
    delay = refresh.time - ack.time if refresh else None
    save_result(workdir, sipp_exit=run.sipp_code, hangup=hangup, browser_received=received,
                refresh=refresh.first_line if refresh else None, refresh_after_ack_s=delay,
                session_expires=sip_header(refresh.text, "Session-Expires") if refresh else None)
    assert run.sipp_code == 0, f"sipp exit {run.sipp_code} ({sipp.msg_path}, {sipp.err_path})"
    assert run.gw_code == 0 and "panicked" not in run.gw.log()
    assert refresh is not None, "no refresh reached SIPp"
    if "UPDATE" in allow:
        assert updates and len(invites) == 1, [m.first_line for m in sipp.received()]
        assert "application/sdp" not in (sip_header(refresh.text, "Content-Type") or "")
    else:
        assert not updates and len(invites) == 2, [m.first_line for m in sipp.received()]
        # the session as negotiated, offered again: our address and port,
        # the codec SIPp answered (PCMU), sendrecv
        assert invites[1].sdp_media() == invites[0].sdp_media(), (invites[0].sdp_media(), invites[1].sdp_media())
        payloads = re.search(r"^m=audio \d+ \S+ ([0-9 ]+)", invites[1].text, re.M).group(1).split()
        assert payloads[0] == "0" and "a=sendrecv" in invites[1].text, invites[1].text
    assert sip_header(refresh.text, "Session-Expires").replace(" ", "") == "90;refresher=uac", refresh.text
    assert 43 <= delay <= 48, f"the refresh came {delay:.1f} s after the ACK, not at half of 90 s"
    assert hangup.get("code") == 200, hangup
    # 20 ms echoes for ~46 s: the media went on through the refresh
    assert received > 2000, f"the browser received {received} packets over the call"
