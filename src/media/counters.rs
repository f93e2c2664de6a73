//! Packet counters of the media plane.
//!
//! Every call owns a [`CallCounters`] (one [`LegCounters`] per leg) that only
//! its relay writes; every media worker owns a [`WorkerStats`] with the same
//! figures summed over its calls, and the process-wide [`MediaStats`] sums
//! the workers' shards when read. All are plain atomics, each written by one
//! thread only (a relaxed load and store): the packet path takes no lock and
//! shares no cache line with another core, and a reader (stats page,
//! Prometheus scrape, CDR) sees values that are each exact but not a
//! snapshot taken at one instant, which is all a counter needs.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Why the relay dropped a datagram. Every drop is counted under exactly one
/// reason, on the leg the datagram arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// RTP/RTCP whose SSRC the leg's filter does not accept (not announced,
    /// not learned, and the current stream has not gone silent).
    UnknownSsrc,
    /// SRTP/SRTCP whose authentication tag did not verify.
    AuthFailed,
    /// SRTP/SRTCP already received (replay window).
    Replay,
    /// Too short, wrong version, unknown first byte, or a protocol this leg
    /// does not speak (e.g. DTLS on an SDES trunk).
    Malformed,
    /// An RTP payload type absent from the call's payload map.
    UnknownPayloadType,
    /// Media before the browser's DTLS handshake completed (no keys yet), or
    /// after the relay failed or stopped.
    NotReady,
    /// From an address that did not pass ICE (browser) or is not the
    /// signaled/latched trunk address.
    WrongSource,
    /// A STUN message the ICE-lite agent refused (bad credentials or
    /// integrity, not a binding request).
    StunRejected,
}

impl DropReason {
    /// Every reason, in the order of [`DropReason::index`].
    pub const ALL: [DropReason; 8] = [
        DropReason::UnknownSsrc,
        DropReason::AuthFailed,
        DropReason::Replay,
        DropReason::Malformed,
        DropReason::UnknownPayloadType,
        DropReason::NotReady,
        DropReason::WrongSource,
        DropReason::StunRejected,
    ];

    /// Position in [`DropReason::ALL`] and in the counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The Prometheus label value (`reason="..."`).
    pub fn label(self) -> &'static str {
        match self {
            DropReason::UnknownSsrc => "unknown_ssrc",
            DropReason::AuthFailed => "auth_failed",
            DropReason::Replay => "replay",
            DropReason::Malformed => "malformed",
            DropReason::UnknownPayloadType => "unknown_payload_type",
            DropReason::NotReady => "not_ready",
            DropReason::WrongSource => "wrong_source",
            DropReason::StunRejected => "stun_rejected",
        }
    }
}

/// Counters of one leg of one call (or, inside [`MediaStats`], of all legs of
/// one kind). `*_in` counts every datagram received on the leg's sockets
/// (STUN and DTLS included, dropped ones included); `*_out` counts every
/// datagram the relay queued for sending on the leg.
#[derive(Debug, Default)]
pub struct LegCounters {
    pub packets_in: AtomicU64,
    pub packets_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
    /// From the peer's latest RTCP report block: fraction lost (parts per
    /// million), interarrival jitter and round trip (µs); each stored + 1 so
    /// that 0 means "no report yet".
    rtcp_loss_ppm: AtomicU64,
    rtcp_jitter_us: AtomicU64,
    rtcp_rtt_us: AtomicU64,
}

