"""Bad SIP input and SIP floods at the gateway's SIP port, during a live call.

An SDES call (aiortc -> gateway -> baresip) is established first; then a
separate socket inside the namespace sends RFC 4475-style torture messages
over UDP and TCP (test_malformed_sip_during_a_call), SIPp floods the port
with new INVITEs (test_sipp_invite_flood_keeps_the_call), or 1100 TCP
connections stall with half a message each while the gateway's fd limit is
lowered to 1024 (test_tcp_connection_flood_during_a_call).
test_healthz_after_sip_tcp_connection_closes needs no call: /healthz must
stay 200 after a SIP TCP peer closes its connection. Each message must get a clear
answer where one can be built (400 naming the problem, 481, 200, 404, ...)
or be dropped in silence (counted: the gateway's debug line "malformed SIP
message dropped", since the endpoint's counters are not in /metrics), and
the live call must not notice: the browser's RTP keeps arriving without a
stall, nobody hangs up, /healthz stays 200.

Silence is decided without sleeping: after each message a valid OPTIONS
("marker") is sent on the same socket; the UDP receive loop handles
datagrams in order and answers parse failures inline, so once the marker's
200 is back, an answer to the message before it would have been too.
Answers that come from a task (404/400/488 for new INVITEs, the live call's 481/488)
are waited for by Via branch.

Artifacts: tests/artifacts/<test>/ (gateway/gateway.log with
webrtc_sip_gateway::sip::transport at debug, trunk/, sipp/, result.json
with every message's outcome and the packet-rate samples).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

from conftest import TRUNK_NUMBER, _gateway
from harness import (
    GWT_HOST,
    SIPP_DIR,
    BrowserPeer,
    Gateway,
    Timeout,
    TrunkSpec,
    free_port,
    read_text,
    save_result,
    sip_header,
    wait_until,
)

pytestmark = pytest.mark.gateway

# The browser receives 50 packets/s (20 ms ptime); a gap longer than this
# without one new packet counts as the call being hurt.
MAX_STALL = 1.0
# the SIP transport's drop/400 lines and the inbound-INVITE refusals (404 /
# "too many refusals in progress") at debug
TRANSPORT_DEBUG = "webrtc_sip_gateway::sip::transport=debug,webrtc_sip_gateway::calls::inbound=debug"
DROPPED_LINE = "malformed SIP message dropped"


# --------------------------------------------------------------------------
# fixtures


@pytest.fixture
def gateway_tcp_sdes(workdir, baresip_sdes, monkeypatch):
    """The gateway with [sip] tcp_listen as well, a trunk toward
    baresip_sdes (UDP), and the SIP transport's debug lines in its log."""
    monkeypatch.setenv("RUST_LOG", f"{os.environ.get('RUST_LOG', 'info')},{TRANSPORT_DEBUG}")
    trunk = TrunkSpec("carrier", f"sip:127.0.0.1:{baresip_sdes.sip_port};transport=udp",
                      callee_stream="sdes", secure_media="mandatory")
    yield from _gateway(workdir, trunk, tcp=True)


# --------------------------------------------------------------------------
# SIP message building and reading


def _id() -> str:
    return os.urandom(6).hex()


def sip_request(method: str, uri: str, headers: list, body: bytes = b"", content_length=True,
                start_line: Optional[str] = None) -> bytes:
    """A request from header (name, value) pairs; Content-Length is appended
    from the body unless content_length is False (or given as a header)."""
    lines = [start_line if start_line is not None else f"{method} {uri} SIP/2.0"]
    lines += [f"{n}: {v}" if n is not None else v for n, v in headers]
    if content_length is True:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def base_headers(me: str, method: str, branch: str, call_id: str, transport: str = "UDP",
                 from_tag: Optional[str] = None, to: str = "<sip:gw@127.0.0.1>", cseq: int = 1) -> list:
    return [
        ("Via", f"SIP/2.0/{transport} {me};branch={branch};rport"),
        ("Max-Forwards", "70"),
        ("From", f"<sip:torture@127.0.0.1>;tag={from_tag or _id()}"),
        ("To", to),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} {method}"),
    ]


def without(headers: list, name: str) -> list:
    return [(n, v) for n, v in headers if (n or "").lower() != name.lower()]


@dataclass
class Reply:
    first_line: str
    text: str

    @property
    def status(self) -> int:
        parts = self.first_line.split(" ", 2)
        return int(parts[1]) if len(parts) > 1 and parts[0] == "SIP/2.0" and parts[1].isdigit() else 0

    @property
    def reason(self) -> str:
        parts = self.first_line.split(" ", 2)
        return parts[2] if len(parts) > 2 else ""

    @property
    def branch(self) -> str:
        m = re.search(r"branch=([^;\s,]+)", sip_header(self.text, "Via") or "")
        return m.group(1) if m else ""


def parse_reply(data: bytes) -> Reply:
    text = data.decode("latin-1")
    return Reply(text.split("\r\n", 1)[0].strip(), text)


SDP_OK = (b"v=0\r\no=- 1 1 IN IP4 10.99.0.1\r\ns=-\r\nc=IN IP4 10.99.0.1\r\n"
          b"t=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
# the gateway's one account (harness.Gateway's default)
ACCOUNT = "alice"

SDP_BAD = (b"v=0\r\no=- 1 1 IN IP4 10.99.0.1\r\ns=-\r\nc=IN IP4 not-an-address\r\n"
           b"t=0 0\r\nm=audio seventy RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:!!!\r\n")


@dataclass
class Case:
    name: str
    data: bytes
    # None: silence expected (dropped, and counted as such); else the set of
    # acceptable status codes
    expect: Optional[set]
    reason_has: Optional[str] = None  # the reason phrase must name this
    branch: Optional[str] = None      # the branch to match the answer by
    counted_drop: bool = True         # for silence: the "dropped" debug line must appear
    ack: bool = False                 # ACK a final non-2xx answer (INVITE)
    # outcome
    got: Optional[Reply] = None
    dropped_lines: int = 0
    packets_at: int = 0
    ok: bool = False
    problem: str = ""
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"expect": [x if x else "silence" for x in sorted(self.expect, key=lambda x: x or 0)] if self.expect else "silence",
                "got": self.got.first_line if self.got else "silence",
                "dropped_lines": self.dropped_lines, "ok": self.ok, "problem": self.problem,
                "browser_packets": self.packets_at, **self.extra}


