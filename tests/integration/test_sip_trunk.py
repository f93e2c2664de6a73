"""The gateway's SIP behaviour toward the trunk, against SIP peers nobody here
wrote: baresip (auto-answering or ringing trunk, SIP over UDP or TCP) and
SIPp 3.6.1 (Debian sip-tester) running the UAS scenarios in sipp/ (digest
challenges, busy). The browser is the aiortc stand-in of harness.py.

Each test starts its own gateway and peers on free ports and leaves configs,
logs and SIP traces in tests/artifacts/<test name>/: gateway/gateway.log,
trunk/baresip.log (baresip -s trace), sipp/messages.log (SIPp -trace_msg,
timestamped), sipp/actions.log (the scenario's <log> lines), result.json.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time

import pytest

from conftest import TRUNK_NUMBER
from harness import (
    Baresip,
    BrowserPeer,
    Gateway,
    SippUas,
    TrunkSpec,
    async_wait_until,
    digest_expected,
    digest_params,
    save_result,
    sip_header,
    wait_until,
)
from test_calls import _audio_call, _check_media

pytestmark = pytest.mark.gateway

SECRET = "secret"


# --------------------------------------------------------------------------
# fixtures: peers started by the test, stopped (and the gateway's exit
# checked) at teardown


@pytest.fixture
def start_gateway(workdir):
    started: list[Gateway] = []

    def start(trunk: TrunkSpec, **kw) -> Gateway:
        gw = Gateway(workdir, trunk=trunk, **kw)
        started.append(gw)
        return gw.start()

    yield start
    for gw in started:
        code = gw.stop()
        assert code == 0, f"gateway did not exit 0 on SIGTERM (exit {code}); log: {gw.log_path}"
        assert "panicked" not in gw.log(), f"gateway panicked; log: {gw.log_path}"


@pytest.fixture
def start_baresip(workdir, tone_wav):
    started: list[Baresip] = []

    def start(user: str = TRUNK_NUMBER, srtp: bool = True, answer: bool = True) -> Baresip:
        b = Baresip(workdir, tone_wav, user=user, srtp=srtp, name="trunk", answer=answer)
        started.append(b)
        return b.start()

    yield start
    for b in started:
        b.stop()


@pytest.fixture
def start_sipp(workdir):
    started: list[SippUas] = []

    def start(scenario: str, **kw) -> SippUas:
        s = SippUas(workdir, scenario, **kw)
        started.append(s)
        return s.start()

    yield start
    for s in started:
        s.stop()


def sdes_trunk(uri: str) -> TrunkSpec:
    return TrunkSpec("carrier", uri, callee_stream="sdes", secure_media="mandatory")


def plain_trunk(uri: str, **kw) -> TrunkSpec:
    return TrunkSpec("carrier", uri, callee_stream="decrypted", secure_media="forbidden", **kw)


# --------------------------------------------------------------------------
# browser helpers


async def _dial(peer: BrowserPeer, to: str = TRUNK_NUMBER):
    """Sends `call` with a real aiortc offer; returns at once."""
    await peer.make_pc()
    peer._count_rtp()
    await peer.pc.setLocalDescription(await peer.pc.createOffer())
    await peer.send({"type": "call", "id": peer.call_id, "to": to, "sdp": peer.pc.localDescription.sdp})


async def _wait_progress(peer: BrowserPeer, code: int, timeout: float = 15.0) -> dict:
    """Waits for `progress` with this code; fails on hangup/error/close."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await peer.next_message({"progress"}, max(0.1, deadline - time.monotonic()))
        assert msg["type"] == "progress", f"expected progress {code}, got {msg}; all: {peer.messages}"
        if msg.get("code") == code:
            return msg


async def _wait_type(peer: BrowserPeer, kind: str, timeout: float) -> dict:
    """The first message of this type for the call (already received or
    yet to come)."""
    def found():
        return next((m for m in peer.messages if m.get("type") == kind
                     and m.get("id") in (None, peer.call_id)), None)
    return await async_wait_until(found, timeout, f"a {kind!r} message at the browser (got {peer.messages})")


