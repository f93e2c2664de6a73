//! Header rewriting between the legs, in place on the decrypted packet.
//!
//! Toward each side the gateway sends one continuous stream: a fixed output
//! SSRC per direction, sequence numbers that continue across a change of the
//! input SSRC, and timestamps that continue too (shifted by the arrival-time
//! gap times the clock rate, so the receiver's jitter buffer sees a plausible
//! pause rather than a jump). Payload types are mapped between the numbers
//! each side negotiated; a payload type outside the map is dropped.
//!
//! Only fixed-header fields are touched, so the packet never changes length
//! and no copy is needed. RTCP is rewritten minimally: the sender SSRC of
//! SR/RR/SDES, the SR's RTP timestamp, and the report blocks about the stream
//! the sender received from us; feedback and other types are removed because
//! the far side never negotiated them.

use std::time::Instant;

use super::counters::DropReason;
use crate::types::{PayloadType, Ssrc};

/// Which side a packet is going to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Toward {
    Browser,
    Trunk,
}

/// One negotiated codec (or telephone-event) as numbered on each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadMapping {
    pub browser: PayloadType,
    pub trunk: PayloadType,
    pub clock_rate: u32,
}

/// Payload type translation table. A handful of entries: linear search over
/// a small array beats hashing.
#[derive(Debug, Clone, Default)]
pub struct PayloadMap {
    entries: Vec<PayloadMapping>,
}

impl PayloadMap {
    /// From `(browser PT, trunk PT, clock rate)` triples, as in
    /// [`RelayParams::payload_map`](super::relay::RelayParams::payload_map).
    pub fn new(entries: &[(PayloadType, PayloadType, u32)]) -> Self {
        PayloadMap {
            entries: entries
                .iter()
                .map(|&(browser, trunk, clock_rate)| PayloadMapping {
                    browser,
                    trunk,
                    clock_rate,
                })
                .collect(),
        }
    }

    /// The output payload type and clock rate for input `pt` going `toward`.
    pub fn map(&self, toward: Toward, pt: u8) -> Option<(u8, u32)> {
        self.entries.iter().find_map(|e| {
            let (input, output) = match toward {
                Toward::Trunk => (e.browser, e.trunk),
                Toward::Browser => (e.trunk, e.browser),
            };
            (input.0 == pt).then_some((output.0, e.clock_rate))
        })
    }
}

/// The fixed-header fields of an RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpFields {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: Ssrc,
    /// Fixed header + CSRCs + header extension.
    pub header_len: usize,
}

