"""Early media, then an answer from another media server (src/calls/outgoing.rs
`on_trunk_sdp`).

SIPp (sipp/uas_183_then_200.xml) plays a trunk whose 183 Session Progress
carries SDP A (an announcement server: GWT_HOST:PA, plain RTP/AVP, PCMU) and
whose 200 OK, EARLY_MS later, carries SDP B (the callee: GWT_HOST:PB, same
codec, another origin). PA and PB are plain UDP sockets of this test (with
PA+1 and PB+1 bound too, to catch non-muxed RTCP); they timestamp every
datagram the gateway sends them. PB stays silent until the gateway's RTP has
reached it (the gateway latches its trunk destination onto any new source of
the signaled IP, so RTP from PB would prove nothing about SDP B); then it plays
a PCMU tone (20 ms pacing, one SSRC) back to the gateway's trunk RTP port.

Artifacts in tests/artifacts/<test name>/: gateway/gateway.log,
sipp/messages.log (timestamped SIP trace), sipp/actions.log, result.json.
"""

from __future__ import annotations

import asyncio
import math
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Optional

import pytest

from conftest import TRUNK_NUMBER
from harness import (
    GWT_HOST,
    BrowserPeer,
    async_wait_until,
    rms,
    save_result,
    sip_header,
)
from test_sip_trunk import plain_trunk, start_gateway, start_sipp  # noqa: F401  (fixtures)

pytestmark = pytest.mark.gateway

EARLY_MS = 2000          # SIPp's scripted pause between the 183 and the 200
SETTLE = 0.5             # seconds the gateway may take to move after the 200
PA_AFTER_200_MAX = 5     # "a handful" of packets still reaching A after the 200
SILENT_B_PACKETS = 50    # RTP at PB after the 200 while PB itself sends nothing
TRUNK_SSRC = 0x5EED0B0B  # the SSRC of the tone played from PB
PCMU = 0


# --------------------------------------------------------------------------
# G.711 mu-law, RTP


def _ulaw_encode(sample: int) -> int:
    """One 16-bit linear sample to G.711 mu-law (ITU-T G.711, bias 0x84)."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(-sample if sample < 0 else sample, 32635) + 0x84
    exponent = max(0, (magnitude >> 7).bit_length() - 1)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _ulaw_decode(byte: int) -> int:
    byte = ~byte & 0xFF
    sign, exponent, mantissa = byte & 0x80, (byte >> 4) & 0x07, byte & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return -magnitude if sign else magnitude


def _tone_second_ulaw(freq: float = 440.0, amp: int = 8000, rate: int = 8000) -> bytes:
    """One second of a sine tone in mu-law (440 Hz: whole periods, loops cleanly)."""
    return bytes(_ulaw_encode(int(amp * math.sin(2 * math.pi * freq * i / rate))) for i in range(rate))


def _is_rtp(data: bytes) -> bool:
    """RTP version 2 and not RTCP (RFC 5761 4: RTCP packet types 192-223)."""
    return len(data) >= 12 and data[0] >> 6 == 2 and not 192 <= data[1] <= 223


@dataclass
class Arrival:
    t: float        # wall clock (time.time()), comparable with SIPp's trace stamps
    src: tuple
    size: int
    rtp: bool
    pt: int
    seq: int
    ssrc: int
    payload: bytes


class RtpPorts:
    """Two media addresses of the fake trunk, A (early media) and B (answer),
    each an RTP socket on GWT_HOST with its RTCP neighbour (port + 1) bound
    too; a thread records every datagram with its arrival time."""

    def __init__(self, host: str):
        self.host = host
        self.socks: dict[str, socket.socket] = {}
        self.arrivals: dict[str, list[Arrival]] = {"A": [], "B": [], "A_rtcp": [], "B_rtcp": []}
        for name in ("A", "B"):
            rtp, rtcp = self._bind_pair()
            self.socks[name], self.socks[name + "_rtcp"] = rtp, rtcp
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _bind_pair(self) -> tuple[socket.socket, socket.socket]:
        """An even port P with P+1 free as well, outside the gateway's
        (20000-20999) and baresip's (30000-31999) media ranges."""
        for _ in range(200):
            rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rtp.bind((self.host, 0))
            port = rtp.getsockname()[1]
            if port % 2 or 20000 <= port <= 21000 or 30000 <= port <= 32000:
                rtp.close()
                continue
            rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                rtcp.bind((self.host, port + 1))
            except OSError:
                rtp.close()
                rtcp.close()
                continue
            return rtp, rtcp
        raise RuntimeError("no free RTP/RTCP port pair")

    def port(self, name: str) -> int:
        return self.socks[name].getsockname()[1]

    def start(self):
        for s in self.socks.values():
            s.setblocking(False)
        by_fd = {s.fileno(): name for name, s in self.socks.items()}

        def run():
            while not self._stop.is_set():
                ready, _, _ = select.select(list(self.socks.values()), [], [], 0.05)
                now = time.time()
                for s in ready:
                    name = by_fd[s.fileno()]
                    while True:
                        try:
                            data, src = s.recvfrom(2048)
                        except (BlockingIOError, InterruptedError):
                            break
                        except OSError:
                            break
                        if _is_rtp(data):
                            pt, seq, ssrc = data[1] & 0x7F, struct.unpack("!H", data[2:4])[0], \
                                struct.unpack("!I", data[8:12])[0]
                            cc = data[0] & 0x0F
                            payload = data[12 + 4 * cc:]
                        else:
                            pt, seq, ssrc, payload = data[1] if len(data) > 1 else -1, -1, -1, b""
                        self.arrivals[name].append(Arrival(now, src, len(data), _is_rtp(data), pt, seq,
                                                           ssrc, payload))

        self._thread = threading.Thread(target=run, name="rtp-ports", daemon=True)
        self._thread.start()

    def rtp(self, name: str, after: float = 0.0, before: float = math.inf) -> list[Arrival]:
        return [a for a in list(self.arrivals[name]) if a.rtp and after < a.t <= before]

    def close(self):
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        for s in self.socks.values():
            s.close()


