//! What a run measured, as JSON (for tests and scripts) and as markdown
//! tables (for people). Figures only: nothing here judges them.

use serde::Serialize;

use crate::media::{percentile_ms, DirStats, StepResult};

#[derive(Debug, Clone, Serialize)]
pub struct DirReport {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub loss_percent: f64,
    pub auth_failed: u64,
    pub send_errors: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl DirReport {
    fn from(d: &DirStats) -> Self {
        let lost = d.sent.saturating_sub(d.received);
        DirReport {
            sent: d.sent,
            received: d.received,
            lost,
            loss_percent: if d.sent > 0 {
                100.0 * lost as f64 / d.sent as f64
            } else {
                0.0
            },
            auth_failed: d.auth_failed,
            send_errors: d.send_errors,
            p50_ms: percentile_ms(&d.latencies_ns, 50.0),
            p99_ms: percentile_ms(&d.latencies_ns, 99.0),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// The requested rate into the target, both directions.
    pub pps: f64,
    /// What the target delivered per second inside the window.
    pub forwarded_pps: f64,
    /// Target CPU (utime + stime) per packet it forwarded in the window.
    pub cpu_us_per_packet: Option<f64>,
    /// Target CPU in percent of one core over the window.
    pub cpu_percent: f64,
    /// The tool's own CPU in percent of one core over the window.
    pub tool_cpu_percent: f64,
    /// Caller → callee (browser → trunk, or rtpengine's side A → B).
    pub forward: DirReport,
    /// Callee → caller.
    pub back: DirReport,
}

impl StepReport {
    pub fn from(r: &StepResult) -> Self {
        let forwarded = r.window_forwarded as f64;
        StepReport {
            pps: r.plan.pps,
            forwarded_pps: forwarded / r.window_seconds,
            cpu_us_per_packet: (r.window_forwarded > 0)
                .then(|| r.target_cpu_seconds * 1e6 / forwarded),
            cpu_percent: 100.0 * r.target_cpu_seconds / r.window_seconds,
            tool_cpu_percent: 100.0 * r.tool_cpu_seconds / r.window_seconds,
            forward: DirReport::from(&r.dirs[0]),
            back: DirReport::from(&r.dirs[1]),
        }
    }

    /// The worse of the two directions' p99.
    pub fn p99_ms(&self) -> Option<f64> {
        match (self.forward.p99_ms, self.back.p99_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn lost(&self) -> u64 {
        self.forward.lost + self.back.lost
    }

    pub fn sent(&self) -> u64 {
        self.forward.sent + self.back.sent
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SetupReport {
    pub calls: usize,
    pub failed: usize,
    /// First login to the last call connected.
    pub seconds: f64,
    pub calls_per_second: f64,
    pub login_per_call: bool,
    /// How a call is set up: "login+wss+ice+dtls" or "ng offer+answer".
    pub method: String,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

/// A storm of logins without calls, before the calls (gateway only).
#[derive(Debug, Clone, Serialize)]
pub struct LoginStormReport {
    pub logins: usize,
    pub failed: usize,
    pub seconds: f64,
    /// RSS before the first login.
    pub rss_idle_kib: u64,
    /// RSS after the last.
    pub rss_after_kib: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    /// "gateway" or "rtpengine".
    pub target: String,
    pub pid: u32,
    pub calls: usize,
    /// What the browser legs agreed (gateway only), e.g. AEAD_AES_128_GCM.
    pub browser_suite: Option<String>,
    pub trunk_media: String,
    pub setup: SetupReport,
    /// Setup of extra calls with a login each, when asked for.
    pub setup_login_per_call: Option<SetupReport>,
    pub login_storm: Option<LoginStormReport>,
    pub rss_before_kib: u64,
    pub rss_with_calls_kib: u64,
    pub rss_per_call_kib: Option<f64>,
    pub steps: Vec<StepReport>,
    /// Calls the target ended while the tool still sent.
    pub calls_dropped: usize,
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v < 10.0 => format!("{v:.2} ms"),
        Some(v) => format!("{v:.0} ms"),
        None => "–".into(),
    }
}

fn us(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1} µs"))
        .unwrap_or_else(|| "–".into())
}

/// One target's run as a markdown table plus setup and memory lines.
pub fn target_markdown(r: &TargetReport) -> String {
    let mut s = format!(
        "### {} (pid {}, {} calls, trunk {}{})\n\n",
        r.target,
        r.pid,
        r.calls,
        r.trunk_media,
        r.browser_suite
            .as_ref()
            .map(|b| format!(", browser {b}"))
            .unwrap_or_default()
    );
    s += "| load (pps) | delivered pps | CPU/packet | CPU % | tool CPU % | loss fwd | loss back | p50 fwd/back | p99 fwd/back |\n";
    s += "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
    for st in &r.steps {
        s += &format!(
            "| {:.0} | {:.0} | {} | {:.0} % | {:.0} % | {} ({:.2} %) | {} ({:.2} %) | {} / {} | {} / {} |\n",
            st.pps,
            st.forwarded_pps,
            us(st.cpu_us_per_packet),
            st.cpu_percent,
            st.tool_cpu_percent,
            st.forward.lost,
            st.forward.loss_percent,
            st.back.lost,
            st.back.loss_percent,
            ms(st.forward.p50_ms),
            ms(st.back.p50_ms),
            ms(st.forward.p99_ms),
            ms(st.back.p99_ms),
        );
    }
    s += &setup_line(&r.setup);
    if let Some(l) = &r.setup_login_per_call {
        s += &setup_line(l);
    }
    if let Some(l) = &r.login_storm {
        s += &format!(
            "login storm: {} logins in {:.2} s ({} failed): RSS {} KiB idle, {} KiB after (+{:.1} MiB)\n",
            l.logins,
            l.seconds,
            l.failed,
            l.rss_idle_kib,
            l.rss_after_kib,
            (l.rss_after_kib as f64 - l.rss_idle_kib as f64) / 1024.0
        );
    }
    s += &format!(
        "memory: RSS {} KiB before, {} KiB with {} calls: {} per call\n",
        r.rss_before_kib,
        r.rss_with_calls_kib,
        r.calls,
        r.rss_per_call_kib
            .map(|k| format!("{k:.1} KiB"))
            .unwrap_or_else(|| "–".into())
    );
    if r.calls_dropped > 0 {
        s += &format!(
            "calls the target ended during the run: {}\n",
            r.calls_dropped
        );
    }
    s
}

fn setup_line(s: &SetupReport) -> String {
    format!(
        "setup ({}{}): {} calls in {:.2} s = {:.0} calls/s{}\n",
        s.method,
        if s.login_per_call {
            ", a login per call"
        } else if s.method.starts_with("login") {
            ", one login"
        } else {
            ""
        },
        s.calls - s.failed,
        s.seconds,
        s.calls_per_second,
        if s.failed > 0 {
            format!(
                ", {} failed (first: {})",
                s.failed,
                s.first_error.as_deref().unwrap_or("?")
            )
        } else {
            String::new()
        }
    )
}

/// The side-by-side table of `gwload compare`, the columns.
pub fn compare_markdown(gw: &TargetReport, rtp: &TargetReport) -> String {
    let mut s = String::from(
        "| load (packets/s) | this gateway: CPU per packet, p99 | rtpengine userspace, SDES⇄SDES: CPU per packet, p99 | ratio gateway/rtpengine (CPU per packet) |\n| ---: | --- | --- | ---: |\n",
    );
    for (g, r) in gw.steps.iter().zip(&rtp.steps) {
        let cell = |st: &StepReport| {
            let loss = if st.lost() > 0 {
                format!(
                    ", {:.2} % loss",
                    100.0 * st.lost() as f64 / st.sent().max(1) as f64
                )
            } else {
                String::new()
            };
            format!("{}, {}{}", us(st.cpu_us_per_packet), ms(st.p99_ms()), loss)
        };
        let ratio = match (g.cpu_us_per_packet, r.cpu_us_per_packet) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "–".into(),
        };
        s += &format!("| {:.0} | {} | {} | {} |\n", g.pps, cell(g), cell(r), ratio);
    }
    let per_call = |r: &TargetReport| {
        r.rss_per_call_kib
            .map(|k| format!("{k:.0} KiB"))
            .unwrap_or_else(|| "–".into())
    };
    s += &format!(
        "\nmemory per call: gateway {}, rtpengine {}; setup: gateway {:.0} calls/s{}, rtpengine {:.0} calls/s (ng offer+answer)\n",
        per_call(gw),
        per_call(rtp),
        gw.setup.calls_per_second,
        gw.setup_login_per_call
            .as_ref()
            .map(|l| format!(" with one login, {:.0}/s with a login per call", l.calls_per_second))
            .unwrap_or_default(),
        rtp.setup.calls_per_second,
    );
    s
}