def _abort_socket(peer: BrowserPeer):
    """Drops the WebSocket's TCP connection: no hangup, no close frame, no
    TLS close_notify (a tab killed, a laptop lid shut)."""
    peer.ws.transport.abort()


def _cseq(msg) -> tuple[int, str]:
    n, method = sip_header(msg.text, "CSeq").split()
    return int(n), method


def _branch(msg) -> str:
    m = re.search(r"branch=([^;\s,]+)", sip_header(msg.text, "Via") or "")
    return m.group(1) if m else ""


def _to_tag(msg) -> str:
    m = re.search(r";\s*tag=([^;\s>]+)", sip_header(msg.text, "To") or "")
    return m.group(1) if m else ""


def _check_non2xx_ack(invite, response, ack):
    """RFC 3261 17.1.1.3: the ACK of a non-2xx final response belongs to the
    INVITE transaction: same Request-URI, Call-ID, CSeq number and Via
    branch as the INVITE, the To tag of the response."""
    assert ack.method == "ACK", ack.first_line
    assert ack.first_line.split()[1] == invite.first_line.split()[1], \
        f"ACK Request-URI {ack.first_line} != INVITE's {invite.first_line}"
    assert sip_header(ack.text, "Call-ID") == sip_header(invite.text, "Call-ID")
    assert _cseq(ack) == (_cseq(invite)[0], "ACK"), f"ACK CSeq {_cseq(ack)} for INVITE {_cseq(invite)}"
    assert _branch(ack) == _branch(invite), \
        f"ACK of {response.status} has Via branch {_branch(ack)}, the INVITE had {_branch(invite)}"
    assert _to_tag(ack) == _to_tag(response), \
        f"ACK To tag {_to_tag(ack)!r} != the {response.status}'s {_to_tag(response)!r}"


# --------------------------------------------------------------------------
# 1. SIP over TCP


async def _audio_call_trunk_hangs_up(gw, trunk):
    """As test_calls._audio_call, but baresip ends the call (ctrl_tcp
    hangup: its BYE goes to the gateway); returns (connected, result,
    the browser's hangup message)."""
    peer = await BrowserPeer(gw.base_url, gw.login()).connect()
    try:
        connected = await peer.call(TRUNK_NUMBER)
        assert connected["type"] == "connected", f"expected connected, got {connected}"
        trunk.wait_established()
        await peer.receive(150, timeout=20)
        trunk.wait_heard_seconds(2.0, timeout=20)
        received, sent = await peer.stats()
        result = {"received": received, "counted": peer.packets_received, "sent": sent,
                  "rms": peer.sink.rms, "ssrcs": dict(peer.rtp_by_ssrc)}
        assert trunk.command("hangup")["ok"]
        hangup = await _wait_type(peer, "hangup", 10)
    finally:
        await peer.close()
    return connected, result, hangup


