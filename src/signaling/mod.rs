//! The HTTPS face of the gateway: the embedded web client, `/api/login`,
//! the signaling WebSocket `/ws`, `/healthz` and `/metrics` (PROTOCOL.md
//! section 3).
//!
//! Signaling authenticates browsers, turns their JSON into
//! [`SessionCommand`](crate::calls::api::SessionCommand)s for the call layer
//! and the call layer's [`SessionEvent`](crate::calls::api::SessionEvent)s back
//! into JSON. It knows nothing about SIP or SRTP.
//!
//! Layout: `auth` (passwords, tokens), `tls` (per-connection TLS logging;
//! the certificate is [`crate::certs`]'), `web` (embedded client, security headers), `http` (login, health,
//! metrics), `protocol` (the JSON messages, no IO), `session` (the task that
//! drives one WebSocket).

mod admin;
pub mod auth;
mod http;
mod password_pool;
pub mod protocol;
mod session;
mod throttle;
mod tls;
mod web;

#[cfg(test)]
mod tests;

use crate::calls::api::CallControl;
use crate::certs::{https_server_config, GatewayCert};
use crate::types::Secret;
use axum::Router;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::info;

/// How long `serve` lets open HTTP requests finish after the shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Argon2 verifications running at once (threads of the password pool).
/// Each one holds ~19 MiB for good and takes a core for tens of
/// milliseconds, so a login flood queues instead of exhausting memory.
const CONCURRENT_PASSWORD_CHECKS: usize = 2;

/// Source addresses whose failed `/api/login`s are remembered.
const LOGIN_THROTTLE_CAPACITY: usize = 16 * 1024;

/// Everything signaling needs from the configuration.
pub struct SignalingConfig {
    pub https_listen: SocketAddr,
    /// HMAC key of the HS256 signaling tokens.
    pub token_secret: Secret<String>,
    /// Lifetime of tokens handed out by `/api/login`.
    pub token_ttl: Duration,
    /// Account name -> argon2 PHC hash. A token for a name not in here is
    /// refused at `/ws`.
    pub accounts: HashMap<String, String>,
}

// Hand-written so that a `?config` in a log line shows which accounts exist
// but never their password hashes.
impl fmt::Debug for SignalingConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut accounts: Vec<&str> = self.accounts.keys().map(String::as_str).collect();
        accounts.sort_unstable();
        f.debug_struct("SignalingConfig")
            .field("https_listen", &self.https_listen)
            .field("token_secret", &self.token_secret)
            .field("token_ttl", &self.token_ttl)
            .field("accounts", &accounts)
            .finish()
    }
}

/// Errors of the signaling layer. Every variant names the address or file
/// concerned so the operator can act on the message alone.
#[derive(Debug, thiserror::Error)]
pub enum SignalingError {
    #[error("cannot listen on {addr} for HTTPS: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTPS server on {addr} failed: {source}")]
    Serve {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot hash password: {0}")]
    PasswordHash(String),
    #[error("server.token_secret is empty: refusing to sign or accept tokens")]
    EmptyTokenSecret,
    #[error("token expired")]
    TokenExpired,
    #[error("invalid token: {0}")]
    TokenInvalid(String),
}

/// How often the session pings the browser and how long it waits for any
/// frame before it gives up on the socket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WsTiming {
    pub ping_every: Duration,
    pub idle_timeout: Duration,
}

impl Default for WsTiming {
    fn default() -> Self {
        WsTiming {
            ping_every: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// The operator's figures (`/api/stats`), supplied by the stats module so
/// that signaling stays ignorant of calls. Methods may block briefly (call
/// records are read from SQLite): handlers call them off the async threads.
pub trait OperatorView: Send + Sync + 'static {
    /// Everything the stats page shows, as the JSON `/api/stats` returns.
    fn stats(&self) -> serde_json::Value;
    /// One call (live or recorded) with its SDPs and SIP ladder.
    fn call_detail(&self, id: &str) -> Option<serde_json::Value>;
    /// Records an operator's access in the audit log (who, what, detail).
    fn audit(&self, who: &str, action: &str, detail: &str);
}

/// Who may use what on the HTTPS side beyond signing in.
#[derive(Debug, Clone)]
pub struct AccessLimits {
    /// Sources that may read `/metrics` without the bearer token.
    pub metrics_allow: Vec<(std::net::IpAddr, u8)>,
    /// `Authorization: Bearer` token that opens `/metrics` from anywhere.
    pub metrics_token: Option<Secret<String>>,
    /// Signaling WebSockets one account, and one source address, may hold.
    pub sessions_per_account: usize,
    pub sessions_per_source: usize,
}

impl Default for AccessLimits {
    fn default() -> Self {
        AccessLimits {
            metrics_allow: vec![
                (std::net::IpAddr::from([127u8, 0, 0, 1]), 32),
                (std::net::IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]), 128),
            ],
            metrics_token: None,
            sessions_per_account: 32,
            sessions_per_source: 64,
        }
    }
}

