"""Real peers for the integration tests: baresip (the SIP trunk), the gateway
process, and an aiortc browser stand-in.

Everything here runs inside the network namespace made by tests/netns-run.sh
(GWT_HOST=10.99.0.1): listeners on 127.0.0.1, media on GWT_HOST. Waits are on
events (log lines, sockets, HTTP answers, packet counters) with timeouts; no
sleep is used to synchronise.
"""

from __future__ import annotations

import array
import asyncio
import fractions
import glob
import http.client
import json
import math
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"
GWT_HOST = os.environ.get("GWT_HOST", "")

# RMS of 16-bit samples. The test tone has amplitude 8000 (RMS ~5650); a
# G.711 or Opus round trip keeps it in the thousands. Silence (or comfort
# noise) is far below SILENCE_RMS.
TONE_RMS_MIN = 1000.0
SILENCE_RMS = 100.0

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class Timeout(AssertionError):
    pass


def wait_until(pred: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    """Polls `pred` until it returns something truthy; returns that value.
    Raises Timeout (an AssertionError, so pytest shows `what`) otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise Timeout(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


async def async_wait_until(pred: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise Timeout(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1", span: int = 1) -> int:
    """A port free for both TCP and UDP on host (SIP listens on both); with
    span=2 the next port too (baresip's SIP/TLS listener takes port + 1)."""
    def free(port: int) -> bool:
        for k in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            try:
                with socket.socket(socket.AF_INET, k) as s:
                    s.bind((host, port))
            except OSError:
                return False
        return True

    for _ in range(100):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if any(30000 <= p <= 31999 or 20000 <= p <= 20999 for p in range(port, port + span)):
            continue  # keep clear of the media ranges used below
        if port + span > 65535 or not all(free(p) for p in range(port, port + span)):
            continue
        return port
    raise RuntimeError("no free port")


def read_text(path: Path) -> str:
    try:
        return ANSI.sub("", path.read_bytes().decode("utf-8", "replace"))
    except FileNotFoundError:
        return ""


# --------------------------------------------------------------------------
# Audio helpers


def write_tone_wav(path: Path, seconds: float = 10.0, rate: int = 8000, freq: float = 440.0, amp: int = 8000):
    n = int(seconds * rate)
    samples = array.array("h", (int(amp * math.sin(2 * math.pi * freq * i / rate)) for i in range(n)))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


def rms(samples) -> float:
    if len(samples) == 0:
        return 0.0
    return math.sqrt(sum(s * s for s in samples) / len(samples))


@dataclass
class WavInfo:
    path: Optional[Path]
    rate: int = 0
    samples: int = 0
    rms: float = 0.0

    @property
    def seconds(self) -> float:
        return self.samples / self.rate if self.rate else 0.0


def wav_info(path: Optional[Path]) -> WavInfo:
    """RMS of a 16-bit WAV. Reads the data even when the header's sizes were
    not finalised yet (file still open by baresip)."""
    if path is None or not path.exists():
        return WavInfo(path)
    data = path.read_bytes()
    rate, channels, offset = 8000, 1, 44
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        pos = 12
        while pos + 8 <= len(data):
            cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
            if cid == b"fmt ":
                channels, rate = struct.unpack("<HI", data[pos + 10:pos + 16])
            if cid == b"data":
                offset = pos + 8
                break
            pos += 8 + size + (size & 1)
    pcm = data[offset:]
    pcm = pcm[: len(pcm) // 2 * 2]
    samples = array.array("h")
    samples.frombytes(pcm)
    return WavInfo(path, rate, len(samples) // max(1, channels), rms(samples))


# --------------------------------------------------------------------------
# baresip, the SIP trunk


@dataclass
class SipMessage:
    transport: str
    src: str
    dst: str
    first_line: str
    text: str

    @property
    def method(self) -> str:
        return "" if self.first_line.startswith("SIP/2.0") else self.first_line.split(" ", 1)[0]

    @property
    def status(self) -> int:
        if self.first_line.startswith("SIP/2.0"):
            return int(self.first_line.split()[1])
        return 0

    def sdp_media(self) -> Optional[tuple[str, int, str]]:
        """(connection address, audio port, profile) of the SDP body, if any."""
        conn = re.search(r"^c=IN IP[46] (\S+)", self.text, re.M)
        m = re.search(r"^m=audio (\d+) (\S+)", self.text, re.M)
        if not (conn and m):
            return None
        return conn.group(1), int(m.group(1)), m.group(2)


class Baresip:
    """One headless baresip user agent. As a trunk it auto-answers calls to
    `user`, plays tone.wav and dumps what it hears to dump/*-dec.wav.

    Facts about baresip 1.0.0 found by experiment (tests/integration/README.md):
    the accounts file needs module account.so, ctrl_tcp commands such as dial
    and hangup need menu.so, `rtp_stats yes` prints "packets: TX RX" when a
    call ends, sndfile writes dump-<time>-dec.wav (heard) and -enc.wav (sent),
    and an empty -dec.wav (header only) when no RTP arrived.
    """

    def __init__(self, workdir: Path, tone_wav: Path, user: str = "1000", srtp: bool = True,
                 name: str = "baresip", answer: bool = True, tls_certificate: Optional[Path] = None,
                 mediaenc: Optional[str] = None):
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dump_dir = self.dir / "dump"
        self.dump_dir.mkdir(exist_ok=True)
        # baresip's sndfile cuts the dump file's path at 127 characters:
        # under a long test name (or a deeper checkout, as in CI) "-dec.wav"
        # loses its extension, or -dec and -enc collide. It gets a short
        # symlink to dump_dir instead.
        self.dump_link = Path(tempfile.mkdtemp(prefix="bs-")) / "d"
        self.dump_link.symlink_to(self.dump_dir.resolve())
        self.log_path = self.dir / "baresip.log"
        self.user = user
        self.srtp = srtp
        # another media encryption than srtp-mand (srtp=True) or none:
        # "dtls_srtp" loads dtls_srtp.so (UDP/TLS/RTP/SAVP, a=fingerprint)
        self.mediaenc = mediaenc
        self.tone_wav = tone_wav
        self.answer = answer
        # SIP over TLS too when given a certificate (PEM: certificate and
        # key): baresip 1.0 listens for TLS on sip_port + 1.
        self.tls_certificate = tls_certificate
        # Listening addresses of the other side ("127.0.0.1:port"), for
        # messages on connections baresip opened (see _direction).
        self.peers: set[str] = set()
        self.sip_port = free_port(span=2)
        self.ctrl_port = free_port()
        self.proc: Optional[subprocess.Popen] = None
        self._ctrl: Optional[socket.socket] = None

    @property
    def uri(self) -> str:
        return f"sip:{self.user}@127.0.0.1:{self.sip_port}"

    @property
    def tls_port(self) -> int:
        return self.sip_port + 1

    def write_config(self):
        modules = ["g711.so", "aufile.so", "aubridge.so", "sndfile.so", "ctrl_tcp.so"]
        if self.mediaenc == "dtls_srtp":
            modules.append("dtls_srtp.so")
        elif self.srtp:
            modules.append("srtp.so")
        lines = ["module_path /usr/lib/baresip/modules"]
        lines += [f"module {m}" for m in modules]
        lines += [
            "module_app account.so",
            "module_app menu.so",
            f"audio_source aufile,{self.tone_wav}",
            "audio_player aubridge,x",
            "audio_alert aubridge,x",
            f"snd_path {self.dump_link}",
            f"ctrl_tcp_listen 127.0.0.1:{self.ctrl_port}",
            f"sip_listen 127.0.0.1:{self.sip_port}",
            *([f"sip_certificate {self.tls_certificate}"] if self.tls_certificate else []),
            "rtp_ports 30000-31999",
            "rtp_stats yes",
            "statmode_default off",
            "call_max_calls 4",
        ]
        (self.dir / "config").write_text("\n".join(lines) + "\n")
        params = ";regint=0"
        params += ";answermode=auto" if self.answer else ";answermode=manual"
        if self.mediaenc:
            params += f";mediaenc={self.mediaenc}"
        elif self.srtp:
            params += ";mediaenc=srtp-mand"
        (self.dir / "accounts").write_text(f"<sip:{self.user}@127.0.0.1:{self.sip_port}>{params}\n")

    def start(self, timeout: float = 15.0):
        assert GWT_HOST, "run inside tests/netns-run.sh (GWT_HOST unset)"
        self.write_config()
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            ["baresip", "-4", "-n", "v0", "-f", str(self.dir), "-s"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir,
        )
        log.close()

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"baresip exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if "baresip is ready." not in self.log():
                return False
            try:
                self._ctrl = socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=1)
                return True
            except OSError:
                return False

        wait_until(ready, timeout, f"baresip ready ({self.log_path})")
        assert "Populated 1 account" in self.log(), self.log()
        return self

    def stop(self):
        if self._ctrl:
            self._ctrl.close()
            self._ctrl = None
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    # -- control (netstring JSON over TCP)
    def command(self, command: str, params: str = "") -> dict:
        assert self._ctrl is not None
        token = f"t{time.monotonic_ns()}"
        body = json.dumps({"command": command, "params": params, "token": token}).encode()
        self._ctrl.sendall(str(len(body)).encode() + b":" + body + b",")
        self._ctrl.settimeout(5)
        buf = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            while True:
                m = re.match(rb"(\d+):", buf)
                if not m or len(buf) < m.end() + int(m.group(1)) + 1:
                    break
                n = int(m.group(1))
                msg = json.loads(buf[m.end():m.end() + n])
                buf = buf[m.end() + n + 1:]
                if msg.get("response") and msg.get("token") == token:
                    return msg
            chunk = self._ctrl.recv(65536)
            if not chunk:
                break
            buf += chunk
        raise AssertionError(f"no ctrl_tcp response to {command}")

    def dial(self, uri: str) -> dict:
        """Calls `uri` from this user agent (menu's `dial` over ctrl_tcp);
        returns once baresip has accepted the command."""
        r = self.command("dial", uri)
        assert r.get("ok"), f"baresip refused to dial {uri}: {r}"
        return r

    # -- log readers
    def log(self) -> str:
        return read_text(self.log_path)

    def wait_received(self, method: str = "", status: int = 0, timeout: float = 10.0) -> SipMessage:
        """The first SIP message baresip received with this method/status."""
        what = method or str(status)
        return wait_until(lambda: (self.received(method, status) or [None])[0], timeout,
                          f"baresip receiving {what} ({self.log_path})")

    def sip_messages(self) -> list[SipMessage]:
        out = []
        for block in re.split(r"^#\s*$", self.log(), flags=re.M)[1:]:
            m = re.match(r"\s*(UDP|TCP|TLS) (\S+) -> (\S+)\n([^\n]*)\n", block)
            if m:
                out.append(SipMessage(m.group(1), m.group(2), m.group(3), m.group(4).strip(), block))
        return out

    def _me(self) -> set[str]:
        return {f"127.0.0.1:{self.sip_port}", f"127.0.0.1:{self.tls_port}"}

    def _direction(self, m: SipMessage) -> str:
        """"in" or "out" for baresip. Its trace names no direction; over a
        TLS connection baresip opened, its own end is an ephemeral port, so
        the gateway's listening addresses (`self.peers`) decide."""
        if m.src in self.peers:
            return "in"
        if m.dst in self.peers:
            return "out"
        me = self._me()
        return "in" if m.dst in me else "out" if m.src in me else ""

    def received(self, method: str = "", status: int = 0) -> list[SipMessage]:
        return [
            m for m in self.sip_messages()
            if self._direction(m) == "in" and (not method or m.method == method) and (not status or m.status == status)
        ]

    def sent(self, method: str = "", status: int = 0) -> list[SipMessage]:
        return [
            m for m in self.sip_messages()
            if self._direction(m) == "out" and (not method or m.method == method) and (not status or m.status == status)
        ]

    def call_established(self) -> bool:
        return "Call established" in self.log()

    def call_ended(self) -> bool:
        return bool(re.search(r"terminated \(duration|session closed", self.log()))

    def wait_established(self, timeout=15.0):
        wait_until(self.call_established, timeout, f"baresip call established ({self.log_path})")

    def wait_bye(self, timeout=10.0) -> SipMessage:
        return wait_until(lambda: (self.received("BYE") or [None])[0], timeout, f"baresip receiving BYE ({self.log_path})")

    def wait_call_ended(self, timeout=10.0):
        wait_until(self.call_ended, timeout, f"baresip call ended ({self.log_path})")

    def rtp_stats(self) -> Optional[tuple[int, int]]:
        """(transmitted, received) RTP packets of the last ended call, or None
        when no call with media ended."""
        found = re.findall(r"^packets:\s+(\d+)\s+(\d+)", self.log(), re.M)
        if not found:
            return None
        tx, rx = found[-1]
        return int(tx), int(rx)

    def wait_rtp_stats(self, timeout=10.0) -> tuple[int, int]:
        return wait_until(self.rtp_stats, timeout, f"baresip RTP statistics at call end ({self.log_path})")

    def dec_wav(self) -> WavInfo:
        files = sorted(glob.glob(str(self.dump_dir / "*-dec.wav")))
        return wav_info(Path(files[-1]) if files else None)

    def wait_heard_seconds(self, seconds: float, timeout: float = 15.0, gateway=None) -> WavInfo:
        """Waits until the dumped received audio holds `seconds` of samples.
        On a timeout the error says what there was: every dump file's length,
        baresip's last log lines and, given the gateway, its media counters,
        so that a rare failure in CI can be read from the output alone."""
        try:
            return wait_until(lambda: (lambda w: w if w.seconds >= seconds else None)(self.dec_wav()),
                              timeout, f"{seconds}s of audio heard by baresip ({self.dump_dir})")
        except Timeout as e:
            raise Timeout(f"{e}\n{self.diagnosis(gateway)}") from None

    def diagnosis(self, gateway=None) -> str:
        """The state of baresip's media (and the gateway's, if given)."""
        lines = ["dump files:"]
        for f in sorted(self.dump_dir.glob("*.wav")):
            lines.append(f"  {f.name}: {wav_info(f).seconds:.2f} s")
        lines.append("baresip log tail:")
        lines += ["  " + l for l in self.log().splitlines()[-25:]]
        if gateway is not None:
            try:
                m = gateway.metrics()
                lines.append("gateway media counters:")
                lines += ["  " + l for l in m.text.splitlines()
                          if l.startswith(("gateway_media_", "gateway_calls_")) and not l.startswith("#")]
            except Exception as err:  # the diagnosis must not hide the failure
                lines.append(f"gateway metrics unavailable: {err}")
        return "\n".join(lines)

    def srtp_enabled(self) -> bool:
        return "SRTP is Enabled" in self.log()

    def gateway_media_target(self) -> tuple[str, int, str]:
        """(address, port, profile) the gateway offered for the trunk leg, read
        from the SDP of the INVITE baresip received."""
        invites = self.received("INVITE")
        assert invites, f"baresip received no INVITE ({self.log_path})"
        media = invites[0].sdp_media()
        assert media, f"INVITE without an audio SDP:\n{invites[0].text}"
        return media


# --------------------------------------------------------------------------
# SIPp, a scripted SIP trunk (UAS scenarios in tests/integration/sipp/)

SIPP_DIR = Path(__file__).resolve().parent / "sipp"


@dataclass
class SippMessage(SipMessage):
    direction: str = ""  # "received" | "sent"
    time: float = 0.0    # wall clock (epoch seconds) SIPp logged it at


class SippUas:
    """sipp (Debian sip-tester 3.6.1) running one UAS scenario for one call
    (-m 1) on 127.0.0.1:<port>, media address GWT_HOST:<media_port>.
    -trace_msg writes every message with a wall-clock timestamp to
    messages.log, -trace_logs the scenario's <log> actions to actions.log,
    -trace_err unexpected messages to errors.log. Exit code 0 means the
    scenario ran to its end for that call."""

    def __init__(self, workdir: Path, scenario: str, keys: Optional[dict] = None, name: str = "sipp",
                 timeout: float = 60.0, transport: str = "u1", extra: Optional[list] = None,
                 calls: int = 1):
        # extra: more command-line options, e.g. ["-rtp_echo"]; calls: how
        # many calls SIPp takes before it exits (-m)
        self.extra = list(extra or [])
        self.calls = calls
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.scenario = SIPP_DIR / scenario
        assert self.scenario.exists(), self.scenario
        self.keys = dict(keys or {})
        self.timeout = timeout
        self.transport = transport
        self.port = free_port()
        self.media_port = free_port(socket.SOCK_DGRAM, GWT_HOST or "127.0.0.1")
        self.out_path = self.dir / "sipp.out"
        self.msg_path = self.dir / "messages.log"
        self.actions_path = self.dir / "actions.log"
        self.err_path = self.dir / "errors.log"
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 10.0):
        assert GWT_HOST, "run inside tests/netns-run.sh (GWT_HOST unset)"
        cmd = ["sipp", "-sf", str(self.scenario), "-t", self.transport,
               "-i", "127.0.0.1", "-p", str(self.port),
               "-mi", GWT_HOST, "-mp", str(self.media_port),
               "-m", str(self.calls), "-timeout", f"{int(self.timeout)}s", "-timeout_error", "-nostdin",
               "-trace_msg", "-message_file", str(self.msg_path),
               "-trace_logs", "-log_file", str(self.actions_path),
               "-trace_err", "-error_file", str(self.err_path)] + self.extra
        for k, v in self.keys.items():
            cmd += ["-key", k, str(v)]
        (self.dir / "command").write_text(" ".join(json.dumps(c) if " " in c else c for c in cmd) + "\n")
        out = open(self.out_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     cwd=self.dir)
        out.close()

        def bound():
            if self.proc.poll() is not None:
                raise AssertionError(f"sipp exited with {self.proc.returncode}: {read_text(self.out_path)[-3000:]}")
            kind = socket.SOCK_STREAM if self.transport.startswith("t") else socket.SOCK_DGRAM
            with socket.socket(socket.AF_INET, kind) as s:
                try:
                    s.bind(("127.0.0.1", self.port))
                    return False
                except OSError:
                    return True

        wait_until(bound, timeout, f"sipp listening on 127.0.0.1:{self.port}")
        return self

    @property
    def uri(self) -> str:
        tr = "tcp" if self.transport.startswith("t") else "udp"
        return f"sip:127.0.0.1:{self.port};transport={tr}"

    def wait(self, timeout: float = 30.0) -> int:
        """The exit code (sipp ends after its one call)."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise Timeout(f"sipp still running after {timeout:.0f}s ({self.msg_path})")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log(self) -> str:
        return read_text(self.msg_path)

    def actions(self) -> str:
        return read_text(self.actions_path)

    HEAD = re.compile(r"^-{20,} (\d{4}-\d\d-\d\d[ \t]\d\d:\d\d:\d\d\.\d+)[^\n]*\n"
                      r"(UDP|TCP) message (received|sent) (?:\[\d+\] bytes :|\(\d+ bytes\):)\n\n", re.M)

    def messages(self) -> list[SippMessage]:
        import datetime
        text = self.log()
        heads = list(self.HEAD.finditer(text))
        out = []
        for i, h in enumerate(heads):
            end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
            body = text[h.end():end]
            body = re.split(r"^-{20,}", body, flags=re.M)[0].strip("\r\n") + "\n"
            first = body.split("\n", 1)[0].strip()
            stamp = datetime.datetime.strptime(h.group(1).replace("\t", " "), "%Y-%m-%d %H:%M:%S.%f")
            me = f"127.0.0.1:{self.port}"
            received = h.group(3) == "received"
            out.append(SippMessage(h.group(2), "" if received else me, me if received else "", first,
                                   body, direction=h.group(3), time=stamp.timestamp()))
        return out

    def received(self, method: str = "", status: int = 0) -> list[SippMessage]:
        return [m for m in self.messages() if m.direction == "received"
                and (not method or m.method == method) and (not status or m.status == status)]

    def sent(self, method: str = "", status: int = 0) -> list[SippMessage]:
        return [m for m in self.messages() if m.direction == "sent"
                and (not method or m.method == method) and (not status or m.status == status)]


class SippUac(SippUas):
    """sipp as the calling side (a UAC scenario from sipp/) for one call
    (-m 1) toward `remote` ("127.0.0.1:<gateway sip port>"), Request-URI
    user `service` (-s), media address GWT_HOST:<media_port>. `extra` adds
    command-line options (e.g. ["-rtp_echo"]: RTP arriving at the media port
    is sent back to its source). Same traces as SippUas."""

    def __init__(self, workdir: Path, scenario: str, remote: str, service: str,
                 extra: Optional[list] = None, host: str = "127.0.0.1", **kw):
        kw.setdefault("name", "sipp_uac")
        super().__init__(workdir, scenario, **kw)
        # the address SIPp sends from: 127.0.0.1 is the trunk's side inside
        # the namespace, GWT_HOST / 10.99.0.2 are strangers
        self.host = host
        self.port = free_port(socket.SOCK_DGRAM, host)
        self.remote = remote
        self.service = service
        self.extra = list(extra or [])

    def start(self, timeout: float = 10.0):
        """Starts the call; returns at once (a UAC may be done before it
        could be seen listening)."""
        assert GWT_HOST, "run inside tests/netns-run.sh (GWT_HOST unset)"
        cmd = ["sipp", self.remote, "-sf", str(self.scenario), "-s", self.service, "-t", self.transport,
               "-i", self.host, "-p", str(self.port),
               "-mi", GWT_HOST, "-mp", str(self.media_port),
               "-m", "1", "-timeout", f"{int(self.timeout)}s", "-timeout_error", "-nostdin",
               "-trace_msg", "-message_file", str(self.msg_path),
               "-trace_logs", "-log_file", str(self.actions_path),
               "-trace_err", "-error_file", str(self.err_path)] + self.extra
        for k, v in self.keys.items():
            cmd += ["-key", k, str(v)]
        (self.dir / "command").write_text(" ".join(json.dumps(c) if " " in c else c for c in cmd) + "\n")
        out = open(self.out_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     cwd=self.dir)
        out.close()
        return self

    def wait_received(self, method: str = "", status: int = 0, timeout: float = 10.0) -> SippMessage:
        what = method or str(status)
        return wait_until(lambda: (self.received(method, status) or [None])[0], timeout,
                          f"sipp receiving {what} ({self.msg_path})")


def sip_header(text: str, name: str) -> Optional[str]:
    """The value of the first `name:` header of a SIP message (case-insensitive;
    no compact forms)."""
    head = text.split("\n\n", 1)[0].replace("\r", "")
    m = re.search(rf"^{re.escape(name)}[ \t]*:[ \t]*(.*(?:\n[ \t]+.*)*)", head, re.M | re.I)
    return m.group(1).strip() if m else None


def digest_params(value: str) -> dict:
    """The parameters of a `Digest k=v, k="v"` header value, keys lower case."""
    assert value.lower().startswith("digest"), value
    return {k.lower(): (q if q or v == "" else v)
            for k, q, v in re.findall(r'([\w-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))', value[6:])}


def digest_expected(params: dict, method: str, password: str, algorithm: str = "MD5", body: str = "") -> str:
    """The response a client with `password` must send for these Authorization
    parameters (RFC 2617 for MD5, RFC 7616 for SHA-256; qop auth or none)."""
    import hashlib
    alg = algorithm.upper()
    h = (lambda s: hashlib.md5(s.encode()).hexdigest()) if alg.startswith("MD5") else \
        (lambda s: hashlib.sha256(s.encode()).hexdigest())
    ha1 = h(f"{params['username']}:{params['realm']}:{password}")
    if alg.endswith("-SESS"):
        ha1 = h(f"{ha1}:{params['nonce']}:{params['cnonce']}")
    ha2 = h(f"{method}:{params['uri']}")
    if params.get("qop"):
        return h(f"{ha1}:{params['nonce']}:{params['nc']}:{params['cnonce']}:{params['qop']}:{ha2}")
    return h(f"{ha1}:{params['nonce']}:{ha2}")


# --------------------------------------------------------------------------
# The gateway process


def gateway_bin() -> Path:
    p = Path(os.environ.get("GATEWAY_BIN", REPO / "target" / "debug" / "webrtc-sip-gateway"))
    if not p.is_absolute():
        p = REPO / p
    return p


def unverified_ssl() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def hash_password(password: str) -> str:
    binary = gateway_bin()
    out = subprocess.run([str(binary), "hash-password"], input=password.encode(), capture_output=True, timeout=60)
    assert out.returncode == 0, f"hash-password failed ({out.returncode}): {out.stderr.decode(errors='replace')}"
    lines = [ln.strip() for ln in out.stdout.decode().splitlines() if ln.strip()]
    hashes = [ln for ln in lines if ln.startswith("$argon2")]
    assert hashes, f"hash-password printed no argon2 hash: {out.stdout!r}"
    return hashes[-1]


@dataclass
class TrunkSpec:
    name: str
    uri: str
    callee_stream: str = "sdes"
    secure_media: str = "mandatory"
    srtp_suites: list = field(default_factory=lambda: ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"])
    username: Optional[str] = None  # digest credentials toward the trunk
    password: Optional[str] = None
    reject_code: Optional[int] = None  # sent to the trunk when every browser session rejects (486 default)
    # OPTIONS pings to the trunk: off unless a test asks (SIPp scenarios
    # would take an unexpected OPTIONS for a failed call)
    options_interval: int = 0
    # digest credentials the trunk answers the gateway's challenge with
    # when it calls from outside inbound_sources
    inbound_username: Optional[str] = None
    inbound_password: Optional[str] = None
    # TLS trunks: CA file, "ca" | "pinned", "sha-256 AB:..."
    ca_file: Optional[str] = None
    tls_verify: Optional[str] = None
    tls_fingerprint: Optional[str] = None
    # REGISTER to the trunk with username/password; register_expires is left
    # out of the config when None (gateway default 3600)
    register: bool = False
    register_expires: Optional[int] = None
    # "signaled" | "latch": where the trunk's plain RTP may come from
    media_source: Optional[str] = None
    # the trunk's caller_stream on its incoming calls (gateway default when None)
    caller_stream: Optional[str] = None


def toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string


class Gateway:
    """target/debug/webrtc-sip-gateway run, with a config written here (or
    none at all: the built-in defaults)."""

    def __init__(self, workdir: Path, trunk: Optional[TrunkSpec] = None, account: str = "alice",
                 password: Optional[str] = None, use_config: bool = True, tcp: bool = False,
                 ring_timeout: Optional[int] = None, redact: bool = False,
                 privacy: Optional[dict] = None, operator_password: Optional[str] = None,
                 tls: bool = False, sip_limits: Optional[dict] = None, media: Optional[dict] = None,
                 media_single_port: Optional[bool] = None,
                 cluster: Optional[dict] = None, token_secret: Optional[str] = None, name: str = "gateway",
                 caller_stream: Optional[str] = None):
        self.dir = workdir / name
        # [cluster] keys (registrar, domain, outbound_proxy, drain_seconds);
        # nodes of one cluster share token_secret (a token works on any node)
        self.cluster = dict(cluster or {})
        self.token_secret = token_secret or os.urandom(24).hex()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "gateway.log"
        self.config_path = self.dir / "gateway.toml"
        self.trunk = trunk
        self.account = account
        # the account's caller_stream (left out of the config when None)
        self.caller_stream = caller_stream
        self.password = password or os.urandom(9).hex()
        self.use_config = use_config
        self.https_port = free_port() if use_config else 8443
        self.sip_port = free_port() if use_config else 5060
        # SIP over TCP too ([sip] tcp_listen), on a port of its own
        self.sip_tcp_port: Optional[int] = free_port() if (use_config and tcp) else None
        # SIP over TLS ([sip] tls_listen), with the gateway's HTTPS certificate
        self.sip_tls_port: Optional[int] = free_port() if (use_config and tls) else None
        # [sip.limits] keys (idle_seconds, message_seconds, ...)
        self.sip_limits = dict(sip_limits or {})
        # further [media] keys (timeout, hold_timeout)
        self.media = dict(media or {})
        # [media] single_port: browser legs on one port per worker (the
        # gateway's default) or a port per call (False)
        if media_single_port is not None:
            self.media["single_port"] = bool(media_single_port)
        # [sip] ring_timeout: seconds an incoming call rings before 408 (gateway default 120)
        self.ring_timeout = ring_timeout
        # `redact = true` on the account; `privacy` the keys of [privacy]
        # (redact_all, cdr_retention_days); `operator_password` is written as
        # [server] admin_password_hash. All left out of the config when unset.
        self.redact = redact
        self.privacy = dict(privacy or {})
        self.operator_password = operator_password
        self.proc: Optional[subprocess.Popen] = None
        self.exit_code: Optional[int] = None

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def data_dir(self) -> Path:
        """server.data_dir (call records in cdr.sqlite3, generated secrets)."""
        return self.dir / "data"

    def write_config(self):
        host = GWT_HOST or "127.0.0.1"
        lines = [
            "[server]",
            f'https_listen = "127.0.0.1:{self.https_port}"',
            f'public_ip = "{host}"',
            f"data_dir = {toml_str(str(self.dir / 'data'))}",
            f'token_secret = "{self.token_secret}"',
        ]
        if self.operator_password is not None:
            lines.append(f"admin_password_hash = {toml_str(hash_password(self.operator_password))}")
        lines += [
            "",
            "[sip]",
            f'udp_listen = "127.0.0.1:{self.sip_port}"',
        ]
        if self.sip_tcp_port:
            lines.append(f'tcp_listen = "127.0.0.1:{self.sip_tcp_port}"')
        if self.sip_tls_port:
            lines.append(f'tls_listen = "127.0.0.1:{self.sip_tls_port}"')
        if self.ring_timeout is not None:
            lines.append(f"ring_timeout = {int(self.ring_timeout)}")
        if self.sip_limits:
            lines.append("[sip.limits]")
            for k, v in self.sip_limits.items():
                lines.append(f"{k} = {json.dumps(v)}")
        lines += [
            "",
            "[media]",
            "port_min = 20000",
            "port_max = 20999",
        ]
        # further [media] keys (timeout, hold_timeout)
        for k, v in self.media.items():
            lines.append(f"{k} = {json.dumps(v)}")
        lines.append("")
        if self.trunk:
            t = self.trunk
            lines += [
                "[[trunks]]",
                f"name = {toml_str(t.name)}",
                f"uri = {toml_str(t.uri)}",
                f"callee_stream = {toml_str(t.callee_stream)}",
                f"secure_media = {toml_str(t.secure_media)}",
                "srtp_suites = [" + ", ".join(toml_str(s) for s in t.srtp_suites) + "]",
                'inbound_sources = ["127.0.0.1/32"]',
                f"options_interval = {int(t.options_interval)}",
            ]
            if t.username is not None:
                lines += [f"username = {toml_str(t.username)}", f"password = {toml_str(t.password or '')}"]
            if t.reject_code is not None:
                lines.append(f"reject_code = {int(t.reject_code)}")
            for key in ("ca_file", "tls_verify", "tls_fingerprint", "inbound_username", "inbound_password",
                        "media_source", "caller_stream"):
                if getattr(t, key) is not None:
                    lines.append(f"{key} = {toml_str(str(getattr(t, key)))}")
            if t.register:
                lines.append("register = true")
            if t.register_expires is not None:
                lines.append(f"register_expires = {int(t.register_expires)}")
            lines += [
                "",
                "[[accounts]]",
                f"name = {toml_str(self.account)}",
                f"password_hash = {toml_str(hash_password(self.password))}",
                f"trunk = {toml_str(t.name)}",
            ]
            if self.redact:
                lines.append("redact = true")
            if self.caller_stream is not None:
                lines.append(f"caller_stream = {toml_str(self.caller_stream)}")
            lines.append("")
        if self.cluster:
            lines.append("[cluster]")
            for k, v in self.cluster.items():
                lines.append(f"{k} = {json.dumps(v)}")
            lines.append("")
        if self.privacy:
            lines.append("[privacy]")
            for k, v in self.privacy.items():
                lines.append(f"{k} = {json.dumps(v)}")  # bools, numbers, strings: JSON = TOML here
            lines.append("")
        self.config_path.write_text("\n".join(lines))

    def start(self, timeout: float = 30.0):
        binary = gateway_bin()
        assert binary.exists(), f"gateway binary {binary} not built (cargo build, or set GATEWAY_BIN)"
        cmd = [str(binary), "run"]
        if self.use_config:
            self.write_config()
            cmd += ["--config", str(self.config_path)]
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env["NO_COLOR"] = "1"
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.dir, env=env)
        log.close()

        def healthy():
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                status, _ = self.http("GET", "/healthz", timeout=2)
                return status == 200
            except (OSError, http.client.HTTPException):
                return False

        wait_until(healthy, timeout, f"gateway GET /healthz = 200 ({self.log_path})", interval=0.1)
        return self

    def stop(self, timeout: float = 20.0) -> Optional[int]:
        """SIGTERM; returns the exit code (None if it had to be killed)."""
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                self.exit_code = None
                return None
        self.exit_code = self.proc.returncode
        return self.exit_code

    def kill(self):
        """SIGKILL (a crash: no BYE, no flush, call records left open)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.exit_code = self.proc.returncode if self.proc else None

    def cli(self, *args: str, timeout: float = 60.0, env: Optional[dict] = None) -> subprocess.CompletedProcess:
        """Runs `webrtc-sip-gateway ARGS --config <this gateway's config>`
        (cdr export, account purge, ...); returns the completed process."""
        full_env = dict(os.environ)
        full_env.update(env or {})
        return subprocess.run([str(gateway_bin()), *args, "--config", str(self.config_path)],
                              capture_output=True, timeout=timeout, cwd=self.dir, env=full_env)

    def log(self) -> str:
        return read_text(self.log_path)

    # -- HTTP
    def http(self, method: str, path: str, body: Optional[dict] = None, timeout: float = 10,
             headers: Optional[dict] = None) -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.https_port, context=unverified_ssl(), timeout=timeout)
        try:
            hdrs = dict(headers or {})
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                hdrs["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def login(self, account: Optional[str] = None, password: Optional[str] = None) -> str:
        status, body = self.http("POST", "/api/login", {"account": account or self.account,
                                                        "password": password or self.password})
        assert status == 200, f"POST /api/login: {status} {body[:300]!r}"
        token = json.loads(body)["token"]
        assert token
        return token

    def metrics(self) -> "Metrics":
        status, body = self.http("GET", "/metrics")
        assert status == 200, f"GET /metrics: {status}"
        return Metrics(body.decode())


class Metrics:
    """Prometheus text format, parsed just enough: sum(name{labels ⊇ given})."""

    LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
    LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

    def __init__(self, text: str):
        self.text = text
        self.samples: list[tuple[str, dict, float]] = []
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            m = self.LINE.match(line)
            if m:
                labels = dict(self.LABEL.findall(m.group(2) or ""))
                try:
                    self.samples.append((m.group(1), labels, float(m.group(3))))
                except ValueError:
                    pass

    def has(self, name: str) -> bool:
        return any(n == name for n, _, _ in self.samples)

    def sum(self, name: str, **labels) -> float:
        return sum(v for n, lab, v in self.samples
                   if n == name and all(lab.get(k) == val for k, val in labels.items()))


# --------------------------------------------------------------------------
# The browser stand-in (aiortc)


def _aiortc():
    import av  # noqa: F401
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamTrack
    return RTCConfiguration, RTCPeerConnection, RTCSessionDescription, MediaStreamTrack


def make_tone_track(freq: float = 440.0, amp: int = 8000):
    """A MediaStreamTrack producing a sine tone: s16 mono 48 kHz, 20 ms
    frames, with pts/time_base, paced in real time."""
    import av
    from aiortc.mediastreams import MediaStreamTrack

    rate, per_frame = 48000, 960
    # one second of tone: 440 Hz fits 440 whole periods into 48000 samples
    second = array.array("h", (int(amp * math.sin(2 * math.pi * freq * i / rate)) for i in range(rate))).tobytes()

    class ToneTrack(MediaStreamTrack):
        kind = "audio"

        def __init__(self):
            super().__init__()
            self._start: Optional[float] = None
            self._pts = 0
            self.frames = 0

        async def recv(self):
            if self.readyState != "live":
                from aiortc.mediastreams import MediaStreamError
                raise MediaStreamError
            if self._start is None:
                self._start = time.monotonic()
            else:
                self._pts += per_frame
                delay = self._start + self._pts / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # real-time pacing of the source
            off = (self._pts % rate) * 2
            chunk = second[off:off + per_frame * 2]
            frame = av.AudioFrame(format="s16", layout="mono", samples=per_frame)
            frame.planes[0].update(chunk)
            frame.sample_rate = rate
            frame.pts = self._pts
            frame.time_base = fractions.Fraction(1, rate)
            self.frames += 1
            return frame

    return ToneTrack()


def frame_samples(frame) -> array.array:
    """The s16 samples of an av.AudioFrame (packed s16 only, as aiortc's
    decoders produce)."""
    channels = len(frame.layout.channels)
    data = bytes(frame.planes[0])[: frame.samples * channels * 2]
    a = array.array("h")
    a.frombytes(data)
    return a


class AudioSink:
    """Consumes a remote audio track and measures it."""

    def __init__(self):
        self.frames = 0
        self.sum_sq = 0.0
        self.n = 0
        self.loud_frames = 0
        self.task: Optional[asyncio.Task] = None

    def start(self, track):
        async def run():
            from aiortc.mediastreams import MediaStreamError
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                s = frame_samples(frame)
                self.frames += 1
                self.sum_sq += sum(x * x for x in s)
                self.n += len(s)
                if rms(s) > TONE_RMS_MIN:
                    self.loud_frames += 1

        self.task = asyncio.ensure_future(run())

    @property
    def rms(self) -> float:
        return math.sqrt(self.sum_sq / self.n) if self.n else 0.0

    async def stop(self):
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass


def mangle_fingerprint(sdp: str) -> str:
    """Flips every byte of every a=fingerprint value (keeps the format)."""
    def flip(m):
        hexbytes = m.group(2).split(":")
        return m.group(1) + ":".join(f"{int(b, 16) ^ 0xFF:02X}" for b in hexbytes)
    out, n = re.subn(r"(a=fingerprint:\S+ )([0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})+)", flip, sdp)
    assert n, "offer has no a=fingerprint"
    return out


class BrowserPeer:
    """A WebRTC client of the gateway: login, wss signaling, aiortc media."""

    def __init__(self, base_url: str, token: str):
        self.base_url = base_url
        self.token = token
        self.ws = None
        self.messages: list[dict] = []
        self._queue: asyncio.Queue = asyncio.Queue()
        self._reader: Optional[asyncio.Task] = None
        self.pc = None
        self.tone = None
        self.sink = AudioSink()
        self.rtp_by_ssrc: dict[int, int] = {}
        self.call_id = f"t{os.urandom(6).hex()}"
        self.incoming: Optional[dict] = None  # the `incoming` message being answered
        self.accept_sent_at: Optional[float] = None  # time.monotonic() when `accept` was sent

    async def connect(self):
        import websockets
        url = self.base_url.replace("https://", "wss://") + f"/ws?token={self.token}"
        self.ws = await websockets.connect(url, ssl=unverified_ssl(), open_timeout=10, max_size=2**20)

        async def reader():
            try:
                async for raw in self.ws:
                    msg = json.loads(raw)
                    self.messages.append(msg)
                    await self._queue.put(msg)
            except Exception:
                pass
            await self._queue.put({"type": "_closed"})

        self._reader = asyncio.ensure_future(reader())
        return self

    async def send(self, msg: dict):
        await self.ws.send(json.dumps(msg))

    async def next_message(self, types: set, timeout: float) -> dict:
        """The next message whose type is in `types`, or a hangup/error/_closed
        for this call (returned too, for the caller to judge)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"timed out after {timeout:.0f}s waiting for {types}; got {self.messages}")
            try:
                msg = await asyncio.wait_for(self._queue.get(), left)
            except asyncio.TimeoutError:
                continue
            t = msg.get("type")
            if t in types:
                return msg
            if t in ("hangup", "error", "_closed") and msg.get("id") in (None, self.call_id):
                return msg

    async def make_pc(self, tone: bool = True):
        RTCConfiguration, RTCPeerConnection, _, _ = _aiortc()
        # iceServers=[]: no default STUN server, no traffic out of the namespace
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        if tone:
            self.tone = make_tone_track()
            self.pc.addTrack(self.tone)

        @self.pc.on("track")
        def on_track(track):
            if track.kind == "audio":
                self.sink.start(track)

        return self.pc

    def _count_rtp(self):
        """Counts every RTP packet aiortc's receiver gets, per SSRC."""
        receiver = self.pc.getTransceivers()[0].receiver
        orig = receiver._handle_rtp_packet

        async def counting(packet, arrival_time_ms):
            self.rtp_by_ssrc[packet.ssrc] = self.rtp_by_ssrc.get(packet.ssrc, 0) + 1
            return await orig(packet, arrival_time_ms)

        receiver._handle_rtp_packet = counting

    async def call(self, to: str, mangle=None, timeout: float = 20.0) -> dict:
        """Places a call; returns the `connected` message (or the hangup/error
        that came instead)."""
        _, _, RTCSessionDescription, _ = _aiortc()
        await self.make_pc()
        self._count_rtp()
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)
        sdp = self.pc.localDescription.sdp
        if mangle:
            sdp = mangle(sdp)
        await self.send({"type": "call", "id": self.call_id, "to": to, "sdp": sdp})
        msg = await self.next_message({"answer", "connected"}, timeout)
        if msg["type"] == "answer":
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=msg["sdp"], type="answer"))
            msg = await self.next_message({"connected"}, timeout)
        return msg

    # -- incoming calls (the gateway offers, the browser answers)

    async def wait_for(self, kinds: set, timeout: float, since: int = 0, call_id: Optional[str] = None) -> dict:
        """The first message (in self.messages[since:], already received or
        yet to come) whose type is in `kinds`, or a hangup/error for
        `call_id` (returned too, for the caller to judge). Reads
        self.messages, not the queue, so waits in any order see everything."""
        def found():
            for m in self.messages[since:]:
                if m.get("type") in kinds:
                    return m
                if call_id is not None and m.get("type") in ("hangup", "error") and m.get("id") == call_id:
                    return m
            return None
        return await async_wait_until(found, timeout, f"{sorted(kinds)} at the browser (got {self.messages})",
                                      interval=0.01)

    async def barrier(self, timeout: float = 5.0):
        """A round trip through the gateway's reader of this socket (an
        unknown message type is answered with an `error`): once it returns
        the session is live on the gateway's side, so it can be rung."""
        since = len(self.messages)
        await self.send({"type": "x-barrier"})
        await async_wait_until(
            lambda: any(m.get("type") == "error" and m.get("id") is None for m in self.messages[since:]),
            timeout, f"the error answering a barrier message (got {self.messages[since:]})", interval=0.01)

    async def wait_incoming(self, timeout: float = 10.0) -> dict:
        """Waits for `incoming`; this peer's call_id becomes the call's id."""
        msg = await self.wait_for({"incoming"}, timeout)
        assert msg["type"] == "incoming", msg
        assert msg.get("id"), f"incoming without an id: {msg}"
        self.call_id = msg["id"]
        self.incoming = msg
        return msg

    async def accept(self, incoming: Optional[dict] = None, mangle=None) -> str:
        """Answers the incoming call as a browser does: setRemoteDescription
        (the gateway's offer), addTrack (the tone), createAnswer,
        setLocalDescription (aiortc gathers before returning), then `accept`
        with the answer. Returns the SDP sent."""
        _, _, RTCSessionDescription, _ = _aiortc()
        incoming = incoming or self.incoming
        await self.make_pc(tone=False)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=incoming["sdp"], type="offer"))
        self.tone = make_tone_track()
        self.pc.addTrack(self.tone)
        self._count_rtp()
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        sdp = self.pc.localDescription.sdp
        if mangle:
            sdp = mangle(sdp)
        self.accept_sent_at = time.monotonic()  # the moment `accept` leaves (answer built)
        await self.send({"type": "accept", "id": incoming["id"], "sdp": sdp})
        return sdp

    async def answer_offer(self, offer: dict) -> str:
        """Answers the gateway's re-offer (`offer`, a codec change) as a
        browser does: setRemoteDescription, createAnswer,
        setLocalDescription, then `answer`. aiortc picks its encoder once,
        when its sender starts, and its receiver's payload types once too;
        a browser switches both on renegotiation, so this does it for
        aiortc: the running sender's codec object takes the new codec (and
        its encoder is rebuilt), the receiver and the transport's RTP router
        learn the new payload types.
        Returns the SDP sent."""
        _, _, RTCSessionDescription, _ = _aiortc()
        transceiver = self.pc.getTransceivers()[0]
        # The codec object the running sender was started with (its first
        # negotiation's): later renegotiations replace the transceiver's
        # list, so it is kept to be switched again.
        sending = getattr(self, "_sending_codec", None) or transceiver._codecs[0]
        self._sending_codec = sending
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        new = transceiver._codecs[0]
        receiving = transceiver.receiver._RTCRtpReceiver__codecs
        router = transceiver.receiver.transport._rtp_router
        for codec in transceiver._codecs:
            receiving[codec.payloadType] = codec
            router.payload_type_table.setdefault(codec.payloadType, set()).add(transceiver.receiver)
        if (sending.mimeType, sending.payloadType) != (new.mimeType, new.payloadType):
            sending.mimeType, sending.payloadType = new.mimeType, new.payloadType
            sending.clockRate, sending.channels = new.clockRate, new.channels
            transceiver.sender._RTCRtpSender__encoder = None
        sdp = self.pc.localDescription.sdp
        await self.send({"type": "answer", "id": offer["id"], "sdp": sdp})
        return sdp

    async def reject(self, incoming: Optional[dict] = None):
        incoming = incoming or self.incoming
        await self.send({"type": "reject", "id": incoming["id"]})

    @property
    def packets_received(self) -> int:
        return sum(self.rtp_by_ssrc.values())

    async def stats(self) -> tuple[int, int]:
        """(packetsReceived, packetsSent) from pc.getStats()."""
        report = await self.pc.getStats()
        received = sum(s.packetsReceived for s in report.values() if s.type == "inbound-rtp")
        sent = sum(s.packetsSent for s in report.values() if s.type == "outbound-rtp")
        return received, sent

    async def receive(self, packets: int, timeout: float = 20.0):
        await async_wait_until(lambda: self.packets_received >= packets, timeout,
                               f"{packets} RTP packets at the browser (got {self.packets_received})")

    async def hangup(self):
        if self.ws is not None:
            try:
                await self.send({"type": "hangup", "id": self.call_id})
            except Exception:
                pass

    async def close(self):
        await self.sink.stop()
        if self.pc is not None:
            await self.pc.close()
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()


