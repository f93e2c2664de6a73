"""Call records (CDRs), Prometheus metrics and redaction against the real
gateway, with real peers: aiortc as the browser, baresip as the trunk (and as
a caller), SIPp as a trunk that refuses.

The records are read straight from `<data_dir>/cdr.sqlite3` with Python's
sqlite3 (read-only URI, so a read never checkpoints or removes the WAL the
gateway writes). The writer thread records off the call path, so every check
polls for the row with a timeout. `/metrics` is parsed with
prometheus_client's own parser, which raises on any line it cannot read.

Each test starts its own gateway and peers and leaves configs, logs, SIP
traces, and in result.json the rows and figures it measured, in
tests/artifacts/<test name>/.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import http.client
import io
import json
import re
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Callable, Optional

import pytest

from conftest import TRUNK_NUMBER
from harness import (
    REPO,
    Baresip,
    BrowserPeer,
    Gateway,
    SippUas,
    TrunkSpec,
    save_result,
    sip_header,
    unverified_ssl,
    wait_until,
)
from test_sip_trunk import _dial, _wait_progress

pytestmark = pytest.mark.gateway

ACCOUNT = "alice"
CDR_FILE = "cdr.sqlite3"
DASHBOARD = REPO / "deploy" / "grafana" / "webrtc-sip-gateway.json"

# Distinctive parties for the redaction test: E.164 with a leading '+'
# (baresip answers a Request-URI user only when it is its account's user, so
# the trunk's account is named after the number dialled).
DIALLED = "+4930123456789"
DIALLED_MASKED = "+4930*******89"
CALLER = "+4917612345678"
CALLER_MASKED = "+4917*******78"


def now_ms() -> int:
    return int(time.time() * 1000)


# --------------------------------------------------------------------------
# fixtures: peers started by the test, stopped at teardown (the gateway must
# exit 0 on SIGTERM and its log hold no panic)


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

    def start(user: str = TRUNK_NUMBER, srtp: bool = True, answer: bool = True, name: str = "trunk") -> Baresip:
        b = Baresip(workdir, tone_wav, user=user, srtp=srtp, name=name, answer=answer)
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


def sdes_trunk(baresip: Baresip) -> TrunkSpec:
    return TrunkSpec("carrier", f"sip:127.0.0.1:{baresip.sip_port};transport=udp",
                     callee_stream="sdes", secure_media="mandatory")


def plain_trunk(uri: str) -> TrunkSpec:
    return TrunkSpec("carrier", uri, callee_stream="decrypted", secure_media="forbidden")


# --------------------------------------------------------------------------
# reading the records


def db_query(gw: Gateway, sql: str, args: tuple = ()) -> list[dict]:
    """Rows of `sql` on the gateway's call records, read-only; [] while the
    database or its tables do not exist yet."""
    path = gw.data_dir / CDR_FILE
    if not path.exists():
        return []
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute(sql, args)]
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return []
        raise
    finally:
        con.close()


def calls(gw: Gateway) -> list[dict]:
    return db_query(gw, "SELECT * FROM calls ORDER BY started_at, rowid")


def audit_rows(gw: Gateway) -> list[dict]:
    return db_query(gw, "SELECT * FROM audit ORDER BY seq")


def wait_record(gw: Gateway, pred: Callable[[dict], bool] = lambda r: True, timeout: float = 10.0,
                what: str = "an ended call record") -> dict:
    """The first row with ended_at set that satisfies `pred` (the writer
    queues the events, so a row may come some milliseconds after the end)."""
    return wait_until(lambda: next((r for r in calls(gw) if r["ended_at"] is not None and pred(r)), None),
                      timeout, f"{what} in {gw.data_dir / CDR_FILE}", interval=0.05)


def check_times(row: dict, t0: int, t1: int, answered: bool):
    """started <= answered <= ended, all inside the test's own window."""
    assert t0 - 1000 <= row["started_at"] <= row["ended_at"] <= t1 + 1000, (t0, t1, row)
    if answered:
        assert row["answered_at"] is not None, f"answered call without answered_at: {row}"
        assert row["started_at"] <= row["answered_at"] <= row["ended_at"], row
    else:
        assert row["answered_at"] is None, f"unanswered call with answered_at: {row}"


def one_row(gw: Gateway, expected: int = 1) -> list[dict]:
    rows = calls(gw)
    assert len(rows) == expected, f"{len(rows)} call records, expected {expected}: {rows}"
    return rows


def leg_figures(row: dict) -> dict:
    return {k: row[k] for k in row if k.startswith(("browser_packets", "browser_bytes", "trunk_packets",
                                                    "trunk_bytes", "browser_drops", "trunk_drops"))}


# --------------------------------------------------------------------------
# browser helpers


async def _incoming_answered(gw: Gateway, caller: Baresip, user: str = ACCOUNT, packets: int = 100,
                             hangup_by: str = "trunk", on_live: Optional[Callable] = None):
    """`caller` (baresip) dials the account, the browser accepts, media
    flows; then `hangup_by` ends the call. Returns (incoming, connected,
    hangup, packets the browser received)."""
    peer = await BrowserPeer(gw.base_url, gw.login()).connect()
    try:
        await peer.barrier()
        caller.dial(f"sip:{user}@127.0.0.1:{gw.sip_port}")
        incoming = await peer.wait_incoming(10)
        await peer.accept()
        connected = await peer.wait_for({"connected"}, 20, call_id=peer.call_id)
        assert connected["type"] == "connected", f"expected connected, got {connected}"
        await asyncio.to_thread(caller.wait_established)
        await peer.receive(packets, timeout=20)
        if on_live:
            await asyncio.to_thread(on_live, peer.call_id)
        if hangup_by == "trunk":
            assert caller.command("hangup").get("ok")
        else:
            await peer.hangup()
        hangup = await peer.wait_for({"hangup"}, 10, call_id=peer.call_id)
        hangup["_seen_ms"] = now_ms()
        return incoming, connected, hangup, peer.packets_received
    finally:
        await peer.close()