/// Open signaling WebSockets per account and per source address.
#[derive(Debug, Default)]
pub(crate) struct WsCounts {
    by_account: HashMap<String, usize>,
    by_source: HashMap<std::net::IpAddr, usize>,
}

/// One counted WebSocket; the counts go down when it is dropped.
pub(crate) struct WsSlot {
    counts: Arc<std::sync::Mutex<WsCounts>>,
    account: String,
    source: Option<std::net::IpAddr>,
}

impl Drop for WsSlot {
    fn drop(&mut self) {
        if let Ok(mut c) = self.counts.lock() {
            if let Some(n) = c.by_account.get_mut(&self.account) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    c.by_account.remove(&self.account);
                }
            }
            if let Some(ip) = self.source {
                if let Some(n) = c.by_source.get_mut(&ip) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        c.by_source.remove(&ip);
                    }
                }
            }
        }
    }
}

/// Shared state of every request handler. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    config: Arc<SignalingConfig>,
    calls: Arc<dyn CallControl>,
    metrics: Arc<dyn Fn() -> String + Send + Sync>,
    healthy: Arc<dyn Fn() -> bool + Send + Sync>,
    /// `/healthz?detail`: each trunk's liveness and registration, for those
    /// who may read `/metrics`.
    health_detail: Option<Arc<dyn Fn() -> serde_json::Value + Send + Sync>>,
    /// Flipped to `true` by `serve` on shutdown so that open WebSockets close
    /// with "going away" instead of being cut.
    shutdown: watch::Sender<bool>,
    password_checks: password_pool::PasswordPool,
    ws_timing: WsTiming,
    operator: Option<Arc<dyn OperatorView>>,
    admin: Arc<admin::AdminAuth>,
    /// Failed `/api/login`s per source address.
    login_throttle: Arc<std::sync::Mutex<throttle::Throttle<Option<std::net::IpAddr>>>>,
    limits: Arc<AccessLimits>,
    ws_counts: Arc<std::sync::Mutex<WsCounts>>,
}

impl AppState {
    /// `metrics` renders the Prometheus text for `/metrics`; `healthy` says
    /// whether the SIP and media planes are up (`/healthz`).
    pub fn new(
        config: impl Into<Arc<SignalingConfig>>,
        calls: Arc<dyn CallControl>,
        metrics: Arc<dyn Fn() -> String + Send + Sync>,
        healthy: Arc<dyn Fn() -> bool + Send + Sync>,
    ) -> Self {
        AppState {
            config: config.into(),
            calls,
            metrics,
            healthy,
            health_detail: None,
            shutdown: watch::Sender::new(false),
            password_checks: password_pool::PasswordPool::new(CONCURRENT_PASSWORD_CHECKS),
            ws_timing: WsTiming::default(),
            operator: None,
            admin: Arc::new(admin::AdminAuth::new(None)),
            login_throttle: Arc::new(std::sync::Mutex::new(throttle::Throttle::new(
                LOGIN_THROTTLE_CAPACITY,
            ))),
            limits: Arc::new(AccessLimits::default()),
            ws_counts: Arc::default(),
        }
    }

    /// Replaces the default access limits (metrics sources, session caps).
    /// What `/healthz?detail` adds (trunks), for metrics readers only.
    pub fn with_health_detail(
        mut self,
        detail: Arc<dyn Fn() -> serde_json::Value + Send + Sync>,
    ) -> Self {
        self.health_detail = Some(detail);
        self
    }

    pub fn with_limits(mut self, limits: AccessLimits) -> Self {
        self.limits = Arc::new(limits);
        self
    }

