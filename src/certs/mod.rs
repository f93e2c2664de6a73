//! The gateway's TLS certificate, shared by every TLS listener (HTTPS/WSS
//! now, SIP over TLS next) and replaceable while they run.
//!
//! [`GatewayCert`] holds the certificate currently served and hands it to
//! rustls for each new handshake ([`ResolvesServerCert`]); [`GatewayCert::reload`]
//! swaps in a new one, so new connections get it and open ones keep the one
//! they started with. The certificate is either the configured
//! `server.tls_cert`/`tls_key` (re-read on reload; only warned about when it
//! runs out) or a self-signed ECDSA P-256 pair in `data_dir` (renewed when
//! fewer than 30 days remain). [`start`] loads it and reloads it every hour
//! and on SIGHUP.
//!
//! A TLS listener builds its rustls config once, with
//! [`https_server_config`] or [`sip_server_config`], and never needs to
//! rebuild it.
//!
//! Layout: `renewal` (the 30-day rule, pure), `x509` (subject, expiry,
//! fingerprint), `files` (PEM in, atomic writes out), `self_signed`
//! (generation), `server_config` (the rustls configs), `watch` (hourly and
//! SIGHUP reloads), `report` (what `check-config` prints).

mod files;
pub mod renewal;
mod report;
mod self_signed;
mod server_config;
mod watch;
pub mod x509;

#[cfg(test)]
mod tests;

pub use report::{check_certificates, Finding};
pub use self_signed::{CERT_FILE, KEY_FILE};
pub(crate) use server_config::provider;
pub use server_config::{https_server_config, sip_server_config};
pub use watch::{keep_fresh, CHECK_EVERY};

use files::{load_pair, Loaded};
use renewal::{verdict, Origin, Verdict};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use time::OffsetDateTime;
use tracing::{debug, info, warn};
use x509::CertInfo;

/// Errors of loading, generating or watching the certificate. Each names
/// the file concerned, so the operator can act on the message alone.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("server.tls_cert and server.tls_key must be given together (or both left out for a self-signed certificate)")]
    PathsIncomplete,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Pem { path: PathBuf, problem: String },
    #[error("{path}: not a readable X.509 certificate: {problem}")]
    X509 { path: PathBuf, problem: String },
    #[error("certificate {cert} with key {key}: {source}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("cannot generate a self-signed certificate for {path}: {source}")]
    Generate { path: PathBuf, source: rcgen::Error },
    #[error("cannot listen for SIGHUP: {0}")]
    Signal(std::io::Error),
    #[error("certificate task failed: {0}")]
    Task(String),
}

/// Where the certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// `server.tls_cert` and `server.tls_key`.
    Files { cert: PathBuf, key: PathBuf },
    /// `data_dir/tls-cert.pem` and `tls-key.pem`, generated for `names`
    /// (DNS names and IP addresses) when missing, unusable or running out.
    SelfSigned { dir: PathBuf, names: Vec<String> },
}