class TonePlayer:
    """Plays a PCMU tone from one socket to one address: 160-sample packets
    every 20 ms on an absolute schedule, one SSRC, marker on the first."""

    def __init__(self, sock: socket.socket, dest: tuple):
        self.sock = sock
        self.dest = dest
        self.sent = 0
        self.started_at: Optional[float] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._tone = _tone_second_ulaw()

    def start(self):
        def run():
            t0 = time.monotonic()
            self.started_at = time.time()
            seq, ts = 4000, 160000
            while not self._stop.is_set():
                off = (self.sent * 160) % len(self._tone)
                header = struct.pack("!BBHII", 0x80, (0x80 if self.sent == 0 else 0) | PCMU,
                                     (seq + self.sent) & 0xFFFF, (ts + 160 * self.sent) & 0xFFFFFFFF, TRUNK_SSRC)
                try:
                    self.sock.sendto(header + self._tone[off:off + 160], self.dest)
                except BlockingIOError:
                    pass
                self.sent += 1
                delay = t0 + self.sent * 0.020 - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)

        self._thread = threading.Thread(target=run, name="tone-player", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread:
            self._thread.join(5)


def _payload_rms(arrivals: list[Arrival]) -> float:
    samples = [_ulaw_decode(b) for a in arrivals if a.pt == PCMU for b in a.payload]
    return rms(samples)


async def _wait_rtp(ports: RtpPorts, name: str, count: int, after: float, timeout: float, what: str):
    """Waits until `count` RTP packets arrived at `name` after `after`; the
    failure names the counts at both ports when it gave up."""
    try:
        await async_wait_until(lambda: len(ports.rtp(name, after=after)) >= count, timeout, what)
    except AssertionError as e:
        raise AssertionError(
            f"{e}: got {len(ports.rtp(name, after=after))}; RTP at PA before/after the 200: "
            f"{len(ports.rtp('A', before=after))}/{len(ports.rtp('A', after=after))}, at PB: "
            f"{len(ports.rtp('B', before=after))}/{len(ports.rtp('B', after=after))}") from None


def _cseq_method(msg) -> str:
    return (sip_header(msg.text, "CSeq") or " ").split()[-1]


# --------------------------------------------------------------------------


@pytest.mark.parametrize("announcement_after_200", [None, 0.2], ids=["a_silent", "a_talks_on"])
def test_200_sdp_after_183_moves_the_trunk_leg(workdir, start_sipp, start_gateway, announcement_after_200):
    """With `a_talks_on`, A plays an announcement during early media and
    keeps sending for 0.2 s after the 200, as a real announcement server
    does: its late packets must not pull the trunk leg back to A.

    183 with SDP A (early media at PA), then 200 with SDP B (PB, same
    codec): the gateway starts media on A (the browser's RTP reaches PA
    before the 200), then moves its trunk leg to B: after the 200 the
    browser's RTP goes to PB (within SETTLE, SILENT_B_PACKETS of it while PB
    sends nothing) and at most PA_AFTER_200_MAX more packets reach PA; the
    tone then played from PB reaches the browser (> 50 packets with
    energy); `connected`; hangup becomes a BYE at SIPp, whose scenario
    exits 0."""
    ports = RtpPorts(GWT_HOST)
    player: Optional[TonePlayer] = None
    state: dict = {}
    try:
        pa, pb = ports.port("A"), ports.port("B")
        sipp = start_sipp("uas_183_then_200.xml", keys={"pa": pa, "pb": pb, "early_ms": EARLY_MS})
        gw = start_gateway(plain_trunk(sipp.uri))
        ports.start()

        async def run():
            nonlocal player
            peer = await BrowserPeer(gw.base_url, gw.login()).connect()
            announcer_task = None
            if announcement_after_200 is not None:
                async def announce():
                    await async_wait_until(lambda: ports.rtp("A"), 20, "RTP from the gateway at PA")
                    state["announcer"] = TonePlayer(ports.socks["A"], ports.rtp("A")[0].src)
                    state["announcer"].start()
                announcer_task = asyncio.ensure_future(announce())
            try:
                connected = await peer.call(TRUNK_NUMBER, timeout=EARLY_MS / 1000 + 20)
                assert connected["type"] == "connected", f"expected connected, got {connected}; all: {peer.messages}"
                oks = await async_wait_until(
                    lambda: [m for m in sipp.sent(status=200) if _cseq_method(m) == "INVITE"], 10,
                    f"SIPp's 200 OK for the INVITE in its trace ({sipp.msg_path})")
                t200 = state["t200"] = oks[0].time
                if announcer_task is not None:
                    await announcer_task
                    await async_wait_until(lambda: time.time() > t200 + announcement_after_200, 5,
                                           "the announcement's late packets to go out")
                    state["announcer"].stop()
                    state["announcer_sent"] = state["announcer"].sent
                    assert state["announcer_sent"] > 20, "the announcement played during early media"

                invite = sipp.received("INVITE")[0]
                # Phase 1, PB silent: the gateway latches its trunk
                # destination onto a new source of its signaled IP, so RTP
                # from PB would pull the gateway's stream there by itself.
                # Until PB has heard SILENT_B_PACKETS, only SDP B can send
                # the gateway's RTP to PB.
                await _wait_rtp(ports, "B", SILENT_B_PACKETS, t200, 10,
                                f"{SILENT_B_PACKETS} RTP packets from the gateway at PB {pb} after the 200, "
                                f"PB silent")
                # Phase 2: PB plays a tone back to where the gateway's RTP
                # comes from (its trunk RTP port).
                gw_trunk = ports.rtp("B", after=t200)[0].src
                loud_before, packets_before = peer.sink.loud_frames, peer.packets_received
                player = TonePlayer(ports.socks["B"], gw_trunk)
                player.start()
                await async_wait_until(lambda: player.started_at is not None, 5, "the PB tone player to start")
                t_player = player.started_at
                await _wait_rtp(ports, "B", SILENT_B_PACKETS + 100, t200, 15,
                                f"{SILENT_B_PACKETS + 100} RTP packets at PB after the 200, PB playing")
                try:
                    await async_wait_until(lambda: peer.sink.loud_frames - loud_before > 50, 15,
                                           "> 50 loud frames at the browser after the 200")
                except AssertionError as e:
                    raise AssertionError(f"{e}: got {peer.sink.loud_frames - loud_before} loud frames, "
                                         f"{peer.packets_received - packets_before} packets; "
                                         f"PB tone packets sent {player.sent}") from None
                measured = {
                    "browser_loud_frames_after_200": peer.sink.loud_frames - loud_before,
                    "browser_packets_after_200": peer.packets_received - packets_before,
                    "browser_loud_frames_before_player": loud_before,
                    "browser_packets_before_player": packets_before,
                    "browser_rms": peer.sink.rms,
                    "browser_ssrcs": dict(peer.rtp_by_ssrc),
                    "player_sent": player.sent,
                    "player_started_after_200_s": round(t_player - t200, 3),
                }
                t_hangup = time.time()
                await peer.hangup()
                await async_wait_until(lambda: sipp.received("BYE"), 10, f"SIPp receiving BYE ({sipp.msg_path})")
                player.stop()
                return connected, list(peer.messages), t200, invite, gw_trunk, measured, t_hangup, t_player
            finally:
                if player:
                    player.stop()
                if "announcer" in state:
                    state["announcer"].stop()
                if announcer_task is not None:
                    announcer_task.cancel()
                await peer.close()

        connected, messages, t200, invite, gw_trunk, measured, t_hangup, t_player = asyncio.run(run())
        rc = sipp.wait(15)
    except BaseException:
        # what the media looked like when it failed
        t200 = state.get("t200", math.inf)
        save_result(workdir, failed_at=time.time(), t200=state.get("t200"),
                    pa_rtp_before_200=len(ports.rtp("A", before=t200)),
                    pa_rtp_after_200=len(ports.rtp("A", after=t200)),
                    pb_rtp_before_200=len(ports.rtp("B", before=t200)),
                    pb_rtp_after_200=len(ports.rtp("B", after=t200)),
                    pa_sources=sorted({a.src for a in ports.rtp("A")}),
                    pb_sources=sorted({a.src for a in ports.rtp("B")}),
                    player_sent=player.sent if player else None)
        raise
    finally:
        if player:
            player.stop()
        ports.close()

    offered = invite.sdp_media()
    sent183 = [m for m in sipp.sent(status=183)]
    t183 = sent183[0].time if sent183 else None
    a_before = ports.rtp("A", before=t200)
    a_after = ports.rtp("A", after=t200)
    a_after_settle = ports.rtp("A", after=t200 + SETTLE)
    b_before = ports.rtp("B", before=t200)
    b_after = ports.rtp("B", after=t200, before=t_hangup)
    b_silent = ports.rtp("B", after=t200, before=t_player)  # PB not sending yet: SDP B alone
    first_b = b_after[0].t - t200 if b_after else None
    re_keyed = "trunk SDP changed" in gw.log()
    save_result(
        workdir,
        pa=pa, pb=pb, early_ms=EARLY_MS,
        announcement_after_200_s=announcement_after_200,
        announcement_packets_sent=state.get("announcer_sent"),
        t183=t183, t200=t200, t_hangup=t_hangup,
        invite_media=offered, invite_has_pcmu="PCMU/8000" in invite.text,
        gateway_trunk_rtp=gw_trunk,
        gateway_trunk_rtp_is_offered=tuple(gw_trunk) == (offered[0], offered[1]),
        pa_rtp_before_200=len(a_before),
        pa_first_after_183_s=round(a_before[0].t - t183, 3) if a_before and t183 else None,
        pa_rtp_after_200=len(a_after),
        pa_rtp_after_200_plus_settle=len(a_after_settle),
        pa_last_after_200_s=round(a_after[-1].t - t200, 3) if a_after else None,
        pb_rtp_before_200=len(b_before),
        pb_rtp_after_200=len(b_after),
        pb_rtp_after_200_before_player=len(b_silent),
        pb_first_after_200_s=round(first_b, 3) if first_b is not None else None,
        pa_sources=sorted({a.src for a in ports.rtp("A")}),
        pb_sources=sorted({a.src for a in ports.rtp("B")}),
        pa_payload_types=sorted({a.pt for a in ports.rtp("A")}),
        pb_payload_types=sorted({a.pt for a in ports.rtp("B")}),
        pa_payload_rms=round(_payload_rms(a_before), 1),
        pb_payload_rms=round(_payload_rms(b_after), 1),
        rtcp_at_pa1=len(ports.arrivals["A_rtcp"]),
        rtcp_at_pb1=len(ports.arrivals["B_rtcp"]),
        rtcp_at_pa1_after_200_plus_settle=len([a for a in ports.arrivals["A_rtcp"] if a.t > t200 + SETTLE]),
        gateway_logged_trunk_sdp_change=re_keyed,
        sipp_rc=rc,
        connected=connected,
        browser=[{k: v for k, v in m.items() if k != "sdp"} for m in messages],
        **measured,
    )

    assert "PCMU/8000" in invite.text, f"the gateway's INVITE offers no PCMU:\n{invite.text}"
    assert offered[2] == "RTP/AVP" and "a=crypto:" not in invite.text, invite.text
    assert any(m.get("type") == "progress" and m.get("code") == 183 for m in messages), \
        f"the browser got no progress 183: {messages}"
    assert connected["type"] == "connected", connected
    assert str((connected.get("security") or {}).get("trunk", "")).lower().startswith("rtp"), connected

    # early media on A
    assert len(a_before) >= 10, (
        f"only {len(a_before)} RTP packets reached PA {pa} (SDP A of the 183) in the {EARLY_MS} ms "
        f"before the 200: early media did not start on A")
    # the move to B
    assert len(b_before) == 0, f"{len(b_before)} RTP packets reached PB before its SDP was sent"
    assert first_b is not None and first_b <= SETTLE, (
        f"the browser's RTP reached PB {pb} {first_b} s after the 200 (limit {SETTLE} s)")
    assert len(b_silent) >= SILENT_B_PACKETS, (
        f"only {len(b_silent)} RTP packets reached PB after the 200 before PB sent anything")
    assert len(b_after) >= SILENT_B_PACKETS + 100, f"only {len(b_after)} RTP packets reached PB after the 200"
    assert len(a_after) <= PA_AFTER_200_MAX, (
        f"{len(a_after)} RTP packets still reached PA {pa} after the 200 "
        f"({len(a_after_settle)} of them later than {SETTLE} s, the last "
        f"{a_after[-1].t - t200:.2f} s after): the trunk leg did not leave SDP A")
    # the answer's media reaches the browser
    assert measured["browser_loud_frames_after_200"] > 50, measured

    # the end of the call
    assert sipp.received("BYE"), f"no BYE at SIPp ({sipp.msg_path})"
    assert rc == 0, f"SIPp scenario failed (exit {rc}); {sipp.msg_path}, {sipp.err_path}"
