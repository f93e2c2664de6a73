//! Starting and stopping the whole gateway: data directory, secrets, the demo
//! account on defaults, and the SIP, media, call and signaling layers wired
//! together. `main` calls `run`; integration tests can too.

use crate::calls::cluster::{self, ClusterSessions};
use crate::calls::directory::{demo_trunk, Account, Directory};
use crate::calls::registration::{TrunkRegistrations, UNREGISTER_WAIT};
use crate::calls::sessions::{LocalSessions, SessionRegistry};
use crate::calls::trunk_health::TrunkHealth;
use crate::calls::{inbound, Calls, CallsContext};
use crate::cdr::{self, CdrStore};
use crate::config::{parse_cidr, Config, TrunkUri};
use crate::demo::EchoTrunk;
use crate::media::dtls::DtlsIdentity;
use crate::media::{MediaConfig, MediaEngine};
use crate::signaling::{self, auth, AccessLimits, AppState, SignalingConfig};
use crate::sip::transport::door::DoorConfig;
use crate::sip::transport::{EndpointConfig, SipEndpoint, StreamLimits};
use crate::stats::history::History;
use crate::stats::live::LiveCalls;
use crate::stats::operator::Operator;
use crate::stats::CallStats;
use crate::types::Secret;
use rand::distributions::{Alphanumeric, DistString};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tracing::{info, warn};

