//! The SDP layer: a typed view over `sdp-types` (which keeps every attribute,
//! so a parse/write round trip loses nothing), RFC 4568 `a=crypto`, and the
//! WebRTC ⇄ SIP translation the B2BUA uses.
//!
//! Pure: no IO, no clock, no tokio. Every parser is `&str -> Result<_, SdpError>`
//! and never panics on input, so each can be fuzzed as it is.
//!
//! - [`crypto`]: `a=crypto` lines (SDES keys, lifetime, MKI, session params).
//! - [`model`]: one parsed SDP ([`SessionDescription`]) and the typed audio
//!   m-section ([`AudioSection`]).
//! - [`translate`]: browser offer → trunk offer, trunk answer → browser answer,
//!   and SIP offer → SIP answer for the demo echo trunk and inbound calls.
//! - [`incoming`]: trunk offer → browser offer, browser answer → SIP answer
//!   (calls from a trunk to browsers).
//! - [`reoffer`]: our re-offer to the browser when the trunk changes codec.

pub mod crypto;
pub mod incoming;
pub mod model;
pub mod private;
pub mod reoffer;
pub mod translate;

pub use crypto::{CryptoAttribute, InlineKey, Mki};
pub use incoming::{
    delayed_offer_template, parse_browser_answer, write_browser_offer, BrowserAnswer,
    BrowserOfferParams,
};
pub use model::{
    AudioSection, Direction, Fingerprint, Proto, RtcpAttr, RtpMap, SessionDescription, Setup,
};
pub use private::{
    parse_any_sip_offer, parse_private_browser_answer, parse_private_trunk_answer,
    write_private_browser_answer, write_private_browser_offer, write_private_sip_answer,
    write_private_trunk_offer, PrivateOfferDtls, PrivateTrunkAnswer,
};
pub use reoffer::{parse_browser_reanswer, write_browser_reoffer};
pub use translate::{
    answer_setup, parse_browser_offer, parse_sip_offer, parse_trunk_answer, write_browser_answer,
    write_sip_answer, write_sip_answer_keyed, write_sip_answer_versioned, write_sip_answer_with,
    write_trunk_offer, AcceptedCrypto, AnswerKeying, BrowserAnswerParams, BrowserOffer, Codec,
    CodecName, OtherSection, SipOffer, TrunkAnswer, TrunkDtls, TrunkOfferMedia, TrunkOfferParams,
};

use crate::types::SrtpSuite;

/// The largest SDP we parse. Real offers are 1-5 KiB; the limit keeps a hostile
/// peer from making us build a large model (the WebSocket layer caps messages
/// at 64 KiB, SIP over UDP at one datagram, SIP over TCP/TLS is unbounded).
pub const MAX_SDP_LEN: usize = 64 * 1024;

/// Why an SDP was refused. Every variant names what is wrong (line, attribute,
/// tag) but never carries key material: these end up in logs and in the
/// `error` message sent to the browser.
///
/// Upstream mapping: [`SdpError::sip_status`] for SIP (400 for an SDP that does
/// not parse, 488 Not Acceptable Here for everything else); the WebSocket
/// layer sends an `error` with the same code and the `Display` text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP is {len} bytes, more than the {max} we accept")]
    TooLarge { len: usize, max: usize },
    #[error("SDP does not parse: {0}")]
    Syntax(String),
    #[error("SDP has no m=audio section")]
    NoAudio,
    #[error("m=audio was rejected by the peer (port 0)")]
    MediaRejected,
    #[error("m=audio uses transport {0:?}, which the gateway does not support here")]
    UnsupportedProto(String),
    #[error("m=audio transport {answer:?} does not fit the offered {offered:?}")]
    ProtoMismatch { offered: String, answer: String },
    #[error("m=audio format {0:?} is not a payload type number")]
    BadFormat(String),
    #[error("no usable address in c= ({0:?})")]
    BadConnection(String),
    #[error("no c= line for the audio section")]
    MissingConnection,
    #[error("bad a={attribute} line: {reason}")]
    BadAttribute {
        attribute: &'static str,
        reason: String,
    },
    #[error("no a=fingerprint with sha-256")]
    MissingFingerprint,
    #[error("no a=ice-ufrag/a=ice-pwd")]
    MissingIceCredentials,
    #[error("the offer has no codec the gateway supports (opus, PCMU, PCMA, G722)")]
    NoSupportedCodec,
    #[error("the answer has no codec that was offered")]
    NoCommonCodec,
    /// A malformed `a=crypto` (syntax, tag, key method, lifetime, MKI).
    #[error("bad a=crypto (tag {tag:?}): {reason}")]
    BadCrypto { tag: Option<u32>, reason: String },
    /// The inline key does not decode or has the wrong length for its suite.
    #[error("bad a=crypto key (tag {tag}, {suite}): {reason}")]
    BadCryptoKey {
        tag: u32,
        suite: SrtpSuite,
        reason: String,
    },
    #[error("unknown SRTP suite {suite:?} in a=crypto tag {tag}")]
    UnknownCryptoSuite { tag: u32, suite: String },
    /// NULL cipher or NULL auth suites: the gateway never offers nor accepts them.
    #[error("SRTP suite {suite:?} in a=crypto tag {tag} is refused (no NULL cipher or auth)")]
    RefusedCryptoSuite { tag: u32, suite: String },
    #[error("a=crypto tag {tag}: session parameter {param:?} is not supported")]
    UnsupportedCryptoParam { tag: u32, param: String },
    #[error("the SDES offer has no a=crypto the gateway accepts")]
    NoAcceptableCrypto,
    #[error("the answer to an SDES offer has no a=crypto")]
    MissingCrypto,
    #[error("the answer's a=crypto tag {tag} with {suite} was not offered")]
    CryptoNotOffered { tag: u32, suite: String },
}

