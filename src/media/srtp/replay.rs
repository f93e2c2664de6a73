//! Per-SSRC packet indices: the rollover counter estimate (RFC 3711 3.3.1 and
//! Appendix A), the replay window (3.3.2), and a small fixed table holding
//! them for the few SSRCs a leg sees.

use super::SrtpError;

/// A sliding window of accepted indices, `width` ≤ 128 wide, anchored at the
/// highest index accepted. The first index accepted starts it (RFC 3711
/// leaves the start to the receiver; libsrtp and rtc-srtp do the same).
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    /// Highest index accepted; meaningless until `started`.
    highest: u64,
    /// Bit d set: index `highest - d` was accepted.
    seen: u128,
    width: u32,
    started: bool,
}

impl Window {
    pub(super) fn new(width: u32) -> Self {
        Window {
            highest: 0,
            seen: 0,
            width: width.clamp(1, 128),
            started: false,
        }
    }

    pub(super) fn highest(&self) -> Option<u64> {
        self.started.then_some(self.highest)
    }

    /// Whether `index` may be accepted: newer than anything seen, or inside
    /// the window and not seen yet. Changes nothing, so a packet that then
    /// fails authentication costs the genuine one nothing.
    pub(super) fn check(&self, index: u64) -> Result<(), SrtpError> {
        if !self.started || index > self.highest {
            return Ok(());
        }
        let age = self.highest - index;
        if age >= u64::from(self.width) || self.seen & (1u128 << age) != 0 {
            return Err(SrtpError::Replay);
        }
        Ok(())
    }

    /// Records `index` as received (after it authenticated).
    pub(super) fn accept(&mut self, index: u64) {
        if !self.started {
            self.started = true;
            self.highest = index;
            self.seen = 1;
        } else if index > self.highest {
            let shift = index - self.highest;
            self.seen = if shift >= 128 { 0 } else { self.seen << shift } | 1;
            self.highest = index;
        } else {
            let age = self.highest - index;
            if age < 128 {
                self.seen |= 1u128 << age;
            }
        }
    }
}

/// The 48-bit SRTP index of a packet with sequence number `seq`, given the
/// highest index seen on its SSRC (RFC 3711 Appendix A): the rollover counter
/// that puts `seq` closest to the highest one. A stream's first packet gets
/// ROC 0. Before the first wrap, "half a cycle behind" would be a negative
/// ROC and is read as a jump ahead instead.
pub(super) fn estimate_index(highest: Option<u64>, seq: u16) -> Result<u64, SrtpError> {
    let Some(highest) = highest else {
        return Ok(u64::from(seq));
    };
    let roc = highest >> 16;
    let s_l = highest as u16;
    let v = if s_l < 0x8000 {
        if seq > s_l && seq - s_l > 0x8000 {
            roc.saturating_sub(1)
        } else {
            roc
        }
    } else if s_l - 0x8000 > seq {
        roc + 1
    } else {
        roc
    };
    // RFC 3711 9.2: 2^48 packets under one key, then it must be replaced.
    if v > u64::from(u32::MAX) {
        return Err(SrtpError::Other(
            "SRTP packet index exhausted: rekey".into(),
        ));
    }
    Ok(v << 16 | u64::from(seq))
}

/// The per-SSRC states of one context, most recently used first. A leg
/// forwards one SSRC at a time (the relay's SSRC filter), so a handful of
/// slots covers stream switches; the least recently used is forgotten when a
/// new SSRC needs room. Room for one SSRC is reserved at keying (most legs
/// never see a second): the table grows, up to its bound, only when another
/// SSRC authenticates, so there is no allocation per packet, no state for
/// SSRCs that never authenticated, and 4 contexts x 2 tables do not hold 8
/// slots each for a call that uses one (about 2.5 KiB per call).
pub(super) struct SsrcTable<T> {
    slots: Vec<(u32, T)>,
}

/// SSRCs remembered per context and direction.
pub(super) const SSRC_SLOTS: usize = 8;

impl<T: Copy> SsrcTable<T> {
    pub(super) fn new() -> Self {
        SsrcTable {
            slots: Vec::with_capacity(1),
        }
    }

    pub(super) fn get(&self, ssrc: u32) -> Option<T> {
        self.slots.iter().find(|(s, _)| *s == ssrc).map(|(_, t)| *t)
    }

    /// Stores `value` for `ssrc` and makes it the most recently used.
    pub(super) fn put(&mut self, ssrc: u32, value: T) {
        match self.slots.iter().position(|(s, _)| *s == ssrc) {
            Some(0) => self.slots[0].1 = value,
            Some(at) => {
                self.slots[at].1 = value;
                self.slots[..=at].rotate_right(1);
            }
            None => {
                if self.slots.len() == SSRC_SLOTS {
                    self.slots.pop();
                }
                self.slots.insert(0, (ssrc, value));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_accepts_new_and_reordered_refuses_seen_and_old() {
        let mut w = Window::new(128);
        assert!(w.check(1000).is_ok());
        w.accept(1000);
        assert_eq!(w.check(1000), Err(SrtpError::Replay));
        assert!(w.check(999).is_ok());
        w.accept(999);
        assert_eq!(w.check(999), Err(SrtpError::Replay));
        assert!(w.check(1000 - 127).is_ok());
        assert_eq!(w.check(1000 - 128), Err(SrtpError::Replay), "too old");
        w.accept(1300);
        assert!(w.check(1000).is_err(), "now outside the window");
        assert!(w.check(1299).is_ok());
    }

    #[test]
    fn index_follows_wraps_both_ways() {
        assert_eq!(estimate_index(None, 65535), Ok(65535));
        // Just before a wrap, the next packets are in the next cycle.
        assert_eq!(estimate_index(Some(65535), 2), Ok(65536 + 2));
        // Just after one, a late packet is from the previous cycle.
        assert_eq!(estimate_index(Some(65536 + 2), 65534), Ok(65534));
        // ROC 0 and far "behind": a jump ahead, not ROC -1.
        assert_eq!(estimate_index(Some(100), 40_000), Ok(40_000));
        assert!(estimate_index(Some(u64::from(u32::MAX) << 16 | 0xffff), 1).is_err());
    }

    #[test]
    fn table_keeps_the_most_recent_ssrcs_without_growing() {
        let mut t = SsrcTable::new();
        for ssrc in 0..20u32 {
            t.put(ssrc, ssrc * 10);
        }
        assert_eq!(t.slots.capacity(), SSRC_SLOTS);
        assert_eq!(t.get(19), Some(190));
        assert_eq!(t.get(11), None);
        t.put(12, 1);
        t.put(30, 3);
        assert_eq!(t.get(12), Some(1), "used recently, kept");
        assert_eq!(t.get(13), None, "least recently used, forgotten");
    }
}
