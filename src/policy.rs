//! Per-account media encryption policy, modelled on PortaSwitch's
//! caller/callee table (`reference/portaswitch-media-encryption.txt`) and
//! FreeSWITCH's `rtp_secure_media` (mandatory / optional / forbidden).
//!
//! A pure function, [`resolve`]: the calling side's `caller_stream`, the
//! called side's `callee_stream`, each trunk's `secure_media` and
//! `srtp_suites`, and whether the caller asked for encryption in; what each
//! leg of the call must be (key agreement, suites in order) and whether the
//! gateway decrypts or relays out. No IO, no state.
//!
//! The sides are a browser (always DTLS-SRTP, always asks for encryption) or
//! a trunk (SDES-SRTP, DTLS-SRTP or plain RTP; it asks for encryption when
//! it offered `RTP/SAVP` or `UDP/TLS/RTP/SAVP`). The gateway today places browser → trunk and trunk → browser
//! calls; the function also answers trunk → trunk so that every row of the
//! PortaSwitch table can be checked, including "the caller did not ask".
//!
//! A private call ([`Handling::Private`]: `forced_relay`, or
//! `relay_or_decrypt` + `as_caller` toward a callee that can take the
//! caller's stream as is) relays the encrypted stream without the gateway
//! ever holding a media key. What cannot be done (a private call whose two
//! ends cannot agree keys with each other) comes out as a named
//! [`PolicyError`].
//!
//! DTLS-SRTP toward a trunk is used when it is asked for by name
//! (`callee_stream = "dtls"`) or offered by the calling trunk; a trunk is
//! never assumed to speak it otherwise (`as_caller` toward a trunk gets
//! SDES, as SIP equipment mostly does).

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
    /// DTLS-SRTP (a browser callee always; a trunk's when set).
    Dtls,
}

impl CalleeStream {
    fn name(self) -> &'static str {
        match self {
            CalleeStream::AsCaller => "as_caller",
            CalleeStream::Decrypted => "decrypted",
            CalleeStream::Sdes => "sdes",
            CalleeStream::Dtls => "dtls",
        }
    }
}

/// How the gateway treats the stream received from the calling party.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallerStream {
    /// Relay without decrypting (fully private call).
    ForcedRelay,
    /// Relay when the callee's settings allow the stream as is, otherwise
    /// decrypt (and re-encrypt as the callee needs).
    RelayOrDecrypt,
    /// Always decrypt (the gateway holds the keys of both legs).
    Decrypt,
}

/// FreeSWITCH's `rtp_secure_media` for a trunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecureMedia {
    /// Offer and accept SAVP only.
    Mandatory,
    /// Offer SAVP, fall back to AVP when the trunk refuses it.
    Optional,
    /// Never SAVP toward this trunk.
    Forbidden,
}

/// How a leg's SRTP keys are agreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAgreement {
    /// DTLS-SRTP (browsers; trunks that offer it or are set to it).
    Dtls,
    /// SDES `a=crypto` (RFC 4568).
    Sdes,
    /// None: plain RTP.
    None,
}

/// Whether the gateway holds the keys of the call's media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// The gateway decrypts and/or encrypts: it terminates SRTP on at least
    /// one leg (PortaSwitch's "Encrypt 1 / Encrypt 2" and "decrypted" rows).
    Decrypt,
    /// The stream passes as it came: plain RTP relayed as plain RTP.
    Relay,
    /// A fully private call: the encrypted stream (and its key agreement,
    /// a DTLS handshake included) is relayed as is between the two ends;
    /// the gateway never holds a media key.
    Private,
}

/// One leg of the call as the policy decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegPolicy {
    pub key_agreement: KeyAgreement,
    /// In preference order: the SDES suites to offer (callee trunk), the one
    /// chosen from the trunk's offer (caller trunk), the DTLS-SRTP profiles
    /// (browser; a trunk's `srtp_suites` that DTLS can negotiate). Empty for
    /// plain RTP.
    pub suites: Vec<SrtpSuite>,
    /// A caller trunk's `a=crypto` tag we answer (its tag kept, our key).
    pub sdes_tag: Option<u32>,
    /// A callee trunk with `secure_media = "optional"`: if it refuses SRTP
    /// the gateway re-offers plain RTP.
    pub plain_fallback: bool,
}

impl LegPolicy {
    fn plain() -> Self {
        LegPolicy {
            key_agreement: KeyAgreement::None,
            suites: Vec::new(),
            sdes_tag: None,
            plain_fallback: false,
        }
    }

    fn dtls() -> Self {
        LegPolicy {
            key_agreement: KeyAgreement::Dtls,
            suites: BROWSER_DTLS_SUITES.to_vec(),
            sdes_tag: None,
            plain_fallback: false,
        }
    }
}

/// The DTLS-SRTP profiles the browser leg offers (`use_srtp`), in order.
pub const BROWSER_DTLS_SUITES: &[SrtpSuite] =
    &[SrtpSuite::AeadAes128Gcm, SrtpSuite::AesCm128HmacSha1_80];

/// The decision for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallPolicy {
    /// The leg toward the calling party.
    pub caller: LegPolicy,
    /// The leg toward the called party.
    pub callee: LegPolicy,
    pub handling: Handling,
}

/// A trunk's media settings.
#[derive(Debug, Clone, Copy)]
pub struct TrunkMedia<'a> {
    pub secure_media: SecureMedia,
    pub srtp_suites: &'a [SrtpSuite],
}

