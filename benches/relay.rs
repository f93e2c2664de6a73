//! Packets per second of the relay step alone, on one core, against the bare
//! SRTP primitives measured in the same run.
//!
//! `cargo bench --bench relay` (release). Each row relays 172-byte RTP
//! (12 + 160, G.711 20 ms) through a pre-keyed `CallRelay`: datagram in →
//! classify → source and SSRC checks → unprotect → PT map → rewrite →
//! protect → transmit handed out. No sockets: this is the CPU cost the relay
//! adds on top of the kernel's UDP cost. "relay" is `handle_datagram` (the
//! datagram copied once into a pooled buffer, handed out by `poll_transmit`),
//! "in place" is `handle_datagram_in_place` on the caller's buffer. The
//! "crypto" column does just `SrtpContext::unprotect_rtp_in_place` +
//! `protect_rtp_in_place` (or protect alone for plain input) on the same
//! packets copied into one buffer, so the ratio shows the relay's own
//! overhead; "rtc-srtp" is the same with the `rtc-srtp` crate this gateway
//! used before (allocating, copying), for a before/after in one run. Packets are built and protected before the clock starts; each
//! round uses a fresh relay (fresh replay window) and the best round counts.
//! A counting allocator shows heap allocations per packet in both loops (the
//! relay's own share is the difference).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use webrtc_sip_gateway::media::dtls::DtlsIdentity;
use webrtc_sip_gateway::media::fingerprint::Fingerprint;
use webrtc_sip_gateway::media::srtp::SrtpContext;
use webrtc_sip_gateway::media::{
    BrowserLegParams, CallCounters, CallRelay, LegId, RelayParams, TrunkCrypto, TrunkLegParams,
    WorkerStats,
};
use webrtc_sip_gateway::types::{PayloadType, Secret, SrtpKeyMaterial, SrtpSuite};

/// Counts allocations so the table can show allocations per packet.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const PACKETS: usize = 200_000;
const ROUNDS: usize = 5;

fn rtp(seq: u16, ts: u32, ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&ts.to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p.extend((0..160).map(|i| i as u8));
    p
}

/// `PACKETS` plaintext RTP packets of one stream.
fn plain_stream(ssrc: u32) -> Vec<Vec<u8>> {
    (0..PACKETS)
        .map(|i| rtp(i as u16, (i as u32).wrapping_mul(160), ssrc))
        .collect()
}

fn protected_stream(keys: &SrtpKeyMaterial, plain: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut ctx = SrtpContext::new(keys).expect("keys");
    plain
        .iter()
        .map(|p| {
            let mut out = Vec::new();
            ctx.protect_rtp(p, &mut out).expect("protect");
            out
        })
        .collect()
}

#[derive(Clone, Copy)]
enum Input {
    Sdes(SrtpSuite),
    Plain,
}

#[derive(Clone, Copy)]
enum Direction {
    TrunkToBrowser,
    BrowserToTrunk,
}

struct Scenario {
    name: &'static str,
    direction: Direction,
    trunk: Input,
    browser: SrtpSuite,
}

const TRUNK: &str = "192.0.2.10:30000";
const BROWSER: &str = "198.51.100.7:50000";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

struct Keys {
    trunk_in: SrtpKeyMaterial,
    trunk_out: SrtpKeyMaterial,
    browser_in: SrtpKeyMaterial,
    browser_out: SrtpKeyMaterial,
}