/// The account that exists on defaults (a config without accounts).
pub const DEMO_ACCOUNT: &str = "demo";
const DEMO_HASH_FILE: &str = "demo-password.hash";
const TOKEN_SECRET_FILE: &str = "token-secret";
/// Browsers get this long to hear their calls' BYE at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Signaling(#[from] signaling::SignalingError),
    #[error("TLS certificate: {0}")]
    Cert(#[from] crate::certs::CertError),
    #[error("SIP: {0}")]
    Sip(#[from] crate::sip::SipError),
    #[error("trunk {trunk}: {source}")]
    TrunkTls {
        trunk: String,
        source: crate::sip::tls::TlsSetupError,
    },
    #[error("DTLS certificate: {0}")]
    Dtls(#[from] crate::media::dtls::DtlsError),
    #[error("call records: {0}")]
    Cdr(#[from] crate::cdr::CdrError),
    #[error("media: {0}")]
    Media(String),
}

/// The token secret: from the config, else generated once into `data_dir`.
pub fn token_secret(config: &Config) -> Result<Secret<String>, GatewayError> {
    if let Some(secret) = &config.server.token_secret {
        return Ok(secret.clone());
    }
    let path = config.server.data_dir.join(TOKEN_SECRET_FILE);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim();
        if existing.len() >= 32 {
            return Ok(Secret::new(existing.to_string()));
        }
    }
    ensure_data_dir(&config.server.data_dir)?;
    let secret = Alphanumeric.sample_string(&mut rand::thread_rng(), 48);
    write_private(&path, &secret)?;
    Ok(Secret::new(secret))
}

/// Runs until `shutdown` resolves, then hangs up every call and returns.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let started = Instant::now();
    let data_dir = config.server.data_dir.clone();
    ensure_data_dir(&data_dir)?;
    let secret = token_secret(&config)?;

    let mut directory = Directory::from_config(&config);
    let mut password_hashes: HashMap<String, String> = config
        .accounts
        .iter()
        .map(|a| (a.name.clone(), a.password_hash.clone()))
        .collect();
    let mut demo_password = None;
    if config.accounts.is_empty() {
        let echo = EchoTrunk::start().await?;
        let (hash, fresh_password) = demo_credentials(&data_dir)?;
        demo_password = Some(fresh_password);
        directory.insert(Account {
            name: DEMO_ACCOUNT.into(),
            trunk: Arc::new(demo_trunk(echo.sip_addr.port())),
            caller_stream: crate::policy::CallerStream::RelayOrDecrypt,
            callee_stream: None,
            redact: config.privacy.redact_all,
        });
        password_hashes.insert(DEMO_ACCOUNT.into(), hash);
    }

    // One certificate for every TLS listener, reloaded hourly and on SIGHUP.
    let cert = crate::certs::start(&config.server).await?;
    let identity = Arc::new(DtlsIdentity::generate()?);
    let media = MediaEngine::new(
        MediaConfig {
            bind_ip: config.media_bind_ip(),
            public_ip: config.server.public_ip,
            port_min: config.media.port_min,
            port_max: config.media.port_max,
            workers: config.media.workers,
            single_port: config.media.single_port,
        },
        identity,
    );
    if let Some(e) = media.startup_error() {
        return Err(GatewayError::Media(e));
    }
    // The HTTPS certificate, looked up per handshake: a reload reaches new
    // SIP-TLS connections too.
    let tls_listen = config.sip.tls_listen.map(|addr| {
        (
            addr,
            Arc::new(crate::certs::sip_server_config(cert.clone())),
        )
    });
    let (sip, incoming) = SipEndpoint::start_with(EndpointConfig {
        udp_listen: config.sip.udp_listen,
        tcp_listen: config.sip.tcp_listen,
        tls_listen,
        digest: Some(Arc::new(digest_guard(&config))),
        stream_limits: StreamLimits {
            idle: Duration::from_secs(config.sip.limits.idle_seconds),
            message: Duration::from_secs(config.sip.limits.message_seconds),
            per_source: config.sip.limits.connections_per_source as usize,
        },
        door: DoorConfig {
            known: known_sources(&config, demo_password.is_some()).await,
            answer_strangers: config.sip.answer_strangers,
            requests_per_second: config.sip.limits.requests_per_second,
            concurrent_transactions: config.sip.limits.concurrent_transactions,
            ban: Duration::from_secs(config.sip.limits.ban_seconds),
            ..DoorConfig::default()
        },
    })
    .await?;
    add_tls_trunks(&config, &sip).await?;
    let sip_for_health = sip.clone();
    let sip_for_operator = sip.clone();
    let sip_for_drain = sip.clone();
    let call_stats = Arc::new(CallStats::default());
    let live_calls = Arc::new(LiveCalls::default());
    let trunk_health = Arc::new(TrunkHealth::default());
    // With a cluster registrar, the first session of an account registers
    // it there and the last one unregisters it.
    let cluster_registrar = config.cluster.as_ref().and_then(|c| {
        let uri = TrunkUri::parse(c.registrar.as_deref()?).ok()?;
        Some((uri, c.domain.clone().unwrap_or_default()))
    });
    let (sessions, presence_changes): (Arc<dyn SessionRegistry>, _) = match &cluster_registrar {
        Some(_) => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            (Arc::new(ClusterSessions::new(tx)), Some(rx))
        }
        None => (Arc::new(LocalSessions::default()), None),
    };
    let cdr = CdrStore::open(&cdr::database_path(&data_dir), SystemTime::now())?;
    tokio::spawn(purge_daily(cdr.clone(), config.privacy.cdr_retention_days));
    let calls = Calls::new(CallsContext {
        directory,
        sip,
        media: media.clone(),
        public_ip: config.server.public_ip,
        stats: call_stats.clone(),
        sessions: sessions.clone(),
        live: live_calls.clone(),
        cdr: cdr.clone(),
        trunk_health: trunk_health.clone(),
        outbound_proxy: config
            .cluster
            .as_ref()
            .and_then(|c| cluster::OutboundProxy::parse(c.outbound_proxy.as_deref()?)),
        ring_timeout: Duration::from_secs(config.sip.ring_timeout),
        media_timeout: Duration::from_secs(config.media.timeout),
        hold_timeout: Duration::from_secs(config.media.hold_timeout),
    });
    tokio::spawn(inbound::route(calls.clone(), incoming));
    calls.start_trunk_monitors();
    let registrations = Arc::new(TrunkRegistrations::default());
    let registrars = calls.start_registrations(registrations.clone());
    let cluster_bindings = match (cluster_registrar, presence_changes) {
        (Some((uri, domain)), Some(changes)) => {
            let instance =
                cluster::instance_id(&data_dir).map_err(|source| GatewayError::DataDir {
                    path: data_dir.clone(),
                    source,
                })?;
            info!(%instance, "registering accounts with the cluster registrar");
            Some(calls.start_cluster(&uri, domain, instance, changes))
        }
        _ => None,
    };

    let media_stats = media.stats();
    let sip_for_metrics = sip_for_health.clone();
    let sessions_for_metrics = sessions.clone();
    let health_for_metrics = trunk_health.clone();
    let registrations_for_metrics = registrations.clone();
    let trunk_detail = {
        let health = trunk_health.clone();
        let registrations = registrations.clone();
        let names: Vec<String> = config.trunks.iter().map(|t| t.name.clone()).collect();
        move || health_detail(&names, &health, &registrations)
    };
    let metrics = move || {
        let mut out = String::new();
        call_stats.render_prometheus(&mut out);
        media_stats.render_prometheus(&mut out);
        sip_for_metrics.stats().render_prometheus(&mut out);
        sip_for_metrics.render_door_prometheus(&mut out);
        health_for_metrics.render_prometheus(&mut out);
        registrations_for_metrics.render_prometheus(&mut out);
        let _ = writeln!(
            out,
            "# HELP gateway_websocket_sessions Browser signaling sessions open.\n# TYPE gateway_websocket_sessions gauge\ngateway_websocket_sessions {}",
            sessions_for_metrics.count()
        );
        out
    };
    let state = AppState::new(
        SignalingConfig {
            https_listen: config.server.https_listen,
            token_secret: secret,
            token_ttl: Duration::from_secs(12 * 3600),
            accounts: password_hashes,
        },
        Arc::new(calls.clone()),
        Arc::new(metrics),
        // A draining node is not healthy: balancers send new browsers
        // elsewhere.
        Arc::new(move || sip_for_health.is_running() && !sip_for_health.is_draining()),
    );
    let history = Arc::new(History::default());
    tokio::spawn(sample_history(
        history.clone(),
        live_calls.clone(),
        media.stats(),
    ));
    let operator = Operator {
        live: live_calls.clone(),
        history,
        cdr: cdr.clone(),
        started,
        trunks: config.trunks.iter().map(|t| t.name.clone()).collect(),
        trunk_health: trunk_health.clone(),
        registrations,
        sip: sip_for_operator,
    };
    let state = state
        .with_operator(
            Arc::new(operator),
            config.server.admin_password_hash.clone(),
        )
        .with_health_detail(Arc::new(trunk_detail))
        .with_limits(AccessLimits {
            metrics_allow: config
                .server
                .metrics_allow
                .iter()
                .filter_map(|s| parse_cidr(s))
                .collect(),
            metrics_token: config.server.metrics_token.clone(),
            sessions_per_account: config.server.max_sessions_per_account,
            sessions_per_source: config.server.max_sessions_per_source,
        });
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    // Bound before "ready" is logged: a port in use is an error, not a
    // ready gateway that then fails.
    let https = signaling::bind(config.server.https_listen)?;
    let server = signaling::serve_bound(state, https, cert.clone(), async {
        let _ = http_stopped.await;
    });
    let mut server = tokio::spawn(server);

    let url = format!("https://{}", config.server.https_listen);
    info!(%url, startup_ms = started.elapsed().as_millis() as u64, "gateway ready: open {url}");
    match demo_password {
        Some(Some(password)) => info!(
            "demo account: {DEMO_ACCOUNT} / password: {password} (shown once; stored hashed in {}; delete that file for a new one)",
            data_dir.join(DEMO_HASH_FILE).display()
        ),
        Some(None) => info!(
            "demo account: {DEMO_ACCOUNT} (password shown at first start; delete {} for a new one)",
            data_dir.join(DEMO_HASH_FILE).display()
        ),
        None => {}
    }

    tokio::select! {
        result = &mut server => {
            // The HTTPS server ended by itself: a bind error or a crash.
            return match result {
                Ok(r) => r.map_err(GatewayError::from),
                Err(e) => {
                    warn!(error = %e, "HTTPS server task failed");
                    Ok(())
                }
            };
        }
        _ = shutdown => {}
    }
    let mut cluster_bindings = cluster_bindings;
    if let Some(cluster) = &config.cluster {
        // A clustered node drains: OPTIONS 503 and /healthz 503 (the proxy
        // and the balancer send nothing new), no new calls, its bindings
        // removed at once; the calls in progress get drain_seconds.
        let max = Duration::from_secs(cluster.drain_seconds);
        info!(
            drain_s = cluster.drain_seconds,
            calls = calls.active_calls(),
            "draining: no new calls; waiting for the calls in progress"
        );
        sip_for_drain.set_draining();
        let unbind = async {
            if let Some(bindings) = cluster_bindings.take() {
                bindings
                    .stop(UNREGISTER_WAIT + Duration::from_millis(500))
                    .await;
            }
        };
        tokio::join!(calls.drain(max), unbind);
    }
    // Calls end and bindings are removed side by side; both waits are short.
    let cluster_stopped = async {
        if let Some(bindings) = cluster_bindings {
            bindings
                .stop(UNREGISTER_WAIT + Duration::from_millis(500))
                .await;
        }
    };
    tokio::join!(
        calls.shutdown(SHUTDOWN_GRACE),
        registrars.stop(UNREGISTER_WAIT + Duration::from_millis(500)),
        cluster_stopped
    );
    // Every call's record reaches the database before the process ends.
    let flushing = cdr.clone();
    match tokio::task::spawn_blocking(move || flushing.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "call records not flushed"),
        Err(e) => warn!(error = %e, "call records not flushed"),
    }
    let _ = stop_http.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    info!("stopped");
    Ok(())
}