impl LegCounters {
    /// Drops counted under `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()].load(Relaxed)
    }

    /// Sum of all drops.
    pub fn drops_total(&self) -> u64 {
        self.drops.iter().map(|d| d.load(Relaxed)).sum()
    }

    /// A plain copy of the current values, for tests, CDRs and the stats page.
    pub fn snapshot(&self) -> LegSnapshot {
        LegSnapshot {
            packets_in: self.packets_in.load(Relaxed),
            packets_out: self.packets_out.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            drops: std::array::from_fn(|i| self.drops[i].load(Relaxed)),
        }
    }

    /// Loss (ppm), jitter (µs) and round trip (µs) from RTCP, when known.
    pub fn rtcp(&self) -> (Option<u64>, Option<u64>, Option<u64>) {
        let get = |a: &AtomicU64| a.load(Relaxed).checked_sub(1);
        (
            get(&self.rtcp_loss_ppm),
            get(&self.rtcp_jitter_us),
            get(&self.rtcp_rtt_us),
        )
    }

    pub(crate) fn set_rtcp(&self, loss_ppm: u64, jitter_us: u64, rtt_us: Option<u64>) {
        self.rtcp_loss_ppm
            .store(loss_ppm.saturating_add(1), Relaxed);
        self.rtcp_jitter_us
            .store(jitter_us.saturating_add(1), Relaxed);
        if let Some(rtt) = rtt_us {
            self.rtcp_rtt_us.store(rtt.saturating_add(1), Relaxed);
        }
    }

    // Counters have a single writer (a call's own are written only by its
    // relay, a worker's shard only by that worker's thread): a load and a
    // store rather than a locked add, which is a plain `mov` on x86 and
    // takes a few ns off every packet. Readers still see whole values.

    pub(crate) fn add_in_single_writer(&self, bytes: usize) {
        bump(&self.packets_in, 1);
        bump(&self.bytes_in, bytes as u64);
    }

    pub(crate) fn add_out_single_writer(&self, bytes: usize) {
        bump(&self.packets_out, 1);
        bump(&self.bytes_out, bytes as u64);
    }

    pub(crate) fn add_drop_single_writer(&self, reason: DropReason) {
        bump(&self.drops[reason.index()], 1);
    }
}

/// `counter += n` for a counter only the calling thread writes.
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

/// Plain values copied out of a [`LegCounters`] (or summed over workers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LegSnapshot {
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub drops: [u64; DropReason::ALL.len()],
}

impl LegSnapshot {
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }
}

/// The two legs of a call, as seen from the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Leg {
    Browser,
    Trunk,
}

impl Leg {
    pub fn label(self) -> &'static str {
        match self {
            Leg::Browser => "browser",
            Leg::Trunk => "trunk",
        }
    }
}

/// Counters of one call, owned by the call (its relay writes, stats read).
#[derive(Debug, Default)]
pub struct CallCounters {
    pub browser: LegCounters,
    pub trunk: LegCounters,
    /// SRTP contexts (one per keyed direction) the relay created for this
    /// call: 4 for a call the gateway decrypts on both legs, and 0 for a
    /// private call, whose media keys the gateway never holds.
    pub srtp_contexts: AtomicU64,
}

impl CallCounters {
    pub fn leg(&self, leg: Leg) -> &LegCounters {
        match leg {
            Leg::Browser => &self.browser,
            Leg::Trunk => &self.trunk,
        }
    }
}

/// One media worker's share of the process-wide figures: every call's
/// counters summed over the calls of that worker, plus call gauges. Written
/// only by its worker's thread (the relays it owns and its demultiplexer),
/// so each update is a plain load and store rather than a locked add, and
/// the cache line stays on that worker's core instead of bouncing between
/// all of them; [`MediaStats`] sums the shards when read.
#[derive(Debug, Default)]
// Two cache lines (the adjacent-line prefetcher pairs them): neighbouring
// shards never share one.
#[repr(align(128))]
pub struct WorkerStats {
    pub browser: LegCounters,
    pub trunk: LegCounters,
    /// Calls running on this worker.
    pub calls_active: AtomicU64,
    /// Calls ever started on this worker.
    pub calls_started: AtomicU64,
    /// Browser legs whose DTLS handshake completed.
    pub dtls_connected: AtomicU64,
    /// Browser legs whose DTLS handshake failed (including a fingerprint mismatch).
    pub dtls_failed: AtomicU64,
    /// Calls ended by the media timeout.
    pub media_timeouts: AtomicU64,
    /// Datagrams on a shared browser port (single-port mode) that no call
    /// claims: not a STUN check, from an address no call validated.
    pub unknown_source_dropped: AtomicU64,
    /// STUN checks on a shared browser port whose USERNAME names no call.
    pub unknown_ufrag_dropped: AtomicU64,
}

impl WorkerStats {
    pub fn leg(&self, leg: Leg) -> &LegCounters {
        match leg {
            Leg::Browser => &self.browser,
            Leg::Trunk => &self.trunk,
        }
    }

