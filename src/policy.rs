//! Per-account media encryption policy, modelled on PortaSwitch's
//! caller/callee table (`reference/portaswitch-media-encryption.txt`) and
//! FreeSWITCH's `rtp_secure_media` (mandatory / optional / forbidden).
//!
//! A pure function: the account and trunk settings in, what each leg of the
//! call must be out. No IO, no state.

use crate::types::SrtpSuite;
use serde::Deserialize;

/// What is delivered to the called party (PortaSwitch "callee" column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CalleeStream {
    /// Whatever the caller's leg uses.
    AsCaller,
    /// Plain RTP (the gateway decrypts).
    Decrypted,
    /// SDES-SRTP keyed by the gateway.
    Sdes,
    /// DTLS-SRTP toward the trunk.
    Dtls,
}

/// How the gateway treats the stream received from the calling party.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallerStream {
    /// Relay without decrypting (fully private call).
    ForcedRelay,
    /// Relay when both legs agree on keys, otherwise decrypt.
    RelayOrDecrypt,
    /// Always decrypt and re-encrypt (the gateway holds both key sets).
    Decrypt,
}

/// FreeSWITCH's `rtp_secure_media` for a trunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecureMedia {
    /// Offer and accept SAVP only.
    Mandatory,
    /// Offer SAVP, accept AVP too.
    Optional,
    /// Never SAVP toward this trunk.
    Forbidden,
}

/// The trunk leg of an outgoing call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrunkLegPlan {
    /// RTP/SAVP with these suites offered in this order.
    Sdes {
        suites: Vec<SrtpSuite>,
        /// Whether a plain RTP answer is acceptable (secure_media = optional).
        accept_plain: bool,
    },
    /// RTP/AVP.
    Plain,
}

impl TrunkLegPlan {
    /// May the call go on when the trunk answered with plain RTP?
    pub fn accepts_plain_answer(&self) -> bool {
        match self {
            TrunkLegPlan::Plain => true,
            TrunkLegPlan::Sdes { accept_plain, .. } => *accept_plain,
        }
    }
}

/// Why a call cannot be placed under the configured policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("callee_stream = \"{0}\" toward trunks is not supported yet")]
    Unsupported(&'static str),
    #[error("secure_media = \"mandatory\" conflicts with callee_stream = \"decrypted\"")]
    MandatoryButDecrypted,
    #[error("secure_media = \"forbidden\" conflicts with callee_stream = \"sdes\"")]
    ForbiddenButSdes,
    #[error("no SRTP suite to offer (srtp_suites is empty)")]
    NoSuites,
    #[error("the trunk offered plain RTP but its secure_media is \"mandatory\"")]
    PlainOfferRefused,
    #[error("the trunk offered SRTP but its secure_media is \"forbidden\"")]
    SecureOfferRefused,
    #[error("no a=crypto suite offered by the trunk is in its srtp_suites")]
    NoCommonSuite,
}

/// Settings that decide an outgoing call's trunk leg.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingPolicy<'a> {
    /// The account's override, if any, else the trunk's `callee_stream`.
    pub callee_stream: CalleeStream,
    pub secure_media: SecureMedia,
    pub srtp_suites: &'a [SrtpSuite],
}

/// Decides the trunk leg of a browser-to-trunk call. The browser leg is always
/// DTLS-SRTP, so `as_caller` means an encrypted trunk leg; the gateway keys it
/// with SDES because the browser's DTLS keys cannot be carried to a SIP trunk
/// (DTLS toward trunks and private relay come with the full policy table).
pub fn plan_outgoing(p: OutgoingPolicy<'_>) -> Result<TrunkLegPlan, PolicyError> {
    let encrypted = match p.callee_stream {
        CalleeStream::Sdes | CalleeStream::AsCaller => true,
        CalleeStream::Decrypted => false,
        CalleeStream::Dtls => return Err(PolicyError::Unsupported("dtls")),
    };
    match (encrypted, p.secure_media) {
        (true, SecureMedia::Forbidden) if p.callee_stream == CalleeStream::Sdes => {
            Err(PolicyError::ForbiddenButSdes)
        }
        // as_caller on a trunk that forbids SAVP: the trunk's rule wins.
        (true, SecureMedia::Forbidden) => Ok(TrunkLegPlan::Plain),
        (true, secure) => {
            if p.srtp_suites.is_empty() {
                return Err(PolicyError::NoSuites);
            }
            Ok(TrunkLegPlan::Sdes {
                suites: p.srtp_suites.to_vec(),
                accept_plain: secure == SecureMedia::Optional,
            })
        }
        (false, SecureMedia::Mandatory) => Err(PolicyError::MandatoryButDecrypted),
        (false, _) => Ok(TrunkLegPlan::Plain),
    }
}

/// The trunk leg of a trunk-to-browser call, decided from the trunk's offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncomingLegPlan {
    /// Answer RTP/SAVP with the trunk's `a=crypto` line `tag` (of `suite`)
    /// and a fresh key of ours.
    Sdes { tag: u32, suite: SrtpSuite },
    /// Answer RTP/AVP.
    Plain,
}

/// What a trunk's INVITE offered, as the policy needs it.
#[derive(Debug, Clone, Copy)]
pub struct IncomingOffer<'a> {
    /// RTP/SAVP (SDES) rather than RTP/AVP.
    pub secure: bool,
    /// The usable `a=crypto` lines as `(tag, suite)`, in the trunk's order.
    pub cryptos: &'a [(u32, SrtpSuite)],
}

