//! Any datagram or TCP frame from the network through the SIP parser.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = webrtc_sip_gateway::sip::message::parse(data);
    let _ = webrtc_sip_gateway::sip::message::parse_lenient(data);
});
