//! The tool's RTP packets: a 12-byte header and a 160-byte G.711 payload
//! (20 ms at 8 kHz) whose first bytes say which call and direction the
//! packet belongs to, its sequence number and when it was sent. The rest is
//! PCMU silence (0xFF), so a target that looked at the audio would see a
//! plausible frame.

use crate::media::Dir;

/// Payload bytes per frame: 20 ms of G.711 at 8 kHz.
pub const FRAME_LEN: usize = 160;
const RTP_HEADER_LEN: usize = 12;
const MAGIC: &[u8; 4] = b"GWLD";

/// What the payload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub call: u32,
    pub dir: Dir,
    pub seq: u64,
    /// Send time in nanoseconds on the tool's clock.
    pub sent_ns: u64,
}

/// Writes the RTP packet into `out` (at least 172 bytes); returns its length.
pub fn write_rtp(out: &mut [u8], pt: u8, rtp_seq: u16, ts: u32, ssrc: u32, f: &Frame) -> usize {
    out[0] = 0x80;
    out[1] = pt & 0x7f;
    out[2..4].copy_from_slice(&rtp_seq.to_be_bytes());
    out[4..8].copy_from_slice(&ts.to_be_bytes());
    out[8..12].copy_from_slice(&ssrc.to_be_bytes());
    let p = &mut out[RTP_HEADER_LEN..RTP_HEADER_LEN + FRAME_LEN];
    p.fill(0xff);
    p[0..4].copy_from_slice(MAGIC);
    p[4..8].copy_from_slice(&f.call.to_be_bytes());
    p[8] = f.dir as u8;
    p[9..17].copy_from_slice(&f.seq.to_be_bytes());
    p[17..25].copy_from_slice(&f.sent_ns.to_be_bytes());
    RTP_HEADER_LEN + FRAME_LEN
}

/// Reads the frame out of a plain RTP packet; `None` if it is not one of
/// ours (short, other payload, header extension past the end).
pub fn read_rtp(pkt: &[u8]) -> Option<Frame> {
    if pkt.len() < RTP_HEADER_LEN || pkt[0] >> 6 != 2 {
        return None;
    }
    let mut hl = RTP_HEADER_LEN + 4 * usize::from(pkt[0] & 0x0f);
    if pkt[0] & 0x10 != 0 {
        let w = pkt.get(hl + 2..hl + 4)?;
        hl += 4 + 4 * usize::from(u16::from_be_bytes([w[0], w[1]]));
    }
    let p = pkt.get(hl..hl + 25)?;
    if &p[0..4] != MAGIC {
        return None;
    }
    Some(Frame {
        call: u32::from_be_bytes(p[4..8].try_into().ok()?),
        dir: Dir::from_u8(p[8])?,
        seq: u64::from_be_bytes(p[9..17].try_into().ok()?),
        sent_ns: u64::from_be_bytes(p[17..25].try_into().ok()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let f = Frame {
            call: 7,
            dir: Dir::Back,
            seq: 1 << 40,
            sent_ns: 123_456_789,
        };
        let mut out = [0u8; 200];
        let len = write_rtp(&mut out, 0, 5, 800, 0xdead_beef, &f);
        assert_eq!(len, 172);
        assert_eq!(read_rtp(&out[..len]), Some(f));
        assert_eq!(&out[8..12], &0xdead_beef_u32.to_be_bytes());
        assert_eq!(out[len - 1], 0xff);
    }

    #[test]
    fn foreign_packets_are_not_frames() {
        assert_eq!(read_rtp(&[0x80; 20]), None);
        let mut out = [0u8; 200];
        let f = Frame {
            call: 1,
            dir: Dir::Forward,
            seq: 0,
            sent_ns: 0,
        };
        let len = write_rtp(&mut out, 0, 0, 0, 1, &f);
        out[12] = b'X';
        assert_eq!(read_rtp(&out[..len]), None);
        // A header extension longer than the packet.
        out[12] = b'G';
        out[0] = 0x90;
        out[14] = 0xff;
        assert_eq!(read_rtp(&out[..len]), None);
    }
}
