//! Arbitrary datagrams into a connected call relay, on every leg and from
//! signaled and foreign addresses: nothing may panic, and a plain-RTP trunk
//! leg is used so that crafted packets reach the SSRC filter and rewriter.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use webrtc_sip_gateway::media::dtls::DtlsIdentity;
use webrtc_sip_gateway::media::fingerprint::Fingerprint;
use webrtc_sip_gateway::media::{
    BrowserLegParams, CallCounters, CallRelay, LegId, RelayParams, TrunkCrypto, TrunkLegParams,
    WorkerStats,
};
use webrtc_sip_gateway::types::{PayloadType, Secret, SrtpKeyMaterial, SrtpSuite};

const BROWSER: &str = "192.0.2.10:40000";
const TRUNK: &str = "198.51.100.20:30000";
const STRANGER: &str = "203.0.113.66:1234";

fn identity() -> Arc<DtlsIdentity> {
    static ID: OnceLock<Arc<DtlsIdentity>> = OnceLock::new();
    ID.get_or_init(|| Arc::new(DtlsIdentity::generate().expect("identity")))
        .clone()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("literal address")
}

fuzz_target!(|data: &[u8]| {
    let keys = SrtpKeyMaterial::generate(SrtpSuite::AeadAes128Gcm);
    let params = RelayParams {
        browser: BrowserLegParams {
            local_ufrag: "fuzzufrg".into(),
            local_pwd: Secret::new("fuzz-password-0123456789".into()),
            remote_ufrag: "brws".into(),
            remote_fingerprint: Fingerprint::sha256(b"fuzz"),
            ssrcs: vec![],
        },
        trunk: TrunkLegParams {
            remote_rtp: addr(TRUNK),
            remote_rtcp: None,
            crypto: TrunkCrypto::Plain,
            ssrcs: vec![],
            // latching: the fuzzer's packets come from anywhere
            media_source: webrtc_sip_gateway::types::MediaSource::Latch,
        },
        payload_map: vec![(PayloadType(111), PayloadType(0), 8000)],
        telephone_event: None,
    };
    let start = Instant::now();
    let Ok(mut relay) = CallRelay::new_keyed_for_bench(
        params,
        identity(),
        &keys,
        &keys,
        addr(BROWSER),
        Arc::new(CallCounters::default()),
        Arc::new(WorkerStats::default()),
        start,
    ) else {
        return;
    };
    // Each chunk: one control byte (leg, source, time step) then a datagram.
    for (i, chunk) in data.split(|b| *b == 0xff).enumerate() {
        let Some((&control, datagram)) = chunk.split_first() else {
            continue;
        };
        let leg = match control % 3 {
            0 => LegId::Browser,
            1 => LegId::TrunkRtp,
            _ => LegId::TrunkRtcp,
        };
        let from = match (control / 3) % 3 {
            0 => addr(BROWSER),
            1 => addr(TRUNK),
            _ => addr(STRANGER),
        };
        let now = start + Duration::from_millis(20 * i as u64 + u64::from(control / 9));
        relay.handle_datagram(leg, from, datagram, now);
        while relay.poll_transmit().is_some() {}
        while relay.poll_event().is_some() {}
        if let Some(deadline) = relay.poll_timeout() {
            if deadline <= now {
                relay.handle_timeout(now);
            }
        }
    }
});