    /// Takes a WebSocket slot for `account` from `source`, or says which cap
    /// is reached.
    pub(crate) fn take_ws_slot(
        &self,
        account: &str,
        source: Option<std::net::IpAddr>,
    ) -> Result<WsSlot, &'static str> {
        let Ok(mut c) = self.ws_counts.lock() else {
            return Err("internal error");
        };
        if c.by_account.get(account).copied().unwrap_or(0) >= self.limits.sessions_per_account {
            return Err("too many sessions open for this account");
        }
        if let Some(ip) = source {
            if c.by_source.get(&ip).copied().unwrap_or(0) >= self.limits.sessions_per_source {
                return Err("too many sessions open from this address");
            }
            *c.by_source.entry(ip).or_default() += 1;
        }
        *c.by_account.entry(account.to_string()).or_default() += 1;
        Ok(WsSlot {
            counts: self.ws_counts.clone(),
            account: account.to_string(),
            source,
        })
    }

    /// May this request read `/metrics`?
    pub(crate) fn may_read_metrics(
        &self,
        source: Option<std::net::IpAddr>,
        bearer: Option<&str>,
    ) -> bool {
        if let (Some(token), Some(given)) = (&self.limits.metrics_token, bearer) {
            let want = token.expose().as_bytes();
            let given = given.as_bytes();
            // Compares every byte whatever differs first.
            if want.len() == given.len()
                && want
                    .iter()
                    .zip(given)
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
            {
                return true;
            }
        }
        match source {
            Some(ip) => self
                .limits
                .metrics_allow
                .iter()
                .any(|net| crate::config::cidr_contains(*net, ip)),
            // In-process (tests): no socket, no address to refuse.
            None => true,
        }
    }

    /// Serves the operator's stats page from `operator`, signed in with the
    /// argon2 `admin_password_hash` (none: operator sign-in is refused).
    pub fn with_operator(
        mut self,
        operator: Arc<dyn OperatorView>,
        admin_password_hash: Option<String>,
    ) -> Self {
        self.operator = Some(operator);
        self.admin = Arc::new(admin::AdminAuth::new(admin_password_hash));
        self
    }

    pub fn config(&self) -> &SignalingConfig {
        &self.config
    }

    /// Tests shorten the ping and idle timers instead of waiting a minute.
    #[cfg(test)]
    pub(crate) fn with_ws_timing(mut self, ws_timing: WsTiming) -> Self {
        self.ws_timing = ws_timing;
        self
    }

    /// Asks every open WebSocket session to close ("going away").
    pub(crate) fn close_sessions(&self) {
        self.shutdown.send_replace(true);
    }
}

/// The whole HTTP surface, without TLS: tests drive it in process.
pub fn app(state: AppState) -> Router {
    Router::new()
        .merge(web::routes())
        .merge(http::routes())
        .merge(admin::routes())
        .route("/ws", axum::routing::get(session::upgrade))
        .layer(axum::middleware::from_fn(web::security_headers))
        .with_state(state)
}

/// Binds `https_listen`, serves [`app`] over TLS with `cert` until
/// `shutdown` completes, then closes the WebSockets and lets open requests
/// finish.
pub async fn serve(
    state: AppState,
    cert: Arc<GatewayCert>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SignalingError> {
    let addr = state.config.https_listen;
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|source| SignalingError::Bind { addr, source })?;
    serve_on(state, listener, cert, shutdown).await
}

/// Binds the HTTPS port (before the gateway says it is ready).
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, SignalingError> {
    std::net::TcpListener::bind(addr).map_err(|source| SignalingError::Bind { addr, source })
}

/// [`serve`] on a listener bound with [`bind`].
pub async fn serve_bound(
    state: AppState,
    listener: std::net::TcpListener,
    cert: Arc<GatewayCert>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SignalingError> {
    serve_on(state, listener, cert, shutdown).await
}

/// [`serve`] on a listener that is already bound (tests bind port 0).
pub(crate) async fn serve_on(
    state: AppState,
    listener: std::net::TcpListener,
    cert: Arc<GatewayCert>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SignalingError> {
    let addr = listener.local_addr().unwrap_or(state.config.https_listen);
    listener
        .set_nonblocking(true)
        .map_err(|source| SignalingError::Bind { addr, source })?;

    // Built once: the certificate is looked up per handshake, so a reload
    // of `cert` reaches new connections without touching this config.
    let rustls_config =
        axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(https_server_config(cert)));
    let handle = axum_server::Handle::new();
    let acceptor =
        tls::LoggingAcceptor::new(axum_server::tls_rustls::RustlsAcceptor::new(rustls_config));
    let server = axum_server::from_tcp(listener)
        .acceptor(acceptor)
        .handle(handle.clone())
        .serve(app(state.clone()).into_make_service_with_connect_info::<SocketAddr>());
    tokio::pin!(server);
    info!(%addr, "web client and signaling at https://{addr}/");

    tokio::select! {
        result = &mut server => {
            return result.map_err(|source| SignalingError::Serve { addr, source });
        }
        () = shutdown => {}
    }
    info!(%addr, "HTTPS shutting down");
    state.close_sessions();
    handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
    server
        .await
        .map_err(|source| SignalingError::Serve { addr, source })
}
