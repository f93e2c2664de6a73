//! One direction of SRTP/SRTCP protection (RFC 3711, RFC 6188, RFC 7714) for
//! one media leg, in place in the caller's buffer.
//!
//! A leg holds two of these: one keyed with what the peer sends (only
//! `unprotect_*` is called on it) and one keyed with what we send (only
//! `protect_*`). Mixing both uses on one context would share the rollover
//! counter state, which RFC 3711 keeps per direction.
//!
//! Why not `rtc-srtp` (which the first versions used): its `Context` takes a
//! `&[u8]` and returns a fresh `BytesMut` per packet, and its cipher layer is
//! private, so every packet cost two allocations and four copies between the
//! socket and the socket. The transforms here are a thin layer over the
//! aws-lc-rs primitives (already built for rustls): AES-CTR, HMAC-SHA1 and
//! AES-GCM applied to the caller's bytes. After keying, nothing allocates.
//! `rtc-srtp` stays as a dev-dependency: the tests cross-check against it.
//!
//! Layout: [`cipher`] the keyed transforms and key derivation, [`replay`] the
//! per-SSRC index, rollover and replay state, this file the packet formats.

mod cipher;
mod replay;
#[cfg(test)]
mod tests;

use crate::types::{SrtpKeyMaterial, SrtpSuite};
use cipher::{tags_equal, CmSession, GcmSession, GCM_TAG_LEN, LABEL_SRTCP_OFFSET};
use replay::{estimate_index, SsrcTable, Window};

/// Width of the SRTP replay window in packets. RFC 3711 asks for at least 64;
/// 128 (libsrtp's default) tolerates the reordering seen on mobile paths
/// without accepting anything twice.
const SRTP_REPLAY_WINDOW: u32 = 128;
/// SRTCP is a few packets per second, so the RFC minimum is plenty.
const SRTCP_REPLAY_WINDOW: u32 = 64;

/// Minimum RTP header (RFC 3550 5.1).
const RTP_HEADER_LEN: usize = 12;
/// RTCP header up to and including the sender SSRC, which SRTCP leaves clear.
const RTCP_CLEAR_LEN: usize = 8;
/// The E flag and 31-bit SRTCP index trailer (RFC 3711 3.4).
const SRTCP_INDEX_LEN: usize = 4;
/// Largest SRTCP index (31 bits).
const MAX_SRTCP_INDEX: u32 = 0x7fff_ffff;
/// SRTCP always carries an 80-bit HMAC tag, also for the _32 suites (RFC 3711
/// 5.2, RFC 4568 6.2.1).
const SRTCP_HMAC_TAG_LEN: usize = 10;

/// The most bytes protection adds to a packet of any suite (GCM SRTCP: tag
/// and index word). Buffers with this much room after the packet never need
/// to grow.
pub const MAX_OVERHEAD: usize = GCM_TAG_LEN + SRTCP_INDEX_LEN;

/// Why a packet was not protected or unprotected. The relay counts drops by
/// variant, so replays stay apart from authentication failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    /// The authentication tag did not verify: wrong key, forged or corrupted.
    #[error("SRTP authentication failed")]
    AuthFailed,
    /// The packet index was already seen or is older than the replay window.
    #[error("SRTP replayed or too old packet")]
    Replay,
    /// Not a well-formed (S)RTP/(S)RTCP packet: too short, wrong version,
    /// header longer than the packet.
    #[error("malformed SRTP/RTP packet")]
    Malformed,
    /// The caller's buffer has no room after the packet for the tag.
    #[error("no room for the SRTP tag: {needed} bytes needed, {available} available")]
    NoRoom { needed: usize, available: usize },
    #[error("SRTP suite {0} is not supported by the crypto provider")]
    UnsupportedSuite(SrtpSuite),
    /// Anything else (key length, packet limit reached). The text never
    /// contains key material.
    #[error("SRTP error: {0}")]
    Other(String),
}

fn is_gcm(suite: SrtpSuite) -> bool {
    matches!(suite, SrtpSuite::AeadAes128Gcm | SrtpSuite::AeadAes256Gcm)
}

