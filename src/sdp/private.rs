//! SDP of private calls (`policy::Handling::Private`): the browser's DTLS
//! peer is the trunk, so each side gets the *other's* fingerprint and
//! `a=setup`, and the gateway stays in the media path only as a relay.
//!
//! - [`write_private_trunk_offer`]: `UDP/TLS/RTP/SAVP` toward the trunk with
//!   the browser's `a=fingerprint` and `a=setup` (actpass stays actpass), the
//!   browser's codecs with the browser's payload type numbers (the relay
//!   cannot renumber: SRTP authenticates the RTP header), rtcp-mux offered
//!   with a separate RTCP port for trunks that refuse it. No ICE, no
//!   `a=ssrc`, no `a=crypto`.
//! - [`parse_private_trunk_answer`]: the trunk's answer must be DTLS-SRTP
//!   with a fingerprint and an active or passive `a=setup`, and keep the
//!   offered payload type number of the codec it chose.
//! - [`write_private_browser_answer`]: our usual ICE-lite answer (our ICE
//!   credentials and candidate: the gateway still answers the browser's
//!   STUN), with the trunk's fingerprint and `a=setup` in place of ours and
//!   no `a=ssrc` of ours (the trunk's SSRCs reach the browser unchanged).
//!
//! Incoming (a trunk's `UDP/TLS/RTP/SAVP` offer, its `caller_stream`
//! `forced_relay`): [`parse_any_sip_offer`] → [`write_private_browser_offer`]
//! (the trunk's fingerprint and role) → [`parse_private_browser_answer`] →
//! [`write_private_sip_answer`] (the browser's fingerprint and role).

use std::net::IpAddr;

use super::incoming::{
    parse_browser_answer, write_browser_offer, BrowserAnswer, BrowserOfferParams,
};
use super::model::{Fingerprint, Proto, SessionDescription, Setup};
use super::translate::{
    attr, audio_media, codec_attributes, flag, parse_sip_offer, parse_trunk_answer, session,
    usable_codecs, write_browser_answer, write_sip_answer_with, BrowserAnswerParams, BrowserOffer,
    Codec, SipOffer, TrunkAnswer, TrunkOfferMedia, TrunkOfferParams, PTIME_MS,
};
use super::{write_session, SdpError};

/// The trunk's answer to a private offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivateTrunkAnswer {
    /// Address, codec and direction, as for any trunk answer (`crypto` is
    /// `None`: the keys are agreed end to end).
    pub answer: TrunkAnswer,
    /// The trunk's certificate fingerprint: the browser checks it.
    pub fingerprint: Fingerprint,
    /// The trunk's DTLS role, passed to the browser as is.
    pub setup: Setup,
}

/// Writes the INVITE's SDP of a private call. `p.media` is not used.
pub fn write_private_trunk_offer(offer: &BrowserOffer, p: &TrunkOfferParams) -> String {
    let codecs = usable_codecs(&offer.codecs);
    let mut attrs = codec_attributes(&codecs);
    attrs.push(attr("fingerprint", offer.fingerprint.to_string()));
    attrs.push(attr("setup", offer.setup.as_str().to_string()));
    attrs.push(flag("rtcp-mux"));
    if let Some(rtcp) = p.rtp_port.checked_add(1) {
        attrs.push(attr("rtcp", rtcp.to_string()));
    }
    attrs.push(flag(offer.direction.as_str()));
    attrs.push(attr("ptime", PTIME_MS.to_string()));
    let media = audio_media(p.rtp_port, Proto::UdpTlsRtpSavp, &codecs, p.local_ip, attrs);
    write_session(&session(
        p.local_ip,
        p.session_id,
        p.session_version,
        vec![],
        media,
    ))
}