impl TrunkMedia<'_> {
    /// Can this trunk take a stream with this key agreement as is?
    fn can_take(&self, ka: KeyAgreement) -> bool {
        match ka {
            KeyAgreement::None => self.secure_media != SecureMedia::Mandatory,
            KeyAgreement::Sdes => self.secure_media != SecureMedia::Forbidden,
            // Unless asked for by name (see `allows`): whether a trunk
            // speaks DTLS-SRTP is not known, so no stream is relayed to it
            // as DTLS and no encryption for it defaults to DTLS.
            KeyAgreement::Dtls => false,
        }
    }

    /// May this trunk's leg be keyed this way when its settings ask for it?
    fn allows(&self, ka: KeyAgreement) -> bool {
        match ka {
            KeyAgreement::Dtls => self.secure_media != SecureMedia::Forbidden,
            other => self.can_take(other),
        }
    }

    /// The trunk's `srtp_suites` that DTLS-SRTP can negotiate, in order.
    fn dtls_suites(&self) -> Result<Vec<SrtpSuite>, PolicyError> {
        let suites: Vec<SrtpSuite> = self
            .srtp_suites
            .iter()
            .copied()
            .filter(|s| s.has_dtls_profile())
            .collect();
        if suites.is_empty() {
            return Err(PolicyError::NoDtlsSuites);
        }
        Ok(suites)
    }
}

/// What a trunk's INVITE offered, as the policy needs it.
#[derive(Debug, Clone, Copy)]
pub struct IncomingOffer<'a> {
    /// RTP/SAVP (SDES) or UDP/TLS/RTP/SAVP (DTLS) rather than RTP/AVP.
    pub secure: bool,
    /// UDP/TLS/RTP/SAVP: keyed by DTLS (then `secure` is true, `cryptos`
    /// empty).
    pub dtls: bool,
    /// The usable `a=crypto` lines as `(tag, suite)`, in the trunk's order.
    pub cryptos: &'a [(u32, SrtpSuite)],
}

/// The calling side.
#[derive(Debug, Clone, Copy)]
pub enum Caller<'a> {
    /// A browser: DTLS-SRTP, always asks for encryption.
    Browser,
    /// A trunk whose INVITE carried `offer`.
    Trunk {
        media: TrunkMedia<'a>,
        offer: IncomingOffer<'a>,
    },
}

/// The called side.
#[derive(Debug, Clone, Copy)]
pub enum Callee<'a> {
    /// A browser: always DTLS-SRTP (its `callee_stream` is `dtls`).
    Browser,
    /// A trunk; `callee_stream` is the account's override on outgoing calls,
    /// else the trunk's.
    Trunk {
        media: TrunkMedia<'a>,
        callee_stream: CalleeStream,
    },
}

impl Callee<'_> {
    fn callee_stream(&self) -> CalleeStream {
        match self {
            Callee::Browser => CalleeStream::Dtls,
            Callee::Trunk { callee_stream, .. } => *callee_stream,
        }
    }

    fn can_take(&self, ka: KeyAgreement) -> bool {
        match self {
            Callee::Browser => ka == KeyAgreement::Dtls,
            Callee::Trunk { media, .. } => media.can_take(ka),
        }
    }

    /// The encrypted stream this callee takes when the gateway encrypts for
    /// it: DTLS for a browser, SDES for a trunk that allows SRTP.
    fn encrypted(&self) -> Option<KeyAgreement> {
        match self {
            Callee::Browser => Some(KeyAgreement::Dtls),
            Callee::Trunk { media, .. } if media.can_take(KeyAgreement::Sdes) => {
                Some(KeyAgreement::Sdes)
            }
            Callee::Trunk { .. } => None,
        }
    }
}

/// The inputs of [`resolve`].
#[derive(Debug, Clone, Copy)]
pub struct PolicyInput<'a> {
    /// The calling side's: the account's on outgoing calls, the trunk's on
    /// incoming ones.
    pub caller_stream: CallerStream,
    pub caller: Caller<'a>,
    pub callee: Callee<'a>,
}

