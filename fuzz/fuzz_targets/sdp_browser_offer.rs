//! A browser's `call` SDP, and the translation of a parsed one.
#![no_main]
use libfuzzer_sys::fuzz_target;
use webrtc_sip_gateway::sdp::{self, TrunkOfferMedia, TrunkOfferParams};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(offer) = sdp::parse_browser_offer(text) {
        let params = TrunkOfferParams {
            local_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            rtp_port: 20000,
            media: TrunkOfferMedia::Plain,
            session_id: 1,
            session_version: 1,
        };
        let trunk_offer = sdp::write_trunk_offer(&offer, &params);
        // What we write must parse again as a SIP offer.
        assert!(sdp::parse_sip_offer(&trunk_offer).is_ok(), "{trunk_offer}");
    }
});
