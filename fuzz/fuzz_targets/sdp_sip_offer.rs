//! A SIP peer's SDP (offers to the echo trunk, later inbound INVITEs).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = webrtc_sip_gateway::sdp::parse_sip_offer(text);
    }
});
