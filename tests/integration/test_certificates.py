"""Certificates (issue 10 item 2): the certificate is replaced while the
gateway runs, without a restart. New TLS connections (HTTPS and SIP over
TLS) get the new one, the connections already open (HTTPS keep-alive, the
signaling WebSocket) keep theirs and go on working. SIGHUP triggers the reload at once (the hourly
check would do it too, but no test waits an hour).

The certificate a connection sees is read with Python's ssl
(`getpeercert(binary_form=True)` on a fresh connection); test pairs are made
with `cryptography` (ECDSA P-256, like the gateway's own)."""

from __future__ import annotations

import asyncio
import datetime
import http.client
import ipaddress
import signal
import socket
from pathlib import Path
from typing import Optional

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from harness import (
    BrowserPeer,
    Gateway,
    TrunkSpec,
    free_port,
    save_result,
    toml_str,
    unverified_ssl,
    wait_until,
)

pytestmark = pytest.mark.gateway

GENERATED_CN = "webrtc-sip-gateway (self-signed)"


# -- certificates

def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def make_pair(cert_path: Path, key_path: Path, cn: str, days: int) -> x509.Certificate:
    """A self-signed ECDSA P-256 pair for localhost/127.0.0.1 ending in
    `days` days, written key first (as the gateway does)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = utcnow()
    cert = (x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 as the gateway logs it: colon-separated upper-case hex."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def cn_of(cert: x509.Certificate) -> str:
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def served_cert(port: int) -> x509.Certificate:
    """The certificate a NEW TLS connection to `port` (HTTPS or SIP-TLS)
    gets."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with unverified_ssl().wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der)


def file_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# -- the gateway

class CertGateway(Gateway):
    """The harness gateway with SIP over TLS and one trunk that is never
    called (so that an account exists for the WebSocket), plus
    `server.tls_cert`/`tls_key` and the trunk's `ca_file` when given."""

    def __init__(self, workdir: Path, tls_files: Optional[tuple[Path, Path]] = None,
                 ca_file: Optional[Path] = None):
        trunk = TrunkSpec("carrier", f"sip:127.0.0.1:{free_port(socket.SOCK_DGRAM)};transport=udp",
                          ca_file=str(ca_file) if ca_file else None)
        super().__init__(workdir, trunk=trunk, tls=True)
        self.tls_files = tls_files

    def write_config(self):
        super().write_config()
        if self.tls_files:
            cert, key = self.tls_files
            text = self.config_path.read_text()
            text = text.replace("[server]\n", f"[server]\ntls_cert = {toml_str(str(cert))}\n"
                                              f"tls_key = {toml_str(str(key))}\n", 1)
            self.config_path.write_text(text)

    def sighup(self):
        assert self.proc and self.proc.poll() is None, "gateway not running"
        self.proc.send_signal(signal.SIGHUP)


@pytest.fixture
def running():
    started: list[Gateway] = []

    def start(gw: Gateway) -> Gateway:
        started.append(gw)
        return gw.start()

    yield start
    for gw in started:
        code = gw.stop()
        assert code == 0, f"gateway did not exit 0 on SIGTERM (exit {code}); log: {gw.log_path}"
        assert "panicked" not in gw.log(), f"gateway panicked; log: {gw.log_path}"


def wait_served(gw: Gateway, pred, what: str, timeout: float = 10.0, port: Optional[int] = None) -> x509.Certificate:
    """Polls new connections (to HTTPS, or `port`) until the certificate
    they get satisfies `pred`; fails at once if the gateway died (SIGHUP's
    default action)."""
    seen: list[x509.Certificate] = []

    def check():
        assert gw.proc.poll() is None, f"gateway exited with {gw.proc.returncode}:\n{gw.log()[-3000:]}"
        cert = served_cert(port or gw.https_port)
        seen[:] = [cert]
        return pred(cert)

    wait_until(check, timeout, what, interval=0.1)
    return seen[0]