async def _outgoing_answered(gw: Gateway, trunk: Baresip, number: str = TRUNK_NUMBER, packets: int = 150,
                             on_live: Optional[Callable] = None):
    """The browser calls `number`, audio both ways (~3 s), the browser hangs
    up and the trunk gets BYE. Returns a dict: connected, hangup, browser_rx
    (RTP packets the browser received), setup_s (from `call` to
    `connected`), times (wall clock ms: hangup sent, BYE seen at the trunk)."""
    peer = await BrowserPeer(gw.base_url, gw.login()).connect()
    try:
        t0 = time.monotonic()
        connected = await peer.call(number)
        setup_s = time.monotonic() - t0
        assert connected["type"] == "connected", f"expected connected, got {connected}"
        await asyncio.to_thread(trunk.wait_established)
        await peer.receive(packets, timeout=20)
        await asyncio.to_thread(trunk.wait_heard_seconds, 2.0, 20)
        if on_live:
            await asyncio.to_thread(on_live, None)
        times = {"hangup_sent_ms": now_ms()}
        await peer.hangup()
        hangup = await peer.wait_for({"hangup"}, 10, call_id=peer.call_id)
        await asyncio.to_thread(trunk.wait_bye)
        times["bye_seen_ms"] = now_ms()  # an upper bound: the trace is polled every 50 ms
        return dict(connected=connected, hangup=hangup, browser_rx=peer.packets_received, setup_s=setup_s,
                    times=times)
    finally:
        await peer.close()


# --------------------------------------------------------------------------
# 1. one record per call, with the right cause


def test_record_outgoing_answered(workdir, gateway_sdes, baresip_sdes):
    """aiortc -> gateway -> baresip (SDES), ~3 s of audio, the browser hangs
    up: one row, id `out-...`, cause 200 by the browser, answered, both
    security columns, the codec, packets and bytes > 0 on both legs and at
    least what the peers counted receiving; the SIP Call-ID is the INVITE's."""
    gw, trunk = gateway_sdes, baresip_sdes
    t0 = now_ms()
    call = asyncio.run(_outgoing_answered(gw, trunk))
    browser_rx, times = call["browser_rx"], call["times"]
    row = wait_record(gw)
    t1 = now_ms()
    tx, rx = trunk.wait_rtp_stats()
    save_result(workdir, row=row, browser_received=browser_rx, trunk_tx=tx, trunk_rx=rx, times=times,
                ended_at_minus_bye_seen_ms=row["ended_at"] - times["bye_seen_ms"],
                record_seen_after_bye_ms=t1 - times["bye_seen_ms"])
    one_row(gw)
    invite = trunk.received("INVITE")[0]
    assert row["id"].startswith("out-"), row["id"]
    assert row["direction"] == "outgoing" and row["account"] == ACCOUNT and row["trunk"] == "carrier", row
    assert row["remote"] == TRUNK_NUMBER, row
    assert row["sip_call_id"] == sip_header(invite.text, "Call-ID"), (row["sip_call_id"], invite.text[:400])
    check_times(row, t0, t1, answered=True)
    assert row["ended_at"] - row["answered_at"] >= 2000, f"call of ~3 s recorded as {row}"
    assert (row["cause_code"], row["hung_up_by"]) == (200, "browser"), row
    assert "dtls-srtp" in (row["browser_security"] or ""), row
    assert (row["trunk_security"] or "").startswith("sdes-srtp"), row
    assert row["codec"], row
    for leg in ("browser", "trunk"):
        for d in ("in", "out"):
            assert row[f"{leg}_packets_{d}"] > 100, f"{leg}_packets_{d}: {leg_figures(row)}"
            assert row[f"{leg}_bytes_{d}"] > row[f"{leg}_packets_{d}"] * 12, f"{leg}_bytes_{d}: {leg_figures(row)}"
    # the gateway cannot have sent fewer packets than the peers received
    assert row["trunk_packets_out"] >= rx, f"baresip received {rx} RTP packets, record: {leg_figures(row)}"
    assert row["browser_packets_out"] >= browser_rx, \
        f"the browser received {browser_rx} RTP packets, record: {leg_figures(row)}"
    assert row["private"] == 0, row
    # the end is when the call ended (hangup -> BYE), not when the BYE's
    # client transaction was done with (Timer K = T4 = 5 s over UDP): what
    # is billed is answered_at..ended_at
    assert times["hangup_sent_ms"] <= row["ended_at"] <= times["bye_seen_ms"] + 1000, (
        f"ended_at is {row['ended_at'] - times['bye_seen_ms']} ms after baresip had the BYE "
        f"(hangup sent at {times['hangup_sent_ms']}, BYE seen by {times['bye_seen_ms']}): "
        f"the billed duration is too long")


def test_record_incoming_trunk_hangs_up(workdir, gateway_sdes, baresip_sdes):
    """baresip dials alice, the browser accepts, audio, baresip hangs up:
    one row under the `in-...` id the browser got, incoming, remote 1000,
    answered, cause 200, hung_up_by trunk, packets on both legs."""
    gw, caller = gateway_sdes, baresip_sdes
    t0 = now_ms()
    incoming, connected, hangup, browser_rx = asyncio.run(_incoming_answered(gw, caller))
    row = wait_record(gw)
    t1 = now_ms()
    save_result(workdir, row=row, browser_hangup=hangup, browser_received=browser_rx)
    one_row(gw)
    assert incoming["id"].startswith("in-") and row["id"] == incoming["id"], (incoming["id"], row["id"])
    assert row["direction"] == "incoming" and row["account"] == ACCOUNT and row["trunk"] == "carrier", row
    assert row["remote"] == TRUNK_NUMBER, row
    invite = caller.sent("INVITE")[0]
    assert row["sip_call_id"] == sip_header(invite.text, "Call-ID"), row
    check_times(row, t0, t1, answered=True)
    assert (row["cause_code"], row["hung_up_by"]) == (200, "trunk"), row
    assert hangup.get("code") == 200, hangup
    assert row["ended_at"] <= hangup["_seen_ms"] + 1000, \
        f"ended_at {row['ended_at'] - hangup['_seen_ms']} ms after the browser had its hangup"
    assert "dtls-srtp" in (row["browser_security"] or "") and (row["trunk_security"] or "").startswith("sdes-srtp"), row
    for k in ("browser_packets_in", "browser_packets_out", "trunk_packets_in", "trunk_packets_out"):
        assert row[k] > 50, f"{k}: {leg_figures(row)}"
    assert row["browser_packets_out"] >= browser_rx, leg_figures(row)


