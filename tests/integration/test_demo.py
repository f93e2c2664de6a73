"""The gateway with no config file at all: built-in defaults and the demo
account whose generated password is printed once in the log."""

from __future__ import annotations

import asyncio
import re

import pytest

from harness import TONE_RMS_MIN, BrowserPeer, Gateway, save_result, wait_until

pytestmark = pytest.mark.gateway

# The documented line is "demo account: demo / password: <pw>"; tracing's
# field syntax (account="demo" password="<pw>") is accepted too.
EXACT = re.compile(r"demo account\W+(?P<account>[\w.-]+)\s*/\s*password\W+(?P<password>[^\s\"',;]+)", re.I)
FIELD_PW = re.compile(r"password[\s:=]+\"?(?P<password>[^\s\"',;]+)", re.I)
FIELD_ACCOUNT = re.compile(r"(?:account|user(?:name)?)\s*[:=]\s*\"?(?P<account>[\w.-]+)", re.I)


def demo_credentials(log: str):
    m = EXACT.search(log)
    if m:
        return m.group("account"), m.group("password")
    for line in log.splitlines():
        if "demo" in line.lower() and "password" in line.lower():
            pw = FIELD_PW.search(line)
            if pw:
                acct = FIELD_ACCOUNT.search(line)
                return (acct.group("account") if acct else "demo"), pw.group("password")
    return None


def test_demo_echo_defaults(workdir):
    """`run` in an empty working directory: HTTPS on 127.0.0.1:8443, SIP on
    127.0.0.1:5060, the demo account, and an echo number that sends the
    browser's own tone back."""
    gw = Gateway(workdir, use_config=False)
    gw.start()
    try:
        gw.account, gw.password = wait_until(lambda: demo_credentials(gw.log()), 10,
                                             f"the demo credentials in {gw.log_path}")
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
