//! STUN on the browser leg: the parser and the ICE-lite responder.
#![no_main]
use libfuzzer_sys::fuzz_target;
use webrtc_sip_gateway::media::ice_lite::IceLite;
use webrtc_sip_gateway::media::stun::StunMessage;
use webrtc_sip_gateway::types::Secret;

fuzz_target!(|data: &[u8]| {
    let _ = StunMessage::parse(data);
    let mut ice = IceLite::new(
        "abcd1234".into(),
        Secret::new("0123456789abcdefghijklmn".into()),
        Some("wxyz".into()),
    );
    let mut out = Vec::new();
    let from = "192.0.2.1:5000".parse().expect("literal address");
    let _ = ice.handle_stun(data, from, &mut out);
    // An answer is never larger than an amplification guard allows.
    assert!(out.len() <= data.len().max(128));
});