/// Decides how the gateway answers a trunk's offer: the trunk's
/// `secure_media` says which profile it may use (FreeSWITCH's
/// `rtp_secure_media`), and among the offered `a=crypto` lines the first
/// suite in *our* `srtp_suites` order wins (the operator's preference; the
/// trunk's tag is kept). The browser leg is DTLS-SRTP whatever happens here.
pub fn plan_incoming(
    secure_media: SecureMedia,
    srtp_suites: &[SrtpSuite],
    offer: IncomingOffer<'_>,
) -> Result<IncomingLegPlan, PolicyError> {
    match (offer.secure, secure_media) {
        (false, SecureMedia::Mandatory) => Err(PolicyError::PlainOfferRefused),
        (false, _) => Ok(IncomingLegPlan::Plain),
        (true, SecureMedia::Forbidden) => Err(PolicyError::SecureOfferRefused),
        (true, _) => srtp_suites
            .iter()
            .find_map(|ours| {
                offer
                    .cryptos
                    .iter()
                    .find(|(_, theirs)| theirs == ours)
                    .map(|&(tag, suite)| IncomingLegPlan::Sdes { tag, suite })
            })
            .ok_or(PolicyError::NoCommonSuite),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUITES: &[SrtpSuite] = &[
        SrtpSuite::AesCm128HmacSha1_80,
        SrtpSuite::AesCm128HmacSha1_32,
    ];

    fn plan(callee: CalleeStream, secure: SecureMedia) -> Result<TrunkLegPlan, PolicyError> {
        plan_outgoing(OutgoingPolicy {
            callee_stream: callee,
            secure_media: secure,
            srtp_suites: SUITES,
        })
    }

    #[test]
    fn sdes_mandatory_offers_suites_in_order_and_refuses_plain() {
        let p = plan(CalleeStream::Sdes, SecureMedia::Mandatory).unwrap();
        assert_eq!(
            p,
            TrunkLegPlan::Sdes {
                suites: SUITES.to_vec(),
                accept_plain: false
            }
        );
        assert!(!p.accepts_plain_answer());
    }

    #[test]
    fn optional_accepts_a_plain_answer() {
        let p = plan(CalleeStream::Sdes, SecureMedia::Optional).unwrap();
        assert!(p.accepts_plain_answer());
    }

    #[test]
    fn decrypted_gives_plain_rtp_unless_mandatory() {
        assert_eq!(
            plan(CalleeStream::Decrypted, SecureMedia::Optional),
            Ok(TrunkLegPlan::Plain)
        );
        assert_eq!(
            plan(CalleeStream::Decrypted, SecureMedia::Forbidden),
            Ok(TrunkLegPlan::Plain)
        );
        assert_eq!(
            plan(CalleeStream::Decrypted, SecureMedia::Mandatory),
            Err(PolicyError::MandatoryButDecrypted)
        );
    }

    #[test]
    fn as_caller_follows_the_encrypted_browser_leg() {
        assert!(matches!(
            plan(CalleeStream::AsCaller, SecureMedia::Mandatory),
            Ok(TrunkLegPlan::Sdes { .. })
        ));
        assert_eq!(
            plan(CalleeStream::AsCaller, SecureMedia::Forbidden),
            Ok(TrunkLegPlan::Plain)
        );
    }

    #[test]
    fn conflicts_and_unsupported_are_errors() {
        assert_eq!(
            plan(CalleeStream::Sdes, SecureMedia::Forbidden),
            Err(PolicyError::ForbiddenButSdes)
        );
        assert_eq!(
            plan(CalleeStream::Dtls, SecureMedia::Mandatory),
            Err(PolicyError::Unsupported("dtls"))
        );
        assert_eq!(
            plan_outgoing(OutgoingPolicy {
                callee_stream: CalleeStream::Sdes,
                secure_media: SecureMedia::Mandatory,
                srtp_suites: &[],
            }),
            Err(PolicyError::NoSuites)
        );
    }

    #[test]
    fn incoming_sdes_picks_our_preferred_suite_and_keeps_the_trunks_tag() {
        let offered = [
            (1, SrtpSuite::AesCm128HmacSha1_32),
            (2, SrtpSuite::AesCm128HmacSha1_80),
        ];
        let offer = IncomingOffer {
            secure: true,
            cryptos: &offered,
        };
        assert_eq!(
            plan_incoming(SecureMedia::Mandatory, SUITES, offer),
            Ok(IncomingLegPlan::Sdes {
                tag: 2,
                suite: SrtpSuite::AesCm128HmacSha1_80
            })
        );
        assert_eq!(
            plan_incoming(
                SecureMedia::Optional,
                &[SrtpSuite::AesCm128HmacSha1_32],
                offer
            ),
            Ok(IncomingLegPlan::Sdes {
                tag: 1,
                suite: SrtpSuite::AesCm128HmacSha1_32
            })
        );
        assert_eq!(
            plan_incoming(SecureMedia::Mandatory, &[SrtpSuite::AeadAes128Gcm], offer),
            Err(PolicyError::NoCommonSuite)
        );
        assert_eq!(
            plan_incoming(SecureMedia::Forbidden, SUITES, offer),
            Err(PolicyError::SecureOfferRefused)
        );
    }

    #[test]
    fn incoming_plain_offer_follows_secure_media() {
        let offer = IncomingOffer {
            secure: false,
            cryptos: &[],
        };
        assert_eq!(
            plan_incoming(SecureMedia::Mandatory, SUITES, offer),
            Err(PolicyError::PlainOfferRefused)
        );
        for mode in [SecureMedia::Optional, SecureMedia::Forbidden] {
            assert_eq!(
                plan_incoming(mode, SUITES, offer),
                Ok(IncomingLegPlan::Plain)
            );
        }
    }
}