def save_result(workdir: Path, **values):
    """Writes the test's measurements to <workdir>/result.json and prints
    them (pytest shows them with the failure, or with -s)."""
    path = workdir / "result.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    old.update(values)
    path.write_text(json.dumps(old, indent=2, default=str) + "\n")
    print(f"[result] {json.dumps(values, default=str)}")


# --------------------------------------------------------------------------
# Certificates for TLS trunks


@dataclass
class TestPki:
    ca: Path            # the CA's certificate (PEM): a trunk's ca_file
    server: Path        # certificate + key (PEM) for 127.0.0.1, signed by the CA
    fingerprint: str    # "sha-256 AB:CD:..." of the server certificate


def make_pki(directory: Path, name: str = "pki") -> TestPki:
    """A throwaway CA and an ECDSA P-256 certificate it signed for
    127.0.0.1 (what a TLS trunk presents)."""
    import datetime
    import hashlib
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = directory / name
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test CA {name}")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server_path = directory / "server.pem"
    server_path.write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption()))
    digest = hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    fingerprint = "sha-256 " + ":".join(digest[i:i + 2] for i in range(0, 64, 2))
    return TestPki(ca=ca_path, server=server_path, fingerprint=fingerprint)


@dataclass
class SippTrunkRun:
    """What [run_browser_against_sipp] saw: the browser coroutine's result,
    SIPp's and the gateway's exit codes, and both for their traces."""
    result: object
    sipp_code: Optional[int]
    gw_code: Optional[int]
    sipp: SippUas
    gw: "Gateway"


def run_browser_against_sipp(workdir: Path, scenario: str, browser, sipp_wait: float = 20.0,
                             **sipp_options) -> SippTrunkRun:
    """SIPp (a UAS `scenario` from sipp/) plays a plain-RTP trunk
    (callee_stream "decrypted", secure_media "forbidden") of a gateway, and
    `browser(peer, gw)`, an async function, runs with a BrowserPeer logged in
    and connected (closed afterwards). Then SIPp is waited for (it exits
    after its calls) and both are stopped. `sipp_options` go to SippUas
    (extra, calls, ...)."""
    sipp = SippUas(workdir, scenario, **sipp_options).start()
    gw = Gateway(workdir, trunk=TrunkSpec("carrier", sipp.uri, callee_stream="decrypted",
                                          secure_media="forbidden")).start()
    try:
        async def run():
            peer = await BrowserPeer(gw.base_url, gw.login()).connect()
            try:
                return await browser(peer, gw)
            finally:
                await peer.close()

        result = asyncio.run(run())
        code = sipp.wait(sipp_wait)
    finally:
        sipp.stop()
        gw_code = gw.stop()
    return SippTrunkRun(result, code, gw_code, sipp, gw)
