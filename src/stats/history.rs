//! The last hour of active calls and packets per second, for the stats
//! page's charts. Sans-IO: a sampler task calls [`History::tick`] once a
//! second with the current totals and the time; a point is kept every
//! `POINT_EVERY` ticks (the mean rate over that span).

use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

/// Seconds between chart points.
pub const POINT_EVERY: u64 = 10;
/// Points kept: one hour.
pub const POINTS: usize = 360;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// Unix seconds.
    pub t: u64,
    pub calls: usize,
    pub pps: f64,
}

#[derive(Debug, Default)]
pub struct History {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    points: VecDeque<Point>,
    /// The totals at the previous tick and at the start of the open point.
    last: Option<(Instant, u64)>,
    span_start: Option<(Instant, u64)>,
    current_pps: f64,
}

impl History {
    /// `packets` is the running total of datagrams relayed (all legs, both
    /// directions); `unix` the wall clock in seconds.
    pub fn tick(&self, now: Instant, unix: u64, calls: usize, packets: u64) {
        let Ok(mut h) = self.inner.lock() else {
            return;
        };
        if let Some((at, before)) = h.last {
            let secs = now.saturating_duration_since(at).as_secs_f64();
            if secs > 0.0 {
                h.current_pps = packets.saturating_sub(before) as f64 / secs;
            }
        }
        h.last = Some((now, packets));
        let (start_at, start_packets) = *h.span_start.get_or_insert((now, packets));
        let span = now.saturating_duration_since(start_at).as_secs();
        if span >= POINT_EVERY {
            let pps = packets.saturating_sub(start_packets) as f64 / span as f64;
            h.points.push_back(Point {
                t: unix,
                calls,
                pps: (pps * 10.0).round() / 10.0,
            });
            while h.points.len() > POINTS {
                h.points.pop_front();
            }
            h.span_start = Some((now, packets));
        }
    }

    pub fn points(&self) -> Vec<Point> {
        self.inner
            .lock()
            .map(|h| h.points.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The rate over the last tick.
    pub fn packets_per_second(&self) -> f64 {
        self.inner
            .lock()
            .map(|h| (h.current_pps * 10.0).round() / 10.0)
            .unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_point_every_ten_seconds_and_an_hour_kept() {
        let h = History::default();
        let t0 = Instant::now();
        for s in 0..=20u64 {
            h.tick(t0 + Duration::from_secs(s), 1000 + s, 2, s * 100);
        }
        let points = h.points();
        assert_eq!(
            points,
            [
                Point {
                    t: 1010,
                    calls: 2,
                    pps: 100.0
                },
                Point {
                    t: 1020,
                    calls: 2,
                    pps: 100.0
                }
            ]
        );
        assert_eq!(h.packets_per_second(), 100.0);
        for s in 21..5000u64 {
            h.tick(t0 + Duration::from_secs(s), 1000 + s, 0, 2000);
        }
        assert_eq!(h.points().len(), POINTS);
        assert_eq!(h.packets_per_second(), 0.0);
    }
}
