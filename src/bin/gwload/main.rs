//! gwload: the project's load tool. Drives the gateway (browser calls over
//! WSS, ICE-lite, DTLS-SRTP to its own SIP UAS) and rtpengine (SDES on both
//! sides over the ng protocol) with the same calls and packet rates, and
//! reports per-direction loss and latency, the target's CPU per packet, RSS
//! per call and setup rate. See README.md "Load test".
//!
//! Layout: `https` (login, WebSocket), `browser` (one browser call up to
//! SRTP), `uas` (the trunk), `rtpengine` + `bencode` (the other target),
//! `media` + `frame` (the packet engine), `procstat` (CPU and RSS),
//! `run` (one target's run), `report` (JSON and markdown), `gwconfig`.

mod bencode;
mod browser;
mod frame;
mod gwconfig;
mod https;
mod media;
mod procstat;
mod report;
mod rtpengine;
mod run;
mod uas;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::report::TargetReport;
use crate::run::{GatewayTarget, Load};
use crate::uas::TrunkMedia;

#[derive(Parser)]
#[command(
    name = "gwload",
    about = "Load test for webrtc-sip-gateway, side by side with rtpengine"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load a running gateway whose trunk points at --uas.
    Gateway {
        #[command(flatten)]
        gw: GatewayArgs,
        /// The gateway's process id (CPU and RSS are read from /proc).
        #[arg(long)]
        pid: u32,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Start rtpengine-daemon (userspace, one thread) and load it.
    Rtpengine {
        #[command(flatten)]
        rtp: RtpengineArgs,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Start a gateway and rtpengine in turn, pinned to --target-cpu, load
    /// each with the same calls and rates, print the side-by-side table.
    Compare {
        /// The gateway binary (a release build for figures worth quoting).
        #[arg(long, default_value = "target/release/webrtc-sip-gateway")]
        gateway_bin: PathBuf,
        /// Cores the targets are pinned to (taskset), comma-separated: with
        /// two, the gateway runs two media workers and rtpengine two threads
        /// (the knee on 2 cores).
        #[arg(
            long,
            alias = "target-cpus",
            value_delimiter = ',',
            default_value = "0"
        )]
        target_cpu: Vec<usize>,
        /// Core the tool pins itself to, or "any" (not pinned: with the
        /// targets on every core the tool shares them).
        #[arg(long, default_value = "1")]
        tool_cpu: String,
        /// Where configs and logs go.
        #[arg(long, default_value = "target/gwload")]
        workdir: PathBuf,
        /// Also set up this many calls with a login each (setup rate).
        #[arg(long, default_value_t = 0)]
        login_per_call_sample: usize,
        /// Before the calls, log in this many times (no calls) and report
        /// the gateway's RSS idle and after.
        #[arg(long, default_value_t = 0)]
        login_storm: usize,
        #[command(flatten)]
        rtp: RtpengineArgs,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Write a gateway config whose trunk points at the tool's UAS.
    GatewayConfig {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8443")]
        https: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:5060")]
        sip: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:5070")]
        uas: SocketAddr,
        /// The gateway's public_ip (media address).
        #[arg(long, default_value = "127.0.0.1")]
        public_ip: IpAddr,
        #[arg(long, default_value = "data")]
        data_dir: String,
        #[arg(long, default_value = "load")]
        account: String,
        #[arg(long)]
        password: String,
        #[arg(long, value_enum, default_value_t = TrunkArg::Sdes)]
        trunk_media: TrunkArg,
        #[arg(long, default_value_t = 20000)]
        port_min: u16,
        #[arg(long, default_value_t = 29999)]
        port_max: u16,
        /// Signaling sockets the account may hold (one per call).
        #[arg(long, default_value_t = 1100)]
        max_sessions: usize,
    },
}

#[derive(Args, Clone)]
struct GatewayArgs {
    /// The gateway's HTTPS base URL.
    #[arg(long, default_value = "https://127.0.0.1:8443")]
    target: String,
    #[arg(long, default_value = "load")]
    account: String,
    #[arg(long)]
    password: String,
    /// Where the tool's SIP UAS listens (the gateway's trunk uri).
    #[arg(long, default_value = "127.0.0.1:5070")]
    uas: SocketAddr,
    #[arg(long, value_enum, default_value_t = TrunkArg::Sdes)]
    trunk_media: TrunkArg,
    /// Log in once per call instead of once for all.
    #[arg(long)]
    login_per_call: bool,
}

#[derive(Args, Clone)]
struct RtpengineArgs {
    #[arg(long, default_value = "rtpengine")]
    rtpengine_bin: String,
    /// ng control port on 127.0.0.1.
    #[arg(long, default_value_t = 22222)]
    ng_port: u16,
    /// Pin rtpengine to this core (rtpengine subcommand).
    #[arg(long)]
    rtpengine_cpu: Option<usize>,
    #[arg(long, default_value = "target/gwload/rtpengine.log")]
    rtpengine_log: PathBuf,
}

