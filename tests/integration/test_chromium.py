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


def _run_call_script(workdir, gw, trunk, **extra_env) -> str:
    """Runs chromium-call.mjs against `gw` toward `trunk`; returns its output."""
    assert SCRIPT.exists(), f"{SCRIPT} is missing"
    assert (SCRIPT.parent / "node_modules").exists(), "run `npm ci` in tests/e2e first (tests/run-all.sh does)"
    node = shutil.which("node")
    assert node, "node is not installed"
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
    env.update(extra_env)
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
    return text


@pytest.mark.timeout(240)
@BOTH_PORT_MODES
def test_chromium_call(workdir, gateway_sdes, baresip_sdes):
    """The real browser: the web client logs in, calls, connects with
    dtls-srtp / sdes-srtp, the trunk hears it, hangup sends BYE.
    Screenshots and the script's output land in tests/artifacts/test_chromium_call/."""
    _run_call_script(workdir, gateway_sdes, baresip_sdes)


@pytest.mark.timeout(240)
def test_chromium_hold_and_resume_buttons(workdir, gateway_sdes, baresip_sdes):
    """The web client's Hold and Resume buttons (HOLD=1): the gateway
    re-INVITEs baresip with a=sendonly then a=sendrecv, the page shows
    "On hold" / "Resume" from the gateway's `held` and is back to
    "Connected" / "Hold" after `resumed`, and the trunk's audio stops and
    comes back (chromium-held.png shows the held page)."""
    _run_call_script(workdir, gateway_sdes, baresip_sdes, HOLD="1", MEDIA_SECONDS="3")
    invites = baresip_sdes.received("INVITE")
    assert len(invites) == 3, [m.first_line for m in invites]
    assert "a=sendonly" in invites[1].text, invites[1].text
    assert (workdir / "chromium" / "chromium-held.png").exists()


@pytest.mark.timeout(240)
def test_chromium_dial_pad_sends_dtmf(workdir, gateway_sdes, baresip_sdes):
    """The web client's dial pad during a call: Chromium (which offers
    telephone-event/8000, so the events are relayed under its numbers) presses
    4, *, 7; the page shows them as sent, and baresip logs each as an RFC
    4733 event it decoded."""
    import re
    from harness import save_result, wait_until
    trunk = baresip_sdes
    _run_call_script(workdir, gateway_sdes, trunk, MEDIA_SECONDS="2", DTMF_DIGITS="4*7")
    digits = lambda: "".join(re.findall(r"received event: '(.)' \(end=0\)", trunk.log()))
    wait_until(lambda: len(digits()) >= 3, 5, f"three digits in baresip's log ({trunk.log_path})")
    invite = trunk.received("INVITE")[0].text
    save_result(workdir, baresip_digits=digits(), te_offered=re.findall(r"a=rtpmap:\d+ telephone-event/\d+", invite))
    assert digits() == "4*7", f"baresip logged {digits()!r}"
