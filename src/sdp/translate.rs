//! WebRTC ⇄ SIP translation for the B2BUA.
//!
//! Outgoing call: [`parse_browser_offer`] → [`write_trunk_offer`] (INVITE) →
//! [`parse_trunk_answer`] (183/200) → [`write_browser_answer`] (`answer`).
//! Demo echo trunk and inbound calls: [`parse_sip_offer`] → [`write_sip_answer`].
//!
//! No transcoding: the trunk is offered only codecs the browser offered, with
//! the browser's payload type numbers, and the browser is answered with the
//! one codec the trunk chose (the relay maps payload types if the trunk
//! answered with another number).
//!
//! Telephone-event (RFC 4733) runs on the clock of the audio codec it goes
//! with, and the relay does not rescale timestamps. So the trunk is offered
//! each telephone-event the browser offered whose clock matches an offered
//! audio codec (8000 for PCMU/PCMA/G722, 48000 for opus), with the browser's
//! payload type; the answer's telephone-event is used only when its clock is
//! the chosen codec's. A telephone-event the browser did not offer (say /8000
//! when it offered only /48000) is never invented.

use std::net::{IpAddr, SocketAddr};

use sdp_types::{Attribute, Connection, Media, Origin, Session, Time};

use super::crypto::{CryptoAttribute, Mki};
use super::model::{AudioSection, Direction, Fingerprint, Proto, SessionDescription, Setup};
use super::{write_session, SdpError};
use crate::types::{DtlsRole, PayloadType, Secret, SrtpKeyMaterial, SrtpSuite, Ssrc};

/// Packetisation we offer to trunks: 20 ms is what every SIP phone and
/// browser uses by default.
pub(super) const PTIME_MS: u32 = 20;

/// The CNAME in the browser answer's `a=ssrc` (RFC 7022 allows any
/// per-session-unique string; one relay source per call).
pub(super) const CNAME: &str = "webrtc-sip-gateway";

/// The codecs the gateway relays (no transcoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodecName {
    Opus,
    Pcmu,
    Pcma,
    G722,
    TelephoneEvent,
}

impl CodecName {
    /// The encoding name as written in `a=rtpmap`.
    pub fn as_str(self) -> &'static str {
        match self {
            CodecName::Opus => "opus",
            CodecName::Pcmu => "PCMU",
            CodecName::Pcma => "PCMA",
            CodecName::G722 => "G722",
            CodecName::TelephoneEvent => "telephone-event",
        }
    }

    /// Which supported codec `encoding/clock/channels` is, if any. Encoding
    /// names are case-insensitive (RFC 4855).
    fn recognise(encoding: &str, clock_rate: u32, channels: Option<u8>) -> Option<(Self, u8)> {
        let enc = encoding.to_ascii_lowercase();
        let (name, channels) = match (enc.as_str(), clock_rate, channels) {
            // RFC 7587: opus is always written 48000/2, whatever is sent;
            // some SIP stacks drop the /2, which means the same codec.
            ("opus", 48000, None | Some(1) | Some(2)) => (CodecName::Opus, 2),
            ("pcmu", 8000, None | Some(1)) => (CodecName::Pcmu, 1),
            ("pcma", 8000, None | Some(1)) => (CodecName::Pcma, 1),
            // G.722 samples at 16 kHz but its RTP clock is 8000 (RFC 3551).
            ("g722", 8000, None | Some(1)) => (CodecName::G722, 1),
            ("telephone-event", 8000 | 48000, None | Some(1)) => (CodecName::TelephoneEvent, 1),
            _ => return None,
        };
        Some((name, channels))
    }

    /// Static payload types (RFC 3551) that may appear without `a=rtpmap`.
    fn from_static_pt(pt: PayloadType) -> Option<(Self, u32)> {
        match pt.0 {
            0 => Some((CodecName::Pcmu, 8000)),
            8 => Some((CodecName::Pcma, 8000)),
            9 => Some((CodecName::G722, 8000)),
            _ => None,
        }
    }
}

/// One codec of an m-section, with the payload type that side uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codec {
    pub pt: PayloadType,
    pub name: CodecName,
    pub clock_rate: u32,
    pub channels: u8,
    /// The `a=fmtp` parameters for this PT, as written (e.g. opus
    /// `minptime=10;useinbandfec=1`, telephone-event `0-15`).
    pub fmtp: Option<String>,
}

impl Codec {
    pub fn is_telephone_event(&self) -> bool {
        self.name == CodecName::TelephoneEvent
    }

    /// Same codec regardless of payload type number.
    pub fn same_as(&self, other: &Codec) -> bool {
        self.name == other.name && self.clock_rate == other.clock_rate
    }

    fn rtpmap_value(&self) -> String {
        if self.channels > 1 {
            format!(
                "{} {}/{}/{}",
                self.pt.0,
                self.name.as_str(),
                self.clock_rate,
                self.channels
            )
        } else {
            format!("{} {}/{}", self.pt.0, self.name.as_str(), self.clock_rate)
        }
    }
}

/// The supported codecs of a section, in m-line order; the first payload
/// type of each codec wins (a second PT for the same codec would make the
/// mapping ambiguous).
pub(super) fn supported_codecs(section: &AudioSection) -> Vec<Codec> {
    let mut out: Vec<Codec> = Vec::new();
    for &pt in &section.formats {
        let Some(codec) = codec_of(section, pt) else {
            continue;
        };
        if !out.iter().any(|c| c.same_as(&codec)) {
            out.push(codec);
        }
    }
    out
}

/// The codec behind `pt` in `section`: its `a=rtpmap`, else the static table.
fn codec_of(section: &AudioSection, pt: PayloadType) -> Option<Codec> {
    let (name, clock_rate, channels) = match section.rtpmap(pt) {
        Some(map) => {
            let (name, channels) =
                CodecName::recognise(&map.encoding, map.clock_rate, map.channels)?;
            (name, map.clock_rate, channels)
        }
        None => {
            let (name, clock) = CodecName::from_static_pt(pt)?;
            (name, clock, 1)
        }
    };
    Some(Codec {
        pt,
        name,
        clock_rate,
        channels,
        fmtp: section.fmtp(pt).map(str::to_string),
    })
}

/// Audio codecs plus the telephone-events whose clock matches one of them.
pub(super) fn usable_codecs(codecs: &[Codec]) -> Vec<Codec> {
    let audio_clock = |rate: u32| {
        codecs
            .iter()
            .any(|c| !c.is_telephone_event() && c.clock_rate == rate)
    };
    codecs
        .iter()
        .filter(|c| !c.is_telephone_event() || audio_clock(c.clock_rate))
        .cloned()
        .collect()
}

/// The browser's offer, reduced to what the gateway uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserOffer {
    pub ice_ufrag: String,
    pub ice_pwd: Secret<String>,
    /// The sha-256 fingerprint the browser's DTLS certificate must match.
    pub fingerprint: Fingerprint,
    pub setup: Setup,
    pub mid: Option<String>,
    pub ssrcs: Vec<Ssrc>,
    /// Supported codecs in the browser's preference order, with its PTs;
    /// telephone-event only when its clock matches an audio codec here.
    pub codecs: Vec<Codec>,
    pub rtcp_mux: bool,
    pub rtcp_rsize: bool,
    pub direction: Direction,
    pub proto: Proto,
    /// Index of the audio section among the offer's m-sections.
    pub audio_index: usize,
    /// The offer's other m-sections (video, data channel...), which the
    /// answer must repeat, in order, with port 0 (RFC 3264 section 6).
    pub other_sections: Vec<OtherSection>,
    /// Malformed codec/SSRC lines that were skipped, for the caller to log.
    pub skipped: Vec<SdpError>,
}

/// An m-section the gateway does not take, kept to reject it in the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherSection {
    pub index: usize,
    pub media: String,
    pub proto: String,
    pub fmt: String,
    pub mid: Option<String>,
}

impl BrowserOffer {
    /// The audio codecs (no telephone-event), in preference order.
    pub fn audio_codecs(&self) -> impl Iterator<Item = &Codec> {
        self.codecs.iter().filter(|c| !c.is_telephone_event())
    }

    /// The telephone-event at `clock_rate`, if offered.
    pub fn telephone_event(&self, clock_rate: u32) -> Option<&Codec> {
        self.codecs
            .iter()
            .find(|c| c.is_telephone_event() && c.clock_rate == clock_rate)
    }
}

/// Parses the `sdp` of a browser's `call` message.
pub fn parse_browser_offer(sdp: &str) -> Result<BrowserOffer, SdpError> {
    let desc = SessionDescription::parse(sdp)?;
    let audio = desc.audio()?;
    if audio.port == 0 {
        return Err(SdpError::MediaRejected);
    }
    // The browser leg is always DTLS-SRTP (DESIGN.md).
    if !audio.proto.is_dtls() {
        return Err(SdpError::UnsupportedProto(audio.proto.as_str().to_string()));
    }
    let (Some(ice_ufrag), Some(ice_pwd)) = (audio.ice_ufrag.clone(), audio.ice_pwd.clone()) else {
        return Err(SdpError::MissingIceCredentials);
    };
    let fingerprint = audio
        .fingerprint("sha-256")
        .filter(|f| f.value.len() == 32)
        .cloned()
        .ok_or(SdpError::MissingFingerprint)?;
    // RFC 8842 requires actpass in an offer; RFC 4145 makes a missing
    // a=setup mean active. Either way the gateway ends up passive.
    let setup = match audio.setup.unwrap_or(Setup::Active) {
        Setup::Holdconn => {
            return Err(SdpError::BadAttribute {
                attribute: "setup",
                reason: "holdconn: no DTLS connection offered".into(),
            })
        }
        s => s,
    };
    let codecs = usable_codecs(&supported_codecs(&audio));
    if !codecs.iter().any(|c| !c.is_telephone_event()) {
        return Err(SdpError::NoSupportedCodec);
    }
    Ok(BrowserOffer {
        ice_ufrag,
        ice_pwd: Secret::new(ice_pwd),
        fingerprint,
        setup,
        mid: audio.mid.clone(),
        ssrcs: audio.ssrcs.clone(),
        codecs,
        rtcp_mux: audio.rtcp_mux,
        rtcp_rsize: audio.rtcp_rsize,
        direction: audio.direction,
        proto: audio.proto,
        audio_index: audio.index,
        other_sections: desc
            .session()
            .medias
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != audio.index)
            .map(|(index, m)| OtherSection {
                index,
                media: m.media.clone(),
                proto: m.proto.clone(),
                fmt: m.fmt.clone(),
                mid: m
                    .get_first_attribute_value("mid")
                    .ok()
                    .flatten()
                    .map(str::to_string),
            })
            .collect(),
        skipped: audio.skipped.clone(),
    })
}

