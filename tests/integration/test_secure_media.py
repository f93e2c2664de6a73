"""secure_media = "optional" toward a trunk that takes plain RTP only
(src/policy.rs, src/calls/call.rs `Call::outgoing`, src/sip/uac.rs
`set_fallback_offer`).

SIPp (sipp/uas_488_savp_then_plain.xml, run with -rtp_echo) refuses the
gateway's RTP/SAVP INVITE with 488 and answers the next INVITE of the same
call with 200 OK and an RTP/AVP PCMU answer; it echoes the RTP it gets. The
gateway re-offers plain RTP in a new INVITE (same Call-ID and From tag, CSeq
one higher: RFC 3261 8.1.3.5), the browser (aiortc) hears its own tone back
through plain RTP on the trunk leg, `connected.security.trunk` says so, and
/metrics counts one fallback.

Artifacts in tests/artifacts/<test name>/: gateway/gateway.log,
sipp/messages.log, result.json.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from conftest import TRUNK_NUMBER
from harness import TONE_RMS_MIN, BrowserPeer, TrunkSpec, save_result, sip_header
from test_sip_trunk import start_gateway, start_sipp  # noqa: F401  (fixtures)

pytestmark = pytest.mark.gateway


def _from_tag(text: str) -> str:
    m = re.search(r";\s*tag=([^;\s>]+)", sip_header(text, "From") or "")
    return m.group(1) if m else ""


def test_optional_secure_media_falls_back_to_plain_rtp_after_488(workdir, start_gateway, start_sipp):
    sipp = start_sipp("uas_488_savp_then_plain.xml", extra=["-rtp_echo"])
    gw = start_gateway(TrunkSpec("carrier", sipp.uri, callee_stream="sdes", secure_media="optional"))
    before = gw.metrics().sum("gateway_secure_media_fallbacks_total")

    async def run():
        peer = await BrowserPeer(gw.base_url, gw.login()).connect()
        try:
            connected = await peer.call(TRUNK_NUMBER)
            assert connected["type"] == "connected", f"expected connected, got {connected}"
            await peer.receive(150, timeout=20)
            received, sent = await peer.stats()
            result = {"received": received, "counted": peer.packets_received, "sent": sent,
                      "rms": peer.sink.rms}
            await peer.hangup()
        finally:
            await peer.close()
        return connected, result

    connected, result = asyncio.run(run())
    assert sipp.wait(20) == 0, f"sipp scenario failed: {sipp.out_path}"
    after = gw.metrics().sum("gateway_secure_media_fallbacks_total")
    save_result(workdir, connected=connected, browser=result, fallbacks_before=before, fallbacks_after=after)

    invites = sipp.received("INVITE")
    assert len(invites) == 2, [m.first_line for m in sipp.messages()]
    first, second = invites
    assert first.sdp_media()[2] == "RTP/SAVP" and "a=crypto:" in first.text, first.text
    assert second.sdp_media()[2] == "RTP/AVP" and "a=crypto" not in second.text, second.text
    # One call: same Call-ID and From tag, the CSeq one higher.
    assert sip_header(second.text, "Call-ID") == sip_header(first.text, "Call-ID")
    assert _from_tag(second.text) == _from_tag(first.text)
    n1 = int(sip_header(first.text, "CSeq").split()[0])
    n2 = int(sip_header(second.text, "CSeq").split()[0])
    assert n2 == n1 + 1, (n1, n2)
    assert len(sipp.received("ACK")) >= 2, "the 488 and the 200 were both ACKed"

    security = connected.get("security") or {}
    assert security.get("trunk") == "rtp (unencrypted)", security
    assert "dtls-srtp" in str(security.get("browser", "")), security
    assert result["received"] > 100, f"browser received {result['received']} RTP packets"
    assert result["rms"] > TONE_RMS_MIN, f"browser heard RMS {result['rms']:.0f}: no echo of its tone"
    assert after - before == 1, f"gateway_secure_media_fallbacks_total went {before} -> {after}"
    assert "offering plain RTP" in gw.log(), "the fallback is logged"
