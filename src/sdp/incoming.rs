//! SDP for calls from a trunk to browsers (the other direction of
//! [`translate`](super::translate)):
//!
//! trunk INVITE → [`parse_sip_offer`](super::parse_sip_offer) →
//! [`write_browser_offer`] (`incoming`) → [`parse_browser_answer`] (`accept`)
//! → [`write_sip_answer_with`](super::write_sip_answer_with) (200 OK).
//!
//! No transcoding here either: the browser is offered only the trunk's codecs
//! that browsers take, in the trunk's order and with the trunk's payload type
//! numbers, so the payload types map one to one; the trunk is answered with
//! the codec the browser chose.

use std::net::IpAddr;

use super::crypto::CryptoAttribute;
use super::model::{Direction, Fingerprint, Proto, SessionDescription, Setup};
use super::translate::{
    attr, audio_media, codec_attributes, flag, session, supported_codecs, Codec, SipOffer, CNAME,
};
use super::SdpError;
use crate::types::{Secret, SrtpKeyMaterial, SrtpSuite, Ssrc};

/// The `a=mid` of our one audio section (BUNDLE of one).
const MID: &str = "0";

/// What goes into the offer besides the trunk's codecs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserOfferParams {
    pub local_ip: IpAddr,
    /// The browser leg's port (ICE host candidate, RTP and RTCP muxed).
    pub port: u16,
    pub ice_ufrag: String,
    pub ice_pwd: String,
    /// Our DTLS certificate's SHA-256 fingerprint, `AB:CD:...`.
    pub fingerprint_sha256: String,
    pub session_id: u64,
    pub session_version: u64,
    /// The SSRC the relay sends to the browser with (`a=ssrc`).
    pub ssrc: Ssrc,
}

/// The gateway's offer to the browsers of an inbound call: ICE-lite with our
/// one host candidate, `a=setup:actpass` (every browser then answers active
/// and starts DTLS, our server role), our fingerprint, rtcp-mux, and the
/// trunk's browser-compatible codecs. The direction mirrors the trunk's
/// offer: what the trunk sends, we send to the browser.
pub fn write_browser_offer(offer: &SipOffer, p: &BrowserOfferParams) -> String {
    // `parse_sip_offer` kept only what browsers take (opus, PCMU, PCMA,
    // G722, telephone-event at one of their clocks), in the trunk's order.
    let codecs = &offer.codecs;
    let session_attrs = vec![
        flag("ice-lite"),
        attr("group", format!("BUNDLE {MID}")),
        attr("msid-semantic", format!(" WMS {CNAME}")),
    ];
    let mut attrs = vec![
        attr("mid", MID.to_string()),
        attr(
            "candidate",
            format!("1 1 udp 2130706431 {} {} typ host", p.local_ip, p.port),
        ),
        flag("end-of-candidates"),
        attr("ice-ufrag", p.ice_ufrag.clone()),
        attr("ice-pwd", p.ice_pwd.clone()),
        attr("fingerprint", format!("sha-256 {}", p.fingerprint_sha256)),
        attr("setup", Setup::Actpass.as_str().to_string()),
        flag(offer.direction.as_str()),
        flag("rtcp-mux"),
        flag("rtcp-rsize"),
    ];
    attrs.extend(codec_attributes(codecs));
    if let Some(ptime) = offer.ptime {
        attrs.push(attr("ptime", ptime.to_string()));
    }
    attrs.push(attr("msid", format!("{CNAME} audio")));
    attrs.push(attr("ssrc", format!("{} cname:{CNAME}", p.ssrc.0)));
    let media = audio_media(p.port, Proto::UdpTlsRtpSavpf, codecs, p.local_ip, attrs);
    super::write_session(&session(
        p.local_ip,
        p.session_id,
        p.session_version,
        session_attrs,
        media,
    ))
}

/// A browser's answer to [`write_browser_offer`], reduced to what the
/// gateway uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserAnswer {
    pub ice_ufrag: String,
    pub ice_pwd: Secret<String>,
    /// The sha-256 fingerprint the browser's DTLS certificate must match.
    pub fingerprint: Fingerprint,
    pub ssrcs: Vec<Ssrc>,
    /// The audio codec the browser chose: the trunk offer's entry (its PT).
    pub codec: Codec,
    /// The trunk's telephone-event at the chosen codec's clock, when the
    /// browser accepted it.
    pub telephone_event: Option<Codec>,
    pub direction: Direction,
    /// Malformed lines that were skipped, for the caller to log.
    pub skipped: Vec<SdpError>,
}