@pytest.mark.parametrize("hangup_by", ["browser", "trunk"])
def test_tcp_trunk(workdir, hangup_by, start_baresip, start_gateway):
    """The trunk is reached over SIP/TCP (trunk uri ;transport=tcp, [sip]
    tcp_listen): every SIP message between the gateway and baresip goes over
    TCP, none over UDP; SDES-SRTP audio crosses both ways. hangup_by
    browser: the gateway's BYE goes over TCP. hangup_by trunk: baresip's BYE
    reaches the gateway over TCP, is answered 200 over TCP, and the browser
    gets `hangup`."""
    trunk = start_baresip(srtp=True)
    gw = start_gateway(sdes_trunk(f"sip:127.0.0.1:{trunk.sip_port};transport=tcp"), tcp=True)

    if hangup_by == "browser":
        connected, result = asyncio.run(_audio_call(gw, trunk))
        bye_methods = ("INVITE", "ACK", "BYE")
    else:
        connected, result, hangup = asyncio.run(_audio_call_trunk_hangs_up(gw, trunk))
        save_result(workdir, browser_hangup=hangup)
        bye_methods = ("INVITE", "ACK")
        # baresip opens a new TCP connection (ephemeral source port) to the
        # gateway's Contact for its BYE, so look at every traced message
        gw_tcp = f"127.0.0.1:{gw.sip_tcp_port}"
        byes = wait_until(lambda: [m for m in trunk.sip_messages() if m.method == "BYE"], 10,
                          f"baresip sending BYE ({trunk.log_path})")
        bye = byes[0]
        assert bye.transport == "TCP" and bye.dst == gw_tcp, \
            f"baresip's BYE went {bye.transport} to {bye.dst}, expected TCP to tcp_listen {gw_tcp}"
        ok = wait_until(lambda: [m for m in trunk.sip_messages() if m.status == 200 and _cseq(m)[1] == "BYE"],
                        10, f"the gateway's 200 OK for baresip's BYE ({trunk.log_path})")
        save_result(workdir, bye=(bye.transport, bye.src, bye.dst), bye_200=(ok[0].transport, ok[0].src, ok[0].dst))
        assert ok[0].transport == "TCP", ok[0].transport
        # RFC 3261 18.2.2: over TCP the response MUST use the connection the
        # request came in on (while it is open): from gw_tcp to baresip's
        # ephemeral port, not over the gateway's own connection to the trunk
        assert (ok[0].src, ok[0].dst) == (bye.dst, bye.src), (
            f"the 200 OK for the BYE (received {bye.src} -> {bye.dst}) came back over another TCP connection "
            f"({ok[0].src} -> {ok[0].dst}); RFC 3261 18.2.2 requires the request's own connection")
    assert connected["type"] == "connected", connected
    got = [m for m in trunk.sip_messages()]
    save_result(workdir, trunk_sip=[(m.transport, m.src, m.dst, m.first_line) for m in got])
    for method in bye_methods:
        msgs = trunk.received(method)
        assert msgs, f"baresip received no {method} ({trunk.log_path})"
        assert all(m.transport == "TCP" for m in msgs), \
            f"{method} reached baresip over {[m.transport for m in msgs]}, expected TCP"
    udp = [m.first_line for m in got if m.transport != "TCP"]
    assert not udp, f"SIP between the gateway and a transport=tcp trunk went over UDP: {udp}"
    contact = sip_header(trunk.received("INVITE")[0].text, "Contact") or ""
    assert "transport=tcp" in contact.lower(), f"INVITE Contact does not ask for TCP: {contact}"
    invite = trunk.received("INVITE")[0]
    via = sip_header(invite.text, "Via") or ""
    assert via.upper().startswith("SIP/2.0/TCP"), f"INVITE Via is not TCP: {via}"
    assert invite.sdp_media()[2] == "RTP/SAVP", invite.text
    assert "sdes-srtp" in str((connected.get("security") or {}).get("trunk", "")).lower(), connected
    _check_media(result, trunk, workdir)


# --------------------------------------------------------------------------
# 2. digest authentication


async def _auth_call(gw: Gateway, sipp: SippUas, expect_connected: bool = True):
    """Calls through a challenging SIPp trunk. With expect_connected, waits
    for `connected` and the ACK of the 200, then hangs up; returns the
    browser's messages."""
    peer = await BrowserPeer(gw.base_url, gw.login()).connect()
    try:
        msg = await peer.call(TRUNK_NUMBER, timeout=20)
        if expect_connected:
            assert msg["type"] == "connected", f"expected connected, got {msg}; all: {peer.messages}"
            await async_wait_until(lambda: len(sipp.received("ACK")) >= 2, 10,
                                   f"SIPp receiving the ACK of its 200 OK ({sipp.msg_path})")
            await peer.hangup()
            await async_wait_until(lambda: sipp.received("BYE"), 10, f"SIPp receiving BYE ({sipp.msg_path})")
        else:
            if msg["type"] not in ("hangup", "error", "_closed"):
                msg = await peer.next_message({"hangup"}, 15)
        return list(peer.messages), msg
    finally:
        await peer.close()


