//! One target's run: set the calls up, step through the rates, measure
//! memory, tear the calls down.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::browser::{hang_up, Browser};
use crate::https::{Target as Https, Ws};
use crate::media::{run_step, CallMedia, StepPlan};
use crate::procstat::Target;
use crate::report::{LoginStormReport, SetupReport, StepReport, TargetReport};
use crate::rtpengine::Rtpengine;
use crate::uas::{TrunkMedia, Uas};

/// What every target gets the same of.
#[derive(Debug, Clone)]
pub struct Load {
    pub calls: usize,
    /// Packets per second into the target, one step each.
    pub rates: Vec<f64>,
    pub warmup: Duration,
    pub window: Duration,
    pub threads: usize,
    pub setup_concurrency: usize,
    pub media_ip: IpAddr,
}

impl Load {
    fn plan(&self, pps: f64) -> StepPlan {
        StepPlan {
            pps,
            warmup: self.warmup,
            window: self.window,
            drain: Duration::from_millis(300),
        }
    }

    /// Runs every step over `calls`; RSS is read after the first.
    fn steps(
        &self,
        mut calls: Vec<CallMedia>,
        target: &Target,
        rss_after: &mut u64,
    ) -> (Vec<CallMedia>, Vec<StepReport>) {
        let mut steps = Vec::new();
        for (i, &pps) in self.rates.iter().enumerate() {
            let (back, result) = run_step(calls, self.threads, self.plan(pps), target);
            calls = back;
            if i == 0 {
                *rss_after = target.rss_kib().unwrap_or(0);
            }
            let report = StepReport::from(&result);
            eprintln!(
                "gwload: {:.0} pps: delivered {:.0}/s, CPU {:.1} µs/packet, lost {}/{}, p99 {:.2} ms",
                report.pps,
                report.forwarded_pps,
                report.cpu_us_per_packet.unwrap_or(0.0),
                report.lost(),
                report.sent(),
                report.p99_ms().unwrap_or(0.0)
            );
            steps.push(report);
        }
        (calls, steps)
    }
}

/// The gateway side's account and where its trunk points.
pub struct GatewayTarget {
    pub https: Https,
    pub pid: u32,
    pub account: String,
    pub password: String,
    pub uas: SocketAddr,
    pub trunk_media: TrunkMedia,
    pub login_per_call: bool,
    /// Extra calls set up afterwards with a login each (0: none).
    pub login_per_call_sample: usize,
    /// Logins (no calls) before the calls, RSS read after them (0: none).
    pub login_storm: usize,
}

/// Logs in `n` times, `concurrency` at once; RSS is read before and after.
async fn login_storm(
    g: &GatewayTarget,
    target: &Target,
    n: usize,
    concurrency: usize,
) -> Result<LoginStormReport> {
    let rss_idle_kib = target.rss_kib()?;
    let start = Instant::now();
    let failed = futures_util::stream::iter(0..n)
        .map(|_| async { g.https.login(&g.account, &g.password).await.is_err() })
        .buffer_unordered(concurrency.max(1))
        .filter(|failed| std::future::ready(*failed))
        .count()
        .await;
    let seconds = start.elapsed().as_secs_f64();
    let rss_after_kib = target.rss_kib()?;
    eprintln!(
        "gwload: login storm: {n} logins in {seconds:.2} s ({failed} failed), RSS {rss_idle_kib} -> {rss_after_kib} KiB"
    );
    Ok(LoginStormReport {
        logins: n,
        failed,
        seconds,
        rss_idle_kib,
        rss_after_kib,
    })
}

struct Established {
    calls: Vec<CallMedia>,
    keepers: Vec<tokio::task::JoinHandle<bool>>,
    report: SetupReport,
    suite: Option<String>,
}

