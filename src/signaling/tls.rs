//! The HTTPS certificate and the rustls configuration.
//!
//! Without a configured certificate the gateway makes a self-signed one in
//! `data_dir` on first start, reuses it afterwards, and makes a new one when
//! it expires within 30 days. The rustls config prefers the hybrid
//! post-quantum group X25519MLKEM768 (DESIGN.md, Security), allows TLS 1.2
//! and 1.3, and only AEAD suites (rustls implements no others).

use super::{SignalingConfig, SignalingError};
use axum_server::accept::Accept;
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use time::{Duration as TimeDuration, OffsetDateTime};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

pub(crate) const CERT_FILE: &str = "tls-cert.pem";
pub(crate) const KEY_FILE: &str = "tls-key.pem";
/// A certificate this close to its end is replaced (self-signed) or
/// warned about (configured).
const RENEW_BEFORE: TimeDuration = TimeDuration::days(30);
/// Validity of a generated certificate.
const SELF_SIGNED_VALIDITY: TimeDuration = TimeDuration::days(365);

type Pair = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// The rustls server config for `https_listen`: the configured certificate,
/// or the self-signed one in `data_dir` (generated when missing or about to
/// expire).
pub fn load_or_generate_tls(cfg: &SignalingConfig) -> Result<ServerConfig, SignalingError> {
    match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert_path), Some(key_path)) => {
            let (certs, key) = read_pair(cert_path, key_path)?;
            if let Some(not_after) = certs.first().and_then(|c| not_after(c)) {
                if not_after < OffsetDateTime::now_utc() + RENEW_BEFORE {
                    warn!(path = %cert_path.display(), %not_after, "TLS certificate expires soon: replace it");
                }
            }
            server_config(certs, key).map_err(|source| SignalingError::Tls {
                path: cert_path.clone(),
                source,
            })
        }
        (None, None) => self_signed(cfg),
        _ => Err(SignalingError::TlsPathsIncomplete),
    }
}

/// rustls with the aws-lc-rs provider, post-quantum hybrid key exchange
/// first, TLS 1.3 and 1.2.
fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, rustls::Error> {
    use aws_lc_rs::kx_group::{SECP256R1, SECP384R1, X25519, X25519MLKEM768};
    let mut provider = aws_lc_rs::default_provider();
    // Explicit order rather than the provider default, which puts
    // X25519MLKEM768 last unless the `prefer-post-quantum` feature is on.
    provider.kx_groups = vec![X25519MLKEM768, X25519, SECP256R1, SECP384R1];
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // HTTP/1.1 only: WebSockets over HTTP/2 need extended CONNECT, which the
    // server stack does not enable; browsers then use HTTP/1.1 anyway.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn read_pair(cert_path: &Path, key_path: &Path) -> Result<Pair, SignalingError> {
    let cert_pem = std::fs::read(cert_path).map_err(|source| SignalingError::ReadFile {
        path: cert_path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SignalingError::Pem {
            path: cert_path.to_path_buf(),
            problem: format!("bad PEM certificate: {e}"),
        })?;
    if certs.is_empty() {
        return Err(SignalingError::Pem {
            path: cert_path.to_path_buf(),
            problem: "no CERTIFICATE block".into(),
        });
    }
    let key_pem = std::fs::read(key_path).map_err(|source| SignalingError::ReadFile {
        path: key_path.to_path_buf(),
        source,
    })?;
    // The error text of pki-types names the PEM section, never key bytes.
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| SignalingError::Pem {
        path: key_path.to_path_buf(),
        problem: format!("no usable private key: {e}"),
    })?;
    Ok((certs, key))
}

/// Reuses `data_dir/tls-cert.pem` + `tls-key.pem` when they load and are not
/// about to expire; otherwise generates and writes a new pair.
fn self_signed(cfg: &SignalingConfig) -> Result<ServerConfig, SignalingError> {
    let cert_path = cfg.data_dir.join(CERT_FILE);
    let key_path = cfg.data_dir.join(KEY_FILE);
    if cert_path.exists() && key_path.exists() {
        match reuse(&cert_path, &key_path) {
            Ok(config) => {
                debug!(path = %cert_path.display(), "reusing self-signed certificate");
                return Ok(config);
            }
            Err(why) => {
                info!(path = %cert_path.display(), %why, "replacing self-signed certificate")
            }
        }
    }
    let (cert_pem, key_pem) = generate(cfg, &cert_path)?;
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| SignalingError::WriteFile {
        path: cfg.data_dir.clone(),
        source,
    })?;
    // Key first: if we die between the two writes, the old certificate no
    // longer matches the key and the next start regenerates both.
    write_atomically(&key_path, key_pem.as_bytes(), 0o600)?;
    write_atomically(&cert_path, cert_pem.as_bytes(), 0o644)?;
    let (certs, key) = read_pair(&cert_path, &key_path)?;
    if let Some(cert) = certs.first() {
        info!(
            path = %cert_path.display(),
            sha256 = %fingerprint(cert),
            "generated self-signed certificate; browsers will ask to trust it"
        );
    }
    server_config(certs, key).map_err(|source| SignalingError::Tls {
        path: cert_path,
        source,
    })
}