def _check_challenge_exchange(sipp: SippUas, challenge_status: int, cred_header: str, algorithm: str):
    """The first INVITE carries no credentials; the gateway ACKs the
    challenge and sends a second INVITE in the same dialog attempt (Call-ID
    and From tag kept, CSeq + 1) whose credentials answer the challenge
    correctly for user gw / password secret. Returns the credential params."""
    invites = sipp.received("INVITE")
    assert len(invites) >= 2, f"SIPp got {len(invites)} INVITE(s): no retry after {challenge_status}"
    first, second = invites[0], invites[1]
    for h in ("Authorization", "Proxy-Authorization"):
        assert sip_header(first.text, h) is None, f"first INVITE already has {h}"
    assert sipp.sent(status=challenge_status), f"SIPp sent no {challenge_status}"
    acks = sipp.received("ACK")
    assert acks, f"the {challenge_status} was not ACKed"
    _check_non2xx_ack(first, sipp.sent(status=challenge_status)[0], acks[0])
    assert sip_header(second.text, "Call-ID") == sip_header(first.text, "Call-ID"), "Call-ID changed on retry"
    tag = lambda m: re.search(r";\s*tag=([^;\s]+)", sip_header(m.text, "From") or "")  # noqa: E731
    assert tag(first) and tag(second) and tag(first).group(1) == tag(second).group(1), "From tag changed on retry"
    assert _cseq(second) == (_cseq(first)[0] + 1, "INVITE"), f"CSeq {_cseq(first)} -> {_cseq(second)}"

    other = "Authorization" if cred_header == "Proxy-Authorization" else "Proxy-Authorization"
    creds = sip_header(second.text, cred_header)
    assert creds, f"second INVITE has no {cred_header}:\n{second.text}"
    assert sip_header(second.text, other) is None, f"second INVITE answers a {challenge_status} with {other}"
    p = digest_params(creds)
    challenge = digest_params(sip_header(sipp.sent(status=challenge_status)[0].text,
                                         "Proxy-Authenticate" if challenge_status == 407 else "WWW-Authenticate"))
    assert p.get("username") == "gw", p
    assert p.get("realm") == challenge["realm"] and p.get("nonce") == challenge["nonce"], (p, challenge)
    assert p.get("opaque") == challenge["opaque"], f"opaque not echoed: {p}"
    assert p.get("qop") == "auth" and p.get("nc") and p.get("cnonce"), f"qop=auth not used: {p}"
    assert p.get("algorithm", "MD5").upper() == algorithm.upper(), f"algorithm {p.get('algorithm')} != {algorithm}"
    request_uri = second.first_line.split()[1]
    assert p.get("uri") == request_uri, f"digest uri {p.get('uri')} != Request-URI {request_uri}"
    want = digest_expected(p, "INVITE", SECRET, algorithm)
    assert p.get("response", "").lower() == want, f"digest response {p.get('response')} != expected {want}"
    return p


def test_digest_auth_md5(workdir, start_sipp, start_gateway):
    """SIPp answers the first INVITE with 401 (Digest, MD5, qop=auth) and
    checks the retry with its own verifyauth (user gw, password secret):
    200 OK only when valid. The browser gets answer + connected, the 200 is
    ACKed, the hangup becomes a BYE, and the scenario ends with exit 0."""
    sipp = start_sipp("uas_digest_verify.xml")
    gw = start_gateway(plain_trunk(sipp.uri, username="gw", password=SECRET))
    messages, final = asyncio.run(_auth_call(gw, sipp))
    rc = sipp.wait(15)
    save_result(workdir, browser=messages, sipp_rc=rc, sipp_actions=sipp.actions())
    assert any(m["type"] == "answer" for m in messages), messages
    assert "AUTH valid" in sipp.actions(), f"SIPp's verifyauth rejected the credentials ({sipp.actions_path})"
    assert sipp.sent(status=200), "SIPp sent no 200 OK"
    assert rc == 0, f"SIPp scenario failed (exit {rc}); {sipp.msg_path}, {sipp.err_path}"
    _check_challenge_exchange(sipp, 401, "Authorization", "MD5")
    assert len(sipp.received("INVITE")) == 2


