//! The gateway's re-offer to the browser when the trunk changes the codec
//! mid-call (`calls::renegotiate`): our last SDP to the browser (the answer
//! of an outgoing call, the offer of an incoming one) with only the audio
//! codecs replaced and the `o=` version raised. Everything else stays as
//! the browser knows it: ICE ufrag/pwd and candidate, DTLS fingerprint and
//! setup role, mid, BUNDLE group, rejected sections. So the browser
//! restarts neither ICE nor DTLS (RFC 8829 5.2.2 / RFC 8842 5.5: the same
//! fingerprint and role keep the association), and only the codec changes.

use super::translate::{codec_attributes, parse_browser_offer, Codec};
use super::{parse_session, write_session, SdpError};

/// Attributes that describe the audio codecs: replaced, not kept.
const CODEC_ATTRIBUTES: [&str; 4] = ["rtpmap", "fmtp", "rtcp-fb", "maxptime"];

/// `previous` with the live m=audio offering `codecs` (the first is the one
/// wanted) and the session version one higher.
pub fn write_browser_reoffer(previous: &str, codecs: &[Codec]) -> Result<String, SdpError> {
    let mut session = parse_session(previous)?;
    session.origin.sess_version += 1;
    let audio = session
        .medias
        .iter_mut()
        .find(|m| m.media == "audio" && m.port != 0)
        .ok_or(SdpError::NoAudio)?;
    audio.fmt = codecs
        .iter()
        .map(|c| c.pt.0.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let at = audio
        .attributes
        .iter()
        .position(|a| CODEC_ATTRIBUTES.contains(&a.attribute.as_str()))
        .unwrap_or(audio.attributes.len());
    audio
        .attributes
        .retain(|a| !CODEC_ATTRIBUTES.contains(&a.attribute.as_str()));
    let at = at.min(audio.attributes.len());
    audio.attributes.splice(at..at, codec_attributes(codecs));
    Ok(write_session(&session))
}

/// The audio codecs of the browser's answer to our re-offer, with the PTs
/// it uses (the same parser as its offers: an answer has the same fields).
pub fn parse_browser_reanswer(sdp: &str) -> Result<Vec<Codec>, SdpError> {
    Ok(parse_browser_offer(sdp)?.codecs)
}