/// Who may answer the gateway's digest challenge: the trunks with inbound
/// credentials. The nonce key is new at every start.
fn digest_guard(config: &Config) -> crate::sip::auth_server::DigestGuard {
    use crate::sip::auth_server::{DigestGuard, InboundCredential};
    let credentials = config
        .trunks
        .iter()
        .filter_map(|t| {
            Some(InboundCredential {
                trunk: t.name.clone(),
                username: t.inbound_username.clone()?,
                password: t.inbound_password.clone()?,
            })
        })
        .collect();
    DigestGuard::new(
        rand::random(),
        config.server.public_ip.to_string(),
        credentials,
    )
}

/// `/healthz?detail`: every configured trunk's OPTIONS liveness and
/// registration.
fn health_detail(
    names: &[String],
    health: &TrunkHealth,
    registrations: &TrunkRegistrations,
) -> serde_json::Value {
    use crate::sip::probe::Health;
    use crate::sip::register::RegState;
    let probed: HashMap<String, Health> = health.all().into_iter().collect();
    let trunks: Vec<serde_json::Value> = names
        .iter()
        .map(|name| {
            let (state, rtt_ms) = match probed.get(name) {
                None => ("not probed", None),
                Some(Health::Unknown) => ("unknown", None),
                Some(Health::Up { rtt }) => ("up", Some(rtt.as_secs_f64() * 1000.0)),
                Some(Health::Down) => ("down", None),
            };
            let registration = registrations.get(name).map(|r| match r.state {
                RegState::Registering => "registering",
                RegState::Registered { .. } => "registered",
                RegState::Failed { .. } => "failed",
                RegState::Unregistered => "unregistered",
            });
            serde_json::json!({
                "name": name,
                "options": state,
                "rtt_ms": rtt_ms,
                "registration": registration,
            })
        })
        .collect();
    serde_json::json!({ "trunks": trunks })
}