/// Parses the trunk's answer (183 or 200) to [`write_private_trunk_offer`].
pub fn parse_private_trunk_answer(
    sdp: &str,
    offered: &TrunkOfferParams,
    offer: &BrowserOffer,
) -> Result<PrivateTrunkAnswer, SdpError> {
    let mut desc = SessionDescription::parse(sdp)?;
    let audio = desc.audio()?;
    if audio.port == 0 {
        return Err(SdpError::MediaRejected);
    }
    if !audio.proto.is_dtls() {
        return Err(SdpError::ProtoMismatch {
            offered: Proto::UdpTlsRtpSavp.as_str().to_string(),
            answer: audio.proto.as_str().to_string(),
        });
    }
    let fingerprint = audio
        .fingerprint("sha-256")
        .or(audio.fingerprints.first())
        .cloned()
        .ok_or(SdpError::MissingFingerprint)?;
    // RFC 4145: no a=setup means active.
    let setup = match audio.setup.unwrap_or(Setup::Active) {
        s @ (Setup::Active | Setup::Passive) => s,
        s => {
            return Err(SdpError::BadAttribute {
                attribute: "setup",
                reason: format!("{} in an answer (active or passive expected)", s.as_str()),
            })
        }
    };
    // Address, codec and telephone-event are read as for any answer: the
    // section is handed on as plain RTP, with nothing crypto left in it.
    if let Some(m) = desc.session_mut().medias.get_mut(audio.index) {
        m.proto = Proto::RtpAvp.as_str().to_string();
    }
    let plain = TrunkOfferParams {
        media: TrunkOfferMedia::Plain,
        ..offered.clone()
    };
    let mut answer = parse_trunk_answer(&desc.to_sdp_string(), &plain, offer)?;
    if answer.codec_trunk_pt != answer.codec.pt {
        return Err(SdpError::BadAttribute {
            attribute: "rtpmap",
            reason: format!(
                "a private call relays RTP unchanged, but the trunk answered {} as payload type {} (offered {})",
                answer.codec.name.as_str(),
                answer.codec_trunk_pt.0,
                answer.codec.pt.0
            ),
        });
    }
    // A telephone-event the two ends number differently cannot be relayed
    // unchanged: the browser does not get it.
    if answer
        .telephone_event
        .is_some_and(|(trunk, browser)| trunk != browser)
    {
        answer.telephone_event = None;
    }
    answer.proto = audio.proto;
    Ok(PrivateTrunkAnswer {
        answer,
        fingerprint,
        setup,
    })
}

/// Writes the browser's answer of a private call.
pub fn write_private_browser_answer(
    offer: &BrowserOffer,
    trunk: &PrivateTrunkAnswer,
    p: &BrowserAnswerParams,
) -> Result<String, SdpError> {
    let ours = BrowserAnswerParams {
        ssrc: None,
        ..p.clone()
    };
    let written = write_browser_answer(offer, &trunk.answer, &ours);
    let mut desc = SessionDescription::parse(&written)?;
    let index = desc.audio()?.index;
    let media = desc
        .session_mut()
        .medias
        .get_mut(index)
        .ok_or(SdpError::NoAudio)?;
    for a in media.attributes.iter_mut() {
        match a.attribute.as_str() {
            "fingerprint" => a.value = Some(trunk.fingerprint.to_string()),
            "setup" => a.value = Some(trunk.setup.as_str().to_string()),
            _ => {}
        }
    }
    Ok(desc.to_sdp_string())
}

/// The DTLS side of a trunk's `UDP/TLS/RTP/SAVP` offer (an incoming private
/// call): what the browsers get in place of the gateway's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivateOfferDtls {
    pub fingerprint: Fingerprint,
    pub setup: Setup,
}

