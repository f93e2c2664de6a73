"""Where a plain-RTP trunk's media may come from (trunks[].media_source,
issue 11 item 6). baresip sits behind a NAT made in the test's namespace: an
iptables SNAT rule rewrites the source of everything it sends from its RTP
ports to a second address, so its SDP says 10.99.0.1 while its media arrives
from 10.99.0.2 (what a trunk behind NAT, or a multi-homed one such as
linphone, does). With the strict default the gateway drops that media as
wrong_source and the browser hears nothing; with media_source = "latch" the
leg latches to the NAT's address and audio flows both ways (the answers go
back through the NAT's conntrack to baresip)."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from conftest import TRUNK_NUMBER, _gateway
from harness import GWT_HOST, TONE_RMS_MIN, BrowserPeer, TrunkSpec, save_result, wait_until

pytestmark = pytest.mark.gateway

NAT_ADDRESS = "10.99.0.2"
# baresip's rtp_ports in the harness
BARESIP_RTP_PORTS = "30000:31999"


@pytest.fixture
def nat():
    """SNAT of baresip's media to NAT_ADDRESS, inside this test's namespace."""
    assert GWT_HOST, "needs the namespace of tests/netns-run.sh"
    subprocess.run(["ip", "addr", "add", f"{NAT_ADDRESS}/24", "dev", "v0"], check=False)
    rule = ["POSTROUTING", "-p", "udp", "--sport", BARESIP_RTP_PORTS, "-j", "SNAT", "--to-source", NAT_ADDRESS]
    subprocess.run(["iptables", "-t", "nat", "-A", *rule], check=True)
    try:
        yield NAT_ADDRESS
    finally:
        subprocess.run(["iptables", "-t", "nat", "-D", *rule], check=False)


@pytest.fixture
def gateway_nat(request, workdir, baresip_plain, nat):
    trunk = TrunkSpec("carrier", f"sip:127.0.0.1:{baresip_plain.sip_port};transport=udp",
                      callee_stream="decrypted", secure_media="forbidden", media_source=request.param)
    yield from _gateway(workdir, trunk)


async def _call(gw, trunk, latching: bool):
    peer = await BrowserPeer(gw.base_url, gw.login()).connect()
    try:
        connected = await peer.call(TRUNK_NUMBER)
        assert connected["type"] == "connected", connected
        trunk.wait_established()
        if latching:
            await peer.receive(150, timeout=20)  # ~3 s of 20 ms packets
            trunk.wait_heard_seconds(2.0, timeout=20, gateway=gw)
        else:
            # ~3 s of baresip's packets, each dropped at the gateway
            await asyncio.to_thread(wait_until, lambda: gw.metrics().sum(
                "gateway_media_drops_total", leg="trunk", reason="wrong_source") >= 150,
                20, "baresip's packets dropped as wrong_source")
        received, sent = await peer.stats()
        result = {"received": received, "sent": sent, "rms": peer.sink.rms}
        await peer.hangup()
        trunk.wait_bye()
        return result
    finally:
        await peer.close()


@pytest.mark.parametrize("gateway_nat", ["signaled", "latch"], indirect=True)
def test_a_trunk_behind_nat_gets_audio_only_when_latching(workdir, gateway_nat, baresip_plain):
    gw, trunk = gateway_nat, baresip_plain
    mode = gw.trunk.media_source
    result = asyncio.run(_call(gw, trunk, latching=mode == "latch"))
    tx, rx = trunk.wait_rtp_stats()
    heard = trunk.dec_wav()
    m = gw.metrics()
    wrong_source = m.sum("gateway_media_drops_total", leg="trunk", reason="wrong_source")
    latched = gw.log().count("trunk media latched")
    save_result(workdir, mode=mode, browser=result, trunk_tx=tx, trunk_rx=rx, trunk_heard_rms=heard.rms,
                wrong_source_drops=wrong_source, latch_log_lines=latched)
    assert tx > 100, f"baresip sent only {tx} packets"
    if mode == "signaled":
        # baresip's media came from the NAT's address: dropped and counted
        assert result["received"] == 0, result
        assert wrong_source > 100, wrong_source
    else:
        assert result["received"] > 100 and result["rms"] > TONE_RMS_MIN, result
        assert rx > 100 and heard.rms > TONE_RMS_MIN, (rx, heard)
        assert wrong_source == 0, wrong_source
        assert latched >= 1, "each latch is logged"