class KeepAlive:
    """One HTTPS connection held open across the reload."""

    def __init__(self, gw: Gateway):
        self.conn = http.client.HTTPSConnection("127.0.0.1", gw.https_port, context=unverified_ssl(), timeout=10)
        self.sock_before = None
        assert self.get("/healthz") == 200
        self.sock_before = self.conn.sock
        self.cert = x509.load_der_x509_certificate(self.conn.sock.getpeercert(binary_form=True))

    def get(self, path: str) -> int:
        self.conn.request("GET", path)
        resp = self.conn.getresponse()
        resp.read()
        return resp.status

    def still_same_connection_ok(self) -> x509.Certificate:
        """Another request on the same TCP+TLS connection: 200, and the
        certificate of that connection."""
        assert self.get("/healthz") == 200
        assert self.conn.sock is self.sock_before, "http.client reconnected: the old connection was closed"
        return x509.load_der_x509_certificate(self.conn.sock.getpeercert(binary_form=True))

    def close(self):
        self.conn.close()


# -- tests

def test_generated_certificate_renewed_on_sighup(workdir, running):
    gw = running(CertGateway(workdir))
    data_cert = gw.data_dir / "tls-cert.pem"
    data_key = gw.data_dir / "tls-key.pem"
    first = served_cert(gw.https_port)
    assert cn_of(first) == GENERATED_CN
    assert fingerprint(first) == fingerprint(file_cert(data_cert))
    assert first.not_valid_after_utc > utcnow() + datetime.timedelta(days=360)
    assert fingerprint(served_cert(gw.sip_tls_port)) == fingerprint(first), "SIP over TLS serves another certificate"

    async def scenario():
        old_https = KeepAlive(gw)
        assert fingerprint(old_https.cert) == fingerprint(first)
        old_ws = await BrowserPeer(gw.base_url, gw.login()).connect()
        await old_ws.barrier()

        # As if a year had passed: the pair in data_dir ends in 10 days.
        short = make_pair(data_cert, data_key, "about to expire", days=10)
        # Nothing reads it until the gateway is told (or the hourly check).
        assert fingerprint(served_cert(gw.https_port)) == fingerprint(first)

        gw.sighup()
        renewed = wait_served(gw, lambda c: fingerprint(c) != fingerprint(first),
                              "a new connection gets a new certificate after SIGHUP")
        assert fingerprint(renewed) != fingerprint(short), "the 10-day certificate was served, not renewed"
        assert cn_of(renewed) == GENERATED_CN
        assert renewed.not_valid_after_utc > utcnow() + datetime.timedelta(days=360), renewed.not_valid_after_utc
        assert isinstance(renewed.public_key(), ec.EllipticCurvePublicKey)
        assert renewed.public_key().curve.name == "secp256r1"
        # Written to data_dir too, so a restart keeps it.
        assert fingerprint(file_cert(data_cert)) == fingerprint(renewed)
        # SIP over TLS serves the same new certificate.
        assert fingerprint(served_cert(gw.sip_tls_port)) == fingerprint(renewed)

        # The connections opened before go on, with their certificate.
        assert fingerprint(old_https.still_same_connection_ok()) == fingerprint(first)
        await old_ws.barrier()
        new_ws = await BrowserPeer(gw.base_url, gw.login()).connect()
        await new_ws.barrier()
        # Stable afterwards: another SIGHUP keeps the fresh certificate.
        gw.sighup()
        wait_until(lambda: gw.log().count("SIGHUP") >= 2, 10, "the second SIGHUP logged")
        assert fingerprint(served_cert(gw.https_port)) == fingerprint(renewed)
        old_https.close()
        for peer in (old_ws, new_ws):
            await peer.ws.close()
        return renewed

    renewed = asyncio.run(scenario())
    log = gw.log()
    assert fingerprint(renewed) in log, "the new certificate's fingerprint is not logged"
    assert "PRIVATE KEY" not in log
    save_result(workdir, first_sha256=fingerprint(first), renewed_sha256=fingerprint(renewed),
                renewed_not_after=renewed.not_valid_after_utc.isoformat())


