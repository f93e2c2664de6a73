"""The secure-media policy against a real trunk in each of its modes
(issue 11: "baresip as the trunk in each of its modes against accounts and
trunks configured for each callee setting").

baresip 1.0 as the trunk, per account `mediaenc`: `srtp-mand` (offers and
accepts RTP/SAVP only), `srtp` (best effort: offers RTP/AVP with a=crypto,
takes SRTP when offered), none (plain RTP/AVP only). The gateway's trunk has
`callee_stream` (what the trunk is sent) and `secure_media` (mandatory /
optional / forbidden). For each pair the test captures the trunk-side SDP
(baresip's SIP trace) and either proves audio both ways (packets and decoded
energy at both ends) with `connected.security` naming the leg, or that the
call failed with the expected code at the side that cannot comply and a
reason a person can read. Rows already proven elsewhere (srtp-mand with
sdes/mandatory both ways: test_calls.py, test_incoming.py; plain with
decrypted/forbidden: same files; DTLS-SRTP trunks and private calls:
test_dtls_trunk.py, test_private_call.py) are not repeated.

Artifacts in tests/artifacts/<test name>/: gateway/gateway.log,
trunk/baresip.log, result.json.
"""

from __future__ import annotations

import asyncio

import pytest

from conftest import TRUNK_NUMBER
from harness import TONE_RMS_MIN, Baresip, BrowserPeer, TrunkSpec, save_result, wait_until
from test_incoming import _cseq_method, gw_uri, sdp_body, sdp_cryptos, sessions
from test_sip_trunk import start_gateway  # noqa: F401  (fixture)

pytestmark = pytest.mark.gateway

PACKETS = 75      # 1.5 s of 20 ms frames at the browser
HEARD_S = 1.0     # seconds of the browser's tone in baresip's dump


class ModeBaresip(Baresip):
    """harness.Baresip with its account's mediaenc set to `mode` (None:
    no SRTP module, plain RTP)."""

    def __init__(self, *args, mode: str | None, **kw):
        super().__init__(*args, srtp=mode is not None, **kw)
        self.mode = mode

    def write_config(self):
        super().write_config()
        if self.mode and self.mode != "srtp-mand":
            accounts = self.dir / "accounts"
            accounts.write_text(accounts.read_text().replace(";mediaenc=srtp-mand", f";mediaenc={self.mode}"))


@pytest.fixture
def start_trunk(workdir, tone_wav):
    started: list[Baresip] = []

    def start(mode: str | None) -> Baresip:
        b = ModeBaresip(workdir, tone_wav, user=TRUNK_NUMBER, name="trunk", mode=mode)
        started.append(b)
        return b.start()

    yield start
    for b in started:
        b.stop()


def _trunk(b: Baresip, callee_stream: str, secure_media: str) -> TrunkSpec:
    return TrunkSpec("carrier", f"sip:127.0.0.1:{b.sip_port};transport=udp", callee_stream=callee_stream,
                     secure_media=secure_media)


async def _talk(peer: BrowserPeer, trunk: Baresip, gw) -> dict:
    trunk.wait_established()
    await peer.receive(PACKETS, timeout=20)
    heard = trunk.wait_heard_seconds(HEARD_S, timeout=20, gateway=gw)
    received, sent = await peer.stats()
    return {"received": received, "sent": sent, "rms": peer.sink.rms, "trunk_heard_rms": heard.rms}


def _check_audio(r: dict):
    assert r["received"] >= PACKETS and r["rms"] > TONE_RMS_MIN, f"the browser heard the trunk's tone: {r}"
    assert r["trunk_heard_rms"] > TONE_RMS_MIN, f"baresip heard the browser's tone: {r}"


def _profile(msg) -> str:
    return msg.sdp_media()[2]


# (callee_stream, secure_media, baresip mode) -> outcome: ("audio", trunk
# profile in the final offer, security.trunk prefix) or ("fail", code, words
# of the policy the browser's hangup reason must hold).
OUTGOING = {
    "sdes-mandatory-vs-best-effort": ("sdes", "mandatory", "srtp", ("audio", "RTP/SAVP", "sdes-srtp")),
    "sdes-mandatory-vs-plain": ("sdes", "mandatory", None, ("fail", 488, 'secure_media is "mandatory"')),
    "sdes-optional-vs-plain": ("sdes", "optional", None, ("audio", "RTP/AVP", "rtp")),
    "sdes-optional-vs-mandatory": ("sdes", "optional", "srtp-mand", ("audio", "RTP/SAVP", "sdes-srtp")),
    "decrypted-forbidden-vs-mandatory": ("decrypted", "forbidden", "srtp-mand", ("fail", 488, "refused plain RTP")),
    "decrypted-forbidden-vs-best-effort": ("decrypted", "forbidden", "srtp", ("audio", "RTP/AVP", "rtp")),
}


