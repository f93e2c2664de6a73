"""linphone (Debian's linphone-cli 5.1: liblinphone, belle-sip,
mediastreamer2, a SIP and media stack nobody here wrote, unrelated to
baresip's libre) as a trunk or as a caller, driven through linphonec's
command line.

Facts found by experiment (tests/integration/README.md repeats them):
- linphonec reads its commands from a pipe as well as from a terminal;
  `soundcard use files` replaces the (absent) sound card by files, `play
  FILE` is what it sends (8 kHz WAV), `record FILE` what it hears (written
  at 48 kHz mono while a call runs).
- It opens no SIP socket until its database directory
  ($HOME/.local/share/linphone) exists: the core start aborts silently.
- `-a` answers every incoming call at once; `call URI` dials; `terminate`
  hangs up. `-d 4 -l FILE` logs every SIP message belle-sip sends
  ("message sent to [...]") and receives ("received [N] new bytes from").
- Its SDP names the local address of the route to its SIP peer (127.0.0.1
  here), while its RTP toward the gateway's media address leaves from that
  address (10.99.0.1): like a multi-homed host, it does not send from the
  address it signals (plain RTP needs `media_source = "latch"`).
"""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path
from typing import Optional

from harness import GWT_HOST, SipMessage, free_port, read_text, wait_until, wav_info, WavInfo

# media_encryption values of linphonerc [sip]
MODES = ("none", "srtp", "dtls")


