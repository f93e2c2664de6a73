//! Reads the clear parts of DTLS 1.2 records (RFC 6347 4.1) that a private
//! call relays without taking part in the handshake.
//!
//! Why: in a private call the browser's DTLS peer is the trunk; the gateway
//! holds no key and cannot read the handshake's encrypted end. Two things
//! are still in the clear and worth knowing: the ChangeCipherSpec record
//! each side sends when its keys are ready (both seen: the handshake is
//! done, media may flow), and the ServerHello's `use_srtp` extension
//! (RFC 5764 4.1.2), which names the SRTP profile the two ends agreed, so
//! the lock can say which suite protects the call. Every length is checked;
//! anything unexpected is simply "not seen".

use crate::types::SrtpSuite;

const CHANGE_CIPHER_SPEC: u8 = 20;
const HANDSHAKE: u8 = 22;
const SERVER_HELLO: u8 = 2;
const USE_SRTP: u16 = 0x000e;
const RECORD_HEADER: usize = 13;
const HANDSHAKE_HEADER: usize = 12;

/// What one datagram's records showed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Seen {
    /// A ChangeCipherSpec record: its sender's keys are in use from now on.
    pub change_cipher_spec: bool,
    /// The SRTP profile a ServerHello selected.
    pub srtp_profile: Option<SrtpSuite>,
}

/// Scans every record of a DTLS datagram (a datagram may carry several).
pub(crate) fn scan(datagram: &[u8]) -> Seen {
    let mut seen = Seen::default();
    let mut rest = datagram;
    while rest.len() >= RECORD_HEADER {
        let len = usize::from(u16::from_be_bytes([rest[11], rest[12]]));
        let Some(fragment) = rest.get(RECORD_HEADER..RECORD_HEADER + len) else {
            break;
        };
        let epoch = u16::from_be_bytes([rest[3], rest[4]]);
        match rest[0] {
            CHANGE_CIPHER_SPEC => seen.change_cipher_spec = true,
            // Epoch 0: the clear part of the handshake.
            HANDSHAKE if epoch == 0 => {
                if let Some(profile) = server_hello_profile(fragment) {
                    seen.srtp_profile = Some(profile);
                }
            }
            _ => {}
        }
        rest = &rest[RECORD_HEADER + len..];
    }
    seen
}

/// The `use_srtp` profile of an unfragmented ServerHello, if that is what
/// `fragment` holds.
fn server_hello_profile(fragment: &[u8]) -> Option<SrtpSuite> {
    let header = fragment.get(..HANDSHAKE_HEADER)?;
    if header[0] != SERVER_HELLO {
        return None;
    }
    let length = u24(&header[1..4]);
    let offset = u24(&header[6..9]);
    let frag_len = u24(&header[9..12]);
    // A fragmented ServerHello (rare: it is small) is not reassembled.
    if offset != 0 || frag_len != length {
        return None;
    }
    let body = fragment.get(HANDSHAKE_HEADER..HANDSHAKE_HEADER + length)?;
    // version (2), random (32), session id (1 + n), cipher suite (2),
    // compression (1), extensions (2 + n).
    let sid_len = usize::from(*body.get(34)?);
    let mut at = 35 + sid_len + 2 + 1;
    let ext_len = usize::from(u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]));
    at += 2;
    let mut exts = body.get(at..at + ext_len)?;
    while exts.len() >= 4 {
        let kind = u16::from_be_bytes([exts[0], exts[1]]);
        let len = usize::from(u16::from_be_bytes([exts[2], exts[3]]));
        let data = exts.get(4..4 + len)?;
        if kind == USE_SRTP {
            // profiles length (2, one profile in a ServerHello), profile (2).
            let profile = u16::from_be_bytes([*data.get(2)?, *data.get(3)?]);
            return profile_suite(profile);
        }
        exts = &exts[4 + len..];
    }
    None
}

/// RFC 5764 4.1.2 and RFC 7714 14.2 profile numbers.
fn profile_suite(profile: u16) -> Option<SrtpSuite> {
    Some(match profile {
        0x0001 => SrtpSuite::AesCm128HmacSha1_80,
        0x0002 => SrtpSuite::AesCm128HmacSha1_32,
        0x0007 => SrtpSuite::AeadAes128Gcm,
        0x0008 => SrtpSuite::AeadAes256Gcm,
        _ => return None,
    })
}

