//! Which SSRC a leg forwards, per leg and direction.
//!
//! A leg forwards one stream at a time. Its SSRC is either announced in the
//! leg's SDP (`a=ssrc`) or learned from the first packet that authenticated on
//! the leg. Another SSRC takes over only when the current one has been silent
//! for [`SsrcFilter::silence`] (a trunk B2BUA that transferred the call
//! without telling us, a browser that restarted its sender) or after
//! [`SsrcFilter::reset`] (re-INVITE / renegotiation). Anything else is dropped
//! as [`DropReason::UnknownSsrc`]: an SRTP key holder that injects a second
//! stream, or a misrouted stream of another call on a plain RTP trunk.
//!
//! The check is split in two so the relay can ask before it spends a
//! decryption (and before rtc-srtp creates per-SSRC state for a packet that
//! may not even authenticate): [`SsrcFilter::check`] is pure, and
//! [`SsrcFilter::accept`] records the packet once it authenticated.

use std::time::{Duration, Instant};

use super::counters::DropReason;
use crate::types::Ssrc;

/// The SSRC policy of one direction of one leg. Time comes in as `now`.
#[derive(Debug, Clone)]
pub struct SsrcFilter {
    /// SSRCs the SDP announced; empty means "learn the first one".
    announced: Vec<Ssrc>,
    /// The stream being forwarded and when its last packet was accepted.
    current: Option<(Ssrc, Instant)>,
    silence: Duration,
}

/// What [`SsrcFilter::accept`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SsrcChange {
    /// Same stream as before.
    Same,
    /// The first stream of the leg (or the first after a reset).
    First,
    /// Another stream took over (the old one went silent).
    Switched { from: Ssrc },
}

impl SsrcFilter {
    /// How long a stream must be silent before another SSRC may take over.
    pub const DEFAULT_SILENCE: Duration = Duration::from_secs(2);

    pub fn new(announced: Vec<Ssrc>, silence: Duration) -> Self {
        SsrcFilter {
            announced,
            current: None,
            silence,
        }
    }

    pub fn silence(&self) -> Duration {
        self.silence
    }

    /// The SSRC currently forwarded, if any packet was accepted yet.
    pub fn current(&self) -> Option<Ssrc> {
        self.current.map(|(ssrc, _)| ssrc)
    }

    /// Forget the current stream and take a new announcement (empty: learn
    /// again). Called on a re-INVITE that renegotiated the leg.
    pub fn reset(&mut self, announced: Vec<Ssrc>) {
        self.announced = announced;
        self.current = None;
    }

    /// Whether a packet with `ssrc` may be forwarded, without changing state.
    pub fn check(&self, ssrc: Ssrc, now: Instant) -> Result<(), DropReason> {
        match self.current {
            Some((current, _)) if current == ssrc => Ok(()),
            // The announcement decides the first stream only; once a stream
            // has gone silent any successor is accepted, announced or not,
            // because a trunk that changes its stream rarely re-announces it.
            Some((_, last)) if now.saturating_duration_since(last) >= self.silence => Ok(()),
            Some(_) => Err(DropReason::UnknownSsrc),
            None if self.announced.is_empty() || self.announced.contains(&ssrc) => Ok(()),
            None => Err(DropReason::UnknownSsrc),
        }
    }

    /// Records an authenticated packet of `ssrc`. Call only after
    /// [`check`](Self::check) returned `Ok` for the same `ssrc` and `now`.
    pub fn accept(&mut self, ssrc: Ssrc, now: Instant) -> SsrcChange {
        let change = match self.current {
            Some((current, _)) if current == ssrc => SsrcChange::Same,
            Some((from, _)) => SsrcChange::Switched { from },
            None => SsrcChange::First,
        };
        self.current = Some((ssrc, now));
        change
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn learns_the_first_stream_and_rejects_others_while_it_talks() {
        let t0 = Instant::now();
        let mut f = SsrcFilter::new(vec![], SsrcFilter::DEFAULT_SILENCE);
        assert_eq!(f.check(Ssrc(1), t0), Ok(()));
        assert_eq!(f.accept(Ssrc(1), t0), SsrcChange::First);
        assert_eq!(f.current(), Some(Ssrc(1)));
        for i in 1..100 {
            let now = t0 + ms(20 * i);
            assert_eq!(f.check(Ssrc(2), now), Err(DropReason::UnknownSsrc));
            assert_eq!(f.check(Ssrc(1), now), Ok(()));
            assert_eq!(f.accept(Ssrc(1), now), SsrcChange::Same);
        }
    }

    #[test]
    fn a_new_stream_takes_over_after_silence() {
        let t0 = Instant::now();
        let mut f = SsrcFilter::new(vec![], ms(2000));
        f.accept(Ssrc(1), t0);
        assert_eq!(
            f.check(Ssrc(2), t0 + ms(1999)),
            Err(DropReason::UnknownSsrc)
        );
        assert_eq!(f.check(Ssrc(2), t0 + ms(2000)), Ok(()));
        assert_eq!(
            f.accept(Ssrc(2), t0 + ms(2000)),
            SsrcChange::Switched { from: Ssrc(1) }
        );
        // Now the old one is the intruder.
        assert_eq!(
            f.check(Ssrc(1), t0 + ms(2020)),
            Err(DropReason::UnknownSsrc)
        );
    }

    #[test]
    fn announced_ssrcs_decide_the_first_stream() {
        let t0 = Instant::now();
        let mut f = SsrcFilter::new(vec![Ssrc(7), Ssrc(8)], ms(2000));
        assert_eq!(f.check(Ssrc(1), t0), Err(DropReason::UnknownSsrc));
        assert_eq!(f.check(Ssrc(8), t0), Ok(()));
        f.accept(Ssrc(8), t0);
        assert_eq!(f.check(Ssrc(7), t0 + ms(20)), Err(DropReason::UnknownSsrc));
    }

    #[test]
    fn check_does_not_learn() {
        let t0 = Instant::now();
        let f = SsrcFilter::new(vec![], ms(2000));
        assert_eq!(f.check(Ssrc(1), t0), Ok(()));
        assert_eq!(f.current(), None);
    }

    #[test]
    fn reset_accepts_a_new_stream_at_once() {
        let t0 = Instant::now();
        let mut f = SsrcFilter::new(vec![], ms(2000));
        f.accept(Ssrc(1), t0);
        f.reset(vec![Ssrc(5)]);
        assert_eq!(f.check(Ssrc(1), t0 + ms(20)), Err(DropReason::UnknownSsrc));
        assert_eq!(f.check(Ssrc(5), t0 + ms(20)), Ok(()));
        assert_eq!(f.accept(Ssrc(5), t0 + ms(20)), SsrcChange::First);
        f.reset(vec![]);
        assert_eq!(f.check(Ssrc(9), t0 + ms(40)), Ok(()));
    }
}