#[derive(Args, Clone)]
struct LoadArgs {
    /// Two-way calls.
    #[arg(long, default_value_t = 100)]
    calls: usize,
    /// Packets per second into the target, all calls and both directions;
    /// a comma-separated list runs one step per rate.
    #[arg(long, value_delimiter = ',', default_value = "10000")]
    pps: Vec<f64>,
    /// Seconds of sending before each measured window.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds of each measured window.
    #[arg(long, default_value_t = 5.0)]
    window: f64,
    /// Media threads of the tool.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Calls being set up at once.
    #[arg(long, default_value_t = 32)]
    setup_concurrency: usize,
    /// Address for the tool's media sockets (default: $GWT_HOST, else
    /// 127.0.0.1).
    #[arg(long)]
    media_ip: Option<IpAddr>,
    /// Also write the report as JSON here ("-" for stdout, then no markdown).
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum TrunkArg {
    Sdes,
    Rtp,
}

impl From<TrunkArg> for TrunkMedia {
    fn from(t: TrunkArg) -> Self {
        match t {
            TrunkArg::Sdes => TrunkMedia::Sdes,
            TrunkArg::Rtp => TrunkMedia::Plain,
        }
    }
}

impl LoadArgs {
    fn load(&self) -> Result<Load> {
        if self.calls == 0 {
            bail!("--calls must be at least 1");
        }
        if self.pps.is_empty() || self.pps.iter().any(|p| !p.is_finite() || *p <= 0.0) {
            bail!("--pps needs positive rates");
        }
        if !(self.window > 0.0 && self.warmup >= 0.0) {
            bail!("--window must be positive and --warmup not negative");
        }
        let media_ip = match self.media_ip {
            Some(ip) => ip,
            None => std::env::var("GWT_HOST")
                .ok()
                .filter(|h| !h.is_empty())
                .map(|h| h.parse())
                .transpose()
                .map_err(|_| anyhow!("GWT_HOST is not an IP address"))?
                .unwrap_or(IpAddr::from([127, 0, 0, 1])),
        };
        Ok(Load {
            calls: self.calls,
            rates: self.pps.clone(),
            warmup: Duration::from_secs_f64(self.warmup),
            window: Duration::from_secs_f64(self.window),
            threads: self.threads.max(1),
            setup_concurrency: self.setup_concurrency.max(1),
            media_ip,
        })
    }

