//! Any datagram or TCP frame from the network through the SIP parser, and
//! the header values the B2BUA reads from a trunk's in-dialog requests:
//! a REFER's Refer-To (with an attended transfer's escaped Replaces) and an
//! INFO's DTMF body.
#![no_main]
use libfuzzer_sys::fuzz_target;
use webrtc_sip_gateway::sip::{info::InfoBody, refer};

fuzz_target!(|data: &[u8]| {
    let _ = webrtc_sip_gateway::sip::message::parse(data);
    let _ = webrtc_sip_gateway::sip::message::parse_lenient(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok((user, replaces)) = refer::refer_to_user(text) {
            // What goes into our INVITE must stay one header line.
            assert!(!user.contains(['\r', '\n']));
            assert!(replaces.is_none_or(|r| !r.contains(['\r', '\n'])));
        }
    }
    let _ = InfoBody::parse(Some("application/dtmf-relay"), data);
    let _ = InfoBody::parse(Some("application/dtmf"), data);
});