fn relay_for(
    s: &Scenario,
    keys: &Keys,
    identity: &Arc<DtlsIdentity>,
    counters: Arc<CallCounters>,
) -> CallRelay {
    let crypto = match s.trunk {
        Input::Sdes(_) => TrunkCrypto::Sdes {
            inbound: keys.trunk_in.clone(),
            outbound: keys.trunk_out.clone(),
        },
        Input::Plain => TrunkCrypto::Plain,
    };
    let params = RelayParams {
        browser: BrowserLegParams {
            local_ufrag: "benchufr".into(),
            local_pwd: Secret::new("bench-password-0123456789".into()),
            remote_ufrag: "brws".into(),
            remote_fingerprint: Fingerprint::sha256(b"bench"),
            ssrcs: vec![],
        },
        trunk: TrunkLegParams {
            remote_rtp: addr(TRUNK),
            remote_rtcp: None,
            crypto,
            ssrcs: vec![],
            media_source: webrtc_sip_gateway::types::MediaSource::Signaled,
        },
        payload_map: vec![(PayloadType(0), PayloadType(0), 8000)],
        telephone_event: None,
    };
    CallRelay::new_keyed_for_bench(
        params,
        identity.clone(),
        &keys.browser_in,
        &keys.browser_out,
        addr(BROWSER),
        counters,
        Arc::new(WorkerStats::default()),
        Instant::now(),
    )
    .expect("keyed relay")
}

/// Best packets/s of the relay step over `ROUNDS` rounds, and heap
/// allocations per packet.
fn bench_relay(
    s: &Scenario,
    keys: &Keys,
    identity: &Arc<DtlsIdentity>,
    counters: &Arc<CallCounters>,
    in_place: bool,
) -> (f64, f64) {
    let plain = plain_stream(0x1234_5678);
    let (leg, from, input) = match (s.direction, s.trunk) {
        (Direction::TrunkToBrowser, Input::Sdes(_)) => (
            LegId::TrunkRtp,
            addr(TRUNK),
            protected_stream(&keys.trunk_in, &plain),
        ),
        (Direction::TrunkToBrowser, Input::Plain) => (LegId::TrunkRtp, addr(TRUNK), plain),
        (Direction::BrowserToTrunk, _) => (
            LegId::Browser,
            addr(BROWSER),
            protected_stream(&keys.browser_in, &plain),
        ),
    };
    let mut best = f64::MAX;
    let mut allocs = 0;
    for _ in 0..ROUNDS {
        let mut relay = relay_for(s, keys, identity, counters.clone());
        let now = Instant::now();
        let allocs_before = ALLOCATIONS.load(Relaxed);
        let start = Instant::now();
        let mut out_bytes = 0usize;
        let mut buf = Vec::with_capacity(2048);
        for pkt in &input {
            if in_place {
                buf.clear();
                buf.extend_from_slice(black_box(pkt));
                if relay
                    .handle_datagram_in_place(leg, from, &mut buf, now)
                    .is_some()
                {
                    out_bytes += black_box(&buf).len();
                }
                continue;
            }
            relay.handle_datagram(leg, from, black_box(pkt), now);
            while let Some(t) = relay.poll_transmit() {
                out_bytes += black_box(t.data).len();
            }
        }
        let elapsed = start.elapsed();
        allocs = ALLOCATIONS.load(Relaxed) - allocs_before;
        assert!(
            out_bytes >= PACKETS * 172,
            "{}: relay dropped packets ({out_bytes} bytes out)",
            s.name
        );
        best = best.min(elapsed.as_secs_f64());
    }
    (PACKETS as f64 / best, allocs as f64 / PACKETS as f64)
}

/// Best packets/s of the bare primitives: unprotect (if SRTP input) +
/// protect in place on one buffer, and heap allocations per packet.
fn bench_crypto(input_suite: Option<SrtpSuite>, output_suite: SrtpSuite) -> (f64, f64) {
    let plain = plain_stream(0x1234_5678);
    let in_keys = input_suite.map(SrtpKeyMaterial::generate);
    let out_keys = SrtpKeyMaterial::generate(output_suite);
    let input = match &in_keys {
        Some(k) => protected_stream(k, &plain),
        None => plain,
    };
    let mut best = f64::MAX;
    let mut allocs = 0;
    for _ in 0..ROUNDS {
        let mut rx = in_keys.as_ref().map(|k| SrtpContext::new(k).expect("keys"));
        let mut tx = SrtpContext::new(&out_keys).expect("keys");
        let mut buf = vec![0u8; 2048];
        let allocs_before = ALLOCATIONS.load(Relaxed);
        let start = Instant::now();
        for pkt in &input {
            let pkt = black_box(pkt);
            buf[..pkt.len()].copy_from_slice(pkt);
            let len = match rx.as_mut() {
                Some(rx) => rx
                    .unprotect_rtp_in_place(&mut buf[..pkt.len()])
                    .expect("unprotect"),
                None => pkt.len(),
            };
            let len = tx.protect_rtp_in_place(&mut buf, len).expect("protect");
            black_box(&buf[..len]);
        }
        best = best.min(start.elapsed().as_secs_f64());
        allocs = ALLOCATIONS.load(Relaxed) - allocs_before;
    }
    (PACKETS as f64 / best, allocs as f64 / PACKETS as f64)
}