class Linphone:
    """One linphonec user agent on 127.0.0.1. `encryption` is linphone's
    media_encryption (none, srtp: SDES, dtls: DTLS-SRTP), made mandatory
    unless it is none. As a trunk it answers calls to any user at once."""

    def __init__(self, workdir: Path, tone_wav: Path, encryption: str = "srtp", name: str = "linphone",
                 auto_answer: bool = True, rfc2833: bool = True, delayed_offer: bool = False):
        assert encryption in MODES, encryption
        self.dir = workdir / name
        (self.dir / ".local" / "share" / "linphone").mkdir(parents=True, exist_ok=True)
        self.encryption = encryption
        self.tone_wav = tone_wav
        self.auto_answer = auto_answer
        # False: no telephone-event in its SDP (use_rfc2833=0, use_info=1):
        # its DTMF, both ways, is SIP INFO
        self.rfc2833 = rfc2833
        # True: its INVITEs carry no SDP (sdp_200_ack=1), the offer comes in
        # the 200 and linphone answers in its ACK (a "delayed offer")
        self.delayed_offer = delayed_offer
        self.sip_port = free_port(socket.SOCK_DGRAM)
        self.rtp_port = free_port(socket.SOCK_DGRAM, span=4)
        self.log_path = self.dir / "linphone.log"
        self.out_path = self.dir / "linphonec.out"
        self.record_path = self.dir / "heard.wav"
        self.proc: Optional[subprocess.Popen] = None

    @property
    def uri(self) -> str:
        return f"sip:127.0.0.1:{self.sip_port}"

    def write_config(self):
        mandatory = 0 if self.encryption == "none" else 1
        (self.dir / "linphonerc").write_text(
            "[sip]\n"
            f"sip_port={self.sip_port}\n"
            "sip_tcp_port=0\n"
            "sip_tls_port=0\n"
            "use_ipv6=0\n"
            f"media_encryption={self.encryption}\n"
            f"media_encryption_mandatory={mandatory}\n"
            f"use_rfc2833={int(self.rfc2833)}\n"
            f"use_info={int(not self.rfc2833)}\n"
            f"sdp_200_ack={int(self.delayed_offer)}\n"
            "[rtp]\n"
            f"audio_rtp_port={self.rtp_port}\n"
            "[sound]\n"
            "echocancellation=0\n"
            "[video]\n"
            "enabled=0\n"
            "automatically_initiate=0\n"
            "automatically_accept=0\n"
        )

    def start(self, timeout: float = 15.0):
        assert GWT_HOST, "run inside tests/netns-run.sh (GWT_HOST unset)"
        self.write_config()
        args = ["linphonec", "-c", str(self.dir / "linphonerc"), "-d", "4", "-l", str(self.log_path)]
        if self.auto_answer:
            args.append("-a")
        out = open(self.out_path, "wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                                     cwd=self.dir, env={"HOME": str(self.dir), "PATH": "/usr/bin:/bin"})
        out.close()
        self.command("soundcard use files")
        self.command(f"play {self.tone_wav}")
        self.command(f"record {self.record_path}")

        def listening():
            if self.proc.poll() is not None:
                raise AssertionError(f"linphonec exited with {self.proc.returncode}:\n{self.output()[-2000:]}")
            return "Using wav files instead of soundcard" in self.output() and self._bound()

        wait_until(listening, timeout, f"linphonec listening on {self.sip_port} ({self.log_path})")
        return self

    def _bound(self) -> bool:
        out = subprocess.run(["ss", "-Hlun", f"sport = :{self.sip_port}"], capture_output=True, text=True).stdout
        return bool(out.strip())

    def command(self, line: str):
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def dial(self, uri: str):
        self.command(f"call {uri}")

    def hangup(self):
        self.command("terminate")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            try:
                self.command("quit")
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)

    # -- what it said and heard
    def output(self) -> str:
        return read_text(self.out_path)

    def log(self) -> str:
        return read_text(self.log_path)

    def connected(self) -> bool:
        return bool(re.search(r"Media streams established", self.output()))

    def ended(self) -> bool:
        return bool(re.search(r"Call \d+ with .* (ended|error)", self.output()))

    def wait_connected(self, timeout: float = 15.0):
        wait_until(self.connected, timeout, f"linphone's call connected ({self.out_path})")

    def wait_ended(self, timeout: float = 10.0):
        wait_until(self.ended, timeout, f"linphone's call ended ({self.out_path})")

    def tones(self) -> str:
        """The DTMF digits linphonec reported receiving ("Receiving tone 5
        from ..."), RFC 4733 or SIP INFO alike."""
        return "".join(re.findall(r"Receiving tone (\S) from", self.output()))

    def negotiated_encryption(self) -> str:
        """liblinphone's own verdict: LinphoneMediaEncryptionSRTP / DTLS / None."""
        found = re.findall(r"Negotiated media encryption is (\w+)", self.log())
        return found[-1] if found else ""

    def heard(self) -> WavInfo:
        return wav_info(self.record_path if self.record_path.exists() else None)

    def sip_messages(self) -> list[SipMessage]:
        """Every SIP message in belle-sip's log, as (transport, src, dst)
        from linphone's point of view ("me" for its own end)."""
        out = []
        pattern = re.compile(
            r"message sent to \[(\w+)://([^\]]+)\], size: \[\d+\] bytes\n(.*?)(?=^\d{4}-\d\d-\d\d |\Z)"
            r"|received \[\d+\] new bytes from \[(\w+)://([^\]]+)\]:\n(.*?)(?=^\d{4}-\d\d-\d\d |\Z)",
            re.S | re.M)
        for m in pattern.finditer(self.log()):
            if m.group(1):
                transport, src, dst, text = m.group(1), "me", m.group(2), m.group(3)
            else:
                transport, src, dst, text = m.group(4), m.group(5), "me", m.group(6)
            text = text.replace("\r\n", "\n")
            first = text.split("\n", 1)[0].strip()
            if first:
                out.append(SipMessage(transport.upper(), src, dst, first, text))
        return out

    def received(self, method: str = "", status: int = 0) -> list[SipMessage]:
        return [m for m in self.sip_messages()
                if m.dst == "me" and (not method or m.method == method) and (not status or m.status == status)]

    def sent(self, method: str = "", status: int = 0) -> list[SipMessage]:
        return [m for m in self.sip_messages()
                if m.src == "me" and (not method or m.method == method) and (not status or m.status == status)]
