//! RFC 4568 (SDES) `a=crypto` attributes:
//!
//! ```text
//! a=crypto:<tag> <suite> inline:<base64 key||salt>[|<lifetime>][|<MKI>:<length>][;inline:...] [session-params]
//! ```
//!
//! Parsing is strict where a mistake would weaken or break the media (key
//! length must match the suite exactly, NULL suites and session parameters
//! that turn off encryption or authentication are refused) and lenient where
//! peers differ harmlessly (base64 with or without `=` padding, the
//! FreeSWITCH spelling `AES_CM_256_...`). No error text ever contains key
//! material: errors are logged and sent to browsers.

use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;

use super::SdpError;
use crate::types::{Secret, SrtpKeyMaterial, SrtpSuite};

/// Peers disagree about `=` padding of inline keys (a 46-byte AES-256 key and
/// salt needs two); accept both, write the padded form RFC 4568 shows. Some
/// encoders also leave stray bits in the last symbol; they carry no key
/// bits, so they are ignored rather than failing the call.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// SRTP refuses to use a master key for more than 2^48 packets (RFC 3711
/// section 9.2); a lifetime above it is meaningless.
const MAX_LIFETIME: u64 = 1 << 48;

/// The largest tag RFC 4568 allows (`1*9DIGIT`).
const MAX_TAG: u32 = 999_999_999;

/// Master key identifier: the value carried in each SRTP packet and its
/// length in bytes on the wire (RFC 4568 section 6.1: length 1..=128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mki {
    pub value: u64,
    pub length: u8,
}

/// One `inline:` key parameter: master key and salt, optional lifetime (in
/// packets) and MKI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineKey {
    pub material: SrtpKeyMaterial,
    /// Packets this key may protect; `2^n` is stored as its value.
    pub lifetime: Option<u64>,
    pub mki: Option<Mki>,
}

/// One `a=crypto` attribute. `Debug` is safe to log: key material prints as
/// `<redacted>` (see [`SrtpKeyMaterial`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CryptoAttribute {
    pub tag: u32,
    pub suite: SrtpSuite,
    /// Never empty. Several keys (RFC 4568 section 6.1, each with an MKI) are
    /// kept; the gateway uses the first.
    pub keys: Vec<InlineKey>,
    /// Session parameters we accept and pass through (only `WSH=`); the ones
    /// we cannot honour make the attribute fail to parse.
    pub session_params: Vec<String>,
}

impl CryptoAttribute {
    /// An attribute for one of our own keys: no lifetime, no MKI (the SRTP
    /// default of 2^48/2^31 packets is plenty for a call).
    pub fn new(tag: u32, material: SrtpKeyMaterial) -> Self {
        CryptoAttribute {
            tag,
            suite: material.suite,
            keys: vec![InlineKey {
                material,
                lifetime: None,
                mki: None,
            }],
            session_params: Vec::new(),
        }
    }

    /// The key the gateway uses. `keys` is never empty after `parse` or `new`.
    pub fn key(&self) -> Option<&InlineKey> {
        self.keys.first()
    }

