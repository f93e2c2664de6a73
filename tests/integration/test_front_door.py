"""The SIP front door: strangers (outside every trunk's inbound_sources and
addresses) get no service at all, or 403 with sip.answer_strangers; a
stranger that floods is banned (its packets dropped unread) while the trunk's
calls go on with audio; memory stays bounded.

Inside the namespace 127.0.0.1 is the trunk's side (known) and the veth
addresses 10.99.0.1 / 10.99.0.2 are strangers."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import time
import uuid

import pytest

from conftest import TRUNK_NUMBER, _gateway
from harness import (
    GWT_HOST,
    SIPP_DIR,
    BrowserPeer,
    TrunkSpec,
    free_port,
    save_result,
    wait_until,
)

# Floods and ban timings: run by itself (tests/shard.py), not beside a shard.
pytestmark = [pytest.mark.gateway, pytest.mark.alone]

SECOND_STRANGER = "10.99.0.2"


def _request(method: str, gw_port: int, me: str, call_id: str | None = None) -> bytes:
    call_id = call_id or f"{uuid.uuid4()}@probe"
    return (f"{method} sip:alice@127.0.0.1:{gw_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {me};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:probe@{me}>;tag=p1\r\nTo: <sip:alice@127.0.0.1>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n").encode()


def _ask(host: str, gw_port: int, data_for, wait: float = 1.0) -> bytes | None:
    """Sends one datagram from `host` and returns the first answer or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        s.settimeout(wait)
        me = f"{host}:{s.getsockname()[1]}"
        s.sendto(data_for(me), ("127.0.0.1", gw_port))
        try:
            return s.recvfrom(65535)[0]
        except socket.timeout:
            return None


def _gw(workdir, trunk_port, **options):
    trunk = TrunkSpec("carrier", f"sip:127.0.0.1:{trunk_port};transport=udp")
    return _gateway(workdir, trunk, **options)


@pytest.fixture
def gateway_door(workdir, baresip_sdes):
    yield from _gw(workdir, baresip_sdes.sip_port)


def test_strangers_get_nothing_and_trunks_get_service(workdir, gateway_door):
    gw = gateway_door
    cases = {
        "OPTIONS": lambda me: _request("OPTIONS", gw.sip_port, me),
        "INVITE": lambda me: _request("INVITE", gw.sip_port, me),
        "BYE (no dialog)": lambda me: _request("BYE", gw.sip_port, me),
        "malformed": lambda me: b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP " + me.encode() + b"\r\n\r\n",
    }
    answers = {name: _ask(GWT_HOST, gw.sip_port, make) for name, make in cases.items()}
    leaked = {k: v[:40] for k, v in answers.items() if v is not None}
    assert not leaked, f"a stranger got answers: {leaked}"
    # the same from the trunk's address is served: the test can fail
    known = _ask("127.0.0.1", gw.sip_port, cases["OPTIONS"])
    assert known and known.startswith(b"SIP/2.0 200"), known
    known_bye = _ask("127.0.0.1", gw.sip_port, cases["BYE (no dialog)"])
    assert known_bye and known_bye.startswith(b"SIP/2.0 481"), known_bye
    ignored = gw.metrics().sum("gateway_sip_strangers_ignored_total")
    assert ignored >= len(cases), ignored
    save_result(workdir, strangers_ignored=ignored)


@pytest.fixture
def gateway_polite(workdir, baresip_sdes, monkeypatch):
    # answer_strangers = true: one line under [sip]
    from harness import Gateway
    orig = Gateway.write_config

    def write_config(self):
        orig(self)
        text = self.config_path.read_text().replace("[sip]\n", "[sip]\nanswer_strangers = true\n", 1)
        self.config_path.write_text(text)

    monkeypatch.setattr(Gateway, "write_config", write_config)
    yield from _gw(workdir, baresip_sdes.sip_port)


def test_answer_strangers_gives_403(gateway_polite):
    gw = gateway_polite
    answer = _ask(GWT_HOST, gw.sip_port, lambda me: _request("OPTIONS", gw.sip_port, me))
    assert answer and answer.startswith(b"SIP/2.0 403"), answer


