//! `CallRelay` with a DTLS-SRTP trunk leg, sans-IO: the trunk is another
//! `DtlsServer` of ours with its own certificate, datagrams are handed
//! across by hand, time is the tests' clock. The browser side is already
//! keyed (`new_keyed_for_bench`), so only the trunk's handshake is exercised.

use super::tests::*;
use super::*;
use crate::media::rewrite::parse_rtp;

const TRUNK: &str = "192.0.2.10:30000";
const GATEWAY_TRUNK_PORT: &str = "203.0.113.1:20002";

/// A DTLS trunk in front of a keyed relay.
struct DtlsTrunk {
    k: Keyed,
    /// The trunk's side of the handshake (its role is the other one).
    peer: DtlsServer,
    /// The trunk's SRTP contexts once it connected: (sends, receives).
    srtp: Option<(SrtpContext, SrtpContext)>,
}

/// `our_role` is the gateway's; `expected` what the trunk's SDP named
/// (`None`: its real fingerprint).
fn dtls_trunk(our_role: DtlsRole, expected: Option<Fingerprint>) -> DtlsTrunk {
    let trunk_id = DtlsIdentity::generate().unwrap();
    let mut k = keyed(false, None);
    let suites = vec![SrtpSuite::AesCm128HmacSha1_80, SrtpSuite::AeadAes128Gcm];
    let trunk = TrunkLegParams {
        remote_rtp: addr(TRUNK),
        remote_rtcp: None,
        crypto: TrunkCrypto::Dtls {
            role: our_role,
            remote_fingerprint: expected.unwrap_or_else(|| trunk_id.fingerprint()),
            suites: suites.clone(),
        },
        ssrcs: vec![],
        media_source: MediaSource::Signaled,
    };
    k.relay.update_trunk(
        TrunkUpdate {
            trunk,
            payload_map: payload_map(),
            telephone_event: None,
        },
        k.t0,
    );
    let gw = addr(GATEWAY_TRUNK_PORT);
    let peer = match our_role {
        DtlsRole::Server => {
            DtlsServer::client(&trunk_id, identity().fingerprint(), gw, &suites, k.t0).unwrap()
        }
        DtlsRole::Client => {
            DtlsServer::new_server(&trunk_id, identity().fingerprint(), gw, &suites, k.t0).unwrap()
        }
    };
    DtlsTrunk {
        k,
        peer,
        srtp: None,
    }
}

impl DtlsTrunk {
    /// A re-INVITE (or a 200 after a 183) naming the same certificate,
    /// with the trunk at `remote` and the gateway in `role`.
    fn re_offer(&mut self, remote: SocketAddr, role: DtlsRole, now: Instant) {
        let expected = match &self.k.relay.trunk.dtls {
            Some(d) => d.expected.clone(),
            None => unreachable!("a DTLS trunk leg"),
        };
        self.k.relay.update_trunk(
            TrunkUpdate {
                trunk: TrunkLegParams {
                    remote_rtp: remote,
                    remote_rtcp: None,
                    crypto: TrunkCrypto::Dtls {
                        role,
                        remote_fingerprint: expected,
                        suites: vec![SrtpSuite::AesCm128HmacSha1_80],
                    },
                    ssrcs: vec![],
                    media_source: MediaSource::Signaled,
                },
                payload_map: payload_map(),
                telephone_event: None,
            },
            now,
        );
    }

    /// Hands datagrams both ways until quiet; returns the relay's events.
    fn pump(&mut self, now: Instant) -> Vec<RelayEvent> {
        for _ in 0..50 {
            let mut moved = false;
            while let Some(d) = self.peer.poll_transmit() {
                moved = true;
                self.k
                    .relay
                    .handle_datagram(LegId::TrunkRtp, addr(TRUNK), &d, now);
            }
            for (leg, to, data) in drain(&mut self.k.relay) {
                assert_eq!(
                    (leg, to),
                    (LegId::TrunkRtp, addr(TRUNK)),
                    "DTLS goes to the trunk"
                );
                moved = true;
                let _ = self.peer.handle_datagram(now, &data);
            }
            if !moved {
                break;
            }
        }
        while let Some(e) = self.peer.poll_event() {
            if let DtlsEvent::Connected {
                inbound, outbound, ..
            } = e
            {
                self.srtp = Some((
                    SrtpContext::new(&outbound).unwrap(),
                    SrtpContext::new(&inbound).unwrap(),
                ));
            }
        }
        std::iter::from_fn(|| self.k.relay.poll_event()).collect()
    }
}