def test_digest_auth_sha256(workdir, start_sipp, start_gateway):
    """401 with algorithm=SHA-256 (RFC 7616). SIPp 3.6.1's verifyauth knows
    only MD5 (src/auth.cpp verifyAuthHeader), so SIPp answers 200 to any
    Digest credentials and the test recomputes the SHA-256 response from
    SIPp's trace."""
    sipp = start_sipp("uas_digest_401.xml", keys={"algorithm": "SHA-256"})
    gw = start_gateway(plain_trunk(sipp.uri, username="gw", password=SECRET))
    messages, final = asyncio.run(_auth_call(gw, sipp))
    rc = sipp.wait(15)
    save_result(workdir, browser=messages, sipp_rc=rc)
    _check_challenge_exchange(sipp, 401, "Authorization", "SHA-256")
    assert rc == 0, f"SIPp scenario failed (exit {rc}); {sipp.msg_path}"


def test_digest_auth_proxy_407(workdir, start_sipp, start_gateway):
    """407 Proxy-Authenticate (MD5, qop=auth): the retry carries
    Proxy-Authorization (not Authorization) with a correct response (checked
    by the test from SIPp's trace: SIPp's verifyauth reads Authorization
    only); call connected, BYE, scenario exit 0."""
    sipp = start_sipp("uas_digest_407.xml", keys={"algorithm": "MD5"})
    gw = start_gateway(plain_trunk(sipp.uri, username="gw", password=SECRET))
    messages, final = asyncio.run(_auth_call(gw, sipp))
    rc = sipp.wait(15)
    save_result(workdir, browser=messages, sipp_rc=rc)
    _check_challenge_exchange(sipp, 407, "Proxy-Authorization", "MD5")
    assert rc == 0, f"SIPp scenario failed (exit {rc}); {sipp.msg_path}"


def test_digest_auth_wrong_password(workdir, start_sipp, start_gateway):
    """The gateway holds the wrong password: SIPp's verifyauth fails, it
    answers 403, the gateway ACKs it, does not retry, and the browser gets
    `hangup` with code 403."""
    sipp = start_sipp("uas_digest_verify.xml")
    gw = start_gateway(plain_trunk(sipp.uri, username="gw", password="not-the-secret"))
    messages, final = asyncio.run(_auth_call(gw, sipp, expect_connected=False))
    rc = sipp.wait(15)
    save_result(workdir, browser=messages, final=final, sipp_rc=rc, sipp_actions=sipp.actions())
    assert "AUTH invalid" in sipp.actions(), sipp.actions()
    assert sipp.sent(status=403) and not sipp.sent(status=200)
    assert final["type"] == "hangup", f"expected hangup, got {final}; all: {messages}"
    assert final.get("code") == 403, f"hangup code {final.get('code')}, expected 403: {final}"
    assert not any(m["type"] == "connected" for m in messages), messages
    assert rc == 0, f"SIPp scenario failed (exit {rc}): the 403 was not ACKed? {sipp.msg_path}"
    invites = sipp.received("INVITE")
    assert len(invites) == 2, f"{len(invites)} INVITEs: the gateway retried after 403"
    acks = sipp.received("ACK")
    assert len(acks) == 2, f"{len(acks)} ACKs, expected one for the 401 and one for the 403"
    _check_non2xx_ack(invites[1], sipp.sent(status=403)[0], acks[1])


# --------------------------------------------------------------------------
# 3. CANCEL before answer