/// The same with `rtc-srtp` (what `SrtpContext` wrapped before it worked in
/// place): `decrypt_rtp` + `encrypt_rtp`, each returning a fresh buffer.
fn bench_rtc_srtp(input_suite: Option<SrtpSuite>, output_suite: SrtpSuite) -> f64 {
    use rtc_srtp::context::Context;
    use rtc_srtp::option::srtp_replay_protection;
    use rtc_srtp::protection_profile::ProtectionProfile as P;
    let profile = |suite: SrtpSuite| match suite {
        SrtpSuite::AesCm128HmacSha1_80 => P::Aes128CmHmacSha1_80,
        SrtpSuite::AesCm128HmacSha1_32 => P::Aes128CmHmacSha1_32,
        SrtpSuite::AesCm256HmacSha1_80 => P::Aes256CmHmacSha1_80,
        SrtpSuite::AesCm256HmacSha1_32 => P::Aes256CmHmacSha1_32,
        SrtpSuite::AeadAes128Gcm => P::AeadAes128Gcm,
        SrtpSuite::AeadAes256Gcm => P::AeadAes256Gcm,
        // rtc-srtp has no AES-192; the bench never asks for it.
        SrtpSuite::AesCm192HmacSha1_80 | SrtpSuite::AesCm192HmacSha1_32 => {
            unreachable!("rtc-srtp has no AES-192")
        }
    };
    let provider = rtc_crypto::default_provider().expect("provider");
    let context = |k: &SrtpKeyMaterial| {
        Context::new(
            k.key.expose(),
            k.salt.expose(),
            profile(k.suite),
            Some(srtp_replay_protection(128)),
            None,
            provider.crypto(),
        )
        .expect("keys")
    };
    let plain = plain_stream(0x1234_5678);
    let in_keys = input_suite.map(SrtpKeyMaterial::generate);
    let out_keys = SrtpKeyMaterial::generate(output_suite);
    let input = match &in_keys {
        Some(k) => protected_stream(k, &plain),
        None => plain,
    };
    let mut best = f64::MAX;
    for _ in 0..ROUNDS {
        let mut rx = in_keys.as_ref().map(context);
        let mut tx = context(&out_keys);
        let mut out = Vec::with_capacity(1500);
        let start = Instant::now();
        for pkt in &input {
            let protected = match rx.as_mut() {
                Some(rx) => {
                    let clear = rx.decrypt_rtp(black_box(pkt)).expect("unprotect");
                    tx.encrypt_rtp(&clear).expect("protect")
                }
                None => tx.encrypt_rtp(black_box(pkt)).expect("protect"),
            };
            // As the old SrtpContext did: into the caller's buffer.
            out.clear();
            out.extend_from_slice(&protected);
            black_box(&out);
        }
        best = best.min(start.elapsed().as_secs_f64());
    }
    PACKETS as f64 / best
}

