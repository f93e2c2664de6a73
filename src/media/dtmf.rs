//! DTMF as RFC 4733 telephone-events, sans-IO: what to send and when
//! ([`DtmfSender`]), and which received packets start a new event
//! ([`DtmfReceiver`]).
//!
//! The sender only schedules: it says "now an event packet with this code,
//! duration, marker and E bit"; the relay gives it the stream's SSRC,
//! sequence number and timestamp and encrypts it (see
//! `CallRelay::send_dtmf`), so the events continue the voice stream toward
//! the trunk instead of starting one of their own.
//!
//! Per digit (RFC 4733 2.5.1): one timestamp for the whole event, taken at
//! its start; the marker bit on the first packet; a packet every `interval`
//! whose duration (in the telephone-event clock) grows to the tone length;
//! the final packet, with the E bit, sent three times `interval` apart with
//! the same duration (2.5.1.4). Digits asked for while one plays wait in a
//! queue and start `gap` after the previous tone ended (and never before its
//! last end packet went out).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::types::DtmfDigit;

/// Digits waiting at most; more are refused (a browser cannot type faster
/// than they play, a script that tries is told so).
pub const MAX_QUEUED: usize = 64;

/// How a digit is played.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfTiming {
    /// Tone length (the event's final duration).
    pub tone: Duration,
    /// Silence between the end of one tone and the start of the next.
    pub gap: Duration,
    /// Time between packets of one event (RFC 4733 suggests 50 ms).
    pub interval: Duration,
}

impl Default for DtmfTiming {
    fn default() -> Self {
        DtmfTiming {
            tone: Duration::from_millis(100),
            gap: Duration::from_millis(100),
            interval: Duration::from_millis(50),
        }
    }
}

/// One telephone-event packet to send (RFC 4733 2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPacket {
    pub digit: DtmfDigit,
    /// First packet of the event: a new timestamp, and the marker bit.
    pub start: bool,
    /// The E bit (the last three packets of the event).
    pub end: bool,
    /// Duration so far, in units of the telephone-event clock.
    pub duration: u16,
}

impl EventPacket {
    /// The 4-byte payload: event, E|R|volume, duration. Volume 10 (-10 dBm0),
    /// what most senders use.
    pub fn payload(&self) -> [u8; 4] {
        let d = self.duration.to_be_bytes();
        [
            self.digit.event(),
            (u8::from(self.end) << 7) | 10,
            d[0],
            d[1],
        ]
    }
}

/// The event being played.
#[derive(Debug, Clone, Copy)]
struct Playing {
    digit: DtmfDigit,
    started: Instant,
    /// Packets of this event sent so far.
    sent: u32,
    /// End packets sent so far (three in all).
    ends: u8,
}

/// Schedules the telephone-event packets of queued digits.
#[derive(Debug)]
pub struct DtmfSender {
    timing: DtmfTiming,
    /// The telephone-event clock rate (8000 or 48000).
    clock_rate: u32,
    queue: VecDeque<DtmfDigit>,
    playing: Option<Playing>,
    /// When the next packet is due (the next of `playing`, or the start of
    /// the next queued digit).
    next_at: Option<Instant>,
    /// The earliest start of the next digit (the previous tone's end + gap).
    not_before: Option<Instant>,
}

impl DtmfSender {
    pub fn new(clock_rate: u32, timing: DtmfTiming) -> Self {
        DtmfSender {
            timing,
            clock_rate,
            queue: VecDeque::new(),
            playing: None,
            next_at: None,
            not_before: None,
        }
    }

    /// Queues `digit`; `false` when the queue is full (the digit is not
    /// taken).
    pub fn push(&mut self, digit: DtmfDigit, now: Instant) -> bool {
        if self.queue.len() >= MAX_QUEUED {
            return false;
        }
        self.queue.push_back(digit);
        if self.next_at.is_none() {
            self.next_at = Some(self.not_before.map_or(now, |t| t.max(now)));
        }
        true
    }

    /// Whether an event is being played (its packets not all sent): the
    /// relay mutes the voice it forwards meanwhile.
    pub fn is_playing(&self) -> bool {
        self.playing.is_some()
    }