def test_cancel_before_answer(workdir, start_baresip, start_gateway):
    """baresip rings (180) and never answers; the browser hangs up after
    `progress` 180: baresip receives CANCEL, answers it 200 and the INVITE
    487, and the gateway ACKs the 487. The browser gets `hangup`."""
    trunk = start_baresip(srtp=True, answer=False)
    gw = start_gateway(sdes_trunk(f"sip:127.0.0.1:{trunk.sip_port};transport=udp"))

    async def run():
        peer = await BrowserPeer(gw.base_url, gw.login()).connect()
        try:
            await _dial(peer)
            await _wait_progress(peer, 180)
            await peer.hangup()
            hangup = await _wait_type(peer, "hangup", 10)
            cancel = await async_wait_until(lambda: trunk.received("CANCEL"), 10,
                                            f"CANCEL at baresip ({trunk.log_path})")
            await async_wait_until(lambda: trunk.sent(status=487), 10, f"baresip sending 487 ({trunk.log_path})")
            ack = await async_wait_until(lambda: trunk.received("ACK"), 10,
                                         f"ACK of the 487 at baresip ({trunk.log_path})")
            return list(peer.messages), hangup, cancel, ack
        finally:
            await peer.close()

    messages, hangup, cancel, ack = asyncio.run(run())
    save_result(workdir, browser=messages)
    invite = trunk.received("INVITE")[0]
    assert _cseq(cancel[0]) == (_cseq(invite)[0], "CANCEL"), cancel[0].text
    assert sip_header(cancel[0].text, "Call-ID") == sip_header(invite.text, "Call-ID")
    assert _branch(cancel[0]) == _branch(invite), "CANCEL's Via branch differs from the INVITE's (RFC 3261 9.1)"
    assert cancel[0].first_line.split()[1] == invite.first_line.split()[1], "CANCEL Request-URI != INVITE's"
    _check_non2xx_ack(invite, trunk.sent(status=487)[0], ack[0])
    assert trunk.sent("", 200) and any(_cseq(m)[1] == "CANCEL" for m in trunk.sent(status=200))
    assert not trunk.received("BYE"), "BYE for a call never answered"
    assert not any(m["type"] == "connected" for m in messages), messages


# --------------------------------------------------------------------------
# 4. rejection codes


@pytest.mark.parametrize("peer_kind", ["sipp_486", "baresip_404"])
def test_rejection_code_mapped(workdir, peer_kind, start_sipp, start_baresip, start_gateway):
    """A trunk that refuses the call: SIPp answers 486 Busy Here; baresip
    answers 404 to a number it does not know. The browser gets `hangup` with
    that code and the gateway ACKs the final response."""
    if peer_kind == "sipp_486":
        trunk = start_sipp("uas_busy.xml")
        gw = start_gateway(plain_trunk(trunk.uri))
        number, code = TRUNK_NUMBER, 486
    else:
        trunk = start_baresip(srtp=True)
        gw = start_gateway(sdes_trunk(f"sip:127.0.0.1:{trunk.sip_port};transport=udp"))
        number, code = "4999", 404

    async def run():
        peer = await BrowserPeer(gw.base_url, gw.login()).connect()
        try:
            await _dial(peer, number)
            return await peer.next_message({"hangup"}, 15), list(peer.messages)
        finally:
            await peer.close()

    final, messages = asyncio.run(run())
    save_result(workdir, browser=messages)
    assert final["type"] == "hangup", f"expected hangup, got {final}"
    assert final.get("code") == code, f"hangup code {final.get('code')}, expected {code}: {final}"
    assert not any(m["type"] in ("connected", "answer") for m in messages), messages
    if peer_kind == "sipp_486":
        rc = trunk.wait(15)
        assert trunk.sent(status=486)
        assert rc == 0, f"SIPp scenario failed (exit {rc}): 486 not ACKed? {trunk.msg_path}"
    else:
        assert trunk.sent(status=404), f"baresip did not answer 404 ({trunk.log_path})"
        wait_until(lambda: trunk.received("ACK"), 10, f"ACK of the 404 at baresip ({trunk.log_path})")
    _check_non2xx_ack(trunk.received("INVITE")[0], trunk.sent(status=code)[0], trunk.received("ACK")[0])


# --------------------------------------------------------------------------
# 5. the browser's socket drops


def _first_seen(pred, timeout: float, what: str) -> float:
    """Polls every 20 ms; returns the monotonic time `pred` first held (an
    upper bound of when the event happened)."""
    wait_until(pred, timeout, what, interval=0.02)
    return time.monotonic()