/// Parses the RTP header (RFC 3550 5.1) with bounds checks; never panics.
pub fn parse_rtp(packet: &[u8]) -> Result<RtpFields, DropReason> {
    if packet.len() < 12 || packet[0] >> 6 != 2 {
        return Err(DropReason::Malformed);
    }
    let csrc_count = usize::from(packet[0] & 0x0f);
    let mut header_len = 12 + 4 * csrc_count;
    if packet[0] & 0x10 != 0 {
        let ext = packet
            .get(header_len + 2..header_len + 4)
            .ok_or(DropReason::Malformed)?;
        header_len += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    if header_len > packet.len() {
        return Err(DropReason::Malformed);
    }
    Ok(RtpFields {
        marker: packet[1] & 0x80 != 0,
        payload_type: packet[1] & 0x7f,
        sequence: u16::from_be_bytes([packet[2], packet[3]]),
        timestamp: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
        ssrc: Ssrc(u32::from_be_bytes([
            packet[8], packet[9], packet[10], packet[11],
        ])),
        header_len,
    })
}

/// The SSRC of an RTP packet (bytes 8..12, in clear also in SRTP), for the
/// SSRC pre-check before decryption.
pub fn rtp_ssrc(packet: &[u8]) -> Option<Ssrc> {
    let b = packet.get(8..12)?;
    Some(Ssrc(u32::from_be_bytes([b[0], b[1], b[2], b[3]])))
}

/// One direction's output stream: fixed SSRC, continuous sequence and
/// timestamp across input SSRC changes.
#[derive(Debug, Clone)]
pub struct StreamRewriter {
    out_ssrc: Ssrc,
    state: Option<StreamState>,
}

#[derive(Debug, Clone, Copy)]
struct StreamState {
    /// `None` while only packets of our own (DTMF) went out.
    in_ssrc: Option<Ssrc>,
    /// Added (wrapping) to the input sequence number.
    seq_delta: u16,
    /// Added (wrapping) to the input timestamp.
    ts_delta: u32,
    /// Highest output sequence number sent and its output timestamp.
    out_seq: u16,
    out_ts: u32,
    last_arrival: Instant,
}

impl StreamRewriter {
    pub fn new(out_ssrc: Ssrc) -> Self {
        StreamRewriter {
            out_ssrc,
            state: None,
        }
    }

    pub fn out_ssrc(&self) -> Ssrc {
        self.out_ssrc
    }

    /// The input SSRC currently mapped onto the output stream.
    pub fn in_ssrc(&self) -> Option<Ssrc> {
        self.state.and_then(|s| s.in_ssrc)
    }

    /// Changes the output SSRC; only meaningful before the first packet (the
    /// SSRC we announced in SDP).
    pub fn set_out_ssrc(&mut self, ssrc: Ssrc) {
        self.out_ssrc = ssrc;
    }

    fn deltas(&self) -> (u16, u32) {
        self.state.map_or((0, 0), |s| (s.seq_delta, s.ts_delta))
    }

    /// Rewrites `packet` (plaintext RTP, already parsed as `fields`) in place:
    /// payload type `out_pt` (marker bit kept), output SSRC, continuous
    /// sequence number and timestamp. `clock_rate` is the RTP clock of the
    /// payload type, used to turn the arrival gap into a timestamp gap when
    /// the input SSRC changes.
    pub fn rewrite(
        &mut self,
        packet: &mut [u8],
        fields: &RtpFields,
        out_pt: u8,
        clock_rate: u32,
        now: Instant,
    ) {
        let mut marker = fields.marker;
        let state = match self.state {
            // The first stream keeps its own numbering: nothing to continue.
            None => StreamState {
                in_ssrc: Some(fields.ssrc),
                seq_delta: 0,
                ts_delta: 0,
                out_seq: fields.sequence,
                out_ts: fields.timestamp,
                last_arrival: now,
            },
            Some(s) if s.in_ssrc == Some(fields.ssrc) => s,
            Some(s) => {
                // A new input stream: continue right after the last output
                // packet, in sequence and in time. At least one tick so the
                // timestamp moves forward even for back-to-back arrivals.
                let gap = now.saturating_duration_since(s.last_arrival);
                let ticks = (gap.as_secs_f64() * f64::from(clock_rate)).round();
                let ticks = if ticks >= 1.0 && ticks < f64::from(u32::MAX / 2) {
                    ticks as u32
                } else if ticks >= 1.0 {
                    u32::MAX / 2
                } else {
                    1
                };
                let next_seq = s.out_seq.wrapping_add(1);
                let next_ts = s.out_ts.wrapping_add(ticks);
                // Tell the receiver's jitter buffer to resynchronise.
                marker = true;
                StreamState {
                    in_ssrc: Some(fields.ssrc),
                    seq_delta: next_seq.wrapping_sub(fields.sequence),
                    ts_delta: next_ts.wrapping_sub(fields.timestamp),
                    out_seq: next_seq.wrapping_sub(1),
                    out_ts: next_ts,
                    last_arrival: now,
                }
            }
        };
        let out_seq = fields.sequence.wrapping_add(state.seq_delta);
        let out_ts = fields.timestamp.wrapping_add(state.ts_delta);
        let mut state = state;
        // Remember the newest packet only (reordered older ones don't move it).
        if (out_seq.wrapping_sub(state.out_seq) as i16) > 0 || self.state.is_none() {
            state.out_seq = out_seq;
            state.out_ts = out_ts;
        }
        state.last_arrival = now;
        self.state = Some(state);

        packet[1] = (u8::from(marker) << 7) | (out_pt & 0x7f);
        packet[2..4].copy_from_slice(&out_seq.to_be_bytes());
        packet[4..8].copy_from_slice(&out_ts.to_be_bytes());
        packet[8..12].copy_from_slice(&self.out_ssrc.0.to_be_bytes());
    }
}

impl StreamRewriter {
    /// The sequence number and timestamp for a packet the relay makes
    /// itself (a DTMF event) at `now`: the sequence right after the newest
    /// packet sent, later input packets shifted by one so the stream stays
    /// gapless; the timestamp where the stream's clock (`clock_rate`) stands
    /// now. Before any input packet the stream starts at random values (RFC
    /// 3550 5.1) and the first input stream continues it like an SSRC change.
    pub fn insert(&mut self, now: Instant, clock_rate: u32) -> (u16, u32) {
        let mut state = self.state.unwrap_or_else(|| StreamState {
            in_ssrc: None,
            seq_delta: 0,
            ts_delta: 0,
            out_seq: rand::random(),
            out_ts: rand::random(),
            last_arrival: now,
        });
        let gap = now.saturating_duration_since(state.last_arrival);
        // Saturates: a stream silent for hours gets a wrong but harmless
        // timestamp rather than an overflow.
        let ticks = u32::try_from(gap.as_micros() * u128::from(clock_rate) / 1_000_000)
            .unwrap_or(u32::MAX / 2);
        let ts = state.out_ts.wrapping_add(ticks);
        state.out_seq = state.out_seq.wrapping_add(1);
        state.seq_delta = state.seq_delta.wrapping_add(1);
        self.state = Some(state);
        (state.out_seq, ts)
    }

    /// An input packet of the current stream that is not forwarded (voice
    /// muted while a DTMF event plays): later packets shift back by one so
    /// the receiver sees no loss. Reordered older packets change nothing.
    pub fn suppress(&mut self, fields: &RtpFields) {
        let Some(state) = self.state.as_mut() else {
            return;
        };
        if state.in_ssrc != Some(fields.ssrc) {
            return;
        }
        let out = fields.sequence.wrapping_add(state.seq_delta);
        if (out.wrapping_sub(state.out_seq) as i16) > 0 {
            state.seq_delta = state.seq_delta.wrapping_sub(1);
        }
    }
}

const RTCP_SR: u8 = 200;
const RTCP_RR: u8 = 201;
const RTCP_SDES: u8 = 202;

/// Rewrites a plaintext compound RTCP packet in place and returns its new
/// length (0: nothing left to forward).
///
/// `same` is the rewriter of the direction the RTCP travels (its output SSRC
/// becomes the sender SSRC, its timestamp shift applies to the SR);
/// `opposite` is the other direction (report blocks about its output SSRC are
/// turned back into its input SSRC and sequence numbering). SR, RR and SDES
/// are kept; BYE (a source switch is not the end of our stream), feedback
/// (RTPFB/PSFB, never negotiated with the other side), XR and APP are removed.
pub fn rewrite_rtcp(
    packet: &mut [u8],
    same: &StreamRewriter,
    opposite: &StreamRewriter,
) -> Result<usize, DropReason> {
    let (_, ts_delta) = same.deltas();
    let (opp_seq_delta, _) = opposite.deltas();
    let opp_in = opposite.in_ssrc();
    let mut read = 0;
    let mut write = 0;
    while read < packet.len() {
        let header = packet.get(read..read + 4).ok_or(DropReason::Malformed)?;
        if header[0] >> 6 != 2 {
            return Err(DropReason::Malformed);
        }
        let count = usize::from(header[0] & 0x1f);
        let pt = header[1];
        let len = 4 * (usize::from(u16::from_be_bytes([header[2], header[3]])) + 1);
        if read + len > packet.len() {
            return Err(DropReason::Malformed);
        }
        if matches!(pt, RTCP_SR | RTCP_RR | RTCP_SDES) {
            let sub = &mut packet[read..read + len];
            let blocks_at = match pt {
                RTCP_SR => 28,
                RTCP_RR => 8,
                _ => 0,
            };
            if sub.len() < 8 || (blocks_at > 0 && sub.len() < blocks_at + 24 * count) {
                return Err(DropReason::Malformed);
            }
            if pt != RTCP_SDES || count > 0 {
                // SR/RR sender SSRC, or the first SDES chunk's SSRC (the sender's CNAME).
                sub[4..8].copy_from_slice(&same.out_ssrc().0.to_be_bytes());
            }
            if pt == RTCP_SR {
                let ts = u32::from_be_bytes([sub[16], sub[17], sub[18], sub[19]]);
                sub[16..20].copy_from_slice(&ts.wrapping_add(ts_delta).to_be_bytes());
            }
            if blocks_at > 0 {
                for block in sub[blocks_at..blocks_at + 24 * count].chunks_exact_mut(24) {
                    let ssrc = u32::from_be_bytes([block[0], block[1], block[2], block[3]]);
                    if let (true, Some(original)) = (ssrc == opposite.out_ssrc().0, opp_in) {
                        block[0..4].copy_from_slice(&original.0.to_be_bytes());
                        // Extended highest sequence number: back into the
                        // original numbering (low 16 bits; cycles kept).
                        let seq = u16::from_be_bytes([block[10], block[11]]);
                        block[10..12]
                            .copy_from_slice(&seq.wrapping_sub(opp_seq_delta).to_be_bytes());
                    }
                }
            }
            packet.copy_within(read..read + len, write);
            write += len;
        }
        read += len;
    }
    Ok(write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, pt, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&ts.to_be_bytes());
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xd5; 160]);
        p
    }

    fn run(rw: &mut StreamRewriter, p: &mut [u8], out_pt: u8, now: Instant) -> RtpFields {
        let f = parse_rtp(p).unwrap();
        rw.rewrite(p, &f, out_pt, 8000, now);
        parse_rtp(p).unwrap()
    }

    #[test]
    fn payload_map_both_ways() {
        let map = PayloadMap::new(&[
            (PayloadType(111), PayloadType(96), 48000),
            (PayloadType(126), PayloadType(101), 8000),
            (PayloadType(0), PayloadType(0), 8000),
        ]);
        assert_eq!(map.map(Toward::Trunk, 111), Some((96, 48000)));
        assert_eq!(map.map(Toward::Browser, 96), Some((111, 48000)));
        assert_eq!(map.map(Toward::Browser, 101), Some((126, 8000)));
        assert_eq!(map.map(Toward::Trunk, 0), Some((0, 8000)));
        assert_eq!(map.map(Toward::Trunk, 8), None);
        assert_eq!(map.map(Toward::Trunk, 96), None);
    }

    #[test]
    fn parse_rejects_garbage() {
        assert_eq!(parse_rtp(&[0x80; 11]), Err(DropReason::Malformed));
        assert_eq!(parse_rtp(&[0x40; 12]), Err(DropReason::Malformed));
        // CSRC count 15 but no CSRCs.
        assert_eq!(parse_rtp(&[0x8f; 20]), Err(DropReason::Malformed));
        // Extension bit, extension longer than the packet.
        let mut p = rtp(0, 1, 1, 1);
        p[0] |= 0x10;
        p[14] = 0xff;
        assert_eq!(parse_rtp(&p), Err(DropReason::Malformed));
        p[14] = 0;
        p[15] = 1;
        assert_eq!(parse_rtp(&p).unwrap().header_len, 20);
    }

    #[test]
    fn pt_and_ssrc_are_rewritten_seq_kept_for_first_stream() {
        let t0 = Instant::now();
        let mut rw = StreamRewriter::new(Ssrc(0xabcd));
        let mut p = rtp(0x80 | 111, 1000, 5000, 42);
        let out = run(&mut rw, &mut p, 96, t0);
        assert_eq!(out.payload_type, 96);
        assert!(out.marker);
        assert_eq!(out.ssrc, Ssrc(0xabcd));
        assert_eq!((out.sequence, out.timestamp), (1000, 5000));
        assert_eq!(&p[12..], &[0xd5; 160][..]);
    }

    #[test]
    fn ssrc_change_continues_sequence_and_time() {
        let t0 = Instant::now();
        let mut rw = StreamRewriter::new(Ssrc(9));
        for i in 0..10u16 {
            let mut p = rtp(0, 65530u16.wrapping_add(i), 160 * u32::from(i), 1);
            let out = run(
                &mut rw,
                &mut p,
                0,
                t0 + Duration::from_millis(20 * u64::from(i)),
            );
            assert_eq!(out.sequence, 65530u16.wrapping_add(i));
        }
        // Last out: seq 3 (wrapped), ts 1440 at t0+180ms. New stream 300 ms later.
        let now = t0 + Duration::from_millis(480);
        let mut p = rtp(0, 777, 123_456, 2);
        let out = run(&mut rw, &mut p, 0, now);
        assert_eq!(out.ssrc, Ssrc(9));
        assert_eq!(out.sequence, 4);
        assert_eq!(out.timestamp, 1440 + 2400);
        assert!(out.marker, "marker set on a source switch");
        let mut p = rtp(0, 778, 123_456 + 160, 2);
        let out = run(&mut rw, &mut p, 0, now + Duration::from_millis(20));
        assert_eq!((out.sequence, out.timestamp), (5, 1440 + 2400 + 160));
        assert!(!out.marker);
    }

    #[test]
    fn reordered_packet_keeps_its_place() {
        let t0 = Instant::now();
        let mut rw = StreamRewriter::new(Ssrc(9));
        let mut a = rtp(0, 10, 1600, 1);
        run(&mut rw, &mut a, 0, t0);
        let mut c = rtp(0, 12, 1920, 1);
        run(&mut rw, &mut c, 0, t0);
        let mut b = rtp(0, 11, 1760, 1);
        assert_eq!(run(&mut rw, &mut b, 0, t0).sequence, 11);
        // A switch now continues after 12, not after 11.
        let mut d = rtp(0, 500, 0, 2);
        assert_eq!(run(&mut rw, &mut d, 0, t0).sequence, 13);
    }

    #[test]
    fn rtcp_sender_report_rewritten_and_feedback_removed() {
        let t0 = Instant::now();
        // Browser→trunk direction: browser SSRC 1 becomes 0x1111.
        let mut to_trunk = StreamRewriter::new(Ssrc(0x1111));
        // Trunk→browser: trunk SSRC 2 becomes 0x2222, after a switch from 3.
        let mut to_browser = StreamRewriter::new(Ssrc(0x2222));
        let mut p = rtp(0, 100, 1000, 1);
        run(&mut to_trunk, &mut p, 0, t0);
        let mut p = rtp(0, 50, 0, 3);
        run(&mut to_browser, &mut p, 0, t0);
        let mut p = rtp(0, 900, 0, 2);
        run(&mut to_browser, &mut p, 0, t0); // out seq 51: delta = 51 - 900

        // SR (1 report block) + PSFB (12 bytes).
        let mut sr = vec![0x81, 200, 0, 12];
        sr.extend_from_slice(&1u32.to_be_bytes()); // sender SSRC
        sr.extend_from_slice(&[0; 8]); // NTP
        sr.extend_from_slice(&5000u32.to_be_bytes()); // RTP ts
        sr.extend_from_slice(&[0; 8]); // counts
        sr.extend_from_slice(&0x2222u32.to_be_bytes()); // block about what we sent
        sr.extend_from_slice(&[0; 4]);
        sr.extend_from_slice(&51u32.to_be_bytes()); // ext highest seq
        sr.extend_from_slice(&[0; 12]);
        let mut compound = sr.clone();
        compound.extend_from_slice(&[0x81, 206, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2]);
        let len = rewrite_rtcp(&mut compound, &to_trunk, &to_browser).unwrap();
        assert_eq!(len, sr.len());
        let out = &compound[..len];
        assert_eq!(&out[4..8], &0x1111u32.to_be_bytes());
        assert_eq!(
            &out[16..20],
            &5000u32.to_be_bytes(),
            "first stream: no shift"
        );
        assert_eq!(&out[28..32], &2u32.to_be_bytes());
        assert_eq!(&out[38..40], &900u16.to_be_bytes());

        // Truncated compound.
        let mut bad = sr[..20].to_vec();
        assert_eq!(
            rewrite_rtcp(&mut bad, &to_trunk, &to_browser),
            Err(DropReason::Malformed)
        );
        // Feedback only: nothing left.
        let mut fb = vec![0x81, 205, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2];
        assert_eq!(rewrite_rtcp(&mut fb, &to_trunk, &to_browser), Ok(0));
    }
}