impl CertSource {
    /// The source `[server]` asks for.
    pub fn from_config(server: &crate::config::ServerConfig) -> Result<CertSource, CertError> {
        match (&server.tls_cert, &server.tls_key) {
            (Some(cert), Some(key)) => Ok(CertSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => {
                let mut names: Vec<String> =
                    vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
                // The addresses browsers (HTTPS) and trunks (SIP-TLS) reach.
                for ip in [server.https_listen.ip(), server.public_ip] {
                    let name = ip.to_string();
                    if !ip.is_unspecified() && !ip.is_loopback() && !names.contains(&name) {
                        names.push(name);
                    }
                }
                Ok(CertSource::SelfSigned {
                    dir: server.data_dir.clone(),
                    names,
                })
            }
            _ => Err(CertError::PathsIncomplete),
        }
    }

    fn cert_path(&self) -> PathBuf {
        match self {
            CertSource::Files { cert, .. } => cert.clone(),
            CertSource::SelfSigned { dir, .. } => dir.join(CERT_FILE),
        }
    }

    /// The pair to serve at `now`: the configured files as they are, or the
    /// self-signed pair on disk unless it is missing, unusable or running
    /// out, in which case a new one is generated. Blocks (file IO, key
    /// generation).
    fn obtain(
        &self,
        provider: &CryptoProvider,
        now: OffsetDateTime,
    ) -> Result<(Loaded, Verdict), CertError> {
        match self {
            CertSource::Files { cert, key } => {
                let loaded = load_pair(cert, key, provider)?;
                let verdict = verdict(Origin::Configured, loaded.info.not_after, now);
                Ok((loaded, verdict))
            }
            CertSource::SelfSigned { dir, names } => {
                let why = match load_pair(&dir.join(CERT_FILE), &dir.join(KEY_FILE), provider) {
                    Ok(loaded) => match verdict(Origin::SelfSigned, loaded.info.not_after, now) {
                        Verdict::Renew { days_left } => format!("it expires in {days_left} days"),
                        fresh => return Ok((loaded, fresh)),
                    },
                    Err(CertError::Read { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        "there is none yet".into()
                    }
                    Err(e) => e.to_string(),
                };
                info!(dir = %dir.display(), reason = %why, "generating a self-signed TLS certificate");
                let loaded = self_signed::generate_into(dir, names, now, provider)?;
                let verdict = verdict(Origin::SelfSigned, loaded.info.not_after, now);
                Ok((loaded, verdict))
            }
        }
    }
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The certificate served from now on.
    pub info: CertInfo,
    /// Whether it differs from the one served before.
    pub changed: bool,
    /// Its verdict at the reload's `now`: `ExpiresSoon` for a configured
    /// certificate the operator must replace.
    pub verdict: Verdict,
}

/// The certificate every TLS listener serves; see the module comment.
pub struct GatewayCert {
    source: CertSource,
    provider: Arc<CryptoProvider>,
    /// Read once per handshake, written once per change: a plain lock is
    /// far from contended, and a writer only swaps an `Arc`, so it cannot
    /// panic halfway and leave a poisoned value behind.
    current: RwLock<Loaded>,
}

impl GatewayCert {
    /// Loads (or generates) the certificate at `now`. Blocks: call it from
    /// `spawn_blocking` in async code.
    pub fn load(source: CertSource, now: OffsetDateTime) -> Result<GatewayCert, CertError> {
        let provider = server_config::provider();
        let (loaded, verdict) = source.obtain(&provider, now)?;
        info!(
            path = %source.cert_path().display(),
            subject = %loaded.info.subject,
            not_after = %x509::rfc3339(loaded.info.not_after),
            sha256 = %loaded.info.sha256,
            "TLS certificate"
        );
        warn_if_expiring(&source, &loaded.info, verdict);
        Ok(GatewayCert {
            source,
            provider,
            current: RwLock::new(loaded),
        })
    }

    /// Reads the source again at `now` (renewing a self-signed certificate
    /// with fewer than 30 days left) and serves the result to new
    /// connections. On error the current certificate stays. Blocks.
    pub fn reload(&self, now: OffsetDateTime) -> Result<Reloaded, CertError> {
        let (fresh, verdict) = self.source.obtain(&self.provider, now)?;
        let info = fresh.info.clone();
        let changed = {
            let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
            let changed = current.info.sha256 != fresh.info.sha256;
            if changed {
                *current = fresh;
            }
            changed
        };
        if changed {
            info!(
                path = %self.source.cert_path().display(),
                subject = %info.subject,
                not_after = %x509::rfc3339(info.not_after),
                sha256 = %info.sha256,
                "TLS certificate replaced: new connections get it, open ones keep theirs"
            );
        } else {
            debug!(sha256 = %info.sha256, "TLS certificate unchanged");
        }
        warn_if_expiring(&self.source, &info, verdict);
        Ok(Reloaded {
            info,
            changed,
            verdict,
        })
    }

    /// The certificate served now.
    pub fn info(&self) -> CertInfo {
        self.loaded().info
    }

    pub fn source(&self) -> &CertSource {
        &self.source
    }

    fn loaded(&self) -> Loaded {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn warn_if_expiring(source: &CertSource, info: &CertInfo, verdict: Verdict) {
    if let Verdict::ExpiresSoon { days_left } = verdict {
        warn!(
            path = %source.cert_path().display(),
            subject = %info.subject,
            not_after = %x509::rfc3339(info.not_after),
            days_left,
            "TLS certificate expires soon: replace the files, then send SIGHUP"
        );
    }
}

impl ResolvesServerCert for GatewayCert {
    /// The same certificate for every client: the gateway has one name.
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.loaded().key)
    }
}

// Hand-written: the derived form would reach into the signing key.
impl fmt::Debug for GatewayCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayCert")
            .field("source", &self.source)
            .field("current", &self.info())
            .finish()
    }
}

/// Loads the certificate `[server]` asks for (off the executor threads) and
/// keeps it fresh in the background: every [`CHECK_EVERY`] and on SIGHUP.
/// The background task ends once the returned certificate is dropped.
pub async fn start(server: &crate::config::ServerConfig) -> Result<Arc<GatewayCert>, CertError> {
    let source = CertSource::from_config(server)?;
    let cert =
        tokio::task::spawn_blocking(move || GatewayCert::load(source, OffsetDateTime::now_utc()))
            .await
            .map_err(|e| CertError::Task(e.to_string()))??;
    let cert = Arc::new(cert);
    // Registered here, before any listener is up: SIGHUP's default action
    // is to end the process.
    tokio::spawn(keep_fresh(&cert, CHECK_EVERY)?);
    Ok(cert)
}