def test_configured_certificate_replaced_on_sighup(workdir, running):
    certs = workdir / "certs"
    cert_path, key_path = certs / "cert.pem", certs / "key.pem"
    a = make_pair(cert_path, key_path, "gw-a.test", days=90)
    gw = running(CertGateway(workdir, tls_files=(cert_path, key_path)))
    assert fingerprint(served_cert(gw.https_port)) == fingerprint(a)
    assert fingerprint(served_cert(gw.sip_tls_port)) == fingerprint(a)

    old_https = KeepAlive(gw)
    b = make_pair(cert_path, key_path, "gw-b.test", days=90)
    gw.sighup()
    wait_served(gw, lambda c: fingerprint(c) == fingerprint(b), "a new connection gets gw-b.test after SIGHUP")
    assert fingerprint(served_cert(gw.sip_tls_port)) == fingerprint(b)
    assert fingerprint(old_https.still_same_connection_ok()) == fingerprint(a)
    old_https.close()

    # A broken file: the reload fails, is logged, and B stays.
    failures = gw.log().count("reload failed")
    cert_path.write_text("not a certificate\n")
    gw.sighup()
    wait_until(lambda: gw.log().count("reload failed") > failures, 10, "the failed reload logged")
    failure = [ln for ln in gw.log().splitlines() if "reload failed" in ln][-1]
    assert str(cert_path) in failure, failure
    assert fingerprint(served_cert(gw.https_port)) == fingerprint(b)
    assert fingerprint(served_cert(gw.sip_tls_port)) == fingerprint(b)

    # A certificate about to expire is served all the same (the gateway
    # cannot make a trusted one), with a warning; nothing is generated.
    c = make_pair(cert_path, key_path, "gw-c.test", days=10)
    gw.sighup()
    wait_served(gw, lambda cert: fingerprint(cert) == fingerprint(c), "gw-c.test served after SIGHUP")
    wait_until(lambda: "expires soon" in gw.log(), 10, "a warning that the configured certificate expires soon")
    assert not (gw.data_dir / "tls-cert.pem").exists(), "a certificate was generated beside the configured one"

    out = gw.cli("check-config")
    text = out.stdout.decode()
    assert out.returncode == 0, text + out.stderr.decode()
    assert f"server.tls_cert ({cert_path}): subject \"CN=gw-c.test\"" in text, text
    assert "9 days left" in text, text
    assert any(ln.startswith("warning: server.tls_cert") and "expires in 9 days" in ln for ln in text.splitlines()), text
    save_result(workdir, served=[cn_of(x) for x in (a, b, c)], check_config=text)


def test_check_config_prints_each_certificate(workdir):
    cas = workdir / "cas"
    ca_one = make_pair(cas / "one.pem", cas / "one.key", "Carrier Root CA", days=3650)
    ca_two = make_pair(cas / "two.pem", cas / "two.key", "Carrier Old CA", days=20)
    bundle = cas / "bundle.pem"
    bundle.write_bytes((cas / "one.pem").read_bytes() + (cas / "two.pem").read_bytes())
    gw = CertGateway(workdir, ca_file=bundle)
    gw.write_config()

    out = gw.cli("check-config")
    text = out.stdout.decode()
    assert out.returncode == 0, text + out.stderr.decode()
    assert "generated certificate" in text and "none yet" in text, text

    # A generated pair exists (as after a run), 20 days left.
    make_pair(gw.data_dir / "tls-cert.pem", gw.data_dir / "tls-key.pem", GENERATED_CN, days=20)
    out = gw.cli("check-config")
    text = out.stdout.decode()
    lines = text.splitlines()
    assert out.returncode == 0, text + out.stderr.decode()
    expected = {
        "generated certificate": GENERATED_CN,
        "trunks[0].ca_file": "Carrier Root CA",
    }
    for label, cn in expected.items():
        assert any(ln.startswith(label) and f'subject "CN={cn}"' in ln and "notAfter 20" in ln and "days left" in ln
                   for ln in lines), f"{label}: {text}"
    assert any("CN=Carrier Old CA" in ln and "19 days left" in ln for ln in lines), text
    assert any(ln.startswith("warning: generated certificate") and "expires in 19 days" in ln for ln in lines), text
    assert any(ln.startswith("warning: trunks[0].ca_file") and "Carrier Old CA" in ln for ln in lines), text
    assert not any(ln.startswith("warning:") and "Carrier Root CA" in ln for ln in lines), text
    assert text.rstrip().endswith(": ok"), text

    # An unreadable CA file is a problem: exit 1, with the key path.
    bundle.write_text("garbage\n")
    out = gw.cli("check-config")
    text = out.stdout.decode()
    assert out.returncode == 1, text
    assert any(ln.startswith("trunks[0].ca_file:") and str(bundle) in ln for ln in text.splitlines()), text
    save_result(workdir, ca_subjects=[cn_of(ca_one), cn_of(ca_two)])
