//! `CallRelay` in passthrough (a private call), on the explicit clock of the
//! relay tests: ICE answered by the gateway, DTLS and SRTP relayed byte for
//! byte both ways, SSRC and source checks on the clear headers, and no SRTP
//! context ever created.

use super::tests::*;
use super::*;
use crate::media::dtls_watch::tests::{record, server_hello};
use crate::media::stun::{attr, StunClass, StunWriter, BINDING};

const GW_UFRAG: &str = "privufrag";
const GW_PWD: &str = "private-ice-password-123";
const TRUNK: &str = "192.0.2.10:30000";
const TRUNK_RTCP: &str = "192.0.2.10:30001";
const HANDSHAKE: u8 = 22;
const CCS: u8 = 20;

fn private_relay(remote_rtcp: Option<SocketAddr>) -> (CallRelay, Arc<CallCounters>, Instant) {
    let t0 = Instant::now();
    let counters = Arc::new(CallCounters::default());
    let relay = CallRelay::new(
        params(
            TrunkCrypto::Passthrough,
            remote_rtcp,
            Fingerprint::sha256(b"the trunk checks it, not us"),
            GW_UFRAG,
            GW_PWD,
        ),
        identity(),
        counters.clone(),
        Arc::new(WorkerStats::default()),
        t0,
    );
    (relay, counters, t0)
}

fn stun_check() -> Vec<u8> {
    let mut out = vec![];
    let tid: [u8; 12] = rand::random();
    let username = format!("{GW_UFRAG}:brws");
    let mut w = StunWriter::new(&mut out, BINDING, StunClass::Request, &tid);
    w.attribute(attr::USERNAME, username.as_bytes())
        .attribute(attr::PRIORITY, &0x6e00_1eff_u32.to_be_bytes())
        .attribute(attr::ICE_CONTROLLING, &[1, 2, 3, 4, 5, 6, 7, 8])
        .attribute(attr::USE_CANDIDATE, &[]);
    w.message_integrity(GW_PWD.as_bytes()).fingerprint();
    out
}

/// SRTP as an end would send it: a clear RTP header, then bytes the relay
/// cannot read (an encrypted payload and a tag).
fn srtp(pt: u8, seq: u16, ssrc: u32) -> Vec<u8> {
    let mut p = rtp_packet(pt, seq, u32::from(seq) * 160, ssrc, 0);
    for (i, b) in p[12..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(151) ^ (seq as u8);
    }
    p.extend_from_slice(&[0xA5; 10]);
    p
}

/// Passes ICE: the browser's address is checked and nominated.
fn ice(relay: &mut CallRelay, now: Instant) -> Vec<(LegId, SocketAddr, Vec<u8>)> {
    relay.handle_datagram(LegId::Browser, addr(BROWSER), &stun_check(), now);
    drain(relay)
}

