//! Process-wide call counters and the Prometheus text rendering of them and
//! of the media plane's counters. Plain atomics: the call tasks add, the
//! `/metrics` handler reads; nobody locks.

pub mod history;
pub mod live;
pub mod operator;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) of the call setup histogram: from the browser's
/// `call` (or the trunk's INVITE) to `connected`.
const SETUP_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Directions as label values, indexed by [`live::Direction`].
const DIRECTIONS: [live::Direction; 2] = [live::Direction::Outgoing, live::Direction::Incoming];

fn dir_index(d: live::Direction) -> usize {
    match d {
        live::Direction::Outgoing => 0,
        live::Direction::Incoming => 1,
    }
}

fn dir_label(d: live::Direction) -> &'static str {
    d.as_str()
}

/// A Prometheus histogram of plain atomics (microsecond sum).
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; SETUP_BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    fn observe(&self, seconds: f64) {
        for (bound, bucket) in SETUP_BUCKETS.iter().zip(&self.buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }
}

/// Call counters by direction, end causes and setup times. Written a few
/// times per call by the call drivers, read by `/metrics`.
#[derive(Debug, Default)]
pub struct CallStats {
    started: [AtomicU64; 2],
    ended: [AtomicU64; 2],
    connected: [AtomicU64; 2],
    /// (direction, code, side) → calls ended so. Codes are SIP statuses
    /// (bounded), sides three: a small, bounded label set.
    ended_by: Mutex<BTreeMap<(usize, u16, &'static str), u64>>,
    setup: [Histogram; 2],
    /// Outgoing calls whose trunk refused SRTP (`secure_media = "optional"`)
    /// and went on with plain RTP.
    secure_media_fallbacks: AtomicU64,
    /// Private calls (media relayed end to end, never decrypted) that
    /// reached connected.
    private_connected: AtomicU64,
    /// DTMF digits by direction (toward the trunk, from it) and how they
    /// travelled (RFC 4733 events, SIP INFO): what an operator reads when a
    /// caller says their digits did not arrive.
    dtmf: [[AtomicU64; 2]; 2],
    /// Connected legs by (leg, key agreement, suite, handling): what the
    /// lock says, countable. Bounded: two legs, three agreements, a handful
    /// of suites, two handlings.
    legs: Mutex<BTreeMap<LegLabels, u64>>,
}

/// Label values of `gateway_call_legs_total`.
type LegLabels = (&'static str, String, String, &'static str);

/// Splits a leg's security text as `connected` gives it ("dtls-srtp
/// AEAD_AES_128_GCM", "sdes-srtp AES_CM_128_HMAC_SHA1_80", "rtp
/// (unencrypted)") into key agreement and suite ("none" for plain RTP).
fn security_labels(security: &str) -> (String, String) {
    let mut words = security.split_whitespace();
    let agreement = words.next().unwrap_or("unknown").to_string();
    let suite = match words.next() {
        Some(s) if !s.starts_with('(') => s.to_string(),
        _ => "none".to_string(),
    };
    (agreement, suite)
}

impl CallStats {
    pub fn call_started(&self, d: live::Direction) {
        self.started[dir_index(d)].fetch_add(1, Ordering::Relaxed);
    }

    /// The call is over; `code` and `side` as the call record has them.
    pub fn call_ended(&self, d: live::Direction, code: u16, side: &'static str) {
        self.ended[dir_index(d)].fetch_add(1, Ordering::Relaxed);
        if let Ok(mut by) = self.ended_by.lock() {
            *by.entry((dir_index(d), code, side)).or_default() += 1;
        }
    }

    /// The call reached `connected`, `setup` after it began.
    pub fn call_connected(&self, d: live::Direction, setup: std::time::Duration) {
        self.connected[dir_index(d)].fetch_add(1, Ordering::Relaxed);
        self.setup[dir_index(d)].observe(setup.as_secs_f64());
    }

