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

import pytest

from harness import save_result, sip_header

pytestmark = pytest.mark.gateway


def test_browser_transfer_sends_refer_and_reports_the_notify(workdir):
    from harness import BrowserPeer, Gateway, SippUas, TrunkSpec
    from conftest import TRUNK_NUMBER
    sipp = SippUas(workdir, "uas_accept_refer.xml").start()
    gw = Gateway(workdir, trunk=TrunkSpec("carrier", sipp.uri, callee_stream="decrypted",
                                          secure_media="forbidden")).start()
    try:
        async def run():
            peer = await BrowserPeer(gw.base_url, gw.login()).connect()
            try:
                connected = await peer.call(TRUNK_NUMBER)
                assert connected["type"] == "connected", connected
                await peer.send({"type": "transfer", "id": peer.call_id, "to": "200"})
                done = await peer.wait_for({"transferred"}, 10, call_id=peer.call_id)
                hangup = await peer.wait_for({"hangup"}, 10)
                return done, hangup, peer.call_id, [m.get("type") for m in peer.messages]
            finally:
                await peer.close()

        done, hangup, call_id, types = asyncio.run(run())
        code = sipp.wait(20)
    finally:
        sipp.stop()
        gw_code = gw.stop()
    refers = sipp.received("REFER")
    save_result(workdir, sipp_exit=code, transferred=done, hangup=hangup, types=types,
                refer_to=[sip_header(m.text, "Refer-To") for m in refers])
    assert code == 0, f"sipp exit {code} ({sipp.msg_path}, {sipp.err_path})"
    assert gw_code == 0 and "panicked" not in gw.log()
    assert done == {"type": "transferred", "id": call_id, "to": "200", "code": 200}, done
    assert hangup.get("code") == 200 and hangup.get("reason") == "transferred", hangup
    assert len(refers) == 1 and sip_header(refers[0].text, "Refer-To").startswith("<sip:200@127.0.0.1:")
    assert types.count("hangup") == 1, types