/// Why a call cannot be placed under the configured policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("a private (relayed, never decrypted) call cannot be made here: {0}")]
    PrivateCallUnsupported(&'static str),
    #[error("secure_media = \"forbidden\" conflicts with callee_stream = \"dtls\"")]
    ForbiddenButDtls,
    #[error("no srtp_suites entry can be negotiated by DTLS-SRTP (AES_CM_128_HMAC_SHA1_80/32, AEAD_AES_128_GCM, AEAD_AES_256_GCM)")]
    NoDtlsSuites,
    #[error("secure_media = \"forbidden\" conflicts with a private call (caller_stream = \"forced_relay\" relays the caller's encrypted stream as is)")]
    ForbiddenButPrivate,
    #[error("secure_media = \"mandatory\" conflicts with callee_stream = \"{0}\" (plain RTP toward the trunk)")]
    MandatoryButPlain(&'static str),
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

/// Decides both legs of a call. See the module documentation; each arm
/// names the row of the PortaSwitch table it carries out.
pub fn resolve(input: PolicyInput<'_>) -> Result<CallPolicy, PolicyError> {
    // The caller's leg is what it offered, within its trunk's secure_media.
    let caller = match input.caller {
        Caller::Browser => LegPolicy::dtls(),
        Caller::Trunk { media, offer } => caller_trunk_leg(media, offer)?,
    };
    let asked = caller.key_agreement != KeyAgreement::None;
    let callee = &input.callee;
    let callee_stream = callee.callee_stream();

    // The key agreement of the callee's leg.
    let callee_ka = match (input.caller_stream, callee_stream, asked) {
        // forced_relay, any callee, requested: "Relayed via PortaSwitch or
        // sent directly", never decrypted.
        (CallerStream::ForcedRelay, _, true) => {
            return private_call(caller, callee);
        }
        // The caller sent plain RTP and either nothing says otherwise
        // (forced_relay ignores the callee's settings; as_caller), or the
        // callee wants it decrypted (decrypted; decrypt + as_caller): it is
        // relayed plain, unless the callee cannot take plain RTP at all (a
        // browser; a mandatory trunk), which then gets it encrypted by the
        // gateway: there is nothing private to keep.
        (CallerStream::ForcedRelay, _, false)
        | (_, CalleeStream::AsCaller | CalleeStream::Decrypted, false) => {
            if callee.can_take(KeyAgreement::None) {
                KeyAgreement::None
            } else if callee_stream == CalleeStream::Decrypted {
                return Err(PolicyError::MandatoryButPlain("decrypted"));
            } else {
                match callee.encrypted() {
                    Some(ka) => ka,
                    None => return Err(PolicyError::MandatoryButPlain(callee_stream.name())),
                }
            }
        }
        // relay_or_decrypt, as_caller, requested: relayed as is when the
        // callee can take the caller's stream (a private call); otherwise "the media stream is encrypted/decrypted": the callee
        // gets the encrypted stream it can take (a trunk: SDES; one that
        // forbids SRTP: plain RTP, as today).
        (CallerStream::RelayOrDecrypt, CalleeStream::AsCaller, true) => {
            if callee.can_take(caller.key_agreement) {
                return private_call(caller, callee);
            }
            callee.encrypted().unwrap_or(KeyAgreement::None)
        }
        // decrypt, as_caller/decrypted, requested and relay_or_decrypt,
        // decrypted, requested: "Caller <-encrypted-> PortaSwitch
        // <-non-encrypted-> Callee".
        (CallerStream::Decrypt, CalleeStream::AsCaller, true)
        | (_, CalleeStream::Decrypted, true) => {
            if !callee.can_take(KeyAgreement::None) {
                return Err(PolicyError::MandatoryButPlain(callee_stream.name()));
            }
            KeyAgreement::None
        }
        // sdes/dtls, requested or not: "(Encrypt 1) PortaSwitch (Encrypt 2)"
        // or "non-encrypted -> PortaSwitch -> encrypted".
        (_, CalleeStream::Sdes, _) => {
            if !callee.can_take(KeyAgreement::Sdes) {
                return Err(PolicyError::ForbiddenButSdes);
            }
            KeyAgreement::Sdes
        }
        (_, CalleeStream::Dtls, _) => {
            let allowed = match callee {
                Callee::Browser => true,
                Callee::Trunk { media, .. } => media.allows(KeyAgreement::Dtls),
            };
            if !allowed {
                return Err(PolicyError::ForbiddenButDtls);
            }
            KeyAgreement::Dtls
        }
    };

    let callee_leg = match (callee_ka, &input.callee) {
        (KeyAgreement::None, _) => LegPolicy::plain(),
        (KeyAgreement::Dtls, Callee::Browser) => LegPolicy::dtls(),
        (KeyAgreement::Dtls, Callee::Trunk { media, .. }) => LegPolicy {
            key_agreement: KeyAgreement::Dtls,
            suites: media.dtls_suites()?,
            sdes_tag: None,
            plain_fallback: media.secure_media == SecureMedia::Optional,
        },
        (KeyAgreement::Sdes, Callee::Trunk { media, .. }) => {
            if media.srtp_suites.is_empty() {
                return Err(PolicyError::NoSuites);
            }
            LegPolicy {
                key_agreement: KeyAgreement::Sdes,
                suites: media.srtp_suites.to_vec(),
                sdes_tag: None,
                plain_fallback: media.secure_media == SecureMedia::Optional,
            }
        }
        // `encrypted()` never gives SDES for a browser.
        (KeyAgreement::Sdes, Callee::Browser) => LegPolicy::dtls(),
    };
    let handling = if caller.key_agreement == KeyAgreement::None
        && callee_leg.key_agreement == KeyAgreement::None
    {
        Handling::Relay
    } else {
        Handling::Decrypt
    };
    Ok(CallPolicy {
        caller,
        callee: callee_leg,
        handling,
    })
}

/// A private call: the callee's leg is the caller's stream as is (same key
/// agreement; the suite is agreed end to end, or is the caller's SDES one).
/// Only a callee that can take that stream can have it: a browser takes
/// DTLS-SRTP only; a trunk whose `secure_media` forbids SRTP takes none.
fn private_call(caller: LegPolicy, callee: &Callee<'_>) -> Result<CallPolicy, PolicyError> {
    match (callee, caller.key_agreement) {
        (Callee::Browser, KeyAgreement::Dtls) => {}
        (Callee::Browser, _) => {
            return Err(PolicyError::PrivateCallUnsupported(
                "a browser takes only DTLS-SRTP and the caller's stream is SDES-SRTP",
            ))
        }
        (Callee::Trunk { media, .. }, _) if media.secure_media == SecureMedia::Forbidden => {
            return Err(PolicyError::ForbiddenButPrivate)
        }
        (Callee::Trunk { .. }, _) => {}
    }
    Ok(CallPolicy {
        callee: LegPolicy {
            plain_fallback: false,
            ..caller.clone()
        },
        caller,
        handling: Handling::Private,
    })
}

/// A calling trunk's leg from its offer: its `secure_media` says which
/// profile it may use (FreeSWITCH's `rtp_secure_media`), and among the
/// offered `a=crypto` lines the first suite in *our* `srtp_suites` order wins
/// (the operator's preference; the trunk's tag is kept).
fn caller_trunk_leg(
    media: TrunkMedia<'_>,
    offer: IncomingOffer<'_>,
) -> Result<LegPolicy, PolicyError> {
    match (offer.secure || offer.dtls, media.secure_media) {
        (false, SecureMedia::Mandatory) => Err(PolicyError::PlainOfferRefused),
        (false, _) => Ok(LegPolicy::plain()),
        (true, SecureMedia::Forbidden) => Err(PolicyError::SecureOfferRefused),
        (true, _) if offer.dtls => Ok(LegPolicy {
            key_agreement: KeyAgreement::Dtls,
            suites: media.dtls_suites()?,
            sdes_tag: None,
            plain_fallback: false,
        }),
        (true, _) => media
            .srtp_suites
            .iter()
            .find_map(|ours| {
                offer
                    .cryptos
                    .iter()
                    .find(|(_, theirs)| theirs == ours)
                    .map(|&(tag, suite)| LegPolicy {
                        key_agreement: KeyAgreement::Sdes,
                        suites: vec![suite],
                        sdes_tag: Some(tag),
                        plain_fallback: false,
                    })
            })
            .ok_or(PolicyError::NoCommonSuite),
    }
}

/// The trunk leg of an outgoing (browser → trunk) call, as the B2BUA
/// writes its offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrunkLegPlan {
    /// RTP/SAVP with these suites offered in this order.
    Sdes {
        suites: Vec<SrtpSuite>,
        /// secure_media = "optional": when the trunk refuses SRTP (488, or a
        /// plain answer) the call goes on with plain RTP.
        accept_plain: bool,
    },
    /// RTP/AVP.
    Plain,
    /// UDP/TLS/RTP/SAVP (DTLS-SRTP) with these `use_srtp` profiles in this
    /// order; `accept_plain` as for SDES.
    Dtls {
        suites: Vec<SrtpSuite>,
        accept_plain: bool,
    },
    /// A private call: UDP/TLS/RTP/SAVP carrying the *browser's*
    /// fingerprint and `a=setup`; the browser's DTLS peer is the trunk and
    /// the gateway relays the handshake and SRTP without keys.
    Private,
}

impl TrunkLegPlan {
    /// May the call go on when the trunk answered with plain RTP?
    pub fn accepts_plain_answer(&self) -> bool {
        match self {
            TrunkLegPlan::Plain => true,
            TrunkLegPlan::Private => false,
            TrunkLegPlan::Sdes { accept_plain, .. } | TrunkLegPlan::Dtls { accept_plain, .. } => {
                *accept_plain
            }
        }
    }

    /// The SRTP suites of the plan, in order (empty for plain RTP and for a
    /// private call, whose suites the two ends agree without us).
    pub fn suites(&self) -> &[SrtpSuite] {
        match self {
            TrunkLegPlan::Plain | TrunkLegPlan::Private => &[],
            TrunkLegPlan::Sdes { suites, .. } | TrunkLegPlan::Dtls { suites, .. } => suites,
        }
    }

    /// Why the trunk's "not acceptable" (488, 606) ends the call, in the
    /// policy's words, when it is the offer the policy allowed that the trunk
    /// refused: the browser's hangup then says what to change, not only the
    /// trunk's status text. `None` for any other answer or plan (an optional
    /// trunk's 488 is a fallback, not an end).
    pub fn refusal_reason(&self, code: u16) -> Option<&'static str> {
        if !matches!(code, 488 | 606) {
            return None;
        }
        match self {
            TrunkLegPlan::Sdes {
                accept_plain: false,
                ..
            } => Some(
                "the trunk refused SDES-SRTP (RTP/SAVP) and its secure_media is \"mandatory\": \
                 no plain RTP is offered",
            ),
            TrunkLegPlan::Dtls {
                accept_plain: false,
                ..
            } => Some(
                "the trunk refused DTLS-SRTP (UDP/TLS/RTP/SAVP) and its secure_media is \
                 \"mandatory\": no plain RTP is offered",
            ),
            TrunkLegPlan::Plain => Some(
                "the trunk refused plain RTP (RTP/AVP), the only offer its policy allows \
                 (callee_stream \"decrypted\" or secure_media \"forbidden\")",
            ),
            _ => None,
        }
    }
}