#[test]
fn the_gateway_as_server_or_client_keys_the_trunk_leg_and_media_flows() {
    for role in [DtlsRole::Server, DtlsRole::Client] {
        let mut t = dtls_trunk(role, None);
        let now = t.k.t0 + ms(5);
        match role {
            // The client speaks first: its ClientHello is queued at once.
            DtlsRole::Client => assert!(t.k.relay.poll_timeout().is_some()),
            // The server waits: no DTLS timer before the trunk's hello.
            DtlsRole::Server => {}
        }
        // Before the handshake nothing crosses, either way.
        let early = protect(&mut t.k.browser_tx, &rtp_packet(PCMU, 1, 0, 0xB1, 3));
        t.k.relay
            .handle_datagram(LegId::Browser, addr(BROWSER), &early, now);
        let events = t.pump(now);
        assert_eq!(
            events,
            vec![RelayEvent::TrunkConnected {
                suite: SrtpSuite::AesCm128HmacSha1_80
            }],
            "{role:?}"
        );
        assert!(t.k.counters.browser.snapshot().drops.iter().sum::<u64>() >= 1);
        let (mut trunk_tx, mut trunk_rx) = t.srtp.take().expect("the trunk connected");

        // Browser → trunk, decrypted with the trunk's DTLS keys.
        let pkt = protect(&mut t.k.browser_tx, &rtp_packet(PCMU, 2, 160, 0xB1, 0x11));
        t.k.relay
            .handle_datagram(LegId::Browser, addr(BROWSER), &pkt, now);
        let out = drain(&mut t.k.relay);
        assert_eq!(out.len(), 1, "{role:?}");
        assert_eq!((out[0].0, out[0].1), (LegId::TrunkRtp, addr(TRUNK)));
        let plain = unprotect(&mut trunk_rx, &out[0].2);
        assert_eq!(&plain[12..], &[0x11; 160][..]);

        // Trunk → browser.
        let pkt = protect(&mut trunk_tx, &rtp_packet(PCMU, 70, 0, 0x71, 0x22));
        t.k.relay
            .handle_datagram(LegId::TrunkRtp, addr(TRUNK), &pkt, now);
        let out = drain(&mut t.k.relay);
        assert_eq!(out.len(), 1, "{role:?}");
        let plain = unprotect(&mut t.k.browser_rx, &out[0].2);
        assert_eq!(parse_rtp(&plain).unwrap().ssrc, Ssrc(0xB0B0));
        assert_eq!(&plain[12..], &[0x22; 160][..]);
        // The DTLS timers are done with.
        let media_deadline = t.k.t0 + CallRelay::DEFAULT_MEDIA_TIMEOUT;
        assert!(t
            .k
            .relay
            .poll_timeout()
            .is_some_and(|d| d <= media_deadline + ms(10)));
    }
}

#[test]
fn a_trunk_certificate_that_is_not_its_fingerprint_fails_and_nothing_crosses() {
    for role in [DtlsRole::Server, DtlsRole::Client] {
        let stranger = DtlsIdentity::generate().unwrap().fingerprint();
        let mut t = dtls_trunk(role, Some(stranger));
        let now = t.k.t0 + ms(5);
        let events = t.pump(now);
        match events.as_slice() {
            [RelayEvent::Failed { reason }] => {
                assert!(
                    reason.contains("DTLS with trunk 192.0.2.10:30000 failed"),
                    "{reason}"
                );
                assert!(
                    reason.contains("does not match the SDP fingerprint"),
                    "{reason}"
                );
            }
            other => panic!("{role:?}: {other:?}"),
        }
        assert!(!t.k.relay.is_connected());
        // The impostor is told nothing (no alert: it still waits for our
        // next flight) and never keyed.
        assert!(t.srtp.is_none(), "{role:?}");
        assert!(
            t.peer.poll_timeout().is_some(),
            "{role:?}: the peer got an alert"
        );
        // Nothing crosses afterwards.
        let pkt = protect(&mut t.k.browser_tx, &rtp_packet(PCMU, 2, 160, 0xB1, 0x11));
        t.k.relay
            .handle_datagram(LegId::Browser, addr(BROWSER), &pkt, now);
        assert!(drain(&mut t.k.relay).is_empty());
        assert_eq!(t.k.relay.poll_timeout(), None);
    }
}