def torture_cases(me: str, gw_uri: str, live: dict) -> list[Case]:
    """The battery. `me` is host:port of the sending socket; `live` holds
    the live call's Call-ID, tags and the gateway's Contact URI."""
    cases: list[Case] = []

    def add(name, method, mutate=None, body=b"", expect=None, reason_has=None, content_length=True,
            start_line=None, **kw):
        branch = f"z9hG4bK-{name}-{_id()}"
        h = base_headers(me, method, branch, f"{name}-{_id()}@torture")
        if mutate:
            h = mutate(h)
        data = sip_request(method, gw_uri, h, body, content_length, start_line)
        cases.append(Case(name, data, expect, reason_has, branch, **kw))

    body = b"v=0\r\n"
    add("content_length_too_big", "OPTIONS", lambda h: h + [("Content-Length", "500")], body,
        {400}, "Content-Length", content_length=False)
    add("content_length_negative", "OPTIONS", lambda h: h + [("Content-Length", "-5")], body,
        {400}, "Content-Length", content_length=False)
    add("content_length_not_a_number", "OPTIONS", lambda h: h + [("Content-Length", "abc")], body,
        {400}, "Content-Length", content_length=False)
    add("content_length_twice_differing", "OPTIONS",
        lambda h: h + [("Content-Length", "5"), ("Content-Length", "0")], body,
        {400}, "Content-Length", content_length=False)
    add("missing_call_id", "OPTIONS", lambda h: without(h, "Call-ID"), expect={400}, reason_has="Call-ID")
    add("missing_cseq", "OPTIONS", lambda h: without(h, "CSeq"), expect={400}, reason_has="CSeq")
    add("missing_from", "OPTIONS", lambda h: without(h, "From"), expect={400}, reason_has="From")
    add("missing_to", "OPTIONS", lambda h: without(h, "To"), expect={400}, reason_has="To")
    add("cseq_method_mismatch", "OPTIONS",
        lambda h: [(n, "1 INVITE" if n == "CSeq" else v) for n, v in h], expect={400}, reason_has="CSeq")
    add("cseq_not_a_number", "OPTIONS",
        lambda h: [(n, "one OPTIONS" if n == "CSeq" else v) for n, v in h], expect={400}, reason_has="CSeq")
    add("call_id_twice", "OPTIONS", lambda h: h + [("Call-ID", "second@torture")],
        expect={400}, reason_has="Call-ID")
    # no Via: nowhere to send an answer (RFC 3261 18.2.2)
    add("missing_via", "OPTIONS", lambda h: without(h, "Via"), expect=None)
    # a header line without a colon: the request is otherwise complete
    add("header_without_colon", "OPTIONS", lambda h: h + [(None, "This line has no colon")],
        expect={400})
    # NUL bytes inside a header the gateway does not use (not TEXT-UTF8, RFC
    # 3261 25.1): refusing (400) or ignoring it (200) are both clear
    add("nul_in_unused_header", "OPTIONS", lambda h: h + [("Subject", "nul\x00\x00here")], expect={200, 400})
    # NUL bytes inside the Call-ID (not a `word`, RFC 3261 25.1): 400
    add("nul_in_call_id", "OPTIONS",
        lambda h: [(n, "nul\x00in\x00callid@torture" if n == "Call-ID" else v) for n, v in h],
        expect={400}, reason_has="Call-ID")
    # NUL bytes in a body whose Content-Length is right: a valid message
    add("nul_in_body", "OPTIONS", lambda h: h + [("Content-Type", "application/octet-stream")],
        b"\x00" * 64, expect={200})
    # an unknown method, CSeq agreeing: RFC 3261 8.2.1 / 21.5.2 -> 501 (or 405)
    add("unknown_method", "FROBNICATE", expect={405, 501})
    # RFC 4475 3.1.2.16 (badvers): unknown SIP version -> 505 (or 400)
    add("bad_sip_version", "OPTIONS", start_line=f"OPTIONS {gw_uri} SIP/7.0", expect={400, 505})
    # a request line that is not one; answering would need to guess: 400 or silence
    add("invalid_request_line", "OPTIONS", start_line="OPTIONS-sip:nowhere-SIP/2.0 extra words here",
        expect={400, None})

    cases.append(Case("garbage_bytes", bytes(range(256)) * 4 + os.urandom(512), None))
    cases.append(Case("nul_bytes_only", b"\x00" * 1024, None))
    cases.append(Case("binary_stun_like", b"\x00\x01\x00\x00\x21\x12\xa4\x42" + os.urandom(12), None))
    # a response for no known call: nothing to answer, not "malformed" either
    cases.append(Case("stray_response", sip_request("", "", base_headers(me, "OPTIONS", f"z9hG4bK{_id()}",
                                                                        f"stray-{_id()}@torture"),
                                                    start_line="SIP/2.0 200 OK"), None, counted_drop=False))

    # the largest UDP datagram IPv4 carries (65507 bytes), a valid OPTIONS with
    # one huge header: under the gateway's 64 KiB limit, so it must be answered
    branch = f"z9hG4bK-huge-{_id()}"
    h = base_headers(me, "OPTIONS", branch, f"huge-{_id()}@torture")
    probe = sip_request("OPTIONS", gw_uri, h + [("X-Padding", "")])
    pad = 65507 - len(probe)
    data = sip_request("OPTIONS", gw_uri, h + [("X-Padding", "x" * pad)])
    assert len(data) == 65507, len(data)
    cases.append(Case("datagram_65507_bytes", data, {200, 400, 513}, branch=branch))

    # a BYE for the live call with wrong tags: 481, and the call goes on
    branch = f"z9hG4bK-byewrongtags-{_id()}"
    h = base_headers(me, "BYE", branch, live["call_id"], from_tag=f"wrong{_id()}",
                     to=f"<sip:gw@127.0.0.1>;tag=wrong{_id()}", cseq=4242)
    cases.append(Case("bye_live_call_id_wrong_tags", sip_request("BYE", live["contact"], h), {481},
                      branch=branch))
    # same Call-ID, no To tag at all (not in the dialog): 481
    branch = f"z9hG4bK-byenototag-{_id()}"
    h = base_headers(me, "BYE", branch, live["call_id"], from_tag=live["trunk_tag"], cseq=4243)
    cases.append(Case("bye_live_call_id_no_to_tag", sip_request("BYE", live["contact"], h), {481},
                      branch=branch))
    # a new INVITE for a user that is no account -> 404
    branch = f"z9hG4bK-invitenouser-{_id()}"
    h = base_headers(me, "INVITE", branch, f"invite-{_id()}@torture", to=f"<sip:{TRUNK_NUMBER}@127.0.0.1>")
    h += [("Contact", f"<sip:torture@{me}>"), ("Content-Type", "application/sdp")]
    cases.append(Case("new_invite_unknown_user", sip_request("INVITE", gw_uri, h, SDP_OK), {404},
                      branch=branch, ack=True))
    # a new INVITE for the account (which has a live session) with a
    # nonsense SDP: refused (400 for SDP that does not parse, 488 for one
    # that cannot be used) before any session rings
    branch = f"z9hG4bK-invitebadsdp-{_id()}"
    alice_uri = gw_uri.replace("sip:gw@", f"sip:{ACCOUNT}@")
    h = base_headers(me, "INVITE", branch, f"invite-{_id()}@torture", to=f"<{alice_uri}>")
    h += [("Contact", f"<sip:torture@{me}>"), ("Content-Type", "application/sdp")]
    cases.append(Case("new_invite_bad_sdp", sip_request("INVITE", alice_uri, h, SDP_BAD), {400, 488},
                      branch=branch, ack=True))
    # a re-INVITE inside the live dialog (the trunk's tags) with a nonsense
    # SDP: refused (488) without ending the call (RFC 3261 14.2)
    branch = f"z9hG4bK-reinvitebadsdp-{_id()}"
    h = [("Via", f"SIP/2.0/UDP {me};branch={branch};rport"), ("Max-Forwards", "70"),
         ("From", live["trunk_side"]), ("To", live["gateway_side"]), ("Call-ID", live["call_id"]),
         ("CSeq", "9000 INVITE"), ("Contact", f"<sip:torture@{me}>"), ("Content-Type", "application/sdp")]
    cases.append(Case("reinvite_live_dialog_bad_sdp", sip_request("INVITE", live["contact"], h, SDP_BAD),
                      {488}, branch=branch, ack=True))
    # and a valid OPTIONS: 200 with Allow
    add("valid_options", "OPTIONS", expect={200})
    return cases


