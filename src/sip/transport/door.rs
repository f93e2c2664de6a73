//! The SIP front door: who gets service, and who is shut out for flooding.
//!
//! A source inside a trunk's `inbound_sources` or at a trunk's address is
//! known and gets full service. Anyone else is a stranger: its requests are
//! answered with nothing (or 403 with `sip.answer_strangers`) and nothing it
//! sends reaches a call, even with a live call's Call-ID and tags, so the
//! gateway cannot be used as a reflector, fingerprinted, or have its calls
//! ended by a forged BYE from elsewhere. A stranger sending more than `requests_per_second` is
//! banned for `ban`: its datagrams are dropped before they are even parsed,
//! logged once per ban and counted.
//!
//! Sans-IO (the caller passes `now`) and bounded: at most `capacity` sources
//! are tracked; past it, expired entries go first, then the least recently
//! seen. Known sources are never tracked nor banned.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::cidr_contains;

#[derive(Debug, Clone)]
pub struct DoorConfig {
    /// Known sources: trunks' `inbound_sources` and trunk addresses.
    pub known: Vec<(IpAddr, u8)>,
    /// Answer strangers' out-of-dialog requests with 403 instead of silence.
    pub answer_strangers: bool,
    pub requests_per_second: u32,
    /// INVITE transactions in progress per source outside the trunks'
    /// addresses (sources that authenticated as a trunk).
    pub concurrent_transactions: u32,
    pub ban: Duration,
    /// Sources tracked at most.
    pub capacity: usize,
}

impl Default for DoorConfig {
    fn default() -> Self {
        DoorConfig {
            known: Vec::new(),
            answer_strangers: false,
            requests_per_second: 50,
            concurrent_transactions: 20,
            ban: Duration::from_secs(60),
            capacity: 16 * 1024,
        }
    }
}

impl DoorConfig {
    /// Everybody is known: for endpoints that are not on a public address
    /// (the demo echo trunk on loopback, tests).
    pub fn open() -> Self {
        DoorConfig {
            known: vec![
                (IpAddr::from([0u8, 0, 0, 0]), 0),
                (IpAddr::from([0u16; 8]), 0),
            ],
            ..DoorConfig::default()
        }
    }
}

/// What to do with a datagram or frame from a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Full service.
    Known,
    /// A source that proved itself a trunk with digest credentials lately:
    /// its in-dialog messages reach their calls and it is not rate-limited,
    /// but each new request must still carry credentials.
    Trusted,
    /// No service: not routed to any call, answered with nothing (or 403
    /// with `answer_strangers`).
    Stranger,
    /// Drop it unread. `newly` on the message that caused the ban.
    Banned { newly: bool },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start: Instant,
    count: u32,
    banned_until: Option<Instant>,
    last_seen: Instant,
}

/// How long a source stays trusted after its last authenticated request.
const TRUST_FOR: Duration = Duration::from_secs(3600);

#[derive(Debug)]
pub struct Door {
    cfg: DoorConfig,
    table: Mutex<HashMap<IpAddr, Entry>>,
    /// Sources that authenticated as a trunk, until when (bounded like
    /// `table`).
    trusted: Mutex<HashMap<IpAddr, Instant>>,
    pub bans_total: AtomicU64,
    pub dropped_banned: AtomicU64,
    pub strangers_ignored: AtomicU64,
    /// 401s sent to strangers (stateless digest challenges).
    pub challenges_sent: AtomicU64,
}

impl Door {
    pub fn new(cfg: DoorConfig) -> Self {
        Door {
            cfg,
            table: Mutex::new(HashMap::new()),
            trusted: Mutex::new(HashMap::new()),
            bans_total: AtomicU64::new(0),
            dropped_banned: AtomicU64::new(0),
            strangers_ignored: AtomicU64::new(0),
            challenges_sent: AtomicU64::new(0),
        }
    }

    pub fn answer_strangers(&self) -> bool {
        self.cfg.answer_strangers
    }

    pub fn is_known(&self, ip: IpAddr) -> bool {
        self.cfg.known.iter().any(|net| cidr_contains(*net, ip))
    }

