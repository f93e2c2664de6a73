//! Tells apart the protocols that share one media port (RFC 7983, RFC 5761).
//!
//! With BUNDLE and rtcp-mux the browser sends STUN, DTLS, RTP and RTCP to the
//! same 5-tuple; the first byte of each datagram says which it is. The check is
//! a couple of comparisons so it can run first on every received packet.

/// What a received datagram carries, judged from its first two bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketKind {
    Stun,
    Dtls,
    Rtp,
    Rtcp,
    /// Too short, or a first byte no protocol of ours uses (ZRTP, TURN channel
    /// data, QUIC, noise). Counted and dropped by the caller.
    Unknown,
}

/// Classifies one datagram per RFC 7983 section 7 (first byte ranges) and
/// RFC 5761 section 4 (RTP vs RTCP by the second byte).
pub fn classify(datagram: &[u8]) -> PacketKind {
    // Shorter than any header we could use: a STUN header is 20 bytes, an RTP
    // header 12, a DTLS record header 13, an RTCP header 8. Requiring 2 bytes
    // here is enough to classify; the protocol parsers enforce their own
    // minimum lengths.
    let (first, second) = match datagram {
        [first, second, ..] => (*first, *second),
        _ => return PacketKind::Unknown,
    };
    match first {
        0..=3 => PacketKind::Stun,
        20..=63 => PacketKind::Dtls,
        128..=191 => {
            // RFC 5761: with the marker bit masked off, RTCP packet types
            // 192..=223 cannot collide with the dynamic RTP payload types we
            // use (which must avoid 64..=95 for this reason).
            if (192..=223).contains(&second) {
                PacketKind::Rtcp
            } else {
                PacketKind::Rtp
            }
        }
        _ => PacketKind::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_per_rfc_7983() {
        assert_eq!(classify(&[0x00, 0x01]), PacketKind::Stun);
        assert_eq!(classify(&[0x01, 0x01]), PacketKind::Stun);
        assert_eq!(classify(&[0x03, 0x00]), PacketKind::Stun);
        assert_eq!(classify(&[4, 0]), PacketKind::Unknown);
        assert_eq!(classify(&[19, 0]), PacketKind::Unknown); // ZRTP
        assert_eq!(classify(&[20, 0xfe]), PacketKind::Dtls); // change_cipher_spec
        assert_eq!(classify(&[22, 0xfe]), PacketKind::Dtls); // handshake
        assert_eq!(classify(&[63, 0]), PacketKind::Dtls);
        assert_eq!(classify(&[64, 0]), PacketKind::Unknown); // TURN channel
        assert_eq!(classify(&[127, 0]), PacketKind::Unknown);
        assert_eq!(classify(&[192, 0]), PacketKind::Unknown);
        assert_eq!(classify(&[255, 0]), PacketKind::Unknown);
    }

    #[test]
    fn rtp_versus_rtcp_per_rfc_5761() {
        // PT 0 (PCMU), PT 111 with the marker bit (0x80 | 111 = 239).
        assert_eq!(classify(&[0x80, 0]), PacketKind::Rtp);
        assert_eq!(classify(&[0x80, 0x80 | 111]), PacketKind::Rtp);
        assert_eq!(classify(&[0x80, 96]), PacketKind::Rtp);
        assert_eq!(classify(&[0x80, 191]), PacketKind::Rtp);
        // SR 200, RR 201, SDES 202, BYE 203, RTPFB 205, PSFB 206, XR 207.
        for pt in [192u8, 200, 201, 202, 203, 205, 206, 207, 223] {
            assert_eq!(classify(&[0x81, pt]), PacketKind::Rtcp, "pt {pt}");
        }
        assert_eq!(classify(&[0x80, 224]), PacketKind::Rtp);
        assert_eq!(classify(&[0xbf, 200]), PacketKind::Rtcp);
    }

    #[test]
    fn too_short_is_unknown() {
        assert_eq!(classify(&[]), PacketKind::Unknown);
        assert_eq!(classify(&[0x80]), PacketKind::Unknown);
        assert_eq!(classify(&[0x00]), PacketKind::Unknown);
    }
}
