//! A typed view over a parsed SDP. [`SessionDescription`] owns the
//! `sdp-types` session, which keeps every line (unknown attributes included),
//! so writing it back loses nothing. [`AudioSection`] is the part of one
//! `m=audio` the gateway reasons about, with session-level fallbacks
//! (connection, ICE credentials, fingerprint, direction) already applied.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use super::crypto::CryptoAttribute;
use super::{parse_session, write_session, SdpError};
pub use crate::fingerprint::Fingerprint;
use crate::types::{PayloadType, Ssrc};

/// Attribute values we keep as strings are short in practice; these limits
/// only stop a hostile SDP from making us copy megabytes into the model.
const MAX_ICE_CREDENTIAL_LEN: usize = 256;

/// The transport protocol of an m-line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// `RTP/AVP`: plain RTP.
    RtpAvp,
    /// `RTP/AVPF`: plain RTP with RTCP feedback (some SIP phones).
    RtpAvpf,
    /// `RTP/SAVP`: SRTP keyed by SDES.
    RtpSavp,
    /// `RTP/SAVPF`: SRTP with feedback (old WebRTC spelling, or SDES).
    RtpSavpf,
    /// `UDP/TLS/RTP/SAVP`: DTLS-SRTP.
    UdpTlsRtpSavp,
    /// `UDP/TLS/RTP/SAVPF`: DTLS-SRTP with feedback (every browser).
    UdpTlsRtpSavpf,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::RtpAvp => "RTP/AVP",
            Proto::RtpAvpf => "RTP/AVPF",
            Proto::RtpSavp => "RTP/SAVP",
            Proto::RtpSavpf => "RTP/SAVPF",
            Proto::UdpTlsRtpSavp => "UDP/TLS/RTP/SAVP",
            Proto::UdpTlsRtpSavpf => "UDP/TLS/RTP/SAVPF",
        }
    }

    /// SRTP of some kind (SDES or DTLS).
    pub fn is_secure(self) -> bool {
        !matches!(self, Proto::RtpAvp | Proto::RtpAvpf)
    }

    /// Keyed by DTLS (`UDP/TLS/...`).
    pub fn is_dtls(self) -> bool {
        matches!(self, Proto::UdpTlsRtpSavp | Proto::UdpTlsRtpSavpf)
    }
}

impl FromStr for Proto {
    type Err = SdpError;
    fn from_str(s: &str) -> Result<Self, SdpError> {
        // Protocol names are case-sensitive tokens, but some SIP stacks
        // upper/lower-case them; RFC 4566 registers them upper case.
        Ok(match s.to_ascii_uppercase().as_str() {
            "RTP/AVP" => Proto::RtpAvp,
            "RTP/AVPF" => Proto::RtpAvpf,
            "RTP/SAVP" => Proto::RtpSavp,
            "RTP/SAVPF" => Proto::RtpSavpf,
            "UDP/TLS/RTP/SAVP" => Proto::UdpTlsRtpSavp,
            "UDP/TLS/RTP/SAVPF" => Proto::UdpTlsRtpSavpf,
            _ => return Err(SdpError::UnsupportedProto(truncate(s, 40))),
        })
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Media direction (RFC 4566 section 6), from the sender's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Direction {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    fn from_attribute(name: &str) -> Option<Self> {
        Some(match name {
            "sendrecv" => Direction::SendRecv,
            "sendonly" => Direction::SendOnly,
            "recvonly" => Direction::RecvOnly,
            "inactive" => Direction::Inactive,
            _ => return None,
        })
    }