#[test]
fn dtls_and_srtp_pass_unchanged_both_ways_and_no_key_is_ever_made() {
    let (mut relay, counters, t0) = private_relay(None);
    let (browser, trunk) = (addr(BROWSER), addr(TRUNK));

    // The trunk (DTLS client, a=setup:active) starts before the browser
    // passed ICE: its ClientHello waits.
    let client_hello = record(
        HANDSHAKE,
        0,
        &[1, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 4, 1, 2, 3, 4],
    );
    relay.handle_datagram(LegId::TrunkRtp, trunk, &client_hello, t0);
    assert!(drain(&mut relay).is_empty());

    // ICE: the gateway answers the check itself, then the waiting DTLS goes.
    let out = ice(&mut relay, t0);
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(&out[0].2[0..2], &[0x01, 0x01], "Binding success response");
    assert_eq!(out[1], (LegId::Browser, browser, client_hello.clone()));

    // The browser (DTLS server) answers: ServerHello with use_srtp, to the
    // trunk byte for byte.
    let flight = record(HANDSHAKE, 0, &server_hello(Some(0x0001)));
    relay.handle_datagram(LegId::Browser, browser, &flight, t0 + ms(1));
    assert_eq!(drain(&mut relay), [(LegId::TrunkRtp, trunk, flight)]);
    assert_eq!(relay.poll_event(), None);

    // Both ChangeCipherSpecs pass: the ends hold keys, the call is up.
    let mut trunk_fin = record(CCS, 0, &[1]);
    trunk_fin.extend(record(HANDSHAKE, 1, &[0x5a; 48]));
    relay.handle_datagram(LegId::TrunkRtp, trunk, &trunk_fin, t0 + ms(2));
    assert_eq!(drain(&mut relay), [(LegId::Browser, browser, trunk_fin)]);
    assert_eq!(
        relay.poll_event(),
        None,
        "not before both sides changed cipher"
    );
    let mut browser_fin = record(CCS, 0, &[1]);
    browser_fin.extend(record(HANDSHAKE, 1, &[0xa5; 48]));
    relay.handle_datagram(LegId::Browser, browser, &browser_fin, t0 + ms(3));
    assert_eq!(drain(&mut relay), [(LegId::TrunkRtp, trunk, browser_fin)]);
    assert_eq!(
        relay.poll_event(),
        Some(RelayEvent::PrivateConnected {
            suite: Some(SrtpSuite::AesCm128HmacSha1_80)
        })
    );
    assert!(relay.is_connected());

    // SRTP both ways, unchanged (no SSRC, sequence or payload renumbering).
    for i in 0..5u16 {
        let now = t0 + ms(20 * u64::from(i + 1));
        let up = srtp(PCMU, 100 + i, 0xB1);
        relay.handle_datagram(LegId::Browser, browser, &up, now);
        let down = srtp(PCMU, 7000 + i, 0x71);
        relay.handle_datagram(LegId::TrunkRtp, trunk, &down, now);
        assert_eq!(
            drain(&mut relay),
            [
                (LegId::TrunkRtp, trunk, up),
                (LegId::Browser, browser, down)
            ]
        );
    }
    // The in-place path forwards unchanged too.
    let mut buf = srtp(PCMU, 105, 0xB1);
    let sent = buf.clone();
    let to = relay.handle_datagram_in_place(LegId::Browser, browser, &mut buf, t0 + ms(120));
    assert_eq!((to, buf), (Some((LegId::TrunkRtp, trunk)), sent));
    // SRTCP (rtcp-mux) both ways.
    let rr = rtcp_rr(0xB1, 0x71);
    relay.handle_datagram(LegId::Browser, browser, &rr, t0 + ms(130));
    assert_eq!(drain(&mut relay), [(LegId::TrunkRtp, trunk, rr)]);

    assert_eq!(counters.srtp_contexts.load(Relaxed), 0, "no key, ever");
    let b = counters.browser.snapshot();
    let t = counters.trunk.snapshot();
    assert_eq!((b.packets_in, t.packets_out), (10, 9));
    assert_eq!((t.packets_in, b.packets_out), (7, 8));
    assert_eq!(
        DropReason::ALL
            .iter()
            .map(|r| b.drops(*r) + t.drops(*r))
            .sum::<u64>(),
        0
    );
}