    /// The call connected with these legs: `browser` and `trunk` as
    /// `connected.security` names them; `private` when the gateway relays
    /// the encrypted stream without its keys.
    pub fn legs_connected(&self, browser: Option<&str>, trunk: Option<&str>, private: bool) {
        let handling = if private { "relayed" } else { "decrypted" };
        let Ok(mut legs) = self.legs.lock() else {
            return;
        };
        for (leg, security) in [("browser", browser), ("trunk", trunk)] {
            let (agreement, suite) = security_labels(security.unwrap_or("unknown"));
            *legs.entry((leg, agreement, suite, handling)).or_default() += 1;
        }
    }

    /// A trunk refused SRTP and the call fell back to plain RTP.
    pub fn secure_media_fallback(&self) {
        self.secure_media_fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    /// `digits` DTMF digits went toward the trunk (`to_trunk`) or came from
    /// it, as SIP INFO (`info`) or RFC 4733 events.
    pub fn dtmf(&self, to_trunk: bool, info: bool, digits: u64) {
        self.dtmf[usize::from(!to_trunk)][usize::from(info)].fetch_add(digits, Ordering::Relaxed);
    }

    /// A private call reached connected.
    pub fn private_call_connected(&self) {
        self.private_connected.fetch_add(1, Ordering::Relaxed);
    }

    pub fn active(&self) -> u64 {
        let started: u64 = self.started.iter().map(|a| a.load(Ordering::Relaxed)).sum();
        let ended: u64 = self.ended.iter().map(|a| a.load(Ordering::Relaxed)).sum();
        started.saturating_sub(ended)
    }

    /// Appends this module's metrics in Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP gateway_calls_active Calls in progress.");
        let _ = writeln!(out, "# TYPE gateway_calls_active gauge");
        let _ = writeln!(out, "gateway_calls_active {}", self.active());
        for (name, help, values) in [
            (
                "gateway_calls_started_total",
                "Calls started.",
                &self.started,
            ),
            (
                "gateway_calls_connected_total",
                "Calls that reached connected (trunk side up, browser DTLS up).",
                &self.connected,
            ),
            ("gateway_calls_ended_total", "Calls ended.", &self.ended),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for d in DIRECTIONS {
                let _ = writeln!(
                    out,
                    "{name}{{direction=\"{}\"}} {}",
                    dir_label(d),
                    values[dir_index(d)].load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP gateway_call_ends_total Calls ended, by direction, the status or cause code the browser was given, and the side that ended them.\n# TYPE gateway_call_ends_total counter"
        );
        if let Ok(by) = self.ended_by.lock() {
            for ((d, code, side), n) in by.iter() {
                let _ = writeln!(
                    out,
                    "gateway_call_ends_total{{direction=\"{}\",code=\"{code}\",side=\"{side}\"}} {n}",
                    dir_label(DIRECTIONS[*d])
                );
            }
        }
        let name = "gateway_call_legs_total";
        let _ = writeln!(
            out,
            "# HELP {name} Legs of connected calls, by leg, key agreement (dtls-srtp, sdes-srtp, rtp), SRTP suite, and whether the gateway decrypts or relays the stream unread (a private call).\n# TYPE {name} counter"
        );
        if let Ok(legs) = self.legs.lock() {
            for ((leg, agreement, suite, handling), n) in legs.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{leg=\"{leg}\",key_agreement=\"{agreement}\",suite=\"{suite}\",handling=\"{handling}\"}} {n}"
                );
            }
        }
        let name = "gateway_secure_media_fallbacks_total";
        let _ = writeln!(
            out,
            "# HELP {name} Calls whose trunk refused SRTP (secure_media optional) and that went on with plain RTP.\n# TYPE {name} counter\n{name} {}",
            self.secure_media_fallbacks.load(Ordering::Relaxed)
        );
        let name = "gateway_private_calls_total";
        let _ = writeln!(
            out,
            "# HELP {name} Private calls that connected: media encrypted end to end and relayed, never decrypted by the gateway.\n# TYPE {name} counter\n{name} {}",
            self.private_connected.load(Ordering::Relaxed)
        );
        let name = "gateway_dtmf_digits_total";
        let _ = writeln!(
            out,
            "# HELP {name} DTMF digits by direction (to_trunk, from_trunk) and method (rfc4733 events, sip INFO).\n# TYPE {name} counter"
        );
        for (d, direction) in ["to_trunk", "from_trunk"].iter().enumerate() {
            for (m, method) in ["rfc4733", "info"].iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}{{direction=\"{direction}\",method=\"{method}\"}} {}",
                    self.dtmf[d][m].load(Ordering::Relaxed)
                );
            }
        }
        let name = "gateway_call_setup_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from the call's start (browser call, trunk INVITE) to connected.\n# TYPE {name} histogram"
        );
        for d in DIRECTIONS {
            let h = &self.setup[dir_index(d)];
            let label = dir_label(d);
            for (bound, bucket) in SETUP_BUCKETS.iter().zip(&h.buckets) {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{direction=\"{label}\",le=\"{bound}\"}} {}",
                    bucket.load(Ordering::Relaxed)
                );
            }
            let count = h.count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{direction=\"{label}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "{name}_sum{{direction=\"{label}\"}} {}",
                h.sum_us.load(Ordering::Relaxed) as f64 / 1e6
            );
            let _ = writeln!(out, "{name}_count{{direction=\"{label}\"}} {count}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn renders_counts_by_direction_cause_and_setup_time() {
        let stats = CallStats::default();
        stats.call_started(live::Direction::Outgoing);
        stats.call_started(live::Direction::Incoming);
        stats.call_connected(live::Direction::Incoming, Duration::from_millis(300));
        stats.call_ended(live::Direction::Outgoing, 486, "trunk");
        stats.secure_media_fallback();
        stats.private_call_connected();
        stats.dtmf(true, true, 3);
        stats.dtmf(false, false, 1);
        stats.legs_connected(
            Some("dtls-srtp AEAD_AES_128_GCM"),
            Some("sdes-srtp AES_CM_128_HMAC_SHA1_80"),
            false,
        );
        stats.legs_connected(
            Some("dtls-srtp AES_CM_128_HMAC_SHA1_80"),
            Some("rtp (unencrypted)"),
            false,
        );
        let mut out = String::new();
        stats.render_prometheus(&mut out);
        for line in [
            "gateway_calls_active 1\n",
            "gateway_secure_media_fallbacks_total 1\n",
            "gateway_private_calls_total 1\n",
            "gateway_dtmf_digits_total{direction=\"to_trunk\",method=\"info\"} 3\n",
            "gateway_dtmf_digits_total{direction=\"to_trunk\",method=\"rfc4733\"} 0\n",
            "gateway_dtmf_digits_total{direction=\"from_trunk\",method=\"rfc4733\"} 1\n",
            "gateway_call_legs_total{leg=\"browser\",key_agreement=\"dtls-srtp\",suite=\"AEAD_AES_128_GCM\",handling=\"decrypted\"} 1\n",
            "gateway_call_legs_total{leg=\"trunk\",key_agreement=\"sdes-srtp\",suite=\"AES_CM_128_HMAC_SHA1_80\",handling=\"decrypted\"} 1\n",
            "gateway_call_legs_total{leg=\"trunk\",key_agreement=\"rtp\",suite=\"none\",handling=\"decrypted\"} 1\n",
            "gateway_calls_started_total{direction=\"outgoing\"} 1\n",
            "gateway_calls_connected_total{direction=\"incoming\"} 1\n",
            "gateway_call_ends_total{direction=\"outgoing\",code=\"486\",side=\"trunk\"} 1\n",
            "gateway_call_setup_seconds_bucket{direction=\"incoming\",le=\"0.25\"} 0\n",
            "gateway_call_setup_seconds_bucket{direction=\"incoming\",le=\"0.5\"} 1\n",
            "gateway_call_setup_seconds_bucket{direction=\"incoming\",le=\"+Inf\"} 1\n",
            "gateway_call_setup_seconds_count{direction=\"incoming\"} 1\n",
            "gateway_call_setup_seconds_sum{direction=\"incoming\"} 0.3\n",
        ] {
            assert!(out.contains(line), "{line} missing in\n{out}");
        }
    }
}
