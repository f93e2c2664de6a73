//! The self-signed pair in `data_dir`, for gateways without a configured
//! certificate: ECDSA P-256 (rcgen's default key), valid a year.

use super::files::{load_pair, write_atomically, Loaded};
use super::CertError;
use rustls::crypto::CryptoProvider;
use std::path::Path;
use time::{Duration, OffsetDateTime};

pub const CERT_FILE: &str = "tls-cert.pem";
pub const KEY_FILE: &str = "tls-key.pem";

/// Validity of a generated certificate.
pub const VALIDITY: Duration = Duration::days(365);

/// The subject's common name, so that an operator (and check-config) can
/// tell the generated certificate from a configured one.
pub const COMMON_NAME: &str = "webrtc-sip-gateway (self-signed)";

/// Generates a new pair valid from `now` for the DNS names and addresses in
/// `names`, writes it into `dir` and loads it back (the same checks as any
/// other pair).
pub(crate) fn generate_into(
    dir: &Path,
    names: &[String],
    now: OffsetDateTime,
    provider: &CryptoProvider,
) -> Result<Loaded, CertError> {
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    let gen_err = |source| CertError::Generate {
        path: cert_path.clone(),
        source,
    };
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(gen_err)?;
    // A day of slack for clients whose clocks run behind.
    params.not_before = now - Duration::days(1);
    params.not_after = now + VALIDITY;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, COMMON_NAME);
    let key = rcgen::KeyPair::generate().map_err(gen_err)?;
    let cert = params.self_signed(&key).map_err(gen_err)?;

    std::fs::create_dir_all(dir).map_err(|source| CertError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    // Key first: if we die between the two writes, the old certificate no
    // longer matches the key, and the next load refuses the pair and
    // generates both again.
    write_atomically(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_atomically(&cert_path, cert.pem().as_bytes(), 0o644)?;
    load_pair(&cert_path, &key_path, provider)
}