class UdpProbe:
    """One UDP socket in the namespace talking to the gateway's SIP port."""

    def __init__(self, gw_port: int):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.me = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.dest = ("127.0.0.1", gw_port)
        self.uri = f"sip:gw@127.0.0.1:{gw_port}"
        self.backlog: list[Reply] = []  # read but not yet claimed

    def close(self):
        self.sock.close()

    def send(self, data: bytes):
        self.sock.sendto(data, self.dest)

    def _read(self, deadline: float) -> Optional[Reply]:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        self.sock.settimeout(left)
        try:
            data, _ = self.sock.recvfrom(70000)
        except socket.timeout:
            return None
        return parse_reply(data)

    def wait_branch(self, branch: str, timeout: float, final: bool = True) -> Optional[Reply]:
        """The first (final, if asked) answer whose top Via has this branch."""
        deadline = time.monotonic() + timeout
        while True:
            for r in self.backlog:
                if r.branch == branch and (not final or r.status >= 200):
                    self.backlog.remove(r)
                    return r
            r = self._read(deadline)
            if r is None:
                return None
            self.backlog.append(r)

    def marker(self, timeout: float = 5.0) -> Reply:
        branch = f"z9hG4bK-marker-{_id()}"
        self.send(sip_request("OPTIONS", self.uri,
                              base_headers(self.me, "OPTIONS", branch, f"marker-{_id()}@torture")))
        r = self.wait_branch(branch, timeout)
        if r is None:
            raise Timeout(f"no answer to the marker OPTIONS within {timeout}s")
        assert r.status == 200, r.first_line
        return r

    def ack(self, invite: bytes, answer: Reply):
        """RFC 3261 17.1.1.3 ACK for a non-2xx final answer to `invite`."""
        text = invite.decode("latin-1")
        head = text.split("\r\n\r\n", 1)[0].split("\r\n")
        uri = head[0].split(" ")[1]
        cseq = sip_header(text, "CSeq").split()[0]
        h = [("Via", sip_header(text, "Via")), ("Max-Forwards", "70"), ("From", sip_header(text, "From")),
             ("To", sip_header(answer.text, "To")), ("Call-ID", sip_header(text, "Call-ID")),
             ("CSeq", f"{cseq} ACK")]
        self.send(sip_request("ACK", uri, h))


def dropped_lines(gw: Gateway) -> int:
    return gw.log().count(DROPPED_LINE)


def judge(case: Case):
    got = case.got
    if case.expect is None or None in case.expect:
        if got is None:
            if case.counted_drop and case.dropped_lines < 1:
                case.problem = "silent, but no 'malformed SIP message dropped' line was logged"
                return
            case.ok = True
            return
        if case.expect is None:
            case.problem = f"expected silence, got {got.first_line!r}"
            return
    if got is None:
        case.problem = f"no answer (expected {sorted(x for x in case.expect if x)})"
        return
    if got.status not in case.expect:
        case.problem = f"got {got.first_line!r}, expected {sorted(x for x in case.expect if x)}"
        return
    if case.reason_has and case.reason_has.lower() not in got.reason.lower():
        case.problem = f"reason phrase {got.reason!r} does not name {case.reason_has!r}"
        return
    if got.status == 200 and "OPTIONS" in (sip_header(got.text, "CSeq") or "") and not sip_header(got.text, "Allow"):
        case.problem = "200 to OPTIONS without Allow"
        return
    case.ok = True