#[test]
fn plain_or_sdes_looking_packets_from_a_dtls_trunk_before_keys_are_dropped() {
    let mut t = dtls_trunk(DtlsRole::Server, None);
    let now = t.k.t0 + ms(1);
    // Plain RTP from the trunk's own address: a DTLS leg is not plain.
    t.k.relay.handle_datagram(
        LegId::TrunkRtp,
        addr(TRUNK),
        &rtp_packet(PCMU, 1, 0, 0x71, 0x22),
        now,
    );
    assert!(drain(&mut t.k.relay).is_empty());
    let drops = trunk_snap(&t.k).drops;
    assert_eq!(drops[DropReason::NotReady as usize], 1, "{drops:?}");
    // DTLS from another IP (media_source = signaled) is not the trunk's.
    let trunk_id = DtlsIdentity::generate().unwrap();
    let mut other = DtlsServer::client(
        &trunk_id,
        identity().fingerprint(),
        addr(GATEWAY_TRUNK_PORT),
        &[SrtpSuite::AesCm128HmacSha1_80],
        now,
    )
    .unwrap();
    let hello = other.poll_transmit().unwrap();
    t.k.relay
        .handle_datagram(LegId::TrunkRtp, addr("198.51.100.99:4000"), &hello, now);
    assert!(drain(&mut t.k.relay).is_empty(), "no answer to a stranger");
    assert_eq!(trunk_snap(&t.k).drops[DropReason::WrongSource as usize], 1);
    // The real trunk still connects; the stranger was reported (once).
    let stranger = addr("198.51.100.99:4000");
    assert!(matches!(
        t.pump(now).as_slice(),
        [
            RelayEvent::TrunkUnsignaledSource { from },
            RelayEvent::TrunkConnected { .. }
        ] if *from == stranger
    ));
}

#[test]
fn the_client_hello_is_retransmitted_from_poll_timeout_until_the_trunk_answers() {
    let mut t = dtls_trunk(DtlsRole::Client, None);
    // The first ClientHello is lost.
    let lost = drain(&mut t.k.relay);
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].2[0], 22, "a DTLS handshake record");
    let deadline = t.k.relay.poll_timeout().expect("a retransmission timer");
    assert!(deadline < t.k.t0 + CallRelay::DEFAULT_MEDIA_TIMEOUT);
    t.k.relay.handle_timeout(deadline - ms(1));
    assert!(drain(&mut t.k.relay).is_empty(), "not before the deadline");
    t.k.relay.handle_timeout(deadline);
    let again = drain(&mut t.k.relay);
    assert_eq!(again.len(), 1, "the ClientHello again");
    for (_, _, d) in again {
        let _ = t.peer.handle_datagram(deadline, &d);
    }
    assert!(matches!(
        t.pump(deadline).as_slice(),
        [RelayEvent::TrunkConnected { .. }]
    ));
}

#[test]
fn a_re_invite_with_the_same_certificate_keeps_the_association() {
    let mut t = dtls_trunk(DtlsRole::Server, None);
    let now = t.k.t0 + ms(5);
    assert!(matches!(
        t.pump(now).as_slice(),
        [RelayEvent::TrunkConnected { .. }]
    ));
    let (mut trunk_tx, _) = t.srtp.take().unwrap();
    t.re_offer(addr(TRUNK), DtlsRole::Server, now);
    // Still keyed: the trunk's packets decrypt with the same keys.
    let pkt = protect(&mut trunk_tx, &rtp_packet(PCMU, 70, 0, 0x71, 0x22));
    t.k.relay
        .handle_datagram(LegId::TrunkRtp, addr(TRUNK), &pkt, now);
    assert_eq!(drain(&mut t.k.relay).len(), 1);
}

#[test]
fn a_move_to_another_address_starts_a_new_association() {
    let mut t = dtls_trunk(DtlsRole::Client, None);
    let now = t.k.t0 + ms(5);
    assert!(matches!(
        t.pump(now).as_slice(),
        [RelayEvent::TrunkConnected { .. }]
    ));
    let moved = addr("192.0.2.10:30100");
    t.re_offer(moved, DtlsRole::Client, now);
    // A fresh ClientHello to the new address, and no keys until it is done.
    let out = drain(&mut t.k.relay);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].0, out[0].1), (LegId::TrunkRtp, moved));
    assert_eq!(out[0].2[0], 22);
    assert!(t.k.relay.trunk.srtp.is_none());
}