/// What the trunk leg offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrunkOfferMedia {
    /// SDES-SRTP (`RTP/SAVP`): one `a=crypto` per key, in this (preference)
    /// order, tags 1, 2, ... Must not be empty.
    Sdes { keys: Vec<SrtpKeyMaterial> },
    /// Plain RTP (`RTP/AVP`).
    Plain,
    /// DTLS-SRTP (`UDP/TLS/RTP/SAVP`, RFC 5763): our certificate's SHA-256
    /// fingerprint (`AB:CD:...`) and `a=setup:actpass`, so that the trunk
    /// picks the role. No ICE: the trunk sends to `c=`/`m=` as for RTP.
    Dtls { fingerprint_sha256: String },
}

/// The DTLS side of a trunk's SDP (an answer to our DTLS offer, or its
/// offer): the certificate it will present and the role it leaves us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkDtls {
    pub fingerprint: Fingerprint,
    /// Our role in the handshake, from its `a=setup`.
    pub role: DtlsRole,
}

/// The trunk's certificate fingerprint from its SDP: SHA-256 when it gave
/// one, else the first of another algorithm we can check (SHA-1, SHA-384,
/// SHA-512: older SIP equipment).
fn trunk_fingerprint(audio: &AudioSection) -> Result<Fingerprint, SdpError> {
    audio
        .fingerprint("sha-256")
        .or_else(|| {
            audio
                .fingerprints
                .iter()
                .find(|f| matches!(f.algorithm.as_str(), "sha-1" | "sha-384" | "sha-512"))
        })
        .cloned()
        .ok_or(SdpError::MissingFingerprint)
}

/// Our DTLS role in answer to an offer's `a=setup` (RFC 5763 5, RFC 4145
/// 4: a missing one means `active`): `actpass` and `active` make us the
/// server (`passive`, as toward browsers), `passive` the client
/// (`active`). Returns the role and the `a=setup` of our answer.
pub fn answer_setup(offered: Option<Setup>) -> Result<(DtlsRole, Setup), SdpError> {
    match offered.unwrap_or(Setup::Active) {
        Setup::Actpass | Setup::Active => Ok((DtlsRole::Server, Setup::Passive)),
        Setup::Passive => Ok((DtlsRole::Client, Setup::Active)),
        Setup::Holdconn => Err(SdpError::BadAttribute {
            attribute: "setup",
            reason: "holdconn: no DTLS connection offered".into(),
        }),
    }
}

/// Our DTLS role from the answer to our `actpass` offer: the answerer's
/// `active` makes us the server, `passive` the client (RFC 5763 5; a
/// missing a=setup in an answer means `active`, RFC 4145 4). `actpass` is
/// not an answer.
fn role_from_answer(answered: Option<Setup>) -> Result<DtlsRole, SdpError> {
    match answered.unwrap_or(Setup::Active) {
        Setup::Active => Ok(DtlsRole::Server),
        Setup::Passive => Ok(DtlsRole::Client),
        other => Err(SdpError::BadAttribute {
            attribute: "setup",
            reason: format!("{} is not a valid answer to actpass", other.as_str()),
        }),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkOfferParams {
    /// The gateway's address written in `c=` and `o=`.
    pub local_ip: IpAddr,
    /// The trunk leg's RTP port; RTCP is offered on `rtp_port + 1` in case
    /// the trunk refuses rtcp-mux.
    pub rtp_port: u16,
    pub media: TrunkOfferMedia,
    pub session_id: u64,
    /// `o=` version: increment for every re-offer in the same dialog (RFC 3264
    /// section 8), or the trunk will take a hold/resume as "no change".
    pub session_version: u64,
}

impl TrunkOfferMedia {
    /// The m-line transport of this offer.
    pub fn proto(&self) -> Proto {
        match self {
            TrunkOfferMedia::Sdes { .. } => Proto::RtpSavp,
            TrunkOfferMedia::Plain => Proto::RtpAvp,
            TrunkOfferMedia::Dtls { .. } => Proto::UdpTlsRtpSavp,
        }
    }
}

impl TrunkOfferParams {
    /// Our offered key with `tag` (tags count from 1 in offer order).
    fn key_for_tag(&self, tag: u32) -> Option<&SrtpKeyMaterial> {
        match &self.media {
            TrunkOfferMedia::Sdes { keys } => keys.get(usize::try_from(tag).ok()?.checked_sub(1)?),
            TrunkOfferMedia::Plain | TrunkOfferMedia::Dtls { .. } => None,
        }
    }
}

/// The codecs offered to the trunk for this browser offer, in the browser's
/// order with its payload types; plus a telephone-event at each clock of
/// the browser's codecs where the browser offered none (aiortc, some
/// softphones: 8000 for G.711, 48000 for Opus): the gateway then sends the
/// browser's digits itself (`dtmf` messages) and reads the trunk's, so the
/// trunk must have one at the clock of whichever codec it picks (RFC 4733
/// events run on their stream's clock; a trunk that answers Opus with only
/// telephone-event/8000, as linphone does, left the call without RFC 4733).
fn trunk_offer_codecs(offer: &BrowserOffer) -> Vec<Codec> {
    let mut codecs = usable_codecs(&offer.codecs);
    let mut clocks: Vec<u32> = Vec::new();
    for c in codecs.iter().filter(|c| !c.is_telephone_event()) {
        if !clocks.contains(&c.clock_rate) && offer.telephone_event(c.clock_rate).is_none() {
            clocks.push(c.clock_rate);
        }
    }
    // 8000 first: it is the one most SIP equipment has, and gets PT 101.
    clocks.sort_by_key(|&clock| clock != 8000);
    for clock in clocks {
        let taken = |pt: u8| {
            offer.codecs.iter().any(|c| c.pt.0 == pt) || codecs.iter().any(|c| c.pt.0 == pt)
        };
        // 101 is what most SIP equipment uses; else the first free dynamic.
        if let Some(pt) = std::iter::once(101).chain(96..=127).find(|&pt| !taken(pt)) {
            codecs.push(Codec {
                pt: PayloadType(pt),
                name: CodecName::TelephoneEvent,
                clock_rate: clock,
                channels: 1,
                fmtp: Some("0-15".into()),
            });
        }
    }
    codecs
}

/// Writes the SDP of the INVITE to the trunk. No ICE, no fingerprint, no
/// `a=ssrc` toward the trunk: SIP peers do not need them and some choke.
pub fn write_trunk_offer(offer: &BrowserOffer, p: &TrunkOfferParams) -> String {
    let codecs = trunk_offer_codecs(offer);
    let proto = p.media.proto();
    let mut attrs = codec_attributes(&codecs);
    match &p.media {
        TrunkOfferMedia::Sdes { keys } => {
            for (i, key) in keys.iter().enumerate() {
                let tag = u32::try_from(i + 1).unwrap_or(u32::MAX);
                attrs.push(attr(
                    "crypto",
                    CryptoAttribute::new(tag, key.clone()).to_sdp_value(),
                ));
            }
        }
        TrunkOfferMedia::Dtls { fingerprint_sha256 } => {
            attrs.push(attr("fingerprint", format!("sha-256 {fingerprint_sha256}")));
            attrs.push(attr("setup", Setup::Actpass.as_str().to_string()));
        }
        TrunkOfferMedia::Plain => {}
    }
    // Offer rtcp-mux but keep a separate RTCP port for trunks that refuse it.
    attrs.push(flag("rtcp-mux"));
    if let Some(rtcp) = p.rtp_port.checked_add(1) {
        attrs.push(attr("rtcp", rtcp.to_string()));
    }
    attrs.push(flag(offer.direction.as_str()));
    attrs.push(attr("ptime", PTIME_MS.to_string()));
    let media = audio_media(p.rtp_port, proto, &codecs, p.local_ip, attrs);
    write_session(&session(
        p.local_ip,
        p.session_id,
        p.session_version,
        vec![],
        media,
    ))
}

/// The SDES key pair agreed with the trunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedCrypto {
    pub tag: u32,
    /// The trunk's key: decrypts what the trunk sends.
    pub remote_key: SrtpKeyMaterial,
    /// Our offered key with the same tag and suite: encrypts what we send.
    pub local_key: SrtpKeyMaterial,
    /// The trunk's MKI and lifetime, if it sent any: SRTP packets from the
    /// trunk then carry the MKI, so the media layer must know.
    pub remote_mki: Option<Mki>,
    pub remote_lifetime: Option<u64>,
}

impl AcceptedCrypto {
    pub fn suite(&self) -> SrtpSuite {
        self.local_key.suite
    }
}

/// The trunk's answer, mapped back onto the browser's offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkAnswer {
    pub remote_rtp: SocketAddr,
    /// `None` when the trunk accepted rtcp-mux; else its `a=rtcp`, else
    /// `remote_rtp` port + 1.
    pub remote_rtcp: Option<SocketAddr>,
    pub rtcp_mux: bool,
    /// The chosen codec as the browser offered it (browser PT and fmtp).
    pub codec: Codec,
    /// The PT the trunk uses for that codec (may differ from `codec.pt`).
    pub codec_trunk_pt: PayloadType,
    /// The trunk's `a=fmtp` for that codec: its receive preferences (e.g.
    /// opus `maxplaybackrate`), which the browser answer passes on.
    pub codec_trunk_fmtp: Option<String>,
    /// `(trunk_pt, browser_pt)` of telephone-event at the codec's clock, if
    /// both sides have it.
    pub telephone_event: Option<(PayloadType, PayloadType)>,
    /// The trunk's PT of telephone-event at the codec's clock, whether or
    /// not the browser has it (the gateway's own DTMF toward the trunk).
    pub trunk_telephone_event: Option<PayloadType>,
    /// The SDES keys; `None` for plain RTP and DTLS-SRTP. See
    /// [`TrunkAnswer::is_secure`].
    pub crypto: Option<AcceptedCrypto>,
    /// DTLS-SRTP: the trunk's fingerprint and our role; `None` otherwise.
    pub dtls: Option<TrunkDtls>,
    pub ssrcs: Vec<Ssrc>,
    /// The trunk's direction, from its point of view.
    pub direction: Direction,
    pub proto: Proto,
    pub ptime: Option<u32>,
    /// Malformed codec/SSRC lines that were skipped, for the caller to log.
    pub skipped: Vec<SdpError>,
}

