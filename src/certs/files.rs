//! Certificate and key files: reading PEM into a checked pair, and writing
//! the generated pair so that no reader ever sees half of it.

use super::x509::CertInfo;
use super::CertError;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A certificate chain with its private key, ready to serve, and the facts
/// about its end-entity certificate.
#[derive(Clone)]
pub(crate) struct Loaded {
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
}

/// Every CERTIFICATE block of a PEM file, in order (at least one).
pub(crate) fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let pem = std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem {
            path: path.to_path_buf(),
            problem: format!("bad PEM certificate: {e}"),
        })?;
    if certs.is_empty() {
        return Err(CertError::Pem {
            path: path.to_path_buf(),
            problem: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// The facts of each certificate in `certs`; the first unreadable one is an
/// error naming `path`.
pub(crate) fn describe(
    path: &Path,
    certs: &[CertificateDer<'_>],
) -> Result<Vec<CertInfo>, CertError> {
    certs
        .iter()
        .map(|c| {
            CertInfo::parse(c).map_err(|problem| CertError::X509 {
                path: path.to_path_buf(),
                problem,
            })
        })
        .collect()
}

/// Reads a certificate chain and its key and checks that they belong
/// together: a pair replaced file by file must not be served half-new.
pub(crate) fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<Loaded, CertError> {
    let certs = read_certificates(cert_path)?;
    let info = describe(cert_path, &certs[..1])?.remove(0);
    let key_pem = std::fs::read(key_path).map_err(|source| CertError::Read {
        path: key_path.to_path_buf(),
        source,
    })?;
    // The error text of pki-types names the PEM section, never key bytes.
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| CertError::Pem {
        path: key_path.to_path_buf(),
        problem: format!("no usable private key: {e}"),
    })?;
    let key = CertifiedKey::from_der(certs, key, provider).map_err(|source| CertError::Pair {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
        source,
    })?;
    Ok(Loaded {
        key: Arc::new(key),
        info,
    })
}

/// Writes through a fresh temporary file and a rename, so readers see the
/// old or the new file and the key is never readable by others, not even
/// for a moment.
pub(crate) fn write_atomically(path: &Path, data: &[u8], mode: u32) -> Result<(), CertError> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let write_err = |source| CertError::Write {
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
