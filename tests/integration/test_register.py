"""REGISTER toward a trunk (`trunks[].register = true`), against SIPp 3.6.1
playing a registrar that challenges with digest and checks every answer
itself (verifyauth, user gw / password secret): sipp/uas_registrar.xml
grants 4 s and demands a refresh within 6 s, then takes the unregistration
at shutdown; sipp/uas_registrar_refuses.xml refuses a wrong password twice
and watches for a retry loop.

Artifacts in tests/artifacts/<test name>/: gateway/gateway.log,
sipp/messages.log (timestamped trace), sipp/actions.log (the scenario's
<log> lines), result.json.
"""

from __future__ import annotations

import re

import pytest

from harness import (
    Gateway,
    SippUas,
    TrunkSpec,
    digest_expected,
    digest_params,
    save_result,
    sip_header,
    wait_until,
)

pytestmark = pytest.mark.gateway

SECRET = "secret"  # what the scenarios' verifyauth accepts


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
def start_sipp(workdir):
    started: list[SippUas] = []

    def start(scenario: str, **kw) -> SippUas:
        s = SippUas(workdir, scenario, **kw)
        started.append(s)
        return s.start()

    yield start
    for s in started:
        s.stop()


def registrar_trunk(sipp: SippUas, password: str) -> TrunkSpec:
    return TrunkSpec("carrier", sipp.uri, callee_stream="decrypted", secure_media="forbidden",
                     username="gw", password=password, register=True)


def _registered(gw: Gateway):
    m = gw.metrics()
    if not m.has("gateway_trunk_registered"):
        return None
    return m.sum("gateway_trunk_registered", trunk="carrier")


def _failures(gw: Gateway) -> float:
    return gw.metrics().sum("gateway_trunk_registration_failures_total", trunk="carrier")


def _cseq(msg) -> tuple[int, str]:
    number, method = sip_header(msg.text, "CSeq").split()
    return int(number), method


def _uri(value: str) -> str:
    m = re.search(r"<([^>]*)>", value)
    return m.group(1) if m else value.split(";")[0].strip()


def _no_secrets_in_log(gw: Gateway, authorised: list, password: str):
    """Neither the password nor any digest nonce, cnonce or response of the
    trace is in the gateway's log."""
    log = gw.log()
    assert not re.search(r"(?<![-_\w])" + re.escape(password) + r"(?![-_\w])", log), "password in the log"
    for msg in authorised:
        p = digest_params(sip_header(msg.text, "Authorization"))
        for k in ("nonce", "cnonce", "response"):
            assert p[k] not in log, f"digest {k} in the gateway log"