impl TrunkAnswer {
    /// Whether the trunk leg is SRTP. An `RTP/AVP` answer to our `RTP/SAVP`
    /// offer parses (some trunks do that) but is not secure; whether that
    /// ends the call (`secure_media = "mandatory"`) is the caller's policy.
    pub fn is_secure(&self) -> bool {
        self.crypto.is_some() || self.dtls.is_some()
    }
}

/// Parses the trunk's SDP answer (183 or 200) to our [`write_trunk_offer`].
pub fn parse_trunk_answer(
    sdp: &str,
    offered: &TrunkOfferParams,
    offer: &BrowserOffer,
) -> Result<TrunkAnswer, SdpError> {
    let desc = SessionDescription::parse(sdp)?;
    let audio = desc.audio()?;
    if audio.port == 0 {
        return Err(SdpError::MediaRejected);
    }
    let offered_proto = offered.media.proto();
    let mismatch = || SdpError::ProtoMismatch {
        offered: offered_proto.as_str().to_string(),
        answer: audio.proto.as_str().to_string(),
    };
    let dtls_offered = matches!(offered.media, TrunkOfferMedia::Dtls { .. });
    if audio.proto.is_dtls() != dtls_offered && audio.proto.is_secure() {
        return Err(mismatch());
    }
    let dtls = match dtls_offered && audio.proto.is_dtls() {
        true => Some(TrunkDtls {
            fingerprint: trunk_fingerprint(&audio)?,
            role: role_from_answer(audio.setup)?,
        }),
        // RTP/AVP to our DTLS offer: reported via is_secure().
        false => None,
    };
    let crypto = match offered.media {
        TrunkOfferMedia::Plain if audio.proto.is_secure() => return Err(mismatch()),
        TrunkOfferMedia::Plain | TrunkOfferMedia::Dtls { .. } => None,
        TrunkOfferMedia::Sdes { .. } => match audio.cryptos.first() {
            // RFC 4568: the answer carries exactly one a=crypto; a bad one
            // is an error even if more follow.
            Some(Err(e)) => return Err(e.clone()),
            Some(Ok(c)) => Some(accept_crypto(c, offered)?),
            // RTP/AVP answer to RTP/SAVP: reported via is_secure().
            None if !audio.proto.is_secure() => None,
            None => return Err(SdpError::MissingCrypto),
        },
    };
    let ip = audio.connection.ok_or(SdpError::MissingConnection)?;
    let remote_rtp = SocketAddr::new(ip, audio.port);
    let remote_rtcp = if audio.rtcp_mux {
        None
    } else {
        match audio.rtcp {
            Some(r) => Some(SocketAddr::new(r.address.unwrap_or(ip), r.port)),
            None => audio.port.checked_add(1).map(|p| SocketAddr::new(ip, p)),
        }
    };

    let offered_codecs = trunk_offer_codecs(offer);
    let answered = |pt| codec_of(&audio, pt);
    let (codec, codec_trunk_pt, codec_trunk_fmtp) = audio
        .formats
        .iter()
        .filter_map(|&pt| answered(pt))
        .filter(|c| !c.is_telephone_event())
        .find_map(|a| {
            offered_codecs
                .iter()
                .find(|o| o.same_as(&a))
                .map(|o| (o.clone(), a.pt, a.fmtp.clone()))
        })
        .ok_or(SdpError::NoCommonCodec)?;
    let trunk_telephone_event = audio
        .formats
        .iter()
        .filter_map(|&pt| answered(pt))
        .find(|a| {
            a.is_telephone_event()
                && a.clock_rate == codec.clock_rate
                && offered_codecs.iter().any(|o| o.same_as(a))
        })
        .map(|a| a.pt);
    // Relayed both ways only if the browser offered it (not one we added).
    let telephone_event =
        trunk_telephone_event.zip(offer.telephone_event(codec.clock_rate).map(|o| o.pt));

    Ok(TrunkAnswer {
        remote_rtp,
        remote_rtcp,
        rtcp_mux: audio.rtcp_mux,
        codec,
        codec_trunk_pt,
        codec_trunk_fmtp,
        telephone_event,
        trunk_telephone_event,
        crypto,
        dtls,
        ssrcs: audio.ssrcs.clone(),
        direction: audio.direction,
        proto: audio.proto,
        ptime: audio.ptime,
        skipped: audio.skipped.clone(),
    })
}