def _rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _flood(workdir, gw, host: str, method: str, rate: int, seconds: int) -> subprocess.Popen:
    d = workdir / f"flood-{host}-{method}"
    d.mkdir(parents=True, exist_ok=True)
    # SIPp takes no keyword for the method: the scenario is written per method
    scenario = d / "flood.xml"
    scenario.write_text((SIPP_DIR / "uac_flood_send_only.xml").read_text().replace("METHOD", method))
    cmd = ["sipp", f"127.0.0.1:{gw.sip_port}", "-sf", str(scenario), "-t", "u1", "-i", host, "-p", str(free_port(socket.SOCK_DGRAM, host)),
           "-r", str(rate), "-m", str(rate * seconds), "-l", str(rate * 2),
           "-nostdin", "-trace_err", "-error_file", str(d / "errors.log")]
    (d / "command").write_text(" ".join(cmd) + "\n")
    out = open(d / "sipp.out", "wb")
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=d)


@pytest.fixture
def gateway_flood(request, workdir, baresip_sdes):
    """The door as the flood meets it: strangers get silence, or (with a
    trunk's inbound credentials) a stateless 401 until they are banned."""
    creds = {"inbound_username": "carrier-in", "inbound_password": "in-s3cret"} \
        if request.param == "digest" else {}
    trunk = TrunkSpec("carrier", f"sip:127.0.0.1:{baresip_sdes.sip_port};transport=udp", **creds)
    yield from _gateway(workdir, trunk)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("gateway_flood", ["silence", "digest"], indirect=True)
def test_flooders_are_banned_while_calls_go_on(workdir, gateway_flood, baresip_sdes):
    """SIPp floods from two stranger addresses (INVITE from 10.99.0.1,
    REGISTER from 10.99.0.2, 1,000/s each for 10 s) while the trunk has an
    outgoing call with audio and then places an incoming one that a browser
    session answers: both flooders are banned within 1 s, at most 1 % of
    their messages are ever answered (the 401s before the ban, in digest
    mode), both calls carry audio, and RSS grows by less than 20 MiB."""
    from test_incoming import _incoming_audio_call
    from harness import TONE_RMS_MIN
    gw, trunk = gateway_flood, baresip_sdes
    subprocess.run(["ip", "addr", "add", f"{SECOND_STRANGER}/24", "dev", "v0"], check=False)
    rate, seconds = 1000, 10

    async def run():
        peer = await BrowserPeer(gw.base_url, gw.login()).connect()
        try:
            connected = await peer.call(TRUNK_NUMBER)
            assert connected["type"] == "connected", connected
            trunk.wait_established()
            await peer.receive(50, timeout=15)
            # a sign-in first: argon2's 19 MiB working memory stays with the
            # allocator, and the incoming call's session signs in below
            await asyncio.to_thread(gw.login)
            rss0 = _rss_kib(gw.proc.pid)
            before = peer.packets_received
            t0 = time.monotonic()
            floods = [_flood(workdir, gw, GWT_HOST, "INVITE", rate, seconds),
                      _flood(workdir, gw, SECOND_STRANGER, "REGISTER", rate, seconds)]
            bans_at = await asyncio.to_thread(
                wait_until, lambda: gw.metrics().sum("gateway_sip_bans_total") >= 2 and time.monotonic(),
                5, "both flooders banned")
            ban_latency = bans_at - t0
            # the trunk calls in while the flood goes on; a session answers
            incoming = await _incoming_audio_call(gw, trunk, n_sessions=1)
            incoming_done = time.monotonic() - t0
            rss_peak = _rss_kib(gw.proc.pid)
            await asyncio.to_thread(lambda: [f.wait(seconds + 30) for f in floods])
            flood_s = time.monotonic() - t0
            rss1 = _rss_kib(gw.proc.pid)
            after = peer.packets_received
            # the outgoing call carried audio all along: ~50 packets/s
            assert after - before >= 40 * flood_s * 0.8, (before, after, flood_s)
            m = gw.metrics()
            dropped = m.sum("gateway_sip_banned_dropped_total")
            ignored = m.sum("gateway_sip_strangers_ignored_total")
            answered = m.sum("gateway_sip_challenges_total") if m.has("gateway_sip_challenges_total") else 0
            sent = 2 * rate * seconds
            assert dropped >= 0.9 * sent, f"only {dropped} of {sent} dropped as banned"
            login = await asyncio.to_thread(gw.login)
            assert login
            await peer.hangup()
            trunk.wait_bye()
            res = incoming["result"]
            return dict(ban_latency_s=round(ban_latency, 3), flood_seconds=round(flood_s, 1),
                        sent=sent, banned_dropped=dropped, strangers_ignored=ignored,
                        answered=answered, answered_fraction=round(answered / sent, 4),
                        rss_before_kib=rss0, rss_peak_kib=rss_peak, rss_after_kib=rss1,
                        call_packets_during_flood=after - before,
                        incoming_call={"done_at_s": round(incoming_done, 1), "received": res["received"],
                                       "sent": res["sent"], "rms": round(res["rms"])})
        finally:
            await peer.close()

    r = asyncio.run(run())
    save_result(workdir, **r)
    assert r["ban_latency_s"] < 1.0, r
    assert r["answered_fraction"] <= 0.01, r
    assert r["incoming_call"]["received"] > 100 and r["incoming_call"]["sent"] > 100, r
    assert r["incoming_call"]["rms"] > TONE_RMS_MIN, r
    assert r["incoming_call"]["done_at_s"] < r["flood_seconds"], "the incoming call was not during the flood"
    assert max(r["rss_peak_kib"], r["rss_after_kib"]) - r["rss_before_kib"] < 20 * 1024, r
    log = gw.log()
    assert log.count("SIP source banned") == 2, "one log line per ban"