/// Length of the SRTP authentication tag of `suite`.
fn rtp_tag_len(suite: SrtpSuite) -> usize {
    match suite {
        SrtpSuite::AesCm128HmacSha1_80
        | SrtpSuite::AesCm192HmacSha1_80
        | SrtpSuite::AesCm256HmacSha1_80 => 10,
        SrtpSuite::AesCm128HmacSha1_32
        | SrtpSuite::AesCm192HmacSha1_32
        | SrtpSuite::AesCm256HmacSha1_32 => 4,
        SrtpSuite::AeadAes128Gcm | SrtpSuite::AeadAes256Gcm => GCM_TAG_LEN,
    }
}

/// Length of the SRTCP authentication tag of `suite`.
fn rtcp_tag_len(suite: SrtpSuite) -> usize {
    if is_gcm(suite) {
        GCM_TAG_LEN
    } else {
        SRTCP_HMAC_TAG_LEN
    }
}

/// Bytes SRTP adds to an RTP packet of `suite` (the tag). Lets the relay size
/// its buffers once.
pub fn srtp_overhead(suite: SrtpSuite) -> usize {
    rtp_tag_len(suite)
}

/// Bytes SRTCP adds to an RTCP packet of `suite` (index word and tag).
pub fn srtcp_overhead(suite: SrtpSuite) -> usize {
    SRTCP_INDEX_LEN + rtcp_tag_len(suite)
}

