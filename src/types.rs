//! Small vocabulary shared by every layer: newtypes for values that are easily
//! confused, the SRTP suites, and wrappers that keep secrets and personal data
//! out of logs. Nothing here does IO or knows a protocol's wire format beyond
//! the registered names of the SRTP suites.

use serde::Deserialize;
use std::fmt;
use std::str::FromStr;

/// An RTP synchronisation source identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ssrc(pub u32);

/// An RTP payload type number (0..=127).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PayloadType(pub u8);

/// A DTMF digit: one of `0-9 * # A-D`, kept as its RFC 4733 event code
/// (0-9, `*` 10, `#` 11, A-D 12-15), the one form every layer can use: the
/// browser's and SIP INFO's characters, the telephone-event payload's byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DtmfDigit(u8);

impl DtmfDigit {
    const CHARS: &'static [u8; 16] = b"0123456789*#ABCD";

    /// From the character (letters in either case); `None` for anything else.
    pub fn from_char(c: char) -> Option<Self> {
        let c = u8::try_from(c.to_ascii_uppercase()).ok()?;
        let code = Self::CHARS.iter().position(|&k| k == c)?;
        u8::try_from(code).ok().map(DtmfDigit)
    }

    /// From an RFC 4733 event code; `None` above 15 (flash and the tones
    /// of RFC 4734 are not digits).
    pub fn from_event(code: u8) -> Option<Self> {
        (usize::from(code) < Self::CHARS.len()).then_some(DtmfDigit(code))
    }

    pub fn event(self) -> u8 {
        self.0
    }

    pub fn as_char(self) -> char {
        char::from(Self::CHARS[usize::from(self.0 & 0x0f)])
    }
}

impl fmt::Display for DtmfDigit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_char())
    }
}

/// The id of a call as the browser (outgoing) or the gateway (incoming) chose it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CallId(pub String);

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of an account (also its SIP user part for inbound calls).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccountName(pub String);

impl fmt::Display for AccountName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A value that must never be printed: passwords, tokens, SRTP master keys.
/// `Debug` and `Display` print `<redacted>` so a `?` in a log line cannot leak it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }
    /// The secret itself; call only where it goes on the wire or into a cipher.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Secrets come from the config file as plain strings.
impl<'de, T: Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Secret)
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A number or URI that identifies a person. Its `Display` masks it
/// (`+4930******89`, see [`crate::cdr::mask_party`]) when the account asks
/// for redaction, so a log line, page or record cannot forget to.
#[derive(Clone, PartialEq, Eq)]
pub struct Personal {
    value: String,
    redact: bool,
}

impl Personal {
    pub fn new(value: impl Into<String>, redact: bool) -> Self {
        Personal {
            value: value.into(),
            redact,
        }
    }
    /// The real value, for the wire (SIP, SDP), never for logs.
    pub fn raw(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for Personal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.redact {
            f.write_str(&crate::cdr::mask_party(&self.value))
        } else {
            f.write_str(&self.value)
        }
    }
}

impl fmt::Debug for Personal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// SRTP crypto suites (RFC 4568, RFC 6188, RFC 7714). NULL cipher and
/// NULL auth are deliberately absent: the gateway never offers nor accepts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SrtpSuite {
    AesCm128HmacSha1_80,
    AesCm128HmacSha1_32,
    AesCm192HmacSha1_80,
    AesCm192HmacSha1_32,
    AesCm256HmacSha1_80,
    AesCm256HmacSha1_32,
    AeadAes128Gcm,
    AeadAes256Gcm,
}

impl SrtpSuite {
    pub const ALL: [SrtpSuite; 8] = [
        SrtpSuite::AeadAes128Gcm,
        SrtpSuite::AeadAes256Gcm,
        SrtpSuite::AesCm128HmacSha1_80,
        SrtpSuite::AesCm128HmacSha1_32,
        SrtpSuite::AesCm256HmacSha1_80,
        SrtpSuite::AesCm256HmacSha1_32,
        SrtpSuite::AesCm192HmacSha1_80,
        SrtpSuite::AesCm192HmacSha1_32,
    ];