/// The trunk leg of an incoming (trunk → browser) call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncomingLegPlan {
    /// Answer RTP/SAVP with the trunk's `a=crypto` line `tag` (of `suite`)
    /// and a fresh key of ours.
    Sdes { tag: u32, suite: SrtpSuite },
    /// Answer UDP/TLS/RTP/SAVP with our fingerprint; DTLS then negotiates
    /// one of `suites` (in this order when we are the server).
    Dtls { suites: Vec<SrtpSuite> },
    /// Answer RTP/AVP.
    Plain,
    /// A private call: the trunk's DTLS-SRTP offer goes to the browsers with
    /// the trunk's fingerprint, the trunk is answered with the browser's;
    /// the gateway relays without keys.
    Private,
}

/// What an account's outgoing calls get toward its trunk.
pub fn plan_outgoing(
    caller_stream: CallerStream,
    callee_stream: CalleeStream,
    trunk: TrunkMedia<'_>,
) -> Result<TrunkLegPlan, PolicyError> {
    let p = resolve(PolicyInput {
        caller_stream,
        caller: Caller::Browser,
        callee: Callee::Trunk {
            media: trunk,
            callee_stream,
        },
    })?;
    if p.handling == Handling::Private {
        return Ok(TrunkLegPlan::Private);
    }
    Ok(match p.callee.key_agreement {
        KeyAgreement::Sdes => TrunkLegPlan::Sdes {
            suites: p.callee.suites,
            accept_plain: p.callee.plain_fallback,
        },
        KeyAgreement::None => TrunkLegPlan::Plain,
        KeyAgreement::Dtls => TrunkLegPlan::Dtls {
            suites: p.callee.suites,
            accept_plain: p.callee.plain_fallback,
        },
    })
}