@pytest.mark.parametrize("case", list(OUTGOING))
def test_outgoing(workdir, start_gateway, start_trunk, case):
    callee_stream, secure_media, mode, expect = OUTGOING[case]
    trunk = start_trunk(mode)
    gw = start_gateway(_trunk(trunk, callee_stream, secure_media))

    async def run():
        peer = await BrowserPeer(gw.base_url, gw.login()).connect()
        try:
            first = await peer.call(TRUNK_NUMBER)
            r = await _talk(peer, trunk, gw) if first["type"] == "connected" else {}
            if first["type"] == "connected":
                await peer.hangup()
                trunk.wait_bye()
            return first, r
        finally:
            await peer.close()

    first, r = asyncio.run(run())
    invites = trunk.received("INVITE")
    finals = [m.status for m in trunk.sent() if m.status >= 200]
    save_result(workdir, case=case, first=first, browser=r, invites=[_profile(m) for m in invites],
                cryptos=[[c[:2] for c in sdp_cryptos(sdp_body(m.text))] for m in invites], trunk_finals=finals)
    assert invites, "baresip got no INVITE"
    # What the policy offers first: SAVP unless the trunk's media is forbidden.
    assert _profile(invites[0]) == ("RTP/AVP" if secure_media == "forbidden" else "RTP/SAVP"), invites[0].text
    assert ("a=crypto:" in invites[0].text) == (secure_media != "forbidden"), invites[0].text
    if expect[0] == "audio":
        _, profile, security = expect
        assert first["type"] == "connected", f"expected connected, got {first}"
        assert _profile(invites[-1]) == profile, invites[-1].text
        trunk_security = str((first.get("security") or {}).get("trunk", ""))
        assert trunk_security.startswith(security), first
        _check_audio(r)
    else:
        _, code, words = expect
        assert first["type"] == "hangup" and first.get("code") == code, f"expected hangup {code}, got {first}"
        assert words in str(first.get("reason")), f"the hangup reason should name the policy: {first}"
        # never plain RTP where the policy says mandatory, never SRTP where forbidden
        assert len(invites) == 1, [m.first_line for m in invites]


# (trunk secure_media, baresip mode) -> ("audio", answer profile, security
# prefix) or ("fail", code toward baresip).
INCOMING = {
    "forbidden-vs-mandatory": ("forbidden", "srtp-mand", ("fail", 488)),
    "mandatory-vs-plain": ("mandatory", None, ("fail", 488)),
    "optional-vs-mandatory": ("optional", "srtp-mand", ("audio", "RTP/SAVP", "sdes-srtp")),
    "optional-vs-plain": ("optional", None, ("audio", "RTP/AVP", "rtp")),
}


@pytest.mark.parametrize("case", list(INCOMING))
def test_incoming(workdir, start_gateway, start_trunk, case):
    secure_media, mode, expect = INCOMING[case]
    trunk = start_trunk(mode)
    # check-config refuses callee_stream "sdes" with secure_media "forbidden"
    gw = start_gateway(_trunk(trunk, "decrypted" if secure_media == "forbidden" else "sdes", secure_media))

    async def run():
        (peer,) = await sessions(gw, 1)
        try:
            trunk.dial(gw_uri(gw))
            if expect[0] == "fail":
                final = await asyncio.to_thread(trunk.wait_received, "", expect[1], 10)
                await peer.barrier()
                return final, [m["type"] for m in peer.messages], {}, None
            await peer.wait_incoming(10)
            await peer.accept()
            connected = await peer.wait_for({"connected"}, 20, call_id=peer.call_id)
            assert connected["type"] == "connected", f"expected connected, got {connected}"
            r = await _talk(peer, trunk, gw)
            await peer.hangup()
            trunk.wait_bye()
            return None, [m["type"] for m in peer.messages], r, connected
        finally:
            await peer.close()

    final, seen, r, connected = asyncio.run(run())
    invite = wait_until(lambda: (trunk.sent("INVITE") or [None])[0], 5, "baresip's INVITE in its trace")
    save_result(workdir, case=case, offer=_profile(invite), browser_saw=seen, browser=r, connected=connected,
                final=final.first_line if final else None)
    if expect[0] == "fail":
        assert final is not None and final.status == expect[1], final
        assert "incoming" not in seen, f"a refused call rang the browser: {seen}"
        return
    _, profile, security = expect
    ok = [m for m in trunk.received(status=200) if _cseq_method(m) == "INVITE"]
    assert ok and _profile(ok[0]) == profile, ok[0].text if ok else "no 200 OK"
    assert str((connected.get("security") or {}).get("trunk", "")).startswith(security), connected
    _check_audio(r)
