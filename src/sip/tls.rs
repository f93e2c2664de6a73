//! How the gateway checks a TLS trunk: the rustls client configuration per
//! trunk (its CAs and the name in its URI, or a pinned certificate) and the
//! crypto every SIP TLS connection uses. No IO here beyond reading the CA
//! file; the connections live in `transport`.
//!
//! The provider is aws-lc-rs, as on the HTTPS side: X25519MLKEM768 offered
//! first, TLS 1.3 and 1.2, and only AEAD suites (rustls has no others).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::Digest;

use crate::config::TlsVerify;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Pem { path: PathBuf, problem: String },
    #[error("{0:?} is not a host name or address a certificate can be checked against")]
    ServerName(String),
    #[error("tls_fingerprint {0:?} is not \"sha-256\" and 32 colon-separated hex bytes")]
    Pin(String),
    #[error("cannot load the system's trusted CAs: {0}")]
    SystemRoots(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider of every SIP TLS connection, client and server:
/// the same as HTTPS's.
pub fn provider() -> Arc<CryptoProvider> {
    crate::certs::provider()
}

/// What a TLS connection to one trunk needs: the name its certificate must
/// carry and the client configuration that checks it.
#[derive(Clone)]
pub struct TlsPeer {
    /// The trunk's name, for logs and reasons.
    pub trunk: String,
    pub server_name: ServerName<'static>,
    pub config: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPeer")
            .field("trunk", &self.trunk)
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// How a trunk's certificate is checked, from its config.
#[derive(Debug, Clone)]
pub struct TrunkTls {
    pub host: String,
    pub verify: TlsVerify,
    pub ca_file: Option<PathBuf>,
    pub fingerprint: Option<String>,
}

impl TlsPeer {
    /// The client configuration for a trunk.
    pub fn for_trunk(trunk: &str, tls: &TrunkTls) -> Result<TlsPeer, TlsSetupError> {
        let server_name = ServerName::try_from(tls.host.clone())
            .map_err(|_| TlsSetupError::ServerName(tls.host.clone()))?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let config = match tls.verify {
            TlsVerify::Ca => {
                let mut roots = RootCertStore::empty();
                match &tls.ca_file {
                    Some(path) => {
                        for cert in read_ca_file(path)? {
                            roots.add(cert).map_err(|e| TlsSetupError::Pem {
                                path: path.clone(),
                                problem: format!("not a usable CA certificate: {e}"),
                            })?;
                        }
                    }
                    None => {
                        let found = rustls_native_certs::load_native_certs();
                        if let Some(e) = found.errors.first() {
                            tracing::debug!(error = %e, "some system CA certificates were skipped");
                        }
                        let (added, _) = roots.add_parsable_certificates(found.certs);
                        if added == 0 {
                            return Err(TlsSetupError::SystemRoots(
                                "no CA certificates found; set ca_file".into(),
                            ));
                        }
                    }
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            TlsVerify::Pinned => {
                let text = tls.fingerprint.clone().unwrap_or_default();
                let pin = parse_pin(&text).ok_or(TlsSetupError::Pin(text))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                        pin,
                        provider: provider(),
                    }))
                    .with_no_client_auth()
            }
        };
        Ok(TlsPeer {
            trunk: trunk.to_string(),
            server_name,
            config: Arc::new(config),
        })
    }
}

/// The CA certificates of a PEM file; an error when there are none.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = std::fs::read(path).map_err(|source| TlsSetupError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError::Pem {
            path: path.to_path_buf(),
            problem: format!("bad PEM certificate: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::Pem {
            path: path.to_path_buf(),
            problem: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// `sha-256 AB:CD:...` (the form of an SDP `a=fingerprint`), case and the
/// algorithm's spelling (`sha-256`, `sha256`) aside.
pub fn parse_pin(text: &str) -> Option<[u8; 32]> {
    let (algorithm, hex) = text.trim().split_once(char::is_whitespace)?;
    if !matches!(
        algorithm.to_ascii_lowercase().as_str(),
        "sha-256" | "sha256"
    ) {
        return None;
    }
    let bytes: Vec<u8> = hex
        .trim()
        .split(':')
        .map(|b| {
            (b.len() == 2)
                .then(|| u8::from_str_radix(b, 16).ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    bytes.try_into().ok()
}

/// SHA-256 of a certificate as `AB:CD:...`.
pub fn fingerprint(cert: &[u8]) -> String {
    sha2::Sha256::digest(cert)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Accepts exactly one certificate, by its SHA-256, whoever signed it and
/// whatever names it carries: the operator pinned it. The handshake's
/// signatures are still checked, so the peer must hold its key.
#[derive(Debug)]
struct PinnedVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest: [u8; 32] = sha2::Sha256::digest(end_entity.as_ref()).into();
        if digest == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            tracing::warn!(
                presented = %fingerprint(end_entity.as_ref()),
                "trunk certificate does not match tls_fingerprint"
            );
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A handshake failure in words for the browser and the log.
pub fn describe_handshake_error(e: &std::io::Error) -> String {
    let inner = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidCertificate(why)) => {
            use rustls::CertificateError as E;
            let what = match why {
                E::UnknownIssuer => "not signed by a trusted CA (ca_file)".to_string(),
                E::NotValidForName | E::NotValidForNameContext { .. } => {
                    "not issued for the host in the trunk's uri".to_string()
                }
                E::Expired | E::ExpiredContext { .. } => "expired".to_string(),
                E::ApplicationVerificationFailure => "not the pinned tls_fingerprint".to_string(),
                other => format!("{other:?}"),
            };
            format!("trunk certificate not accepted: {what}")
        }
        Some(other) => format!("TLS handshake failed ({other})"),
        None => format!("TLS handshake failed ({e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_in_sdp_form_only() {
        let hex = (0..32)
            .map(|i| format!("{i:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        let pin = parse_pin(&format!("sha-256 {hex}")).unwrap();
        assert_eq!(pin[31], 31);
        assert_eq!(
            parse_pin(&format!("SHA256 {}", hex.to_uppercase())),
            Some(pin)
        );
        assert_eq!(parse_pin(&format!("sha-1 {hex}")), None);
        assert_eq!(parse_pin(&hex), None);
        assert_eq!(parse_pin("sha-256 00:11"), None);
        assert_eq!(parse_pin(&format!("sha-256 {hex}:00")), None);
        assert_eq!(
            parse_pin(&format!("sha-256 {}", hex.replace(':', ""))),
            None
        );
        assert_eq!(parse_pin("sha-256 zz"), None);
    }

    #[test]
    fn fingerprint_round_trips_through_a_pin() {
        let text = format!("sha-256 {}", fingerprint(b"certificate"));
        let pin = parse_pin(&text).unwrap();
        let digest: [u8; 32] = sha2::Sha256::digest(b"certificate").into();
        assert_eq!(pin, digest);
    }

    #[test]
    fn trunk_profiles_need_usable_inputs() {
        let dir = std::env::temp_dir().join(format!("sip-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, b"no pem here").unwrap();
        let tls = |verify, ca_file, fingerprint: Option<&str>| TrunkTls {
            host: "trunk.example".into(),
            verify,
            ca_file,
            fingerprint: fingerprint.map(str::to_string),
        };
        let err = TlsPeer::for_trunk("t", &tls(TlsVerify::Ca, Some(empty.clone()), None));
        assert!(matches!(err, Err(TlsSetupError::Pem { .. })), "{err:?}");
        let err = TlsPeer::for_trunk("t", &tls(TlsVerify::Ca, Some(dir.join("missing")), None));
        assert!(matches!(err, Err(TlsSetupError::Read { .. })), "{err:?}");
        let err = TlsPeer::for_trunk("t", &tls(TlsVerify::Pinned, None, Some("sha-256 00")));
        assert!(matches!(err, Err(TlsSetupError::Pin(_))), "{err:?}");

        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(vec!["ca".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        let peer = TlsPeer::for_trunk("t", &tls(TlsVerify::Ca, Some(ca_path), None)).unwrap();
        assert_eq!(peer.trunk, "t");
        let pin = format!("sha-256 {}", fingerprint(ca.der()));
        TlsPeer::for_trunk("t", &tls(TlsVerify::Pinned, None, Some(&pin))).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