/// Parses a trunk's offer: as [`parse_sip_offer`] for RTP/AVP and RTP/SAVP;
/// a `UDP/TLS/RTP/SAVP` offer is read the same way (address, codecs,
/// rtcp-mux) with its fingerprint and `a=setup` besides, and keeps its
/// proto. Whether the call may take it is the policy's to say.
pub fn parse_any_sip_offer(sdp: &str) -> Result<(SipOffer, Option<PrivateOfferDtls>), SdpError> {
    let desc = SessionDescription::parse(sdp)?;
    let audio = desc.audio()?;
    if !audio.proto.is_dtls() {
        return Ok((parse_sip_offer(sdp)?, None));
    }
    let fingerprint = audio
        .fingerprint("sha-256")
        .or(audio.fingerprints.first())
        .cloned()
        .ok_or(SdpError::MissingFingerprint)?;
    // RFC 4145: no a=setup means active; holdconn offers no connection.
    let setup = match audio.setup.unwrap_or(Setup::Active) {
        Setup::Holdconn => {
            return Err(SdpError::BadAttribute {
                attribute: "setup",
                reason: "holdconn: no DTLS connection offered".into(),
            })
        }
        s => s,
    };
    // `parse_sip_offer` reads DTLS offers too (the gateway's own DTLS with
    // a trunk); a private call needs the trunk's own `a=setup` besides.
    let offer = parse_sip_offer(sdp)?;
    Ok((offer, Some(PrivateOfferDtls { fingerprint, setup })))
}

/// The browsers' offer of an incoming private call: the usual one (our ICE
/// credentials and candidate) with the trunk's fingerprint and role (see
/// below for actpass),
/// and no `a=ssrc` of ours (the trunk's SSRC reaches the browser as is).
pub fn write_private_browser_offer(
    offer: &SipOffer,
    trunk: &PrivateOfferDtls,
    p: &BrowserOfferParams,
) -> Result<String, SdpError> {
    let written = write_browser_offer(offer, p);
    // A trunk's actpass is decided here rather than left to the browser:
    // the trunk opens DTLS (`active` in the offer the browser sees, which
    // answers passive and is the DTLS server), the role every browser and
    // the outgoing direction already take with SIP phones. Left to itself a
    // browser answers active, and as a client it may offer only the cipher
    // suites of its own key type (aiortc: ECDSA only; baresip's RSA
    // certificate then finds "no shared cipher").
    let setup = match trunk.setup {
        Setup::Actpass => Setup::Active,
        s => s,
    };
    replace_dtls_attributes(&written, &trunk.fingerprint, setup, true)
}

/// A browser's answer to [`write_private_browser_offer`]: as
/// [`parse_browser_answer`], with the browser's DTLS role (active, or
/// passive when the trunk offered active), which goes to the trunk as is.
pub fn parse_private_browser_answer(
    sdp: &str,
    offer: &SipOffer,
) -> Result<(BrowserAnswer, Setup), SdpError> {
    let desc = SessionDescription::parse(sdp)?;
    let setup = match desc.audio()?.setup.unwrap_or(Setup::Active) {
        s @ (Setup::Active | Setup::Passive) => s,
        s => {
            return Err(SdpError::BadAttribute {
                attribute: "setup",
                reason: format!("{} in an answer (active or passive expected)", s.as_str()),
            })
        }
    };
    // parse_browser_answer insists on active (the gateway's own DTLS is a
    // server); here the role is the trunk's business, so it reads the rest
    // of the answer as if active.
    let rest = if setup == Setup::Passive {
        replace_dtls_attributes(sdp, &parse_fingerprint_of(sdp)?, Setup::Active, false)?
    } else {
        sdp.to_string()
    };
    Ok((parse_browser_answer(&rest, offer)?, setup))
}

/// The 200 OK's SDP of an incoming private call: the usual answer in the
/// trunk's `UDP/TLS/RTP/SAVP`, with the browser's fingerprint and role.
pub fn write_private_sip_answer(
    offer: &SipOffer,
    codecs: &[Codec],
    local_ip: IpAddr,
    port: u16,
    session_id: u64,
    browser: (&Fingerprint, Setup),
) -> Result<String, SdpError> {
    let written = write_sip_answer_with(offer, codecs, local_ip, port, None, session_id);
    let mut desc = SessionDescription::parse(&written)?;
    let index = desc.audio()?.index;
    let media = desc
        .session_mut()
        .medias
        .get_mut(index)
        .ok_or(SdpError::NoAudio)?;
    media
        .attributes
        .push(attr("fingerprint", browser.0.to_string()));
    media
        .attributes
        .push(attr("setup", browser.1.as_str().to_string()));
    Ok(desc.to_sdp_string())
}