    /// Counts a datagram on a shared browser port that no call claims.
    pub(crate) fn add_unrouted(&self, unknown_ufrag: bool) {
        let counter = if unknown_ufrag {
            &self.unknown_ufrag_dropped
        } else {
            &self.unknown_source_dropped
        };
        bump(counter, 1);
    }

    /// `counter += 1` on one of this shard's gauges (its worker's thread only).
    pub(crate) fn incr(counter: &AtomicU64) {
        bump(counter, 1);
    }

    /// `counter -= 1` on one of this shard's gauges (its worker's thread only).
    pub(crate) fn decr(counter: &AtomicU64) {
        counter.store(counter.load(Relaxed).wrapping_sub(1), Relaxed);
    }
}

/// The process-wide media figures: the [`WorkerStats`] of every worker,
/// summed when read (stats page, `/metrics`, the API). One instance per
/// [`MediaEngine`](super::engine::MediaEngine).
#[derive(Debug, Default)]
pub struct MediaStats {
    workers: Vec<Arc<WorkerStats>>,
}

impl MediaStats {
    /// The sum of `shards` (one per worker).
    pub fn new(shards: Vec<Arc<WorkerStats>>) -> Self {
        MediaStats { workers: shards }
    }

    /// Every worker's value of one field, summed.
    fn total(&self, field: impl Fn(&WorkerStats) -> &AtomicU64) -> u64 {
        self.workers
            .iter()
            .map(|w| field(w).load(Relaxed))
            .fold(0, u64::wrapping_add)
    }

    /// One leg's counters summed over the workers.
    pub fn leg(&self, leg: Leg) -> LegSnapshot {
        self.workers
            .iter()
            .map(|w| w.leg(leg).snapshot())
            .fold(LegSnapshot::default(), |sum, s| LegSnapshot {
                packets_in: sum.packets_in.wrapping_add(s.packets_in),
                packets_out: sum.packets_out.wrapping_add(s.packets_out),
                bytes_in: sum.bytes_in.wrapping_add(s.bytes_in),
                bytes_out: sum.bytes_out.wrapping_add(s.bytes_out),
                drops: std::array::from_fn(|i| sum.drops[i].wrapping_add(s.drops[i])),
            })
    }

    /// Datagrams received on both legs, every worker.
    pub fn packets_in(&self) -> u64 {
        self.total(|w| &w.browser.packets_in)
            .wrapping_add(self.total(|w| &w.trunk.packets_in))
    }

    /// Calls running on a media worker.
    pub fn calls_active(&self) -> u64 {
        self.total(|w| &w.calls_active)
    }

    /// Shared-port datagrams from an address no call validated.
    pub fn unknown_source_dropped(&self) -> u64 {
        self.total(|w| &w.unknown_source_dropped)
    }

    /// Shared-port STUN checks naming no call.
    pub fn unknown_ufrag_dropped(&self) -> u64 {
        self.total(|w| &w.unknown_ufrag_dropped)
    }

