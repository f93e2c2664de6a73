//! What an operator needs to know about a certificate: subject, expiry,
//! SHA-256 fingerprint.
//!
//! Parsed with `x509-parser` rather than a hand-written DER walk: printing a
//! subject means distinguished names with any OIDs, string types and
//! multi-valued RDNs, which is a parser's job. It is the rusticata project's
//! maintained parser and the very version `rtc-dtls` already builds, so it
//! costs no extra crate.

use std::fmt;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The public facts of one certificate (no key material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// RFC 4514-style, e.g. `CN=gw.example, O=Example`.
    pub subject: String,
    pub not_after: OffsetDateTime,
    /// SHA-256 of the DER as colon-separated hex, as browsers show it.
    pub sha256: String,
}

impl CertInfo {
    /// Reads one DER certificate; the error says what was wrong with it.
    pub fn parse(der: &[u8]) -> Result<CertInfo, String> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        let subject = cert.subject().to_string();
        Ok(CertInfo {
            subject: if subject.is_empty() {
                "(empty subject)".into()
            } else {
                subject
            },
            not_after: cert.validity().not_after.to_datetime(),
            sha256: sha256_fingerprint(der),
        })
    }
}

impl fmt::Display for CertInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "subject \"{}\", notAfter {}, sha-256 {}",
            self.subject,
            rfc3339(self.not_after),
            self.sha256
        )
    }
}

/// `2027-12-03T10:00:00Z`: unambiguous, sortable, what `openssl` users read.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// SHA-256 of `der` as colon-separated upper-case hex.
pub fn sha256_fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_subject_and_expiry_of_a_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["gw.example".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "gw.example");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example Ltd");
        let end = OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap();
        params.not_after = end;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.clone().self_signed(&key).unwrap();
        let info = CertInfo::parse(cert.der()).unwrap();
        assert!(info.subject.contains("CN=gw.example"), "{}", info.subject);
        assert!(info.subject.contains("O=Example Ltd"), "{}", info.subject);
        assert_eq!(info.not_after, end);
        assert_eq!(info.sha256.len(), 32 * 3 - 1);
        // rcgen writes GeneralizedTime from 2050 on.
        let far = OffsetDateTime::from_unix_timestamp(3_400_000_000).unwrap();
        params.not_after = far;
        let info = CertInfo::parse(params.self_signed(&key).unwrap().der()).unwrap();
        assert_eq!(info.not_after, far);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(CertInfo::parse(&[]).is_err());
        assert!(CertInfo::parse(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
        let params = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        for cut in 0..der.len() {
            assert!(CertInfo::parse(&der[..cut]).is_err());
        }
    }
}