    pub fn from_flags(send: bool, recv: bool) -> Self {
        match (send, recv) {
            (true, true) => Direction::SendRecv,
            (true, false) => Direction::SendOnly,
            (false, true) => Direction::RecvOnly,
            (false, false) => Direction::Inactive,
        }
    }

    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    /// The direction as the other end sees it (sendonly ⇄ recvonly).
    pub fn reversed(self) -> Self {
        Direction::from_flags(self.receives(), self.sends())
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// DTLS role negotiation (RFC 4145, RFC 8842).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Setup {
    Actpass,
    Active,
    Passive,
    Holdconn,
}

impl Setup {
    pub fn as_str(self) -> &'static str {
        match self {
            Setup::Actpass => "actpass",
            Setup::Active => "active",
            Setup::Passive => "passive",
            Setup::Holdconn => "holdconn",
        }
    }
}

impl FromStr for Setup {
    type Err = SdpError;
    fn from_str(s: &str) -> Result<Self, SdpError> {
        Ok(match s.trim() {
            "actpass" => Setup::Actpass,
            "active" => Setup::Active,
            "passive" => Setup::Passive,
            "holdconn" => Setup::Holdconn,
            other => {
                return Err(SdpError::BadAttribute {
                    attribute: "setup",
                    reason: format!("unknown role {:?}", truncate(other, 20)),
                })
            }
        })
    }
}

/// Parses an `a=fingerprint` value into the shared [`Fingerprint`] type.
fn parse_fingerprint(value: &str) -> Result<Fingerprint, SdpError> {
    let fingerprint = Fingerprint::parse(value).map_err(|e| SdpError::BadAttribute {
        attribute: "fingerprint",
        reason: e.to_string(),
    })?;
    // sha-1 is 20 bytes, sha-512 is 64: anything outside is not a digest.
    if !(16..=64).contains(&fingerprint.value.len()) {
        return Err(SdpError::BadAttribute {
            attribute: "fingerprint",
            reason: "digest length".into(),
        });
    }
    Ok(fingerprint)
}

/// `a=rtpmap:<pt> <encoding>/<clock>[/<channels>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    pub pt: PayloadType,
    pub encoding: String,
    pub clock_rate: u32,
    pub channels: Option<u8>,
}

impl RtpMap {
    pub fn parse(value: &str) -> Result<Self, SdpError> {
        let bad = |reason: &str| SdpError::BadAttribute {
            attribute: "rtpmap",
            reason: reason.to_string(),
        };
        let (pt, rest) = value
            .trim()
            .split_once(' ')
            .ok_or_else(|| bad("not <pt> <encoding>/<clock>"))?;
        let pt = parse_pt(pt).ok_or_else(|| bad("payload type is not 0..127"))?;
        let mut parts = rest.trim().split('/');
        let encoding = parts.next().unwrap_or_default();
        if encoding.is_empty() || encoding.len() > 64 {
            return Err(bad("encoding name"));
        }
        let clock_rate = parts
            .next()
            .and_then(|c| c.parse::<u32>().ok())
            .filter(|c| *c > 0)
            .ok_or_else(|| bad("clock rate"))?;
        let channels = match parts.next() {
            None => None,
            Some(c) => Some(
                c.parse::<u8>()
                    .ok()
                    .filter(|c| *c > 0)
                    .ok_or_else(|| bad("channel count"))?,
            ),
        };
        if parts.next().is_some() {
            return Err(bad("trailing fields"));
        }
        Ok(RtpMap {
            pt,
            encoding: encoding.to_string(),
            clock_rate,
            channels,
        })
    }
}

/// `a=rtcp:<port> [IN IP4 <addr>]`. The address is kept only when it is an
/// IP address (Firefox writes an mDNS `.local` name there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcpAttr {
    pub port: u16,
    pub address: Option<IpAddr>,
}

impl RtcpAttr {
    pub fn parse(value: &str) -> Result<Self, SdpError> {
        let mut fields = value.split_ascii_whitespace();
        let port = fields
            .next()
            .and_then(|p| p.parse::<u16>().ok())
            .ok_or_else(|| SdpError::BadAttribute {
                attribute: "rtcp",
                reason: "port is not 0..65535".into(),
            })?;
        let address = match (fields.next(), fields.next(), fields.next()) {
            (Some("IN"), Some(_), Some(addr)) => addr.parse::<IpAddr>().ok(),
            _ => None,
        };
        Ok(RtcpAttr { port, address })
    }
}