def test_record_rejected_busy(workdir, start_sipp, start_gateway):
    """A SIPp trunk answers 486 Busy Here: one row, cause 486 with the
    trunk's reason, hung_up_by trunk, never answered."""
    sipp = start_sipp("uas_busy.xml")
    gw = start_gateway(plain_trunk(sipp.uri))
    t0 = now_ms()
    hangup = asyncio.run(_dial_until_hangup(gw))
    rc = sipp.wait(15)
    row = wait_record(gw)
    t1 = now_ms()
    save_result(workdir, row=row, browser_hangup=hangup, sipp_rc=rc)
    one_row(gw)
    assert hangup.get("code") == 486, hangup
    assert row["direction"] == "outgoing" and row["id"].startswith("out-"), row
    assert (row["cause_code"], row["hung_up_by"]) == (486, "trunk"), row
    assert "busy" in (row["cause"] or "").lower(), row
    check_times(row, t0, t1, answered=False)
    assert row["sip_call_id"] == sip_header(sipp.received("INVITE")[0].text, "Call-ID"), row


async def _dial_until_hangup(gw: Gateway, number: str = TRUNK_NUMBER) -> dict:
    peer = await BrowserPeer(gw.base_url, gw.login()).connect()
    try:
        await _dial(peer, number)
        msg = await peer.next_message({"hangup"}, 20)
        assert msg["type"] == "hangup", msg
        return msg
    finally:
        await peer.close()


@pytest.mark.parametrize("code,reason", [(404, "Not Found"), (503, "Service Unavailable")],
                         ids=["trunk_404", "trunk_503"])
def test_record_failed(workdir, start_sipp, start_gateway, code, reason):
    """A SIPp trunk refuses with 404 or 503 (sipp/uas_busy.xml with its
    486 line replaced: SIPp checks a status code when it loads the scenario,
    so it cannot come from a -key): one row, that code and reason,
    hung_up_by trunk, never answered, no media."""
    from harness import SIPP_DIR
    busy = (SIPP_DIR / "uas_busy.xml").read_text()
    assert "SIP/2.0 486 Busy Here" in busy
    scenario = workdir / f"uas_{code}.xml"
    scenario.write_text(busy.replace("SIP/2.0 486 Busy Here", f"SIP/2.0 {code} {reason}"))
    sipp = start_sipp(str(scenario))
    gw = start_gateway(plain_trunk(sipp.uri))
    t0 = now_ms()
    hangup = asyncio.run(_dial_until_hangup(gw))
    rc = sipp.wait(15)
    row = wait_record(gw)
    t1 = now_ms()
    save_result(workdir, row=row, browser_hangup=hangup, sipp_rc=rc,
                invites_at_sipp=len(sipp.received("INVITE")))
    one_row(gw)
    assert rc == 0, f"SIPp scenario failed (exit {rc}); {sipp.msg_path}"
    assert hangup.get("code") == code, hangup
    assert (row["cause_code"], row["hung_up_by"]) == (code, "trunk"), row
    assert reason.lower() in (row["cause"] or "").lower(), row
    check_times(row, t0, t1, answered=False)
    assert row["trunk_packets_out"] == 0 and row["trunk_packets_in"] == 0, leg_figures(row)


@pytest.mark.parametrize("direction", ["outgoing", "incoming"])
def test_record_cancelled(workdir, start_baresip, start_gateway, direction):
    """outgoing: baresip rings (answermode manual), the browser hangs up
    after 180 -> CANCEL, 487 at the trunk; incoming: baresip dials alice and
    CANCELs while the browser rings. One row each, cause 487, never
    answered; hung_up_by browser (outgoing) or trunk (incoming)."""
    trunk = start_baresip(answer=(direction == "incoming"))
    gw = start_gateway(sdes_trunk(trunk))
    t0 = now_ms()

    async def outgoing():
        peer = await BrowserPeer(gw.base_url, gw.login()).connect()
        try:
            await _dial(peer)
            await _wait_progress(peer, 180)
            await peer.hangup()
            msg = await peer.next_message({"hangup"}, 10)
            await asyncio.to_thread(trunk.wait_received, "ACK", 0, 10)  # the 487 was ACKed
            return msg, None
        finally:
            await peer.close()

    async def incoming():
        peer = await BrowserPeer(gw.base_url, gw.login()).connect()
        try:
            await peer.barrier()
            trunk.dial(f"sip:{ACCOUNT}@127.0.0.1:{gw.sip_port}")
            inc = await peer.wait_incoming(10)
            await asyncio.to_thread(trunk.wait_received, "", 180, 5)
            assert trunk.command("hangup").get("ok")
            msg = await peer.wait_for({"hangup"}, 10, call_id=peer.call_id)
            await asyncio.to_thread(trunk.wait_received, "", 487, 10)
            return msg, inc
        finally:
            await peer.close()

    hangup, inc = asyncio.run(outgoing() if direction == "outgoing" else incoming())
    row = wait_record(gw)
    t1 = now_ms()
    save_result(workdir, row=row, browser_hangup=hangup,
                trunk_sip=[m.first_line for m in trunk.sip_messages()])
    one_row(gw)
    if direction == "outgoing":
        assert trunk.received("CANCEL") and trunk.sent(status=487), f"no CANCEL/487 ({trunk.log_path})"
        assert row["direction"] == "outgoing" and row["id"].startswith("out-"), row
    else:
        assert row["direction"] == "incoming" and row["id"] == inc["id"], row
    assert row["cause_code"] == 487, f"a cancelled call recorded with cause {row['cause_code']} {row['cause']!r}"
    assert row["hung_up_by"] == ("browser" if direction == "outgoing" else "trunk"), row
    check_times(row, t0, t1, answered=False)