    /// Appends the media figures in the Prometheus text exposition format.
    pub fn render_prometheus(&self, out: &mut String) {
        out.push_str(
            "# HELP gateway_media_unknown_source_dropped_total Datagrams on a shared browser port that no call claims: from an address no call validated (unknown_address) or a STUN check naming no call (unknown_ufrag).\n\
             # TYPE gateway_media_unknown_source_dropped_total counter\n",
        );
        for (reason, value) in [
            ("unknown_address", self.unknown_source_dropped()),
            ("unknown_ufrag", self.unknown_ufrag_dropped()),
        ] {
            let _ = writeln!(
                out,
                "gateway_media_unknown_source_dropped_total{{reason=\"{reason}\"}} {value}",
            );
        }
        // `write!` into a String cannot fail; the results are ignored on purpose.
        let legs = [Leg::Browser, Leg::Trunk].map(|leg| (leg, self.leg(leg)));
        out.push_str(
            "# HELP gateway_media_packets_total Datagrams received (in) and sent (out) per media leg.\n\
             # TYPE gateway_media_packets_total counter\n",
        );
        for (leg, c) in &legs {
            for (direction, value) in [("in", c.packets_in), ("out", c.packets_out)] {
                let _ = writeln!(
                    out,
                    "gateway_media_packets_total{{leg=\"{}\",direction=\"{}\"}} {}",
                    leg.label(),
                    direction,
                    value
                );
            }
        }
        out.push_str(
            "# HELP gateway_media_bytes_total Bytes received (in) and sent (out) per media leg.\n\
             # TYPE gateway_media_bytes_total counter\n",
        );
        for (leg, c) in &legs {
            for (direction, value) in [("in", c.bytes_in), ("out", c.bytes_out)] {
                let _ = writeln!(
                    out,
                    "gateway_media_bytes_total{{leg=\"{}\",direction=\"{}\"}} {}",
                    leg.label(),
                    direction,
                    value
                );
            }
        }
        out.push_str(
            "# HELP gateway_media_drops_total Datagrams dropped by the relay, per leg and reason.\n\
             # TYPE gateway_media_drops_total counter\n",
        );
        for (leg, c) in &legs {
            for reason in DropReason::ALL {
                let _ = writeln!(
                    out,
                    "gateway_media_drops_total{{leg=\"{}\",reason=\"{}\"}} {}",
                    leg.label(),
                    reason.label(),
                    c.drops(reason)
                );
            }
        }
        let gauges: [(&str, &str, &str, u64); 5] = [
            (
                "gateway_media_calls_active",
                "gauge",
                "Calls whose media relay is running.",
                self.calls_active(),
            ),
            (
                "gateway_media_calls_started_total",
                "counter",
                "Media relays started.",
                self.total(|w| &w.calls_started),
            ),
            (
                "gateway_media_dtls_connected_total",
                "counter",
                "Browser DTLS handshakes completed.",
                self.total(|w| &w.dtls_connected),
            ),
            (
                "gateway_media_dtls_failed_total",
                "counter",
                "Browser DTLS handshakes failed (fingerprint mismatch included).",
                self.total(|w| &w.dtls_failed),
            ),
            (
                "gateway_media_timeouts_total",
                "counter",
                "Calls ended because media stopped.",
                self.total(|w| &w.media_timeouts),
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reasons_index_their_array() {
        for (i, reason) in DropReason::ALL.into_iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
    }

    #[test]
    fn counts_and_renders() {
        // Two workers' shards, summed on read.
        let (a, b) = (
            Arc::new(WorkerStats::default()),
            Arc::new(WorkerStats::default()),
        );
        let stats = MediaStats::new(vec![a.clone(), b.clone()]);
        a.trunk.add_in_single_writer(172);
        b.trunk.add_in_single_writer(172);
        b.browser.add_out_single_writer(182);
        a.trunk.add_drop_single_writer(DropReason::UnknownSsrc);
        WorkerStats::incr(&a.calls_active);
        WorkerStats::incr(&b.calls_active);
        WorkerStats::decr(&b.calls_active);
        b.add_unrouted(true);
        let snap = stats.leg(Leg::Trunk);
        assert_eq!(snap.packets_in, 2);
        assert_eq!(snap.bytes_in, 344);
        assert_eq!(snap.drops(DropReason::UnknownSsrc), 1);
        assert_eq!(stats.packets_in(), 2);
        assert_eq!(stats.calls_active(), 1);
        assert_eq!(stats.unknown_ufrag_dropped(), 1);
        assert_eq!(a.trunk.drops_total(), 1);

        let mut text = String::new();
        stats.render_prometheus(&mut text);
        assert!(text.contains("gateway_media_packets_total{leg=\"trunk\",direction=\"in\"} 2\n"));
        assert!(text.contains("gateway_media_bytes_total{leg=\"browser\",direction=\"out\"} 182\n"));
        assert!(
            text.contains("gateway_media_drops_total{leg=\"trunk\",reason=\"unknown_ssrc\"} 1\n")
        );
        assert!(text
            .contains("gateway_media_drops_total{leg=\"browser\",reason=\"stun_rejected\"} 0\n"));
        assert!(text.contains("gateway_media_calls_active 1\n"));
        assert!(text
            .contains("gateway_media_unknown_source_dropped_total{reason=\"unknown_ufrag\"} 1\n"));
        // Every sample line belongs to a declared metric family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{line}");
        }
    }
}
