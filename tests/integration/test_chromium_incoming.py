"""Incoming calls in headless Chromium through the gateway's own web client,
with baresip (the SDES trunk) as the caller.

test_chromium_incoming_call (tests/e2e/chromium-incoming.mjs): one call
answered, media both ways, hung up from the browser.

The script signs in as alice and prints READY-FOR-INCOMING; this test then
makes baresip dial sip:alice@<gateway>. The script checks the ring (panel
with the caller, body data-ringing, the WebAudio ringer audible, the title
flashing), clicks Answer, waits for `connected`, measures getStats() (packets
both ways rising, audio energy), checks the lock (dtls-srtp / sdes-srtp),
keeps screenshots and hangs up; this test checks the trunk's side: 200 OK
with RTP/SAVP + a=crypto, RTP both ways, Chromium's audio in baresip's
-dec.wav dump, and the BYE.

test_chromium_incoming_endings (tests/e2e/chromium-incoming-endings.mjs): two
sessions of alice ring together; answered on one (the other says "Answered on
another device", then the caller's BYE), declined on one while the other
rings on until the caller's CANCEL, declined on both (486 to the trunk), and
the gateway's ring timeout ("Missed call", a final status to the trunk).

Artifacts (tests/artifacts/test_chromium_incoming_call/): chromium/
(chromium-incoming-ringing.png, chromium-incoming-connected.png, the page
log with every signaling frame, incoming-offer.sdp, incoming-answer.sdp),
chromium-incoming.log (the script's output), result.json (timings and
figures), gateway/ and trunk/ as in the other tests.
"""

from __future__ import annotations

import array
import json
import os
import shutil
import subprocess
import threading
import time

import pytest

from harness import REPO, SILENCE_RMS, Gateway, TrunkSpec, save_result, sip_header, wait_until

pytestmark = [pytest.mark.gateway, pytest.mark.chromium]

SCRIPT = REPO / "tests" / "e2e" / "chromium-incoming.mjs"
ENDINGS = REPO / "tests" / "e2e" / "chromium-incoming-endings.mjs"
RING_TIMEOUT = 8  # seconds, [sip] ring_timeout of the endings test's gateway


def wav_peak(path) -> int:
    """Largest absolute 16-bit sample of a WAV dump (header skipped)."""
    if path is None or not path.exists():
        return 0
    data = path.read_bytes()
    pos = data.find(b"data")
    pcm = data[pos + 8:] if pos >= 0 else data[44:]
    samples = array.array("h")
    samples.frombytes(pcm[: len(pcm) // 2 * 2])
    return max((abs(s) for s in samples), default=0)


class ScriptRun:
    """chromium-incoming.mjs as a child process whose stdout is copied to a
    log file line by line, with the wall-clock time each line arrived."""

    def __init__(self, cmd, env, log_path, on_line=None):
        self.log_path = log_path
        self.lines: list[tuple[float, str]] = []
        self.on_line = on_line
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env,
                                     stdin=subprocess.PIPE if on_line else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self):
        with open(self.log_path, "w") as log:
            for line in self.proc.stdout:
                self.lines.append((time.time(), line.rstrip("\n")))
                log.write(line)
                log.flush()
                if self.on_line:
                    reply = self.on_line(line.rstrip("\n"))
                    if reply is not None:
                        log.write(f"<<< {reply}\n")
                        try:
                            self.proc.stdin.write(reply + "\n")
                            self.proc.stdin.flush()
                        except (BrokenPipeError, ValueError):
                            pass

    def saw(self, text: str):
        return next((t for t, line in self.lines if line.strip() == text), None)

    def wait(self, timeout: float):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return "timeout"
        finally:
            self.thread.join(5)

    def summary(self) -> dict:
        for _, line in reversed(self.lines):
            if line.startswith("{") and '"result"' in line:
                try:
                    return json.loads(line)
                except ValueError:
                    break
        return {}

    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)