def test_record_closed_after_kill(workdir, baresip_sdes, start_gateway):
    """kill -9 during a connected call leaves the row open (ended_at NULL);
    the next start on the same data_dir closes it: cause "ended by
    restart", 503, hung_up_by gateway, answered_at kept, ended_at no earlier
    than the kill. The restart says so in its log."""
    trunk = baresip_sdes
    gw = start_gateway(sdes_trunk(trunk))

    async def run():
        peer = await BrowserPeer(gw.base_url, gw.login()).connect()
        try:
            connected = await peer.call(TRUNK_NUMBER)
            assert connected["type"] == "connected", connected
            await asyncio.to_thread(trunk.wait_established)
            await peer.receive(50, timeout=20)
            open_row = await asyncio.to_thread(
                wait_until, lambda: next((r for r in calls(gw) if r["answered_at"] is not None), None), 10,
                "the live call's row with answered_at")
            t_kill = now_ms()
            gw.kill()
            return open_row, t_kill
        finally:
            await peer.close()

    open_row, t_kill = asyncio.run(run())
    shutil.copy(gw.log_path, gw.dir / "gateway.killed.log")
    after_kill = calls(gw)
    assert gw.exit_code == -9, gw.exit_code
    gw.start()
    row = wait_record(gw, what="the row closed at restart")
    t1 = now_ms()
    save_result(workdir, open_row=open_row, after_kill=after_kill, closed_row=row)
    assert open_row["ended_at"] is None, open_row
    assert len(after_kill) == 1 and after_kill[0]["ended_at"] is None, \
        f"the killed process's row should still be open before the restart: {after_kill}"
    one_row(gw)
    assert row["id"] == open_row["id"], (row, open_row)
    assert row["cause"] == "ended by restart", row
    assert (row["cause_code"], row["hung_up_by"]) == (503, "gateway"), row
    assert row["answered_at"] == open_row["answered_at"], (row, open_row)
    assert t_kill <= row["ended_at"] <= t1, (t_kill, row["ended_at"], t1)
    assert re.search(r"closed calls left open by the previous run", gw.log()), gw.log()[-2000:]


# --------------------------------------------------------------------------
# 2. /metrics moves by exactly what the calls did


def scrape(gw: Gateway) -> tuple[str, dict]:
    """(text, {(sample name, sorted labels): value}); every family parsed by
    prometheus_client (raises on a bad line), each declared by one TYPE line
    with a type other than unknown."""
    from prometheus_client.parser import text_string_to_metric_families
    status, body = gw.http("GET", "/metrics")
    assert status == 200, status
    text = body.decode()
    samples = {}
    families = list(text_string_to_metric_families(text))
    untyped = [f.name for f in families if f.type == "unknown"]
    assert not untyped, f"families without a TYPE line: {untyped}"
    types = re.findall(r"^# TYPE (\S+) ", text, re.M)
    dupes = sorted({t for t in types if types.count(t) > 1})
    assert not dupes, f"TYPE declared twice (a Prometheus scrape fails): {dupes}"
    for f in families:
        for s in f.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = s.value
    return text, samples


def msum(samples: dict, name: str, **labels) -> float:
    return sum(v for (n, lab), v in samples.items()
               if n == name and all(dict(lab).get(k) == val for k, val in labels.items()))