def run_udp_battery(gw: Gateway, probe: UdpProbe, cases: list[Case], peer: BrowserPeer,
                    health: list) -> None:
    """Runs in a worker thread (the asyncio loop keeps receiving media)."""
    for case in cases:
        before = dropped_lines(gw)
        probe.send(case.data)
        probe.marker()
        answerable = case.expect is not None and (case.expect - {None})
        if case.branch:
            # answers from tasks (404/400/488, the call's 481/488) may follow the marker's
            case.got = probe.wait_branch(case.branch, 3.0 if answerable else 0.0)
        if case.got is None and not case.branch:
            # no Via of ours: anything that is not claimed by a branch is its answer
            stray = [r for r in probe.backlog if not r.branch.startswith("z9hG4bK-")]
            if stray:
                case.got = stray[0]
                probe.backlog.remove(stray[0])
        if case.got is None:
            try:
                case.dropped_lines = wait_until(lambda: dropped_lines(gw) - before, 2.0, "drop line") \
                    if case.counted_drop else dropped_lines(gw) - before
            except Timeout:
                case.dropped_lines = 0
        if case.ack and case.got is not None and case.got.status >= 300:
            probe.ack(case.data, case.got)
        case.packets_at = peer.packets_received
        status, _ = gw.http("GET", "/healthz", timeout=5)
        health.append((case.name, status))
        judge(case)


# --------------------------------------------------------------------------
# TCP: a stalled message on one connection must not block the others


def tcp_read_reply(s: socket.socket, timeout: float) -> Optional[Reply]:
    """One framed SIP message from a TCP socket, or None on timeout/close."""
    s.settimeout(timeout)
    buf = b""
    deadline = time.monotonic() + timeout
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            m = re.search(rb"^(?:Content-Length|l)[ \t]*:[ \t]*(\d+)", buf[:end], re.M | re.I)
            total = end + 4 + (int(m.group(1)) if m else 0)
            if len(buf) >= total:
                return parse_reply(buf[:total])
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            return None
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        buf += chunk


def tcp_closed_by_peer(s: socket.socket, timeout: float) -> bool:
    s.settimeout(timeout)
    try:
        return s.recv(65536) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def run_tcp_checks(gw: Gateway, peer: BrowserPeer) -> dict:
    port = gw.sip_tcp_port
    uri = f"sip:gw@127.0.0.1:{port};transport=tcp"
    out: dict = {}

    def conn():
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        return s, "127.0.0.1:%d" % s.getsockname()[1]

    def options(me, **kw):
        branch = f"z9hG4bK-tcp-{_id()}"
        return branch, sip_request("OPTIONS", uri, base_headers(me, "OPTIONS", branch, f"tcp-{_id()}@torture",
                                                              transport="TCP"), **kw)

    # A: Content-Length promises 5000 bytes, 5 come, then silence
    a, a_me = conn()
    branch = f"z9hG4bK-tcpstall-{_id()}"
    stalled = sip_request("OPTIONS", uri, base_headers(a_me, "OPTIONS", branch, f"stall-{_id()}@torture",
                                                      transport="TCP") + [("Content-Length", "5000")],
                          b"v=0\r\n", content_length=False)
    a.sendall(stalled)
    # B, C, D: other connections, answered while A stalls
    results = {}
    for name, make in [("valid_options", lambda me: options(me)),
                       ("missing_call_id", lambda me: (lambda br: (br, sip_request(
                           "OPTIONS", uri, without(base_headers(me, "OPTIONS", br, "x", transport="TCP"),
                                                   "Call-ID"))))(f"z9hG4bK-tcpnocid-{_id()}")),
                       ("content_length_too_big_then_close", None)]:
        if make is None:
            continue
        s, me = conn()
        br, data = make(me)
        t0 = time.monotonic()
        s.sendall(data)
        r = tcp_read_reply(s, 5.0)
        results[name] = {"got": r.first_line if r else None, "ms": round((time.monotonic() - t0) * 1000, 1),
                         "branch_ok": bool(r and r.branch == br)}
        s.close()
    out["while_a_stalls"] = results
    # A itself got nothing (it is still waiting for 4995 bytes)
    out["stalled_conn_answer"] = (lambda r: r.first_line if r else None)(tcp_read_reply(a, 0.3))
    # E: 70 KB message over TCP: above the 64 KiB limit -> closed (or 513)
    e, e_me = conn()
    branch = f"z9hG4bK-tcphuge-{_id()}"
    huge = sip_request("OPTIONS", uri, base_headers(e_me, "OPTIONS", branch, f"huge-{_id()}@torture",
                                                    transport="TCP"), b"x" * 70000)
    try:
        e.sendall(huge)
    except (BrokenPipeError, ConnectionResetError):
        pass
    r = tcp_read_reply(e, 5.0)
    out["huge_70kb"] = {"got": r.first_line if r else None,
                        "closed": True if r is None else tcp_closed_by_peer(e, 5.0)}
    e.close()
    # F: a fresh connection after all that: still answered
    f, f_me = conn()
    br, data = options(f_me)
    f.sendall(data)
    r = tcp_read_reply(f, 5.0)
    out["after_huge_valid_options"] = r.first_line if r else None
    # A finally closes; the endpoint must stay healthy once its tasks end
    a.close()
    wait_until(lambda: f"SIP TCP connection closed peer={a_me}" in gw.log(), 5,
               f"the gateway logging that the stalled connection {a_me} closed")
    out["healthz_after_tcp_closes"] = gw.http("GET", "/healthz", timeout=5)[0]
    f.close()
    out["browser_packets"] = peer.packets_received
    return out