fn main() {
    let identity = Arc::new(DtlsIdentity::generate().expect("DTLS identity"));
    if std::env::var("RELAY_BENCH").as_deref() == Ok("worker") {
        worker_round_trip(&identity);
        return;
    }
    let cm80 = SrtpSuite::AesCm128HmacSha1_80;
    let gcm = SrtpSuite::AeadAes128Gcm;
    let scenarios = [
        Scenario {
            name: "trunk SDES AES_CM_128_HMAC_SHA1_80 -> browser AEAD_AES_128_GCM",
            direction: Direction::TrunkToBrowser,
            trunk: Input::Sdes(cm80),
            browser: gcm,
        },
        Scenario {
            name: "trunk SDES AES_CM_128_HMAC_SHA1_80 -> browser AES_CM_128_HMAC_SHA1_80",
            direction: Direction::TrunkToBrowser,
            trunk: Input::Sdes(cm80),
            browser: cm80,
        },
        Scenario {
            name: "trunk plain RTP -> browser AEAD_AES_128_GCM",
            direction: Direction::TrunkToBrowser,
            trunk: Input::Plain,
            browser: gcm,
        },
        Scenario {
            name: "trunk plain RTP -> browser AES_CM_128_HMAC_SHA1_80",
            direction: Direction::TrunkToBrowser,
            trunk: Input::Plain,
            browser: cm80,
        },
        Scenario {
            name: "browser AEAD_AES_128_GCM -> trunk SDES AES_CM_128_HMAC_SHA1_80",
            direction: Direction::BrowserToTrunk,
            trunk: Input::Sdes(cm80),
            browser: gcm,
        },
    ];

    println!("relay step, one core, {PACKETS} packets of 172 bytes, best of {ROUNDS} rounds");
    println!(
        "{:<68} {:>10} {:>7} {:>8} {:>10} {:>6} {:>7} {:>10} {:>7} {:>8}",
        "path",
        "relay pps",
        "ns/pkt",
        "in place",
        "crypto pps",
        "ratio",
        "in pl.",
        "rtc-srtp",
        "ns/pkt",
        "alloc/p"
    );
    for s in &scenarios {
        let trunk_suite = match s.trunk {
            Input::Sdes(suite) => Some(suite),
            Input::Plain => None,
        };
        let keys = Keys {
            trunk_in: SrtpKeyMaterial::generate(trunk_suite.unwrap_or(cm80)),
            trunk_out: SrtpKeyMaterial::generate(trunk_suite.unwrap_or(cm80)),
            browser_in: SrtpKeyMaterial::generate(s.browser),
            browser_out: SrtpKeyMaterial::generate(s.browser),
        };
        let counters = Arc::new(CallCounters::default());
        let (relay_pps, relay_allocs) = bench_relay(s, &keys, &identity, &counters, false);
        let (in_place_pps, in_place_allocs) = bench_relay(s, &keys, &identity, &counters, true);
        let (input, output) = match s.direction {
            Direction::TrunkToBrowser => (trunk_suite, s.browser),
            Direction::BrowserToTrunk => (Some(s.browser), trunk_suite.unwrap_or(cm80)),
        };
        let (crypto_pps, crypto_allocs) = bench_crypto(input, output);
        let rtc_pps = bench_rtc_srtp(input, output);
        println!(
            "{:<68} {:>10.0} {:>7.0} {:>8.0} {:>10.0} {:>5.2}x {:>6.2}x {:>10.0} {:>7.0} {:>8.2}",
            s.name,
            relay_pps,
            1e9 / relay_pps,
            1e9 / in_place_pps,
            crypto_pps,
            crypto_pps / relay_pps,
            crypto_pps / in_place_pps,
            rtc_pps,
            1e9 / rtc_pps,
            relay_allocs.max(in_place_allocs).max(crypto_allocs)
        );
    }
    println!(
        "ratio: crypto pps / relay pps (\"in pl.\": / in-place relay pps); rtc-srtp: the previous SRTP crate, same work; alloc/p: most heap allocations per packet of the relay, in-place relay and crypto loops"
    );
    observers(&scenarios[0], &identity);
    worker_round_trip(&identity);
}