/// The audio m-section as the gateway needs it. Session-level values (c=,
/// ICE credentials, fingerprints, direction) apply where the section has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioSection {
    /// Index among the session's m-sections.
    pub index: usize,
    pub port: u16,
    pub proto: Proto,
    /// Payload types in m-line (preference) order.
    pub formats: Vec<PayloadType>,
    pub rtpmaps: Vec<RtpMap>,
    pub fmtps: Vec<(PayloadType, String)>,
    /// Media-level `c=` if any, else session-level; `None` if neither exists.
    pub connection: Option<IpAddr>,
    pub rtcp_mux: bool,
    pub rtcp_rsize: bool,
    pub rtcp: Option<RtcpAttr>,
    pub direction: Direction,
    pub mid: Option<String>,
    pub ice_ufrag: Option<String>,
    pub ice_pwd: Option<String>,
    pub ice_lite: bool,
    /// Media-level fingerprints if any, else session-level ones.
    pub fingerprints: Vec<Fingerprint>,
    pub setup: Option<Setup>,
    /// Distinct SSRCs of `a=ssrc` lines, in order of appearance.
    pub ssrcs: Vec<Ssrc>,
    /// Every `a=crypto`, in offer (preference) order, each parsed on its own:
    /// an offer may mix lines we cannot use with ones we can.
    pub cryptos: Vec<Result<CryptoAttribute, SdpError>>,
    pub ptime: Option<u32>,
    /// Malformed `a=rtpmap`, `a=fmtp` and `a=ssrc` lines that were skipped,
    /// for the caller to log.
    pub skipped: Vec<SdpError>,
}

impl AudioSection {
    pub fn rtpmap(&self, pt: PayloadType) -> Option<&RtpMap> {
        self.rtpmaps.iter().find(|m| m.pt == pt)
    }

    pub fn fmtp(&self, pt: PayloadType) -> Option<&str> {
        self.fmtps
            .iter()
            .find(|(p, _)| *p == pt)
            .map(|(_, f)| f.as_str())
    }

    /// The crypto attributes that parsed, in order.
    pub fn valid_cryptos(&self) -> impl Iterator<Item = &CryptoAttribute> {
        self.cryptos.iter().filter_map(|c| c.as_ref().ok())
    }

    /// The fingerprint of `algorithm` (lower case), if offered.
    pub fn fingerprint(&self, algorithm: &str) -> Option<&Fingerprint> {
        self.fingerprints.iter().find(|f| f.algorithm == algorithm)
    }
}

/// One parsed SDP. Wraps the `sdp-types` session so that everything we do
/// not model survives a parse/write round trip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    session: sdp_types::Session,
}

impl SessionDescription {
    pub fn parse(sdp: &str) -> Result<Self, SdpError> {
        Ok(SessionDescription {
            session: parse_session(sdp)?,
        })
    }

    pub fn from_session(session: sdp_types::Session) -> Self {
        SessionDescription { session }
    }

    /// The underlying `sdp-types` session, every line included.
    pub fn session(&self) -> &sdp_types::Session {
        &self.session
    }

    pub fn session_mut(&mut self) -> &mut sdp_types::Session {
        &mut self.session
    }

    /// Writes the SDP back (CRLF line ends).
    pub fn to_sdp_string(&self) -> String {
        write_session(&self.session)
    }

    /// The `a=group:BUNDLE` mids, empty when there is no bundle group.
    pub fn bundle_group(&self) -> Vec<String> {
        self.session
            .attributes
            .iter()
            .filter(|a| a.attribute == "group")
            .filter_map(|a| a.value.as_deref())
            .filter_map(|v| v.strip_prefix("BUNDLE"))
            .flat_map(|mids| mids.split_ascii_whitespace().map(str::to_string))
            .collect()
    }

