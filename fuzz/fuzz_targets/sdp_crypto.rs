//! The value of an `a=crypto` attribute (RFC 4568).
#![no_main]
use libfuzzer_sys::fuzz_target;
use webrtc_sip_gateway::sdp::crypto::CryptoAttribute;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(attr) = CryptoAttribute::parse(text) {
            // Our own writing of a parsed attribute must parse to the same.
            let again = CryptoAttribute::parse(&attr.to_sdp_value());
            assert_eq!(again.as_ref(), Ok(&attr));
        }
    }
});
