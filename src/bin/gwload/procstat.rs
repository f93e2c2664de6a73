//! The target process's CPU time and memory, from /proc.
//!
//! CPU is `utime + stime` of /proc/PID/stat (all threads, clock ticks);
//! memory is `VmRSS` of /proc/PID/status.

use anyhow::{anyhow, Context, Result};

/// The process being measured (the gateway or rtpengine).
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub pid: u32,
}

/// One reading of the target's CPU time.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    ticks: Option<u64>,
}

impl ProcSample {
    /// CPU seconds between two samples (0 if either failed).
    pub fn cpu_seconds_between(a: &ProcSample, b: &ProcSample) -> f64 {
        match (a.ticks, b.ticks) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / clock_ticks_per_second(),
            _ => 0.0,
        }
    }
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory arguments.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

impl Target {
    pub fn sample(&self) -> ProcSample {
        ProcSample {
            ticks: std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
                .ok()
                .and_then(|s| parse_cpu_ticks(&s)),
        }
    }

    /// Resident set size in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid);
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        parse_rss_kib(&text).ok_or_else(|| anyhow!("no VmRSS in {path}"))
    }

    pub fn alive(&self) -> bool {
        std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

/// utime + stime (fields 14 and 15) of /proc/PID/stat. The command name in
/// field 2 may hold spaces and parentheses, so count from the last ')'.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 → index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn parse_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields() {
        let stat =
            "42 (rtp engine) (x) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 1000 1 1";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn rss() {
        assert_eq!(parse_rss_kib("Name:\tx\nVmRSS:\t  12345 kB\n"), Some(12345));
        assert_eq!(parse_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn own_process() {
        let me = Target {
            pid: std::process::id(),
        };
        assert!(me.rss_kib().unwrap() > 0);
        assert!(me.sample().ticks.is_some());
    }
}