def test_metrics_move_by_the_calls(workdir, gateway_sdes, baresip_sdes):
    """One outgoing call answered (browser hangs up) and one incoming call
    the browser rejects: started/connected/ended by direction, ends by
    code/side, the setup histogram (count +1, buckets cumulative, sum no more
    than the setup the test saw), SIP requests/responses and media packets
    move by what happened; calls_active back to 0; both records written."""
    gw, trunk = gateway_sdes, baresip_sdes
    _, before = scrape(gw)

    call = asyncio.run(_outgoing_answered(gw, trunk))
    setup_seen = call["setup_s"]

    async def rejected():
        peer = await BrowserPeer(gw.base_url, gw.login()).connect()
        try:
            await peer.barrier()
            trunk.dial(f"sip:{ACCOUNT}@127.0.0.1:{gw.sip_port}")
            inc = await peer.wait_incoming(10)
            await peer.reject()
            msg = await peer.wait_for({"hangup"}, 10, call_id=peer.call_id)
            return inc, msg
        finally:
            await peer.close()

    inc, rejected_hangup = asyncio.run(rejected())
    trunk.wait_received(status=486, timeout=10)
    out_row = wait_record(gw, lambda r: r["direction"] == "outgoing")
    in_row = wait_record(gw, lambda r: r["direction"] == "incoming")
    wait_until(lambda: msum(scrape(gw)[1], "gateway_calls_active") == 0, 5, "gateway_calls_active back to 0")
    text, after = scrape(gw)
    (workdir / "metrics.before-after.txt").write_text(text)

    def d(name, **labels):
        return msum(after, name, **labels) - msum(before, name, **labels)

    deltas = {
        "started_out": d("gateway_calls_started_total", direction="outgoing"),
        "started_in": d("gateway_calls_started_total", direction="incoming"),
        "connected_out": d("gateway_calls_connected_total", direction="outgoing"),
        "connected_in": d("gateway_calls_connected_total", direction="incoming"),
        "ended_out": d("gateway_calls_ended_total", direction="outgoing"),
        "ended_in": d("gateway_calls_ended_total", direction="incoming"),
        "ends_out_200_browser": d("gateway_call_ends_total", direction="outgoing", code="200", side="browser"),
        "ends_in_486_browser": d("gateway_call_ends_total", direction="incoming", code="486", side="browser"),
        "ends_all": d("gateway_call_ends_total"),
        "setup_count_out": d("gateway_call_setup_seconds_count", direction="outgoing"),
        "setup_count_in": d("gateway_call_setup_seconds_count", direction="incoming"),
        "setup_sum_out": d("gateway_call_setup_seconds_sum", direction="outgoing"),
        "setup_inf_out": d("gateway_call_setup_seconds_bucket", direction="outgoing", le="+Inf"),
        "sip_out_invite": d("gateway_sip_requests_total", direction="out", method="INVITE"),
        "sip_in_invite": d("gateway_sip_requests_total", direction="in", method="INVITE"),
        "sip_out_bye": d("gateway_sip_requests_total", direction="out", method="BYE"),
        "sip_in_200": d("gateway_sip_responses_total", direction="in", code="200"),
        "sip_out_486": d("gateway_sip_responses_total", direction="out", code="486"),
        "dtls_connected": d("gateway_media_dtls_connected_total"),
        "dtls_failed": d("gateway_media_dtls_failed_total"),
    }
    packets = {f"{leg}_{dr}": d("gateway_media_packets_total", leg=leg, direction=dr)
               for leg in ("browser", "trunk") for dr in ("in", "out")}
    octets = {f"{leg}_{dr}": d("gateway_media_bytes_total", leg=leg, direction=dr)
              for leg in ("browser", "trunk") for dr in ("in", "out")}
    buckets = sorted(((float(dict(lab)["le"]), v - before.get((n, lab), 0.0)) for (n, lab), v in after.items()
                      if n == "gateway_call_setup_seconds_bucket" and dict(lab)["direction"] == "outgoing"))
    save_result(workdir, deltas=deltas, packets=packets, bytes=octets, setup_buckets_delta=buckets,
                setup_seen_by_browser_s=round(setup_seen, 3), records=[out_row, in_row],
                rejected_hangup=rejected_hangup)

    exact = {"started_out": 1, "started_in": 1, "connected_out": 1, "connected_in": 0, "ended_out": 1,
             "ended_in": 1, "ends_out_200_browser": 1, "ends_in_486_browser": 1, "ends_all": 2,
             "setup_count_out": 1, "setup_count_in": 0, "setup_inf_out": 1, "dtls_failed": 0,
             "dtls_connected": 1}
    wrong = {k: (deltas[k], v) for k, v in exact.items() if deltas[k] != v}
    assert not wrong, f"metric deltas (got, expected): {wrong}"
    for k in ("sip_out_invite", "sip_in_invite", "sip_out_bye", "sip_in_200", "sip_out_486"):
        assert deltas[k] >= 1, f"{k} moved by {deltas[k]}"
    assert 0 < deltas["setup_sum_out"] <= setup_seen + 0.2, \
        f"setup histogram sum grew {deltas['setup_sum_out']:.3f}s; the browser saw {setup_seen:.3f}s"
    values = [v for _, v in buckets]
    assert values == sorted(values) and values[-1] == 1, f"histogram buckets not cumulative: {buckets}"
    first = next(le for le, v in buckets if v == 1)
    assert first >= deltas["setup_sum_out"], f"observation {deltas['setup_sum_out']} counted in le={first}"
    for k, v in packets.items():
        assert v > 100, f"gateway_media_packets_total {k} rose by {v}"
        assert octets[k] > v * 12, f"gateway_media_bytes_total {k} rose by {octets[k]} for {v} packets"
    assert msum(after, "gateway_calls_active") == 0
    assert msum(after, "gateway_websocket_sessions") == 0, "WebSocket sessions left after every peer closed"
    # the records agree with the metrics
    assert (out_row["cause_code"], out_row["hung_up_by"]) == (200, "browser"), out_row
    assert (in_row["cause_code"], in_row["hung_up_by"], in_row["answered_at"]) == (486, "browser", None), in_row
    assert in_row["id"] == inc["id"], (in_row, inc)
    assert rejected_hangup.get("code") == 486, rejected_hangup


# --------------------------------------------------------------------------
# 3. redaction


class Operator:
    """The operator API with a session cookie."""

    def __init__(self, gw: Gateway):
        self.gw = gw
        self.cookie = None
        self.bodies: dict[str, bytes] = {}  # every answer read, for the leak checks

    def request(self, method: str, path: str, body: Optional[dict] = None, timeout: float = 10,
                read_limit: Optional[int] = None) -> tuple[int, http.client.HTTPMessage, bytes]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.gw.https_port, context=unverified_ssl(),
                                           timeout=timeout)
        try:
            headers = {"Cookie": self.cookie} if self.cookie else {}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read(read_limit) if read_limit else resp.read()
            self.bodies[f"{method} {path} #{len(self.bodies)}"] = raw
            return resp.status, resp.msg, raw
        finally:
            conn.close()

    def login(self):
        status, headers, body = self.request("POST", "/api/admin/login", {"password": self.gw.operator_password})
        assert status == 200, f"operator sign-in: {status} {body[:200]!r}"
        cookie = headers.get("Set-Cookie", "")
        assert cookie.startswith("gw_admin="), cookie
        self.cookie = cookie.split(";", 1)[0]
        return self

    def get_json(self, path: str):
        status, _, body = self.request("GET", path)
        assert status == 200, f"GET {path}: {status} {body[:200]!r}"
        return json.loads(body)

    def stream_event(self, timeout: float = 5) -> bytes:
        """The first event of /api/stats/stream (Server-Sent Events)."""
        conn = http.client.HTTPSConnection("127.0.0.1", self.gw.https_port, context=unverified_ssl(),
                                           timeout=timeout)
        try:
            conn.request("GET", "/api/stats/stream", headers={"Cookie": self.cookie})
            resp = conn.getresponse()
            assert resp.status == 200, resp.status
            buf = b""
            while b"\n\n" not in buf.replace(b"\r\n", b"\n") or b"data:" not in buf:
                chunk = resp.fp.read1(65536) if hasattr(resp.fp, "read1") else resp.read(1)
                if not chunk:
                    break
                buf += chunk
            self.bodies[f"GET /api/stats/stream #{len(self.bodies)}"] = buf
            return buf
        finally:
            conn.close()


