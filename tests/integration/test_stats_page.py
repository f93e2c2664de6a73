"""The operator's stats page (/stats) and its API against the real gateway.

The gateway runs with `server.admin_password_hash`; an aiortc browser calls
the SDES baresip trunk through it while Debian's Chromium watches /stats
(tests/e2e/chromium-stats.mjs). The API contract (sign-in, cookie, 401s,
the event stream, the detail of a call, the rate limit on sign-in) is checked
over plain HTTPS too.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import time
from pathlib import Path
from typing import Optional

import pytest

from conftest import TRUNK_NUMBER
from harness import (
    REPO,
    BrowserPeer,
    Gateway,
    TrunkSpec,
    hash_password,
    save_result,
    toml_str,
    unverified_ssl,
)

pytestmark = [pytest.mark.gateway, pytest.mark.chromium]

SCRIPT = REPO / "tests" / "e2e" / "chromium-stats.mjs"
WEB = REPO / "web-client"


class AdminGateway(Gateway):
    """The harness's gateway with `admin_password_hash` under [server]."""

    def __init__(self, *args, admin_password: Optional[str] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.admin_password = admin_password or os.urandom(9).hex()

    def write_config(self):
        super().write_config()
        text = self.config_path.read_text()
        assert text.startswith("[server]\n"), text[:200]
        line = f"admin_password_hash = {toml_str(hash_password(self.admin_password))}"
        self.config_path.write_text(text.replace("[server]\n", f"[server]\n{line}\n", 1))

    def request(self, method: str, path: str, body: Optional[dict] = None, cookie: Optional[str] = None,
                timeout: float = 10) -> tuple[int, http.client.HTTPMessage, bytes]:
        """(status, headers, body): the harness's `http` gives no headers."""
        conn = http.client.HTTPSConnection("127.0.0.1", self.https_port, context=unverified_ssl(), timeout=timeout)
        try:
            headers = {}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            if cookie:
                headers["Cookie"] = cookie
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.msg, resp.read()
        finally:
            conn.close()


@pytest.fixture
def admin_gateway(workdir, baresip_sdes):
    """gateway_sdes (conftest.py) with an operator password."""
    trunk = TrunkSpec("carrier", f"sip:127.0.0.1:{baresip_sdes.sip_port};transport=udp",
                      callee_stream="sdes", secure_media="mandatory")
    gw = AdminGateway(workdir, trunk=trunk)
    gw.start()
    try:
        yield gw
    finally:
        code = gw.stop()
    assert code == 0, f"gateway did not exit 0 on SIGTERM (exit {code}); log: {gw.log_path}"
    assert "panicked" not in gw.log(), f"gateway panicked; log: {gw.log_path}"


# --------------------------------------------------------------------------


async def _drive(gw: AdminGateway, trunk, artifacts: Path, log_path: Path) -> tuple[int, dict, list[str]]:
    """Runs chromium-stats.mjs; answers its ACTION lines with a real call.
    Returns (exit code, its JSON summary, its output lines)."""
    env = dict(os.environ)
    env.update(
        GATEWAY_URL=gw.base_url,
        ADMIN_PASSWORD=gw.admin_password,
        ARTIFACT_DIR=str(artifacts),
        EXPECT_ACCOUNT=gw.account,
        EXPECT_TRUNK="carrier",
        EXPECT_BROWSER_SECURITY="dtls-srtp",
        EXPECT_TRUNK_SECURITY="sdes-srtp",
    )
    proc = await asyncio.create_subprocess_exec(
        shutil.which("node"), str(SCRIPT), cwd=str(REPO), env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out: list[str] = []
    peer: Optional[BrowserPeer] = None
    timings: dict = {}

    async def reply(line: str):
        proc.stdin.write(f"{line}\n".encode())
        await proc.stdin.drain()

    try:
        with open(log_path, "w") as log:
            deadline = time.monotonic() + 200
            while True:
                left = deadline - time.monotonic()
                assert left > 0, "chromium-stats.mjs ran over 200 s"
                raw = await asyncio.wait_for(proc.stdout.readline(), left)
                if not raw:
                    break
                line = raw.decode(errors="replace").rstrip("\n")
                out.append(line)
                log.write(line + "\n")
                log.flush()
                if line == "ACTION call":
                    try:
                        peer = await BrowserPeer(gw.base_url, gw.login()).connect()
                        sent_at: dict = {}
                        plain_send = peer.send

                        async def timed_send(msg, plain_send=plain_send, sent_at=sent_at):
                            if msg.get("type") == "call":
                                sent_at["ms"] = time.time() * 1000  # the page's row is timed from here
                            await plain_send(msg)

                        peer.send = timed_send
                        t0 = time.monotonic()
                        connected = await peer.call(TRUNK_NUMBER)
                        assert connected["type"] == "connected", f"expected connected, got {connected}"
                        timings["connected_s"] = time.monotonic() - t0
                        await asyncio.to_thread(trunk.wait_established)
                        await peer.receive(25, timeout=15)  # media flows both ways before the page looks
                        await reply("OK " + json.dumps({"placed_at_ms": sent_at["ms"], "call_id": peer.call_id,
                                                        "security": connected.get("security")}))
                    except Exception as err:  # the script must not wait forever
                        await reply(f"FAIL {type(err).__name__}: {err}")
                        raise
                elif line == "ACTION hangup":
                    assert peer is not None
                    await peer.hangup()
                    await asyncio.to_thread(trunk.wait_bye)
                    await reply("OK")
        rc = await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if peer is not None:
            await peer.close()
    summary = {}
    for line in reversed(out):
        if line.startswith("{"):
            summary = json.loads(line)
            break
    summary["python"] = timings
    return rc, summary, out


@pytest.mark.timeout(300)
def test_stats_page_live_call(workdir, admin_gateway, baresip_sdes):
    """Chromium signs in to /stats (a wrong admin password is refused first);
    a call from the aiortc browser to the SDES trunk shows up within 2 s of
    its `call` message, with dtls-srtp / sdes-srtp once connected and packet
    counters rising between two refreshes without a reload; its detail view
    has the SDPs (no SDES key) and the SIP ladder; after the hang-up it is
    among the ended calls (within 10 s: the gateway lists it once the BYE
    transaction is over). Screenshots in
    tests/artifacts/test_stats_page_live_call/chromium/."""
    assert SCRIPT.exists(), f"{SCRIPT} is missing"
    assert (SCRIPT.parent / "node_modules").exists(), "run `npm ci` in tests/e2e first (tests/run-all.sh does)"
    assert shutil.which("node"), "node is not installed"
    artifacts = workdir / "chromium"
    artifacts.mkdir()
    rc, summary, out = asyncio.run(_drive(admin_gateway, baresip_sdes, artifacts, workdir / "chromium-stats.log"))
    save_result(workdir, chromium=summary)
    assert rc == 0, f"chromium-stats.mjs exited {rc}:\n" + "\n".join(out[-60:])
    assert (artifacts / "stats-real-live.png").exists(), f"no screenshot in {artifacts}"
    assert summary["rowMs"] <= 2000, summary


@pytest.mark.timeout(180)
def test_stats_api_contract(workdir, admin_gateway):
    """The API behind the page, over HTTPS: the page and its files are
    served; everything under /api/stats is 401 without the session cookie; a
    wrong admin password is 401; the right one sets a Secure, HttpOnly,
    SameSite=Strict cookie; /api/stats has the documented fields; the stream
    sends `event: stats` within 2 s; an unknown call is 404; sign-out ends the
    session; repeated wrong passwords get 429 with Retry-After."""
    gw = admin_gateway
    found: dict = {}

    for path, kind, local in [("/stats", "text/html", "stats.html"), ("/stats.js", "javascript", "stats.js"),
                              ("/stats.css", "text/css", "stats.css"),
                              ("/vendor/uplot.min.js", "javascript", "vendor/uplot.min.js"),
                              ("/vendor/uplot.min.css", "text/css", "vendor/uplot.min.css")]:
        status, headers, body = gw.request("GET", path)
        assert status == 200, f"GET {path}: {status}"
        assert kind in (headers.get("Content-Type") or ""), f"GET {path}: Content-Type {headers.get('Content-Type')}"
        assert body == (WEB / local).read_bytes(), f"GET {path} is not web-client/{local} (rebuild the gateway)"

    for path in ["/api/stats", "/api/stats/stream", "/api/stats/calls/nope"]:
        status, _, _ = gw.request("GET", path)
        assert status == 401, f"GET {path} without a session: {status}"

    status, headers, body = gw.request("POST", "/api/admin/login", {"password": gw.admin_password + "x"})
    found["wrong_password"] = [status, body.decode(errors="replace")[:200]]
    assert status == 401, f"wrong admin password: {status} {body[:200]!r}"
    assert "error" in json.loads(body or b"{}"), f"401 without an error field: {body[:200]!r}"
    assert not headers.get_all("Set-Cookie"), f"a refused sign-in set a cookie: {headers.get_all('Set-Cookie')}"

    status, headers, body = gw.request("POST", "/api/admin/login", {"password": gw.admin_password})
    assert status == 200, f"admin sign-in: {status} {body[:200]!r}"
    assert json.loads(body).get("ok") is True, body[:200]
    cookies = headers.get_all("Set-Cookie") or []
    found["set_cookie"] = [c.split("=", 1)[0] + "=…; " + "; ".join(p.strip() for p in c.split(";")[1:]) for c in cookies]
    assert len(cookies) == 1, f"Set-Cookie: {found['set_cookie']}"
    flags = {p.strip().split("=")[0].lower(): p.strip() for p in cookies[0].split(";")[1:]}
    assert "secure" in flags and "httponly" in flags, f"cookie flags: {found['set_cookie']}"
    assert flags.get("samesite", "").lower() == "samesite=strict", f"cookie flags: {found['set_cookie']}"
    cookie = cookies[0].split(";")[0]

    status, _, body = gw.request("GET", "/api/stats", cookie=cookie)
    assert status == 200, f"GET /api/stats signed in: {status}"
    stats = json.loads(body)
    found["stats_keys"] = sorted(stats)
    for key, kind in [("generated_at", str), ("version", str), ("uptime_s", (int, float)), ("calls_active", int),
                      ("packets_per_second", (int, float)), ("history", list), ("trunks", list), ("bans", list),
                      ("calls", list), ("ended", list)]:
        assert isinstance(stats.get(key), kind), f"/api/stats {key} = {stats.get(key)!r}"
    assert [t.get("name") for t in stats["trunks"]] == ["carrier"], stats["trunks"]
    found["trunks"] = stats["trunks"]
    found["history_points"] = len(stats["history"])
    assert all({"t", "calls", "pps"} <= set(p) for p in stats["history"]), stats["history"][:3]

    # The event stream: `event: stats` with the same JSON, within 2 s.
    conn = http.client.HTTPSConnection("127.0.0.1", gw.https_port, context=unverified_ssl(), timeout=5)
    try:
        conn.request("GET", "/api/stats/stream", headers={"Cookie": cookie, "Accept": "text/event-stream"})
        resp = conn.getresponse()
        assert resp.status == 200, f"GET /api/stats/stream: {resp.status}"
        assert "text/event-stream" in (resp.getheader("Content-Type") or ""), resp.getheader("Content-Type")
        t0 = time.monotonic()
        events = []
        event, data = None, []
        while len(events) < 2 and time.monotonic() - t0 < 4:
            line = resp.readline().decode().rstrip("\r\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif line == "" and data:
                events.append((event, json.loads("\n".join(data)), time.monotonic() - t0))
                event, data = None, []
        found["stream_events"] = [(e, round(t, 2)) for e, _, t in events]
        assert events and events[0][0] == "stats", f"stream events: {found['stream_events']}"
        assert events[0][2] < 2.0, f"first event after {events[0][2]:.2f} s"
        assert "calls" in events[0][1] and "generated_at" in events[0][1], sorted(events[0][1])
        assert len(events) == 2 and 0.5 < events[1][2] - events[0][2] < 1.6, f"stream cadence: {found['stream_events']}"
    finally:
        conn.close()

    status, _, _ = gw.request("GET", "/api/stats/calls/no-such-call", cookie=cookie)
    assert status == 404, f"unknown call: {status}"

    status, headers, _ = gw.request("POST", "/api/admin/logout", cookie=cookie)
    assert status == 200, f"logout: {status}"
    found["logout_set_cookie"] = headers.get_all("Set-Cookie")
    status, _, _ = gw.request("GET", "/api/stats", cookie=cookie)
    assert status == 401, f"GET /api/stats with the cookie of a signed-out session: {status}"

    # Too many wrong passwords: 429 with Retry-After (seconds).
    answers = []
    retry_after = None
    for i in range(40):
        status, headers, _ = gw.request("POST", "/api/admin/login", {"password": f"wrong-{i}"})
        answers.append(status)
        if status == 429:
            retry_after = headers.get("Retry-After")
            break
        assert status == 401, f"wrong password #{i + 1}: {status}"
    found["rate_limit"] = {"answers": answers, "retry_after": retry_after}
    save_result(workdir, **found)
    assert answers[-1] == 429, f"no 429 after {len(answers)} wrong passwords: {answers}"
    assert retry_after and retry_after.strip().isdigit() and int(retry_after) > 0, f"Retry-After {retry_after!r}"
    # The right password is refused too while the source is held back.
    status, headers, _ = gw.request("POST", "/api/admin/login", {"password": gw.admin_password})
    assert status == 429, f"the right password during the back-off: {status}"