def test_register_challenge_refresh_unregister(workdir, start_sipp, start_gateway):
    sipp = start_sipp("uas_registrar.xml", timeout=60)
    gw = start_gateway(registrar_trunk(sipp, SECRET))
    contact = f"<sip:gw@127.0.0.1:{gw.sip_port};transport=udp>"

    wait_until(lambda: _registered(gw) == 1, 10, f"gateway_trunk_registered 1 ({gw.log_path})")
    # The 200 granted 4 s: the refresh must come (the scenario fails after
    # 6 s without it), be challenged again, and be accepted for 60 s.
    wait_until(lambda: len(sipp.sent(status=200)) >= 2, 10,
               f"the refresh REGISTER accepted by SIPp ({sipp.msg_path}, {sipp.actions_path})")
    assert "REFRESH received" in sipp.actions()
    assert "AUTH valid: refreshed for 60 s" in sipp.actions(), sipp.actions()
    assert _registered(gw) == 1
    assert _failures(gw) == 0

    regs = sipp.received("REGISTER")
    assert len(regs) == 4, [r.first_line for r in regs]
    first, authed, refresh, refresh_authed = regs
    oks = sipp.sent(status=200)
    # One Call-ID, From tag kept, CSeq one up each time (RFC 3261 10.2.4).
    assert len({sip_header(r.text, "Call-ID") for r in regs}) == 1
    assert len({sip_header(r.text, "From") for r in regs}) == 1
    cseqs = [_cseq(r) for r in regs]
    assert all(m == "REGISTER" for _, m in cseqs), cseqs
    assert [n for n, _ in cseqs] == list(range(cseqs[0][0], cseqs[0][0] + 4)), cseqs

    # What a REGISTER says: Request-URI the registrar's domain, To/From the
    # AOR, our Contact, the expiry asked.
    for r in regs:
        assert r.first_line == f"REGISTER sip:127.0.0.1:{sipp.port} SIP/2.0", r.first_line
        assert _uri(sip_header(r.text, "To")) == "sip:gw@127.0.0.1"
        assert _uri(sip_header(r.text, "From")) == "sip:gw@127.0.0.1"
        assert sip_header(r.text, "Contact") == contact
        assert sip_header(r.text, "Expires") == "3600"
    assert sip_header(first.text, "Authorization") is None
    assert sip_header(refresh.text, "Authorization") is None
    for r in (authed, refresh_authed):
        p = digest_params(sip_header(r.text, "Authorization"))
        assert p["username"] == "gw" and p["realm"] == "sipp.test"
        assert p["uri"] == f"sip:127.0.0.1:{sipp.port}"
        assert p["response"] == digest_expected(p, "REGISTER", SECRET)

    # The refresh came after about half of the 4 s grant, before its end.
    refresh_after = refresh.time - oks[0].time
    assert 1.0 <= refresh_after < 4.0, f"refresh {refresh_after:.2f}s after the 200 granting 4 s"

    log = gw.log()
    assert len(re.findall(r"registered with the trunk", log)) == 1, "logged once, not per refresh"
    assert re.search(r"expires_s=4\b", log), "the granted expiry is logged"

    # Shutdown removes the binding: REGISTER Expires: 0, challenged, accepted.
    code = gw.stop()
    assert code == 0, f"gateway exit {code}"
    rc = sipp.wait(10)
    regs = sipp.received("REGISTER")
    save_result(workdir, sipp_rc=rc, registers=len(regs), refresh_after_s=round(refresh_after, 3),
                actions=sipp.actions())
    assert rc == 0, f"SIPp scenario failed (exit {rc}); {sipp.msg_path}, {sipp.err_path}"
    assert len(regs) == 6, [r.first_line for r in regs]
    for r in regs[4:]:
        assert sip_header(r.text, "Expires") == "0"
        assert sip_header(r.text, "Contact") == contact
    assert _cseq(regs[4])[0] == cseqs[-1][0] + 1
    assert "AUTH valid: unregistered" in sipp.actions()
    assert "unregistered from the trunk" in gw.log()
    _no_secrets_in_log(gw, [authed, refresh_authed, regs[5]], SECRET)


def test_register_wrong_password_fails_and_backs_off(workdir, start_sipp, start_gateway):
    sipp = start_sipp("uas_registrar_refuses.xml", timeout=60)
    gw = start_gateway(registrar_trunk(sipp, "not-the-secret"))

    wait_until(lambda: _failures(gw) >= 1, 10, f"a registration failure in /metrics ({gw.log_path})")
    assert _registered(gw) == 0
    assert _failures(gw) == 1
    # The retry comes after the back-off (10 s), not at once.
    wait_until(lambda: _failures(gw) >= 2, 20, "the second, refused attempt")
    assert _registered(gw) == 0
    rc = sipp.wait(15)  # it watches 5 s more for a third attempt
    actions = sipp.actions()
    regs = sipp.received("REGISTER")
    refusals = sipp.sent(status=403)
    gap = regs[2].time - refusals[0].time if len(regs) >= 3 and refusals else None
    save_result(workdir, sipp_rc=rc, registers=len(regs), retry_after_s=gap, actions=actions)

    assert rc == 0, f"SIPp scenario failed (exit {rc}); {sipp.msg_path}, {sipp.err_path}"
    assert actions.count("AUTH invalid") == 2 and "AUTH valid" not in actions, actions
    assert "TOO SOON" not in actions, "a third attempt within 5 s of the second refusal"
    assert len(regs) == 4 and len(refusals) == 2, [m.first_line for m in sipp.messages()]
    assert 9.5 <= gap <= 12.0, f"second attempt {gap:.2f}s after the first 403"
    assert len({sip_header(r.text, "Call-ID") for r in regs}) == 1
    assert [_cseq(r)[0] for r in regs] == list(range(_cseq(regs[0])[0], _cseq(regs[0])[0] + 4))
    assert _failures(gw) == 2 and _registered(gw) == 0

    log = gw.log()
    failed = [line for line in log.splitlines() if "registration with the trunk failed" in line]
    assert len(failed) == 1, f"the same failure logged {len(failed)} times"
    assert "code=403" in failed[0] and "trunk=carrier" in failed[0], failed[0]
    assert "registered with the trunk" not in log
    assert "unregistered from the trunk" not in log, "nothing was registered"
    _no_secrets_in_log(gw, [regs[1], regs[3]], "not-the-secret")