    /// `ip` answered a digest challenge as a trunk: trust it for a while.
    pub fn trust(&self, ip: IpAddr, now: Instant) {
        let Ok(mut trusted) = self.trusted.lock() else {
            return;
        };
        if !trusted.contains_key(&ip) && trusted.len() >= self.cfg.capacity {
            trusted.retain(|_, until| *until > now);
            if trusted.len() >= self.cfg.capacity {
                if let Some(oldest) = trusted.iter().min_by_key(|(_, u)| **u).map(|(ip, _)| *ip) {
                    trusted.remove(&oldest);
                }
            }
        }
        trusted.insert(ip, now + TRUST_FOR);
        // A source banned before it authenticated is not banned now.
        if let Ok(mut table) = self.table.lock() {
            table.remove(&ip);
        }
    }

    fn is_trusted(&self, ip: IpAddr, now: Instant) -> bool {
        self.trusted
            .lock()
            .is_ok_and(|t| t.get(&ip).is_some_and(|until| *until > now))
    }

    /// Counts one message from `ip` and says how to treat it.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Verdict {
        if self.is_known(ip) {
            return Verdict::Known;
        }
        if self.is_trusted(ip, now) {
            return Verdict::Trusted;
        }
        let Ok(mut table) = self.table.lock() else {
            return Verdict::Stranger;
        };
        if !table.contains_key(&ip) && table.len() >= self.cfg.capacity {
            evict(&mut table, now, self.cfg.capacity);
        }
        let entry = table.entry(ip).or_insert(Entry {
            window_start: now,
            count: 0,
            banned_until: None,
            last_seen: now,
        });
        entry.last_seen = now;
        if let Some(until) = entry.banned_until {
            if now < until {
                self.dropped_banned.fetch_add(1, Ordering::Relaxed);
                return Verdict::Banned { newly: false };
            }
            entry.banned_until = None;
            entry.count = 0;
            entry.window_start = now;
        }
        if now.saturating_duration_since(entry.window_start) >= Duration::from_secs(1) {
            entry.window_start = now;
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        if entry.count > self.cfg.requests_per_second {
            entry.banned_until = Some(now + self.cfg.ban);
            self.bans_total.fetch_add(1, Ordering::Relaxed);
            self.dropped_banned.fetch_add(1, Ordering::Relaxed);
            return Verdict::Banned { newly: true };
        }
        Verdict::Stranger
    }

