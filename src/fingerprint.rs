//! Certificate fingerprints as SDP carries them (shared vocabulary: `sdp`
//! parses them from offers, `media` verifies DTLS certificates against them) (`a=fingerprint`, RFC 8122
//! section 5): a hash function name and the hash of the DER certificate in
//! uppercase hex pairs joined by colons.
//!
//! DTLS in WebRTC does not use certificate chains: the browser's self-signed
//! certificate is trusted only because its hash matches what the signaling
//! channel delivered. That comparison is the whole of peer authentication on
//! the media path, so it is done here in one place, in constant time.

use sha1::Sha1;
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};
use std::fmt;
use std::str::FromStr;

/// Longest digest we know (SHA-512); longer values cannot match anything.
const MAX_DIGEST_LEN: usize = 64;
/// Longest SDP attribute value we look at: "sha-512 " plus 64 hex pairs and
/// colons is 199 characters; anything far beyond is not a fingerprint.
const MAX_TEXT_LEN: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FingerprintError {
    #[error("fingerprint attribute too long")]
    TooLong,
    #[error("fingerprint attribute needs `<hash-func> <hex:pairs>`")]
    MissingValue,
    #[error("fingerprint value is not colon-separated hex pairs")]
    BadHex,
}

/// A certificate fingerprint: hash function name (lowercase, e.g. "sha-256")
/// and the digest bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    pub algorithm: String,
    pub value: Vec<u8>,
}

impl Fingerprint {
    /// Parses the value of an `a=fingerprint` attribute, e.g.
    /// `sha-256 AB:CD:...`. Hash names are case-insensitive (RFC 8122 grammar
    /// uses token; browsers send lowercase). An unknown hash name still parses:
    /// it simply never matches a certificate.
    pub fn parse(text: &str) -> Result<Self, FingerprintError> {
        if text.len() > MAX_TEXT_LEN {
            return Err(FingerprintError::TooLong);
        }
        let mut parts = text.split_ascii_whitespace();
        let algorithm = parts.next().ok_or(FingerprintError::MissingValue)?;
        let hex = parts.next().ok_or(FingerprintError::MissingValue)?;
        if parts.next().is_some() {
            return Err(FingerprintError::BadHex);
        }
        let mut value = Vec::with_capacity(MAX_DIGEST_LEN);
        for pair in hex.split(':') {
            let byte = match pair.as_bytes() {
                [hi, lo] => (hex_digit(*hi)? << 4) | hex_digit(*lo)?,
                _ => return Err(FingerprintError::BadHex),
            };
            if value.len() == MAX_DIGEST_LEN {
                return Err(FingerprintError::TooLong);
            }
            value.push(byte);
        }
        Ok(Fingerprint {
            algorithm: algorithm.to_ascii_lowercase(),
            value,
        })
    }

    /// The SHA-256 fingerprint of a DER certificate.
    pub fn sha256(der: &[u8]) -> Self {
        Fingerprint {
            algorithm: "sha-256".to_string(),
            value: Sha256::digest(der).to_vec(),
        }
    }

    /// Whether `der` hashes to this fingerprint. The digest comparison runs
    /// in constant time; an unknown hash function is a mismatch, never an
    /// error that could be mistaken for success.
    pub fn matches(&self, der: &[u8]) -> bool {
        let digest: Vec<u8> = match self.algorithm.as_str() {
            "sha-1" => Sha1::digest(der).to_vec(),
            "sha-224" => Sha224::digest(der).to_vec(),
            "sha-256" => Sha256::digest(der).to_vec(),
            "sha-384" => Sha384::digest(der).to_vec(),
            "sha-512" => Sha512::digest(der).to_vec(),
            _ => return false,
        };
        constant_time_eq(&digest, &self.value)
    }
}

impl FromStr for Fingerprint {
    type Err = FingerprintError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Fingerprint::parse(s)
    }
}

impl fmt::Display for Fingerprint {
    /// The SDP form: `sha-256 AB:CD:...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.algorithm, colon_hex(&self.value))
    }
}

/// "AB:CD:..." (uppercase, as RFC 8122 writes it) of the SHA-256 of `der`.
pub fn sha256_fingerprint(der: &[u8]) -> String {
    colon_hex(&Sha256::digest(der))
}

fn colon_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn hex_digit(c: u8) -> Result<u8, FingerprintError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(FingerprintError::BadHex),
    }
}

/// Equality without an early exit on the first differing byte, so the time
/// taken says nothing about how much of a forged digest was right. Lengths
/// are public (they follow from the algorithm name).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const DER: &[u8] = b"not really a certificate, but hashing does not care";

    #[test]
    fn sha256_text_is_uppercase_colon_pairs() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            sha256_fingerprint(b"abc"),
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:\
             B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }

    #[test]
    fn parse_display_round_trip() {
        let text = format!("sha-256 {}", sha256_fingerprint(DER));
        let fp: Fingerprint = text.parse().unwrap();
        assert_eq!(fp.algorithm, "sha-256");
        assert_eq!(fp.value.len(), 32);
        assert_eq!(fp.to_string(), text);
        assert_eq!(fp, Fingerprint::sha256(DER));
        // Lowercase hex and an uppercase hash name, as some endpoints send.
        let lower = format!("SHA-256 {}", sha256_fingerprint(DER).to_lowercase());
        assert_eq!(lower.parse::<Fingerprint>().unwrap(), fp);
    }

    #[test]
    fn matches_each_supported_hash() {
        for (name, digest) in [
            ("sha-1", Sha1::digest(DER).to_vec()),
            ("sha-224", Sha224::digest(DER).to_vec()),
            ("sha-256", Sha256::digest(DER).to_vec()),
            ("sha-384", Sha384::digest(DER).to_vec()),
            ("sha-512", Sha512::digest(DER).to_vec()),
        ] {
            let fp: Fingerprint = format!("{name} {}", colon_hex(&digest)).parse().unwrap();
            assert!(fp.matches(DER), "{name}");
            assert!(!fp.matches(b"another certificate"), "{name}");
            let mut wrong = fp.clone();
            let last = wrong.value.len() - 1;
            wrong.value[last] ^= 1;
            assert!(!wrong.matches(DER), "{name}");
        }
    }

    #[test]
    fn unknown_or_mismatched_algorithm_never_matches() {
        let md5 = Fingerprint {
            algorithm: "md5".into(),
            value: vec![0; 16],
        };
        assert!(!md5.matches(DER));
        // Right digest, wrong label.
        let mislabeled = Fingerprint {
            algorithm: "sha-384".into(),
            value: Sha256::digest(DER).to_vec(),
        };
        assert!(!mislabeled.matches(DER));
        // Truncated digest.
        let mut short = Fingerprint::sha256(DER);
        short.value.truncate(16);
        assert!(!short.matches(DER));
    }

    #[test]
    fn bad_text_is_an_error() {
        for bad in [
            "",
            "sha-256",
            "sha-256 ",
            "sha-256 AB:C",
            "sha-256 AB::CD",
            "sha-256 AB:CD:",
            "sha-256 ABCD",
            "sha-256 GG:00",
            "sha-256 AB:CD extra",
            "sha-256 é1:00",
        ] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad:?}");
        }
        let long = format!("sha-256 {}", vec!["AB"; 65].join(":"));
        assert!(long.parse::<Fingerprint>().is_err());
        assert_eq!(
            "x".repeat(300).parse::<Fingerprint>(),
            Err(FingerprintError::TooLong)
        );
    }
}