/// Tells the SIP endpoint how to check each TLS trunk, at its address.
async fn add_tls_trunks(config: &Config, sip: &SipEndpoint) -> Result<(), GatewayError> {
    for trunk in &config.trunks {
        let Ok(uri) = TrunkUri::parse(&trunk.uri) else {
            continue;
        };
        if uri.transport != crate::config::TrunkTransport::Tls {
            continue;
        }
        let tls = crate::sip::tls::TrunkTls {
            host: uri.host.clone(),
            verify: trunk.tls_verify,
            ca_file: trunk.ca_file.clone(),
            fingerprint: trunk.tls_fingerprint.clone(),
        };
        let peer = crate::sip::tls::TlsPeer::for_trunk(&trunk.name, &tls).map_err(|source| {
            GatewayError::TrunkTls {
                trunk: trunk.name.clone(),
                source,
            }
        })?;
        match tokio::net::lookup_host((uri.host.clone(), uri.port)).await {
            Ok(addrs) => {
                for addr in addrs {
                    sip.add_tls_peer(addr, peer.clone());
                }
            }
            Err(e) => {
                warn!(trunk = %trunk.name, error = %e, "TLS trunk address does not resolve; nothing is sent to it")
            }
        }
    }
    Ok(())
}

/// The sources the SIP door serves: every trunk's `inbound_sources`, each
/// trunk's own address (its responses and in-dialog requests), and loopback
/// for the built-in demo trunk.
async fn known_sources(config: &Config, demo: bool) -> Vec<(std::net::IpAddr, u8)> {
    let mut known: Vec<(std::net::IpAddr, u8)> = config
        .trunks
        .iter()
        .flat_map(|t| t.inbound_sources.iter().filter_map(|s| parse_cidr(s)))
        .collect();
    for trunk in &config.trunks {
        let Ok(uri) = TrunkUri::parse(&trunk.uri) else {
            continue;
        };
        let resolved = tokio::net::lookup_host((uri.host.clone(), uri.port)).await;
        match resolved {
            Ok(addrs) => known.extend(addrs.map(|a| {
                let bits = if a.is_ipv4() { 32 } else { 128 };
                (a.ip(), bits)
            })),
            Err(e) => {
                warn!(trunk = %trunk.name, error = %e, "trunk address does not resolve; its SIP is answered only from inbound_sources")
            }
        }
    }
    if demo {
        known.push((std::net::IpAddr::from([127u8, 0, 0, 1]), 32));
    }
    known
}