    /// Bans `ip` now (over its concurrent transactions), trusted or not;
    /// false when it was banned already. Known sources are never banned.
    pub fn ban(&self, ip: IpAddr, now: Instant) -> bool {
        if self.is_known(ip) {
            return false;
        }
        if let Ok(mut trusted) = self.trusted.lock() {
            trusted.remove(&ip);
        }
        let Ok(mut table) = self.table.lock() else {
            return false;
        };
        if !table.contains_key(&ip) && table.len() >= self.cfg.capacity {
            evict(&mut table, now, self.cfg.capacity);
        }
        let entry = table.entry(ip).or_insert(Entry {
            window_start: now,
            count: 0,
            banned_until: None,
            last_seen: now,
        });
        entry.last_seen = now;
        if entry.banned_until.is_some_and(|until| until > now) {
            return false;
        }
        entry.banned_until = Some(now + self.cfg.ban);
        self.bans_total.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// At most this many INVITE transactions in progress from one source
    /// outside the trunks' addresses.
    pub fn concurrent_transactions(&self) -> u32 {
        self.cfg.concurrent_transactions
    }

    /// Sources banned now, with the time left.
    pub fn bans(&self, now: Instant) -> Vec<(IpAddr, Duration)> {
        let Ok(table) = self.table.lock() else {
            return Vec::new();
        };
        let mut bans: Vec<(IpAddr, Duration)> = table
            .iter()
            .filter_map(|(ip, e)| {
                e.banned_until
                    .filter(|until| *until > now)
                    .map(|until| (*ip, until - now))
            })
            .collect();
        bans.sort();
        bans
    }

    pub fn tracked(&self) -> usize {
        self.table.lock().map(|t| t.len()).unwrap_or(0)
    }

    pub fn requests_per_second(&self) -> u32 {
        self.cfg.requests_per_second
    }
}

/// Makes room for one entry: drops what has expired (no ban running, window
/// over), else the least recently seen source that is not banned, else the
/// least recently seen one.
fn evict(table: &mut HashMap<IpAddr, Entry>, now: Instant, capacity: usize) {
    table.retain(|_, e| {
        e.banned_until.is_some_and(|u| u > now)
            || now.saturating_duration_since(e.window_start) < Duration::from_secs(1)
    });
    if table.len() < capacity {
        return;
    }
    let victim = table
        .iter()
        .filter(|(_, e)| e.banned_until.is_none())
        .min_by_key(|(_, e)| e.last_seen)
        .or_else(|| table.iter().min_by_key(|(_, e)| e.last_seen))
        .map(|(ip, _)| *ip);
    if let Some(ip) = victim {
        table.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn door(rps: u32, capacity: usize) -> Door {
        Door::new(DoorConfig {
            known: vec![("127.0.0.1".parse().unwrap(), 32)],
            answer_strangers: false,
            requests_per_second: rps,
            concurrent_transactions: 20,
            ban: Duration::from_secs(60),
            capacity,
        })
    }

    #[test]
    fn a_flooding_stranger_is_banned_and_a_trunk_never_is() {
        let d = door(10, 100);
        let t0 = Instant::now();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        let trunk: IpAddr = "127.0.0.1".parse().unwrap();
        for i in 0..10 {
            assert_eq!(
                d.admit(stranger, t0 + Duration::from_millis(i)),
                Verdict::Stranger
            );
        }
        assert_eq!(
            d.admit(stranger, t0 + Duration::from_millis(10)),
            Verdict::Banned { newly: true }
        );
        assert_eq!(
            d.admit(stranger, t0 + Duration::from_secs(30)),
            Verdict::Banned { newly: false }
        );
        for _ in 0..1000 {
            assert_eq!(d.admit(trunk, t0), Verdict::Known);
        }
        assert_eq!(d.bans(t0 + Duration::from_secs(1)).len(), 1);
        assert_eq!(d.bans_total.load(Ordering::Relaxed), 1);
        // The ban ends; a polite stranger is not banned again.
        let later = t0 + Duration::from_secs(61);
        assert_eq!(d.admit(stranger, later), Verdict::Stranger);
        assert!(d.bans(later).is_empty());
    }

    #[test]
    fn a_steady_rate_under_the_limit_is_never_banned() {
        let d = door(10, 100);
        let t0 = Instant::now();
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        for i in 0..200u64 {
            // 5 per second.
            assert_eq!(
                d.admit(ip, t0 + Duration::from_millis(i * 200)),
                Verdict::Stranger
            );
        }
    }

    #[test]
    fn an_authenticated_source_is_trusted_for_a_while_and_never_banned() {
        let d = door(2, 100);
        let t0 = Instant::now();
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        for i in 0..3 {
            d.admit(ip, t0 + Duration::from_millis(i));
        }
        assert!(matches!(d.admit(ip, t0), Verdict::Banned { .. }));
        d.trust(ip, t0);
        for i in 0..100 {
            assert_eq!(d.admit(ip, t0 + Duration::from_millis(i)), Verdict::Trusted);
        }
        assert_eq!(
            d.admit(ip, t0 + TRUST_FOR + Duration::from_secs(1)),
            Verdict::Stranger
        );
        // Banned for its transactions: no longer trusted, dropped unread.
        d.trust(ip, t0);
        assert!(d.ban(ip, t0));
        assert!(!d.ban(ip, t0));
        assert_eq!(d.admit(ip, t0), Verdict::Banned { newly: false });
        assert!(!d.ban("127.0.0.1".parse().unwrap(), t0));
    }

    #[test]
    fn memory_stays_bounded_under_a_spoofed_source_flood() {
        let d = door(1, 1000);
        let t0 = Instant::now();
        for i in 0..100_000u32 {
            let ip = IpAddr::from(i.wrapping_mul(2_654_435_761).to_be_bytes());
            d.admit(ip, t0 + Duration::from_micros(u64::from(i)));
            d.admit(ip, t0 + Duration::from_micros(u64::from(i)));
        }
        assert!(d.tracked() <= 1000, "{}", d.tracked());
    }
}
