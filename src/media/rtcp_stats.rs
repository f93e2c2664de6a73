//! Loss, jitter and round-trip time per leg, read from the RTCP the relay
//! forwards (RFC 3550 6.4): a report block that arrives on a leg describes
//! what that peer received from us, so it is that leg's quality. The
//! round trip of a leg is the time from our forwarding a sender report to
//! that peer until its receiver report naming it (LSR) comes back, less the
//! peer's delay (DLSR).
//!
//! Sans-IO and cheap: it looks at RTCP only (a packet every few seconds),
//! after SRTCP authentication, and writes the figures into the call's
//! counters for the stats page.

use super::counters::{CallCounters, Leg};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

const RTCP_SR: u8 = 200;
const RTCP_RR: u8 = 201;
/// Sender reports remembered per leg for the round trip (RTCP comes every
/// few seconds; a report names the latest SR it received).
const SR_MEMORY: usize = 8;

#[derive(Debug)]
pub struct RtcpWatch {
    clock_rate: u32,
    /// Per destination leg (browser, trunk): SRs we forwarded to it, by
    /// the middle 32 bits of their NTP time, with when.
    forwarded_sr: [VecDeque<(u32, Instant)>; 2],
}

/// One report block's figures (RFC 3550 6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReportBlock {
    fraction_lost: u8,
    jitter: u32,
    lsr: u32,
    dlsr: u32,
}

fn leg_index(leg: Leg) -> usize {
    match leg {
        Leg::Browser => 0,
        Leg::Trunk => 1,
    }
}

fn other(leg: Leg) -> Leg {
    match leg {
        Leg::Browser => Leg::Trunk,
        Leg::Trunk => Leg::Browser,
    }
}

impl RtcpWatch {
    /// `clock_rate` of the call's audio codec (jitter is in its units).
    pub fn new(clock_rate: u32) -> Self {
        RtcpWatch {
            clock_rate: clock_rate.max(1),
            forwarded_sr: Default::default(),
        }
    }

    /// A plaintext compound RTCP packet that arrived on `from` and is being
    /// forwarded to the other leg.
    pub fn observe(&mut self, from: Leg, packet: &[u8], now: Instant, counters: &CallCounters) {
        let mut at = 0;
        while let Some(header) = packet.get(at..at + 4) {
            if header[0] >> 6 != 2 {
                return;
            }
            let count = usize::from(header[0] & 0x1f);
            let pt = header[1];
            let len = 4 * (usize::from(u16::from_be_bytes([header[2], header[3]])) + 1);
            let Some(sub) = packet.get(at..at + len) else {
                return;
            };
            let blocks_at = match pt {
                RTCP_SR => {
                    if let Some(ntp) = sub.get(10..14) {
                        let key = u32::from_be_bytes([ntp[0], ntp[1], ntp[2], ntp[3]]);
                        let sent = &mut self.forwarded_sr[leg_index(other(from))];
                        if sent.len() == SR_MEMORY {
                            sent.pop_front();
                        }
                        sent.push_back((key, now));
                    }
                    Some(28)
                }
                RTCP_RR => Some(8),
                _ => None,
            };
            if let Some(block) = blocks_at
                .filter(|_| count > 0)
                .and_then(|b| sub.get(b..b + 24))
                .map(parse_block)
            {
                self.report(from, block, now, counters);
            }
            at += len;
        }
    }

    fn report(&self, leg: Leg, block: ReportBlock, now: Instant, counters: &CallCounters) {
        let c = counters.leg(leg);
        let loss_ppm = u64::from(block.fraction_lost) * 1_000_000 / 256;
        let jitter_us = u64::from(block.jitter) * 1_000_000 / u64::from(self.clock_rate);
        let rtt = (block.lsr != 0)
            .then(|| {
                self.forwarded_sr[leg_index(leg)]
                    .iter()
                    .rev()
                    .find(|(key, _)| *key == block.lsr)
                    .map(|(_, sent)| {
                        // DLSR is in units of 1/65536 s.
                        let dlsr = Duration::from_micros(u64::from(block.dlsr) * 1_000_000 / 65536);
                        now.saturating_duration_since(*sent).saturating_sub(dlsr)
                    })
            })
            .flatten();
        c.set_rtcp(loss_ppm, jitter_us, rtt.map(|d| d.as_micros() as u64));
    }
}

fn parse_block(b: &[u8]) -> ReportBlock {
    let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    ReportBlock {
        fraction_lost: b[4],
        jitter: word(12),
        lsr: word(16),
        dlsr: word(20),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sr(ntp_middle: u32) -> Vec<u8> {
        let mut p = vec![0x80, RTCP_SR, 0, 6];
        p.extend_from_slice(&0x1111u32.to_be_bytes()); // sender SSRC
        p.extend_from_slice(&[0, 0]); // NTP seconds, high half
        p.extend_from_slice(&ntp_middle.to_be_bytes());
        p.extend_from_slice(&[0, 0]); // NTP fraction, low half
        p.extend_from_slice(&[0; 12]); // RTP ts, packet and octet counts
        p
    }

    fn rr(fraction: u8, jitter: u32, lsr: u32, dlsr: u32) -> Vec<u8> {
        let mut p = vec![0x81, RTCP_RR, 0, 7];
        p.extend_from_slice(&0x2222u32.to_be_bytes());
        p.extend_from_slice(&0x1111u32.to_be_bytes()); // about
        p.extend_from_slice(&[fraction, 0, 0, 3]); // fraction, cumulative
        p.extend_from_slice(&100u32.to_be_bytes()); // highest seq
        p.extend_from_slice(&jitter.to_be_bytes());
        p.extend_from_slice(&lsr.to_be_bytes());
        p.extend_from_slice(&dlsr.to_be_bytes());
        p
    }

    #[test]
    fn a_receiver_report_gives_its_legs_loss_jitter_and_round_trip() {
        let counters = CallCounters::default();
        let mut watch = RtcpWatch::new(8000);
        let t0 = Instant::now();
        // The trunk's SR is forwarded to the browser at t0...
        watch.observe(Leg::Trunk, &sr(0xABCD_0001), t0, &counters);
        // ...whose RR about it comes back 330 ms later, having held it 250 ms.
        let dlsr = 65536 / 4; // 250 ms
        watch.observe(
            Leg::Browser,
            &rr(64, 80, 0xABCD_0001, dlsr),
            t0 + Duration::from_millis(330),
            &counters,
        );
        let (loss, jitter, rtt) = counters.browser.rtcp();
        assert_eq!(loss, Some(250_000), "64/256 lost");
        assert_eq!(jitter, Some(10_000), "80 samples at 8 kHz = 10 ms");
        assert_eq!(rtt, Some(80_000), "330 ms - 250 ms held");
        assert_eq!(counters.trunk.rtcp(), (None, None, None));
    }

    #[test]
    fn unknown_lsr_and_garbage_give_no_round_trip_and_no_panic() {
        let counters = CallCounters::default();
        let mut watch = RtcpWatch::new(48000);
        let now = Instant::now();
        watch.observe(Leg::Trunk, &rr(0, 0, 0x1234, 0), now, &counters);
        assert_eq!(counters.trunk.rtcp(), (Some(0), Some(0), None));
        for junk in [&[][..], &[0x80], &[0x80, 200, 0, 50], &[0x00, 201, 0, 0]] {
            watch.observe(Leg::Trunk, junk, now, &counters);
        }
    }
}