# --------------------------------------------------------------------------
# the live call


class PacketSampler:
    """Samples the browser's received-packet count every 50 ms."""

    def __init__(self, peer: BrowserPeer):
        self.peer = peer
        self.samples: list[tuple[float, int]] = []
        self.task: Optional[asyncio.Task] = None

    def start(self):
        async def run():
            while True:
                self.samples.append((time.monotonic(), self.peer.packets_received))
                await asyncio.sleep(0.05)  # sampling period, not synchronisation
        self.task = asyncio.ensure_future(run())
        return self

    async def stop(self):
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass

    def longest_stall(self, t0: float, t1: float) -> float:
        """The longest time within [t0, t1] without the count rising."""
        last_change = t0
        prev = None
        worst = 0.0
        for t, n in self.samples:
            if prev is not None and n > prev:
                if t >= t0:
                    worst = max(worst, min(t, t1) - last_change)
                    last_change = max(t, t0)
            prev = n
        return max(worst, t1 - last_change)

    def count_at(self, t: float) -> int:
        best = 0
        for ts, n in self.samples:
            if ts <= t:
                best = n
        return best


def live_dialog(trunk) -> dict:
    """Call-ID, tags and the gateway's Contact of the live call, as baresip saw them."""
    invite = trunk.received("INVITE")[0]
    ok = [m for m in trunk.sent(status=200) if "INVITE" in (sip_header(m.text, "CSeq") or "")][0]
    contact = re.search(r"<([^>]+)>", sip_header(invite.text, "Contact") or "")
    to = sip_header(ok.text, "To")
    tag = re.search(r";\s*tag=([^;\s>]+)", to)
    return {"call_id": sip_header(invite.text, "Call-ID"), "gateway_side": sip_header(invite.text, "From"),
            "trunk_side": to, "trunk_tag": tag.group(1) if tag else "",
            "contact": contact.group(1) if contact else invite.first_line.split()[1]}


async def _start_call(gw: Gateway, trunk) -> BrowserPeer:
    peer = await BrowserPeer(gw.base_url, gw.login()).connect()
    connected = await peer.call(TRUNK_NUMBER)
    assert connected["type"] == "connected", f"expected connected, got {connected}"
    await asyncio.to_thread(trunk.wait_established)
    await peer.receive(100, timeout=20)
    return peer


def _hangups(peer: BrowserPeer) -> list:
    return [m for m in peer.messages if m.get("type") in ("hangup", "error", "_closed")]


async def _end_call(peer: BrowserPeer, trunk):
    await peer.hangup()
    await asyncio.to_thread(trunk.wait_bye)


# --------------------------------------------------------------------------
# 1. torture messages


def test_malformed_sip_during_a_call(workdir, gateway_tcp_sdes, baresip_sdes):
    """During an SDES call: ~30 torture messages over UDP, each answered
    clearly (400 naming the problem, 481, 404, 488, 200) or dropped and
    counted; then over TCP a message whose Content-Length promises more than
    is sent stalls its own connection only. The browser's RTP never stalls
    for more than MAX_STALL, nobody hangs up, /healthz stays 200."""
    gw, trunk = gateway_tcp_sdes, baresip_sdes

    async def run():
        peer = await _start_call(gw, trunk)
        sampler = PacketSampler(peer).start()
        probe = UdpProbe(gw.sip_port)
        try:
            live = live_dialog(trunk)
            cases = torture_cases(probe.me, probe.uri, live)
            health: list = []
            t0, n0 = time.monotonic(), peer.packets_received
            await asyncio.to_thread(run_udp_battery, gw, probe, cases, peer, health)
            t1, n1 = time.monotonic(), peer.packets_received
            tcp = await asyncio.to_thread(run_tcp_checks, gw, peer)
            t2, n2 = time.monotonic(), peer.packets_received
            # after the battery: the call still carries audio
            after_from = peer.packets_received
            await peer.receive(after_from + 100, timeout=10)
            t3 = time.monotonic()
            hangups_before_ours = _hangups(peer)
            trunk_ended_early = trunk.call_ended()
            trunk_byes_early = len(trunk.received("BYE"))
            health_end = gw.http("GET", "/healthz", timeout=5)[0]
            await sampler.stop()
            await _end_call(peer, trunk)
            return dict(cases=cases, health=health, tcp=tcp, live=live, sampler=sampler,
                        windows=(t0, t1, t2, t3), counts=(n0, n1, n2), after_from=after_from, after_to=peer.packets_received,
                        hangups=hangups_before_ours, trunk_ended_early=trunk_ended_early,
                        trunk_byes_early=trunk_byes_early, health_end=health_end)
        finally:
            probe.close()
            await sampler.stop()
            await peer.close()

    r = asyncio.run(run())
    cases: list[Case] = r["cases"]
    s: PacketSampler = r["sampler"]
    t0, t1, t2, t3 = r["windows"]
    n0, n1, n2 = r["counts"]
    stall_udp, stall_tcp, stall_after = s.longest_stall(t0, t1), s.longest_stall(t1, t2), s.longest_stall(t2, t3)
    rate = lambda na, nb, a, b: round((nb - na) / max(b - a, 1e-6), 1)  # noqa: E731
    tx, rx = trunk.wait_rtp_stats()
    save_result(workdir,
                cases={c.name: c.summary() for c in cases},
                tcp=r["tcp"], health=r["health"], health_end=r["health_end"], live_dialog=r["live"],
                battery_seconds=round(t1 - t0, 2), tcp_seconds=round(t2 - t1, 2),
                browser_pps={"udp_battery": rate(n0, n1, t0, t1), "tcp_checks": rate(n1, n2, t1, t2),
                             "after": rate(n2, r["after_to"], t2, t3)},
                longest_stall_s={"udp_battery": round(stall_udp, 3), "tcp_checks": round(stall_tcp, 3),
                                 "after": round(stall_after, 3)},
                browser_packets={"start": n0, "after_udp": n1, "after_tcp": n2,
                                 "end": r["after_to"]},
                trunk_tx=tx, trunk_rx=rx)

    failures = [f"{c.name}: {c.problem}" for c in cases if not c.ok]
    tcp = r["tcp"]
    if tcp["while_a_stalls"]["valid_options"]["got"] is None or \
            not tcp["while_a_stalls"]["valid_options"]["got"].startswith("SIP/2.0 200"):
        failures.append(f"tcp: OPTIONS on another connection while one stalls: {tcp['while_a_stalls']}")
    got = tcp["while_a_stalls"]["missing_call_id"]["got"] or ""
    if not (got.startswith("SIP/2.0 400") and "call-id" in got.lower()):
        failures.append(f"tcp: missing Call-ID on another connection: {got!r}")
    if tcp["stalled_conn_answer"] is not None:
        failures.append(f"tcp: the stalled message was answered before its body came: {tcp['stalled_conn_answer']}")
    huge = tcp["huge_70kb"]
    if not (huge["closed"] or (huge["got"] or "").startswith(("SIP/2.0 513", "SIP/2.0 400"))):
        failures.append(f"tcp: 70 KB message neither refused nor its connection closed: {huge}")
    if not (tcp["after_huge_valid_options"] or "").startswith("SIP/2.0 200"):
        failures.append(f"tcp: OPTIONS after the 70 KB message: {tcp['after_huge_valid_options']!r}")
    if tcp["healthz_after_tcp_closes"] != 200:
        failures.append(f"tcp: /healthz answered {tcp['healthz_after_tcp_closes']} once SIP TCP connections "
                        f"had closed (gateway log: {gw.log_path})")
    bad_health = [h for h in r["health"] if h[1] != 200]
    if bad_health or r["health_end"] != 200:
        failures.append(f"/healthz not 200: {bad_health} end={r['health_end']}")
    if r["hangups"] or r["trunk_ended_early"] or r["trunk_byes_early"]:
        failures.append(f"the live call was hung up: browser {r['hangups']}, trunk ended {r['trunk_ended_early']}, "
                        f"BYEs at trunk {r['trunk_byes_early']}")
    for what, stall in (("UDP battery", stall_udp), ("TCP checks", stall_tcp), ("after", stall_after)):
        if stall > MAX_STALL:
            failures.append(f"browser RTP stalled {stall:.2f}s during {what}")
    if n1 <= n0 or n2 <= n1 or r["after_to"] < r["after_from"] + 100:
        failures.append("browser packet count did not keep rising")
    if rx < 100:
        failures.append(f"baresip received only {rx} RTP packets")
    assert not failures, "\n".join(failures) + f"\n(details: {workdir / 'result.json'}, {gw.log_path})"


