"""The gateway with no config file at all: built-in defaults and the demo
account whose generated password is printed once in the log."""

from __future__ import annotations

import asyncio
import re

import pytest

from harness import TONE_RMS_MIN, BrowserPeer, Gateway, save_result, wait_until

pytestmark = pytest.mark.gateway

# "demo account: demo / password: <pw>", tolerant of tracing's field syntax
DEMO = re.compile(r"demo account\W+(?P<account>[\w.-]+)\W+password\W+(?P<password>[^\s\"',;]+)", re.I)


def test_demo_echo_defaults(workdir):
    """`run` in an empty working directory: HTTPS on 127.0.0.1:8443, SIP on
    127.0.0.1:5060, the demo account, and an echo number that sends the
    browser's own tone back."""
    gw = Gateway(workdir, use_config=False)
    gw.start()
    try:
        m = wait_until(lambda: DEMO.search(gw.log()), 10, f"the demo credentials in {gw.log_path}")
        gw.account, gw.password = m.group("account"), m.group("password")
        assert (gw.dir / "data").is_dir(), "the defaults keep their data in ./data"

        async def run():
            peer = await BrowserPeer(gw.base_url, gw.login()).connect()
            try:
                connected = await peer.call("echo")
                assert connected["type"] == "connected", connected
                await peer.receive(150, timeout=20)
                received, sent = await peer.stats()
                rms = peer.sink.rms
                await peer.hangup()
                return received, sent, rms
            finally:
                await peer.close()

        received, sent, rms = asyncio.run(run())
        save_result(workdir, received=received, sent=sent, rms=rms)
        assert received > 100 and sent > 100, (received, sent)
        assert rms > TONE_RMS_MIN, f"echo RMS {rms:.0f}: the browser did not hear its own tone"
    finally:
        code = gw.stop()
    assert code == 0, f"gateway did not exit 0 on SIGTERM (exit {code}); log: {gw.log_path}"