fn u24(b: &[u8]) -> usize {
    (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One DTLS record of `content_type` at `epoch` around `fragment`.
    pub(crate) fn record(content_type: u8, epoch: u16, fragment: &[u8]) -> Vec<u8> {
        let mut r = vec![content_type, 0xfe, 0xfd];
        r.extend_from_slice(&epoch.to_be_bytes());
        r.extend_from_slice(&[0, 0, 0, 0, 0, 1]);
        r.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
        r.extend_from_slice(fragment);
        r
    }

    /// A ServerHello handshake message choosing `profile` (None: no
    /// use_srtp), with a 32-byte session id and one other extension first.
    pub(crate) fn server_hello(profile: Option<u16>) -> Vec<u8> {
        let mut body = vec![0xfe, 0xfd];
        body.extend_from_slice(&[7; 32]);
        body.push(32);
        body.extend_from_slice(&[9; 32]);
        body.extend_from_slice(&[0xc0, 0x2b, 0]);
        let mut exts = vec![0xff, 0x01, 0, 1, 0]; // renegotiation_info
        if let Some(p) = profile {
            exts.extend_from_slice(&[0, 14, 0, 5, 0, 2]);
            exts.extend_from_slice(&p.to_be_bytes());
            exts.push(0);
        }
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let len = body.len() as u32;
        let mut hs = vec![SERVER_HELLO];
        hs.extend_from_slice(&len.to_be_bytes()[1..]);
        hs.extend_from_slice(&[0, 0]);
        hs.extend_from_slice(&[0, 0, 0]);
        hs.extend_from_slice(&len.to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        hs
    }

    #[test]
    fn reads_the_profile_of_a_server_hello_among_other_records() {
        let mut datagram = record(HANDSHAKE, 0, &server_hello(Some(0x0007)));
        datagram.extend(record(HANDSHAKE, 0, &[11, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]));
        let seen = scan(&datagram);
        assert_eq!(seen.srtp_profile, Some(SrtpSuite::AeadAes128Gcm));
        assert!(!seen.change_cipher_spec);
        for (id, suite) in [
            (1, SrtpSuite::AesCm128HmacSha1_80),
            (2, SrtpSuite::AesCm128HmacSha1_32),
            (8, SrtpSuite::AeadAes256Gcm),
        ] {
            let d = record(HANDSHAKE, 0, &server_hello(Some(id)));
            assert_eq!(scan(&d).srtp_profile, Some(suite));
        }
        assert_eq!(
            scan(&record(HANDSHAKE, 0, &server_hello(Some(0x0005)))).srtp_profile,
            None
        );
        assert_eq!(
            scan(&record(HANDSHAKE, 0, &server_hello(None))).srtp_profile,
            None
        );
        // An encrypted (epoch 1) handshake record is never read.
        assert_eq!(
            scan(&record(HANDSHAKE, 1, &server_hello(Some(1)))).srtp_profile,
            None
        );
    }

    #[test]
    fn sees_change_cipher_spec_after_a_handshake_record() {
        let mut d = record(HANDSHAKE, 0, &[16, 0, 0, 0]);
        d.extend(record(CHANGE_CIPHER_SPEC, 0, &[1]));
        d.extend(record(HANDSHAKE, 1, &[0xaa; 40]));
        assert!(scan(&d).change_cipher_spec);
    }

    #[test]
    fn truncated_or_garbage_never_panics() {
        let full = record(HANDSHAKE, 0, &server_hello(Some(7)));
        for cut in 0..full.len() {
            let seen = scan(&full[..cut]);
            assert_eq!(seen.srtp_profile, None, "cut at {cut}");
        }
        for n in 0..64u8 {
            let junk: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37) ^ n).collect();
            let _ = scan(&junk);
        }
        // A record whose declared length exceeds the datagram.
        let mut bad = record(CHANGE_CIPHER_SPEC, 0, &[1]);
        bad[12] = 200;
        assert!(!scan(&bad).change_cipher_spec);
    }
}