    /// When [`poll_packet`](Self::poll_packet) has the next packet.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_at
    }

    /// The packet due at `now`, if any; call until `None`.
    pub fn poll_packet(&mut self, now: Instant) -> Option<EventPacket> {
        let due = self.next_at?;
        if now < due {
            return None;
        }
        let interval = self.timing.interval;
        let mut playing = match self.playing {
            Some(p) => p,
            None => {
                let Some(digit) = self.queue.pop_front() else {
                    self.next_at = None;
                    return None;
                };
                Playing {
                    digit,
                    // The schedule runs from when the digit was due, not from
                    // when the driver woke: late wakeups do not stretch it.
                    started: due,
                    sent: 0,
                    ends: 0,
                }
            }
        };
        let start = playing.sent == 0;
        let elapsed = interval.saturating_mul(playing.sent.saturating_add(1));
        let end = elapsed >= self.timing.tone;
        let duration = self.ticks(elapsed.min(self.timing.tone));
        playing.sent = playing.sent.saturating_add(1);
        if end {
            playing.ends += 1;
        }
        let packet = EventPacket {
            digit: playing.digit,
            start,
            end,
            duration,
        };
        let next = due + interval;
        if playing.ends >= 3 {
            self.playing = None;
            let tone_end = playing.started + self.timing.tone;
            // Not before the last end packet's slot has passed either.
            let not_before = (tone_end + self.timing.gap).max(next);
            self.not_before = Some(not_before);
            self.next_at = (!self.queue.is_empty()).then_some(not_before);
        } else {
            self.playing = Some(playing);
            self.next_at = Some(next);
        }
        Some(packet)
    }

    /// `d` in telephone-event clock ticks, saturating at the 16-bit field
    /// (8.19 s at 8000 Hz: far beyond any tone we play).
    fn ticks(&self, d: Duration) -> u16 {
        let ticks = d.as_micros() * u128::from(self.clock_rate) / 1_000_000;
        u16::try_from(ticks).unwrap_or(u16::MAX)
    }
}

/// Tells the first packet of each received event from its updates and
/// retransmissions: every packet of one event carries the event's start
/// timestamp (RFC 4733 2.5.2.1), so a new timestamp (or a new event code at
/// the same one) is a new digit.
#[derive(Debug, Default)]
pub struct DtmfReceiver {
    last: Option<(u32, u8)>,
}

