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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdp::CodecName;
    use crate::types::PayloadType;

    const OUR_ANSWER: &str = "v=0\r\no=- 42 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\na=ice-lite\r\n\
a=group:BUNDLE 0\r\nm=audio 40000 UDP/TLS/RTP/SAVPF 0 101\r\nc=IN IP4 192.0.2.1\r\na=mid:0\r\n\
a=ice-ufrag:gwUf\r\na=ice-pwd:gatewaypassword0123456789\r\na=fingerprint:sha-256 AB:CD\r\n\
a=setup:passive\r\na=sendrecv\r\na=rtcp-mux\r\na=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\n\
a=msid:gw audio\r\nm=video 0 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 192.0.2.1\r\na=mid:1\r\n";

    fn codec(pt: u8, name: CodecName, fmtp: Option<&str>) -> Codec {
        Codec {
            pt: PayloadType(pt),
            name,
            clock_rate: 8000,
            channels: 1,
            fmtp: fmtp.map(String::from),
        }
    }

    #[test]
    fn the_reoffer_changes_only_the_codecs_and_the_version() {
        let codecs = [
            codec(8, CodecName::Pcma, None),
            codec(101, CodecName::TelephoneEvent, Some("0-16")),
        ];
        let sdp = write_browser_reoffer(OUR_ANSWER, &codecs).unwrap();
        assert!(sdp.contains("o=- 42 2 IN IP4 192.0.2.1"), "{sdp}");
        assert!(sdp.contains("m=audio 40000 UDP/TLS/RTP/SAVPF 8 101\r\n"));
        assert!(sdp.contains("a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20"));
        assert!(!sdp.contains("PCMU") && !sdp.contains("0-15"));
        for kept in [
            "a=ice-lite",
            "a=group:BUNDLE 0",
            "a=mid:0",
            "a=ice-ufrag:gwUf",
            "a=ice-pwd:gatewaypassword0123456789",
            "a=fingerprint:sha-256 AB:CD",
            "a=setup:passive",
            "a=rtcp-mux",
            "a=msid:gw audio",
            "m=video 0 UDP/TLS/RTP/SAVPF 96",
        ] {
            assert!(sdp.contains(kept), "{kept} kept: {sdp}");
        }
    }

    #[test]
    fn a_previous_sdp_without_live_audio_is_an_error() {
        let rejected = OUR_ANSWER.replace("m=audio 40000", "m=audio 0");
        assert_eq!(
            write_browser_reoffer(&rejected, &[codec(8, CodecName::Pcma, None)]),
            Err(SdpError::NoAudio)
        );
        assert!(matches!(
            write_browser_reoffer("v=0\r\ngarbage", &[]),
            Err(SdpError::Syntax(_))
        ));
    }
}
