//! Reads the SRTP profiles a browser offers in its DTLS ClientHello
//! (`use_srtp`, RFC 5764 4.1.1), before the DTLS library sees it.
//!
//! Why: rtc-dtls picks the first profile of the *client's* list that the
//! server accepts, and Chromium lists AES_CM_128_HMAC_SHA1_80 before
//! AEAD_AES_128_GCM. RFC 5764 leaves the choice to the server; ours is the
//! AEAD profile. Knowing the offer lets `dtls.rs` configure the association
//! to accept only GCM when the browser has it.
//!
//! Chromium's ClientHello (with its post-quantum key share) is larger than
//! one datagram, so it arrives in handshake fragments: this scanner holds the
//! datagrams until the whole ClientHello is there, then hands them all back
//! to be fed to the DTLS library in order. Every length is checked; anything
//! unexpected ends the scan with "unknown" and the datagrams untouched.

/// Longest ClientHello we reassemble; real ones are 200 to 2,000 bytes.
const MAX_HELLO: usize = 16 * 1024;
/// Datagrams held at most before giving up on the scan.
const MAX_HELD: usize = 8;
const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const USE_SRTP: usize = 0x000e;

/// What the scan found, with every datagram it held, in arrival order.
#[derive(Debug)]
pub(crate) struct ScanResult {
    /// The offered SRTP profile ids, or `None` when the scan could not tell.
    pub profiles: Option<Vec<u16>>,
    pub held: Vec<Vec<u8>>,
}

#[derive(Debug, Default)]
pub(crate) struct ClientHelloScan {
    body: Vec<u8>,
    filled: Vec<bool>,
    missing: usize,
    held: Vec<Vec<u8>>,
}

impl ClientHelloScan {
    /// Takes the next datagram from the browser. `None`: hold on, more
    /// fragments are needed; `Some`: the scan is over.
    pub(crate) fn push(&mut self, datagram: &[u8]) -> Option<ScanResult> {
        self.held.push(datagram.to_vec());
        let complete = match self.add_fragment(datagram) {
            Some(complete) => complete,
            None => return Some(self.finish(None)),
        };
        if complete {
            let profiles = use_srtp_profiles(&self.body);
            return Some(self.finish(profiles));
        }
        if self.held.len() >= MAX_HELD {
            return Some(self.finish(None));
        }
        None
    }

    fn finish(&mut self, profiles: Option<Vec<u16>>) -> ScanResult {
        ScanResult {
            profiles,
            held: std::mem::take(&mut self.held),
        }
    }

    /// Copies the ClientHello fragment of the datagram's first record into
    /// the body. `Some(true)` once the body is complete; `None` when the
    /// datagram is not a ClientHello fragment that fits.
    fn add_fragment(&mut self, datagram: &[u8]) -> Option<bool> {
        // Record header: type, version (2), epoch (2), sequence (6), length (2).
        if *datagram.first()? != HANDSHAKE {
            return None;
        }
        let record_len = u16_at(datagram, 11)?;
        let record = datagram.get(13..13 + record_len)?;
        // Handshake header: type, length (3), message_seq (2),
        // fragment_offset (3), fragment_length (3).
        if *record.first()? != CLIENT_HELLO {
            return None;
        }
        let length = u24_at(record, 1)?;
        let offset = u24_at(record, 6)?;
        let fragment_len = u24_at(record, 9)?;
        let fragment = record.get(12..12 + fragment_len)?;
        if length == 0 || length > MAX_HELLO || offset + fragment_len > length {
            return None;
        }
        if self.body.is_empty() {
            self.body = vec![0; length];
            self.filled = vec![false; length];
            self.missing = length;
        } else if self.body.len() != length {
            return None;
        }
        self.body[offset..offset + fragment_len].copy_from_slice(fragment);
        for slot in &mut self.filled[offset..offset + fragment_len] {
            if !*slot {
                *slot = true;
                self.missing -= 1;
            }
        }
        Some(self.missing == 0)
    }
}

/// The profile ids of the `use_srtp` extension of a ClientHello body, or an
/// empty list when it has none; `None` when the body does not parse.
fn use_srtp_profiles(body: &[u8]) -> Option<Vec<u16>> {
    // client_version (2) + random (32), then session_id, cookie,
    // cipher_suites, compression_methods, extensions.
    let mut at = 34;
    at += 1 + usize::from(*body.get(at)?);
    at += 1 + usize::from(*body.get(at)?);
    at += 2 + u16_at(body, at)?;
    at += 1 + usize::from(*body.get(at)?);
    let extensions_len = u16_at(body, at)?;
    let extensions = body.get(at + 2..at + 2 + extensions_len)?;
    let mut i = 0;
    while i + 4 <= extensions.len() {
        let kind = u16_at(extensions, i)?;
        let len = u16_at(extensions, i + 2)?;
        let data = extensions.get(i + 4..i + 4 + len)?;
        if kind == USE_SRTP {
            let list_len = u16_at(data, 0)?;
            let list = data.get(2..2 + list_len)?;
            return Some(
                list.chunks_exact(2)
                    .map(|p| u16::from_be_bytes([p[0], p[1]]))
                    .collect(),
            );
        }
        i += 4 + len;
    }
    Some(Vec::new())
}

