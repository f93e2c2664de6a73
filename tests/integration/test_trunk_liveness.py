"""Trunk liveness: the gateway pings its trunk with OPTIONS; a trunk that
stops answering is marked down (metric, stats) and calls to it fail at once
with 503 instead of waiting for Timer B; it comes back up when it answers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest

from conftest import TRUNK_NUMBER, _gateway
from harness import BrowserPeer, TrunkSpec, save_result, wait_until

pytestmark = pytest.mark.gateway


@pytest.fixture
def gateway_probing(workdir, baresip_sdes):
    trunk = TrunkSpec("carrier", f"sip:127.0.0.1:{baresip_sdes.sip_port};transport=udp",
                      options_interval=1)
    yield from _gateway(workdir, trunk)


def _trunk_up(gw):
    m = gw.metrics()
    if not m.has("gateway_trunk_up"):
        return None
    return m.sum("gateway_trunk_up", trunk="carrier")


def _health_detail(gw) -> dict:
    """GET /healthz?detail (from loopback: metrics_allow's default)."""
    status, body = gw.http("GET", "/healthz?detail")
    assert status == 200, (status, body)
    return json.loads(body)


def test_trunk_down_fails_calls_fast_and_comes_back(workdir, gateway_probing, baresip_sdes):
    gw, trunk = gateway_probing, baresip_sdes
    wait_until(lambda: _trunk_up(gw) == 1, 10, "gateway_trunk_up 1 (baresip answers OPTIONS)")
    options_seen = len(trunk.received("OPTIONS"))
    assert options_seen >= 1, "baresip saw no OPTIONS"

    os.kill(trunk.proc.pid, signal.SIGSTOP)  # the trunk stops answering anything
    try:
        t0 = time.monotonic()
        wait_until(lambda: _trunk_up(gw) == 0, 10, "gateway_trunk_up 0 after baresip stopped")
        down_after = time.monotonic() - t0
        assert "trunk is down" in gw.log()
        detail = _health_detail(gw)
        assert detail["status"] == "ok", detail  # the gateway is up; one trunk is not
        assert {"name": "carrier", "options": "down"}.items() <= detail["trunks"][0].items(), detail

        async def refused():
            peer = await BrowserPeer(gw.base_url, gw.login()).connect()
            try:
                t = time.monotonic()
                msg = await peer.call(TRUNK_NUMBER, timeout=10)
                return msg, time.monotonic() - t
            finally:
                await peer.close()

        msg, took = asyncio.run(refused())
        assert msg["type"] == "hangup" and msg["code"] == 503, msg
        assert "not answering" in msg["reason"], msg
        assert took < 1.0, f"the refusal took {took:.2f}s"
    finally:
        os.kill(trunk.proc.pid, signal.SIGCONT)

    t1 = time.monotonic()
    wait_until(lambda: _trunk_up(gw) == 1, 10, "gateway_trunk_up 1 again after baresip resumed")
    up_after = time.monotonic() - t1
    detail = _health_detail(gw)
    assert detail["trunks"][0]["options"] == "up" and detail["trunks"][0]["rtt_ms"] is not None, detail
    # a plain /healthz stays the contract's "ok"
    assert gw.http("GET", "/healthz") == (200, b"ok")

    async def answered():
        peer = await BrowserPeer(gw.base_url, gw.login()).connect()
        try:
            connected = await peer.call(TRUNK_NUMBER)
            assert connected["type"] == "connected", connected
            await peer.receive(50, timeout=15)
            await peer.hangup()
        finally:
            await peer.close()

    asyncio.run(answered())
    trunk.wait_bye()
    save_result(workdir, down_detected_s=round(down_after, 2), refused_in_s=round(took, 3),
                up_again_s=round(up_after, 2), options_seen_before_stop=options_seen)