# --------------------------------------------------------------------------
# 2. SIPp INVITE flood


def slowest_bucket(row: dict) -> str:
    """The slowest non-empty bucket of SIPp's INVITE->404 response-time
    repartition ("<10" ms, ..., ">=1000")."""
    def bound(k):
        m = re.search(r"(\d+)$", k)
        return (1 if ">" in k else 0, int(m.group(1)) if m else 0)
    full = [k for k, v in row.items() if k.startswith("ResponseTimeRepartition1_") and v not in ("", "0")]
    return max(full, key=bound).split("_", 1)[1] + " ms" if full else ""


def run_sipp_flood(workdir: Path, gw: Gateway, rate: int, calls: int, name: str, trace_msg: bool = False) -> dict:
    d = workdir / name
    d.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = ["sipp", "127.0.0.1:%d" % gw.sip_port, "-sf", str(SIPP_DIR / "uac_expect_404.xml"),
           "-s", TRUNK_NUMBER, "-t", "u1", "-i", "127.0.0.1", "-p", str(port),
           "-mi", GWT_HOST, "-mp", str(free_port(socket.SOCK_DGRAM, GWT_HOST)),
           "-r", str(rate), "-rp", "1000", "-m", str(calls), "-l", str(max(rate * 20, 100)),
           "-timeout", f"{int(calls / rate) + 45}s", "-timeout_error", "-nostdin", "-max_recv_loops", "10000",
           "-trace_stat", "-stf", str(d / "stat.csv"), "-fd", "1",
           "-trace_err", "-error_file", str(d / "errors.log"),
           "-trace_screen", "-screen_file", str(d / "screen.log"),
           "-trace_counts"]
    if trace_msg:
        cmd += ["-trace_msg", "-message_file", str(d / "messages.log")]
    (d / "command").write_text(" ".join(cmd) + "\n")
    t0 = time.monotonic()
    with open(d / "sipp.out", "wb") as out:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                              cwd=d, timeout=calls / rate + 90)
    elapsed = time.monotonic() - t0
    stat = read_text(d / "stat.csv").strip().splitlines()
    row = {}
    if len(stat) >= 2:
        head, last = stat[0].split(";"), stat[-1].split(";")
        row = dict(zip(head, last))

    def num(key):
        try:
            return int(row.get(key, "0") or 0)
        except ValueError:
            return -1

    return {"rate": rate, "calls": calls, "rc": proc.returncode, "seconds": round(elapsed, 2),
            "successful": num("SuccessfulCall(C)"), "failed": num("FailedCall(C)"),
            "created": num("TotalCallCreated"), "retransmissions": num("Retransmissions(C)"),
            "failed_timeout": num("FailedMaxUDPRetrans(C)") + num("FailedCallTimeout(C)") if row else -1,
            "failed_unexpected": num("FailedUnexpectedMessage(C)"),
            "dead_call_msgs": num("DeadCallMsgs(C)"),
            "out_of_call_msgs": num("OutOfCallMsgs(C)"),
            # INVITE -> 404, SIPp's cumulative average (hh:mm:ss:uuuuuu)
            "invite_to_404_avg": row.get("ResponseTime1(C)", ""),
            "invite_to_404_slowest_bucket": slowest_bucket(row),
            "dir": str(d)}