    /// The first `m=audio` section, typed. Errors if there is none or if a
    /// line the gateway relies on is malformed.
    pub fn audio(&self) -> Result<AudioSection, SdpError> {
        let (index, media) = self
            .session
            .medias
            .iter()
            .enumerate()
            .find(|(_, m)| m.media == "audio")
            .ok_or(SdpError::NoAudio)?;
        let proto: Proto = media.proto.parse()?;
        let formats = media
            .fmt
            .split_ascii_whitespace()
            .map(|f| parse_pt(f).ok_or_else(|| SdpError::BadFormat(truncate(f, 20))))
            .collect::<Result<Vec<_>, _>>()?;
        let session = &self.session;
        let connection = match media.connections.first().or(session.connection.as_ref()) {
            Some(c) => Some(parse_connection(c)?),
            None => None,
        };

        let mut section = AudioSection {
            index,
            port: media.port,
            proto,
            formats,
            rtpmaps: Vec::new(),
            fmtps: Vec::new(),
            connection,
            rtcp_mux: false,
            rtcp_rsize: false,
            rtcp: None,
            direction: Direction::SendRecv,
            mid: None,
            ice_ufrag: None,
            ice_pwd: None,
            ice_lite: session.has_attribute("ice-lite"),
            fingerprints: Vec::new(),
            setup: None,
            ssrcs: Vec::new(),
            cryptos: Vec::new(),
            ptime: None,
            skipped: Vec::new(),
        };
        let mut direction = None;
        for attr in &media.attributes {
            let value = attr.value.as_deref().unwrap_or("");
            match attr.attribute.as_str() {
                // Codec and SSRC lines are skipped (and reported) when
                // malformed rather than failing the call: an odd line about a
                // codec we would not pick anyway is common in SIP land, and a
                // skipped PT or SSRC only means it is not used or not
                // pre-announced.
                "rtpmap" => match RtpMap::parse(value) {
                    // The first mapping of a PT wins, as in every stack we know.
                    Ok(map) if section.rtpmap(map.pt).is_none() => section.rtpmaps.push(map),
                    Ok(_) => {}
                    Err(e) => section.skipped.push(e),
                },
                "fmtp" => {
                    let (pt, params) = value.trim().split_once(' ').unwrap_or((value, ""));
                    match parse_pt(pt) {
                        Some(pt) => section.fmtps.push((pt, params.trim().to_string())),
                        None => section.skipped.push(SdpError::BadAttribute {
                            attribute: "fmtp",
                            reason: "payload type is not 0..127".into(),
                        }),
                    }
                }
                "rtcp-mux" => section.rtcp_mux = true,
                "rtcp-rsize" => section.rtcp_rsize = true,
                "rtcp" => section.rtcp = Some(RtcpAttr::parse(value)?),
                "mid" => section.mid = Some(bounded("mid", value, 64)?),
                "ice-ufrag" => section.ice_ufrag = Some(ice_credential("ice-ufrag", value)?),
                "ice-pwd" => section.ice_pwd = Some(ice_credential("ice-pwd", value)?),
                "fingerprint" => section.fingerprints.push(parse_fingerprint(value)?),
                "setup" => section.setup = Some(value.parse()?),
                "ssrc" => {
                    match value
                        .split_ascii_whitespace()
                        .next()
                        .and_then(|s| s.parse::<u32>().ok())
                        .map(Ssrc)
                    {
                        Some(ssrc) if !section.ssrcs.contains(&ssrc) => section.ssrcs.push(ssrc),
                        Some(_) => {}
                        None => section.skipped.push(SdpError::BadAttribute {
                            attribute: "ssrc",
                            reason: "not a 32-bit number".into(),
                        }),
                    }
                }
                "crypto" => section.cryptos.push(CryptoAttribute::parse(value)),
                "ptime" => section.ptime = value.trim().parse().ok().filter(|p| *p > 0),
                name => {
                    if let Some(d) = Direction::from_attribute(name) {
                        direction = Some(d);
                    }
                }
            }
        }

        // Session-level fallbacks (RFC 4566, RFC 8839, RFC 8122).
        let session_attr = |name: &str| session.get_first_attribute_value(name).ok().flatten();
        if section.ice_ufrag.is_none() {
            if let Some(v) = session_attr("ice-ufrag") {
                section.ice_ufrag = Some(ice_credential("ice-ufrag", v)?);
            }
        }
        if section.ice_pwd.is_none() {
            if let Some(v) = session_attr("ice-pwd") {
                section.ice_pwd = Some(ice_credential("ice-pwd", v)?);
            }
        }
        if section.fingerprints.is_empty() {
            for attr in session
                .attributes
                .iter()
                .filter(|a| a.attribute == "fingerprint")
            {
                let value = attr.value.as_deref().unwrap_or("");
                section.fingerprints.push(parse_fingerprint(value)?);
            }
        }
        if section.setup.is_none() {
            if let Some(v) = session_attr("setup") {
                section.setup = Some(v.parse()?);
            }
        }
        section.direction = direction
            .or_else(|| {
                session
                    .attributes
                    .iter()
                    .rev()
                    .find_map(|a| Direction::from_attribute(&a.attribute))
            })
            .unwrap_or_default();
        Ok(section)
    }
}

