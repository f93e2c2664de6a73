"""Dialogs (RFC 3261 section 12) against real peers: where the gateway sends
its in-dialog requests, and whom it takes them from.

- Requests of an established dialog (the ACK of the 2xx, BYE) go to the
  2xx's Contact through its Record-Route set, not to the trunk's configured
  address. SIPp answers the INVITE with a Contact, and optionally a
  Record-Route, naming UDP sockets of this test (not SIPp): the ACK and the
  browser's hangup (BYE) must arrive there, with the right Request-URI and
  Route headers, and nothing but the INVITE at SIPp.
- A call hears only its trunk: with two trunks configured, a BYE forged
  with the live call's Call-ID, tags and a fresh CSeq, sent from the second
  trunk's address (127.0.0.2: known to the SIP door, so it reaches the
  call), is refused with 403 and the call goes on with audio both ways. The
  same BYE from the call's own trunk address then ends it: only the source
  was wrong.

Artifacts in tests/artifacts/<test name>/: gateway/gateway.log,
sipp/messages.log, trunk/baresip.log, result.json.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
import uuid

import pytest

from conftest import TRUNK_NUMBER, _gateway
from harness import (
    SIPP_DIR,
    BrowserPeer,
    Gateway,
    SippUas,
    TrunkSpec,
    async_wait_until,
    free_port,
    save_result,
    sip_header,
)

pytestmark = pytest.mark.gateway


class UdpSipPeer:
    """A UDP socket of the test on 127.0.0.1 standing for where a dialog
    lives (a Contact, a record-routing proxy): it keeps every SIP request it
    receives and answers BYE (and any other non-ACK request) with 200 OK."""

    def __init__(self, host: str = "127.0.0.1"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.requests: list[tuple[str, tuple]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                data, source = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            text = data.decode(errors="replace")
            if text.startswith("SIP/2.0"):
                continue
            self.requests.append((text, source))
            if not text.startswith("ACK "):
                self.sock.sendto(_response(text, 200, "OK"), source)

    def methods(self) -> list[str]:
        return [t.split(" ", 1)[0] for t, _ in self.requests]

    def request(self, method: str):
        return next((t for t, _ in self.requests if t.startswith(method + " ")), None)

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def _response(request: str, code: int, reason: str) -> bytes:
    """A response to `request` (RFC 3261 8.2.6: Via, From, To, Call-ID, CSeq
    copied; a To tag added when there is none)."""
    head = request.replace("\r\n", "\n").split("\n\n", 1)[0].split("\n")[1:]
    keep = [h for h in head if h.split(":", 1)[0].strip().lower() in ("via", "v", "from", "f", "call-id", "i", "cseq")]
    to = sip_header(request, "To") or ""
    if ";tag=" not in to:
        to += ";tag=peer"
    lines = [f"SIP/2.0 {code} {reason}", *keep, f"To: {to}", "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def _request_uri(text: str) -> str:
    return text.split("\n", 1)[0].split()[1]


def _routes(text: str) -> list[str]:
    head = text.replace("\r\n", "\n").split("\n\n", 1)[0]
    values = re.findall(r"^Route[ \t]*:[ \t]*(.*)$", head, re.M | re.I)
    return [v.strip() for value in values for v in value.split(",")]


# --------------------------------------------------------------------------
# (a) ACK and BYE go where the dialog says


@pytest.fixture
def peers():
    made: list[UdpSipPeer] = []

    def make() -> UdpSipPeer:
        p = UdpSipPeer()
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


@pytest.mark.parametrize("route", ["contact_only", "record_route"])
def test_ack_and_bye_follow_the_contact_and_record_route(workdir, peers, route):
    contact, proxy = peers(), peers()
    scenario = workdir / "uas_answer_elsewhere.xml"
    text = (SIPP_DIR / "uas_answer_elsewhere.xml").read_text()
    if route == "contact_only":
        text = "\n".join(ln for ln in text.split("\n") if "Record-Route:" not in ln)
    scenario.write_text(text)
    # (an absolute scenario path stays as it is under SIPP_DIR / path)
    sipp = SippUas(workdir, str(scenario), keys={"contact_port": contact.port, "rr_port": proxy.port},
                   extra=["-rtp_echo"])
    sipp.start()
    trunk = TrunkSpec("carrier", sipp.uri, callee_stream="decrypted", secure_media="forbidden")
    gw = Gateway(workdir, trunk=trunk)
    gw.start()
    try:
        async def run():
            peer = await BrowserPeer(gw.base_url, gw.login()).connect()
            try:
                connected = await peer.call(TRUNK_NUMBER)
                assert connected["type"] == "connected", connected
                first_hop = proxy if route == "record_route" else contact
                await async_wait_until(lambda: "ACK" in first_hop.methods(), 5,
                                       f"the ACK at 127.0.0.1:{first_hop.port} (got {first_hop.methods()})")
                await peer.hangup()
                await async_wait_until(lambda: "BYE" in first_hop.methods(), 5,
                                       f"the BYE at 127.0.0.1:{first_hop.port} (got {first_hop.methods()})")
                hangup = await peer.next_message({"hangup"}, 5)
                return connected, hangup, first_hop
            finally:
                await peer.close()

        connected, hangup, first_hop = asyncio.run(run())
        sipp.wait(10)
        time.sleep(0.5)  # anything straying to SIPp's port would be in its log by now
        at_sipp = [m.method or m.status for m in sipp.received()]
        other = contact if first_hop is proxy else proxy
        save_result(workdir, route=route, at_first_hop=first_hop.methods(), at_other=other.methods(),
                    at_sipp=at_sipp, hangup=hangup)
        ack, bye = first_hop.request("ACK"), first_hop.request("BYE")
        target = f"sip:1000@127.0.0.1:{contact.port};transport=udp"
        for req in (ack, bye):
            # the Request-URI is the remote target (the Contact) either way
            assert _request_uri(req).lower() == target, req
            want = [f"<sip:127.0.0.1:{proxy.port};lr>"] if route == "record_route" else []
            assert _routes(req) == want, req
        assert sip_header(bye, "Call-ID") == sip_header(ack, "Call-ID")
        assert other.requests == [], f"requests at the wrong socket: {other.methods()}"
        assert at_sipp == ["INVITE"], f"SIPp (the trunk's configured address) got {at_sipp}"
        assert hangup.get("code") == 200, hangup
    finally:
        code = gw.stop()
        sipp.stop()
    assert code == 0, f"gateway did not exit 0 on SIGTERM (exit {code}); log: {gw.log_path}"
    assert "panicked" not in gw.log()


# --------------------------------------------------------------------------
# (b) a forged BYE from another trunk's address


OTHER_TRUNK_IP = "127.0.0.2"


@pytest.fixture
def gateway_two_trunks(workdir, baresip_sdes, monkeypatch):
    """The gateway of gateway_sdes plus a second trunk at 127.0.0.2 (its
    address and inbound_sources): the SIP door serves both addresses."""
    other_port = free_port(socket.SOCK_DGRAM, OTHER_TRUNK_IP)
    orig = Gateway.write_config

    def write_config(self):
        orig(self)
        second = "\n".join([
            "[[trunks]]",
            'name = "other-carrier"',
            f'uri = "sip:{OTHER_TRUNK_IP}:{other_port};transport=udp"',
            'callee_stream = "sdes"',
            f'inbound_sources = ["{OTHER_TRUNK_IP}/32"]',
            "options_interval = 0",
            "",
        ])
        self.config_path.write_text(self.config_path.read_text() + "\n" + second)

    monkeypatch.setattr(Gateway, "write_config", write_config)
    trunk = TrunkSpec("carrier", f"sip:127.0.0.1:{baresip_sdes.sip_port};transport=udp",
                      callee_stream="sdes", secure_media="mandatory")
    yield from _gateway(workdir, trunk)


def _forged_bye(invite_text: str, ok_text: str, gw_port: int, me: str, cseq: int) -> bytes:
    """The trunk's BYE of the dialog the INVITE and its 200 made: the 200's
    To (trunk tag) as From, the INVITE's From (our tag) as To."""
    lines = [
        f"BYE sip:alice@127.0.0.1:{gw_port} SIP/2.0",
        f"Via: SIP/2.0/UDP {me};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport",
        "Max-Forwards: 70",
        f"From: {sip_header(ok_text, 'To')}",
        f"To: {sip_header(invite_text, 'From')}",
        f"Call-ID: {sip_header(invite_text, 'Call-ID')}",
        f"CSeq: {cseq} BYE",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def _send_from(host: str, gw_port: int, make, wait: float = 2.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        s.settimeout(wait)
        me = f"{host}:{s.getsockname()[1]}"
        s.sendto(make(me), ("127.0.0.1", gw_port))
        try:
            return s.recvfrom(65535)[0]
        except socket.timeout:
            return None


@pytest.mark.timeout(120)
def test_forged_bye_from_another_trunk_is_refused(workdir, gateway_two_trunks, baresip_sdes):
    gw, trunk = gateway_two_trunks, baresip_sdes

    async def run():
        peer = await BrowserPeer(gw.base_url, gw.login()).connect()
        try:
            connected = await peer.call(TRUNK_NUMBER)
            assert connected["type"] == "connected", connected
            trunk.wait_established()
            await peer.receive(100, timeout=20)
            invite = trunk.received("INVITE")[0].text
            ok = next(m for m in trunk.sent(status=200) if "INVITE" in (sip_header(m.text, "CSeq") or "")).text

            forged = await asyncio.to_thread(
                _send_from, OTHER_TRUNK_IP, gw.sip_port,
                lambda me: _forged_bye(invite, ok, gw.sip_port, me, 100))
            before = peer.packets_received
            await asyncio.sleep(3)
            after = peer.packets_received
            hangups = [m for m in peer.messages if m.get("type") == "hangup"]
            still_up = not trunk.call_ended() and not trunk.received("BYE")

            # control: the very same BYE from the call's own trunk address
            # ends the call, so the refusal above was for the source alone
            control = await asyncio.to_thread(
                _send_from, "127.0.0.1", gw.sip_port,
                lambda me: _forged_bye(invite, ok, gw.sip_port, me, 100))
            ended = await peer.next_message({"hangup"}, 5)
            return dict(forged_answer=(forged or b"").split(b"\r\n", 1)[0].decode(),
                        packets_during=after - before, hangups_after_forged=hangups, trunk_still_up=still_up,
                        control_answer=(control or b"").split(b"\r\n", 1)[0].decode(), control_hangup=ended)
        finally:
            await peer.close()

    r = asyncio.run(run())
    save_result(workdir, **r)
    assert r["forged_answer"].startswith("SIP/2.0 403"), r
    assert r["hangups_after_forged"] == [], r
    assert r["trunk_still_up"], r
    # ~50 packets/s kept coming from the trunk for the 3 s after the BYE
    assert r["packets_during"] >= 100, r
    assert r["control_answer"].startswith("SIP/2.0 200"), r
    assert r["control_hangup"].get("type") == "hangup", r
    assert "request from outside the call's trunk refused" in gw.log()