/// How a trunk's offer to one of our browsers is answered.
pub fn plan_incoming(
    caller_stream: CallerStream,
    trunk: TrunkMedia<'_>,
    offer: IncomingOffer<'_>,
) -> Result<IncomingLegPlan, PolicyError> {
    let p = resolve(PolicyInput {
        caller_stream,
        caller: Caller::Trunk {
            media: trunk,
            offer,
        },
        callee: Callee::Browser,
    })?;
    if p.handling == Handling::Private {
        return Ok(IncomingLegPlan::Private);
    }
    Ok(
        match (
            p.caller.key_agreement,
            p.caller.sdes_tag,
            p.caller.suites.first(),
        ) {
            (KeyAgreement::Dtls, _, _) => IncomingLegPlan::Dtls {
                suites: p.caller.suites,
            },
            (_, Some(tag), Some(&suite)) => IncomingLegPlan::Sdes { tag, suite },
            _ => IncomingLegPlan::Plain,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use CallerStream::*;
    use KeyAgreement as K;

    const SUITES: &[SrtpSuite] = &[
        SrtpSuite::AesCm128HmacSha1_80,
        SrtpSuite::AesCm128HmacSha1_32,
    ];
    const OFFERED: &[(u32, SrtpSuite)] = &[
        (1, SrtpSuite::AesCm128HmacSha1_32),
        (2, SrtpSuite::AesCm128HmacSha1_80),
    ];

    fn trunk(secure_media: SecureMedia) -> TrunkMedia<'static> {
        TrunkMedia {
            secure_media,
            srtp_suites: SUITES,
        }
    }

    /// A calling trunk that asked for encryption (RTP/SAVP) or did not.
    fn trunk_caller(asked: bool) -> Caller<'static> {
        Caller::Trunk {
            media: trunk(SecureMedia::Optional),
            offer: IncomingOffer {
                secure: asked,
                dtls: false,
                cryptos: if asked { OFFERED } else { &[] },
            },
        }
    }

    #[derive(Debug, Clone, Copy)]
    enum Who {
        /// A trunk whose secure_media (optional) allows both profiles, so
        /// that only caller_stream/callee_stream decide.
        Trunk,
        Browser,
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Expect {
        /// Caller leg, callee leg, handling.
        Plan(KeyAgreement, KeyAgreement, Handling),
        NotYet(PolicyError),
    }
    use Expect::*;

    #[test]
    fn a_refusal_of_the_only_allowed_offer_names_the_policy() {
        let mandatory = TrunkLegPlan::Sdes {
            suites: vec![SrtpSuite::AesCm128HmacSha1_80],
            accept_plain: false,
        };
        let optional = TrunkLegPlan::Sdes {
            suites: vec![SrtpSuite::AesCm128HmacSha1_80],
            accept_plain: true,
        };
        assert!(mandatory
            .refusal_reason(488)
            .is_some_and(|r| r.contains("secure_media is \"mandatory\"")));
        assert!(TrunkLegPlan::Plain
            .refusal_reason(606)
            .is_some_and(|r| r.contains("refused plain RTP")));
        assert_eq!(optional.refusal_reason(488), None);
        assert_eq!(mandatory.refusal_reason(486), None);
        assert_eq!(TrunkLegPlan::Plain.refusal_reason(503), None);
    }

    /// A private call between two SDES ends: the callee's leg is the
    /// caller's stream as is, never decrypted.
    const PRIVATE_SDES: Expect = Plan(K::Sdes, K::Sdes, Handling::Private);
    const BROWSER_SDES: &str =
        "a browser takes only DTLS-SRTP and the caller's stream is SDES-SRTP";

    /// The PortaSwitch results table (reference/portaswitch-media-encryption.txt),
    /// one line per (caller_stream, callee_stream, encryption asked), the
    /// row quoted. zrtp is not a setting of this gateway. The callee is a
    /// trunk except where the row is about DTLS to a browser.
    #[rustfmt::skip]
    fn table() -> Vec<(CallerStream, CalleeStream, Who, bool, &'static str, Expect)> {
        use CalleeStream::*;
        use Handling::{Decrypt as Dec, Relay};
        let forced = "Caller <-> Relayed via PortaSwitch or sent directly <-> Callee";
        let mut rows = Vec::new();
        // forced_relay | decrypted, as_caller, sdes, dtls, zrtp
        for callee in [Decrypted, AsCaller, Sdes, Dtls] {
            // requested: "Caller <-> Relayed via PortaSwitch or sent directly <-> Callee" (media features: No)
            rows.push((ForcedRelay, callee, Who::Trunk, true, forced, PRIVATE_SDES));
            // (a browser cannot take the calling trunk's SDES stream as is)
            rows.push((ForcedRelay, callee, Who::Browser, true, forced,
                       NotYet(PolicyError::PrivateCallUnsupported(BROWSER_SDES))));
            // no: "Caller <-> Relayed via PortaSwitch or sent directly <-> Callee" (Yes)
            rows.push((ForcedRelay, callee, Who::Trunk, false, forced, Plan(K::None, K::None, Relay)));
        }
        rows.extend([
            // relay_or_decrypt | as_caller | requested: "Caller <-> Relayed via PortaSwitch or sent directly <-> Callee" (No)
            (RelayOrDecrypt, AsCaller, Who::Trunk, true, forced, PRIVATE_SDES),
            // relay_or_decrypt | as_caller | no: "Caller <-> Relayed via PortaSwitch or sent directly <-> Callee" (Yes)
            (RelayOrDecrypt, AsCaller, Who::Trunk, false, forced, Plan(K::None, K::None, Relay)),
            // relay_or_decrypt | decrypted | requested: "Caller <-encrypted-> PortaSwitch <-non-encrypted-> Callee" (Yes)
            (RelayOrDecrypt, Decrypted, Who::Trunk, true, "Caller <-encrypted-> PortaSwitch <-non-encrypted-> Callee",
             Plan(K::Sdes, K::None, Dec)),
            // relay_or_decrypt | decrypted | no: "Caller <-> Non-encrypted stream relayed via PortaSwitch<-> Callee" (Yes)
            (RelayOrDecrypt, Decrypted, Who::Trunk, false, "Caller <-> Non-encrypted stream relayed via PortaSwitch<-> Callee",
             Plan(K::None, K::None, Relay)),
        ]);
        for caller in [RelayOrDecrypt, Decrypt] {
            // relay_or_decrypt / decrypt | sdes, dtls, zrtp | requested:
            // "Caller <-encrypted-> (Encrypt 1)  PortaSwitch (Encrypt 2)  <-encrypted-> Callee" (Yes)
            let both = "Caller <-encrypted-> (Encrypt 1)  PortaSwitch (Encrypt 2)  <-encrypted-> Callee";
            rows.push((caller, Sdes, Who::Trunk, true, both, Plan(K::Sdes, K::Sdes, Dec)));
            rows.push((caller, Dtls, Who::Browser, true, both, Plan(K::Sdes, K::Dtls, Dec)));
            rows.push((caller, Dtls, Who::Trunk, true, both, Plan(K::Sdes, K::Dtls, Dec)));
            // ... | no: "Caller <-non-encrypted-> PortaSwitch <-encrypted-> Callee" (Yes)
            let one = "Caller <-non-encrypted-> PortaSwitch <-encrypted-> Callee";
            rows.push((caller, Sdes, Who::Trunk, false, one, Plan(K::None, K::Sdes, Dec)));
            rows.push((caller, Dtls, Who::Browser, false, one, Plan(K::None, K::Dtls, Dec)));
            rows.push((caller, Dtls, Who::Trunk, false, one, Plan(K::None, K::Dtls, Dec)));
        }
        for callee in [AsCaller, Decrypted] {
            // decrypt | as_caller, decrypted | requested: "Caller <-encrypted-> PortaSwitch <-non-encrypted-> Callee" (Yes)
            rows.push((Decrypt, callee, Who::Trunk, true, "Caller <-encrypted-> PortaSwitch <-non-encrypted-> Callee",
                       Plan(K::Sdes, K::None, Dec)));
            // decrypt | as_caller, decrypted | no: "Caller <-> Non-encrypted stream relayed via PortaSwitch <-> Callee" (Yes)
            rows.push((Decrypt, callee, Who::Trunk, false, "Caller <-> Non-encrypted stream relayed via PortaSwitch <-> Callee",
                       Plan(K::None, K::None, Relay)));
        }
        rows
    }

    #[test]
    fn the_portaswitch_table() {
        let rows = table();
        assert_eq!(rows.len(), 12 + 4 + 12 + 4);
        for (caller_stream, callee_stream, who, asked, row, expect) in rows {
            let callee = match who {
                Who::Trunk => Callee::Trunk {
                    media: trunk(SecureMedia::Optional),
                    callee_stream,
                },
                Who::Browser => Callee::Browser,
            };
            let got = match resolve(PolicyInput {
                caller_stream,
                caller: trunk_caller(asked),
                callee,
            }) {
                Ok(p) => Plan(p.caller.key_agreement, p.callee.key_agreement, p.handling),
                Err(e) => NotYet(e),
            };
            assert_eq!(
                got, expect,
                "{caller_stream:?} / {callee_stream:?} to {who:?}, asked {asked}: {row}"
            );
        }
    }

    fn outgoing(
        caller: CallerStream,
        callee: CalleeStream,
        secure: SecureMedia,
    ) -> Result<TrunkLegPlan, PolicyError> {
        plan_outgoing(caller, callee, trunk(secure))
    }

    /// A browser always asks for encryption: the "requested" rows, with the
    /// browser's DTLS stream, which no trunk can take as is yet.
    #[test]
    fn browser_caller_rows() {
        use CalleeStream::*;
        let sdes = |accept_plain| {
            Ok(TrunkLegPlan::Sdes {
                suites: SUITES.to_vec(),
                accept_plain,
            })
        };
        // The defaults (relay_or_decrypt, sdes, mandatory): SDES, no plain.
        assert_eq!(
            outgoing(RelayOrDecrypt, Sdes, SecureMedia::Mandatory),
            sdes(false)
        );
        assert_eq!(
            outgoing(RelayOrDecrypt, Sdes, SecureMedia::Optional),
            sdes(true)
        );
        // as_caller: the trunk cannot take DTLS as is, so relay_or_decrypt
        // decrypts and the trunk gets SDES (what works today), or plain RTP
        // where it forbids SRTP.
        assert_eq!(
            outgoing(RelayOrDecrypt, AsCaller, SecureMedia::Mandatory),
            sdes(false)
        );
        assert_eq!(
            outgoing(RelayOrDecrypt, AsCaller, SecureMedia::Forbidden),
            Ok(TrunkLegPlan::Plain)
        );
        // decrypted: plain RTP, never when the trunk says mandatory.
        for caller in [RelayOrDecrypt, Decrypt] {
            assert_eq!(
                outgoing(caller, Decrypted, SecureMedia::Optional),
                Ok(TrunkLegPlan::Plain)
            );
            assert_eq!(
                outgoing(caller, Decrypted, SecureMedia::Forbidden),
                Ok(TrunkLegPlan::Plain)
            );
            assert_eq!(
                outgoing(caller, Decrypted, SecureMedia::Mandatory),
                Err(PolicyError::MandatoryButPlain("decrypted"))
            );
        }
        // decrypt + as_caller: "<-non-encrypted-> Callee".
        assert_eq!(
            outgoing(Decrypt, AsCaller, SecureMedia::Optional),
            Ok(TrunkLegPlan::Plain)
        );
        assert_eq!(
            outgoing(Decrypt, AsCaller, SecureMedia::Mandatory),
            Err(PolicyError::MandatoryButPlain("as_caller"))
        );
        assert_eq!(outgoing(Decrypt, Sdes, SecureMedia::Mandatory), sdes(false));
        // forced_relay: a private call whatever the callee's settings
        // ("Caller <-> Relayed via PortaSwitch <-> Callee"), the browser's
        // DTLS-SRTP relayed to the trunk; never toward a trunk that forbids
        // SRTP.
        for callee in [Sdes, Decrypted, AsCaller, Dtls] {
            for secure in [SecureMedia::Mandatory, SecureMedia::Optional] {
                assert_eq!(
                    outgoing(ForcedRelay, callee, secure),
                    Ok(TrunkLegPlan::Private)
                );
            }
            assert_eq!(
                outgoing(ForcedRelay, callee, SecureMedia::Forbidden),
                Err(PolicyError::ForbiddenButPrivate)
            );
        }
        // dtls: UDP/TLS/RTP/SAVP with the suites DTLS can negotiate.
        assert_eq!(
            outgoing(RelayOrDecrypt, Dtls, SecureMedia::Mandatory),
            Ok(TrunkLegPlan::Dtls {
                suites: SUITES.to_vec(),
                accept_plain: false
            })
        );
        assert_eq!(
            outgoing(Decrypt, Dtls, SecureMedia::Optional),
            Ok(TrunkLegPlan::Dtls {
                suites: SUITES.to_vec(),
                accept_plain: true
            })
        );
        assert_eq!(
            outgoing(RelayOrDecrypt, Dtls, SecureMedia::Forbidden),
            Err(PolicyError::ForbiddenButDtls)
        );
        assert_eq!(
            outgoing(RelayOrDecrypt, Sdes, SecureMedia::Forbidden),
            Err(PolicyError::ForbiddenButSdes)
        );
        assert_eq!(
            plan_outgoing(
                RelayOrDecrypt,
                Sdes,
                TrunkMedia {
                    secure_media: SecureMedia::Mandatory,
                    srtp_suites: &[]
                }
            ),
            Err(PolicyError::NoSuites)
        );
        let msg = PolicyError::ForbiddenButPrivate.to_string();
        assert!(
            msg.contains("forbidden") && msg.contains("private"),
            "{msg}"
        );
    }

    #[test]
    fn suites_per_leg_in_order() {
        let p = resolve(PolicyInput {
            caller_stream: RelayOrDecrypt,
            caller: Caller::Browser,
            callee: Callee::Trunk {
                media: trunk(SecureMedia::Mandatory),
                callee_stream: CalleeStream::Sdes,
            },
        })
        .unwrap();
        assert_eq!(p.caller.key_agreement, K::Dtls);
        assert_eq!(p.caller.suites, BROWSER_DTLS_SUITES);
        assert_eq!(p.callee.suites, SUITES);
        assert_eq!(p.handling, Handling::Decrypt);
    }

    /// A browser calling with forced_relay: both legs DTLS-SRTP, handled
    /// privately (the gateway holds no key); a browser callee of a DTLS
    /// caller too.
    #[test]
    fn private_call_legs_carry_the_callers_stream() {
        let p = resolve(PolicyInput {
            caller_stream: ForcedRelay,
            caller: Caller::Browser,
            callee: Callee::Trunk {
                media: trunk(SecureMedia::Mandatory),
                callee_stream: CalleeStream::Sdes,
            },
        })
        .unwrap();
        assert_eq!(p.handling, Handling::Private);
        assert_eq!(p.caller.key_agreement, K::Dtls);
        assert_eq!(p.callee.key_agreement, K::Dtls);
        let p = resolve(PolicyInput {
            caller_stream: ForcedRelay,
            caller: Caller::Browser,
            callee: Callee::Browser,
        })
        .unwrap();
        assert_eq!(p.handling, Handling::Private);
        // A private SDES call keeps the caller's suite and tag.
        let p = resolve(PolicyInput {
            caller_stream: ForcedRelay,
            caller: trunk_caller(true),
            callee: Callee::Trunk {
                media: trunk(SecureMedia::Optional),
                callee_stream: CalleeStream::Decrypted,
            },
        })
        .unwrap();
        assert_eq!(p.callee, p.caller);
        assert_eq!(p.callee.suites, [SrtpSuite::AesCm128HmacSha1_80]);
    }

    #[test]
    fn incoming_sdes_picks_our_preferred_suite_and_keeps_the_trunks_tag() {
        let offer = IncomingOffer {
            secure: true,
            dtls: false,
            cryptos: OFFERED,
        };
        assert_eq!(
            plan_incoming(RelayOrDecrypt, trunk(SecureMedia::Mandatory), offer),
            Ok(IncomingLegPlan::Sdes {
                tag: 2,
                suite: SrtpSuite::AesCm128HmacSha1_80
            })
        );
        let only_32 = TrunkMedia {
            secure_media: SecureMedia::Optional,
            srtp_suites: &[SrtpSuite::AesCm128HmacSha1_32],
        };
        assert_eq!(
            plan_incoming(Decrypt, only_32, offer),
            Ok(IncomingLegPlan::Sdes {
                tag: 1,
                suite: SrtpSuite::AesCm128HmacSha1_32
            })
        );
        let gcm = TrunkMedia {
            secure_media: SecureMedia::Mandatory,
            srtp_suites: &[SrtpSuite::AeadAes128Gcm],
        };
        assert_eq!(
            plan_incoming(RelayOrDecrypt, gcm, offer),
            Err(PolicyError::NoCommonSuite)
        );
        assert_eq!(
            plan_incoming(RelayOrDecrypt, trunk(SecureMedia::Forbidden), offer),
            Err(PolicyError::SecureOfferRefused)
        );
        // A private call from an SDES trunk cannot reach a browser, which
        // takes only DTLS-SRTP: refused (488 toward the trunk).
        assert_eq!(
            plan_incoming(ForcedRelay, trunk(SecureMedia::Mandatory), offer),
            Err(PolicyError::PrivateCallUnsupported(BROWSER_SDES))
        );
    }

    /// A trunk's DTLS-SRTP offer: with forced_relay the browser takes it
    /// as is (private); otherwise the gateway terminates DTLS with the trunk
    /// itself (`a_dtls_offer_from_a_trunk`).
    #[test]
    fn incoming_dtls_offer_is_private_with_forced_relay() {
        let offer = IncomingOffer {
            secure: true,
            cryptos: &[],
            dtls: true,
        };
        assert_eq!(
            plan_incoming(ForcedRelay, trunk(SecureMedia::Mandatory), offer),
            Ok(IncomingLegPlan::Private)
        );
        assert_eq!(
            plan_incoming(ForcedRelay, trunk(SecureMedia::Forbidden), offer),
            Err(PolicyError::SecureOfferRefused)
        );
    }

    #[test]
    fn incoming_plain_offer_follows_secure_media() {
        let offer = IncomingOffer {
            secure: false,
            dtls: false,
            cryptos: &[],
        };
        assert_eq!(
            plan_incoming(RelayOrDecrypt, trunk(SecureMedia::Mandatory), offer),
            Err(PolicyError::PlainOfferRefused)
        );
        // Nothing private in a plain stream: even forced_relay rings the
        // browser, which gets it DTLS-SRTP encrypted.
        for caller in [ForcedRelay, RelayOrDecrypt, Decrypt] {
            for mode in [SecureMedia::Optional, SecureMedia::Forbidden] {
                assert_eq!(
                    plan_incoming(caller, trunk(mode), offer),
                    Ok(IncomingLegPlan::Plain)
                );
            }
        }
    }

    /// DTLS-SRTP toward a trunk keeps the operator's suite order, minus the
    /// suites `use_srtp` has no profile for.
    #[test]
    fn dtls_toward_a_trunk_offers_the_dtls_capable_suites_in_order() {
        let mixed = [
            SrtpSuite::AesCm256HmacSha1_80,
            SrtpSuite::AeadAes256Gcm,
            SrtpSuite::AesCm128HmacSha1_32,
        ];
        let media = TrunkMedia {
            secure_media: SecureMedia::Mandatory,
            srtp_suites: &mixed,
        };
        assert_eq!(
            plan_outgoing(RelayOrDecrypt, CalleeStream::Dtls, media),
            Ok(TrunkLegPlan::Dtls {
                suites: vec![SrtpSuite::AeadAes256Gcm, SrtpSuite::AesCm128HmacSha1_32],
                accept_plain: false
            })
        );
        let only_256_cm = TrunkMedia {
            secure_media: SecureMedia::Mandatory,
            srtp_suites: &[SrtpSuite::AesCm256HmacSha1_80],
        };
        assert_eq!(
            plan_outgoing(RelayOrDecrypt, CalleeStream::Dtls, only_256_cm),
            Err(PolicyError::NoDtlsSuites)
        );
        // as_caller never guesses DTLS for a trunk: SDES, as before.
        assert_eq!(
            plan_outgoing(
                RelayOrDecrypt,
                CalleeStream::AsCaller,
                trunk(SecureMedia::Optional)
            ),
            Ok(TrunkLegPlan::Sdes {
                suites: SUITES.to_vec(),
                accept_plain: true
            })
        );
        assert!(TrunkLegPlan::Dtls {
            suites: vec![],
            accept_plain: true
        }
        .accepts_plain_answer());
        assert_eq!(
            TrunkLegPlan::Dtls {
                suites: SUITES.to_vec(),
                accept_plain: false
            }
            .suites(),
            SUITES
        );
    }

    /// A trunk that offered UDP/TLS/RTP/SAVP asked for encryption: the
    /// requested rows with a DTLS caller leg.
    #[test]
    fn a_dtls_offer_from_a_trunk() {
        let dtls_offer = IncomingOffer {
            secure: true,
            dtls: true,
            cryptos: &[],
        };
        for caller in [RelayOrDecrypt, Decrypt] {
            assert_eq!(
                plan_incoming(caller, trunk(SecureMedia::Mandatory), dtls_offer),
                Ok(IncomingLegPlan::Dtls {
                    suites: SUITES.to_vec()
                })
            );
            assert_eq!(
                plan_incoming(caller, trunk(SecureMedia::Optional), dtls_offer),
                Ok(IncomingLegPlan::Dtls {
                    suites: SUITES.to_vec()
                })
            );
        }
        assert_eq!(
            plan_incoming(RelayOrDecrypt, trunk(SecureMedia::Forbidden), dtls_offer),
            Err(PolicyError::SecureOfferRefused)
        );
        let only_256_cm = TrunkMedia {
            secure_media: SecureMedia::Optional,
            srtp_suites: &[SrtpSuite::AesCm256HmacSha1_32],
        };
        assert_eq!(
            plan_incoming(RelayOrDecrypt, only_256_cm, dtls_offer),
            Err(PolicyError::NoDtlsSuites)
        );
        // forced_relay: a private call (the browser's DTLS peer is the trunk).
        assert_eq!(
            plan_incoming(ForcedRelay, trunk(SecureMedia::Mandatory), dtls_offer),
            Ok(IncomingLegPlan::Private)
        );
        // Trunk to trunk, the table's "requested" rows with a DTLS caller:
        // (Encrypt 1) PortaSwitch (Encrypt 2), or decrypted toward the callee.
        let caller = Caller::Trunk {
            media: trunk(SecureMedia::Optional),
            offer: dtls_offer,
        };
        let plan = |callee_stream| {
            resolve(PolicyInput {
                caller_stream: RelayOrDecrypt,
                caller,
                callee: Callee::Trunk {
                    media: trunk(SecureMedia::Optional),
                    callee_stream,
                },
            })
            .map(|p| (p.caller.key_agreement, p.callee.key_agreement, p.handling))
        };
        assert_eq!(
            plan(CalleeStream::Dtls),
            Ok((K::Dtls, K::Dtls, Handling::Decrypt))
        );
        assert_eq!(
            plan(CalleeStream::Sdes),
            Ok((K::Dtls, K::Sdes, Handling::Decrypt))
        );
        assert_eq!(
            plan(CalleeStream::Decrypted),
            Ok((K::Dtls, K::None, Handling::Decrypt))
        );
    }
}