/// The existing pair as a config, or why it cannot be used.
fn reuse(cert_path: &Path, key_path: &Path) -> Result<ServerConfig, String> {
    let (certs, key) = read_pair(cert_path, key_path).map_err(|e| e.to_string())?;
    let first = certs.first().ok_or("no certificate")?;
    let end = not_after(first).ok_or("cannot read the certificate's expiry")?;
    if end < OffsetDateTime::now_utc() + RENEW_BEFORE {
        return Err(format!("it expires {end}"));
    }
    server_config(certs, key).map_err(|e| e.to_string())
}

/// A new ECDSA P-256 certificate for localhost and the listen address.
fn generate(cfg: &SignalingConfig, cert_path: &Path) -> Result<(String, String), SignalingError> {
    let gen_err = |source| SignalingError::CertGen {
        path: cert_path.to_path_buf(),
        source,
    };
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let ip = cfg.https_listen.ip();
    if !ip.is_unspecified() && !ip.is_loopback() {
        names.push(ip.to_string());
    }
    let mut params = rcgen::CertificateParams::new(names).map_err(gen_err)?;
    let now = OffsetDateTime::now_utc();
    // A day of slack for clients whose clocks run behind.
    params.not_before = now - TimeDuration::days(1);
    params.not_after = now + SELF_SIGNED_VALIDITY;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "webrtc-sip-gateway (self-signed)",
    );
    let key = rcgen::KeyPair::generate().map_err(gen_err)?;
    let cert = params.self_signed(&key).map_err(gen_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes through a fresh temporary file and a rename, so readers see the
/// old or the new file and the key is never readable by others, not even
/// for a moment.
fn write_atomically(path: &Path, data: &[u8], mode: u32) -> Result<(), SignalingError> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let write_err = |source| SignalingError::WriteFile {
        path: path.to_path_buf(),
        source,
    };
    // A leftover from a crash may have other permissions; `mode` below only
    // applies to files it creates.
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp).map_err(write_err)?;
    file.write_all(data).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(write_err)
}

/// SHA-256 of the certificate as colon-separated hex, as browsers show it.
fn fingerprint(cert: &CertificateDer<'_>) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(cert.as_ref());
    digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `notAfter` of an X.509 certificate, read with a minimal DER walk:
/// Certificate -> tbsCertificate -> [version], serial, signature, issuer,
/// validity { notBefore, notAfter }. `None` for anything unexpected.
pub(crate) fn not_after(cert: &[u8]) -> Option<OffsetDateTime> {
    let (tag, certificate, _) = der_next(cert)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, mut tbs, _) = der_next(certificate)?;
    if tag != 0x30 {
        return None;
    }
    // Optional explicit [0] version.
    let (tag, _, rest) = der_next(tbs)?;
    if tag == 0xa0 {
        tbs = rest;
    }
    // serialNumber, signature, issuer.
    for expected in [0x02, 0x30, 0x30] {
        let (tag, _, rest) = der_next(tbs)?;
        if tag != expected {
            return None;
        }
        tbs = rest;
    }
    let (tag, validity, _) = der_next(tbs)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, rest) = der_next(validity)?;
    let (tag, time, _) = der_next(rest)?;
    der_time(tag, time)
}

/// One DER TLV (single-byte tags only, which is all X.509 uses up to
/// `validity`): (tag, contents, rest).
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, input) = input.split_first()?;
    let (&first, mut input) = input.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || input.len() < count {
            return None;
        }
        let (bytes, rest) = input.split_at(count);
        input = rest;
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    if input.len() < len {
        return None;
    }
    let (contents, rest) = input.split_at(len);
    Some((tag, contents, rest))
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn der_time(tag: u8, bytes: &[u8]) -> Option<OffsetDateTime> {
    let text = std::str::from_utf8(bytes).ok()?;
    let digits = text.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy: i32 = digits[..2].parse().ok()?;
            // RFC 5280 4.1.2.5.1: 50..99 are 19xx, 00..49 are 20xx.
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        (0x18, 14) => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let num = |range: std::ops::Range<usize>| rest.get(range)?.parse::<u8>().ok();
    let month = time::Month::try_from(num(0..2)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, num(2..4)?).ok()?;
    let clock = time::Time::from_hms(num(4..6)?, num(6..8)?, num(8..10)?).ok()?;
    Some(time::PrimitiveDateTime::new(date, clock).assume_utc())
}