# recorded, not asserted: after the call, floods of 5 s at rising rates, up
# to the first one with a lost call, to report the rate sustained without loss
RATE_LADDER = (100, 200, 500, 1000)
IGNORED_LINE = "too many refusals in progress: INVITE answered 503"


@pytest.mark.parametrize("rate,calls", [(50, 500)])
def test_sipp_invite_flood_keeps_the_call(workdir, gateway_tcp_sdes, baresip_sdes, rate, calls):
    """During an SDES call SIPp sends `calls` new INVITEs at `rate`/s to the
    gateway's SIP port for a user that is no account (sipp/uac_expect_404.xml:
    INVITE, optional 100/180, 404 expected, ACK). Every one gets its 404 (SIPp: all calls successful,
    none failed, exit 0), the browser's RTP never stalls, nobody hangs up,
    /healthz stays 200. After the call, RATE_LADDER floods (5 s each, up to
    the first rate that loses a call) are recorded in result.json, not
    asserted."""
    gw, trunk = gateway_tcp_sdes, baresip_sdes

    async def run():
        peer = await _start_call(gw, trunk)
        sampler = PacketSampler(peer).start()
        try:
            t0, n0 = time.monotonic(), peer.packets_received
            flood = await asyncio.to_thread(run_sipp_flood, workdir, gw, rate, calls, "sipp", True)
            t1, n1 = time.monotonic(), peer.packets_received
            health_mid = gw.http("GET", "/healthz", timeout=5)[0]
            await peer.receive(n1 + 100, timeout=10)
            t2 = time.monotonic()
            hangups = _hangups(peer)
            trunk_byes = len(trunk.received("BYE"))
            health_end = gw.http("GET", "/healthz", timeout=5)[0]
            await sampler.stop()
            await _end_call(peer, trunk)
            return dict(flood=flood, windows=(t0, t1, t2), counts=(n0, n1), sampler=sampler,
                        hangups=hangups, trunk_byes=trunk_byes, health_mid=health_mid, health_end=health_end)
        finally:
            await sampler.stop()
            await peer.close()

    r = asyncio.run(run())
    s: PacketSampler = r["sampler"]
    t0, t1, t2 = r["windows"]
    main = r["flood"]
    main["gateway_ignored_invites"] = gw.log().count(IGNORED_LINE)
    stall, stall_after = s.longest_stall(t0, t1), s.longest_stall(t1, t2)
    pps = round((r["counts"][1] - r["counts"][0]) / max(t1 - t0, 1e-6), 1)
    # the rate ladder, without a call
    ladder = []
    for step in RATE_LADDER:
        ignored0 = gw.log().count(IGNORED_LINE)
        f = run_sipp_flood(workdir, gw, step, step * 5, f"sipp_{step}")
        f["gateway_ignored_invites"] = gw.log().count(IGNORED_LINE) - ignored0
        ladder.append(f)
        if not (f["rc"] == 0 and f["successful"] == f["calls"]):
            break
    sustained = [f["rate"] for f in [main] + ladder if f["rc"] == 0 and f["successful"] == f["calls"]]
    save_result(workdir, flood=main, ladder=ladder, browser_pps_during_flood=pps,
                longest_stall_s={"flood": round(stall, 3), "after": round(stall_after, 3)},
                health_mid=r["health_mid"], health_end=r["health_end"],
                sustained_without_loss=max(sustained) if sustained else None)
    assert main["rc"] == 0 and main["successful"] == calls and main["failed"] == 0, \
        f"SIPp at {rate}/s: {main} (stat.csv, errors.log, messages.log in {main['dir']}; gateway log {gw.log_path})"
    assert stall <= MAX_STALL and stall_after <= MAX_STALL, \
        f"browser RTP stalled {stall:.2f}s during / {stall_after:.2f}s after the {rate}/s flood"
    assert not r["hangups"] and r["trunk_byes"] == 0, \
        f"the live call was hung up: browser {r['hangups']}, BYEs at trunk {r['trunk_byes']}"
    assert r["health_mid"] == 200 and r["health_end"] == 200, (r["health_mid"], r["health_end"])


# --------------------------------------------------------------------------
# 3. /healthz once a SIP TCP connection has closed


def test_healthz_after_sip_tcp_connection_closes(workdir, monkeypatch):
    """A peer opens a SIP TCP connection to tcp_listen, gets its OPTIONS
    answered and closes it: a normal event, so /healthz must stay 200 (it
    reports the SIP plane down when a receive task has ended). Isolates what
    test_malformed_sip_during_a_call's TCP part found."""
    monkeypatch.setenv("RUST_LOG", f"{os.environ.get('RUST_LOG', 'info')},{TRANSPORT_DEBUG}")
    gw = Gateway(workdir, tcp=True).start()
    try:
        before = gw.http("GET", "/healthz", timeout=5)[0]
        s = socket.create_connection(("127.0.0.1", gw.sip_tcp_port), timeout=5)
        me = "127.0.0.1:%d" % s.getsockname()[1]
        branch = f"z9hG4bK-hz-{_id()}"
        s.sendall(sip_request("OPTIONS", f"sip:gw@127.0.0.1:{gw.sip_tcp_port};transport=tcp",
                              base_headers(me, "OPTIONS", branch, f"hz-{_id()}@torture", transport="TCP")))
        r = tcp_read_reply(s, 5.0)
        during = gw.http("GET", "/healthz", timeout=5)[0]
        s.close()
        wait_until(lambda: f"SIP TCP connection closed peer={me}" in gw.log(), 5,
                   f"the gateway logging that {me} closed ({gw.log_path})")
        after = gw.http("GET", "/healthz", timeout=5)[0]
        # and UDP SIP still works, so "unavailable" would be wrong
        probe = UdpProbe(gw.sip_port)
        try:
            udp_ok = probe.marker().status
        finally:
            probe.close()
        after2 = gw.http("GET", "/healthz", timeout=5)[0]
        save_result(workdir, options=r.first_line if r else None, healthz_before=before, healthz_during=during,
                    healthz_after_close=after, udp_options=udp_ok, healthz_after_udp=after2)
    finally:
        code = gw.stop()
    assert r is not None and r.status == 200, r
    assert (before, during) == (200, 200), (before, during)
    assert after == 200 and after2 == 200, (
        f"/healthz {after} (then {after2}) after one SIP TCP connection closed normally, while SIP over "
        f"UDP still answers ({udp_ok}); gateway log {gw.log_path}")
    assert code == 0 and "panicked" not in gw.log()