@pytest.mark.timeout(240)
def test_chromium_incoming_call(workdir, gateway_sdes, baresip_sdes):
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
        ARTIFACT_DIR=str(artifacts),
        EXPECT_FROM=trunk.user,  # baresip calls from sip:1000@127.0.0.1
        EXPECT_TRUNK_SECURITY="sdes-srtp",
        MEDIA_SECONDS="6",
        INCOMING_TIMEOUT="20",
    )
    run = ScriptRun([node, str(SCRIPT)], env, workdir / "chromium-incoming.log")
    try:
        ready = wait_until(lambda: run.saw("READY-FOR-INCOMING") or (run.proc.poll() is not None and "exited"),
                           60, "chromium-incoming.mjs signed in (READY-FOR-INCOMING)", interval=0.05)
        assert ready != "exited", f"chromium-incoming.mjs exited before it was ready:\n{run.output()[-4000:]}"
        target = f"sip:{gw.account}@127.0.0.1:{gw.sip_port}"
        dialed_at = time.time()
        reply = trunk.command("dial", target)
        assert reply.get("ok", True), f"baresip refused to dial {target}: {reply}"
        rc = run.wait(200)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    summary = run.summary()
    times = summary.get("times") or {}

    def since_dial(key):
        return round(times[key] - dialed_at * 1000) if key in times else None

    figures = {
        "dial_to_incoming_frame_ms": since_dial("incomingFrame"),
        "dial_to_panel_ms": since_dial("incomingShown"),
        "dial_to_connected_ms": since_dial("connectedShown"),
        "answer_click_to_accept_sent_ms": (times["acceptSent"] - times["acceptClicked"])
        if {"acceptSent", "acceptClicked"} <= times.keys() else None,
        "answer_click_to_connected_ms": summary.get("acceptToConnectedMs"),
    }
    stats = summary.get("stats") or {}
    inbound, outbound = stats.get("inbound") or {}, stats.get("outbound") or {}
    save_result(workdir, chromium=summary, **figures,
                chromium_packets_received=inbound.get("packetsReceived"),
                chromium_packets_sent=outbound.get("packetsSent"),
                chromium_total_audio_energy=inbound.get("totalAudioEnergy"))
    assert rc == 0, (f"chromium-incoming.mjs exited {rc}; output ({workdir / 'chromium-incoming.log'}):\n"
                     f"{run.output()[-5000:]}\ngateway log: {gw.log_path}")

    # The trunk's side: the gateway answered baresip's INVITE with SDES-SRTP,
    # media flowed both ways, the browser's hangup became a BYE.
    bye = trunk.wait_bye(timeout=10)
    invites = trunk.sent("INVITE")
    assert invites, f"baresip sent no INVITE ({trunk.log_path})"
    assert invites[0].sdp_media()[2] == "RTP/SAVP", invites[0].text
    oks = [m for m in trunk.received(status=200) if "INVITE" in (sip_header(m.text, "CSeq") or "")]
    assert oks, f"baresip got no 200 OK to its INVITE ({trunk.log_path})"
    answer = oks[0]
    media = answer.sdp_media()
    assert media and media[2] == "RTP/SAVP", f"the gateway's 200 OK does not answer RTP/SAVP:\n{answer.text}"
    assert "a=crypto:" in answer.text, f"the gateway's 200 OK has no a=crypto:\n{answer.text}"
    assert trunk.srtp_enabled(), f"baresip did not enable SRTP ({trunk.log_path})"
    tx, rx = trunk.wait_rtp_stats()
    heard = trunk.dec_wav()
    peak = wav_peak(heard.path)
    save_result(workdir, trunk_tx=tx, trunk_rx=rx, trunk_heard_seconds=round(heard.seconds, 2),
                trunk_heard_rms=round(heard.rms, 1), trunk_heard_peak=peak, bye_from=bye.src)
    assert rx > 100, f"baresip received {rx} RTP packets from Chromium"
    assert tx > 100, f"baresip sent {tx} RTP packets"
    assert heard.seconds > 3, f"baresip's dump holds {heard.seconds:.1f} s of received audio ({heard.path})"
    # Chromium's fake microphone beeps; silence (or comfort noise) stays far
    # below SILENCE_RMS
    assert heard.rms > SILENCE_RMS, f"baresip heard RMS {heard.rms:.0f} (peak {peak}) in {heard.path}: silence"
    shots = {p.name for p in artifacts.glob("*.png")}
    assert {"chromium-incoming-ringing.png", "chromium-incoming-connected.png"} <= shots, shots