def sdes_keys(*peers: Baresip) -> list[str]:
    """Every inline: key of every a=crypto line in the peers' SIP traces."""
    keys = []
    for p in peers:
        for k in re.findall(r"^a=crypto:\d+ \S+ inline:([A-Za-z0-9+/=]+)", p.log(), re.M):
            if k not in keys:
                keys.append(k)
    return keys


def key_needles(key: str) -> dict[str, bytes]:
    """A key in every encoding it could be written in: the base64 text (and
    without padding, and URL-safe), the raw bytes (master key+salt, and the
    master key alone), hex lower and upper of both."""
    raw = base64.b64decode(key)
    out = {"base64": key.encode(), "base64_unpadded": key.rstrip("=").encode(),
           "base64url": base64.urlsafe_b64encode(raw).rstrip(b"="), "raw": raw}
    for name, b in (("keysalt", raw), ("masterkey", raw[:16])):
        out[f"raw_{name}"] = b
        out[f"hex_{name}"] = b.hex().encode()
        out[f"HEX_{name}"] = b.hex().upper().encode()
        out[f"b64_{name}"] = base64.b64encode(b).rstrip(b"=")
    return out


def number_needles(number: str) -> dict[str, bytes]:
    """A number as text: its digits (which also catch '+', '%2B' and
    'tel:' forms), in UTF-8 and UTF-16."""
    digits = number.lstrip("+")
    return {"utf8": digits.encode(), "utf16le": digits.encode("utf-16-le"), "utf16be": digits.encode("utf-16-be")}


def files_under(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def find_leaks(haystacks: dict[str, bytes], needles: dict[str, bytes]) -> list[str]:
    return [f"{needle} in {where}" for where, data in haystacks.items() for needle, n in needles.items()
            if n in data]


def test_redaction(workdir, start_baresip, start_gateway, monkeypatch):
    """alice has `redact = true`; the gateway logs at debug. She calls
    +4930123456789 (a baresip trunk named after it) and answers a call from
    +4917612345678 (a second baresip). Afterwards neither number (as digits,
    so '+', %2B and tel: forms too; UTF-8 and UTF-16) is in any gateway log
    line, any file under data_dir (the SQLite database, its -wal and -shm
    read as bytes while the gateway runs and after it stopped), any
    /api/stats, /api/stats/calls/{id} (live and ended) or stream answer, or
    any page; the records hold the masked forms +4930*******89 and
    +4917*******78. No SDES key of the SIP traffic (baresip's trace) is in
    the gateway's log, data_dir or API answers in any encoding."""
    monkeypatch.setenv("RUST_LOG", "debug")
    trunk = start_baresip(user=DIALLED, name="trunk")
    caller = start_baresip(user=CALLER, name="caller")
    gw = start_gateway(sdes_trunk(trunk), redact=True, operator_password="op-" + workdir.name[-8:])
    op = Operator(gw).login()
    live_reads = {}

    def read_live(call_id):
        # while the call is up: the stats, the live call's detail (with its SDPs), the stream
        stats = op.get_json("/api/stats")
        live = stats.get("calls") or []
        assert live, f"/api/stats lists no live call during the call: {stats}"
        for c in live:
            cid = c.get("id")
            if cid:
                live_reads[cid] = op.get_json(f"/api/stats/calls/{cid}")
        op.stream_event()

    asyncio.run(_outgoing_answered(gw, trunk, number=DIALLED, packets=100, on_live=read_live))
    out_row = wait_record(gw, lambda r: r["direction"] == "outgoing")
    incoming, connected, hangup, _ = asyncio.run(
        _incoming_answered(gw, caller, hangup_by="browser", on_live=read_live))
    in_row = wait_record(gw, lambda r: r["direction"] == "incoming")

    # ended calls: the list and each call's detail
    stats = op.get_json("/api/stats")
    for row in (out_row, in_row):
        op.get_json(f"/api/stats/calls/{row['id']}")
    for page in ("/", "/stats", "/stats.js", "/stats.css", "/metrics"):
        op.request("GET", page)

    running_files = files_under(gw.data_dir)
    log_running = gw.log_path.read_bytes()
    keys = sdes_keys(trunk, caller)
    code = gw.stop()
    stopped_files = files_under(gw.data_dir)
    logs = {"gateway.log": gw.log_path.read_bytes()}
    api_dir = workdir / "api"
    api_dir.mkdir(exist_ok=True)
    for name, body in op.bodies.items():
        (api_dir / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)).write_bytes(body)
    save_result(workdir, records=[out_row, in_row], incoming_from=incoming.get("from"),
                live_detail_ids=sorted(live_reads), sdes_keys_found=len(keys),
                data_dir_running=sorted(running_files), data_dir_stopped=sorted(stopped_files),
                api_reads=sorted(op.bodies), log_bytes=len(logs["gateway.log"]))
    assert code == 0, f"gateway exit {code}"

    # the masked forms are what the records hold
    assert out_row["remote"] == DIALLED_MASKED, out_row
    assert in_row["remote"] == CALLER_MASKED, in_row
    assert in_row["id"] == incoming["id"] and len(live_reads) >= 2, (in_row["id"], sorted(live_reads))
    ended_remotes = {c.get("id"): c.get("remote") for c in stats.get("ended") or []}
    assert ended_remotes.get(out_row["id"]) == DIALLED_MASKED, stats.get("ended")
    assert ended_remotes.get(in_row["id"]) == CALLER_MASKED, stats.get("ended")
    # the numbers appear nowhere
    haystacks = {**{f"data_dir (running)/{k}": v for k, v in running_files.items()},
                 **{f"data_dir (stopped)/{k}": v for k, v in stopped_files.items()},
                 "gateway.log (running)": log_running, **logs, **op.bodies}
    assert any(k.endswith(CDR_FILE) for k in running_files), sorted(running_files)
    assert any(k.endswith(CDR_FILE + "-wal") for k in running_files), \
        f"no WAL file while the gateway runs: {sorted(running_files)}"
    # ... and the masked form is in the database (while running: WAL or main file)
    db_bytes = b"".join(v for k, v in running_files.items() if CDR_FILE in k)
    assert DIALLED_MASKED.encode() in db_bytes and CALLER_MASKED.encode() in db_bytes
    assert len(keys) >= 4, f"expected the offer's and answer's keys of two SDES calls, found {keys}"
    # neither number anywhere; no SDES key of either call in any encoding.
    # Every leak is listed before failing, with a few bytes around it.
    leaks = []
    for number in (DIALLED, CALLER):
        leaks += [f"{number}: {x}" for x in find_leaks(haystacks, number_needles(number))]
    for key in keys:
        leaks += [f"SDES key {key[:6]}...: {x}" for x in find_leaks(haystacks, key_needles(key))]
    contexts = {}
    for where, data in haystacks.items():
        for number in (DIALLED, CALLER):
            i = data.find(number.lstrip("+").encode())
            if i >= 0:
                contexts[where] = data[max(0, i - 80):i + 40].decode("utf-8", "replace")
    save_result(workdir, leaks=leaks, leak_contexts=contexts)
    assert not leaks, f"{len(leaks)} leaks: {leaks}; around them: {contexts}"