@pytest.mark.parametrize("state", ["established", "ringing"])
def test_socket_close_hangs_up_within_2s(workdir, state, start_baresip, start_gateway):
    """The browser's WebSocket drops without a hangup (TCP connection
    aborted, the PeerConnection left open so that only the socket tells).
    Established call: baresip receives BYE within 2 s. Ringing (baresip
    does not answer): CANCEL within 2 s. Measured from the abort to the
    moment baresip's trace shows the request (polled every 20 ms, so an
    upper bound)."""
    trunk = start_baresip(srtp=True, answer=(state == "established"))
    gw = start_gateway(sdes_trunk(f"sip:127.0.0.1:{trunk.sip_port};transport=udp"))
    method = "BYE" if state == "established" else "CANCEL"

    async def run():
        peer = await BrowserPeer(gw.base_url, gw.login()).connect()
        try:
            if state == "established":
                msg = await peer.call(TRUNK_NUMBER)
                assert msg["type"] == "connected", msg
                trunk.wait_established()
                await peer.receive(50, timeout=20)
            else:
                await _dial(peer)
                await _wait_progress(peer, 180)
            assert not trunk.received("BYE") and not trunk.received("CANCEL")
            t0 = time.monotonic()
            _abort_socket(peer)
            # wait in a thread so that aiortc keeps running (its DTLS stays up)
            seen = await asyncio.get_running_loop().run_in_executor(
                None, lambda: _first_seen(lambda: trunk.received(method), 10,
                                          f"{method} at baresip after the socket dropped ({trunk.log_path})"))
            return seen - t0, list(peer.messages)
        finally:
            await peer.close()

    elapsed, messages = asyncio.run(run())
    save_result(workdir, state=state, method=method, seconds_to_request=round(elapsed, 3), browser=messages)
    assert elapsed < 2.0, f"{method} reached the trunk {elapsed:.2f}s after the socket dropped (limit 2 s)"
    if state == "ringing":
        wait_until(lambda: trunk.received("ACK"), 10, f"ACK of the 487 at baresip ({trunk.log_path})")
    else:
        trunk.wait_call_ended()


# --------------------------------------------------------------------------
# 6. SIGTERM


@pytest.mark.parametrize("state", ["established", "ringing"])
def test_sigterm_byes_live_calls(workdir, state, start_baresip, start_gateway):
    """A live call; SIGTERM to the gateway: the trunk receives BYE
    (established SDES call) or CANCEL (ringing, baresip not answering), the
    browser gets `hangup` (whose reason must not claim the browser hung up),
    the gateway exits 0."""
    trunk = start_baresip(srtp=True, answer=(state == "established"))
    gw = start_gateway(sdes_trunk(f"sip:127.0.0.1:{trunk.sip_port};transport=udp"))
    method = "BYE" if state == "established" else "CANCEL"

    async def run():
        peer = await BrowserPeer(gw.base_url, gw.login()).connect()
        try:
            if state == "established":
                msg = await peer.call(TRUNK_NUMBER)
                assert msg["type"] == "connected", msg
                trunk.wait_established()
                await peer.receive(50, timeout=20)
            else:
                await _dial(peer)
                await _wait_progress(peer, 180)
            gw.proc.send_signal(signal.SIGTERM)
            try:
                hangup = await _wait_type(peer, "hangup", 10)
            except AssertionError:
                hangup = None
            return hangup, list(peer.messages)
        finally:
            await peer.close()

    hangup, messages = asyncio.run(run())
    try:
        code = gw.proc.wait(20)
    except Exception:
        code = None
    req = wait_until(lambda: trunk.received(method), 5, f"{method} at baresip ({trunk.log_path})")
    save_result(workdir, browser=[{k: v for k, v in m.items() if k != "sdp"} for m in messages],
                gateway_exit=code, trunk_request=req[0].first_line)
    if state == "ringing":
        wait_until(lambda: trunk.received("ACK"), 5, f"ACK of the 487 at baresip ({trunk.log_path})")
    assert hangup is not None, f"the browser got no hangup before the socket closed: {messages}"
    assert code == 0, f"gateway exit {code} after SIGTERM ({gw.log_path})"
    assert "by the browser" not in str(hangup.get("reason", "")), \
        f"the gateway's own shutdown is reported to the browser as {hangup}"