/// `c=IN IP4 <addr>[/ttl[/n]]`. Only IP addresses: SIP trunks and browsers
/// both write them, and a host name would need DNS, which is not ours to do.
fn parse_connection(c: &sdp_types::Connection) -> Result<IpAddr, SdpError> {
    let addr = c.connection_address.split('/').next().unwrap_or_default();
    let ip = addr
        .parse::<IpAddr>()
        .map_err(|_| SdpError::BadConnection(truncate(&c.connection_address, 64)))?;
    match (c.addrtype.as_str(), ip) {
        ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_)) if c.nettype == "IN" => Ok(ip),
        _ => Err(SdpError::BadConnection(truncate(
            &format!("{} {} {}", c.nettype, c.addrtype, c.connection_address),
            64,
        ))),
    }
}

pub(crate) fn parse_pt(s: &str) -> Option<PayloadType> {
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u8>()
        .ok()
        .filter(|pt| *pt <= 127)
        .map(PayloadType)
}

fn bounded(attribute: &'static str, value: &str, max: usize) -> Result<String, SdpError> {
    let value = value.trim();
    if value.is_empty() || value.len() > max {
        return Err(SdpError::BadAttribute {
            attribute,
            reason: format!("value must be 1 to {max} characters"),
        });
    }
    Ok(value.to_string())
}

/// ICE credentials are `ice-char` (ALPHA / DIGIT / "+" / "/"), RFC 8839.
/// Checking the alphabet here keeps them safe to echo into STUN usernames.
fn ice_credential(attribute: &'static str, value: &str) -> Result<String, SdpError> {
    let value = bounded(attribute, value, MAX_ICE_CREDENTIAL_LEN)?;
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    {
        return Err(SdpError::BadAttribute {
            attribute,
            reason: "characters outside ALPHA / DIGIT / + /".into(),
        });
    }
    Ok(value)
}

