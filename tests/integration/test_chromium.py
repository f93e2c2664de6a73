"""Debian's Chromium, driven by tests/e2e/chromium-call.mjs (Playwright),
calls the SDES trunk through the gateway's own web client."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import BOTH_PORT_MODES, TRUNK_NUMBER
from harness import REPO

pytestmark = [pytest.mark.gateway, pytest.mark.chromium]

SCRIPT = REPO / "tests" / "e2e" / "chromium-call.mjs"


@pytest.mark.timeout(240)
@BOTH_PORT_MODES
def test_chromium_call(workdir, gateway_sdes, baresip_sdes):
    """The real browser: the web client logs in, calls, connects with
    dtls-srtp / sdes-srtp, the trunk hears it, hangup sends BYE.
    Screenshots and the script's output land in tests/artifacts/test_chromium_call/."""
    assert SCRIPT.exists(), f"{SCRIPT} is missing"
    assert (SCRIPT.parent / "node_modules").exists(), "run `npm ci` in tests/e2e first (tests/run-all.sh does)"
    node = shutil.which("node")
    assert node, "node is not installed"
    gw, trunk = gateway_sdes, baresip_sdes
    artifacts = workdir / "chromium"
    artifacts.mkdir()
    env = dict(os.environ)
    env.update(
        GATEWAY_URL=gw.base_url,
        GW_ACCOUNT=gw.account,
        GW_PASSWORD=gw.password,
        GW_NUMBER=TRUNK_NUMBER,
        ARTIFACT_DIR=str(artifacts),
        EXPECT_TRUNK_SECURITY="sdes-srtp",
    )
    out = workdir / "chromium-call.log"
    with open(out, "wb") as log:
        try:
            rc = subprocess.run([node, str(SCRIPT)], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, timeout=200).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    text = out.read_text(errors="replace")
    assert rc == 0, f"chromium-call.mjs exited {rc}; output ({out}):\n{text[-4000:]}"
    # baresip's log is buffered: wait for the BYE (which comes last) before
    # looking for the INVITE in it.
    trunk.wait_bye()
    assert trunk.received("INVITE"), f"the trunk got no INVITE ({trunk.log_path})"
    tx, rx = trunk.wait_rtp_stats()
    assert rx > 0, "baresip received no RTP from Chromium"
    shots = list(artifacts.glob("*.png"))
    assert shots, f"no screenshot in {artifacts}"