fn accept_crypto(
    answer: &CryptoAttribute,
    offered: &TrunkOfferParams,
) -> Result<AcceptedCrypto, SdpError> {
    let not_offered = || SdpError::CryptoNotOffered {
        tag: answer.tag,
        suite: answer.suite.name().to_string(),
    };
    let local_key = offered
        .key_for_tag(answer.tag)
        .filter(|k| k.suite == answer.suite)
        .ok_or_else(not_offered)?;
    // With an MKI every packet the trunk sends carries it: the key material
    // holds its wire bytes and the SRTP context checks and strips them.
    let remote = answer.key().ok_or_else(not_offered)?;
    Ok(AcceptedCrypto {
        tag: answer.tag,
        remote_key: remote.material.clone(),
        local_key: local_key.clone(),
        remote_mki: remote.mki,
        remote_lifetime: remote.lifetime,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserAnswerParams {
    pub local_ip: IpAddr,
    /// The browser leg's port (ICE host candidate, RTP and RTCP muxed).
    pub port: u16,
    pub ice_ufrag: String,
    pub ice_pwd: String,
    /// Our DTLS certificate's SHA-256 fingerprint, `AB:CD:...`.
    pub fingerprint_sha256: String,
    pub session_id: u64,
    /// `o=` version; increment for every new answer in the same session.
    pub session_version: u64,
    /// The SSRC the relay sends to the browser with, if it is known now;
    /// announced with `a=ssrc` (the browser does not need it).
    pub ssrc: Option<Ssrc>,
}

/// Writes the gateway's answer to the browser, once the trunk's SDP is known.
pub fn write_browser_answer(
    offer: &BrowserOffer,
    trunk: &TrunkAnswer,
    p: &BrowserAnswerParams,
) -> String {
    // In an answer, a=fmtp states what the answerer wants to receive; the
    // real receiver is the trunk, so its parameters win when it gave any.
    let mut chosen = trunk.codec.clone();
    if trunk.codec_trunk_fmtp.is_some() {
        chosen.fmtp = trunk.codec_trunk_fmtp.clone();
    }
    let mut codecs = vec![chosen];
    if let Some((_, browser_pt)) = trunk.telephone_event {
        if let Some(te) = offer.codecs.iter().find(|c| c.pt == browser_pt) {
            codecs.push(te.clone());
        }
    }
    // We relay what the trunk sends to the browser, and what the browser
    // sends to the trunk, each only if both ends agree to it.
    let direction = Direction::from_flags(
        trunk.direction.sends() && offer.direction.receives(),
        trunk.direction.receives() && offer.direction.sends(),
    );
    // ICE-lite answers passive so the browser (the full agent) starts DTLS,
    // unless the browser insists on being passive itself.
    let setup = match offer.setup {
        Setup::Passive => Setup::Active,
        _ => Setup::Passive,
    };

    let mut session_attrs = vec![flag("ice-lite")];
    if let Some(mid) = &offer.mid {
        session_attrs.push(attr("group", format!("BUNDLE {mid}")));
    }

    let mut attrs = Vec::new();
    if let Some(mid) = &offer.mid {
        attrs.push(attr("mid", mid.clone()));
    }
    attrs.push(attr(
        "candidate",
        format!("1 1 udp 2130706431 {} {} typ host", p.local_ip, p.port),
    ));
    attrs.push(flag("end-of-candidates"));
    attrs.push(attr("ice-ufrag", p.ice_ufrag.clone()));
    attrs.push(attr("ice-pwd", p.ice_pwd.clone()));
    attrs.push(attr(
        "fingerprint",
        format!("sha-256 {}", p.fingerprint_sha256),
    ));
    attrs.push(attr("setup", setup.as_str().to_string()));
    attrs.push(flag(direction.as_str()));
    if offer.rtcp_mux {
        attrs.push(flag("rtcp-mux"));
    }
    if offer.rtcp_rsize {
        attrs.push(flag("rtcp-rsize"));
    }
    attrs.extend(codec_attributes(&codecs));
    if let Some(ptime) = trunk.ptime {
        attrs.push(attr("ptime", ptime.to_string()));
    }
    // A stream id lets the web client use `event.streams[0]` in `ontrack`.
    attrs.push(attr("msid", format!("{CNAME} audio")));
    if let Some(ssrc) = p.ssrc {
        attrs.push(attr("ssrc", format!("{} cname:{CNAME}", ssrc.0)));
    }
    let media = audio_media(p.port, offer.proto, &codecs, p.local_ip, attrs);
    let mut answer = session(
        p.local_ip,
        p.session_id,
        p.session_version,
        session_attrs,
        media,
    );
    // Every offered m-section gets an answer, in order; the ones we do not
    // take are rejected with port 0 (RFC 3264 section 6, RFC 8829 5.3.1).
    for other in &offer.other_sections {
        let rejected = Media {
            media: other.media.clone(),
            port: 0,
            num_ports: None,
            proto: other.proto.clone(),
            fmt: other.fmt.clone(),
            media_title: None,
            connections: vec![connection(p.local_ip)],
            bandwidths: vec![],
            key: None,
            attributes: other
                .mid
                .iter()
                .map(|mid| attr("mid", mid.clone()))
                .collect(),
        };
        let at = other.index.min(answer.medias.len());
        answer.medias.insert(at, rejected);
    }
    write_session(&answer)
}

/// A SIP peer's offer (the demo echo trunk's view of our INVITE, or an
/// inbound INVITE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipOffer {
    pub address: IpAddr,
    pub port: u16,
    pub proto: Proto,
    pub rtcp_mux: bool,
    /// Where the peer wants RTCP when not muxed: its `a=rtcp`, else port + 1.
    pub remote_rtcp: Option<SocketAddr>,
    /// Supported codecs in the peer's order, with its PTs.
    pub codecs: Vec<Codec>,
    /// The `a=crypto` lines we could use, in the peer's preference order.
    /// Lines with unknown suites, bad keys or unsupported parameters are left
    /// out (RFC 4568: the answerer picks one it supports).
    pub cryptos: Vec<CryptoAttribute>,
    /// `UDP/TLS/RTP/SAVP`: the peer's fingerprint and the role our answer
    /// takes ([`answer_setup`]).
    pub dtls: Option<TrunkDtls>,
    pub ssrcs: Vec<Ssrc>,
    pub direction: Direction,
    pub ptime: Option<u32>,
    /// Malformed codec/SSRC lines and the `a=crypto` lines that were left
    /// out, with the reason, for the caller to log.
    pub skipped: Vec<SdpError>,
}

impl SipOffer {
    /// The first offered crypto whose suite is in `allowed` (the peer's
    /// preference wins, as RFC 4568 suggests).
    pub fn choose_crypto(&self, allowed: &[SrtpSuite]) -> Option<&CryptoAttribute> {
        self.cryptos.iter().find(|c| allowed.contains(&c.suite))
    }

    fn first_audio_codec(&self) -> Option<&Codec> {
        self.codecs.iter().find(|c| !c.is_telephone_event())
    }
}

/// Parses a SIP offer (RTP/AVP, RTP/SAVP with SDES, or UDP/TLS/RTP/SAVP
/// with a fingerprint; ICE attributes of a DTLS offer are ignored: the
/// media goes to `c=`/`m=`).
pub fn parse_sip_offer(sdp: &str) -> Result<SipOffer, SdpError> {
    let desc = SessionDescription::parse(sdp)?;
    let audio = desc.audio()?;
    if audio.port == 0 {
        return Err(SdpError::MediaRejected);
    }
    let dtls = if audio.proto.is_dtls() {
        Some(TrunkDtls {
            fingerprint: trunk_fingerprint(&audio)?,
            role: answer_setup(audio.setup)?.0,
        })
    } else {
        None
    };
    let address = audio.connection.ok_or(SdpError::MissingConnection)?;
    let cryptos: Vec<CryptoAttribute> = audio.valid_cryptos().cloned().collect();
    if audio.proto.is_secure() && !audio.proto.is_dtls() && cryptos.is_empty() {
        // Say why the first line failed, when there was one: that is what
        // the operator needs to see next to the 488.
        return Err(match audio.cryptos.iter().find_map(|c| c.as_ref().err()) {
            Some(e) => e.clone(),
            None => SdpError::NoAcceptableCrypto,
        });
    }
    let codecs = usable_codecs(&supported_codecs(&audio));
    if !codecs.iter().any(|c| !c.is_telephone_event()) {
        return Err(SdpError::NoSupportedCodec);
    }
    let remote_rtcp = if audio.rtcp_mux {
        None
    } else {
        match audio.rtcp {
            Some(r) => Some(SocketAddr::new(r.address.unwrap_or(address), r.port)),
            None => audio
                .port
                .checked_add(1)
                .map(|p| SocketAddr::new(address, p)),
        }
    };
    Ok(SipOffer {
        address,
        port: audio.port,
        proto: audio.proto,
        rtcp_mux: audio.rtcp_mux,
        remote_rtcp,
        codecs,
        cryptos,
        dtls,
        ssrcs: audio.ssrcs.clone(),
        direction: audio.direction,
        ptime: audio.ptime,
        skipped: audio
            .skipped
            .iter()
            .cloned()
            .chain(audio.cryptos.iter().filter_map(|c| c.clone().err()))
            .collect(),
    })
}

/// Answers a [`SipOffer`]: its first audio codec, telephone-event at that
/// codec's clock if offered, `crypto` (the tag of the offered line we took,
/// see [`SipOffer::choose_crypto`], with our own key of that suite), and
/// rtcp-mux if offered. The transport is the offer's (RFC 3264), so an
/// `RTP/SAVP` offer must be answered with `Some(crypto)`: with `None` the
/// answer is `RTP/SAVP` without a key, which the peer will refuse. To refuse
/// an offer instead, answer the INVITE with 488.
pub fn write_sip_answer(
    offer: &SipOffer,
    local_ip: IpAddr,
    port: u16,
    crypto: Option<(u32, &SrtpKeyMaterial)>,
    session_id: u64,
) -> String {
    let mut codecs: Vec<Codec> = offer.first_audio_codec().cloned().into_iter().collect();
    if let Some(clock) = codecs.first().map(|c| c.clock_rate) {
        if let Some(te) = offer
            .codecs
            .iter()
            .find(|c| c.is_telephone_event() && c.clock_rate == clock)
        {
            codecs.push(te.clone());
        }
    }
    write_sip_answer_with(offer, &codecs, local_ip, port, crypto, session_id)
}

/// [`write_sip_answer`] with the codecs chosen by the caller (an inbound
/// call answers with the codec the browser picked): `codecs` are the offer's
/// own entries, with its payload types.
pub fn write_sip_answer_with(
    offer: &SipOffer,
    codecs: &[Codec],
    local_ip: IpAddr,
    port: u16,
    crypto: Option<(u32, &SrtpKeyMaterial)>,
    session_id: u64,
) -> String {
    write_sip_answer_versioned(offer, codecs, local_ip, port, crypto, session_id, 1)
}

/// [`write_sip_answer_with`] with the `o=` version given: every later SDP
/// of the same session (the answer to a re-INVITE or UPDATE) keeps the
/// session id and raises the version (RFC 3264 section 8), or the peer
/// takes it for "no change". The direction is the offer's, mirrored.
pub fn write_sip_answer_versioned(
    offer: &SipOffer,
    codecs: &[Codec],
    local_ip: IpAddr,
    port: u16,
    crypto: Option<(u32, &SrtpKeyMaterial)>,
    session_id: u64,
    session_version: u64,
) -> String {
    let keying = match crypto {
        Some((tag, key)) => AnswerKeying::Sdes(tag, key),
        None => AnswerKeying::None,
    };
    write_sip_answer_keyed(
        offer,
        codecs,
        local_ip,
        port,
        keying,
        (session_id, session_version),
    )
}

/// How a SIP answer is keyed.
#[derive(Debug, Clone, Copy)]
pub enum AnswerKeying<'a> {
    /// Plain RTP, or an SDES offer refused elsewhere.
    None,
    /// SDES: the tag of the offered line we took, and our key.
    Sdes(u32, &'a SrtpKeyMaterial),
    /// DTLS-SRTP: our certificate's SHA-256 fingerprint (`AB:CD:...`); the
    /// `a=setup` follows the offer's ([`answer_setup`]).
    Dtls { fingerprint_sha256: &'a str },
}

/// [`write_sip_answer_versioned`] for any keying, DTLS-SRTP included;
/// `session` is the `o=` id and version.
pub fn write_sip_answer_keyed(
    offer: &SipOffer,
    codecs: &[Codec],
    local_ip: IpAddr,
    port: u16,
    keying: AnswerKeying<'_>,
    origin: (u64, u64),
) -> String {
    let (session_id, session_version) = origin;
    let mut attrs = codec_attributes(codecs);
    match keying {
        AnswerKeying::Sdes(tag, key) => attrs.push(attr(
            "crypto",
            CryptoAttribute::new(tag, key.clone()).to_sdp_value(),
        )),
        AnswerKeying::Dtls { fingerprint_sha256 } => {
            let setup = match offer.dtls.as_ref().map(|d| d.role) {
                Some(DtlsRole::Client) => Setup::Active,
                _ => Setup::Passive,
            };
            attrs.push(attr("fingerprint", format!("sha-256 {fingerprint_sha256}")));
            attrs.push(attr("setup", setup.as_str().to_string()));
        }
        AnswerKeying::None => {}
    }
    if offer.rtcp_mux {
        attrs.push(flag("rtcp-mux"));
    } else if let Some(rtcp) = port.checked_add(1) {
        attrs.push(attr("rtcp", rtcp.to_string()));
    }
    attrs.push(flag(offer.direction.reversed().as_str()));
    attrs.push(attr("ptime", offer.ptime.unwrap_or(PTIME_MS).to_string()));
    let media = audio_media(port, offer.proto, codecs, local_ip, attrs);
    write_session(&session(
        local_ip,
        session_id,
        session_version,
        vec![],
        media,
    ))
}

// ---- building sdp-types values ------------------------------------------

pub(super) fn attr(name: &str, value: String) -> Attribute {
    Attribute {
        attribute: name.to_string(),
        value: Some(value),
    }
}

pub(super) fn flag(name: &str) -> Attribute {
    Attribute {
        attribute: name.to_string(),
        value: None,
    }
}

pub(super) fn connection(ip: IpAddr) -> Connection {
    Connection {
        nettype: "IN".into(),
        addrtype: addrtype(ip).into(),
        connection_address: ip.to_string(),
    }
}

fn addrtype(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    }
}

/// `a=rtpmap` for every codec (static ones too: cheap and unambiguous) and
/// `a=fmtp` where the codec has parameters.
pub(super) fn codec_attributes(codecs: &[Codec]) -> Vec<Attribute> {
    let mut attrs = Vec::with_capacity(codecs.len() * 2);
    for c in codecs {
        attrs.push(attr("rtpmap", c.rtpmap_value()));
        if let Some(fmtp) = &c.fmtp {
            attrs.push(attr("fmtp", format!("{} {}", c.pt.0, fmtp)));
        }
    }
    attrs
}

pub(super) fn audio_media(
    port: u16,
    proto: Proto,
    codecs: &[Codec],
    ip: IpAddr,
    attributes: Vec<Attribute>,
) -> Media {
    Media {
        media: "audio".into(),
        port,
        num_ports: None,
        proto: proto.as_str().into(),
        fmt: codecs
            .iter()
            .map(|c| c.pt.0.to_string())
            .collect::<Vec<_>>()
            .join(" "),
        media_title: None,
        connections: vec![connection(ip)],
        bandwidths: vec![],
        key: None,
        attributes,
    }
}

pub(super) fn session(
    ip: IpAddr,
    session_id: u64,
    version: u64,
    attributes: Vec<Attribute>,
    media: Media,
) -> Session {
    Session {
        origin: Origin {
            username: Some("-".into()),
            sess_id: session_id.to_string(),
            sess_version: version,
            nettype: "IN".into(),
            addrtype: addrtype(ip).into(),
            unicast_address: ip.to_string(),
        },
        session_name: "-".into(),
        session_description: None,
        uri: None,
        emails: vec![],
        phones: vec![],
        connection: None,
        bandwidths: vec![],
        times: vec![Time {
            start_time: 0,
            stop_time: 0,
            repeats: vec![],
        }],
        time_zones: vec![],
        key: None,
        attributes,
        medias: vec![media],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const CHROME: &str = include_str!("../../tests/fixtures/chrome-offer.sdp");
    const FIREFOX: &str = include_str!("../../tests/fixtures/firefox-offer.sdp");

    fn key(suite: SrtpSuite, byte: u8) -> SrtpKeyMaterial {
        SrtpKeyMaterial {
            suite,
            key: Secret::new(vec![byte; suite.key_len()]),
            salt: Secret::new(vec![byte ^ 0xff; suite.salt_len()]),
            mki: None,
        }
    }

    fn inline(k: &SrtpKeyMaterial) -> String {
        let mut both = k.key.expose().clone();
        both.extend_from_slice(k.salt.expose());
        base64::engine::general_purpose::STANDARD.encode(both)
    }

    fn sdes_params() -> TrunkOfferParams {
        TrunkOfferParams {
            local_ip: "203.0.113.5".parse().unwrap(),
            rtp_port: 20000,
            media: TrunkOfferMedia::Sdes {
                keys: vec![
                    key(SrtpSuite::AesCm128HmacSha1_80, 1),
                    key(SrtpSuite::AesCm128HmacSha1_32, 2),
                ],
            },
            session_id: 4242,
            session_version: 1,
        }
    }

    fn plain_params() -> TrunkOfferParams {
        TrunkOfferParams {
            media: TrunkOfferMedia::Plain,
            ..sdes_params()
        }
    }

    fn answer_params(ssrc: Option<Ssrc>) -> BrowserAnswerParams {
        BrowserAnswerParams {
            local_ip: "203.0.113.5".parse().unwrap(),
            port: 30000,
            ice_ufrag: "gwUf".into(),
            ice_pwd: "gatewayicepassword0123".into(),
            fingerprint_sha256: ["AB"; 32].join(":"),
            session_id: 77,
            session_version: 1,
            ssrc,
        }
    }

    fn lines(sdp: &str) -> Vec<&str> {
        sdp.split("\r\n").filter(|l| !l.is_empty()).collect()
    }

    fn has(sdp: &str, line: &str) -> bool {
        lines(sdp).contains(&line)
    }

    /// A baresip-style SDES answer: PCMU + telephone-event/8000, tag 2
    /// (our second key's suite), no rtcp-mux, a=rtcp absent.
    fn baresip_answer(remote: &SrtpKeyMaterial, tag: u32, suite: &str) -> String {
        format!(
            "v=0\r\no=- 1815849 1815849 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n\
             m=audio 10002 RTP/SAVP 0 101\r\nb=AS:64\r\na=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\na=label:1\r\n\
             a=ssrc:3102381522 cname:sip:bob@example.org\r\na=rtcp-rsize\r\n\
             a=crypto:{tag} {suite} inline:{}\r\na=ptime:20\r\n",
            inline(remote)
        )
    }

    #[test]
    fn chrome_offer_parses() {
        let o = parse_browser_offer(CHROME).unwrap();
        assert_eq!(o.ice_ufrag, "i37W");
        assert_eq!(o.ice_pwd.expose(), "Nj9Yr8t2Mtn6xP/QozLV3dNl");
        assert!(!format!("{o:?}").contains("Nj9Yr8t2Mtn6xP"));
        assert_eq!(o.fingerprint.algorithm, "sha-256");
        assert_eq!(o.fingerprint.value.len(), 32);
        assert_eq!(o.setup, Setup::Actpass);
        assert_eq!(o.mid.as_deref(), Some("0"));
        assert_eq!(o.ssrcs, vec![Ssrc(4206085114)]);
        assert!(o.rtcp_mux && o.rtcp_rsize);
        // red (63) and CN (13) are not relayed; the rest in Chrome's order.
        let got: Vec<(u8, CodecName, u32)> = o
            .codecs
            .iter()
            .map(|c| (c.pt.0, c.name, c.clock_rate))
            .collect();
        assert_eq!(
            got,
            [
                (111, CodecName::Opus, 48000),
                (9, CodecName::G722, 8000),
                (0, CodecName::Pcmu, 8000),
                (8, CodecName::Pcma, 8000),
                (110, CodecName::TelephoneEvent, 48000),
                (126, CodecName::TelephoneEvent, 8000),
            ]
        );
        assert_eq!(o.codecs[0].channels, 2);
        assert_eq!(
            o.codecs[0].fmtp.as_deref(),
            Some("minptime=10;useinbandfec=1")
        );
    }

    #[test]
    fn chrome_to_sdes_trunk_offer() {
        let o = parse_browser_offer(CHROME).unwrap();
        let p = sdes_params();
        let sdp = write_trunk_offer(&o, &p);
        assert!(
            sdp.starts_with("v=0\r\no=- 4242 1 IN IP4 203.0.113.5\r\ns=-\r\n"),
            "{sdp}"
        );
        assert!(
            has(&sdp, "m=audio 20000 RTP/SAVP 111 9 0 8 110 126"),
            "{sdp}"
        );
        assert!(has(&sdp, "c=IN IP4 203.0.113.5"));
        assert!(has(&sdp, "a=rtpmap:111 opus/48000/2"));
        assert!(has(&sdp, "a=fmtp:111 minptime=10;useinbandfec=1"));
        assert!(has(&sdp, "a=rtpmap:126 telephone-event/8000"));
        assert!(has(&sdp, "a=rtpmap:110 telephone-event/48000"));
        assert!(has(&sdp, "a=rtcp-mux"));
        assert!(has(&sdp, "a=rtcp:20001"));
        assert!(has(&sdp, "a=sendrecv"));
        assert!(has(&sdp, "a=ptime:20"));
        let TrunkOfferMedia::Sdes { keys } = &p.media else {
            unreachable!()
        };
        let cryptos: Vec<&str> = lines(&sdp)
            .into_iter()
            .filter(|l| l.starts_with("a=crypto:"))
            .collect();
        assert_eq!(
            cryptos,
            [
                format!(
                    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{}",
                    inline(&keys[0])
                ),
                format!(
                    "a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{}",
                    inline(&keys[1])
                ),
            ]
        );
        for absent in [
            "a=fingerprint",
            "a=ice-",
            "a=candidate",
            "a=ssrc",
            "a=setup",
            "a=mid",
            "a=group",
            "a=extmap",
            "a=msid",
            "a=rtcp-fb",
            "a=end-of-candidates",
        ] {
            assert!(!sdp.contains(absent), "{absent} in {sdp}");
        }
        // What we wrote is what the SIP side reads.
        let sip = parse_sip_offer(&sdp).unwrap();
        assert_eq!(sip.cryptos.len(), 2);
        assert_eq!(sip.cryptos[1].keys[0].material, keys[1]);
        assert_eq!(sip.port, 20000);
        assert_eq!(sip.remote_rtcp, None);
    }

    #[test]
    fn firefox_to_plain_trunk_offer() {
        let o = parse_browser_offer(FIREFOX).unwrap();
        assert_eq!(o.fingerprint.value[0], 0xBA, "session-level fingerprint");
        let sdp = write_trunk_offer(&o, &plain_params());
        // Firefox has telephone-event/8000 only: Opus gets one of ours.
        assert!(has(&sdp, "m=audio 20000 RTP/AVP 109 9 0 8 101 96"), "{sdp}");
        assert!(has(&sdp, "a=rtpmap:96 telephone-event/48000"), "{sdp}");
        assert!(has(&sdp, "a=rtpmap:9 G722/8000"));
        assert!(has(
            &sdp,
            "a=fmtp:109 maxplaybackrate=48000;stereo=1;useinbandfec=1"
        ));
        assert!(has(&sdp, "a=fmtp:101 0-15"));
        assert!(!sdp.contains("a=crypto"));
        assert!(!sdp.contains("fingerprint"));
    }

    #[test]
    fn telephone_event_48k_only_is_offered_with_opus_only() {
        // Only opus and PCMU, and telephone-event only at 48 kHz: te/48000
        // goes with opus, and te/8000 is added for PCMU (the gateway's own
        // DTMF), under 101.
        let sdp = CHROME
            .replace("111 63 9 0 8 13 110 126", "111 0 110")
            .replace("a=rtpmap:126 telephone-event/8000\r\n", "");
        let o = parse_browser_offer(&sdp).unwrap();
        let offer = write_trunk_offer(&o, &plain_params());
        assert!(
            has(&offer, "m=audio 20000 RTP/AVP 111 0 110 101"),
            "{offer}"
        );
        assert!(has(&offer, "a=rtpmap:101 telephone-event/8000"), "{offer}");
        // The trunk picks PCMU without telephone-event: nothing to map.
        let answer =
            "v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n\
                      m=audio 4000 RTP/AVP 0 110\r\na=rtpmap:110 telephone-event/48000\r\n";
        let a = parse_trunk_answer(answer, &plain_params(), &o).unwrap();
        assert_eq!(a.codec.name, CodecName::Pcmu);
        assert_eq!(a.telephone_event, None);
        // Without opus, a te/48000-only offer loses its te/48000; the
        // te/8000 we add is ours.
        let sdp = CHROME
            .replace("111 63 9 0 8 13 110 126", "0 110")
            .replace("a=rtpmap:126 telephone-event/8000\r\n", "");
        let o = parse_browser_offer(&sdp).unwrap();
        assert_eq!(o.codecs.len(), 1);
        assert!(has(
            &write_trunk_offer(&o, &plain_params()),
            "m=audio 20000 RTP/AVP 0 101"
        ));
    }

    #[test]
    fn telephone_event_is_added_at_each_clock_for_browsers_without_it() {
        // aiortc offers opus, PCMU and PCMA and no telephone-event; 101 is
        // taken, so the first free dynamic PTs carry it, 8000 first.
        let sdp = CHROME
            .replace("111 63 9 0 8 13 110 126", "101 0 8")
            .replace("a=rtpmap:111 opus", "a=rtpmap:101 opus")
            .replace("a=fmtp:111 ", "a=fmtp:101 ")
            .replace("a=rtpmap:126 telephone-event/8000\r\n", "")
            .replace("a=rtpmap:110 telephone-event/48000\r\n", "");
        let o = parse_browser_offer(&sdp).unwrap();
        assert!(o.telephone_event(8000).is_none());
        let offer = write_trunk_offer(&o, &plain_params());
        assert!(
            has(&offer, "m=audio 20000 RTP/AVP 101 0 8 96 97"),
            "{offer}"
        );
        assert!(has(&offer, "a=rtpmap:96 telephone-event/8000"), "{offer}");
        assert!(has(&offer, "a=rtpmap:97 telephone-event/48000"), "{offer}");
        // A trunk that picks Opus (linphone) takes the 48 kHz one.
        let opus =
            "v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n\
                    m=audio 4000 RTP/AVP 101 97\r\na=rtpmap:101 opus/48000/2\r\n\
                    a=rtpmap:97 telephone-event/48000\r\n";
        let a = parse_trunk_answer(opus, &plain_params(), &o).unwrap();
        assert_eq!(a.trunk_telephone_event, Some(PayloadType(97)));
        // The trunk takes it: ours alone (the browser is not given it).
        let answer =
            "v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n\
                      m=audio 4000 RTP/AVP 0 100\r\na=rtpmap:100 telephone-event/8000\r\n";
        let a = parse_trunk_answer(answer, &plain_params(), &o).unwrap();
        assert_eq!(a.trunk_telephone_event, Some(PayloadType(100)));
        assert_eq!(a.telephone_event, None);
        let browser = write_browser_answer(&o, &a, &answer_params(None));
        assert!(!browser.contains("telephone-event"), "{browser}");
        // A browser that has it gets both.
        let o = parse_browser_offer(CHROME).unwrap();

        let a = parse_trunk_answer(answer, &plain_params(), &o).unwrap();
        assert_eq!(a.trunk_telephone_event, Some(PayloadType(100)));
        assert_eq!(
            a.telephone_event,
            Some((PayloadType(100), PayloadType(126)))
        );
    }

    #[test]
    fn baresip_sdes_answer_then_browser_answer() {
        let o = parse_browser_offer(CHROME).unwrap();
        let p = sdes_params();
        let remote = key(SrtpSuite::AesCm128HmacSha1_32, 9);
        let a = parse_trunk_answer(
            &baresip_answer(&remote, 2, "AES_CM_128_HMAC_SHA1_32"),
            &p,
            &o,
        )
        .unwrap();
        assert_eq!(
            a.remote_rtp,
            "198.51.100.7:10002".parse::<SocketAddr>().unwrap()
        );
        assert!(!a.rtcp_mux);
        assert_eq!(a.remote_rtcp, Some("198.51.100.7:10003".parse().unwrap()));
        assert_eq!(a.codec.name, CodecName::Pcmu);
        assert_eq!(a.codec.pt, PayloadType(0));
        assert_eq!(a.codec_trunk_pt, PayloadType(0));
        // Trunk's 101 is the browser's 126 (both telephone-event/8000).
        assert_eq!(
            a.telephone_event,
            Some((PayloadType(101), PayloadType(126)))
        );
        let c = a.crypto.as_ref().unwrap();
        assert!(a.is_secure());
        assert_eq!(c.tag, 2);
        assert_eq!(c.suite(), SrtpSuite::AesCm128HmacSha1_32);
        assert_eq!(c.remote_key, remote);
        let TrunkOfferMedia::Sdes { keys } = &p.media else {
            unreachable!()
        };
        assert_eq!(c.local_key, keys[1]);
        assert_eq!(a.ssrcs, vec![Ssrc(3102381522)]);
        assert_eq!(a.direction, Direction::SendRecv);
        assert!(!format!("{a:?}").contains(&inline(&remote)));

        let sdp = write_browser_answer(&o, &a, &answer_params(Some(Ssrc(1234))));
        assert!(has(&sdp, "m=audio 30000 UDP/TLS/RTP/SAVPF 0 126"), "{sdp}");
        assert!(has(&sdp, "a=rtpmap:0 PCMU/8000"));
        assert!(has(&sdp, "a=rtpmap:126 telephone-event/8000"));
        assert!(has(&sdp, "a=ssrc:1234 cname:webrtc-sip-gateway"));
        assert!(!sdp.contains("a=crypto"));
        assert!(!sdp.contains("opus"));
    }

    #[test]
    fn browser_answer_maps_dynamic_pt_and_carries_webrtc_lines() {
        let o = parse_browser_offer(CHROME).unwrap();
        let p = sdes_params();
        let remote = key(SrtpSuite::AesCm128HmacSha1_80, 5);
        // The trunk numbers opus 96 and te/48000 102, and muxes RTCP.
        let answer = format!(
            "v=0\r\no=- 5 5 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n\
             m=audio 40000 RTP/SAVP 96 102\r\na=rtpmap:96 opus/48000/2\r\na=fmtp:96 useinbandfec=1\r\n\
             a=rtpmap:102 telephone-event/48000\r\na=rtcp-mux\r\na=sendonly\r\n\
             a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{}|2^31\r\n",
            inline(&remote)
        );
        // An MKI in the answer is taken: its wire bytes go with the key, for
        // the SRTP context to check and strip from every packet.
        let with_mki = answer.replace("|2^31\r\n", "|2^31|258:4\r\n");
        let m = parse_trunk_answer(&with_mki, &p, &o).unwrap();
        let c = m.crypto.as_ref().unwrap();
        assert_eq!(
            c.remote_mki,
            Some(Mki {
                value: 258,
                length: 4
            })
        );
        assert_eq!(c.remote_key.mki, Some(vec![0, 0, 1, 2]));
        let a = parse_trunk_answer(&answer, &p, &o).unwrap();
        assert!(a.rtcp_mux);
        assert_eq!(a.remote_rtcp, None);
        assert_eq!(a.codec.pt, PayloadType(111));
        assert_eq!(a.codec_trunk_pt, PayloadType(96));
        assert_eq!(
            a.telephone_event,
            Some((PayloadType(102), PayloadType(110)))
        );
        let c = a.crypto.as_ref().unwrap();
        assert_eq!(
            (c.tag, c.remote_mki, c.remote_lifetime),
            (1, None, Some(1u64 << 31))
        );
        assert_eq!(a.direction, Direction::SendOnly);

        let sdp = write_browser_answer(&o, &a, &answer_params(None));
        assert!(sdp.starts_with("v=0\r\no=- 77 1 IN IP4 203.0.113.5\r\ns=-\r\nt=0 0\r\na=ice-lite\r\na=group:BUNDLE 0\r\n"), "{sdp}");
        for line in [
            "m=audio 30000 UDP/TLS/RTP/SAVPF 111 110",
            "c=IN IP4 203.0.113.5",
            "a=mid:0",
            "a=candidate:1 1 udp 2130706431 203.0.113.5 30000 typ host",
            "a=end-of-candidates",
            "a=ice-ufrag:gwUf",
            "a=ice-pwd:gatewayicepassword0123",
            &format!("a=fingerprint:sha-256 {}", ["AB"; 32].join(":")),
            "a=setup:passive",
            // The trunk only sends: so do we, toward the browser.
            "a=sendonly",
            "a=rtcp-mux",
            "a=rtcp-rsize",
            "a=rtpmap:111 opus/48000/2",
            // The trunk's fmtp (it receives), under the browser's PT.
            "a=fmtp:111 useinbandfec=1",
            "a=rtpmap:110 telephone-event/48000",
        ] {
            assert!(has(&sdp, line), "missing {line:?} in\n{sdp}");
        }
        assert!(!sdp.contains("a=ssrc"));
        assert!(!sdp.contains("a=crypto"));
        // The answer is itself a valid WebRTC SDP in our model.
        let back = SessionDescription::parse(&sdp).unwrap().audio().unwrap();
        assert!(back.ice_lite);
        assert_eq!(back.setup, Some(Setup::Passive));
        assert_eq!(back.fingerprint("sha-256").unwrap().value, vec![0xAB; 32]);
    }

    #[test]
    fn setup_and_direction_rules() {
        let passive = CHROME.replace("a=setup:actpass", "a=setup:passive");
        let o = parse_browser_offer(&passive).unwrap();
        let answer =
            "v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n\
                      m=audio 4000 RTP/AVP 8\r\na=recvonly\r\n";
        let a = parse_trunk_answer(answer, &plain_params(), &o).unwrap();
        assert!(!a.is_secure());
        assert_eq!(a.codec.name, CodecName::Pcma);
        let sdp = write_browser_answer(&o, &a, &answer_params(None));
        assert!(has(&sdp, "a=setup:active"));
        assert!(has(&sdp, "a=recvonly"));

        // Browser puts the call on hold: the trunk offer says sendonly, and
        // the browser answer never sends toward a sendonly browser.
        let hold = CHROME.replace("a=sendrecv", "a=sendonly");
        let o = parse_browser_offer(&hold).unwrap();
        assert!(has(&write_trunk_offer(&o, &plain_params()), "a=sendonly"));
        let answer = answer.replace("a=recvonly", "a=sendrecv");
        let a = parse_trunk_answer(&answer, &plain_params(), &o).unwrap();
        assert!(has(
            &write_browser_answer(&o, &a, &answer_params(None)),
            "a=recvonly"
        ));

        let holdconn = CHROME.replace("a=setup:actpass", "a=setup:holdconn");
        assert!(parse_browser_offer(&holdconn).is_err());
    }

    #[test]
    fn trunk_answer_errors() {
        let o = parse_browser_offer(CHROME).unwrap();
        let p = sdes_params();
        let k80 = key(SrtpSuite::AesCm128HmacSha1_80, 3);
        let good = baresip_answer(&k80, 1, "AES_CM_128_HMAC_SHA1_80");
        assert!(parse_trunk_answer(&good, &p, &o).is_ok());

        let no_crypto = lines(&good)
            .into_iter()
            .filter(|l| !l.starts_with("a=crypto"))
            .map(|l| format!("{l}\r\n"))
            .collect::<String>();
        assert_eq!(
            parse_trunk_answer(&no_crypto, &p, &o),
            Err(SdpError::MissingCrypto)
        );

        // Tag 3 was never offered; tag 1 was offered with SHA1_80, not _32.
        let e = parse_trunk_answer(&baresip_answer(&k80, 3, "AES_CM_128_HMAC_SHA1_80"), &p, &o);
        assert!(
            matches!(e, Err(SdpError::CryptoNotOffered { tag: 3, .. })),
            "{e:?}"
        );
        let k32 = key(SrtpSuite::AesCm128HmacSha1_32, 3);
        let e = parse_trunk_answer(&baresip_answer(&k32, 1, "AES_CM_128_HMAC_SHA1_32"), &p, &o);
        assert!(
            matches!(e, Err(SdpError::CryptoNotOffered { tag: 1, .. })),
            "{e:?}"
        );
        // A short key in the answer.
        let short = good.replace(&inline(&k80), &inline(&key(SrtpSuite::AeadAes128Gcm, 3)));
        let e = parse_trunk_answer(&short, &p, &o).unwrap_err();
        assert!(matches!(e, SdpError::BadCryptoKey { tag: 1, .. }), "{e}");
        assert_eq!(e.sip_status(), 488);

        // RTP/AVP answer to our RTP/SAVP: parses, not secure; policy decides.
        let avp = no_crypto.replace("RTP/SAVP", "RTP/AVP");
        let a = parse_trunk_answer(&avp, &p, &o).unwrap();
        assert!(!a.is_secure());
        // SAVP answer to a plain offer, DTLS answer to SDES: mismatch.
        assert!(matches!(
            parse_trunk_answer(&good, &plain_params(), &o),
            Err(SdpError::ProtoMismatch { .. })
        ));
        let dtls = good.replace("RTP/SAVP", "UDP/TLS/RTP/SAVP");
        assert!(matches!(
            parse_trunk_answer(&dtls, &p, &o),
            Err(SdpError::ProtoMismatch { .. })
        ));

        let rejected = good.replace("m=audio 10002", "m=audio 0");
        assert_eq!(
            parse_trunk_answer(&rejected, &p, &o),
            Err(SdpError::MediaRejected)
        );
        let g729 = good
            .replace("RTP/SAVP 0 101", "RTP/SAVP 18 101")
            .replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:18 G729/8000");
        assert_eq!(
            parse_trunk_answer(&g729, &p, &o),
            Err(SdpError::NoCommonCodec)
        );
        // A codec the browser offered but we did not offer the trunk (CN).
        let cn = good
            .replace("RTP/SAVP 0 101", "RTP/SAVP 13")
            .replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:13 CN/8000");
        assert_eq!(
            parse_trunk_answer(&cn, &p, &o),
            Err(SdpError::NoCommonCodec)
        );
        let no_c = good.replace("c=IN IP4 198.51.100.7\r\n", "");
        assert_eq!(
            parse_trunk_answer(&no_c, &p, &o),
            Err(SdpError::MissingConnection)
        );
        let rtcp = good.replace("a=ptime:20", "a=rtcp:10009 IN IP4 198.51.100.8");
        assert_eq!(
            parse_trunk_answer(&rtcp, &p, &o).unwrap().remote_rtcp,
            Some("198.51.100.8:10009".parse().unwrap())
        );
    }

    #[test]
    fn browser_offer_errors() {
        let cases: Vec<(String, SdpError)> = vec![
            (
                CHROME.replace(
                    "a=fingerprint:sha-256 8D:A6:71:40:74:A4:23:E3:DF:B9:30:3C:9A:38:DC:C4:BA:3A:70:D8:29:D1:65:BD:B8:4D:F8:1B:EA:C4:D3:D0\r\n",
                    "",
                ),
                SdpError::MissingFingerprint,
            ),
            (
                CHROME.replace("a=fingerprint:sha-256", "a=fingerprint:sha-1"),
                SdpError::MissingFingerprint,
            ),
            (CHROME.replace("a=ice-pwd:Nj9Yr8t2Mtn6xP/QozLV3dNl\r\n", ""), SdpError::MissingIceCredentials),
            (CHROME.replace("a=ice-ufrag:i37W\r\n", ""), SdpError::MissingIceCredentials),
            (CHROME.replace("m=audio", "m=video"), SdpError::NoAudio),
            (
                CHROME.replace("111 63 9 0 8 13 110 126", "63 13 126"),
                SdpError::NoSupportedCodec,
            ),
            (
                CHROME.replace("UDP/TLS/RTP/SAVPF", "RTP/AVP"),
                SdpError::UnsupportedProto("RTP/AVP".into()),
            ),
            (CHROME.replace("m=audio 53771", "m=audio 0"), SdpError::MediaRejected),
        ];
        for (sdp, want) in cases {
            assert_eq!(parse_browser_offer(&sdp), Err(want));
        }
        assert!(matches!(
            parse_browser_offer("nonsense"),
            Err(SdpError::Syntax(_))
        ));
        assert_eq!(SdpError::Syntax(String::new()).sip_status(), 400);
    }

    /// The Yealink offer of reference/yealink-srtp-tls.txt (with an F8 line
    /// we do not support and G.729 we do not relay).
    const YEALINK: &str = "v=0\r\no=- 20023 20023 IN IP4 10.2.1.48\r\ns=SDP data\r\nc=IN IP4 10.2.1.48\r\nt=0 0\r\n\
        m=audio 11780 RTP/SAVP 0 8 18 9 101\r\n\
        a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:NzFINTUwZDk2OGVIOTc3YzNkYTkwZWVkMTM1YWFj\r\n\
        a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:NzkyM2FjNzQ2ZDgxYjg0MzQwMGVmMGUxMzdmNWFm\r\n\
        a=crypto:3 F8_128_HMAC_SHA1_80 inline:NDIiMWIzZGE1ZTAwZjA5ZGFhNjQ5YmEANTMzYzA0\r\n\
        a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:18 G729/8000\r\na=fmtp:18 annexb=no\r\n\
        a=rtpmap:9 G722/8000\r\na=fmtp:101 0-15\r\na=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\na=sendrecv\r\n";

    #[test]
    fn yealink_offer_and_echo_answer() {
        let o = parse_sip_offer(YEALINK).unwrap();
        assert_eq!(o.address, "10.2.1.48".parse::<IpAddr>().unwrap());
        assert_eq!(o.port, 11780);
        assert_eq!(o.proto, Proto::RtpSavp);
        assert_eq!(o.remote_rtcp, Some("10.2.1.48:11781".parse().unwrap()));
        let pts: Vec<u8> = o.codecs.iter().map(|c| c.pt.0).collect();
        assert_eq!(pts, [0, 8, 9, 101]);
        let tags: Vec<u32> = o.cryptos.iter().map(|c| c.tag).collect();
        assert_eq!(tags, [1, 2]);
        assert!(o
            .skipped
            .iter()
            .any(|e| matches!(e, SdpError::UnknownCryptoSuite { tag: 3, .. })));
        let chosen = o.choose_crypto(&[SrtpSuite::AesCm128HmacSha1_32]).unwrap();
        assert_eq!(chosen.tag, 2);
        let ours = SrtpKeyMaterial::generate(chosen.suite);
        let sdp = write_sip_answer(
            &o,
            "192.0.2.9".parse().unwrap(),
            6000,
            Some((chosen.tag, &ours)),
            99,
        );
        assert!(has(&sdp, "m=audio 6000 RTP/SAVP 0 101"), "{sdp}");
        assert!(has(&sdp, "a=rtpmap:0 PCMU/8000"));
        assert!(has(&sdp, "a=rtpmap:101 telephone-event/8000"));
        assert!(has(&sdp, "a=fmtp:101 0-15"));
        assert!(has(&sdp, "a=rtcp:6001"));
        assert!(has(&sdp, "a=sendrecv"));
        assert!(has(
            &sdp,
            &format!("a=crypto:{}", CryptoAttribute::new(2, ours).to_sdp_value())
        ));

        let no_good_crypto = YEALINK
            .lines()
            .filter(|l| !l.starts_with("a=crypto:1") && !l.starts_with("a=crypto:2"))
            .map(|l| format!("{l}\n"))
            .collect::<String>();
        assert!(matches!(
            parse_sip_offer(&no_good_crypto),
            Err(SdpError::UnknownCryptoSuite { tag: 3, .. })
        ));
        let no_crypto = no_good_crypto.replace("a=crypto:3", "a=x-crypto:3");
        assert_eq!(
            parse_sip_offer(&no_crypto),
            Err(SdpError::NoAcceptableCrypto)
        );
    }

    /// The whole outgoing path through the demo echo trunk: browser offer →
    /// trunk offer → echo answer → trunk answer → browser answer.
    #[test]
    fn full_circle_through_echo_trunk() {
        for fixture in [CHROME, FIREFOX] {
            let browser = parse_browser_offer(fixture).unwrap();
            for p in [sdes_params(), plain_params()] {
                let invite = write_trunk_offer(&browser, &p);
                let sip = parse_sip_offer(&invite).unwrap();
                let echo_key = sip
                    .choose_crypto(&SrtpSuite::ALL)
                    .map(|c| (c.tag, SrtpKeyMaterial::generate(c.suite)));
                let echo_ip: IpAddr = "127.0.0.1".parse().unwrap();
                let reply = write_sip_answer(
                    &sip,
                    echo_ip,
                    7000,
                    echo_key.as_ref().map(|(t, k)| (*t, k)),
                    5,
                );
                let a = parse_trunk_answer(&reply, &p, &browser).unwrap();
                assert_eq!(
                    a.is_secure(),
                    matches!(p.media, TrunkOfferMedia::Sdes { .. })
                );
                if let (Some(c), Some((tag, k))) = (&a.crypto, &echo_key) {
                    assert_eq!((c.tag, &c.remote_key), (*tag, k));
                    assert_eq!(c.tag, 1, "the echo trunk takes our first preference");
                }
                assert!(a.rtcp_mux);
                assert_eq!(a.remote_rtp, SocketAddr::new(echo_ip, 7000));
                // The first codec of the browser, and its telephone-event.
                assert_eq!(a.codec, browser.codecs[0]);
                assert_eq!(a.codec_trunk_pt, a.codec.pt);
                let te = browser
                    .telephone_event(a.codec.clock_rate)
                    .map(|t| (t.pt, t.pt));
                assert_eq!(a.telephone_event, te);
                let answer = write_browser_answer(&browser, &a, &answer_params(None));
                let back = SessionDescription::parse(&answer).unwrap().audio().unwrap();
                assert_eq!(back.formats[0], browser.codecs[0].pt);
            }
        }
    }

    /// An offer with video (and data) besides audio: the answer repeats
    /// every m-section in order, the others rejected with port 0.
    #[test]
    fn other_sections_are_rejected_in_order() {
        let video = "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:v\r\na=rtpmap:96 VP8/90000\r\n";
        let data =
            "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:d\r\n";
        let sdp = CHROME.replace("m=audio", &format!("{video}m=audio")) + data;
        let o = parse_browser_offer(&sdp).unwrap();
        assert_eq!(o.audio_index, 1);
        assert_eq!(o.other_sections.len(), 2);
        let a = parse_trunk_answer(
            "v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n",
            &plain_params(),
            &o,
        )
        .unwrap();
        let answer = write_browser_answer(&o, &a, &answer_params(None));
        let m_lines: Vec<&str> = lines(&answer)
            .into_iter()
            .filter(|l| l.starts_with("m="))
            .collect();
        assert_eq!(
            m_lines,
            [
                "m=video 0 UDP/TLS/RTP/SAVPF 96",
                "m=audio 30000 UDP/TLS/RTP/SAVPF 0",
                "m=application 0 UDP/DTLS/SCTP webrtc-datachannel",
            ]
        );
        assert!(has(&answer, "a=mid:v") && has(&answer, "a=mid:d"));
        assert!(has(&answer, "a=group:BUNDLE 0"));
    }

    #[test]
    fn trunk_fmtp_wins_in_browser_answer_and_ipv6() {
        let o = parse_browser_offer(CHROME).unwrap();
        let p = TrunkOfferParams {
            local_ip: "2001:db8::5".parse().unwrap(),
            ..plain_params()
        };
        let offer = write_trunk_offer(&o, &p);
        assert!(
            offer.starts_with("v=0\r\no=- 4242 1 IN IP6 2001:db8::5\r\n"),
            "{offer}"
        );
        assert!(has(&offer, "c=IN IP6 2001:db8::5"));
        let answer = "v=0\r\no=- 1 1 IN IP6 2001:db8::7\r\ns=-\r\nc=IN IP6 2001:db8::7\r\nt=0 0\r\n\
                      m=audio 4000 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 maxplaybackrate=16000\r\n";
        let a = parse_trunk_answer(answer, &p, &o).unwrap();
        assert_eq!(
            a.remote_rtp,
            "[2001:db8::7]:4000".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(a.remote_rtcp, Some("[2001:db8::7]:4001".parse().unwrap()));
        assert_eq!(a.codec_trunk_fmtp.as_deref(), Some("maxplaybackrate=16000"));
        let b = write_browser_answer(&o, &a, &answer_params(None));
        assert!(has(&b, "a=fmtp:111 maxplaybackrate=16000"), "{b}");
        assert!(!b.contains("useinbandfec"));
    }

    /// Garbage and mutated offers: errors, never panics.
    #[test]
    fn mutated_inputs_never_panic() {
        let p = sdes_params();
        let browser = parse_browser_offer(CHROME).unwrap();
        let exercise = |s: &str| {
            let _ = parse_browser_offer(s);
            let _ = parse_sip_offer(s);
            let _ = parse_trunk_answer(s, &p, &browser);
            let _ = parse_trunk_answer(s, &plain_params(), &browser);
        };
        let answer = baresip_answer(
            &key(SrtpSuite::AesCm128HmacSha1_80, 1),
            1,
            "AES_CM_128_HMAC_SHA1_80",
        );
        for input in [CHROME, FIREFOX, YEALINK, answer.as_str()] {
            // Every prefix, every line removed, every line doubled.
            for (i, _) in input.char_indices() {
                exercise(&input[..i]);
            }
            let ls: Vec<&str> = input.split("\r\n").collect();
            for i in 0..ls.len() {
                let mut removed = ls.clone();
                removed.remove(i);
                exercise(&removed.join("\r\n"));
                let mut doubled = ls.clone();
                doubled.insert(i, ls[i]);
                exercise(&doubled.join("\r\n"));
            }
            // Deterministic byte mutations (xorshift), kept ASCII-printable
            // or control so the &str stays valid.
            let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
            for _ in 0..2000 {
                let mut bytes = input.as_bytes().to_vec();
                for _ in 0..4 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let at = (state % bytes.len() as u64) as usize;
                    const ALPHABET: &[u8] = b" :/|^;=\r\n0129aZ-";
                    bytes[at] = ALPHABET[(state >> 32) as usize % ALPHABET.len()];
                }
                if let Ok(s) = std::str::from_utf8(&bytes) {
                    exercise(s);
                }
            }
        }
        for garbage in [
            "",
            "v=0",
            "v=0\r\nm=audio",
            "m=audio 1 RTP/AVP 0",
            "\u{feff}v=0\r\n",
            "v=0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:\r\nm=audio 1 RTP/SAVP 0\r\n",
        ] {
            exercise(garbage);
        }
    }

    // ---- DTLS-SRTP toward trunks ----------------------------------------

    fn dtls_params() -> TrunkOfferParams {
        TrunkOfferParams {
            media: TrunkOfferMedia::Dtls {
                fingerprint_sha256: ["AB"; 32].join(":"),
            },
            ..sdes_params()
        }
    }

    /// baresip 1.0 dtls_srtp's answer: session-level setup and fingerprint
    /// (upper-case algorithm), no rtcp-mux.
    fn baresip_dtls_answer(setup: &str) -> String {
        format!(
            "v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n\
             a=setup:{setup}\r\na=fingerprint:SHA-256 {}\r\n\
             m=audio 31154 UDP/TLS/RTP/SAVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\na=ptime:20\r\n",
            ["D4"; 32].join(":")
        )
    }

    #[test]
    fn a_dtls_trunk_offer_has_udp_tls_our_fingerprint_and_actpass() {
        let offer = parse_browser_offer(CHROME).unwrap();
        let sdp = write_trunk_offer(&offer, &dtls_params());
        let m = lines(&sdp)
            .into_iter()
            .find(|l| l.starts_with("m=audio"))
            .unwrap();
        assert!(m.starts_with("m=audio 20000 UDP/TLS/RTP/SAVP "), "{sdp}");
        assert!(
            has(
                &sdp,
                &format!("a=fingerprint:sha-256 {}", ["AB"; 32].join(":"))
            ),
            "{sdp}"
        );
        assert!(has(&sdp, "a=setup:actpass"), "{sdp}");
        assert!(
            has(&sdp, "a=rtcp-mux") && has(&sdp, "a=rtcp:20001"),
            "{sdp}"
        );
        assert!(!sdp.contains("a=crypto") && !sdp.contains("ice-"), "{sdp}");
    }

    #[test]
    fn the_answers_setup_decides_our_role() {
        let offer = parse_browser_offer(CHROME).unwrap();
        for (setup, role) in [("active", DtlsRole::Server), ("passive", DtlsRole::Client)] {
            let a =
                parse_trunk_answer(&baresip_dtls_answer(setup), &dtls_params(), &offer).unwrap();
            let dtls = a.dtls.clone().expect("DTLS answer");
            assert_eq!(dtls.role, role, "{setup}");
            assert_eq!(dtls.fingerprint.algorithm, "sha-256");
            assert!(a.is_secure() && a.crypto.is_none());
            assert_eq!(
                a.remote_rtp,
                "198.51.100.7:31154".parse::<SocketAddr>().unwrap()
            );
            assert_eq!(
                a.remote_rtcp,
                Some("198.51.100.7:31155".parse::<SocketAddr>().unwrap())
            );
        }
        // No a=setup in an answer means active (RFC 4145 4): we serve.
        let none = baresip_dtls_answer("active").replace("a=setup:active\r\n", "");
        let a = parse_trunk_answer(&none, &dtls_params(), &offer).unwrap();
        assert_eq!(a.dtls.unwrap().role, DtlsRole::Server);
        // actpass and holdconn are no answers.
        for bad in ["actpass", "holdconn"] {
            let e = parse_trunk_answer(&baresip_dtls_answer(bad), &dtls_params(), &offer);
            assert!(
                matches!(
                    e,
                    Err(SdpError::BadAttribute {
                        attribute: "setup",
                        ..
                    })
                ),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn dtls_answers_that_do_not_fit_are_refused_or_marked_plain() {
        let offer = parse_browser_offer(CHROME).unwrap();
        // Without a fingerprint nothing could be verified.
        let bare = baresip_dtls_answer("active")
            .lines()
            .filter(|l| !l.starts_with("a=fingerprint"))
            .map(|l| format!("{l}\r\n"))
            .collect::<String>();
        assert_eq!(
            parse_trunk_answer(&bare, &dtls_params(), &offer),
            Err(SdpError::MissingFingerprint)
        );
        // SDES to our DTLS offer, DTLS to our SDES offer: mismatches.
        let sdes = baresip_answer(
            &key(SrtpSuite::AesCm128HmacSha1_80, 9),
            1,
            "AES_CM_128_HMAC_SHA1_80",
        );
        assert!(matches!(
            parse_trunk_answer(&sdes, &dtls_params(), &offer),
            Err(SdpError::ProtoMismatch { .. })
        ));
        assert!(matches!(
            parse_trunk_answer(&baresip_dtls_answer("active"), &sdes_params(), &offer),
            Err(SdpError::ProtoMismatch { .. })
        ));
        // RTP/AVP to our DTLS offer parses, not secure: the policy decides.
        let plain = baresip_dtls_answer("active").replace("UDP/TLS/RTP/SAVP", "RTP/AVP");
        let a = parse_trunk_answer(&plain, &dtls_params(), &offer).unwrap();
        assert!(!a.is_secure() && a.dtls.is_none());
    }

    #[test]
    fn an_incoming_dtls_offer_and_our_answer() {
        let offer_sdp =
            baresip_dtls_answer("actpass").replace("UDP/TLS/RTP/SAVP ", "UDP/TLS/RTP/SAVPF ");
        let offer = parse_sip_offer(&offer_sdp).unwrap();
        let dtls = offer.dtls.clone().expect("a DTLS offer");
        assert_eq!(dtls.role, DtlsRole::Server);
        assert!(offer.cryptos.is_empty());
        let ours = ["AB"; 32].join(":");
        let answer = write_sip_answer_keyed(
            &offer,
            &offer.codecs,
            "203.0.113.5".parse().unwrap(),
            20002,
            AnswerKeying::Dtls {
                fingerprint_sha256: &ours,
            },
            (9, 1),
        );
        assert!(
            answer.contains("m=audio 20002 UDP/TLS/RTP/SAVPF 0 101"),
            "{answer}"
        );
        assert!(
            has(&answer, &format!("a=fingerprint:sha-256 {ours}")),
            "{answer}"
        );
        assert!(has(&answer, "a=setup:passive"), "{answer}");
        assert!(has(&answer, "a=rtcp:20003"), "{answer}");
        // A passive offer makes us the client: we answer active.
        let passive = parse_sip_offer(&baresip_dtls_answer("passive")).unwrap();
        assert_eq!(passive.dtls.as_ref().unwrap().role, DtlsRole::Client);
        let answer = write_sip_answer_keyed(
            &passive,
            &passive.codecs,
            "203.0.113.5".parse().unwrap(),
            20002,
            AnswerKeying::Dtls {
                fingerprint_sha256: &ours,
            },
            (9, 1),
        );
        assert!(has(&answer, "a=setup:active"), "{answer}");
        // The role table of RFC 5763 5.
        assert_eq!(
            answer_setup(Some(Setup::Actpass)).unwrap(),
            (DtlsRole::Server, Setup::Passive)
        );
        assert_eq!(
            answer_setup(Some(Setup::Active)).unwrap(),
            (DtlsRole::Server, Setup::Passive)
        );
        assert_eq!(
            answer_setup(None).unwrap(),
            (DtlsRole::Server, Setup::Passive)
        );
        assert_eq!(
            answer_setup(Some(Setup::Passive)).unwrap(),
            (DtlsRole::Client, Setup::Active)
        );
        assert!(answer_setup(Some(Setup::Holdconn)).is_err());
        // A DTLS offer without fingerprint: 488 with the reason.
        let bare = baresip_dtls_answer("actpass").replace(
            &format!("a=fingerprint:SHA-256 {}\r\n", ["D4"; 32].join(":")),
            "",
        );
        assert_eq!(parse_sip_offer(&bare), Err(SdpError::MissingFingerprint));
    }
}