    /// Prints the report: JSON to --json, markdown to stdout unless the
    /// JSON goes there.
    fn emit<T: Serialize>(&self, value: &T, markdown: &str) -> Result<()> {
        match &self.json {
            Some(p) if p.as_os_str() == "-" => println!("{}", serde_json::to_string_pretty(value)?),
            Some(p) => {
                std::fs::write(p, serde_json::to_string_pretty(value)?)
                    .with_context(|| format!("write {}", p.display()))?;
                print!("{markdown}");
            }
            None => print!("{markdown}"),
        }
        Ok(())
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Every call holds two UDP sockets and a TLS connection here.
    open_files_up_to_hard_limit();
    match cli.command {
        Cmd::Gateway { gw, pid, load } => {
            let l = load.load()?;
            let report =
                tokio_runtime()?.block_on(run::run_gateway(&gateway_target(&gw, pid, 0)?, &l))?;
            load.emit(&report, &report::target_markdown(&report))
        }
        Cmd::Rtpengine { rtp, load } => {
            let l = load.load()?;
            let cpus = rtp.rtpengine_cpu.map(|c| vec![c]);
            let report = with_rtpengine(&rtp, &l, cpus.as_deref())?;
            load.emit(&report, &report::target_markdown(&report))
        }
        Cmd::Compare {
            gateway_bin,
            target_cpu,
            tool_cpu,
            workdir,
            login_per_call_sample,
            login_storm,
            rtp,
            load,
        } => {
            let l = load.load()?;
            if target_cpu.is_empty() {
                bail!("--target-cpu needs at least one core");
            }
            match tool_cpu.as_str() {
                "any" => {}
                n => pin_self(
                    n.parse()
                        .map_err(|_| anyhow!("--tool-cpu is a core number or \"any\""))?,
                )?,
            }
            std::fs::create_dir_all(&workdir)?;
            let gw = compare_gateway(
                &gateway_bin,
                &target_cpu,
                &workdir,
                (login_per_call_sample, login_storm),
                &l,
            )?;
            let mut rtp = rtp.clone();
            rtp.rtpengine_log = workdir.join("rtpengine.log");
            let re = with_rtpengine(&rtp, &l, Some(&target_cpu))?;
            #[derive(Serialize)]
            struct Both<'a> {
                gateway: &'a TargetReport,
                rtpengine: &'a TargetReport,
            }
            let md = format!(
                "{}\n{}\n{}",
                report::compare_markdown(&gw, &re),
                report::target_markdown(&gw),
                report::target_markdown(&re)
            );
            load.emit(
                &Both {
                    gateway: &gw,
                    rtpengine: &re,
                },
                &md,
            )
        }
        Cmd::GatewayConfig {
            out,
            https,
            sip,
            uas,
            public_ip,
            data_dir,
            account,
            password,
            trunk_media,
            port_min,
            port_max,
            max_sessions,
        } => {
            let cfg = gwconfig::GatewayConfig {
                https,
                sip,
                uas,
                public_ip,
                data_dir: &data_dir,
                account: &account,
                password: &password,
                trunk_media: trunk_media.into(),
                port_min,
                port_max,
                sessions: max_sessions,
            };
            std::fs::write(&out, cfg.to_toml()?)
                .with_context(|| format!("write {}", out.display()))?;
            eprintln!("gwload: wrote {}", out.display());
            Ok(())
        }
    }
}

fn open_files_up_to_hard_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both calls only read and write `lim`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn gateway_target(
    gw: &GatewayArgs,
    pid: u32,
    login_per_call_sample: usize,
) -> Result<GatewayTarget> {
    Ok(GatewayTarget {
        https: https::Target::parse(&gw.target)?,
        pid,
        account: gw.account.clone(),
        password: gw.password.clone(),
        uas: gw.uas,
        trunk_media: gw.trunk_media.into(),
        login_per_call: gw.login_per_call,
        login_per_call_sample,
        login_storm: 0,
    })
}

fn with_rtpengine(rtp: &RtpengineArgs, l: &Load, cpus: Option<&[usize]>) -> Result<TargetReport> {
    if let Some(dir) = rtp.rtpengine_log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let engine = rtpengine::Rtpengine::start(&rtpengine::Start {
        bin: &rtp.rtpengine_bin,
        ip: l.media_ip,
        ng_port: rtp.ng_port,
        port_min: 40000,
        port_max: 49999,
        cpus,
        log: &rtp.rtpengine_log,
    })?;
    let report = run::run_rtpengine(&engine, l);
    engine.stop();
    report
}

/// Pins the tool's threads (this one and all it starts later) to `cpu`.
fn pin_self(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "cannot pin the tool to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    // Bound for TCP and UDP alike (the gateway's SIP port is UDP, HTTPS TCP).
    let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(tcp.local_addr()?.port())
}

/// The taskset list of `cpus`.
fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Writes a config, starts the gateway pinned to `cpus`, runs the load, stops it.
fn compare_gateway(
    bin: &PathBuf,
    cpus: &[usize],
    workdir: &std::path::Path,
    (login_per_call_sample, login_storm): (usize, usize),
    l: &Load,
) -> Result<TargetReport> {
    if !bin.exists() {
        bail!(
            "no gateway binary at {} (cargo build --release)",
            bin.display()
        );
    }
    let password = hex::encode(rand::random::<[u8; 9]>());
    let https: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let sip: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let uas: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let data = workdir.join("gateway-data");
    let cfg = gwconfig::GatewayConfig {
        https,
        sip,
        uas,
        public_ip: l.media_ip,
        data_dir: data
            .to_str()
            .ok_or_else(|| anyhow!("workdir is not UTF-8"))?,
        account: "load",
        password: &password,
        trunk_media: TrunkMedia::Sdes,
        port_min: 20000,
        port_max: 29999,
        sessions: l.calls + login_per_call_sample + 8,
    };
    let config = workdir.join("gateway.toml");
    std::fs::write(&config, cfg.to_toml()?)?;
    let log = std::fs::File::create(workdir.join("gateway.log"))?;
    let child = Command::new("taskset")
        .arg("-c")
        .arg(cpu_list(cpus))
        .arg(bin)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("start the gateway under taskset")?;
    let mut child = ChildGuard(child);
    let gw = GatewayArgs {
        target: format!("https://{https}"),
        account: "load".into(),
        password,
        uas,
        trunk_media: TrunkArg::Sdes,
        login_per_call: false,
    };
    let mut target = gateway_target(&gw, child.0.id(), login_per_call_sample)?;
    target.login_storm = login_storm;
    let rt = tokio_runtime()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    rt.block_on(async {
        loop {
            if let Some(status) = child.0.try_wait()? {
                bail!(
                    "the gateway exited at start ({status}); see {}",
                    workdir.join("gateway.log").display()
                );
            }
            if target
                .https
                .login(&target.account, &target.password)
                .await
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the gateway did not come up; see {}",
                    workdir.join("gateway.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })?;
    let report = rt.block_on(run::run_gateway(&target, l));
    child.stop();
    report
}

/// A child process stopped (SIGTERM, then SIGKILL) when dropped.
struct ChildGuard(Child);

impl ChildGuard {
    fn stop(&mut self) {
        // SAFETY: our own child's pid, not yet reaped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.stop();
        }
    }
}