# --------------------------------------------------------------------------
# the HTTPS side of the door


def _https_from(gw, source: str, method: str, path: str, body=None, headers=None):
    """An HTTPS request to the gateway from a socket bound to `source`."""
    import http.client
    import json as _json
    from harness import unverified_ssl
    conn = http.client.HTTPSConnection("127.0.0.1", gw.https_port, context=unverified_ssl(), timeout=10,
                                       source_address=(source, 0))
    try:
        hdrs = dict(headers or {})
        data = None
        if body is not None:
            data = _json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        # header names lowercased: HTTP/1.1 names are case-insensitive
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.fixture
def gateway_metrics_token(workdir, baresip_sdes, monkeypatch):
    from harness import Gateway
    orig = Gateway.write_config

    def write_config(self):
        orig(self)
        text = self.config_path.read_text().replace(
            "[server]\n", '[server]\nmetrics_token = "metrics-bearer-0123456789"\n', 1)
        self.config_path.write_text(text)

    monkeypatch.setattr(Gateway, "write_config", write_config)
    yield from _gw(workdir, baresip_sdes.sip_port)


def test_metrics_only_from_allowed_sources_or_with_the_token(gateway_metrics_token):
    gw = gateway_metrics_token
    status, _, _ = _https_from(gw, "127.0.0.1", "GET", "/metrics")
    assert status == 200
    status, _, body = _https_from(gw, GWT_HOST, "GET", "/metrics")
    assert status == 403, (status, body[:200])
    status, _, _ = _https_from(gw, GWT_HOST, "GET", "/metrics",
                               headers={"Authorization": "Bearer wrong-token-0123456789"})
    assert status == 403
    status, _, body = _https_from(gw, GWT_HOST, "GET", "/metrics",
                                  headers={"Authorization": "Bearer metrics-bearer-0123456789"})
    assert status == 200 and b"gateway_calls_active" in body
    # /healthz?detail names trunks: the same rule; others get the plain "ok"
    status, _, body = _https_from(gw, GWT_HOST, "GET", "/healthz?detail")
    assert (status, body) == (200, b"ok"), body[:200]
    status, _, body = _https_from(gw, "127.0.0.1", "GET", "/healthz?detail")
    assert status == 200 and b'"trunks"' in body and b'"carrier"' in body, body[:300]


