//! `CallRelay` and DTMF, on the explicit clock of the relay tests: events
//! toward the trunk continue the browser's stream (SSRC, sequence, clock),
//! and the trunk's events are reported once each.

use super::tests::*;
use super::*;
use crate::media::rewrite::{parse_rtp, RtpFields};
use crate::types::DtmfDigit;

const TE_TRUNK: u8 = 101;
const TE_BROWSER: u8 = 126;
const TRUNK: &str = "192.0.2.10:30000";

fn te(browser: Option<u8>) -> TelephoneEvent {
    TelephoneEvent {
        trunk: PayloadType(TE_TRUNK),
        browser: browser.map(PayloadType),
        clock_rate: 8000,
    }
}

fn digit(c: char) -> DtmfDigit {
    DtmfDigit::from_char(c).unwrap()
}

/// What the trunk received, decrypted: `(fields, payload)`.
fn to_trunk(k: &mut Keyed) -> Vec<(RtpFields, Vec<u8>)> {
    drain(&mut k.relay)
        .into_iter()
        .filter(|(leg, _, _)| *leg == LegId::TrunkRtp)
        .map(|(_, _, data)| {
            let plain = unprotect(k.trunk_rx.as_mut().unwrap(), &data);
            let f = parse_rtp(&plain).unwrap();
            (f, plain[f.header_len..].to_vec())
        })
        .collect()
}

/// Browser PCMU every 20 ms from `t0`, seq 100+, ts 160 per packet;
/// digits asked for at 100 ms; the relay's timers run on a 10 ms tick.
fn play(k: &mut Keyed, digits: &str, until_ms: u64) -> Vec<(RtpFields, Vec<u8>)> {
    let mut sent = Vec::new();
    let mut voice: u16 = 0;
    for tick in 0..=until_ms / 10 {
        let now = k.t0 + ms(tick * 10);
        if tick == 10 {
            for c in digits.chars() {
                k.relay.send_dtmf(Toward::Trunk, digit(c), now).unwrap();
            }
        }
        if k.relay.poll_timeout().is_some_and(|t| t <= now) {
            k.relay.handle_timeout(now);
        }
        if tick % 2 == 0 {
            let pkt = protect(
                &mut k.browser_tx,
                &rtp_packet(PCMU, 100 + voice, 160 * u32::from(voice), 0xB1, 0x11),
            );
            voice += 1;
            k.relay
                .handle_datagram(LegId::Browser, addr(BROWSER), &pkt, now);
        }
        sent.extend(to_trunk(k));
    }
    sent
}