def test_reliable_183_is_pracked(workdir, start_sipp, start_gateway):
    """A trunk that sends 183 with Require: 100rel (SIPp, uas_100rel.xml):
    the gateway's INVITE says Supported: 100rel, its PRACK carries RAck
    "1 <CSeq> INVITE" in the early dialog, the call is answered and carries
    audio (SIPp echoes the browser's RTP), and the BYE's CSeq comes after
    the PRACK's. Without PRACK SIPp never answers 200 and the call fails."""
    sipp = start_sipp("uas_100rel.xml", extra=["-rtp_echo"])
    gw = start_gateway(plain_trunk(sipp.uri))

    async def run():
        peer = await BrowserPeer(gw.base_url, gw.login()).connect()
        try:
            connected = await peer.call(TRUNK_NUMBER, timeout=20)
            assert connected["type"] == "connected", connected
            await peer.receive(50, timeout=15)
            await peer.hangup()
            return peer.packets_received
        finally:
            await peer.close()

    packets = asyncio.run(run())
    assert sipp.wait(15) == 0, f"SIPp scenario failed ({sipp.err_path})"
    prack = sipp.received("PRACK")
    assert len(prack) == 1, [m.first_line for m in sipp.received()]
    rack = sip_header(prack[0].text, "RAck")
    invite_cseq = sip_header(sipp.received("INVITE")[0].text, "CSeq").split()[0]
    assert rack == f"1 {invite_cseq} INVITE", rack
    bye_cseq = int(sip_header(sipp.received("BYE")[0].text, "CSeq").split()[0])
    prack_cseq = int(sip_header(prack[0].text, "CSeq").split()[0])
    assert bye_cseq > prack_cseq > int(invite_cseq)
    save_result(workdir, rack=rack, packets_echoed=packets)
    assert packets >= 50


def test_hold_reinvite_challenged_goes_again_with_credentials(workdir, start_sipp, start_gateway):
    """A trunk that authenticates every request (sipp/uas_reinvite_challenged.xml)
    answers the browser's hold re-INVITE with 401: the gateway ACKs it and
    sends the re-INVITE again with the next CSeq and Authorization, which
    SIPp's verifyauth accepts (gw/secret); the browser gets `held`, not an
    error; its hangup is SIPp's BYE (exit 0)."""
    sipp = start_sipp("uas_reinvite_challenged.xml")
    gw = start_gateway(plain_trunk(sipp.uri, username="gw", password=SECRET))

    async def run():
        peer = await BrowserPeer(gw.base_url, gw.login()).connect()
        try:
            msg = await peer.call(TRUNK_NUMBER, timeout=20)
            assert msg["type"] == "connected", msg
            await peer.send({"type": "hold", "id": peer.call_id})
            held = await peer.next_message({"held"}, 10)
            await peer.hangup()
            await async_wait_until(lambda: sipp.received("BYE"), 10, f"SIPp receiving BYE ({sipp.msg_path})")
            return held, [m.get("type") for m in peer.messages]
        finally:
            await peer.close()

    held, types = asyncio.run(run())
    rc = sipp.wait(15)
    invites = sipp.received("INVITE")
    save_result(workdir, held=held, types=types, sipp_rc=rc,
                cseqs=[sip_header(m.text, "CSeq") for m in invites])
    assert rc == 0, f"SIPp scenario failed (exit {rc}); {sipp.msg_path}, {sipp.err_path}"
    assert "AUTH valid" in sipp.actions(), f"SIPp's verifyauth rejected the credentials ({sipp.actions_path})"
    assert held.get("type") == "held" and "error" not in types, (held, types)
    assert len(invites) == 3, [m.first_line for m in invites]
    seqs = [int(sip_header(m.text, "CSeq").split()[0]) for m in invites]
    assert seqs[2] == seqs[1] + 1, seqs
    assert sip_header(invites[1].text, "Authorization") is None
    assert "Digest" in (sip_header(invites[2].text, "Authorization") or ""), invites[2].text
    assert len(sipp.received("ACK")) == 3, "the 200, the 401 and the second 200 were each ACKed"
    assert SECRET not in gw.log()