/// Parses the `sdp` of a browser's `accept` against the trunk offer its
/// offer came from. The browser must take the DTLS client role
/// (`a=setup:active`, what every browser answers to actpass): the gateway's
/// DTLS endpoint is a server.
pub fn parse_browser_answer(sdp: &str, offer: &SipOffer) -> Result<BrowserAnswer, SdpError> {
    let desc = SessionDescription::parse(sdp)?;
    let audio = desc.audio()?;
    if audio.port == 0 {
        return Err(SdpError::MediaRejected);
    }
    if !audio.proto.is_dtls() {
        return Err(SdpError::ProtoMismatch {
            offered: Proto::UdpTlsRtpSavpf.as_str().into(),
            answer: audio.proto.as_str().into(),
        });
    }
    let (Some(ice_ufrag), Some(ice_pwd)) = (audio.ice_ufrag.clone(), audio.ice_pwd.clone()) else {
        return Err(SdpError::MissingIceCredentials);
    };
    let fingerprint = audio
        .fingerprint("sha-256")
        .filter(|f| f.value.len() == 32)
        .cloned()
        .ok_or(SdpError::MissingFingerprint)?;
    // RFC 4145: a missing a=setup in an answer means active.
    match audio.setup.unwrap_or(Setup::Active) {
        Setup::Active => {}
        other => {
            return Err(SdpError::BadAttribute {
                attribute: "setup",
                reason: format!(
                    "{} in an answer to actpass; the gateway needs the browser to be active",
                    other.as_str()
                ),
            })
        }
    }
    // The browser's choice, in its order, matched to the trunk's entries by
    // codec (not by number: an answerer should reuse our numbers, but the
    // mapping must not depend on it).
    let answered = supported_codecs(&audio);
    let codec = answered
        .iter()
        .filter(|c| !c.is_telephone_event())
        .find_map(|a| offer.codecs.iter().find(|o| o.same_as(a)))
        .cloned()
        .ok_or(SdpError::NoCommonCodec)?;
    let telephone_event = answered
        .iter()
        .filter(|c| c.is_telephone_event() && c.clock_rate == codec.clock_rate)
        .find_map(|a| offer.codecs.iter().find(|o| o.same_as(a)))
        .cloned();
    Ok(BrowserAnswer {
        ice_ufrag,
        ice_pwd: Secret::new(ice_pwd),
        fingerprint,
        ssrcs: audio.ssrcs.clone(),
        codec,
        telephone_event,
        direction: audio.direction,
        skipped: audio.skipped.clone(),
    })
}