    /// The name used in `a=crypto` (SDES) and in the config's `srtp_suites`.
    pub fn name(self) -> &'static str {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            SrtpSuite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            SrtpSuite::AesCm192HmacSha1_80 => "AES_192_CM_HMAC_SHA1_80",
            SrtpSuite::AesCm192HmacSha1_32 => "AES_192_CM_HMAC_SHA1_32",
            SrtpSuite::AesCm256HmacSha1_80 => "AES_256_CM_HMAC_SHA1_80",
            SrtpSuite::AesCm256HmacSha1_32 => "AES_256_CM_HMAC_SHA1_32",
            SrtpSuite::AeadAes128Gcm => "AEAD_AES_128_GCM",
            SrtpSuite::AeadAes256Gcm => "AEAD_AES_256_GCM",
        }
    }

    /// Master key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            SrtpSuite::AesCm128HmacSha1_80
            | SrtpSuite::AesCm128HmacSha1_32
            | SrtpSuite::AeadAes128Gcm => 16,
            SrtpSuite::AesCm192HmacSha1_80 | SrtpSuite::AesCm192HmacSha1_32 => 24,
            SrtpSuite::AesCm256HmacSha1_80
            | SrtpSuite::AesCm256HmacSha1_32
            | SrtpSuite::AeadAes256Gcm => 32,
        }
    }

    /// Master salt length in bytes (RFC 3711: 112 bits; RFC 7714: 96 bits).
    pub fn salt_len(self) -> usize {
        match self {
            SrtpSuite::AeadAes128Gcm | SrtpSuite::AeadAes256Gcm => 12,
            _ => 14,
        }
    }
}

impl fmt::Display for SrtpSuite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown SRTP suite {0:?}")]
pub struct UnknownSuite(pub String);

impl FromStr for SrtpSuite {
    type Err = UnknownSuite;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // "AES_CM_256_HMAC_SHA1_80" is FreeSWITCH's spelling of the RFC 6188 names.
        let s = match s {
            "AES_CM_256_HMAC_SHA1_80" => "AES_256_CM_HMAC_SHA1_80",
            "AES_CM_256_HMAC_SHA1_32" => "AES_256_CM_HMAC_SHA1_32",
            "AES_CM_192_HMAC_SHA1_80" => "AES_192_CM_HMAC_SHA1_80",
            "AES_CM_192_HMAC_SHA1_32" => "AES_192_CM_HMAC_SHA1_32",
            other => other,
        };
        SrtpSuite::ALL
            .into_iter()
            .find(|suite| suite.name() == s)
            .ok_or_else(|| UnknownSuite(s.to_string()))
    }
}

/// Suites are written by name in the config (`srtp_suites`).
impl<'de> serde::Deserialize<'de> for SrtpSuite {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// An SRTP master key and salt for one direction of one leg.
#[derive(Clone, PartialEq, Eq)]
pub struct SrtpKeyMaterial {
    pub suite: SrtpSuite,
    pub key: Secret<Vec<u8>>,
    pub salt: Secret<Vec<u8>>,
    /// The master key identifier as it travels in every packet protected
    /// with this key (RFC 3711 3.1, RFC 4568 `|value:length`), or `None`.
    /// Not secret: it is on the wire in the clear.
    pub mki: Option<Vec<u8>>,
}

impl SrtpKeyMaterial {
    /// Fresh random key and salt for `suite`.
    pub fn generate(suite: SrtpSuite) -> Self {
        use rand::RngCore;
        let mut key = vec![0u8; suite.key_len()];
        let mut salt = vec![0u8; suite.salt_len()];
        rand::thread_rng().fill_bytes(&mut key);
        rand::thread_rng().fill_bytes(&mut salt);
        SrtpKeyMaterial {
            suite,
            key: Secret::new(key),
            salt: Secret::new(salt),
            mki: None,
        }
    }
}

impl fmt::Debug for SrtpKeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SrtpKeyMaterial({}, <redacted>)", self.suite)
    }
}

/// How the keys of a media leg are agreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAgreement {
    Dtls,
    Sdes,
    None,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_names_round_trip() {
        for suite in SrtpSuite::ALL {
            assert_eq!(suite.name().parse::<SrtpSuite>(), Ok(suite));
        }
        assert_eq!(
            "AES_CM_256_HMAC_SHA1_80".parse::<SrtpSuite>(),
            Ok(SrtpSuite::AesCm256HmacSha1_80)
        );
        assert!("NULL_HMAC_SHA1_80".parse::<SrtpSuite>().is_err());
    }

    #[test]
    fn secrets_and_personal_data_do_not_print() {
        let key = SrtpKeyMaterial::generate(SrtpSuite::AesCm128HmacSha1_80);
        assert!(!format!("{key:?}").contains(&format!("{:?}", key.key.expose())));
        assert_eq!(
            format!("{}", Personal::new("+493012345689", true)),
            "+4930******89"
        );
        assert_eq!(format!("{}", Personal::new("+4930123", false)), "+4930123");
    }
}

/// Where a trunk leg's plain RTP may come from (`trunks[].media_source`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaSource {
    /// Only from the IP address in the trunk's SDP (the strict default).
    #[default]
    Signaled,
    /// From wherever the first packet with a negotiated SSRC and payload
    /// type came (trunks behind NAT, or multi-homed ones that advertise one
    /// address and send from another, as linphone does by default).
    Latch,
}