    /// Parses the value of an `a=crypto` attribute (what follows `crypto:`).
    pub fn parse(value: &str) -> Result<Self, SdpError> {
        let mut fields = value.split_ascii_whitespace();
        let tag = parse_tag(fields.next())?;
        let bad = |reason: &str| SdpError::BadCrypto {
            tag: Some(tag),
            reason: reason.to_string(),
        };
        let suite_name = fields.next().ok_or_else(|| bad("no crypto suite"))?;
        let suite = parse_suite(tag, suite_name)?;
        let key_params = fields.next().ok_or_else(|| bad("no key parameters"))?;
        let keys = key_params
            .split(';')
            .map(|param| parse_key_param(tag, suite, param))
            .collect::<Result<Vec<_>, _>>()?;
        // With several keys the receiver picks by MKI, so each needs one, of
        // one length (RFC 4568 section 6.1).
        if keys.len() > 1 {
            let first_len = keys[0].mki.map(|m| m.length);
            if first_len.is_none() || keys.iter().any(|k| k.mki.map(|m| m.length) != first_len) {
                return Err(bad("several keys need an MKI of the same length each"));
            }
        }
        let session_params = fields
            .map(|param| check_session_param(tag, param).map(|()| param.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CryptoAttribute {
            tag,
            suite,
            keys,
            session_params,
        })
    }

    /// The attribute value to write after `a=crypto:`. Contains the key: it
    /// goes on the wire only, never into a log (hence no `Display`).
    pub fn to_sdp_value(&self) -> String {
        let keys = self
            .keys
            .iter()
            .map(|k| {
                let mut both = Vec::with_capacity(k.material.key.expose().len() + 14);
                both.extend_from_slice(k.material.key.expose());
                both.extend_from_slice(k.material.salt.expose());
                let mut param = format!("inline:{}", STANDARD.encode(&both));
                if let Some(lifetime) = k.lifetime {
                    param.push('|');
                    param.push_str(&format_lifetime(lifetime));
                }
                if let Some(mki) = k.mki {
                    param.push_str(&format!("|{}:{}", mki.value, mki.length));
                }
                param
            })
            .collect::<Vec<_>>()
            .join(";");
        let mut out = format!("{} {} {}", self.tag, self.suite.name(), keys);
        for param in &self.session_params {
            out.push(' ');
            out.push_str(param);
        }
        out
    }
}

fn parse_tag(field: Option<&str>) -> Result<u32, SdpError> {
    let bad = |reason: &str| SdpError::BadCrypto {
        tag: None,
        reason: reason.to_string(),
    };
    let field = field.ok_or_else(|| bad("empty attribute"))?;
    if field.is_empty() || field.len() > 9 || !field.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("tag is not 1 to 9 digits"));
    }
    field
        .parse::<u32>()
        .ok()
        .filter(|t| *t <= MAX_TAG)
        .ok_or_else(|| bad("tag is not 1 to 9 digits"))
}

fn parse_suite(tag: u32, name: &str) -> Result<SrtpSuite, SdpError> {
    name.parse::<SrtpSuite>().map_err(|_| {
        // A suite without encryption or authentication is a downgrade, not
        // an unknown; say so, the operator will want to know who offers it.
        if name.contains("NULL") {
            SdpError::RefusedCryptoSuite {
                tag,
                suite: name.to_string(),
            }
        } else {
            SdpError::UnknownCryptoSuite {
                tag,
                suite: name.to_string(),
            }
        }
    })
}

fn parse_key_param(tag: u32, suite: SrtpSuite, param: &str) -> Result<InlineKey, SdpError> {
    let bad = |reason: String| SdpError::BadCrypto {
        tag: Some(tag),
        reason,
    };
    let info = match param.split_once(':') {
        Some(("inline", info)) => info,
        Some((method, _)) => {
            return Err(bad(format!("key method {method:?} is not supported")));
        }
        None => return Err(bad("key parameter is not <method>:<info>".into())),
    };
    let mut parts = info.split('|');
    let key_salt = parts.next().unwrap_or_default();
    let (mut lifetime, mut mki) = (None, None);
    for part in parts {
        // Lifetime and MKI are both optional; an MKI is the one with a colon.
        if part.contains(':') {
            if mki.is_some() {
                return Err(bad("more than one MKI".into()));
            }
            mki = Some(parse_mki(part).map_err(|r| bad(r.into()))?);
        } else {
            if lifetime.is_some() || mki.is_some() {
                return Err(bad("lifetime must come once, before the MKI".into()));
            }
            lifetime = Some(parse_lifetime(part).map_err(|r| bad(r.into()))?);
        }
    }
    let bad_key = |reason: String| SdpError::BadCryptoKey { tag, suite, reason };
    let mut bytes = LENIENT_BASE64
        .decode(key_salt)
        .map_err(|_| bad_key("inline key is not base64".into()))?;
    let want = suite.key_len() + suite.salt_len();
    if bytes.len() != want {
        let got = bytes.len();
        bytes.fill(0);
        return Err(bad_key(format!(
            "inline key and salt are {got} bytes, the suite needs {want}"
        )));
    }
    let salt = bytes.split_off(suite.key_len());
    Ok(InlineKey {
        material: SrtpKeyMaterial {
            suite,
            key: Secret::new(bytes),
            salt: Secret::new(salt),
            mki: mki.map(|m| m.wire_bytes()),
        },
        lifetime,
        mki,
    })
}