def test_login_back_off_per_source(workdir, gateway_door):
    gw = gateway_door
    waits = []
    for _ in range(7):
        status, headers, _ = _https_from(gw, GWT_HOST, "POST", "/api/login",
                                         {"account": gw.account, "password": "wrong"})
        if status == 429:
            waits.append(int(headers["retry-after"]))
            # let the wait pass, then the next wrong try counts again
            time.sleep(waits[-1])
            status, headers, _ = _https_from(gw, GWT_HOST, "POST", "/api/login",
                                             {"account": gw.account, "password": "wrong"})
        assert status == 401, status
    # the guesser is held now; the right password from another source is not
    status, headers, _ = _https_from(gw, GWT_HOST, "POST", "/api/login",
                                     {"account": gw.account, "password": gw.password})
    assert status == 429 and int(headers["retry-after"]) >= 2, (status, headers)
    t = time.monotonic()
    status, _, body = _https_from(gw, "127.0.0.1", "POST", "/api/login",
                                  {"account": gw.account, "password": gw.password})
    took = time.monotonic() - t
    assert status == 200 and b"token" in body, (status, body)
    save_result(workdir, waits_seen=waits, other_source_login_s=round(took, 3))
    assert waits == sorted(waits) and len(waits) >= 2, waits


def test_a_port_in_use_fails_before_ready(workdir):
    from harness import Gateway
    gw = Gateway(workdir, trunk=TrunkSpec("carrier", "sip:127.0.0.1:5999;transport=udp"))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", gw.https_port))
        blocker.listen(1)
        with pytest.raises(AssertionError):
            gw.start(timeout=15)
        code = gw.proc.wait(10)
    log = gw.log()
    assert code != 0, code
    assert "in use" in log.lower(), log[-2000:]
    assert "gateway ready" not in log, log[-2000:]


def test_a_forged_bye_from_a_foreign_address_does_not_end_the_call(workdir, gateway_door, baresip_sdes):
    """A BYE with the live call's Call-ID and both tags, as the trunk would
    send it, but from a stranger's address: no answer, the call goes on with
    audio; the same BYE from the trunk's address (baresip's own hangup
    later) still ends it."""
    from test_sip_malformed import live_dialog
    gw, trunk = gateway_door, baresip_sdes

    async def run():
        peer = await BrowserPeer(gw.base_url, gw.login()).connect()
        try:
            connected = await peer.call(TRUNK_NUMBER)
            assert connected["type"] == "connected", connected
            await asyncio.to_thread(trunk.wait_established)
            await peer.receive(50, timeout=15)
            live = live_dialog(trunk)
            ignored0 = gw.metrics().sum("gateway_sip_strangers_ignored_total")

            def forged(me: str) -> bytes:
                uri = live["contact"]
                return (f"BYE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport\r\n"
                        f"Max-Forwards: 70\r\nFrom: {live['trunk_side']}\r\nTo: {live['gateway_side']}\r\n"
                        f"Call-ID: {live['call_id']}\r\nCSeq: 900 BYE\r\nContent-Length: 0\r\n\r\n").encode()

            answer = await asyncio.to_thread(_ask, GWT_HOST, gw.sip_port, forged)
            before = peer.packets_received
            await peer.receive(before + 100, timeout=10)  # two more seconds of audio
            hangups = [m for m in peer.messages if m.get("type") == "hangup"]
            ignored1 = gw.metrics().sum("gateway_sip_strangers_ignored_total")
            await peer.hangup()
            await asyncio.to_thread(trunk.wait_bye)
            return answer, hangups, ignored1 - ignored0
        finally:
            await peer.close()

    answer, hangups, ignored = asyncio.run(run())
    save_result(workdir, forged_bye_answer=answer.decode(errors="replace")[:60] if answer else None,
                strangers_ignored=ignored)
    assert answer is None, answer
    assert not hangups, hangups
    assert ignored >= 1


@pytest.fixture
def gateway_digest(workdir, baresip_sdes):
    """The trunk has inbound credentials: strangers are challenged."""
    trunk = TrunkSpec("carrier", f"sip:127.0.0.1:{baresip_sdes.sip_port};transport=udp",
                      inbound_username="carrier-in", inbound_password="in-s3cret")
    yield from _gateway(workdir, trunk)


