"""Session timers (RFC 4028, issue 13 item 5) against SIPp as the trunk.

The browser (aiortc) calls SIPp (sipp/uas_session_timer_422.xml, plain
RTP, no RTP sent): SIPp refuses the first INVITE with 422 and Min-SE 3600,
takes the second (which must ask for 3600 s), names itself the refresher,
refreshes once with an UPDATE whose 200 must carry Session-Expires, and
hangs up. SIPp's ereg checks fail the scenario (exit 1) when a header is
missing. The timing itself (our refresh at half the interval, the BYE when
the trunk's refresh does not come) is unit-tested with an explicit clock
(sip::session_timer, sip::uac, sip::uas): the RFC's floor is 90 s, too long
for a test here.

Artifacts in tests/artifacts/<test name>/: sipp/messages.log, gateway/gateway.log.
"""

from __future__ import annotations

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
