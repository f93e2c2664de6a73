"""Fixtures of the integration tests: a tone file, baresip trunks (SDES-SRTP
and plain RTP), the gateway configured for them, and per-test artifact
directories under tests/artifacts/<test name>/ (logs, configs, WAV dumps)."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import (  # noqa: E402
    ARTIFACTS,
    GWT_HOST,
    Baresip,
    Gateway,
    TrunkSpec,
    write_tone_wav,
)

TRUNK_NUMBER = "1000"


def pytest_configure(config):
    config.addinivalue_line("markers", "chromium: drives Debian's Chromium through tests/e2e (select with -k chromium)")
    config.addinivalue_line("markers", "gateway: needs the gateway binary (target/debug/webrtc-sip-gateway)")
    config.addinivalue_line("markers", "alone: tests/run-all.sh runs this file by itself, after the parallel shards")
    if not GWT_HOST:
        pytest.exit(
            "tests/integration must run inside a test network namespace: "
            "tests/netns-run.sh python -m pytest tests/integration  (as root)",
            returncode=4,
        )


@pytest.fixture(scope="session")
def tone_wav(tmp_path_factory) -> Path:
    """8 kHz mono 16-bit, 440 Hz, amplitude 8000, 90 s. baresip's aufile
    source plays it once and at its end baresip hangs the call up (menu:
    "audio error (0,end of file)"), so it must outlast every call here."""
    return write_tone_wav(tmp_path_factory.mktemp("tone") / "tone.wav", seconds=90.0)


@pytest.fixture
def workdir(request) -> Path:
    """tests/artifacts/<test name>/, emptied first and kept afterwards."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    d = ARTIFACTS / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def _baresip(workdir, tone_wav, srtp):
    b = Baresip(workdir, tone_wav, user=TRUNK_NUMBER, srtp=srtp, name="trunk")
    try:
        yield b.start()
    finally:
        b.stop()


@pytest.fixture
def baresip_sdes(workdir, tone_wav):
    """baresip trunk answering TRUNK_NUMBER with mediaenc=srtp-mand."""
    yield from _baresip(workdir, tone_wav, srtp=True)


@pytest.fixture
def baresip_plain(workdir, tone_wav):
    """baresip trunk answering TRUNK_NUMBER with plain RTP/AVP."""
    yield from _baresip(workdir, tone_wav, srtp=False)


def _gateway(workdir, trunk: TrunkSpec, **options):
    gw = Gateway(workdir, trunk=trunk, **options)
    gw.start()
    try:
        yield gw
    finally:
        code = gw.stop()
    assert code == 0, f"gateway did not exit 0 on SIGTERM (exit {code}); log: {gw.log_path}"
    assert "panicked" not in gw.log(), f"gateway panicked; log: {gw.log_path}"


# Parametrize a test with this (indirect) to run it in both media port
# modes: browser legs on one port per worker (the default) and a port per call.
# Short ids: they end up in the artifacts path, and baresip's sndfile cuts
# dump paths at 128 bytes (losing the ".wav" the harness looks for).
BOTH_PORT_MODES = pytest.mark.parametrize(
    "gateway_sdes", [True, False], indirect=True, ids=["single", "percall"])


@pytest.fixture
def gateway_sdes(request, workdir, baresip_sdes):
    """The gateway with one trunk toward baresip_sdes (callee_stream sdes).
    Indirect parameter (BOTH_PORT_MODES): media.single_port."""
    trunk = TrunkSpec("carrier", f"sip:127.0.0.1:{baresip_sdes.sip_port};transport=udp",
                      callee_stream="sdes", secure_media="mandatory")
    yield from _gateway(workdir, trunk, media_single_port=getattr(request, "param", None))


@pytest.fixture
def gateway_plain(workdir, baresip_plain):
    """The gateway with one trunk toward baresip_plain (callee_stream
    decrypted, secure_media forbidden: plain RTP)."""
    trunk = TrunkSpec("carrier", f"sip:127.0.0.1:{baresip_plain.sip_port};transport=udp",
                      callee_stream="decrypted", secure_media="forbidden")
    yield from _gateway(workdir, trunk)


def pytest_collection_modifyitems(config, items):
    # the harness self-checks first: with -x they tell a broken peer from a
    # broken gateway
    items.sort(key=lambda item: 0 if "test_harness" in item.nodeid else 1)


@pytest.fixture(scope="session", autouse=True)
def _environment_report():
    sys.stderr.write(f"\n[integration] GWT_HOST={GWT_HOST} python={sys.version.split()[0]} "
                     f"GATEWAY_BIN={os.environ.get('GATEWAY_BIN', 'target/debug/webrtc-sip-gateway')}\n")
    yield