/// Every `period`, loads the certificate again (generating a new self-signed
/// one when the old is about to expire) and hands it to the running server.
/// New connections use it; open ones keep theirs.
pub(crate) async fn reload_periodically(
    cfg: Arc<SignalingConfig>,
    server: axum_server::tls_rustls::RustlsConfig,
    period: std::time::Duration,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tick.tick().await;
        let cfg = cfg.clone();
        match tokio::task::spawn_blocking(move || load_or_generate_tls(&cfg)).await {
            Ok(Ok(config)) => server.reload_from_config(Arc::new(config)),
            Ok(Err(e)) => warn!(error = %e, "TLS reload failed; keeping the current certificate"),
            Err(e) => warn!(error = %e, "TLS reload task failed"),
        }
    }
}

/// Aborts a background task when dropped, so it cannot outlive its owner.
pub(crate) struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Wraps the rustls acceptor to log, per connection, the TLS version and
/// key-exchange group that were negotiated (DESIGN.md asks to log the group,
/// so a fallback from X25519MLKEM768 is visible).
#[derive(Clone)]
pub(crate) struct LoggingAcceptor {
    inner: axum_server::tls_rustls::RustlsAcceptor,
}

impl LoggingAcceptor {
    pub(crate) fn new(inner: axum_server::tls_rustls::RustlsAcceptor) -> Self {
        LoggingAcceptor { inner }
    }
}

impl<S: Send + 'static> Accept<TcpStream, S> for LoggingAcceptor {
    type Stream = <axum_server::tls_rustls::RustlsAcceptor as Accept<TcpStream, S>>::Stream;
    type Service = S;
    type Future =
        Pin<Box<dyn Future<Output = std::io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let peer = stream.peer_addr().ok();
        let handshake = self.inner.accept(stream, service);
        Box::pin(async move {
            let result = handshake.await;
            match &result {
                Ok((tls, _)) => {
                    let conn = tls.get_ref().1;
                    debug!(
                        peer = ?peer,
                        version = ?conn.protocol_version(),
                        group = ?conn.negotiated_key_exchange_group().map(|g| g.name()),
                        "TLS connection"
                    );
                }
                Err(e) => debug!(peer = ?peer, error = %e, "TLS handshake failed"),
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(y: i32, mo: u8, d: u8, h: u8, mi: u8, s: u8) -> OffsetDateTime {
        let date =
            time::Date::from_calendar_date(y, time::Month::try_from(mo).unwrap(), d).unwrap();
        time::PrimitiveDateTime::new(date, time::Time::from_hms(h, mi, s).unwrap()).assume_utc()
    }

    #[test]
    fn reads_not_after_of_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let end = utc(2031, 5, 17, 8, 9, 10);
        params.not_after = end;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.clone().self_signed(&key).unwrap();
        assert_eq!(not_after(cert.der()), Some(end));
        // rcgen writes GeneralizedTime from 2050 on.
        let far = utc(2077, 1, 2, 3, 4, 5);
        params.not_after = far;
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(not_after(cert.der()), Some(far));
    }

    #[test]
    fn der_walk_survives_garbage() {
        assert_eq!(not_after(&[]), None);
        assert_eq!(not_after(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(not_after(&[0x30, 0x03, 0x30, 0x01]), None);
        let mut params = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap();
        params.not_after = utc(2030, 1, 1, 0, 0, 0);
        let key = rcgen::KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        for cut in 0..der.len() {
            let _ = not_after(&der[..cut]);
        }
    }

    #[test]
    fn only_aead_suites_and_pq_group_first() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_after = OffsetDateTime::now_utc() + TimeDuration::days(10);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let config = server_config(
            vec![cert.der().clone()],
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
        let provider = config.crypto_provider();
        assert_eq!(
            provider.kx_groups[0].name(),
            rustls::NamedGroup::X25519MLKEM768
        );
        for suite in &provider.cipher_suites {
            let name = format!("{:?}", suite.suite());
            assert!(
                name.contains("GCM") || name.contains("CHACHA20_POLY1305"),
                "{name}"
            );
        }
    }
}