fn parse_fingerprint_of(sdp: &str) -> Result<Fingerprint, SdpError> {
    SessionDescription::parse(sdp)?
        .audio()?
        .fingerprint("sha-256")
        .cloned()
        .ok_or(SdpError::MissingFingerprint)
}

/// Sets the audio section's `a=fingerprint` and `a=setup` (session-level
/// ones are dropped) and, with `drop_ssrc`, removes its `a=ssrc` lines.
fn replace_dtls_attributes(
    sdp: &str,
    fingerprint: &Fingerprint,
    setup: Setup,
    drop_ssrc: bool,
) -> Result<String, SdpError> {
    let mut desc = SessionDescription::parse(sdp)?;
    let index = desc.audio()?.index;
    let session = desc.session_mut();
    session
        .attributes
        .retain(|a| a.attribute != "fingerprint" && a.attribute != "setup");
    let media = session.medias.get_mut(index).ok_or(SdpError::NoAudio)?;
    media.attributes.retain(|a| {
        a.attribute != "fingerprint"
            && a.attribute != "setup"
            && !(drop_ssrc && a.attribute == "ssrc")
    });
    media
        .attributes
        .push(attr("fingerprint", fingerprint.to_string()));
    media
        .attributes
        .push(attr("setup", setup.as_str().to_string()));
    Ok(desc.to_sdp_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdp::parse_browser_offer;
    use crate::types::PayloadType;
    use std::net::IpAddr;

    const BROWSER_FP: &str = "sha-256 11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00";
    const TRUNK_FP: &str = "sha-256 A1:B2:C3:D4:E5:F6:A7:B8:C9:D0:E1:F2:A3:B4:C5:D6:E7:F8:A9:B0:C1:D2:E3:F4:A5:B6:C7:D8:E9:F0:A1:B2";

    fn browser_offer() -> BrowserOffer {
        let sdp = format!(
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
             m=audio 9 UDP/TLS/RTP/SAVPF 111 0 126\r\nc=IN IP4 0.0.0.0\r\n\
             a=mid:0\r\na=ice-ufrag:brws\r\na=ice-pwd:browserpasswordbrowserpass\r\n\
             a=fingerprint:{BROWSER_FP}\r\na=setup:actpass\r\na=rtcp-mux\r\na=sendrecv\r\n\
             a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n\
             a=rtpmap:0 PCMU/8000\r\na=rtpmap:126 telephone-event/8000\r\n\
             a=ssrc:4242 cname:x\r\n"
        );
        parse_browser_offer(&sdp).unwrap()
    }

    fn params() -> TrunkOfferParams {
        TrunkOfferParams {
            local_ip: "10.99.0.1".parse::<IpAddr>().unwrap(),
            rtp_port: 20002,
            media: TrunkOfferMedia::Plain,
            session_id: 77,
            session_version: 1,
        }
    }

    fn trunk_answer(proto: &str, setup: &str, pcmu_pt: u8) -> String {
        format!(
            "v=0\r\no=baresip 1 2 IN IP4 10.99.0.1\r\ns=-\r\nc=IN IP4 10.99.0.1\r\nt=0 0\r\n\
             m=audio 30000 {proto} {pcmu_pt} 101\r\na=rtpmap:{pcmu_pt} PCMU/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\na=fingerprint:{TRUNK_FP}\r\n{setup}\
             a=sendrecv\r\na=ssrc:999 cname:t\r\n"
        )
    }

    #[test]
    fn trunk_offer_carries_the_browsers_fingerprint_setup_and_payload_numbers() {
        let sdp = write_private_trunk_offer(&browser_offer(), &params());
        assert!(
            sdp.contains("m=audio 20002 UDP/TLS/RTP/SAVP 111 0 126\r\n"),
            "{sdp}"
        );
        assert!(
            sdp.contains(&format!("a=fingerprint:{BROWSER_FP}\r\n")),
            "{sdp}"
        );
        assert!(sdp.contains("a=setup:actpass\r\n"), "{sdp}");
        assert!(sdp.contains("a=rtcp-mux\r\na=rtcp:20003\r\n"), "{sdp}");
        for absent in [
            "a=crypto",
            "a=ice-",
            "a=ssrc",
            "a=candidate",
            "a=rtpmap:101",
        ] {
            assert!(!sdp.contains(absent), "{absent} in {sdp}");
        }
    }

    #[test]
    fn browser_answer_carries_the_trunks_fingerprint_and_setup() {
        let offer = browser_offer();
        let trunk = parse_private_trunk_answer(
            &trunk_answer("UDP/TLS/RTP/SAVP", "a=setup:active\r\n", 0),
            &params(),
            &offer,
        )
        .unwrap();
        assert_eq!(trunk.setup, Setup::Active);
        assert_eq!(trunk.fingerprint.to_string(), TRUNK_FP);
        assert!(trunk.answer.crypto.is_none());
        assert_eq!(trunk.answer.codec.pt, PayloadType(0));
        assert_eq!(trunk.answer.remote_rtp.to_string(), "10.99.0.1:30000");
        let p = BrowserAnswerParams {
            local_ip: "10.99.0.1".parse().unwrap(),
            port: 20000,
            ice_ufrag: "gwuf".into(),
            ice_pwd: "gatewaypassword0123456".into(),
            fingerprint_sha256: ["EE"; 32].join(":"),
            session_id: 77,
            session_version: 1,
            ssrc: Some(crate::types::Ssrc(5)),
        };
        let sdp = write_private_browser_answer(&offer, &trunk, &p).unwrap();
        assert!(
            sdp.contains(&format!("a=fingerprint:{TRUNK_FP}\r\n")),
            "{sdp}"
        );
        assert!(sdp.contains("a=setup:active\r\n"), "{sdp}");
        assert!(sdp.contains("a=ice-ufrag:gwuf\r\n"), "{sdp}");
        assert!(sdp.contains("a=ice-lite"), "{sdp}");
        assert!(!sdp.contains("EE:EE:EE"), "{sdp}");
        assert!(!sdp.contains("a=ssrc"), "{sdp}");
        assert!(sdp.contains("UDP/TLS/RTP/SAVPF 0"), "{sdp}");
    }

    #[test]
    fn a_trunk_answer_that_does_not_fit_a_private_call_is_refused() {
        let offer = browser_offer();
        let err = |sdp: String| parse_private_trunk_answer(&sdp, &params(), &offer).unwrap_err();
        assert!(matches!(
            err(trunk_answer("RTP/SAVP", "", 0)),
            SdpError::ProtoMismatch { .. }
        ));
        assert!(matches!(
            err(trunk_answer("UDP/TLS/RTP/SAVP", "a=setup:actpass\r\n", 0)),
            SdpError::BadAttribute {
                attribute: "setup",
                ..
            }
        ));
        let no_fp = trunk_answer("UDP/TLS/RTP/SAVP", "", 0)
            .replace(&format!("a=fingerprint:{TRUNK_FP}\r\n"), "");
        assert_eq!(err(no_fp), SdpError::MissingFingerprint);
        // Opus answered under another number: the relay cannot renumber.
        let renumbered = format!(
            "v=0\r\no=- 1 2 IN IP4 10.99.0.1\r\ns=-\r\nc=IN IP4 10.99.0.1\r\nt=0 0\r\n\
             m=audio 30000 UDP/TLS/RTP/SAVP 96\r\na=rtpmap:96 opus/48000/2\r\n\
             a=fingerprint:{TRUNK_FP}\r\na=setup:passive\r\n"
        );
        let e = err(renumbered);
        assert!(
            matches!(
                e,
                SdpError::BadAttribute {
                    attribute: "rtpmap",
                    ..
                }
            ),
            "{e:?}"
        );
        // No a=setup: RFC 4145 active.
        let ok =
            parse_private_trunk_answer(&trunk_answer("UDP/TLS/RTP/SAVP", "", 0), &params(), &offer)
                .unwrap();
        assert_eq!(ok.setup, Setup::Active);
    }

    const BARESIP_OFFER: &str = "v=0\r\no=- 1 2 IN IP4 10.99.0.1\r\ns=-\r\nc=IN IP4 10.99.0.1\r\nt=0 0\r\n\
        a=setup:actpass\r\na=fingerprint:SHA-256 A1:B2:C3:D4:E5:F6:A7:B8:C9:D0:E1:F2:A3:B4:C5:D6:E7:F8:A9:B0:C1:D2:E3:F4:A5:B6:C7:D8:E9:F0:A1:B2\r\n\
        m=audio 30750 UDP/TLS/RTP/SAVPF 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\na=ssrc:77 cname:b\r\n";

    fn offer_params() -> BrowserOfferParams {
        BrowserOfferParams {
            local_ip: "10.99.0.1".parse().unwrap(),
            port: 20000,
            ice_ufrag: "gwuf".into(),
            ice_pwd: "gatewaypassword0123456".into(),
            fingerprint_sha256: ["EE"; 32].join(":"),
            session_id: 9,
            session_version: 1,
            ssrc: crate::types::Ssrc(5),
        }
    }

    #[test]
    fn incoming_private_offer_and_answer_swap_the_ends_fingerprints() {
        let (offer, dtls) = parse_any_sip_offer(BARESIP_OFFER).unwrap();
        let dtls = dtls.expect("a DTLS offer");
        assert_eq!(offer.proto, Proto::UdpTlsRtpSavpf);
        assert_eq!(dtls.fingerprint.to_string(), TRUNK_FP);
        assert_eq!(dtls.setup, Setup::Actpass);
        assert_eq!(offer.port, 30750);
        // Plain and SDES offers parse as before, without DTLS.
        let plain = BARESIP_OFFER.replace("UDP/TLS/RTP/SAVPF", "RTP/AVP");
        assert_eq!(parse_any_sip_offer(&plain).unwrap().1, None);

        // The browsers see the trunk's fingerprint; actpass becomes active
        // (the trunk opens DTLS); no a=ssrc of ours.
        let to_browser = write_private_browser_offer(&offer, &dtls, &offer_params()).unwrap();
        assert!(
            to_browser.contains(&format!("a=fingerprint:{TRUNK_FP}\r\n")),
            "{to_browser}"
        );
        assert!(to_browser.contains("a=setup:active\r\n"), "{to_browser}");
        assert!(!to_browser.contains("EE:EE:EE"), "{to_browser}");
        assert!(!to_browser.contains("a=ssrc"), "{to_browser}");
        assert!(to_browser.contains("a=ice-ufrag:gwuf"), "{to_browser}");

        // The browser answers passive with its own fingerprint; the trunk
        // gets both, in its own proto.
        let browser_answer = format!(
            "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
             m=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:brws\r\n\
             a=ice-pwd:browserpasswordbrowserpass\r\na=fingerprint:{BROWSER_FP}\r\n\
             a=setup:passive\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
        );
        let (answer, setup) = parse_private_browser_answer(&browser_answer, &offer).unwrap();
        assert_eq!(setup, Setup::Passive);
        assert_eq!(answer.fingerprint.to_string(), BROWSER_FP);
        let to_trunk = write_private_sip_answer(
            &offer,
            std::slice::from_ref(&answer.codec),
            "10.99.0.1".parse().unwrap(),
            20002,
            3,
            (&answer.fingerprint, setup),
        )
        .unwrap();
        assert!(
            to_trunk.contains("m=audio 20002 UDP/TLS/RTP/SAVPF 0"),
            "{to_trunk}"
        );
        assert!(
            to_trunk.contains(&format!("a=fingerprint:{BROWSER_FP}\r\n")),
            "{to_trunk}"
        );
        assert!(to_trunk.contains("a=setup:passive\r\n"), "{to_trunk}");
        assert!(!to_trunk.contains("a=crypto"), "{to_trunk}");
        // holdconn offers no connection.
        let hold = BARESIP_OFFER.replace("a=setup:actpass", "a=setup:holdconn");
        assert!(parse_any_sip_offer(&hold).is_err());
    }
}