/// Feeds the stats page's charts once a second.
async fn sample_history(
    history: Arc<History>,
    live: Arc<LiveCalls>,
    media: Arc<crate::media::MediaStats>,
) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let packets = media.packets_in();
        let unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        history.tick(Instant::now(), unix, live.count(), packets);
    }
}

/// Deletes call records past `privacy.cdr_retention_days`: at start, then
/// once a day (GDPR storage limitation).
async fn purge_daily(cdr: CdrStore, retention_days: u32) {
    const DAY: Duration = Duration::from_secs(24 * 3600);
    loop {
        let store = cdr.clone();
        let purged = tokio::task::spawn_blocking(move || {
            store.purge_older_than(SystemTime::now(), retention_days)
        })
        .await;
        match purged {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => info!(
                rows = n,
                retention_days, "call records past retention deleted"
            ),
            Ok(Err(e)) => warn!(error = %e, "call record retention purge failed"),
            Err(e) => warn!(error = %e, "call record retention purge failed"),
        }
        tokio::time::sleep(DAY).await;
    }
}

/// The demo account's password hash; on first start a fresh password is made,
/// stored hashed, and returned so it can be shown once.
fn demo_credentials(data_dir: &Path) -> Result<(String, Option<String>), GatewayError> {
    let path = data_dir.join(DEMO_HASH_FILE);
    if let Ok(hash) = std::fs::read_to_string(&path) {
        let hash = hash.trim();
        if hash.starts_with("$argon2") {
            return Ok((hash.to_string(), None));
        }
        warn!(path = %path.display(), "demo password hash unreadable; making a new password");
    }
    let password = Alphanumeric.sample_string(&mut rand::thread_rng(), 16);
    let hash = auth::hash_password(&password)?;
    write_private(&path, &hash)?;
    Ok((hash, Some(password)))
}

fn ensure_data_dir(path: &Path) -> Result<(), GatewayError> {
    std::fs::create_dir_all(path).map_err(|source| GatewayError::DataDir {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a file only its owner can read (secrets, hashes).
fn write_private(path: &Path, contents: &str) -> Result<(), GatewayError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| GatewayError::DataDir {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    file.write_all(contents.as_bytes()).map_err(err)
}