/// Cuts peer-supplied text quoted in an error to a sane length (on a char
/// boundary, so it cannot panic).
pub(crate) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME: &str = include_str!("../../tests/fixtures/chrome-offer.sdp");
    const FIREFOX: &str = include_str!("../../tests/fixtures/firefox-offer.sdp");

    /// Every `a=` line of the input, in order, in the output: the model
    /// loses no attribute (and `sdp-types` writes the fixtures byte for byte).
    #[test]
    fn fixtures_round_trip_without_loss() {
        for input in [CHROME, FIREFOX] {
            let parsed = SessionDescription::parse(input).unwrap();
            let written = parsed.to_sdp_string();
            let attrs = |s: &str| {
                s.lines()
                    .map(|l| l.trim_end_matches('\r').to_string())
                    .filter(|l| l.starts_with("a=") || l.starts_with("m=") || l.starts_with("c="))
                    .collect::<Vec<_>>()
            };
            assert_eq!(attrs(&written), attrs(input));
            assert_eq!(written, input);
            assert_eq!(SessionDescription::parse(&written).unwrap(), parsed);
        }
    }

    #[test]
    fn chrome_audio_section() {
        let sdp = SessionDescription::parse(CHROME).unwrap();
        let a = sdp.audio().unwrap();
        assert_eq!(a.proto, Proto::UdpTlsRtpSavpf);
        assert_eq!(a.port, 53771);
        let pts: Vec<u8> = a.formats.iter().map(|p| p.0).collect();
        assert_eq!(pts, [111, 63, 9, 0, 8, 13, 110, 126]);
        assert_eq!(
            a.rtpmap(PayloadType(111)),
            Some(&RtpMap {
                pt: PayloadType(111),
                encoding: "opus".into(),
                clock_rate: 48000,
                channels: Some(2)
            })
        );
        assert_eq!(a.fmtp(PayloadType(111)), Some("minptime=10;useinbandfec=1"));
        assert_eq!(a.connection, Some("192.0.2.2".parse().unwrap()));
        assert!(a.rtcp_mux && a.rtcp_rsize);
        assert_eq!(
            a.rtcp,
            Some(RtcpAttr {
                port: 9,
                address: Some("0.0.0.0".parse().unwrap())
            })
        );
        assert_eq!(a.direction, Direction::SendRecv);
        assert_eq!(a.mid.as_deref(), Some("0"));
        assert_eq!(a.ice_ufrag.as_deref(), Some("i37W"));
        assert_eq!(a.ice_pwd.as_deref(), Some("Nj9Yr8t2Mtn6xP/QozLV3dNl"));
        let fp = a.fingerprint("sha-256").unwrap();
        assert_eq!(fp.value.len(), 32);
        assert_eq!(fp.value[0], 0x8D);
        assert_eq!(a.setup, Some(Setup::Actpass));
        assert_eq!(a.ssrcs, vec![Ssrc(4206085114)]);
        assert!(a.cryptos.is_empty());
        assert_eq!(sdp.bundle_group(), vec!["0".to_string()]);
    }

    #[test]
    fn firefox_session_level_values() {
        let sdp = SessionDescription::parse(FIREFOX).unwrap();
        let a = sdp.audio().unwrap();
        // Fingerprint only at session level in Firefox's offer.
        assert_eq!(a.fingerprint("sha-256").unwrap().value[0], 0xBA);
        assert_eq!(a.connection, Some("0.0.0.0".parse().unwrap()));
        // a=rtcp with an mDNS name: port kept, address dropped.
        assert_eq!(
            a.rtcp,
            Some(RtcpAttr {
                port: 46423,
                address: None
            })
        );
        assert_eq!(a.rtpmap(PayloadType(9)).map(|m| m.channels), Some(Some(1)));
        assert_eq!(a.ice_ufrag.as_deref(), Some("afacfca5"));
        assert_eq!(sdp.bundle_group(), vec!["0".to_string()]);
    }

    #[test]
    fn fingerprint_parse_and_write() {
        let fp = parse_fingerprint("SHA-256 8D:A6:71:40:74:A4:23:E3:DF:B9:30:3C:9A:38:DC:C4:BA:3A:70:D8:29:D1:65:BD:B8:4D:F8:1B:EA:C4:D3:D0").unwrap();
        assert_eq!(fp.algorithm, "sha-256");
        assert!(fp.to_string().starts_with("sha-256 8D:A6:"));
        assert_eq!(parse_fingerprint(&fp.to_string()).unwrap(), fp);
        for bad in [
            "sha-256",
            "sha-256 XX:YY",
            "sha-256 8DA6",
            "sha-256 8D:A6",
            "sha-256 8D::A6",
        ] {
            assert!(parse_fingerprint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn direction_helpers() {
        assert_eq!(Direction::SendOnly.reversed(), Direction::RecvOnly);
        assert_eq!(Direction::SendRecv.reversed(), Direction::SendRecv);
        assert_eq!(Direction::from_flags(false, false), Direction::Inactive);
    }

    #[test]
    fn session_level_direction_and_connection() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\na=sendonly\r\nm=audio 4000 RTP/AVP 0\r\n";
        let a = SessionDescription::parse(sdp).unwrap().audio().unwrap();
        assert_eq!(a.direction, Direction::SendOnly);
        assert_eq!(a.connection, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(a.formats, vec![PayloadType(0)]);
        assert!(a.rtpmaps.is_empty());
    }

    #[test]
    fn malformed_sections_are_errors() {
        let base = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n";
        for (media, want) in [
            ("m=video 4000 RTP/AVP 96\r\n", "no m=audio"),
            ("m=audio 4000 RTP/XYZ 0\r\n", "transport"),
            ("m=audio 4000 RTP/AVP 0 x\r\n", "format"),
            ("m=audio 4000 RTP/AVP 200\r\n", "format"),
            ("m=audio 4000 RTP/AVP 0\r\na=rtcp:99999\r\n", "rtcp"),
            (
                "m=audio 4000 RTP/AVP 0\r\na=ice-ufrag:a b\"c\r\n",
                "ice-ufrag",
            ),
            ("m=audio 4000 RTP/AVP 0\r\na=setup:sideways\r\n", "setup"),
            ("m=audio 4000 RTP/AVP 0\r\nc=IN IP4 host.example\r\n", "c="),
            ("m=audio 4000 RTP/AVP 0\r\nc=IN IP6 10.0.0.1\r\n", "c="),
        ] {
            let sdp = format!("{base}{media}");
            let e = SessionDescription::parse(&sdp)
                .and_then(|s| s.audio())
                .unwrap_err();
            assert!(e.to_string().contains(want), "{media:?}: {e}");
        }
    }

    #[test]
    fn malformed_codec_and_ssrc_lines_are_skipped_and_reported() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
                   m=audio 4000 RTP/AVP 0 96\r\na=rtpmap:0 PCMU\r\na=rtpmap:300 PCMU/8000\r\n\
                   a=rtpmap:96 opus/48000/2/x\r\na=fmtp:x y\r\na=ssrc:abc cname:x\r\na=ssrc:7 cname:y\r\n";
        let a = SessionDescription::parse(sdp).unwrap().audio().unwrap();
        assert!(a.rtpmaps.is_empty());
        assert_eq!(a.ssrcs, vec![Ssrc(7)]);
        let what: Vec<String> = a.skipped.iter().map(|e| e.to_string()).collect();
        assert_eq!(what.len(), 5, "{what:?}");
        assert!(
            what[0].contains("a=rtpmap")
                && what[3].contains("a=fmtp")
                && what[4].contains("a=ssrc")
        );
    }

    #[test]
    fn too_large_and_garbage() {
        let big = "v=0\r\n".to_string() + &"a=x\r\n".repeat(20_000);
        assert!(matches!(
            SessionDescription::parse(&big),
            Err(SdpError::TooLarge { .. })
        ));
        for garbage in [
            "",
            "hello",
            "v=1\r\n",
            "\u{0}\u{1}",
            "v=0\r\nm=audio x RTP/AVP 0\r\n",
        ] {
            let e = SessionDescription::parse(garbage).and_then(|s| s.audio());
            assert!(e.is_err(), "{garbage:?}");
        }
    }
}
