"""Smoke runs of the load tool (target/debug/gwload, src/bin/gwload), so it
cannot rot: a few calls for a few seconds at a low rate, through a gateway
started by the harness (the trunk is gwload's own SIP UAS) and, where Debian's
rtpengine-daemon is installed, through rtpengine over the ng protocol.

Asserted: every call set up, every packet delivered both ways, every packet
decrypted with the keys the target announced, and the figures present
(latency percentiles, CPU per packet, RSS). The figures themselves are
printed, never judged: the machine is shared.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from harness import REPO, GWT_HOST, Gateway, TrunkSpec, free_port, save_result

# Zero loss asserted: run by itself (tests/shard.py), not beside a shard.
pytestmark = pytest.mark.alone

CALLS = 4
PPS = 200  # 4 calls x 2 directions x 25 packets/s


def gwload_bin():
    return os.environ.get("GWLOAD_BIN", str(REPO / "target" / "debug" / "gwload"))


def run_gwload(args, workdir, timeout=60):
    out = workdir / "gwload.json"
    cmd = [gwload_bin(), *args, "--calls", str(CALLS), "--pps", str(PPS), "--warmup", "0.3",
           "--window", "1.5", "--media-ip", GWT_HOST, "--json", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    (workdir / "gwload.log").write_text(f"$ {' '.join(cmd)}\n{p.stdout}\n{p.stderr}")
    print(p.stdout)
    assert p.returncode == 0, f"gwload exited {p.returncode}:\n{p.stderr[-3000:]}"
    return json.loads(out.read_text()), p.stdout


def check_report(report, stdout):
    assert report["calls"] == CALLS, report
    assert report["setup"]["failed"] == 0, report["setup"]
    assert report["calls_dropped"] == 0
    assert len(report["steps"]) == 1
    step = report["steps"][0]
    for name in ("forward", "back"):
        d = step[name]
        # 2.1 s at 100 packets/s each way
        assert d["sent"] > 150, (name, d)
        assert d["received"] == d["sent"], (name, d)
        assert d["lost"] == 0 and d["auth_failed"] == 0 and d["send_errors"] == 0, (name, d)
        assert d["p50_ms"] is not None and 0 < d["p50_ms"] <= d["p99_ms"], (name, d)
    assert step["forwarded_pps"] > 0
    assert step["cpu_us_per_packet"] is not None and step["cpu_us_per_packet"] >= 0
    assert report["rss_with_calls_kib"] > 0 and report["rss_before_kib"] > 0
    assert "| load (pps) |" in stdout and "setup" in stdout


@pytest.mark.gateway
@pytest.mark.parametrize("trunk_media", ["sdes", "rtp"])
def test_gwload_through_gateway(workdir, trunk_media):
    """4 browser calls (WSS, ICE-lite check, DTLS 1.2, SRTP) through the
    gateway to gwload's UAS (SDES or plain RTP): no packet lost either way,
    and the gateway's own counters saw the packets."""
    uas = free_port()
    sdes = trunk_media == "sdes"
    trunk = TrunkSpec(name="gwload", uri=f"sip:127.0.0.1:{uas};transport=udp",
                      callee_stream="sdes" if sdes else "decrypted",
                      secure_media="mandatory" if sdes else "forbidden",
                      srtp_suites=["AES_CM_128_HMAC_SHA1_80"])
    gw = Gateway(workdir, trunk=trunk, account="load").start()
    try:
        report, stdout = run_gwload(
            ["gateway", "--target", gw.base_url, "--pid", str(gw.proc.pid), "--account", "load",
             "--password", gw.password, "--uas", f"127.0.0.1:{uas}", "--trunk-media", trunk_media],
            workdir)
        metrics = gw.metrics()
    finally:
        gw.stop()
    save_result(workdir, gwload=report)
    check_report(report, stdout)
    assert report["browser_suite"] == "AEAD_AES_128_GCM"
    assert report["trunk_media"].startswith("sdes-srtp" if sdes else "rtp")
    step = report["steps"][0]
    out_trunk = metrics.sum("gateway_media_packets_total", leg="trunk", direction="out")
    out_browser = metrics.sum("gateway_media_packets_total", leg="browser", direction="out")
    assert out_trunk >= step["forward"]["received"], metrics.text[:2000]
    assert out_browser >= step["back"]["received"], metrics.text[:2000]


@pytest.mark.gateway
def test_gwload_refuses_bad_input(workdir):
    """Clear errors: a wrong password, a target that is not https://, a
    zero rate, a pid that does not exist."""
    uas = free_port()
    gw = Gateway(workdir, trunk=TrunkSpec(name="gwload", uri=f"sip:127.0.0.1:{uas};transport=udp"),
                 account="load").start()
    try:
        cases = [
            (["--target", gw.base_url, "--pid", str(gw.proc.pid), "--password", "wrong"], "HTTP 401"),
            (["--target", gw.base_url.replace("https", "http"), "--pid", "1", "--password", "x"],
             "must start with https://"),
            (["--target", gw.base_url, "--pid", str(gw.proc.pid), "--password", "x", "--pps", "0"],
             "--pps needs positive rates"),
            (["--target", gw.base_url, "--pid", "999999999", "--password", "x"], "no process"),
        ]
        for args, message in cases:
            p = subprocess.run([gwload_bin(), "gateway", "--uas", f"127.0.0.1:{uas}", "--media-ip", GWT_HOST,
                                *args], capture_output=True, text=True, timeout=30)
            assert p.returncode != 0, (args, p.stdout)
            assert message in p.stderr, (args, p.stderr)
    finally:
        gw.stop()


@pytest.mark.skipif(shutil.which("rtpengine") is None, reason="rtpengine-daemon not installed")
def test_gwload_through_rtpengine(workdir):
    """The same load through rtpengine 10.5 (userspace, one thread, ng
    protocol), SDES on both sides with rtpengine's own keys on each: every
    packet decrypts with the key from rtpengine's SDP."""
    report, stdout = run_gwload(
        ["rtpengine", "--ng-port", str(free_port()), "--rtpengine-log", str(workdir / "rtpengine.log")],
        workdir)
    save_result(workdir, gwload=report)
    check_report(report, stdout)
    assert report["target"] == "rtpengine"
    assert "AEAD_AES_128_GCM" in report["trunk_media"]