@pytest.mark.parametrize("password,final", [("in-s3cret", 480), ("guess", 403)])
def test_a_stranger_with_the_trunks_inbound_credentials_is_that_trunk(workdir, gateway_digest, password, final):
    """SIPp calls alice from 10.99.0.1 (outside inbound_sources): its INVITE
    gets a stateless 401 (SHA-256 and MD5 challenges, nothing retransmitted);
    answered with the trunk's inbound credentials it reaches the call logic
    (100, then 480: alice has no session), with a wrong password 403. A
    request without credentials from a third address gets the challenge,
    never a 200 or 480."""
    from harness import SippUac, sip_header
    gw = gateway_digest
    sipp = SippUac(workdir, "uac_invite_digest.xml", remote=f"127.0.0.1:{gw.sip_port}", service="alice",
                   host=GWT_HOST, extra=["-au", "carrier-in", "-ap", password]).start()
    code = sipp.wait(30)
    got = [m.status for m in sipp.received() if m.status]
    save_result(workdir, sipp_exit=code, received=got)
    challenge = sipp.received(status=401)
    assert len(challenge) == 1, got
    values = [v for v in re.findall(r"^WWW-Authenticate:\s*(.*)$", challenge[0].text, re.M | re.I)]
    assert any("SHA-256" in v for v in values) and any("MD5" in v for v in values), values
    assert final in got, got
    assert code == 0, f"sipp exit {code} ({sipp.err_path})"
    if final == 480:
        assert 100 in got, got
    # an unauthenticated OPTIONS from elsewhere: challenged, not served
    subprocess.run(["ip", "addr", "add", f"{SECOND_STRANGER}/24", "dev", "v0"], check=False,
                   capture_output=True)
    answer = _ask(SECOND_STRANGER, gw.sip_port, lambda me: _request("OPTIONS", gw.sip_port, me))
    assert answer and answer.startswith(b"SIP/2.0 401"), answer
    assert gw.metrics().sum("gateway_sip_challenges_total") >= 2
    # the challenge is sent once: nothing retransmitted for a stateless 401
    time.sleep(1.2)
    assert len(sipp.received(status=401)) == 1


def test_a_source_over_its_concurrent_transactions_is_banned(workdir, baresip_sdes):
    """[sip.limits] concurrent_transactions = 3: SIPp, authenticated as the
    trunk from 10.99.0.1, starts 6 calls at once to alice, whose session
    rings and never answers. Three ring; the fourth INVITE bans the source
    (logged once, counted), the rest go unanswered; the trunk's own
    address is never limited."""
    from harness import SippUac
    # secure_media optional: SIPp offers plain RTP/AVP
    trunk = TrunkSpec("carrier", f"sip:127.0.0.1:{baresip_sdes.sip_port};transport=udp",
                      secure_media="optional",
                      inbound_username="carrier-in", inbound_password="in-s3cret")
    gens = _gateway(workdir, trunk, ring_timeout=4, sip_limits={"concurrent_transactions": 3})
    gw = next(gens)
    try:
        async def run():
            peer = await BrowserPeer(gw.base_url, gw.login()).connect()
            try:
                sipp = SippUac(workdir, "uac_invite_digest.xml", remote=f"127.0.0.1:{gw.sip_port}",
                               service="alice", host=GWT_HOST, timeout=15,
                               extra=["-au", "carrier-in", "-ap", "in-s3cret", "-m", "6", "-l", "6",
                                      "-r", "50"])
                # -m given twice: SIPp takes the last
                sipp.start()
                await asyncio.to_thread(wait_until, lambda: gw.metrics().sum("gateway_sip_bans_total") >= 1,
                                        10, "the source banned")
                await asyncio.to_thread(sipp.wait, 30)
                rang = [m for m in peer.messages if m.get("type") == "incoming"]
                return sipp, rang
            finally:
                await peer.close()

        sipp, rang = asyncio.run(run())
        from harness import sip_header
        finals = {sip_header(m.text, "Call-ID"): m.status for m in sipp.received()
                  if m.status >= 200 and m.status != 401}
        save_result(workdir, rang=len(rang), finals=finals)
        assert len(rang) == 3, f"{len(rang)} calls rang"
        assert sorted(finals.values()) == [408, 408, 408], finals
        assert gw.log().count("over its concurrent INVITE transactions") == 1
        assert gw.metrics().sum("gateway_sip_bans_total") == 1
    finally:
        next(gens, None)