impl DtmfReceiver {
    /// `payload` of a telephone-event packet with RTP timestamp `timestamp`:
    /// the digit if this packet starts a new event. Short payloads and codes
    /// that are not digits give `None`.
    pub fn on_packet(&mut self, timestamp: u32, payload: &[u8]) -> Option<DtmfDigit> {
        let code = *payload.first()?;
        if payload.len() < 4 {
            return None;
        }
        if self.last == Some((timestamp, code)) {
            return None;
        }
        self.last = Some((timestamp, code));
        DtmfDigit::from_event(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digit(c: char) -> DtmfDigit {
        DtmfDigit::from_char(c).unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Runs the sender from `t0` on a 10 ms tick for `span`, collecting
    /// `(ms since t0, packet)`.
    fn run(s: &mut DtmfSender, t0: Instant, span: u64) -> Vec<(u64, EventPacket)> {
        let mut out = Vec::new();
        for tick in 0..=span / 10 {
            let now = t0 + ms(tick * 10);
            while let Some(p) = s.poll_packet(now) {
                out.push((tick * 10, p));
            }
        }
        out
    }

    #[test]
    fn one_digit_is_four_packets_with_three_ends() {
        let t0 = Instant::now();
        let mut s = DtmfSender::new(8000, DtmfTiming::default());
        assert_eq!(s.poll_timeout(), None);
        assert!(s.push(digit('5'), t0));
        assert_eq!(s.poll_timeout(), Some(t0));
        let packets = run(&mut s, t0, 1000);
        let view: Vec<_> = packets
            .iter()
            .map(|(t, p)| (*t, p.start, p.end, p.duration))
            .collect();
        assert_eq!(
            view,
            vec![
                (0, true, false, 400),
                (50, false, true, 800),
                (100, false, true, 800),
                (150, false, true, 800),
            ]
        );
        assert!(packets.iter().all(|(_, p)| p.digit == digit('5')));
        assert_eq!(packets[1].1.payload(), [5, 0x80 | 10, 0x03, 0x20]);
        assert_eq!(packets[0].1.payload(), [5, 10, 0x01, 0x90]);
        assert!(!s.is_playing());
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn queued_digits_follow_after_tone_and_gap() {
        let t0 = Instant::now();
        let mut s = DtmfSender::new(8000, DtmfTiming::default());
        for c in ['1', '#', 'd'] {
            assert!(s.push(digit(c), t0));
        }
        let packets = run(&mut s, t0, 2000);
        let starts: Vec<_> = packets
            .iter()
            .filter(|(_, p)| p.start)
            .map(|(t, p)| (*t, p.digit.as_char()))
            .collect();
        // 100 ms tone + 100 ms gap: a digit every 200 ms.
        assert_eq!(starts, vec![(0, '1'), (200, '#'), (400, 'D')]);
        assert_eq!(packets.len(), 12);
        assert_eq!(packets.iter().filter(|(_, p)| p.end).count(), 9);
    }

    #[test]
    fn a_digit_pushed_during_the_gap_waits_for_it() {
        let t0 = Instant::now();
        let mut s = DtmfSender::new(8000, DtmfTiming::default());
        s.push(digit('1'), t0);
        run(&mut s, t0, 160);
        // Asked for at 170 ms: the gap runs to 200 ms.
        s.push(digit('2'), t0 + ms(170));
        assert_eq!(s.poll_timeout(), Some(t0 + ms(200)));
        // Asked for long after: at once.
        let mut s = DtmfSender::new(8000, DtmfTiming::default());
        s.push(digit('1'), t0);
        run(&mut s, t0, 160);
        s.push(digit('2'), t0 + ms(900));
        assert_eq!(s.poll_timeout(), Some(t0 + ms(900)));
    }

    #[test]
    fn durations_follow_the_clock_and_longer_tones() {
        let t0 = Instant::now();
        let timing = DtmfTiming {
            tone: ms(240),
            ..DtmfTiming::default()
        };
        let mut s = DtmfSender::new(48000, timing);
        s.push(digit('9'), t0);
        let durations: Vec<_> = run(&mut s, t0, 1000)
            .iter()
            .map(|(_, p)| (p.duration, p.end))
            .collect();
        assert_eq!(
            durations,
            vec![
                (2400, false),
                (4800, false),
                (7200, false),
                (9600, false),
                (11520, true),
                (11520, true),
                (11520, true),
            ]
        );
    }

    #[test]
    fn the_queue_is_bounded() {
        let t0 = Instant::now();
        let mut s = DtmfSender::new(8000, DtmfTiming::default());
        for _ in 0..MAX_QUEUED {
            assert!(s.push(digit('0'), t0));
        }
        assert!(!s.push(digit('0'), t0));
    }

    #[test]
    fn receiver_reports_each_event_once() {
        let mut r = DtmfReceiver::default();
        let packet = |code: u8, end: bool, dur: u16| {
            let d = dur.to_be_bytes();
            [code, u8::from(end) << 7, d[0], d[1]]
        };
        let mut seen = Vec::new();
        for (ts, p) in [
            (1000, packet(1, false, 400)),
            (1000, packet(1, false, 800)),
            (1000, packet(1, true, 800)),
            (1000, packet(1, true, 800)),
            (3000, packet(11, false, 160)),
            (3000, packet(11, true, 800)),
            // Same digit again: a new event, a new timestamp.
            (5000, packet(11, false, 160)),
            // Not a digit (flash): nothing.
            (7000, packet(16, false, 160)),
        ] {
            seen.extend(r.on_packet(ts, &p).map(|d| d.as_char()));
        }
        assert_eq!(seen, vec!['1', '#', '#']);
        assert_eq!(r.on_packet(9000, &[3, 0]), None, "short payload");
        assert_eq!(r.on_packet(9000, &[]), None);
    }

    #[test]
    fn digits_round_trip() {
        for (i, c) in "0123456789*#ABCD".chars().enumerate() {
            let d = DtmfDigit::from_char(c).unwrap();
            assert_eq!(usize::from(d.event()), i);
            assert_eq!(d.as_char(), c);
            assert_eq!(DtmfDigit::from_event(d.event()), Some(d));
        }
        assert_eq!(DtmfDigit::from_char('a').map(|d| d.event()), Some(12));
        assert_eq!(DtmfDigit::from_char('E'), None);
        assert_eq!(DtmfDigit::from_char('é'), None);
        assert_eq!(DtmfDigit::from_event(16), None);
    }
}
