"""Several gateway nodes as one (issue 15): Debian's Kamailio in front for
SIP with deploy/cluster/kamailio.cfg, HAProxy in front of the nodes' HTTPS
ports with deploy/cluster/haproxy.cfg (the very files the demo uses, given
their addresses with `kamailio -A` and HAProxy's environment), two gateway
nodes with [cluster] registrar, baresip as the carrier behind Kamailio.

Each node REGISTERs sip:alice@DOMAIN at Kamailio while a session of alice is
open on it; Kamailio forks baresip's INVITE to every such node. Artifacts:
tests/artifacts/<test>/{a,b}/gateway.log, kamailio/kamailio.log,
haproxy/haproxy.log, trunk/baresip.log.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

import pytest

from harness import (
    BrowserPeer,
    Gateway,
    TrunkSpec,
    free_port,
    save_result,
    wait_until,
)
from test_calls import _audio_call, _check_media
from conftest import TRUNK_NUMBER

pytestmark = pytest.mark.gateway

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "cluster"
ACCOUNT = "alice"
DOMAIN = "gw.example"


class Kamailio:
    """kamailio -f deploy/cluster/kamailio.cfg on 127.0.0.1:port, with a
    dispatcher list of the carrier (set 1) and the nodes (set 2)."""

    def __init__(self, workdir: Path):
        self.dir = workdir / "kamailio"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port(socket.SOCK_DGRAM)
        self.ctl = self.dir / "ctl"
        self.log_path = self.dir / "kamailio.log"
        self.proc: Optional[subprocess.Popen] = None

    def start(self, carrier_port: int, node_ports: list[int]):
        lines = [f"1 sip:127.0.0.1:{carrier_port}"] + [f"2 sip:127.0.0.1:{p} 8" for p in node_ports]
        (self.dir / "dispatcher.list").write_text("\n".join(lines) + "\n")
        cmd = ["kamailio", "-f", str(DEPLOY / "kamailio.cfg"), "-DD", "-E", "-Y", str(self.dir),
               "-P", str(self.dir / "kamailio.pid"),
               "-A", f"LISTEN=udp:127.0.0.1:{self.port}",
               "-A", f'DS_LIST="{self.dir / "dispatcher.list"}"',
               "-A", f'CTL_SOCK="unix:{self.ctl}"',
               "-A", "DS_PING=1"]
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.dir)
        log.close()
        wait_until(lambda: self.rpc("core.version") is not None, 10, f"kamailio up ({self.log_path})")
        return self

    def rpc(self, *args: str) -> Optional[str]:
        if self.proc and self.proc.poll() is not None:
            raise AssertionError(f"kamailio exited {self.proc.returncode}: {self.log_path}")
        r = subprocess.run(["kamcmd", "-s", f"unix:{self.ctl}", *args], capture_output=True, text=True,
                           timeout=5)
        return r.stdout if r.returncode == 0 else None

    def contacts(self, account: str = ACCOUNT) -> list[str]:
        """The Contact addresses of `account`'s bindings (kamcmd ul.dump)."""
        dump = self.rpc("ul.dump") or ""
        out, current = [], None
        for line in dump.splitlines():
            m = re.search(r"\bAoR:\s*(\S+)", line, re.I)
            if m:
                current = m.group(1)
            m = re.search(r"\bAddress:\s*(\S+)", line)
            if m and current is not None and current.split("@")[0] == account:
                out.append(m.group(1))
        return out

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Haproxy:
    """haproxy -f deploy/cluster/haproxy.cfg on 127.0.0.1:port."""

    def __init__(self, workdir: Path):
        self.dir = workdir / "haproxy"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = self.dir / "haproxy.log"
        self.proc: Optional[subprocess.Popen] = None

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self, nodes: list[Gateway]):
        env = dict(os.environ, WSS_BIND=f"127.0.0.1:{self.port}",
                   NODE_A=f"127.0.0.1:{nodes[0].https_port}", NODE_B=f"127.0.0.1:{nodes[1].https_port}")
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(DEPLOY / "haproxy.cfg")], env=env,
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def listening():
            if self.proc.poll() is not None:
                raise AssertionError(f"haproxy exited {self.proc.returncode}: {self.log_path}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return True
            except OSError:
                return False

        wait_until(listening, 10, "haproxy listening")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def cluster(workdir, baresip_sdes):
    """Kamailio, two nodes (a, b) whose trunk is Kamailio, HAProxy; baresip
    (srtp-mand) is Kamailio's carrier. Yields (kamailio, a, b, haproxy)."""
    for tool in ("kamailio", "kamcmd", "haproxy"):
        assert shutil.which(tool), f"{tool} is not installed (apt-get install kamailio haproxy)"
    kam = Kamailio(workdir)
    trunk = TrunkSpec("proxy", f"sip:127.0.0.1:{kam.port};transport=udp",
                      callee_stream="sdes", secure_media="mandatory")
    secret, password = os.urandom(24).hex(), os.urandom(9).hex()
    nodes = [Gateway(workdir, trunk=trunk, name=name, password=password, token_secret=secret,
                     cluster={"registrar": f"sip:127.0.0.1:{kam.port}", "domain": DOMAIN,
                              "drain_seconds": 2})
             for name in ("a", "b")]
    started = []
    try:
        kam.start(baresip_sdes.sip_port, [n.sip_port for n in nodes])
        for n in nodes:
            started.append(n.start())
        lb = Haproxy(workdir).start(nodes)
        try:
            yield kam, nodes[0], nodes[1], lb
        finally:
            lb.stop()
    finally:
        for n in started:
            code = n.stop()
            assert code == 0, f"node did not exit 0 on SIGTERM (exit {code}): {n.log_path}"
            assert "panicked" not in n.log(), n.log_path
        kam.stop()


def contact_of(node: Gateway) -> str:
    return f"sip:{ACCOUNT}@127.0.0.1:{node.sip_port}"


def wait_bindings(kam: Kamailio, nodes: list[Gateway]):
    want = sorted(contact_of(n) for n in nodes)

    def ok():
        have = sorted(c.split(";")[0] for c in kam.contacts())
        return have == want

    wait_until(ok, 10, f"kamailio's location = {want} (ul.dump: {kam.contacts()})")


async def session(base_url: str, token: str) -> BrowserPeer:
    p = await BrowserPeer(base_url, token).connect()
    await p.barrier()
    return p


def sessions_on(node: Gateway) -> float:
    return node.metrics().sum("gateway_websocket_sessions")


async def _fork_to_both(kam, a, b, lb, trunk):
    # The first session through HAProxy (on whichever node it picks), the
    # second straight on the other node.
    first = await session(lb.base_url, a.login())
    on_a = sessions_on(a) == 1
    first_node, other_node = (a, b) if on_a else (b, a)
    assert sessions_on(first_node) == 1 and sessions_on(other_node) == 0
    second = await session(other_node.base_url, other_node.login())
    try:
        wait_bindings(kam, [a, b])
        trunk.dial(f"sip:{ACCOUNT}@127.0.0.1:{kam.port}")
        for p in (first, second):
            msg = await p.wait_incoming(10)
            assert msg["type"] == "incoming", msg
        await first.accept()
        connected = await first.wait_for({"connected"}, 20, call_id=first.call_id)
        assert connected["type"] == "connected", connected
        # The losing node got Kamailio's CANCEL with RFC 3326's
        # Reason: SIP;cause=200: its session stops ringing, told why.
        lost = await second.wait_for({"hangup"}, 10)
        assert lost["type"] == "hangup" and lost.get("code") == 200, lost
        assert "elsewhere" in str(lost.get("reason", "")), lost
        trunk.wait_established()
        await first.receive(150, timeout=20)
        trunk.wait_heard_seconds(2.0, timeout=20, gateway=first_node)
        received, sent = await first.stats()
        result = {"received": received, "sent": sent, "rms": first.sink.rms}
        await first.hangup()
        trunk.wait_bye()
        return result, first_node
    finally:
        for p in (first, second):
            await p.close()


def test_cluster_forks_to_every_node_with_a_session(workdir, cluster, baresip_sdes):
    """alice on node A (through HAProxy) and on node B: both nodes hold a
    binding at Kamailio, baresip's call rings both sessions, the first
    accepts (audio both ways), the other stops ringing (hangup: Kamailio
    CANCELs the losing branch);
    the browser's hangup reaches baresip as BYE."""
    kam, a, b, lb = cluster
    result, winner = asyncio.run(_fork_to_both(kam, a, b, lb, baresip_sdes))
    save_result(workdir, winner=winner.dir.name)
    _check_media(result, baresip_sdes, workdir)
    # both sessions closed: both bindings removed (Expires: 0)
    wait_until(lambda: kam.contacts() == [], 10, f"bindings removed (ul.dump: {kam.contacts()})")


async def _b_only(kam, a, b, trunk):
    peer = await session(b.base_url, b.login())
    try:
        wait_bindings(kam, [b])
        t_dial = time.monotonic()
        trunk.dial(f"sip:{ACCOUNT}@127.0.0.1:{kam.port}")
        await peer.wait_incoming(10)
        t_incoming = time.monotonic()
        await peer.accept()
        connected = await peer.wait_for({"connected"}, 20, call_id=peer.call_id)
        assert connected["type"] == "connected", connected
        trunk.wait_established()
        await peer.receive(100, timeout=20)
        await peer.hangup()
        trunk.wait_bye()
        # compare with test_incoming.py's dial_to_incoming_s (no proxy)
        return {"dial_to_incoming_s": round(t_incoming - t_dial, 3)}
    finally:
        await peer.close()


def test_cluster_call_reaches_only_the_node_with_the_session(workdir, cluster, baresip_sdes):
    """alice on node B only: Kamailio's location has B's contact only and
    the call reaches B; node A sees no call at all."""
    kam, a, b, _ = cluster
    timing = asyncio.run(_b_only(kam, a, b, baresip_sdes))
    save_result(workdir, timing=timing)
    assert a.metrics().sum("gateway_calls_started_total") == 0, "node A saw a call"
    assert b.metrics().sum("gateway_calls_started_total") == 1


def _top_via(text: str) -> str:
    m = re.search(r"^(?:Via|v):\s*(.*)$", text, re.M | re.I)
    return m.group(1) if m else ""


def test_cluster_outgoing_goes_through_kamailio(workdir, cluster, baresip_sdes):
    """A node's call out: its trunk is Kamailio, whose dispatcher picks the
    carrier (baresip); audio both ways; the INVITE and the browser's BYE
    reach baresip through Kamailio (its Via on top, the BYE along the
    Record-Route)."""
    kam, a, b, _ = cluster
    connected, result = asyncio.run(_audio_call(a, baresip_sdes, TRUNK_NUMBER))
    assert connected["type"] == "connected", connected
    _check_media(result, baresip_sdes, workdir)
    invite = baresip_sdes.received("INVITE")[0]
    assert "Record-Route:" in invite.text or "record-route:" in invite.text.lower(), invite.text
    bye = baresip_sdes.received("BYE")[0]
    assert f"127.0.0.1:{kam.port}" in _top_via(bye.text), f"BYE not through Kamailio:\n{bye.text}"
    assert f"127.0.0.1:{a.sip_port}" in bye.text, bye.text  # the node's Via under Kamailio's


async def _drain(kam, a, b, trunk):
    pa = await session(a.base_url, a.login())
    pb = await session(b.base_url, b.login())
    peers = [pa, pb]
    try:
        wait_bindings(kam, [a, b])
        # call 1: baresip -> alice, answered on node A
        trunk.dial(f"sip:{ACCOUNT}@127.0.0.1:{kam.port}")
        await pa.wait_incoming(10)
        await pa.accept()
        connected = await pa.wait_for({"connected"}, 20, call_id=pa.call_id)
        assert connected["type"] == "connected", connected
        await pb.wait_for({"hangup"}, 10)
        await pa.receive(100, timeout=20)
        # call 2: a second session of alice on node B calls out through Kamailio
        # (no barrier: call() reads the message queue from its start)
        out = await BrowserPeer(b.base_url, b.login()).connect()
        peers.append(out)
        connected_b = await out.call(TRUNK_NUMBER)
        assert connected_b["type"] == "connected", connected_b
        await out.receive(100, timeout=20)
        byes = len(trunk.received("BYE"))

        a.proc.send_signal(signal.SIGTERM)
        # A's binding goes at once; its call goes on for drain_seconds
        wait_until(lambda: sorted(c.split(";")[0] for c in kam.contacts()) == [contact_of(b)], 5,
                   f"only B bound (ul.dump: {kam.contacts()})")
        wait_until(lambda: "draining" in a.log(), 5, "node A draining")
        assert a.proc.poll() is None, "node A exited before its call ended"
        # a browser's new call on the draining node: a clear error
        since = len(pa.messages)
        await pa.send({"type": "call", "id": "late", "to": TRUNK_NUMBER, "sdp": "v=0\r\n"})
        err = await pa.wait_for({"error"}, 5, since=since)
        assert err.get("code") == 503 and err.get("id") == "late", err
        # then the drain ends: BYE to baresip, hangup at the browser, exit 0
        hangup = await pa.wait_for({"hangup"}, 15, call_id=pa.call_id)
        assert hangup["type"] == "hangup", hangup
        wait_until(lambda: len(trunk.received("BYE")) > byes, 10, "node A's BYE at baresip")
        assert a.proc.wait(15) == 0, f"node A exit {a.proc.returncode}"
        # node B's call is untouched: media still flows
        before = out.packets_received
        await out.receive(before + 50, timeout=10)
        assert not any(m.get("type") == "hangup" for m in out.messages), out.messages
        # a new call for alice reaches B (the only binding): both its
        # sessions ring, both decline
        since = [len(p.messages) for p in (pb, out)]
        trunk.dial(f"sip:{ACCOUNT}@127.0.0.1:{kam.port}")
        for p, n in zip((pb, out), since):
            ring = await p.wait_for({"incoming"}, 10, since=n)
            await p.send({"type": "reject", "id": ring["id"]})
        await pb.wait_for({"hangup"}, 10, since=since[0])
        # B's call still up; its hangup reaches baresip through Kamailio
        byes = len(trunk.received("BYE"))
        await out.hangup()
        wait_until(lambda: len(trunk.received("BYE")) > byes, 10, "node B's BYE at baresip")
        bye = trunk.received("BYE")[-1]
        assert f"127.0.0.1:{kam.port}" in _top_via(bye.text), bye.text
        return {"b_packets_after_a_left": out.packets_received - before}
    finally:
        for p in peers:
            await p.close()


def test_cluster_node_drains_on_sigterm(workdir, cluster, baresip_sdes):
    """Node A (drain_seconds = 2) gets SIGTERM during a call: its binding
    disappears at once, a browser's new call there gets error 503, its call
    ends with BYE after the drain and it exits 0; node B's call goes on
    untouched and a new call for alice rings B only."""
    kam, a, b, _ = cluster
    result = asyncio.run(_drain(kam, a, b, baresip_sdes))
    save_result(workdir, **result)


@pytest.fixture
def proxied_node(workdir, baresip_sdes):
    """Kamailio and one node whose trunk is baresip itself, reached through
    Kamailio as [cluster] outbound_proxy. Yields (kamailio, node)."""
    kam = Kamailio(workdir)
    trunk = TrunkSpec("carrier", f"sip:127.0.0.1:{baresip_sdes.sip_port};transport=udp",
                      callee_stream="sdes", secure_media="mandatory")
    node = Gateway(workdir, trunk=trunk, name="a",
                   cluster={"outbound_proxy": f"sip:127.0.0.1:{kam.port};lr", "drain_seconds": 2})
    try:
        kam.start(baresip_sdes.sip_port, [node.sip_port])
        node.start()
        yield kam, node
    finally:
        code = node.stop()
        kam.stop()
    assert code == 0, f"node did not exit 0 on SIGTERM (exit {code}): {node.log_path}"


def test_cluster_outbound_proxy_routes_trunk_invites(workdir, proxied_node, baresip_sdes):
    """With [cluster] outbound_proxy the node sends its INVITE for the trunk
    (Request-URI baresip's) to Kamailio with Route: <kamailio;lr>; baresip
    gets it from Kamailio (its Via on top, Record-Route), audio flows both
    ways and the browser's BYE follows the Record-Route through Kamailio."""
    kam, node = proxied_node
    connected, result = asyncio.run(_audio_call(node, baresip_sdes, TRUNK_NUMBER))
    assert connected["type"] == "connected", connected
    _check_media(result, baresip_sdes, workdir)
    invite = baresip_sdes.received("INVITE")[0]
    assert invite.first_line.startswith(f"INVITE sip:{TRUNK_NUMBER}@127.0.0.1:{baresip_sdes.sip_port} "), \
        invite.first_line
    assert invite.src == f"127.0.0.1:{kam.port}", invite.src  # sent on by Kamailio
    assert f"127.0.0.1:{kam.port}" in _top_via(invite.text), invite.text
    assert "record-route:" in invite.text.lower(), invite.text
    bye = baresip_sdes.received("BYE")[0]
    assert f"127.0.0.1:{kam.port}" in _top_via(bye.text), f"BYE not through Kamailio:\n{bye.text}"


def test_cluster_incoming_refer_via_proxy(workdir):
    """A trunk's REFER on an incoming call of a node with [cluster]
    outbound_proxy: the new INVITE to the target takes the way an outgoing
    call's INVITE takes, to Kamailio with Route: <kamailio;lr> (it went
    straight to the trunk before). SIPp (sipp/uac_refer_in.xml) calls alice
    on the node, the browser (aiortc) answers, SIPp REFERs to 200; the
    target (sipp/uas_transfer_target.xml, the node's trunk, behind Kamailio)
    gets the INVITE with Kamailio's Via on top and a Record-Route, answers,
    and echoes the browser's tone back on the same peer connection."""
    from harness import SippUas
    from test_transfer import incoming_refer
    target = SippUas(workdir, "uas_transfer_target.xml", extra=["-rtp_echo"], name="sipp_target").start()
    kam = Kamailio(workdir)
    node = Gateway(workdir, trunk=TrunkSpec("carrier", target.uri, callee_stream="decrypted",
                                            secure_media="forbidden"),
                   name="a", cluster={"outbound_proxy": f"sip:127.0.0.1:{kam.port};lr", "drain_seconds": 2})
    try:
        kam.start(target.port, [node.sip_port])
        node.start()
        r = incoming_refer(workdir, node, target, after=50)
    finally:
        target.stop()
        node_code = node.stop()
        kam.stop()
    transferred = next(m for m in r["transferred"] if m.get("code", 0) >= 200)
    caller_code, target_code, packets_after = r["caller_exit"], r["target_exit"], r["packets_after"]
    invites = target.received("INVITE")
    save_result(workdir, caller_exit=caller_code, target_exit=target_code, transferred=transferred,
                packets_after=packets_after, target_invite=[m.text for m in invites])
    assert caller_code == 0, f"caller sipp exit {caller_code} ({r['caller_log']})"
    assert target_code == 0, f"target sipp exit {target_code} ({target.msg_path})"
    assert node_code == 0
    assert transferred.get("code") == 200, transferred
    assert packets_after >= 50
    assert len(invites) == 1 and invites[0].first_line.startswith("INVITE sip:200@"), invites
    assert f"127.0.0.1:{kam.port}" in _top_via(invites[0].text), f"not through Kamailio:\n{invites[0].text}"
    assert "record-route:" in invites[0].text.lower(), invites[0].text