fn u16_at(b: &[u8], i: usize) -> Option<usize> {
    Some(usize::from(u16::from_be_bytes([
        *b.get(i)?,
        *b.get(i + 1)?,
    ])))
}

fn u24_at(b: &[u8], i: usize) -> Option<usize> {
    Some(usize::from(*b.get(i)?) << 16 | u16_at(b, i + 1)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello body with the given use_srtp profiles (and one other
    /// extension before it).
    fn hello_body(profiles: &[u16]) -> Vec<u8> {
        let mut b = vec![0xfe, 0xfd];
        b.extend([7u8; 32]); // random
        b.push(0); // session_id
        b.push(0); // cookie
        b.extend([0, 2, 0xc0, 0x2b]); // one cipher suite
        b.extend([1, 0]); // null compression
        let mut ext = vec![0x00, 0x17, 0, 0]; // extended_master_secret
        let list: Vec<u8> = profiles.iter().flat_map(|p| p.to_be_bytes()).collect();
        ext.extend([0x00, 0x0e]);
        ext.extend(((list.len() + 3) as u16).to_be_bytes());
        ext.extend((list.len() as u16).to_be_bytes());
        ext.extend(&list);
        ext.push(0); // no MKI
        b.extend((ext.len() as u16).to_be_bytes());
        b.extend(ext);
        b
    }

    /// One DTLS record holding `body[offset..offset+len]` as a fragment.
    fn record(body: &[u8], offset: usize, len: usize) -> Vec<u8> {
        let mut hs = vec![CLIENT_HELLO];
        hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend([0, 0]);
        hs.extend(&(offset as u32).to_be_bytes()[1..]);
        hs.extend(&(len as u32).to_be_bytes()[1..]);
        hs.extend(&body[offset..offset + len]);
        let mut r = vec![HANDSHAKE, 0xfe, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];
        r.extend((hs.len() as u16).to_be_bytes());
        r.extend(hs);
        r
    }

    #[test]
    fn whole_hello_in_one_datagram() {
        let body = hello_body(&[0x0001, 0x0007]);
        let mut scan = ClientHelloScan::default();
        let result = scan.push(&record(&body, 0, body.len())).unwrap();
        assert_eq!(result.profiles, Some(vec![0x0001, 0x0007]));
        assert_eq!(result.held.len(), 1);
    }

    #[test]
    fn fragments_in_any_order_with_a_repeat() {
        let body = hello_body(&[0x0007]);
        let half = body.len() / 2;
        let second = record(&body, half, body.len() - half);
        let mut scan = ClientHelloScan::default();
        assert!(scan.push(&second).is_none());
        assert!(scan.push(&second).is_none(), "a repeat fills nothing new");
        let result = scan.push(&record(&body, 0, half)).unwrap();
        assert_eq!(result.profiles, Some(vec![0x0007]));
        assert_eq!(result.held.len(), 3, "every datagram is handed back");
        assert_eq!(result.held[0], second);
    }

    #[test]
    fn anything_else_ends_the_scan_unknown() {
        for junk in [vec![], vec![23u8, 0, 0], vec![22u8; 40], vec![0u8; 1200]] {
            let result = ClientHelloScan::default().push(&junk).unwrap();
            assert_eq!(result.profiles, None);
            assert_eq!(result.held, vec![junk]);
        }
        // A fragment claiming to run past the ClientHello's length.
        let body = hello_body(&[7]);
        let mut bad = record(&body, 0, body.len());
        bad[13 + 9..13 + 12].copy_from_slice(&[0xff, 0xff, 0xff]);
        assert_eq!(
            ClientHelloScan::default().push(&bad).unwrap().profiles,
            None
        );
    }

    #[test]
    fn gives_up_after_too_many_fragments() {
        let body = hello_body(&[7]);
        let mut scan = ClientHelloScan::default();
        let piece = record(&body, 0, 4);
        for _ in 1..MAX_HELD {
            assert!(scan.push(&piece).is_none());
        }
        let result = scan.push(&piece).unwrap();
        assert_eq!(result.profiles, None);
        assert_eq!(result.held.len(), MAX_HELD);
    }

    #[test]
    fn truncated_bodies_do_not_parse() {
        let body = hello_body(&[7, 1]);
        for len in 0..body.len() {
            let _ = use_srtp_profiles(&body[..len]);
        }
        assert_eq!(use_srtp_profiles(&body), Some(vec![7, 1]));
    }
}