#[test]
fn unknown_ssrc_payload_type_and_source_are_dropped_and_counted() {
    let (mut relay, counters, t0) = private_relay(None);
    let trunk = addr(TRUNK);
    ice(&mut relay, t0);
    // Media from the trunk first: it proves the ends hold keys.
    relay.handle_datagram(LegId::TrunkRtp, trunk, &srtp(PCMU, 1, 0x71), t0);
    assert_eq!(drain(&mut relay).len(), 1);
    assert_eq!(
        relay.poll_event(),
        Some(RelayEvent::PrivateConnected { suite: None })
    );
    // Another SSRC while the first one talks: dropped.
    relay.handle_datagram(LegId::TrunkRtp, trunk, &srtp(PCMU, 2, 0x99), t0 + ms(20));
    // A payload type nobody negotiated.
    relay.handle_datagram(LegId::TrunkRtp, trunk, &srtp(9, 3, 0x71), t0 + ms(20));
    // Another IP than the trunk signaled (strict media_source).
    relay.handle_datagram(
        LegId::TrunkRtp,
        addr("203.0.113.9:30000"),
        &srtp(PCMU, 4, 0x71),
        t0 + ms(20),
    );
    // The browser from an address that never passed ICE.
    relay.handle_datagram(
        LegId::Browser,
        addr("198.51.100.99:5000"),
        &srtp(PCMU, 1, 0xB1),
        t0 + ms(20),
    );
    relay.handle_datagram(
        LegId::Browser,
        addr("198.51.100.99:5000"),
        &record(HANDSHAKE, 0, &[1]),
        t0 + ms(20),
    );
    assert!(drain(&mut relay).is_empty());
    let t = counters.trunk.snapshot();
    assert_eq!(t.drops(DropReason::UnknownSsrc), 1);
    assert_eq!(t.drops(DropReason::UnknownPayloadType), 1);
    assert_eq!(t.drops(DropReason::WrongSource), 1);
    assert_eq!(counters.browser.drops(DropReason::WrongSource), 2);
    // After a silence the new SSRC is taken (as for every call).
    let later = t0 + ms(20) + SsrcFilter::DEFAULT_SILENCE;
    relay.handle_datagram(LegId::TrunkRtp, trunk, &srtp(PCMU, 5, 0x99), later);
    assert_eq!(drain(&mut relay).len(), 1);
    assert_eq!(counters.srtp_contexts.load(Relaxed), 0);
}

#[test]
fn without_rtcp_mux_srtcp_uses_the_trunks_rtcp_port_and_its_dtls_is_dropped() {
    let (mut relay, counters, t0) = private_relay(Some(addr(TRUNK_RTCP)));
    let (browser, rtcp) = (addr(BROWSER), addr(TRUNK_RTCP));
    ice(&mut relay, t0);
    relay.handle_datagram(LegId::TrunkRtp, addr(TRUNK), &srtp(PCMU, 1, 0x71), t0);
    drain(&mut relay);
    let rr = rtcp_rr(0xB1, 0x71);
    relay.handle_datagram(LegId::Browser, browser, &rr, t0 + ms(5));
    assert_eq!(drain(&mut relay), [(LegId::TrunkRtcp, rtcp, rr)]);
    let sr = rtcp_rr(0x71, 0xB1);
    relay.handle_datagram(LegId::TrunkRtcp, rtcp, &sr, t0 + ms(6));
    assert_eq!(drain(&mut relay), [(LegId::Browser, browser, sr)]);
    // A second DTLS association on the RTCP component has no browser peer.
    relay.handle_datagram(
        LegId::TrunkRtcp,
        rtcp,
        &record(HANDSHAKE, 0, &[1]),
        t0 + ms(7),
    );
    assert!(drain(&mut relay).is_empty());
    assert_eq!(counters.trunk.drops(DropReason::Malformed), 1);
}

#[test]
fn a_keyed_call_counts_its_srtp_contexts() {
    // Browser DTLS-SRTP and SDES toward the trunk: two each way.
    let k = keyed(true, None);
    assert_eq!(k.counters.srtp_contexts.load(Relaxed), 4);
    let k = keyed(false, None);
    assert_eq!(k.counters.srtp_contexts.load(Relaxed), 2);
}

#[test]
fn nothing_passes_after_close_or_timeout() {
    let (mut relay, counters, t0) = private_relay(None);
    ice(&mut relay, t0);
    relay.handle_datagram(LegId::TrunkRtp, addr(TRUNK), &srtp(PCMU, 1, 0x71), t0);
    drain(&mut relay);
    let _ = relay.poll_event();
    let deadline = relay.poll_timeout().unwrap();
    relay.handle_timeout(deadline);
    assert!(matches!(
        relay.poll_event(),
        Some(RelayEvent::Timeout { .. })
    ));
    relay.handle_datagram(LegId::TrunkRtp, addr(TRUNK), &srtp(PCMU, 2, 0x71), deadline);
    relay.handle_datagram(
        LegId::TrunkRtp,
        addr(TRUNK),
        &record(CCS, 0, &[1]),
        deadline,
    );
    assert!(drain(&mut relay).is_empty());
    assert_eq!(counters.trunk.drops(DropReason::NotReady), 2);
}