fn parse_lifetime(s: &str) -> Result<u64, &'static str> {
    let value = if let Some(exp) = s.strip_prefix("2^") {
        let exp = parse_digits(exp).ok_or("lifetime 2^n needs a decimal n")?;
        if exp > 48 {
            return Err("lifetime above 2^48 packets");
        }
        1u64 << exp
    } else {
        parse_digits(s).ok_or("lifetime is neither decimal nor 2^n")?
    };
    if value == 0 || value > MAX_LIFETIME {
        return Err("lifetime must be 1 to 2^48 packets");
    }
    Ok(value)
}

fn parse_mki(s: &str) -> Result<Mki, &'static str> {
    let (value, length) = s.split_once(':').ok_or("MKI is not value:length")?;
    let value = parse_digits(value).ok_or("MKI value is not decimal")?;
    let length = parse_digits(length)
        .filter(|l| (1..=128).contains(l))
        .ok_or("MKI length must be 1 to 128")? as u8;
    // The value travels in `length` bytes; one that does not fit is a typo.
    if length < 8 && value >> (8 * u32::from(length)) != 0 {
        return Err("MKI value does not fit its length");
    }
    Ok(Mki { value, length })
}

/// Decimal digits only (no sign, no spaces), as the RFC's `1*DIGIT`.
fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn format_lifetime(lifetime: u64) -> String {
    if lifetime.is_power_of_two() {
        format!("2^{}", lifetime.trailing_zeros())
    } else {
        lifetime.to_string()
    }
}

/// RFC 4568 section 6.3 session parameters. The media layer runs SRTP with
/// encryption and authentication on both RTP and RTCP, the default key
/// derivation rate and no FEC; a parameter that changes any of that would
/// make us silently do something else than the peer, so it refuses the
/// attribute. Unknown parameters are refused for the same reason (the
/// offerer may send other `a=crypto` lines we can take instead).
fn check_session_param(tag: u32, param: &str) -> Result<(), SdpError> {
    if let Some(n) = param.strip_prefix("WSH=") {
        // Window size hint: advice for the replay window, min 64.
        if parse_digits(n).is_some_and(|n| n >= 64) {
            return Ok(());
        }
    }
    Err(SdpError::UnsupportedCryptoParam {
        tag,
        param: param.to_string(),
    })
}

impl Mki {
    /// The MKI as it travels in each packet: `value` big-endian in `length`
    /// bytes (zeros in front when the length is over 8).
    pub fn wire_bytes(&self) -> Vec<u8> {
        let len = usize::from(self.length);
        let mut out = vec![0u8; len];
        let value = self.value.to_be_bytes();
        let n = len.min(value.len());
        out[len - n..].copy_from_slice(&value[value.len() - n..]);
        out
    }
}

