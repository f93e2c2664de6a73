//! Failed-login back-off per source address (and per any other key, such as
//! an account name): after a few free mistakes each further failure doubles
//! the wait before the next try is even checked, up to a cap. A right
//! password from another source is never delayed by a guesser's failures.
//!
//! Sans-IO: the caller passes `now`. Memory is bounded: past `capacity`
//! keys, the entries whose wait is over are dropped first, then the oldest.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Failures allowed before any wait.
const FREE_FAILURES: u32 = 3;
/// The first wait; it doubles with each further failure.
const BASE_DELAY: Duration = Duration::from_secs(1);
/// The longest wait.
const MAX_DELAY: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    blocked_until: Instant,
    last: Instant,
}

#[derive(Debug)]
pub struct Throttle<K> {
    entries: HashMap<K, Entry>,
    capacity: usize,
}

impl<K: Hash + Eq + Clone> Throttle<K> {
    pub fn new(capacity: usize) -> Self {
        Throttle {
            entries: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// `Err(wait)` when `key` must wait before its next try.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        match self.entries.get(key) {
            Some(e) if e.blocked_until > now => Err(e.blocked_until - now),
            _ => Ok(()),
        }
    }

    /// A wrong password from `key`: returns the wait now imposed.
    pub fn failure(&mut self, key: &K, now: Instant) -> Duration {
        if !self.entries.contains_key(key) && self.entries.len() >= self.capacity {
            self.evict(now);
        }
        let entry = self.entries.entry(key.clone()).or_insert(Entry {
            failures: 0,
            blocked_until: now,
            last: now,
        });
        entry.failures = entry.failures.saturating_add(1);
        entry.last = now;
        let delay = match entry.failures.checked_sub(FREE_FAILURES) {
            None | Some(0) => Duration::ZERO,
            Some(n) => BASE_DELAY
                .checked_mul(1u32 << (n - 1).min(16))
                .unwrap_or(MAX_DELAY)
                .min(MAX_DELAY),
        };
        entry.blocked_until = now + delay;
        delay
    }

    /// A right password: the key starts afresh.
    pub fn success(&mut self, key: &K) {
        self.entries.remove(key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn evict(&mut self, now: Instant) {
        self.entries.retain(|_, e| e.blocked_until > now);
        if self.entries.len() >= self.capacity {
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last)
                .map(|(k, _)| k.clone())
            {
                self.entries.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_after_the_free_failures_and_reset_on_success() {
        let mut t = Throttle::new(16);
        let now = Instant::now();
        let waits: Vec<u64> = (0..7).map(|_| t.failure(&"a", now).as_secs()).collect();
        assert_eq!(waits, [0, 0, 0, 1, 2, 4, 8]);
        assert_eq!(t.check(&"a", now), Err(Duration::from_secs(8)));
        assert_eq!(t.check(&"b", now), Ok(()), "another source is not delayed");
        assert_eq!(t.check(&"a", now + Duration::from_secs(8)), Ok(()));
        t.success(&"a");
        assert_eq!(t.check(&"a", now), Ok(()));
        for _ in 0..40 {
            t.failure(&"c", now);
        }
        assert_eq!(t.check(&"c", now), Err(MAX_DELAY));
    }

    #[test]
    fn memory_is_bounded() {
        let mut t = Throttle::new(100);
        let now = Instant::now();
        for i in 0..10_000u32 {
            for _ in 0..5 {
                t.failure(&i, now + Duration::from_millis(u64::from(i)));
            }
        }
        assert!(t.len() <= 100, "{}", t.len());
        // The newest guessers are the ones still held.
        assert!(t.check(&9_999, now + Duration::from_secs(10)).is_err());
    }
}