/// The same relay step with and without the operator's side running on the
/// other core: a thread that every 10 ms snapshots the call's counters into
/// the stats page's JSON (as `/api/stats` does once a second per viewer: a
/// hundred viewers) and writes a call record (Started + Ended) into SQLite
/// through the CDR queue (a hundred calls ending per second).
/// Alternating rounds, best of each.
fn observers(s: &Scenario, identity: &Arc<DtlsIdentity>) {
    use std::sync::atomic::AtomicBool;
    use webrtc_sip_gateway::cdr::{self, CdrEvent, CdrStore, HungUpBy, LegFigures};
    use webrtc_sip_gateway::stats::live::{CallStart, LiveCalls};

    let cm80 = SrtpSuite::AesCm128HmacSha1_80;
    let keys = Keys {
        trunk_in: SrtpKeyMaterial::generate(cm80),
        trunk_out: SrtpKeyMaterial::generate(cm80),
        browser_in: SrtpKeyMaterial::generate(s.browser),
        browser_out: SrtpKeyMaterial::generate(s.browser),
    };
    let dir = std::env::temp_dir().join(format!("gw-bench-cdr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let store =
        CdrStore::open(&dir.join(cdr::DB_FILE), std::time::SystemTime::now()).expect("CDR store");
    let live = Arc::new(LiveCalls::default());
    let call = live.begin(CallStart {
        id: "bench".into(),
        direction: cdr::Direction::Outgoing,
        account: "alice".into(),
        remote: "+4930******89".into(),
        trunk: "carrier".into(),
        redact: true,
    });
    let counters = Arc::new(CallCounters::default());
    call.set_counters(counters.clone());

    let run = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let observer = {
        let (run, stop, reads, live, store) = (
            run.clone(),
            stop.clone(),
            reads.clone(),
            live.clone(),
            store.clone(),
        );
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Relaxed) {
                if !run.load(Relaxed) {
                    std::thread::yield_now();
                    continue;
                }
                let page = serde_json::to_string(&live.views()).unwrap_or_default();
                black_box(page.len());
                let id = format!("bench-{n}");
                let at = std::time::SystemTime::now();
                store.record(CdrEvent::Started {
                    id: id.clone(),
                    direction: cdr::Direction::Outgoing,
                    account: "alice".into(),
                    remote: "+4930******89".into(),
                    trunk: "carrier".into(),
                    sip_call_id: "x".into(),
                    at,
                });
                store.record(CdrEvent::Ended {
                    id,
                    at,
                    cause_code: 200,
                    cause: "bench".into(),
                    hung_up_by: HungUpBy::Browser,
                    codec: None,
                    browser_security: None,
                    trunk_security: None,
                    private: false,
                    browser: LegFigures::default(),
                    trunk: LegFigures::default(),
                });
                n += 1;
                reads.fetch_add(1, Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        })
    };
    let mut quiet = f64::MAX;
    let mut busy = f64::MAX;
    for _ in 0..ROUNDS {
        run.store(false, Relaxed);
        quiet = quiet.min(1.0 / bench_relay(s, &keys, identity, &counters, false).0);
        run.store(true, Relaxed);
        let before = reads.load(Relaxed);
        let t = Instant::now();
        busy = busy.min(1.0 / bench_relay(s, &keys, identity, &counters, false).0);
        let rate = (reads.load(Relaxed) - before) as f64 / t.elapsed().as_secs_f64();
        black_box(rate);
    }
    stop.store(true, Relaxed);
    let _ = observer.join();
    let rate = reads.load(Relaxed);
    println!();
    println!("{} with the operator's side busy on the other core", s.name);
    println!(
        "  quiet: {:.0} ns/packet; with 100 stats snapshots and 100 call records per second: {:.0} ns/packet ({:.2}x); {} snapshots and records during the runs, {} records dropped by a full queue",
        quiet * 1e9,
        busy * 1e9,
        busy / quiet,
        rate,
        store.dropped()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A media worker end to end over loopback UDP: `CALLS` calls on one worker
/// (single-port mode), each with a plain trunk and a keyed browser leg
/// (AEAD_AES_128_GCM, no ICE/DTLS: `start_keyed_for_bench`). Per burst the
/// "trunk" socket sends one RTP packet to each call's trunk port and the
/// "browser" socket reads the `CALLS` encrypted packets back; the figure is
/// wall time per packet of the whole round trip, generator included, once
/// with 32 datagrams per `recvmmsg`/`sendmmsg` and once with one, so the
/// difference is what batching saves. `strace -c -f` on
/// `RELAY_BENCH=worker cargo bench --bench relay` counts the syscalls.
fn worker_round_trip(identity: &Arc<DtlsIdentity>) {
    use webrtc_sip_gateway::media::{MediaConfig, MediaEngine};
    const CALLS: usize = 64;
    const BURSTS: usize = 2_000;
    let lo = std::net::IpAddr::from([127, 0, 0, 1]);
    println!();
    println!(
        "media worker round trip over loopback: {CALLS} calls on one worker, plain trunk -> browser AEAD_AES_128_GCM, {BURSTS} bursts of one packet per call"
    );
    for (label, batch) in [
        ("batched, 32 per syscall", 32),
        ("one datagram per syscall", 1),
    ] {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let probe = std::net::UdpSocket::bind((lo, 0)).expect("probe");
            let base = probe.local_addr().expect("addr").port().clamp(1024, 64000);
            drop(probe);
            let engine = MediaEngine::with_batch(
                MediaConfig {
                    bind_ip: lo,
                    public_ip: lo,
                    port_min: base,
                    port_max: base + 400,
                    workers: 1,
                    single_port: true,
                },
                identity.clone(),
                batch,
            );
            let trunk = std::net::UdpSocket::bind((lo, 0)).expect("trunk socket");
            let browser = std::net::UdpSocket::bind((lo, 0)).expect("browser socket");
            browser
                .set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .expect("timeout");
            let keys = SrtpKeyMaterial::generate(SrtpSuite::AeadAes128Gcm);
            let (events, _events_rx) = tokio::sync::mpsc::channel(CALLS * 4);
            let mut handles = vec![];
            let mut ports = vec![];
            for _ in 0..CALLS {
                let alloc = engine.allocate().await.expect("allocate");
                ports.push(SocketAddr::new(lo, alloc.trunk_rtp_port));
                let params = RelayParams {
                    browser: BrowserLegParams {
                        local_ufrag: String::new(),
                        local_pwd: Secret::new(String::new()),
                        remote_ufrag: "brws".into(),
                        remote_fingerprint: Fingerprint::sha256(b"bench"),
                        ssrcs: vec![],
                    },
                    trunk: TrunkLegParams {
                        remote_rtp: trunk.local_addr().expect("addr"),
                        remote_rtcp: None,
                        crypto: TrunkCrypto::Plain,
                        ssrcs: vec![],
                        media_source: webrtc_sip_gateway::types::MediaSource::Signaled,
                    },
                    payload_map: vec![(PayloadType(0), PayloadType(0), 8000)],
                    telephone_event: None,
                };
                let browser_addr = browser.local_addr().expect("addr");
                handles.push(
                    alloc
                        .start_keyed_for_bench(params, &keys, &keys, browser_addr, events.clone())
                        .expect("keyed call"),
                );
            }
            let packets: Vec<Vec<u8>> = (0..BURSTS)
                .map(|i| rtp(i as u16, (i as u32).wrapping_mul(160), 0x4242_4242))
                .collect();
            let mut buf = [0u8; 2048];
            let mut received = 0usize;
            let start = Instant::now();
            for packet in &packets {
                for port in &ports {
                    trunk.send_to(packet, port).expect("send");
                }
                for _ in 0..CALLS {
                    match browser.recv(&mut buf) {
                        Ok(_) => received += 1,
                        Err(_) => break,
                    }
                }
            }
            let elapsed = start.elapsed().as_secs_f64();
            let sent = BURSTS * CALLS;
            println!(
                "{label:<28} {:>8.2} us/packet round trip {:>9.0} packets/s, {} of {sent} received",
                elapsed * 1e6 / sent as f64,
                sent as f64 / elapsed,
                received
            );
            for h in &handles {
                h.stop();
            }
            for mut h in handles {
                h.stopped().await;
            }
        });
    }
}