/// Sets `n` calls up through the gateway, numbering from `first`.
async fn establish(
    g: &GatewayTarget,
    browser: &Arc<Browser>,
    uas: &Arc<Uas>,
    indices: std::ops::Range<usize>,
    concurrency: usize,
    login_per_call: bool,
    stop: &watch::Receiver<bool>,
) -> Result<Established> {
    let n = indices.len();
    let start = Instant::now();
    let shared = if login_per_call {
        None
    } else {
        Some(Arc::new(g.https.login(&g.account, &g.password).await?))
    };
    let results: Vec<_> = futures_util::stream::iter(indices)
        .map(|idx| {
            let (browser, uas, shared) = (browser.clone(), uas.clone(), shared.clone());
            let (account, password) = (g.account.clone(), g.password.clone());
            async move {
                let token = match shared {
                    Some(t) => t.to_string(),
                    None => browser.target.login(&account, &password).await?,
                };
                let (id, to) = (format!("load-{idx}"), format!("load{idx}"));
                let trunk = uas.expect(&to);
                let call = browser.call(&token, &id, &to).await?;
                let trunk = tokio::time::timeout(Duration::from_secs(5), trunk)
                    .await
                    .map_err(|_| anyhow!("call {id}: the UAS got no INVITE"))?
                    .map_err(|_| anyhow!("call {id}: UAS gone"))?;
                Ok::<_, anyhow::Error>((idx, call, trunk))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let seconds = start.elapsed().as_secs_f64();
    let mut calls = Vec::new();
    let mut keepers = Vec::new();
    let mut failed = 0;
    let mut first_error = None;
    let mut suite = None;
    for r in results {
        match r {
            Ok((idx, call, trunk)) => {
                suite = Some(call.suite.to_string());
                calls.push(CallMedia {
                    id: idx as u32,
                    tag: call.id.clone(),
                    a: call.endpoint,
                    b: trunk,
                });
                keepers.push(tokio::spawn(keep(call.ws, call.id, stop.clone())));
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    calls.sort_by_key(|c| c.id);
    Ok(Established {
        calls,
        keepers,
        report: SetupReport {
            calls: n,
            failed,
            seconds,
            calls_per_second: (n - failed) as f64 / seconds.max(1e-9),
            login_per_call,
            method: "login+wss+ice+dtls".into(),
            first_error,
        },
        suite,
    })
}

/// Holds a call's signaling socket open (reading it answers pings) until
/// told to stop, then hangs up. True if the gateway ended the call first.
async fn keep(mut ws: Ws, id: String, mut stop: watch::Receiver<bool>) -> bool {
    let ended = tokio::select! {
        r = wait_for_forever(&mut ws, &id) => r,
        _ = stop.wait_for(|s| *s) => false,
    };
    if !ended {
        hang_up(ws, &id).await;
    }
    ended
}

/// Resolves when the gateway ends call `id` (its `hangup`, or the socket
/// closing).
async fn wait_for_forever(ws: &mut Ws, id: &str) -> bool {
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(text.as_str()) else {
            continue;
        };
        if v["id"].as_str() == Some(id) && v["type"].as_str() == Some("hangup") {
            return true;
        }
    }
    true
}

/// Hangs every call up and waits for the keepers; returns how many calls
/// the gateway had ended by itself.
async fn release(stop: &watch::Sender<bool>, keepers: Vec<tokio::task::JoinHandle<bool>>) -> usize {
    let _ = stop.send(true);
    let mut dropped = 0;
    for k in keepers {
        if let Ok(true) = k.await {
            dropped += 1;
        }
    }
    dropped
}

pub async fn run_gateway(g: &GatewayTarget, load: &Load) -> Result<TargetReport> {
    let target = Target { pid: g.pid };
    if !target.alive() {
        bail!("no process {} (--pid)", g.pid);
    }
    let uas = Arc::new(Uas::start(g.uas, load.media_ip, g.trunk_media).await?);
    let browser = Arc::new(Browser::new(g.https.clone(), load.media_ip)?);
    // Before anything else: RSS idle, then after the storm.
    let login_storm = match g.login_storm {
        0 => None,
        n => Some(login_storm(g, &target, n, load.setup_concurrency).await?),
    };
    // One login first: its argon2 working memory stays with the
    // allocator, and belongs to logins, not to calls.
    g.https.login(&g.account, &g.password).await?;
    let rss_before = target.rss_kib()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let est = establish(
        g,
        &browser,
        &uas,
        0..load.calls,
        load.setup_concurrency,
        g.login_per_call,
        &stop_rx,
    )
    .await?;
    eprintln!(
        "gwload: gateway: {} calls up in {:.2} s ({} failed)",
        est.calls.len(),
        est.report.seconds,
        est.report.failed
    );
    if est.calls.is_empty() {
        bail!(
            "no call could be set up: {}",
            est.report.first_error.as_deref().unwrap_or("?")
        );
    }
    let n_up = est.calls.len();
    let load2 = load.clone();
    let (calls, steps, rss_after) = tokio::task::spawn_blocking(move || {
        let mut rss_after = 0;
        let (calls, steps) = load2.steps(est.calls, &target, &mut rss_after);
        (calls, steps, rss_after)
    })
    .await?;
    let calls_dropped = release(&stop_tx, est.keepers).await;
    drop(calls);
    let setup_login_per_call = if g.login_per_call_sample > 0 && !g.login_per_call {
        let (tx, rx) = watch::channel(false);
        let extra = establish(
            g,
            &browser,
            &uas,
            load.calls..load.calls + g.login_per_call_sample,
            load.setup_concurrency,
            true,
            &rx,
        )
        .await?;
        release(&tx, extra.keepers).await;
        Some(extra.report)
    } else {
        None
    };
    Ok(TargetReport {
        target: "gateway".into(),
        pid: g.pid,
        calls: n_up,
        browser_suite: est.suite,
        trunk_media: match g.trunk_media {
            TrunkMedia::Sdes => "sdes-srtp AES_CM_128_HMAC_SHA1_80".into(),
            TrunkMedia::Plain => "rtp".into(),
        },
        setup: est.report,
        setup_login_per_call,
        login_storm,
        rss_before_kib: rss_before,
        rss_with_calls_kib: rss_after,
        rss_per_call_kib: per_call(rss_before, rss_after, n_up),
        steps,
        calls_dropped,
    })
}

fn per_call(before: u64, after: u64, n: usize) -> Option<f64> {
    (n > 0 && after > 0).then(|| (after as f64 - before as f64) / n as f64)
}

/// The same load through rtpengine (already started), SDES on both sides.
pub fn run_rtpengine(engine: &Rtpengine, load: &Load) -> Result<TargetReport> {
    let target = Target { pid: engine.pid() };
    let rss_before = target.rss_kib()?;
    let start = Instant::now();
    let mut calls = Vec::new();
    let mut failed = 0;
    let mut first_error = None;
    for idx in 0..load.calls {
        match engine.setup_call(idx as u32, load.media_ip) {
            Ok(c) => calls.push(c),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let n_up = calls.len();
    if calls.is_empty() {
        bail!(
            "no rtpengine call could be set up: {}",
            first_error.as_deref().unwrap_or("?")
        );
    }
    let mut rss_after = 0;
    let (calls, steps) = load.steps(calls, &target, &mut rss_after);
    for c in &calls {
        let _ = engine.delete_call(&c.tag);
    }
    Ok(TargetReport {
        target: "rtpengine".into(),
        pid: target.pid,
        calls: n_up,
        browser_suite: None,
        trunk_media: format!(
            "sdes-srtp {} ⇄ sdes-srtp {}",
            crate::rtpengine::A_SUITE,
            crate::rtpengine::B_SUITE
        ),
        setup: SetupReport {
            calls: load.calls,
            failed,
            seconds,
            calls_per_second: n_up as f64 / seconds.max(1e-9),
            login_per_call: false,
            method: "ng offer+answer".into(),
            first_error,
        },
        setup_login_per_call: None,
        login_storm: None,
        rss_before_kib: rss_before,
        rss_with_calls_kib: rss_after,
        rss_per_call_kib: per_call(rss_before, rss_after, n_up),
        steps,
        calls_dropped: 0,
    })
}