# --------------------------------------------------------------------------
# 4. right of access and right to erasure through the CLI


CSV_HEADER = ["id", "direction", "account", "remote", "trunk", "sip_call_id", "started_at", "answered_at",
              "ended_at", "duration_s", "cause_code", "cause", "hung_up_by", "codec", "browser_security",
              "trunk_security", "private", "browser_packets_in", "browser_packets_out", "browser_bytes_in",
              "browser_bytes_out", "browser_drops_total", "trunk_packets_in", "trunk_packets_out",
              "trunk_bytes_in", "trunk_bytes_out", "trunk_drops_total", "transferred_to",
              "transfer_sip_call_id"]


def test_export_and_purge_cli(workdir, start_baresip, start_gateway):
    """After a call by an account with a distinctive name: `cdr export`
    (JSON and CSV) while the gateway runs prints that call; `account purge`
    while the gateway runs replaces the name by `erased-<8 hex>`, blanks the
    remote party and SIP Call-ID, prints the count; right after it (gateway
    still running) and again after the gateway stopped, neither the name,
    the dialled number, the Call-ID nor the call's original id is anywhere
    in the database's bytes (main file, -wal, -shm); the audit log has one
    row per export and the erasure, who = cli:$USER."""
    account = "zoe-cdr-erasure-7q"
    number = "7305551234567"
    trunk = start_baresip(user=number)
    gw = start_gateway(sdes_trunk(trunk), account=account)
    asyncio.run(_outgoing_answered(gw, trunk, number=number, packets=50))
    row = wait_record(gw)
    env = {"USER": "records-test"}

    out_json = gw.cli("cdr", "export", "--account", account, "--format", "json", env=env)
    out_csv = gw.cli("cdr", "export", "--account", account, "--format", "csv", env=env)
    assert out_json.returncode == 0, out_json.stderr.decode()
    assert out_csv.returncode == 0, out_csv.stderr.decode()
    exported = json.loads(out_json.stdout)
    lines = list(csv.reader(io.StringIO(out_csv.stdout.decode())))
    purge = gw.cli("account", "purge", account, env=env)
    purge_out = purge.stdout.decode() + purge.stderr.decode()
    db_running = {k: v for k, v in files_under(gw.data_dir).items() if CDR_FILE in k}
    purged_rows = calls(gw)
    audits = audit_rows(gw)
    code = gw.stop()
    db_stopped = {k: v for k, v in files_under(gw.data_dir).items() if CDR_FILE in k}
    after_stop_rows = calls(gw)
    save_result(workdir, row=row, exported=exported, csv=lines, purge_exit=purge.returncode, purge_out=purge_out,
                purged_rows=purged_rows, audit=audits, db_files_running=sorted(db_running),
                db_files_stopped=sorted(db_stopped))
    assert code == 0, f"gateway exit {code}"

    # right of access
    assert isinstance(exported, list) and len(exported) == 1, exported
    e = exported[0]
    assert (e["id"], e["account"], e["remote"], e["direction"]) == (row["id"], account, number, "outgoing"), e
    assert e["cause_code"] == 200 and e["hung_up_by"] == "browser" and e["sip_call_id"] == row["sip_call_id"], e
    assert e["duration_s"] and e["duration_s"] > 1, e
    assert lines[0] == CSV_HEADER, lines[0]
    assert len(lines) == 2 and lines[1][0] == row["id"] and lines[1][2] == account, lines
    # right to erasure
    assert purge.returncode == 0, purge_out
    assert re.search(r"\b1\b", purge.stdout.decode()), f"purge did not print the count of 1: {purge_out!r}"
    assert len(purged_rows) == 1, purged_rows
    p = purged_rows[0]
    assert re.fullmatch(r"erased-[0-9a-f]{8}", p["account"]), p
    assert (p["remote"], p["sip_call_id"]) == ("", ""), p
    assert p["id"] != row["id"], p
    # what billing needs is kept
    for k in ("started_at", "answered_at", "ended_at", "cause_code", "trunk", "codec", "trunk_packets_out"):
        assert p[k] == row[k], (k, p[k], row[k])
    assert after_stop_rows == purged_rows, (after_stop_rows, purged_rows)
    # audit: export json, export csv, erase; all by cli:records-test, subject the pseudonym
    actions = [(a["who"], a["action"], a["subject"]) for a in audits]
    expected = [("cli:records-test", "export", p["account"])] * 2 + [("cli:records-test", "erase", p["account"])]
    assert actions[-3:] == expected, actions
    assert "json" in audits[-3]["detail"] and "csv" in audits[-2]["detail"], audits
    # no trace left in the file, while the gateway ran and after it stopped
    needles = {"account": account.encode(), "number": number.encode(), "call_id": row["sip_call_id"].encode(),
               "id": row["id"].encode()}
    for state, files in (("gateway running", db_running), ("gateway stopped", db_stopped)):
        leaks = find_leaks(files, needles)
        assert not leaks, f"after the purge ({state}): {leaks}"


