//! A WebSocket text frame from a browser.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = webrtc_sip_gateway::signaling::protocol::parse_command(text);
    }
});