/// Length of the RTP header of `packet` (fixed part, CSRCs and extension),
/// checked against the packet length; `None` when it is not RTP version 2 or
/// the header runs past the end.
fn rtp_header_len(packet: &[u8]) -> Option<usize> {
    if packet.len() < RTP_HEADER_LEN || packet[0] >> 6 != 2 {
        return None;
    }
    let csrc_count = usize::from(packet[0] & 0x0f);
    let mut len = RTP_HEADER_LEN + 4 * csrc_count;
    if packet[0] & 0x10 != 0 {
        let words = packet.get(len + 2..len + 4)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    (len <= packet.len()).then_some(len)
}

/// Checks the RTCP common header (version 2, room for the sender SSRC).
fn check_rtcp(packet: &[u8], min_len: usize) -> Result<(), SrtpError> {
    if packet.len() < min_len.max(RTCP_CLEAR_LEN) || packet[0] >> 6 != 2 {
        return Err(SrtpError::Malformed);
    }
    Ok(())
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Checks that `buf` has `len + extra` bytes; `len` itself must fit.
fn room(buf: &[u8], len: usize, extra: usize) -> Result<(), SrtpError> {
    if len > buf.len() {
        return Err(SrtpError::Malformed);
    }
    if buf.len() - len < extra {
        return Err(SrtpError::NoRoom {
            needed: len + extra,
            available: buf.len(),
        });
    }
    Ok(())
}

/// The keyed transforms of a suite, for SRTP and for SRTCP.
// The HMAC contexts make `Cm` large; there is one per context, made at
// keying and never moved on the packet path, so boxing would only add a
// pointer chase per packet.
#[allow(clippy::large_enum_variant)]
enum Transform {
    Cm { rtp: CmSession, rtcp: CmSession },
    Gcm { rtp: GcmSession, rtcp: GcmSession },
}

/// One direction of SRTP and SRTCP for one leg.
pub struct SrtpContext {
    suite: SrtpSuite,
    transform: Transform,
    /// Per SSRC, SRTP: highest index protected, or the receive window.
    rtp_index: SsrcTable<Window>,
    /// Per SSRC, SRTCP: last index sent (in `highest`), or the receive window.
    rtcp_index: SsrcTable<Window>,
    /// The key's MKI, written into every packet we protect and required in
    /// every packet we unprotect; empty without one. RFC 3711 3.1 puts it
    /// between the authenticated part and the HMAC tag (not authenticated);
    /// RFC 7714 puts it after the AEAD tag (SRTP) or the index (SRTCP).
    /// One key per context: a packet naming another MKI names a key we do
    /// not hold, and fails authentication.
    mki: Box<[u8]>,
}

impl SrtpContext {
    /// Keys a context with `material` (RFC 3711 key derivation, rate 0).
    pub fn new(material: &SrtpKeyMaterial) -> Result<Self, SrtpError> {
        let suite = material.suite;
        let key = material.key.expose();
        let salt = material.salt.expose();
        // Checked here so the message names the suite; it carries lengths
        // only, never key bytes.
        if key.len() != suite.key_len() || salt.len() != suite.salt_len() {
            return Err(SrtpError::Other(format!(
                "{suite} needs a {}-byte key and {}-byte salt, got {} and {}",
                suite.key_len(),
                suite.salt_len(),
                key.len(),
                salt.len()
            )));
        }
        let transform = if is_gcm(suite) {
            Transform::Gcm {
                rtp: GcmSession::derive(key, salt, 0)?,
                rtcp: GcmSession::derive(key, salt, LABEL_SRTCP_OFFSET)?,
            }
        } else {
            Transform::Cm {
                rtp: CmSession::derive(key, salt, 0)?,
                rtcp: CmSession::derive(key, salt, LABEL_SRTCP_OFFSET)?,
            }
        };
        Ok(SrtpContext {
            suite,
            transform,
            rtp_index: SsrcTable::new(),
            rtcp_index: SsrcTable::new(),
            mki: material.mki.clone().unwrap_or_default().into_boxed_slice(),
        })
    }

    pub fn suite(&self) -> SrtpSuite {
        self.suite
    }

    /// Encrypts and authenticates the RTP packet in `buf[..len]` in place and
    /// appends the tag; returns the SRTP packet's length. `buf` needs
    /// [`srtp_overhead`] bytes of room after the packet.
    pub fn protect_rtp_in_place(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let tag_len = rtp_tag_len(self.suite);
        let mki_len = self.mki.len();
        room(buf, len, tag_len + mki_len)?;
        let header_len = rtp_header_len(&buf[..len]).ok_or(SrtpError::Malformed)?;
        let ssrc = be32(&buf[8..12]);
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        let mut sent = self.rtp_index.get(ssrc).unwrap_or(Window::new(1));
        let index = estimate_index(sent.highest(), seq)?;
        let roc = (index >> 16) as u32;
        match &self.transform {
            Transform::Cm { rtp, .. } => {
                rtp.apply_keystream(ssrc, index, &mut buf[header_len..len])?;
                let tag = rtp.tag(&buf[..len], &roc.to_be_bytes());
                buf[len..len + mki_len].copy_from_slice(&self.mki);
                buf[len + mki_len..len + mki_len + tag_len].copy_from_slice(&tag[..tag_len]);
            }
            Transform::Gcm { rtp, .. } => {
                let (header, body) = buf.split_at_mut(header_len);
                let tag = rtp.seal(ssrc, index, header, &mut body[..len - header_len])?;
                buf[len..len + tag_len].copy_from_slice(&tag);
                buf[len + tag_len..len + tag_len + mki_len].copy_from_slice(&self.mki);
            }
        }
        sent.accept(index);
        self.rtp_index.put(ssrc, sent);
        Ok(len + tag_len + mki_len)
    }

    /// Authenticates, replay-checks and decrypts the SRTP packet `packet` in
    /// place; returns the RTP packet's length (the tag is left behind it).
    /// On error the packet's state is unspecified and nothing was recorded.
    pub fn unprotect_rtp_in_place(&mut self, packet: &mut [u8]) -> Result<usize, SrtpError> {
        let tag_len = rtp_tag_len(self.suite);
        let mki_len = self.mki.len();
        let header_len = rtp_header_len(packet).ok_or(SrtpError::Malformed)?;
        if packet.len() < header_len + tag_len + mki_len {
            return Err(SrtpError::Malformed);
        }
        // Where the MKI sits: before the HMAC tag, after the AEAD tag.
        let mki_at = if is_gcm(self.suite) {
            packet.len() - mki_len
        } else {
            packet.len() - mki_len - tag_len
        };
        if packet[mki_at..mki_at + mki_len] != *self.mki {
            return Err(SrtpError::AuthFailed);
        }
        let len = packet.len() - tag_len - mki_len;
        let ssrc = be32(&packet[8..12]);
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        // A fresh window for an SSRC not seen yet: it is stored only once a
        // packet authenticated, so sprayed SSRCs leave no state.
        let mut window = self
            .rtp_index
            .get(ssrc)
            .unwrap_or(Window::new(SRTP_REPLAY_WINDOW));
        let index = estimate_index(window.highest(), seq)?;
        window.check(index)?;
        let roc = (index >> 16) as u32;
        match &self.transform {
            Transform::Cm { rtp, .. } => {
                let expected = rtp.tag(&packet[..len], &roc.to_be_bytes());
                if !tags_equal(&expected[..tag_len], &packet[len + mki_len..]) {
                    return Err(SrtpError::AuthFailed);
                }
                rtp.apply_keystream(ssrc, index, &mut packet[header_len..len])?;
            }
            Transform::Gcm { rtp, .. } => {
                let (header, body) = packet[..mki_at].split_at_mut(header_len);
                rtp.open(ssrc, index, header, body)?;
            }
        }
        window.accept(index);
        self.rtp_index.put(ssrc, window);
        Ok(len)
    }

    /// Encrypts and authenticates the (compound) RTCP packet in `buf[..len]`
    /// in place, with E=1 and the next SRTCP index of its sender SSRC (the
    /// first is 1); returns the SRTCP packet's length. `buf` needs
    /// [`srtcp_overhead`] bytes of room after the packet.
    pub fn protect_rtcp_in_place(
        &mut self,
        buf: &mut [u8],
        len: usize,
    ) -> Result<usize, SrtpError> {
        let mki_len = self.mki.len();
        let overhead = srtcp_overhead(self.suite) + mki_len;
        room(buf, len, overhead)?;
        check_rtcp(&buf[..len], RTCP_CLEAR_LEN)?;
        let ssrc = be32(&buf[4..8]);
        let mut sent = self.rtcp_index.get(ssrc).unwrap_or(Window::new(1));
        let index = sent.highest().unwrap_or(0) + 1;
        if index > u64::from(MAX_SRTCP_INDEX) {
            // RFC 3711 9.2: 2^31 SRTCP packets under one key, then rekey.
            return Err(SrtpError::Other("SRTCP index exhausted: rekey".into()));
        }
        let e_index = (index as u32 | 0x8000_0000).to_be_bytes();
        match &self.transform {
            Transform::Cm { rtcp, .. } => {
                rtcp.apply_keystream(ssrc, index, &mut buf[RTCP_CLEAR_LEN..len])?;
                buf[len..len + SRTCP_INDEX_LEN].copy_from_slice(&e_index);
                let end = len + SRTCP_INDEX_LEN;
                let tag = rtcp.tag(&buf[..end], &[]);
                buf[end..end + mki_len].copy_from_slice(&self.mki);
                let end = end + mki_len;
                buf[end..end + SRTCP_HMAC_TAG_LEN].copy_from_slice(&tag[..SRTCP_HMAC_TAG_LEN]);
            }
            Transform::Gcm { rtcp, .. } => {
                let mut aad = [0u8; RTCP_CLEAR_LEN + SRTCP_INDEX_LEN];
                aad[..RTCP_CLEAR_LEN].copy_from_slice(&buf[..RTCP_CLEAR_LEN]);
                aad[RTCP_CLEAR_LEN..].copy_from_slice(&e_index);
                let tag = rtcp.seal(ssrc, index, &aad, &mut buf[RTCP_CLEAR_LEN..len])?;
                buf[len..len + GCM_TAG_LEN].copy_from_slice(&tag);
                let end = len + GCM_TAG_LEN;
                buf[end..end + SRTCP_INDEX_LEN].copy_from_slice(&e_index);
                buf[end + SRTCP_INDEX_LEN..len + overhead].copy_from_slice(&self.mki);
            }
        }
        sent.accept(index);
        self.rtcp_index.put(ssrc, sent);
        Ok(len + overhead)
    }

    /// Authenticates, replay-checks and decrypts the SRTCP packet `packet` in
    /// place; returns the RTCP packet's length.
    pub fn unprotect_rtcp_in_place(&mut self, packet: &mut [u8]) -> Result<usize, SrtpError> {
        let mki_len = self.mki.len();
        let overhead = srtcp_overhead(self.suite) + mki_len;
        check_rtcp(packet, RTCP_CLEAR_LEN + overhead)?;
        // The E flag is the top bit of the index word, which sits before the
        // HMAC tag (AES-CM) or last (AEAD, whose tag precedes it). Every peer
        // we talk to encrypts SRTCP, so E=0 (which would let a packet through
        // with only a tag over plaintext) is treated as failed authentication.
        // The MKI follows the index word (and precedes the HMAC tag).
        let e_at = if is_gcm(self.suite) {
            packet.len() - mki_len - SRTCP_INDEX_LEN
        } else {
            packet.len() - SRTCP_HMAC_TAG_LEN - mki_len - SRTCP_INDEX_LEN
        };
        let mki_at = e_at + SRTCP_INDEX_LEN;
        if packet[mki_at..mki_at + mki_len] != *self.mki {
            return Err(SrtpError::AuthFailed);
        }
        let e_index = be32(&packet[e_at..e_at + SRTCP_INDEX_LEN]);
        if e_index & 0x8000_0000 == 0 {
            return Err(SrtpError::AuthFailed);
        }
        let index = u64::from(e_index & MAX_SRTCP_INDEX);
        let ssrc = be32(&packet[4..8]);
        let mut window = self
            .rtcp_index
            .get(ssrc)
            .unwrap_or(Window::new(SRTCP_REPLAY_WINDOW));
        window.check(index)?;
        let len = match &self.transform {
            Transform::Cm { rtcp, .. } => {
                let tagged = e_at + SRTCP_INDEX_LEN;
                let expected = rtcp.tag(&packet[..tagged], &[]);
                if !tags_equal(&expected[..SRTCP_HMAC_TAG_LEN], &packet[tagged + mki_len..]) {
                    return Err(SrtpError::AuthFailed);
                }
                rtcp.apply_keystream(ssrc, index, &mut packet[RTCP_CLEAR_LEN..e_at])?;
                e_at
            }
            Transform::Gcm { rtcp, .. } => {
                let mut aad = [0u8; RTCP_CLEAR_LEN + SRTCP_INDEX_LEN];
                aad[..RTCP_CLEAR_LEN].copy_from_slice(&packet[..RTCP_CLEAR_LEN]);
                aad[RTCP_CLEAR_LEN..].copy_from_slice(&e_index.to_be_bytes());
                rtcp.open(ssrc, index, &aad, &mut packet[RTCP_CLEAR_LEN..e_at])?;
                e_at - GCM_TAG_LEN
            }
        };
        window.accept(index);
        self.rtcp_index.put(ssrc, window);
        Ok(len)
    }

    // ---- copying forms, for callers that keep the input (tests, the demo
    // trunk): `out` is cleared first and left empty on error.

    /// Encrypts and authenticates the RTP packet `rtp` into `out`.
    pub fn protect_rtp(&mut self, rtp: &[u8], out: &mut Vec<u8>) -> Result<(), SrtpError> {
        copy_then(
            out,
            rtp,
            srtp_overhead(self.suite) + self.mki.len(),
            |buf, len| self.protect_rtp_in_place(buf, len),
        )
    }

    /// Authenticates, replay-checks and decrypts the SRTP packet `srtp` into
    /// `out`.
    pub fn unprotect_rtp(&mut self, srtp: &[u8], out: &mut Vec<u8>) -> Result<(), SrtpError> {
        copy_then(out, srtp, 0, |buf, _| self.unprotect_rtp_in_place(buf))
    }

    /// Encrypts and authenticates the (compound) RTCP packet `rtcp` into
    /// `out`, with E=1 and the next SRTCP index of its sender SSRC.
    pub fn protect_rtcp(&mut self, rtcp: &[u8], out: &mut Vec<u8>) -> Result<(), SrtpError> {
        copy_then(
            out,
            rtcp,
            srtcp_overhead(self.suite) + self.mki.len(),
            |buf, len| self.protect_rtcp_in_place(buf, len),
        )
    }

    /// Authenticates, replay-checks and decrypts the SRTCP packet `srtcp`
    /// into `out`.
    pub fn unprotect_rtcp(&mut self, srtcp: &[u8], out: &mut Vec<u8>) -> Result<(), SrtpError> {
        copy_then(out, srtcp, 0, |buf, _| self.unprotect_rtcp_in_place(buf))
    }
}

/// Copies `input` into `out` with `room` spare bytes, runs `f` on it and keeps
/// the length `f` returns; empties `out` on error.
fn copy_then(
    out: &mut Vec<u8>,
    input: &[u8],
    room: usize,
    f: impl FnOnce(&mut [u8], usize) -> Result<usize, SrtpError>,
) -> Result<(), SrtpError> {
    out.clear();
    out.extend_from_slice(input);
    out.resize(input.len() + room, 0);
    match f(out, input.len()) {
        Ok(len) => {
            out.truncate(len);
            Ok(())
        }
        Err(e) => {
            out.clear();
            Err(e)
        }
    }
}

impl std::fmt::Debug for SrtpContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        write!(f, "SrtpContext({})", self.suite)
    }
}