# --------------------------------------------------------------------------
# Grafana dashboard


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan", "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression: identifiers that are
    neither functions/aggregations (followed by '('), keywords, label names
    (inside {} or after by/without), nor in a string, duration or variable."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # strings
    e = re.sub(r"\$\{[^}]*\}|\$\w+", "1", e)                 # dashboard variables
    e = re.sub(r"\{[^}]*\}", "", e)                          # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                          # ranges, subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)  # label lists
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        rest = e[m.end():].lstrip()
        word = m.group(0)
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        if m.start() > 0 and (e[m.start() - 1].isdigit() or e[m.start() - 1] == "."):
            continue  # 1e3, 0.95
        names.add(word)
    return names


def dashboard_panels(d: dict) -> list[dict]:
    out = []
    for p in d.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows
    return out


def test_grafana_dashboard(workdir, start_baresip, start_gateway):
    """deploy/grafana/webrtc-sip-gateway.json loads; it asks for a
    Prometheus datasource input DS_PROMETHEUS and every query panel uses it;
    panel ids are unique and panels do not overlap; every metric name its
    PromQL (and its variables) uses has samples in a live gateway's
    /metrics (after one call, with the trunk OPTIONS-probed every second, so
    that every family the dashboard shows has samples); and together the
    panels cover active calls, call rate, ends by code (top N), setup
    p50/p95 from the histogram, media packets/bytes/drops, SIP
    requests/responses, DTLS failures, WebSocket sessions and trunk health."""
    trunk = start_baresip()
    spec = sdes_trunk(trunk)
    spec.options_interval = 1
    gw = start_gateway(spec)
    asyncio.run(_outgoing_answered(gw, trunk, packets=50))
    wait_record(gw)
    wait_until(lambda: msum(scrape(gw)[1], "gateway_trunk_up", trunk="carrier") == 1, 10,
               'gateway_trunk_up{trunk="carrier"} 1 (baresip answers OPTIONS)')
    text, samples = scrape(gw)
    (workdir / "metrics.txt").write_text(text)
    served = {n for n, _ in samples}

    d = json.loads(DASHBOARD.read_text())
    assert d.get("schemaVersion", 0) >= 36, d.get("schemaVersion")
    assert d.get("title") and d.get("uid"), (d.get("title"), d.get("uid"))
    inputs = {i["name"]: i for i in d.get("__inputs", [])}
    assert inputs.get("DS_PROMETHEUS", {}).get("pluginId") == "prometheus", d.get("__inputs")
    panels = dashboard_panels(d)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    boxes = [(p["title"], p["gridPos"]) for p in panels]
    for i, (ta, a) in enumerate(boxes):
        assert a["x"] + a["w"] <= 24, f"panel {ta!r} is wider than the grid: {a}"
        for tb, b in boxes[i + 1:]:
            overlap = (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
                       and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])
            assert not overlap, f"panels {ta!r} {a} and {tb!r} {b} overlap"
    used: dict[str, set] = {}
    for p in panels:
        if p.get("type") == "row":
            continue
        assert p.get("gridPos") and p.get("title"), p
        ds = p.get("datasource") or {}
        assert ds.get("uid") == "${DS_PROMETHEUS}", f"panel {p['title']!r} datasource {ds}"
        targets = p.get("targets") or []
        assert targets, f"panel {p['title']!r} has no query"
        for t in targets:
            expr = t.get("expr", "")
            assert expr and expr.count("(") == expr.count(")"), f"panel {p['title']!r}: {expr!r}"
            assert (t.get("datasource") or ds).get("uid") == "${DS_PROMETHEUS}", t
            for name in promql_metric_names(expr):
                used.setdefault(name, set()).add(p["title"])
    for v in (d.get("templating") or {}).get("list", []):
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        for name in re.findall(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*[,{]", q):
            used.setdefault(name, set()).add(f"variable {v.get('name')}")
    unknown = {n: sorted(t) for n, t in used.items() if n not in served}
    save_result(workdir, panels=[p.get("title") for p in panels], metrics_used=sorted(used), unknown=unknown)
    assert not unknown, f"dashboard queries metrics without samples in the gateway's /metrics: {unknown}"
    exprs = " ".join(t.get("expr", "") for p in panels for t in p.get("targets") or [])
    for needed in ("gateway_calls_active", "gateway_calls_started_total", "gateway_call_ends_total",
                   "gateway_media_packets_total", "gateway_media_bytes_total", "gateway_media_drops_total",
                   "gateway_sip_requests_total", "gateway_sip_responses_total",
                   "gateway_media_dtls_failed_total", "gateway_websocket_sessions", "gateway_trunk_up"):
        assert needed in used, f"no panel shows {needed}"
    for q in ("0.5", "0.95"):
        assert re.search(rf"histogram_quantile\(\s*{re.escape(q)}\s*,[^;]*gateway_call_setup_seconds_bucket",
                         exprs), f"no p{q} setup-time panel from the histogram"
    assert re.search(r"by \(code\)|by \(code,|, code\)", exprs), "no panel splits call ends by code"
    assert re.search(r"topk\(", exprs), "call ends by code: no top-N"