# --------------------------------------------------------------------------
# 4. many stalled SIP TCP connections during a call (file descriptors run out)

FLOOD_NOFILE = 1024      # the gateway's fd limit, lowered (prlimit) so the flood is quick
FLOOD_CONNECTIONS = 1100  # more stalled connections than that


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_tcp_connection_flood_during_a_call(workdir, gateway_tcp_sdes, baresip_sdes):
    """During an SDES call, FLOOD_CONNECTIONS TCP connections each send the
    start of a message (Content-Length promising more) and stall, with the
    gateway's fd limit lowered to FLOOD_NOFILE so they exhaust it. The live
    call must not notice (RTP never stalls > MAX_STALL, no hangup), the
    accept loop must not spin on EMFILE (gateway CPU < 30% of a core, fewer
    than 200 "accept failed" lines/s), and once the connections close a new
    SIP TCP connection is answered again. Whether /healthz (HTTPS) answered
    during the flood is recorded."""
    gw, trunk = gateway_tcp_sdes, baresip_sdes
    pid = gw.proc.pid
    subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={FLOOD_NOFILE}:{FLOOD_NOFILE}"], check=True, timeout=10)

    def flood(peer):
        conns = []
        refused = 0
        for _ in range(FLOOD_CONNECTIONS):
            try:
                s = socket.create_connection(("127.0.0.1", gw.sip_tcp_port), timeout=2)
                s.sendall(b"OPTIONS sip:gw@127.0.0.1 SIP/2.0\r\nContent-Length: 5000\r\n\r\nv=0\r\n")
                conns.append(s)
            except OSError:
                refused += 1
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        # measure the gateway for 2 s with all connections open
        lines0 = gw.log().count("SIP TCP accept failed")
        c0, t0 = _cpu_ticks(pid), time.monotonic()
        time.sleep(2.0)  # a measurement window, not synchronisation
        c1, t1 = _cpu_ticks(pid), time.monotonic()
        lines1 = gw.log().count("SIP TCP accept failed")
        try:
            healthz = gw.http("GET", "/healthz", timeout=1)[0]
        except Exception as e:  # noqa: BLE001 - recorded, not asserted
            healthz = f"{type(e).__name__}: {e}"
        probe = UdpProbe(gw.sip_port)
        try:
            udp = probe.marker().status
        except AssertionError as e:
            udp = str(e)
        finally:
            probe.close()
        for s in conns:
            s.close()
        # a new SIP TCP connection is served again
        def served():
            try:
                s = socket.create_connection(("127.0.0.1", gw.sip_tcp_port), timeout=2)
            except OSError:
                return None
            with s:
                me = "127.0.0.1:%d" % s.getsockname()[1]
                s.sendall(sip_request("OPTIONS", f"sip:gw@127.0.0.1:{gw.sip_tcp_port};transport=tcp",
                                      base_headers(me, "OPTIONS", f"z9hG4bK-after-{_id()}", f"a-{_id()}@t",
                                                   transport="TCP")))
                r = tcp_read_reply(s, 2.0)
                return r.first_line if r else None
        try:
            after = wait_until(served, 10, "a new SIP TCP connection answered after the flood")
        except Timeout as e:
            after = str(e)
        return dict(opened=len(conns), refused=refused, gateway_fds=fds,
                    cpu_share=round((c1 - c0) / os.sysconf("SC_CLK_TCK") / (t1 - t0), 3),
                    accept_failed_per_s=round((lines1 - lines0) / (t1 - t0), 1),
                    healthz_during=healthz, udp_options_during=udp, tcp_after=after)

    async def run():
        peer = await _start_call(gw, trunk)
        sampler = PacketSampler(peer).start()
        try:
            t0, n0 = time.monotonic(), peer.packets_received
            out = await asyncio.to_thread(flood, peer)
            t1, n1 = time.monotonic(), peer.packets_received
            await peer.receive(n1 + 100, timeout=10)
            t2 = time.monotonic()
            hangups = _hangups(peer)
            trunk_byes = len(trunk.received("BYE"))
            await sampler.stop()
            await _end_call(peer, trunk)
            return out, sampler, (t0, t1, t2), (n0, n1), hangups, trunk_byes
        finally:
            await sampler.stop()
            await peer.close()

    out, s, (t0, t1, t2), (n0, n1), hangups, trunk_byes = asyncio.run(run())
    stall, stall_after = s.longest_stall(t0, t1), s.longest_stall(t1, t2)
    save_result(workdir, flood=out, longest_stall_s={"flood": round(stall, 3), "after": round(stall_after, 3)},
                browser_pps_during=round((n1 - n0) / (t1 - t0), 1))
    failures = []
    if stall > MAX_STALL or stall_after > MAX_STALL:
        failures.append(f"browser RTP stalled {stall:.2f}s during / {stall_after:.2f}s after the flood")
    if hangups or trunk_byes:
        failures.append(f"the live call was hung up: {hangups}, BYEs at trunk {trunk_byes}")
    if out["cpu_share"] > 0.3:
        failures.append(f"gateway used {out['cpu_share']:.0%} of a core with {out['opened']} stalled "
                        f"connections (accept loop spinning?)")
    if out["accept_failed_per_s"] > 200:
        failures.append(f"{out['accept_failed_per_s']:.0f} 'SIP TCP accept failed' log lines per second")
    if not str(out["tcp_after"]).startswith("SIP/2.0 200"):
        failures.append(f"SIP over TCP not served after the flood: {out['tcp_after']}")
    assert not failures, "\n".join(failures) + f"\n{out}\n(gateway log {gw.log_path})"