#[test]
fn events_continue_the_voice_stream_toward_the_trunk() {
    let mut k = keyed(true, None);
    k.relay.telephone_event = Some(te(Some(TE_BROWSER)));
    let sent = play(&mut k, "5#", 900);

    // One stream: our SSRC, sequence numbers without gap or repeat.
    assert!(sent.iter().all(|(f, _)| f.ssrc == Ssrc(0x7070)));
    for pair in sent.windows(2) {
        assert_eq!(
            pair[1].0.sequence,
            pair[0].0.sequence.wrapping_add(1),
            "{:?}",
            sent.iter()
                .map(|(f, _)| (f.sequence, f.payload_type))
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(sent[0].0.sequence, 100);

    let events: Vec<_> = sent
        .iter()
        .enumerate()
        .filter(|(_, (f, _))| f.payload_type == TE_TRUNK)
        .collect();
    assert_eq!(events.len(), 8, "two digits, four packets each");
    for (n, (code, ts)) in [(5u8, 800u32), (11, 2400)].into_iter().enumerate() {
        let group = &events[n * 4..n * 4 + 4];
        let view: Vec<_> = group
            .iter()
            .map(|(_, (f, p))| {
                (
                    f.timestamp,
                    f.marker,
                    p[0],
                    p[1] & 0x80 != 0,
                    u16::from_be_bytes([p[2], p[3]]),
                )
            })
            .collect();
        // At 100 ms the voice clock stands at 800 (PCMU, 8 kHz); the second
        // digit starts 200 ms later. One timestamp per event, marker on
        // the first packet, E bit on the last three, 50 ms updates.
        assert_eq!(
            view,
            vec![
                (ts, true, code, false, 400),
                (ts, false, code, true, 800),
                (ts, false, code, true, 800),
                (ts, false, code, true, 800),
            ]
        );
        // The voice is muted while the event plays.
        let (first, last) = (group[0].0, group[3].0);
        assert!(sent[first..=last]
            .iter()
            .all(|(f, _)| f.payload_type == TE_TRUNK));
    }
    // Voice goes on between and after the digits.
    let after = &sent[events[7].0 + 1..];
    assert!(after.len() > 10 && after.iter().all(|(f, _)| f.payload_type == PCMU));
    let between = &sent[events[3].0 + 1..events[4].0];
    assert!(!between.is_empty() && between.iter().all(|(f, _)| f.payload_type == PCMU));
    // Muted voice (every 20 ms while an event's 150 ms of packets run:
    // 8 per digit) is neither forwarded nor a drop.
    let b = k.counters.browser.snapshot();
    assert_eq!(b.drops.iter().sum::<u64>(), 0);
    assert_eq!(b.packets_in, 46);
    let voice_out = sent.iter().filter(|(f, _)| f.payload_type == PCMU).count();
    assert_eq!(voice_out, 46 - 16);
}

#[test]
fn a_digit_before_any_voice_starts_the_stream() {
    let mut k = keyed(false, None);
    k.relay.telephone_event = Some(te(None));
    let now = k.t0;
    k.relay.send_dtmf(Toward::Trunk, digit('1'), now).unwrap();
    assert_eq!(k.relay.poll_timeout(), Some(now));
    let mut sent = Vec::new();
    for tick in 0..=20 {
        let now = k.t0 + ms(tick * 10);
        k.relay.handle_timeout(now);
        sent.extend(drain(&mut k.relay).into_iter().map(|(_, _, d)| d));
    }
    assert_eq!(sent.len(), 4);
    let fields: Vec<_> = sent.iter().map(|d| parse_rtp(d).unwrap()).collect();
    assert!(fields
        .iter()
        .all(|f| f.ssrc == Ssrc(0x7070) && f.payload_type == TE_TRUNK));
    for pair in fields.windows(2) {
        assert_eq!(pair[1].sequence, pair[0].sequence.wrapping_add(1));
        assert_eq!(pair[1].timestamp, pair[0].timestamp);
    }
    // The browser's first packet continues that stream.
    let now = k.t0 + ms(300);
    let pkt = protect(&mut k.browser_tx, &rtp_packet(PCMU, 5000, 99, 0xB1, 0));
    k.relay
        .handle_datagram(LegId::Browser, addr(BROWSER), &pkt, now);
    let out = drain(&mut k.relay);
    let f = parse_rtp(&out[0].2).unwrap();
    assert_eq!(f.sequence, fields[3].sequence.wrapping_add(1));
    assert!(f.marker);
}

#[test]
fn digits_are_refused_without_telephone_event_or_after_the_end() {
    let mut k = keyed(true, None);
    assert_eq!(
        k.relay.send_dtmf(Toward::Trunk, digit('1'), k.t0),
        Err(DtmfRefused::NotNegotiated)
    );
    k.relay.telephone_event = Some(te(None));
    for _ in 0..crate::media::dtmf::MAX_QUEUED {
        k.relay.send_dtmf(Toward::Trunk, digit('1'), k.t0).unwrap();
    }
    assert_eq!(
        k.relay.send_dtmf(Toward::Trunk, digit('1'), k.t0),
        Err(DtmfRefused::QueueFull)
    );
    k.relay.close(k.t0);
    assert_eq!(
        k.relay.send_dtmf(Toward::Trunk, digit('1'), k.t0),
        Err(DtmfRefused::Stopped)
    );
}

/// The trunk's telephone-events: `(timestamp, code, end)` per packet.
fn trunk_events(k: &mut Keyed, packets: &[(u32, u8, bool)]) -> (Vec<char>, Vec<Vec<u8>>) {
    let mut digits = Vec::new();
    let mut to_browser = Vec::new();
    for (i, &(ts, code, end)) in packets.iter().enumerate() {
        let now = k.t0 + ms(20 * i as u64);
        let mut plain = rtp_packet(TE_TRUNK, 7000 + i as u16, ts, 0x71, 0);
        plain.truncate(12);
        plain.extend_from_slice(&[code, u8::from(end) << 7 | 10, 0x01, 0x40]);
        let pkt = protect(k.trunk_tx.as_mut().unwrap(), &plain);
        k.relay
            .handle_datagram(LegId::TrunkRtp, addr(TRUNK), &pkt, now);
        while let Some(event) = k.relay.poll_event() {
            if let RelayEvent::Dtmf { digit } = event {
                digits.push(digit.as_char());
            }
        }
        for (_, _, data) in drain(&mut k.relay) {
            to_browser.push(unprotect(&mut k.browser_rx, &data));
        }
    }
    (digits, to_browser)
}

const TRUNK_EVENTS: [(u32, u8, bool); 8] = [
    (1000, 7, false),
    (1000, 7, false),
    (1000, 7, true),
    (1000, 7, true),
    (1000, 7, true),
    (3000, 7, false),
    (3000, 7, true),
    (5000, 10, true),
];

#[test]
fn trunk_events_are_reported_once_each_and_relayed() {
    let mut k = keyed(true, None);
    k.relay.telephone_event = Some(te(Some(TE_BROWSER)));
    let (digits, to_browser) = trunk_events(&mut k, &TRUNK_EVENTS);
    assert_eq!(digits, vec!['7', '7', '*']);
    // Every packet still reaches the browser, under its payload type.
    assert_eq!(to_browser.len(), 8);
    assert!(to_browser
        .iter()
        .all(|p| parse_rtp(p).unwrap().payload_type == TE_BROWSER));
}

#[test]
fn trunk_events_without_a_browser_telephone_event_are_only_reported() {
    let mut k = keyed(true, None);
    k.relay.telephone_event = Some(te(None));
    let (digits, to_browser) = trunk_events(&mut k, &TRUNK_EVENTS);
    assert_eq!(digits, vec!['7', '7', '*']);
    assert!(to_browser.is_empty());
    assert_eq!(trunk_snap(&k).drops.iter().sum::<u64>(), 0);
}

#[test]
fn a_re_offer_sets_the_telephone_event_the_call_now_has() {
    let mut k = keyed(true, None);
    k.relay.telephone_event = Some(te(Some(TE_BROWSER)));
    let trunk = TrunkLegParams {
        remote_rtp: addr(TRUNK),
        remote_rtcp: None,
        crypto: TrunkCrypto::Plain,
        ssrcs: vec![],
        media_source: crate::types::MediaSource::Signaled,
    };
    let update = |map: Vec<(PayloadType, PayloadType, u32)>, te| TrunkUpdate {
        trunk: trunk.clone(),
        payload_map: map,
        telephone_event: te,
    };
    // The trunk renumbers its telephone-event.
    let renumbered = TelephoneEvent {
        trunk: PayloadType(100),
        ..te(Some(TE_BROWSER))
    };
    k.relay.update_trunk(
        update(
            vec![
                (PayloadType(PCMU), PayloadType(PCMU), 8000),
                (PayloadType(TE_BROWSER), PayloadType(100), 8000),
            ],
            Some(renumbered),
        ),
        k.t0,
    );
    assert_eq!(k.relay.telephone_event, Some(renumbered));
    k.relay
        .send_dtmf(Toward::Trunk, digit('1'), k.t0)
        .expect("a digit toward the trunk");
    assert!(k.relay.dtmf_to_trunk.is_some());
    // A codec change moves the browser's telephone-event to another number
    // and clock (Opus's 48 kHz): the browser's PT is not looked up in the
    // old numbers, and the digit sender of the old clock is gone.
    let wideband = TelephoneEvent {
        trunk: PayloadType(100),
        browser: Some(PayloadType(110)),
        clock_rate: 48_000,
    };
    k.relay.update_trunk(
        update(
            vec![
                (PayloadType(111), PayloadType(96), 48_000),
                (PayloadType(110), PayloadType(100), 48_000),
            ],
            Some(wideband),
        ),
        k.t0,
    );
    assert_eq!(k.relay.telephone_event, Some(wideband));
    assert!(k.relay.dtmf_to_trunk.is_none());
    // The trunk drops telephone-event.
    k.relay.update_trunk(
        update(vec![(PayloadType(111), PayloadType(96), 48_000)], None),
        k.t0,
    );
    assert_eq!(k.relay.telephone_event, None);
    assert_eq!(
        k.relay.send_dtmf(Toward::Trunk, digit('2'), k.t0),
        Err(DtmfRefused::NotNegotiated)
    );
}

#[test]
fn digits_toward_the_browser_continue_its_stream() {
    let mut k = keyed(true, None);
    k.relay.telephone_event = Some(te(Some(TE_BROWSER)));
    let mut sent = Vec::new();
    for tick in 0..=60u64 {
        let now = k.t0 + ms(tick * 10);
        if tick == 10 {
            k.relay.send_dtmf(Toward::Browser, digit('3'), now).unwrap();
        }
        if k.relay.poll_timeout().is_some_and(|t| t <= now) {
            k.relay.handle_timeout(now);
        }
        if tick % 2 == 0 {
            let i = (tick / 2) as u16;
            let pkt = protect(
                k.trunk_tx.as_mut().unwrap(),
                &rtp_packet(PCMU, 9000 + i, 160 * u32::from(i), 0x71, 0x22),
            );
            k.relay
                .handle_datagram(LegId::TrunkRtp, addr(TRUNK), &pkt, now);
        }
        for (leg, _, data) in drain(&mut k.relay) {
            assert_eq!(leg, LegId::Browser);
            sent.push(parse_rtp(&unprotect(&mut k.browser_rx, &data)).unwrap());
        }
    }
    assert!(sent.iter().all(|f| f.ssrc == Ssrc(0xB0B0)));
    for pair in sent.windows(2) {
        assert_eq!(pair[1].sequence, pair[0].sequence.wrapping_add(1));
    }
    let events: Vec<_> = sent
        .iter()
        .filter(|f| f.payload_type == TE_BROWSER)
        .map(|f| (f.timestamp, f.marker))
        .collect();
    assert_eq!(
        events,
        vec![(800, true), (800, false), (800, false), (800, false)]
    );
    // Trunk voice muted meanwhile (8 packets), then on again.
    let voice = sent.iter().filter(|f| f.payload_type == PCMU).count();
    assert_eq!(voice, 31 - 8);

    // A browser without telephone-event is not played to.
    k.relay.telephone_event = Some(te(None));
    assert_eq!(
        k.relay.send_dtmf(Toward::Browser, digit('3'), k.t0),
        Err(DtmfRefused::NotNegotiated)
    );
}

#[test]
fn the_browsers_own_events_are_relayed_under_the_trunks_number() {
    // RTCDTMFSender: the browser sends telephone-event itself, PT 126 in
    // its own stream; the trunk gets PT 101 in ours, payload untouched, and
    // nothing is reported (digits from the browser are not news to it).
    let mut k = keyed(true, None);
    k.relay.telephone_event = Some(te(Some(TE_BROWSER)));
    let mut plain = rtp_packet(TE_BROWSER, 300, 4000, 0xB1, 0);
    plain.truncate(12);
    plain[1] |= 0x80;
    plain.extend_from_slice(&[9, 10, 0x01, 0x40]);
    let pkt = protect(&mut k.browser_tx, &plain);
    k.relay
        .handle_datagram(LegId::Browser, addr(BROWSER), &pkt, k.t0);
    let sent = to_trunk(&mut k);
    assert_eq!(sent.len(), 1);
    let (f, payload) = &sent[0];
    assert_eq!(
        (f.payload_type, f.marker, f.ssrc),
        (TE_TRUNK, true, Ssrc(0x7070))
    );
    assert_eq!(payload, &vec![9, 10, 0x01, 0x40]);
    assert!(k.relay.poll_event().is_none());
}