impl fmt::Display for Mki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.value, self.length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 30 bytes: 16 key + 14 salt, RFC 4568 section 9 example.
    const KEY30: &str = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";

    fn key_of(len: usize) -> String {
        STANDARD.encode(vec![7u8; len])
    }

    #[test]
    fn parses_plain_inline_key() {
        let c =
            CryptoAttribute::parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}")).unwrap();
        assert_eq!(c.tag, 1);
        assert_eq!(c.suite, SrtpSuite::AesCm128HmacSha1_80);
        assert_eq!(c.keys.len(), 1);
        let k = c.key().unwrap();
        assert_eq!(k.material.key.expose().len(), 16);
        assert_eq!(k.material.salt.expose().len(), 14);
        assert_eq!(&k.material.key.expose()[..4], b"YS__");
        assert_eq!(k.lifetime, None);
        assert_eq!(k.mki, None);
    }

    #[test]
    fn parses_lifetime_power_and_decimal() {
        let c = CryptoAttribute::parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}|2^31"))
            .unwrap();
        assert_eq!(c.keys[0].lifetime, Some(1 << 31));
        assert_eq!(c.keys[0].mki, None);
        let c =
            CryptoAttribute::parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}|1000000"))
                .unwrap();
        assert_eq!(c.keys[0].lifetime, Some(1_000_000));
    }

    #[test]
    fn parses_mki_alone_and_with_lifetime() {
        let c = CryptoAttribute::parse(&format!("2 AES_CM_128_HMAC_SHA1_32 inline:{KEY30}|1:4"))
            .unwrap();
        assert_eq!(c.keys[0].lifetime, None);
        assert_eq!(
            c.keys[0].mki,
            Some(Mki {
                value: 1,
                length: 4
            })
        );
        let c = CryptoAttribute::parse(&format!(
            "1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}|2^20|1:32"
        ))
        .unwrap();
        assert_eq!(c.keys[0].lifetime, Some(1 << 20));
        assert_eq!(
            c.keys[0].mki,
            Some(Mki {
                value: 1,
                length: 32
            })
        );
    }

    #[test]
    fn parses_several_keys_and_uses_first() {
        let k2 = key_of(30);
        let c = CryptoAttribute::parse(&format!(
            "1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}|2^20|1:4;inline:{k2}|2^20|2:4"
        ))
        .unwrap();
        assert_eq!(c.keys.len(), 2);
        assert_eq!(&c.key().unwrap().material.key.expose()[..4], b"YS__");
        assert_eq!(
            c.keys[1].mki,
            Some(Mki {
                value: 2,
                length: 4
            })
        );
        assert_eq!(c.keys[1].material.key.expose(), &vec![7u8; 16]);
    }

    #[test]
    fn several_keys_need_mkis() {
        let k2 = key_of(30);
        let e = CryptoAttribute::parse(&format!(
            "1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30};inline:{k2}"
        ))
        .unwrap_err();
        assert!(matches!(e, SdpError::BadCrypto { tag: Some(1), .. }), "{e}");
        let e = CryptoAttribute::parse(&format!(
            "1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}|1:4;inline:{k2}|2:2"
        ))
        .unwrap_err();
        assert!(matches!(e, SdpError::BadCrypto { .. }), "{e}");
    }

    #[test]
    fn key_lengths_must_match_suite() {
        for (suite, len) in [
            (SrtpSuite::AesCm128HmacSha1_80, 30),
            (SrtpSuite::AesCm128HmacSha1_32, 30),
            (SrtpSuite::AesCm192HmacSha1_80, 38),
            (SrtpSuite::AesCm192HmacSha1_32, 38),
            (SrtpSuite::AesCm256HmacSha1_80, 46),
            (SrtpSuite::AesCm256HmacSha1_32, 46),
            (SrtpSuite::AeadAes128Gcm, 28),
            (SrtpSuite::AeadAes256Gcm, 44),
        ] {
            let ok = CryptoAttribute::parse(&format!("1 {} inline:{}", suite.name(), key_of(len)))
                .unwrap();
            assert_eq!(ok.suite, suite);
            assert_eq!(ok.keys[0].material.key.expose().len(), suite.key_len());
            assert_eq!(ok.keys[0].material.salt.expose().len(), suite.salt_len());
            for wrong in [len - 1, len + 1, 30, 46, 28, 44] {
                if wrong == len {
                    continue;
                }
                let e =
                    CryptoAttribute::parse(&format!("1 {} inline:{}", suite.name(), key_of(wrong)))
                        .unwrap_err();
                assert!(
                    matches!(e, SdpError::BadCryptoKey { tag: 1, suite: s, .. } if s == suite),
                    "{suite} {wrong}: {e}"
                );
                assert_eq!(e.sip_status(), 488);
            }
        }
    }

    #[test]
    fn unpadded_base64_is_accepted() {
        let padded = key_of(46);
        assert!(padded.ends_with("=="));
        let c = CryptoAttribute::parse(&format!(
            "1 AES_256_CM_HMAC_SHA1_80 inline:{}",
            padded.trim_end_matches('=')
        ))
        .unwrap();
        assert_eq!(c.keys[0].material.key.expose().len(), 32);
        // FreeSWITCH's spelling of the same suite.
        let c =
            CryptoAttribute::parse(&format!("1 AES_CM_256_HMAC_SHA1_80 inline:{padded}")).unwrap();
        assert_eq!(c.suite, SrtpSuite::AesCm256HmacSha1_80);
    }

    #[test]
    fn bad_base64_does_not_echo_key() {
        let e =
            CryptoAttribute::parse("1 AES_CM_128_HMAC_SHA1_80 inline:SECRETKEY!!!!xx").unwrap_err();
        assert!(matches!(e, SdpError::BadCryptoKey { .. }));
        assert!(!e.to_string().contains("SECRETKEY"));
        assert!(!format!("{e:?}").contains("SECRETKEY"));
    }

    #[test]
    fn unknown_and_null_suites() {
        let e =
            CryptoAttribute::parse(&format!("3 F8_128_HMAC_SHA1_80 inline:{KEY30}")).unwrap_err();
        assert_eq!(
            e,
            SdpError::UnknownCryptoSuite {
                tag: 3,
                suite: "F8_128_HMAC_SHA1_80".into()
            }
        );
        for name in [
            "NULL_HMAC_SHA1_80",
            "AES_CM_128_NULL_AUTH",
            "NULL_HMAC_SHA1_32",
        ] {
            let e = CryptoAttribute::parse(&format!("1 {name} inline:{KEY30}")).unwrap_err();
            assert!(
                matches!(e, SdpError::RefusedCryptoSuite { .. }),
                "{name}: {e}"
            );
        }
    }

    #[test]
    fn session_params() {
        let c =
            CryptoAttribute::parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30} WSH=128"))
                .unwrap();
        assert_eq!(c.session_params, vec!["WSH=128".to_string()]);
        for p in [
            "UNENCRYPTED_SRTP",
            "UNENCRYPTED_SRTCP",
            "UNAUTHENTICATED_SRTP",
            "KDR=10",
            "FEC_ORDER=FEC_SRTP",
            "WSH=10",
            "SOMETHING_NEW",
        ] {
            let e =
                CryptoAttribute::parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30} {p}"))
                    .unwrap_err();
            assert_eq!(
                e,
                SdpError::UnsupportedCryptoParam {
                    tag: 1,
                    param: p.into()
                }
            );
        }
    }

    #[test]
    fn malformed_attributes() {
        for bad in [
            "",
            "x AES_CM_128_HMAC_SHA1_80 inline:{K}",
            "1234567890 AES_CM_128_HMAC_SHA1_80 inline:{K}",
            "-1 AES_CM_128_HMAC_SHA1_80 inline:{K}",
            "1",
            "1 AES_CM_128_HMAC_SHA1_80",
            "1 AES_CM_128_HMAC_SHA1_80 {K}",
            "1 AES_CM_128_HMAC_SHA1_80 uri:http://x",
            "1 AES_CM_128_HMAC_SHA1_80 inline:{K}|",
            "1 AES_CM_128_HMAC_SHA1_80 inline:{K}|2^",
            "1 AES_CM_128_HMAC_SHA1_80 inline:{K}|2^49",
            "1 AES_CM_128_HMAC_SHA1_80 inline:{K}|0",
            "1 AES_CM_128_HMAC_SHA1_80 inline:{K}|1:0",
            "1 AES_CM_128_HMAC_SHA1_80 inline:{K}|1:129",
            "1 AES_CM_128_HMAC_SHA1_80 inline:{K}|256:1",
            "1 AES_CM_128_HMAC_SHA1_80 inline:{K}|1:4|2^20",
            "1 AES_CM_128_HMAC_SHA1_80 inline:{K}|1:4|2:4",
            "1 AES_CM_128_HMAC_SHA1_80 inline:{K}|99999999999999999999999:4",
        ] {
            let line = bad.replace("{K}", KEY30);
            let e = CryptoAttribute::parse(&line).unwrap_err();
            assert!(
                matches!(
                    e,
                    SdpError::BadCrypto { .. } | SdpError::BadCryptoKey { .. }
                ),
                "{line}: {e}"
            );
        }
    }

    #[test]
    fn writes_what_it_parses() {
        let k2 = key_of(30);
        for line in [
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}"),
            format!("7 AES_CM_128_HMAC_SHA1_32 inline:{KEY30}|2^31|1:4"),
            format!(
                "1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}|2^20|1:4;inline:{k2}|2^20|2:4 WSH=64"
            ),
            format!("2 AEAD_AES_256_GCM inline:{}", key_of(44)),
        ] {
            let c = CryptoAttribute::parse(&line).unwrap();
            assert_eq!(c.to_sdp_value(), line);
            assert_eq!(CryptoAttribute::parse(&c.to_sdp_value()).unwrap(), c);
        }
    }

    #[test]
    fn new_writes_our_key_and_debug_hides_it() {
        let key = SrtpKeyMaterial::generate(SrtpSuite::AesCm128HmacSha1_80);
        let c = CryptoAttribute::new(1, key.clone());
        let v = c.to_sdp_value();
        assert!(v.starts_with("1 AES_CM_128_HMAC_SHA1_80 inline:"));
        let back = CryptoAttribute::parse(&v).unwrap();
        assert_eq!(back.keys[0].material, key);
        let b64 = v.rsplit(':').next().unwrap();
        assert!(!format!("{c:?}").contains(b64));
        assert!(format!("{c:?}").contains("redacted"));
    }
}
