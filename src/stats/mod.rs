//! Process-wide call counters and the Prometheus text rendering of them and
//! of the media plane's counters. Plain atomics: the call tasks add, the
//! `/metrics` handler reads; nobody locks.

pub mod history;
pub mod live;
pub mod operator;

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct CallStats {
    started: AtomicU64,
    ended: AtomicU64,
    connected: AtomicU64,
}

impl CallStats {
    pub fn call_started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }
    pub fn call_ended(&self) {
        self.ended.fetch_add(1, Ordering::Relaxed);
    }
    pub fn calls_connected(&self) {
        self.connected.fetch_add(1, Ordering::Relaxed);
    }

    pub fn active(&self) -> u64 {
        let started = self.started.load(Ordering::Relaxed);
        started.saturating_sub(self.ended.load(Ordering::Relaxed))
    }

    /// Appends this module's metrics in Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP gateway_calls_active Calls in progress.");
        let _ = writeln!(out, "# TYPE gateway_calls_active gauge");
        let _ = writeln!(out, "gateway_calls_active {}", self.active());
        let _ = writeln!(out, "# HELP gateway_calls_total Calls started.");
        let _ = writeln!(out, "# TYPE gateway_calls_total counter");
        let _ = writeln!(
            out,
            "gateway_calls_total {}",
            self.started.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP gateway_calls_connected_total Calls that reached connected (trunk answered, browser DTLS up)."
        );
        let _ = writeln!(out, "# TYPE gateway_calls_connected_total counter");
        let _ = writeln!(
            out,
            "gateway_calls_connected_total {}",
            self.connected.load(Ordering::Relaxed)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts() {
        let stats = CallStats::default();
        stats.call_started();
        stats.call_started();
        stats.call_ended();
        stats.calls_connected();
        let mut out = String::new();
        stats.render_prometheus(&mut out);
        assert!(out.contains("gateway_calls_active 1\n"));
        assert!(out.contains("gateway_calls_total 2\n"));
        assert!(out.contains("gateway_calls_connected_total 1\n"));
    }
}