impl SdpError {
    /// The SIP status to answer an INVITE (or report an answer) with.
    pub fn sip_status(&self) -> u16 {
        match self {
            SdpError::TooLarge { .. } | SdpError::Syntax(_) => 400,
            _ => 488,
        }
    }
}

/// Parses with `sdp-types` behind the size limit, mapping its error (which
/// names the line) into ours.
fn parse_session(sdp: &str) -> Result<sdp_types::Session, SdpError> {
    if sdp.len() > MAX_SDP_LEN {
        return Err(SdpError::TooLarge {
            len: sdp.len(),
            max: MAX_SDP_LEN,
        });
    }
    check_line_shapes(sdp)?;
    sdp_types::Session::parse(sdp.as_bytes()).map_err(|e| SdpError::Syntax(e.to_string()))
}

/// Refuses any line that is not `<one char>=...` before `sdp-types` sees it.
///
/// sdp-types 0.1.8 panics on such a line when it sits inside a media section
/// and is followed by a non-`m=` line (`assertion left == right failed` in
/// `Media::parse`: its peeked error is dropped and the next line is taken for
/// an `m=`). Its line splitter is the only source of that error, so checking
/// the same shape here, with the same line numbering (1-based, `\n` or
/// `\r\n` ends, empty lines skipped), makes the panic unreachable. Found by
/// `translate::tests::mutated_inputs_never_panic`.
fn check_line_shapes(sdp: &str) -> Result<(), SdpError> {
    for (i, line) in sdp.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if line.bytes().position(|b| b == b'=') != Some(1) {
            return Err(SdpError::Syntax(format!(
                "line {} is not <type>=<value>",
                i + 1
            )));
        }
    }
    Ok(())
}

/// Writes a session; `sdp-types` writes into any `io::Write`, and writing into
/// a `Vec` cannot fail, nor can the result be anything but UTF-8 since every
/// field is a `String`.
fn write_session(session: &sdp_types::Session) -> String {
    let mut out = Vec::with_capacity(1024);
    if session.write(&mut out).is_err() {
        // Unreachable for a Vec; an empty SDP is refused by any peer rather
        // than crashing the gateway.
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: this made sdp-types 0.1.8 panic (see `check_line_shapes`).
    #[test]
    fn malformed_line_inside_media_is_an_error_not_a_panic() {
        for bad in ["xx", "ab=c", "=x", "a"] {
            let sdp = format!(
                "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\nm=audio 1 RTP/AVP 0\r\n{bad}\r\nc=IN IP4 192.0.2.1\r\n"
            );
            let e = parse_session(&sdp).unwrap_err();
            assert_eq!(e, SdpError::Syntax("line 6 is not <type>=<value>".into()));
        }
        // Empty lines and bare \n line ends stay fine.
        assert!(parse_session("v=0\n\no=- 1 1 IN IP4 192.0.2.1\ns=-\nt=0 0\n").is_ok());
    }
}
