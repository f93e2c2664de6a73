//! An inbound call's SDP path: a trunk's offer, our offer to the browsers
//! written from it (which must parse as a browser offer again), and a
//! browser's answer parsed against it. Input: trunk offer and browser answer
//! separated by a NUL byte.
#![no_main]
use libfuzzer_sys::fuzz_target;
use webrtc_sip_gateway::sdp;
use webrtc_sip_gateway::types::Ssrc;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (offer, answer) = text.split_once('\0').unwrap_or((text, ""));
    let Ok(offer) = sdp::parse_sip_offer(offer) else {
        return;
    };
    let ours = sdp::write_browser_offer(
        &offer,
        &sdp::BrowserOfferParams {
            local_ip: "192.0.2.1".parse().unwrap(),
            port: 20000,
            ice_ufrag: "ufrag".into(),
            ice_pwd: "icepasswordicepassword".into(),
            fingerprint_sha256: ["AB"; 32].join(":"),
            session_id: 1,
            session_version: 1,
            ssrc: Ssrc(1),
        },
    );
    assert!(sdp::parse_browser_offer(&ours).is_ok(), "{ours}");
    let _ = sdp::parse_browser_answer(answer, &offer);
});