@pytest.fixture
def gateway_short_ring(workdir, baresip_sdes):
    """The SDES gateway of gateway_sdes with [sip] ring_timeout = RING_TIMEOUT."""
    trunk = TrunkSpec("carrier", f"sip:127.0.0.1:{baresip_sdes.sip_port};transport=udp",
                      callee_stream="sdes", secure_media="mandatory")
    gw = Gateway(workdir, trunk=trunk, ring_timeout=RING_TIMEOUT)
    gw.start()
    try:
        yield gw
    finally:
        code = gw.stop()
    assert code == 0, f"gateway did not exit 0 on SIGTERM (exit {code}); log: {gw.log_path}"
    assert "panicked" not in gw.log(), f"gateway panicked; log: {gw.log_path}"


@pytest.mark.timeout(240)
def test_chromium_incoming_endings(workdir, gateway_short_ring, baresip_sdes):
    """Two web-client sessions of alice, baresip calling: answered on one,
    declined on one (the other rings on), declined on both, ring timeout;
    each session's ring stops and the reason is shown in words (see
    chromium-incoming-endings.mjs), and the trunk gets the matching SIP."""
    assert ENDINGS.exists(), f"{ENDINGS} is missing"
    assert (ENDINGS.parent / "node_modules").exists(), "run `npm ci` in tests/e2e first (tests/run-all.sh does)"
    node = shutil.which("node")
    assert node, "node is not installed"
    gw, trunk = gateway_short_ring, baresip_sdes
    artifacts = workdir / "chromium"
    artifacts.mkdir()
    target = f"sip:{gw.account}@127.0.0.1:{gw.sip_port}"
    finals_at_dial = [0]
    actions: list[dict] = []

    def finals():
        return [m for m in trunk.received() if m.status >= 300 and "INVITE" in (sip_header(m.text, "CSeq") or "")]

    def on_line(line: str):
        if not line.startswith("ACTION "):
            return None
        name = line.split(" ", 1)[1].strip()
        entry = {"action": name, "at": time.time()}
        actions.append(entry)
        try:
            if name == "dial":
                finals_at_dial[0] = len(finals())
                reply = trunk.command("dial", target)
                assert reply.get("ok", True), f"baresip refused to dial {target}: {reply}"
            elif name == "hangup":
                reply = trunk.command("hangup")
                assert reply.get("ok", True), f"baresip refused to hang up: {reply}"
            elif name == "wait-ended":
                # the gateway's final response to the INVITE has reached baresip
                final = wait_until(lambda: len(finals()) > finals_at_dial[0] and finals()[-1], 15,
                                   "a final response to baresip's INVITE")
                entry["final"] = final.status
                time.sleep(0.3)  # baresip ACKs and forgets the call
            else:
                return f"ERR unknown action {name}"
            return "OK"
        except AssertionError as e:
            return f"ERR {str(e).splitlines()[0]}"

    env = dict(os.environ)
    env.update(GATEWAY_URL=gw.base_url, GW_ACCOUNT=gw.account, GW_PASSWORD=gw.password,
               ARTIFACT_DIR=str(artifacts), EXPECT_FROM=trunk.user, RING_TIMEOUT=str(RING_TIMEOUT))
    run = ScriptRun([node, str(ENDINGS)], env, workdir / "chromium-incoming-endings.log", on_line=on_line)
    rc = run.wait(200)
    summary = run.summary()
    statuses = [m.status for m in finals()]
    save_result(workdir, endings=summary, actions=actions, trunk_final_statuses=statuses,
                trunk_cancels=len(trunk.sent("CANCEL")), trunk_byes_sent=len(trunk.sent("BYE")))
    assert rc == 0, (f"chromium-incoming-endings.mjs exited {rc}; output ({workdir / 'chromium-incoming-endings.log'}):\n"
                     f"{run.output()[-5000:]}\ngateway log: {gw.log_path}")
    # the trunk's side of each scenario
    assert trunk.sent("BYE"), f"baresip's hangup of the answered call sent no BYE ({trunk.log_path})"
    assert trunk.sent("CANCEL"), f"baresip's hangup while ringing sent no CANCEL ({trunk.log_path})"
    assert 487 in statuses, f"no 487 for the cancelled INVITE; final statuses {statuses}"
    assert 486 in statuses, f"no 486 when both sessions declined; final statuses {statuses}"
    timeout_final = next((a.get("final") for a in actions if a["action"] == "wait-ended"), None)
    assert statuses and statuses[-1] in (408, 480), f"ring timeout answered {statuses[-1:]} (expected 408 or 480)"
    assert timeout_final == 486, actions