/// What the gateway offers a trunk whose INVITE carried no offer (a
/// "delayed offer", RFC 3261 13.2.1: Cisco CUBE and CUCM send them by
/// default), written as if the trunk had offered it so that the browsers
/// ring and answer the usual way: G.711 (PCMU, PCMA, what every trunk
/// takes) with telephone-event/8000, `RTP/SAVP` with one `a=crypto` of
/// `suite` (a placeholder key, never used: the trunk's real key comes in the
/// answer in its ACK) or `RTP/AVP` without. The address is `0.0.0.0`: no
/// media goes to the trunk before its answer names where.
pub fn delayed_offer_template(suite: Option<SrtpSuite>) -> String {
    // (`to_sdp_value` starts with the tag)
    let (proto, crypto) = match suite {
        Some(suite) => (
            "RTP/SAVP",
            format!(
                "a=crypto:{}\r\n",
                CryptoAttribute::new(1, SrtpKeyMaterial::generate(suite)).to_sdp_value()
            ),
        ),
        None => ("RTP/AVP", String::new()),
    };
    format!(
        "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n\
         m=audio 9 {proto} 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n{crypto}a=sendrecv\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdp::{parse_browser_offer, parse_sip_offer, CodecName};
    use crate::types::PayloadType;

    /// An SDES offer as baresip sends it (PCMU, PCMA, telephone-event), plus
    /// a codec no browser takes (G729) that must not reach the browser.
    const TRUNK_OFFER: &str =
        "v=0\r\no=- 123 456 IN IP4 10.99.0.1\r\ns=-\r\nc=IN IP4 10.99.0.1\r\nt=0 0\r\n\
m=audio 30000 RTP/SAVP 18 0 8 101\r\na=rtpmap:18 G729/8000\r\na=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n\
a=sendrecv\r\na=ptime:20\r\n";

    fn params() -> BrowserOfferParams {
        BrowserOfferParams {
            local_ip: "10.99.0.1".parse().unwrap(),
            port: 20002,
            ice_ufrag: "gwUf".into(),
            ice_pwd: "gatewayicepassword0123".into(),
            fingerprint_sha256: ["AB"; 32].join(":"),
            session_id: 9,
            session_version: 1,
            ssrc: Ssrc(1234),
        }
    }

    fn browser_answer(setup: &str, codecs: &str, extra: &str) -> String {
        let fp = ["CD"; 32].join(":");
        format!(
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF {codecs}\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
a=ice-ufrag:brUf\r\na=ice-pwd:browsericepassword0123456\r\na=fingerprint:sha-256 {fp}\r\n\
a=setup:{setup}\r\na=sendrecv\r\na=rtcp-mux\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n{extra}a=ssrc:777 cname:x\r\n"
        )
    }

    #[test]
    fn offer_is_webrtc_shaped_with_the_trunks_browser_codecs_in_order() {
        let trunk = parse_sip_offer(TRUNK_OFFER).unwrap();
        let sdp = write_browser_offer(&trunk, &params());
        // Parses as a browser offer would (ICE, fingerprint, DTLS proto)...
        let offer = parse_browser_offer(&sdp).unwrap();
        assert_eq!(offer.setup, Setup::Actpass);
        assert!(offer.rtcp_mux);
        assert_eq!(offer.ice_ufrag, "gwUf");
        let names: Vec<_> = offer.codecs.iter().map(|c| (c.name, c.pt.0)).collect();
        assert_eq!(
            names,
            [
                (CodecName::Pcmu, 0),
                (CodecName::Pcma, 8),
                (CodecName::TelephoneEvent, 101)
            ]
        );
        for line in [
            "a=ice-lite",
            "a=candidate:1 1 udp 2130706431 10.99.0.1 20002 typ host",
            "a=mid:0",
            "a=ssrc:1234 cname:webrtc-sip-gateway",
            "m=audio 20002 UDP/TLS/RTP/SAVPF 0 8 101",
        ] {
            assert!(sdp.contains(line), "{line} missing in\n{sdp}");
        }
        // ...and never carries the trunk's SDES key or its G729.
        assert!(!sdp.contains("crypto"), "{sdp}");
        assert!(!sdp.contains("G729"), "{sdp}");
    }

    #[test]
    fn answer_picks_the_browsers_codec_and_telephone_event() {
        let trunk = parse_sip_offer(TRUNK_OFFER).unwrap();
        let answer = parse_browser_answer(&browser_answer("active", "8 101", ""), &trunk).unwrap();
        assert_eq!(answer.codec.name, CodecName::Pcma);
        assert_eq!(answer.codec.pt, PayloadType(8));
        assert_eq!(answer.telephone_event.map(|t| t.pt), Some(PayloadType(101)));
        assert_eq!(answer.ice_ufrag, "brUf");
        assert_eq!(answer.ssrcs, [Ssrc(777)]);
    }

    #[test]
    fn answer_refusals_name_the_problem() {
        let trunk = parse_sip_offer(TRUNK_OFFER).unwrap();
        let passive = parse_browser_answer(&browser_answer("passive", "0", ""), &trunk);
        assert!(matches!(
            passive,
            Err(SdpError::BadAttribute {
                attribute: "setup",
                ..
            })
        ));
        // A codec we never offered.
        let opus_only = browser_answer("active", "111", "a=rtpmap:111 opus/48000/2\r\n");
        assert_eq!(
            parse_browser_answer(&opus_only, &trunk),
            Err(SdpError::NoCommonCodec)
        );
        let no_fp = browser_answer("active", "0", "").replace("a=fingerprint", "a=x-fp");
        assert_eq!(
            parse_browser_answer(&no_fp, &trunk),
            Err(SdpError::MissingFingerprint)
        );
        let plain = browser_answer("active", "0", "").replace("UDP/TLS/RTP/SAVPF", "RTP/AVP");
        assert!(matches!(
            parse_browser_answer(&plain, &trunk),
            Err(SdpError::ProtoMismatch { .. })
        ));
        assert!(parse_browser_answer("garbage", &trunk).is_err());
    }
}
