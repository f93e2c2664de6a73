//! The typed TOML configuration (PROTOCOL.md section 2): defaults, parsing
//! with the key path in every error, and validation that reports every
//! problem at once (for `check-config`).

use crate::policy::{self, CalleeStream, CallerStream, SecureMedia, TrunkMedia};
use crate::types::{Secret, SrtpSuite};
use serde::Deserialize;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// Where `run` and `check-config` look when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "config/gateway.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {key}: {message}")]
    Parse {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("{}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid { problems: Vec<Problem> },
}

/// One validation problem, with the key path it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub sip: SipConfig,
    #[serde(default)]
    pub media: MediaConfig,
    #[serde(default)]
    pub trunks: Vec<TrunkConfig>,
    #[serde(default)]
    pub accounts: Vec<AccountConfig>,
    #[serde(default)]
    pub privacy: PrivacyConfig,
    /// Several nodes behind Kamailio (absent: a single gateway).
    pub cluster: Option<ClusterConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_https_listen")]
    pub https_listen: SocketAddr,
    #[serde(default = "default_loopback")]
    pub public_ip: IpAddr,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// When absent, a random secret is generated into `data_dir` and reused.
    pub token_secret: Option<Secret<String>>,
    pub admin_password_hash: Option<String>,
    /// Who may read `/metrics` without the bearer token.
    #[serde(default = "default_metrics_allow")]
    pub metrics_allow: Vec<String>,
    /// `Authorization: Bearer` token that opens `/metrics` from anywhere.
    pub metrics_token: Option<Secret<String>>,
    /// Signaling WebSockets one account may hold open at once.
    #[serde(default = "default_sessions_per_account")]
    pub max_sessions_per_account: usize,
    /// Signaling WebSockets one source address may hold open at once.
    #[serde(default = "default_sessions_per_source")]
    pub max_sessions_per_source: usize,
}

fn default_metrics_allow() -> Vec<String> {
    vec!["127.0.0.1/32".into(), "::1/128".into()]
}
fn default_sessions_per_account() -> usize {
    32
}
fn default_sessions_per_source() -> usize {
    64
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            https_listen: default_https_listen(),
            public_ip: default_loopback(),
            data_dir: default_data_dir(),
            tls_cert: None,
            tls_key: None,
            token_secret: None,
            admin_password_hash: None,
            metrics_allow: default_metrics_allow(),
            metrics_token: None,
            max_sessions_per_account: default_sessions_per_account(),
            max_sessions_per_source: default_sessions_per_source(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipConfig {
    #[serde(default = "default_sip_udp")]
    pub udp_listen: SocketAddr,
    pub tcp_listen: Option<SocketAddr>,
    pub tls_listen: Option<SocketAddr>,
    /// Seconds an incoming call rings the browsers before 408.
    #[serde(default = "default_ring_timeout")]
    pub ring_timeout: u64,
    /// Requests from outside every trunk's sources: false = silence,
    /// true = 403.
    #[serde(default)]
    pub answer_strangers: bool,
    #[serde(default)]
    pub limits: SipLimits,
}

/// `[sip.limits]`: per source outside every trunk's addresses, and the
/// hygiene of TCP and TLS connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipLimits {
    #[serde(default = "default_requests_per_second")]
    pub requests_per_second: u32,
    #[serde(default = "default_ban_seconds")]
    pub ban_seconds: u64,
    /// INVITE transactions in progress at once from one source that is
    /// not a trunk's address (one that authenticated with digest); over
    /// it the source is banned.
    #[serde(default = "default_concurrent_transactions")]
    pub concurrent_transactions: u32,
    /// A TCP or TLS connection with no complete message for this long is
    /// closed (CRLF keep-alives count as traffic).
    #[serde(default = "default_idle_seconds")]
    pub idle_seconds: u64,
    /// A message started on a TCP or TLS connection must be complete
    /// within this many seconds (and a TLS handshake must end in it).
    #[serde(default = "default_message_seconds")]
    pub message_seconds: u64,
    /// Open TCP plus TLS connections from one address at most.
    #[serde(default = "default_connections_per_source")]
    pub connections_per_source: u32,
}

impl Default for SipLimits {
    fn default() -> Self {
        SipLimits {
            requests_per_second: default_requests_per_second(),
            ban_seconds: default_ban_seconds(),
            concurrent_transactions: default_concurrent_transactions(),
            idle_seconds: default_idle_seconds(),
            message_seconds: default_message_seconds(),
            connections_per_source: default_connections_per_source(),
        }
    }
}

fn default_concurrent_transactions() -> u32 {
    20
}
fn default_idle_seconds() -> u64 {
    300
}
fn default_message_seconds() -> u64 {
    10
}
fn default_connections_per_source() -> u32 {
    16
}

fn default_requests_per_second() -> u32 {
    50
}
fn default_ban_seconds() -> u64 {
    60
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            udp_listen: default_sip_udp(),
            tcp_listen: None,
            tls_listen: None,
            ring_timeout: default_ring_timeout(),
            answer_strangers: false,
            limits: SipLimits::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    #[serde(default = "default_port_min")]
    pub port_min: u16,
    #[serde(default = "default_port_max")]
    pub port_max: u16,
    /// Address the media sockets bind to; defaults to `server.public_ip`.
    /// Set it (e.g. to 0.0.0.0) when `public_ip` is a NAT's address.
    pub bind_ip: Option<IpAddr>,
    /// Seconds without media from a leg of an answered call before it ends.
    #[serde(default = "default_media_timeout")]
    pub timeout: u64,
    /// The same while the trunk holds the call (a=sendonly/inactive or
    /// c=0.0.0.0): a held trunk legitimately sends nothing for a long time.
    #[serde(default = "default_hold_timeout")]
    pub hold_timeout: u64,
    /// Media worker threads; 0: one per core.
    #[serde(default)]
    pub workers: usize,
    /// Browser legs share one UDP port per worker (taken from the range at
    /// start, demultiplexed by ICE); `false`: one browser port per call.
    #[serde(default = "default_true")]
    pub single_port: bool,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            port_min: default_port_min(),
            port_max: default_port_max(),
            bind_ip: None,
            timeout: default_media_timeout(),
            hold_timeout: default_hold_timeout(),
            workers: 0,
            single_port: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkConfig {
    pub name: String,
    pub uri: String,
    pub username: Option<String>,
    pub password: Option<Secret<String>>,
    #[serde(default = "default_callee_stream")]
    pub callee_stream: CalleeStream,
    #[serde(default = "default_caller_stream")]
    pub caller_stream: CallerStream,
    #[serde(default = "default_secure_media")]
    pub secure_media: SecureMedia,
    #[serde(default = "default_suites")]
    pub srtp_suites: Vec<SrtpSuite>,
    #[serde(default)]
    pub inbound_sources: Vec<String>,
    /// TLS trunks: the CAs that may sign the trunk's certificate (PEM);
    /// absent: the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// REGISTER to the trunk with `username`/`password`, so that a
    /// registration-based carrier knows where to send calls.
    #[serde(default)]
    pub tls_verify: TlsVerify,
    /// With `tls_verify = "pinned"`: `sha-256 AB:CD:...` of the trunk's
    /// certificate.
    pub tls_fingerprint: Option<String>,
    #[serde(default)]
    pub register: bool,
    /// Digest credentials this trunk answers the gateway's challenge with
    /// when it calls from outside `inbound_sources`.
    pub inbound_username: Option<String>,
    pub inbound_password: Option<Secret<String>>,
    /// Seconds a registration asks to last (the registrar may grant less).
    #[serde(default = "default_register_expires")]
    pub register_expires: u32,
    /// Sent when every browser session declines an incoming call.
    #[serde(default = "default_reject_code")]
    pub reject_code: u16,
    /// Carry out a REFER from this trunk (PROTOCOL.md); false: refuse it
    /// with 603. (Carrying one out is not built yet: true answers 501.)
    #[serde(default = "default_true")]
    pub accept_refer: bool,
    /// Seconds between OPTIONS pings to the trunk; 0 = off.
    #[serde(default = "default_options_interval")]
    pub options_interval: u64,
    /// Where this trunk's plain RTP may come from.
    #[serde(default)]
    pub media_source: crate::types::MediaSource,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    pub name: String,
    pub password_hash: String,
    pub trunk: String,
    #[serde(default = "default_caller_stream")]
    pub caller_stream: CallerStream,
    pub callee_stream: Option<CalleeStream>,
    #[serde(default)]
    pub redact: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    #[serde(default)]
    pub redact_all: bool,
    #[serde(default = "default_retention")]
    pub cdr_retention_days: u32,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            redact_all: false,
            cdr_retention_days: default_retention(),
        }
    }
}

/// `[cluster]`: this node is one of several behind a SIP proxy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Where each account with a session on this node is REGISTERed.
    pub registrar: Option<String>,
    /// The domain of those registrations (`sip:ACCOUNT@DOMAIN`).
    pub domain: Option<String>,
    /// Trunk INVITEs go through it (a `Route` header, loose routing).
    pub outbound_proxy: Option<String>,
    /// SIGTERM lets calls in progress run this long before hanging up.
    #[serde(default = "default_drain_seconds")]
    pub drain_seconds: u64,
}

fn default_drain_seconds() -> u64 {
    300
}

fn default_https_listen() -> SocketAddr {
    SocketAddr::new(default_loopback(), 8443)
}
fn default_sip_udp() -> SocketAddr {
    SocketAddr::new(default_loopback(), 5060)
}
fn default_loopback() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_ring_timeout() -> u64 {
    120
}
fn default_options_interval() -> u64 {
    30
}
fn default_register_expires() -> u32 {
    3600
}
fn default_reject_code() -> u16 {
    486
}
fn default_true() -> bool {
    true
}
fn default_port_min() -> u16 {
    20000
}
fn default_port_max() -> u16 {
    20999
}
fn default_media_timeout() -> u64 {
    30
}
/// More media workers than this is a typo, not a machine.
const MAX_MEDIA_WORKERS: usize = 1024;
fn default_hold_timeout() -> u64 {
    3600
}
fn default_callee_stream() -> CalleeStream {
    CalleeStream::Sdes
}
fn default_caller_stream() -> CallerStream {
    CallerStream::RelayOrDecrypt
}
fn default_secure_media() -> SecureMedia {
    SecureMedia::Mandatory
}
fn default_suites() -> Vec<SrtpSuite> {
    vec![
        SrtpSuite::AesCm128HmacSha1_80,
        SrtpSuite::AesCm128HmacSha1_32,
    ]
}
fn default_retention() -> u32 {
    90
}

/// How a TLS trunk's certificate is checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsVerify {
    /// Signed by a CA in `ca_file` (or the system's), for the URI's host.
    #[default]
    Ca,
    /// Exactly the certificate whose SHA-256 is `tls_fingerprint`.
    Pinned,
}

/// The SIP transport named in a trunk URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrunkTransport {
    Udp,
    Tcp,
    Tls,
}

/// A trunk's `uri`, e.g. `sip:carrier.example:5070;transport=udp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkUri {
    pub host: String,
    pub port: u16,
    pub transport: TrunkTransport,
}

impl TrunkUri {
    pub fn parse(uri: &str) -> Result<TrunkUri, String> {
        let (scheme, rest) = uri
            .split_once(':')
            .ok_or_else(|| format!("{uri:?} is not a sip: or sips: URI"))?;
        let secure = match scheme.to_ascii_lowercase().as_str() {
            "sip" => false,
            "sips" => true,
            other => return Err(format!("scheme {other:?} is not sip or sips")),
        };
        let mut parts = rest.split(';');
        let hostport = parts.next().unwrap_or_default();
        let hostport = hostport.rsplit('@').next().unwrap_or(hostport);
        let mut transport = if secure {
            TrunkTransport::Tls
        } else {
            TrunkTransport::Udp
        };
        for param in parts {
            if let Some(value) = param.strip_prefix("transport=") {
                transport = match value.to_ascii_lowercase().as_str() {
                    "udp" => TrunkTransport::Udp,
                    "tcp" => TrunkTransport::Tcp,
                    "tls" => TrunkTransport::Tls,
                    other => return Err(format!("transport {other:?} is not udp, tcp or tls")),
                };
            }
        }
        let default_port = if transport == TrunkTransport::Tls {
            5061
        } else {
            5060
        };
        let (host, port) = split_host_port(hostport, default_port)?;
        if host.is_empty() {
            return Err(format!("{uri:?} has no host"));
        }
        Ok(TrunkUri {
            host,
            port,
            transport,
        })
    }
}

fn split_host_port(hostport: &str, default_port: u16) -> Result<(String, u16), String> {
    // [v6]:port, v4:port, name:port, or without a port.
    if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{hostport:?}: unclosed IPv6 bracket"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("bad port {p:?}"))?,
            None => default_port,
        };
        return Ok((host.to_string(), port));
    }
    match hostport.rsplit_once(':') {
        Some((host, port)) => Ok((
            host.to_string(),
            port.parse().map_err(|_| format!("bad port {port:?}"))?,
        )),
        None => Ok((hostport.to_string(), default_port)),
    }
}

impl Config {
    /// Reads and parses `path`. Syntax and type errors name the key path.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let deserializer = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let key = err.path().to_string();
            ConfigError::Parse {
                path: path.to_path_buf(),
                key: if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                message: err.into_inner().message().trim().to_string(),
            }
        })
    }

    /// Every semantic problem, each with its key path. Empty means valid.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut add = |key: String, message: String| problems.push(Problem { key, message });

        if let Some(secret) = &self.server.token_secret {
            if secret.expose() == "change-me" || secret.expose().len() < 16 {
                add(
                    "server.token_secret".into(),
                    "must be a random string of at least 16 characters (not the example value)"
                        .into(),
                );
            }
        }
        if self.server.public_ip.is_unspecified() {
            add(
                "server.public_ip".into(),
                "must be the address trunks and browsers reach, not 0.0.0.0 or ::".into(),
            );
        }
        for (i, net) in self.server.metrics_allow.iter().enumerate() {
            if parse_cidr(net).is_none() {
                add(
                    format!("server.metrics_allow[{i}]"),
                    format!("{net:?} is not an address or CIDR block"),
                );
            }
        }
        if let Some(hash) = &self.server.admin_password_hash {
            if !hash.starts_with("$argon2") {
                add(
                    "server.admin_password_hash".into(),
                    "must be an argon2 hash from `webrtc-sip-gateway hash-password`".into(),
                );
            }
        }
        if self.sip.limits.requests_per_second == 0 {
            add(
                "sip.limits.requests_per_second".into(),
                "must be at least 1".into(),
            );
        }
        if self.sip.limits.ban_seconds == 0 {
            add("sip.limits.ban_seconds".into(), "must be at least 1".into());
        }
        if !(1..=3600).contains(&self.sip.ring_timeout) {
            add(
                "sip.ring_timeout".into(),
                "must be between 1 and 3600 seconds".into(),
            );
        }
        for (key, value) in [
            ("sip.limits.idle_seconds", self.sip.limits.idle_seconds),
            (
                "sip.limits.message_seconds",
                self.sip.limits.message_seconds,
            ),
            (
                "sip.limits.concurrent_transactions",
                u64::from(self.sip.limits.concurrent_transactions),
            ),
            (
                "sip.limits.connections_per_source",
                u64::from(self.sip.limits.connections_per_source),
            ),
        ] {
            if value == 0 {
                add(key.into(), "must be at least 1".into());
            }
        }
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            add(
                "server.tls_cert".into(),
                "tls_cert and tls_key must be given together".into(),
            );
        }
        if self.media.port_min > self.media.port_max {
            add(
                "media.port_min".into(),
                format!(
                    "{} is above media.port_max {}",
                    self.media.port_min, self.media.port_max
                ),
            );
        } else if u32::from(self.media.port_max) - u32::from(self.media.port_min) < 3 {
            add(
                "media.port_max".into(),
                "the range must hold at least 4 ports (one call)".into(),
            );
        }
        if self.media.port_min < 1024 {
            add("media.port_min".into(), "must be 1024 or above".into());
        }
        if self.media.workers > MAX_MEDIA_WORKERS {
            add(
                "media.workers".into(),
                format!("must be 0 (one per core) to {MAX_MEDIA_WORKERS}"),
            );
        } else if self.media.single_port && self.media.port_min <= self.media.port_max {
            // Each worker takes one port of the range; a call still needs
            // an even/odd pair from the rest.
            let ports = usize::from(self.media.port_max - self.media.port_min) + 1;
            let workers = self.media_workers();
            if ports < workers + 3 {
                add(
                    "media.port_max".into(),
                    format!(
                        "with single_port the range needs a port per worker ({workers}) \
                         and a pair for a call: at least {} ports",
                        workers + 3
                    ),
                );
            }
        }
        // A day bounds both: a longer silence is a dead call, and the
        // deadline arithmetic stays far from overflow.
        for (key, value) in [
            ("media.timeout", self.media.timeout),
            ("media.hold_timeout", self.media.hold_timeout),
        ] {
            if !(1..=86_400).contains(&value) {
                add(key.into(), "must be 1 to 86400 seconds".into());
            }
        }
        if self.media.hold_timeout < self.media.timeout {
            add(
                "media.hold_timeout".into(),
                format!("must not be below media.timeout ({})", self.media.timeout),
            );
        }

        if let Some(cluster) = &self.cluster {
            for (key, uri) in [
                ("cluster.registrar", &cluster.registrar),
                ("cluster.outbound_proxy", &cluster.outbound_proxy),
            ] {
                if let Some(Err(message)) = uri.as_deref().map(TrunkUri::parse) {
                    add(key.into(), message);
                }
            }
            if cluster.registrar.is_some() && cluster.domain.as_deref().unwrap_or("").is_empty() {
                add(
                    "cluster.domain".into(),
                    "cluster.registrar needs the domain of the registrations".into(),
                );
            }
        }
        for (i, trunk) in self.trunks.iter().enumerate() {
            let key = |k: &str| format!("trunks[{i}].{k}");
            if trunk.name.is_empty() {
                add(key("name"), "must not be empty".into());
            }
            if self.trunks[..i].iter().any(|t| t.name == trunk.name) {
                add(
                    key("name"),
                    format!("duplicate trunk name {:?}", trunk.name),
                );
            }
            match TrunkUri::parse(&trunk.uri) {
                Err(message) => add(key("uri"), message),
                Ok(uri) if uri.transport == TrunkTransport::Tls && self.sip.tls_listen.is_none() => {
                    add(
                        key("uri"),
                        "transport=tls needs sip.tls_listen (the trunk's in-dialog requests come back there)"
                            .into(),
                    )
                }
                Ok(uri) if uri.transport == TrunkTransport::Tcp && self.sip.tcp_listen.is_none() => {
                    add(
                        key("uri"),
                        "transport=tcp needs sip.tcp_listen (the trunk's in-dialog requests come back there)"
                            .into(),
                    )
                }
                Ok(_) => {}
            }
            match (trunk.tls_verify, &trunk.tls_fingerprint) {
                (TlsVerify::Pinned, None) => add(
                    key("tls_fingerprint"),
                    "tls_verify = \"pinned\" needs the trunk certificate's \"sha-256 AB:CD:...\""
                        .into(),
                ),
                (TlsVerify::Pinned, Some(f)) if crate::sip::tls::parse_pin(f).is_none() => add(
                    key("tls_fingerprint"),
                    format!("{f:?} is not \"sha-256\" and 32 colon-separated hex bytes"),
                ),
                (TlsVerify::Ca, Some(_)) => add(
                    key("tls_fingerprint"),
                    "only used with tls_verify = \"pinned\"".into(),
                ),
                _ => {}
            }
            if let Some(ca) = &trunk.ca_file {
                if let Err(e) = crate::sip::tls::read_ca_file(ca) {
                    add(key("ca_file"), e.to_string());
                }
            }
            if trunk.inbound_username.is_some() != trunk.inbound_password.is_some() {
                add(
                    key("inbound_password"),
                    "inbound_username and inbound_password must be given together".into(),
                );
            }
            if let Some(user) = &trunk.inbound_username {
                if self.trunks[..i]
                    .iter()
                    .any(|t| t.inbound_username.as_ref() == Some(user))
                {
                    add(
                        key("inbound_username"),
                        format!("{user:?} is already another trunk's inbound_username"),
                    );
                }
            }
            if trunk.username.is_some() != trunk.password.is_some() {
                add(
                    key("password"),
                    "username and password must be given together".into(),
                );
            }
            if trunk.register && trunk.username.is_none() && trunk.password.is_none() {
                add(
                    key("register"),
                    "registering needs the trunk's username and password".into(),
                );
            }
            if !(60..=86_400).contains(&trunk.register_expires) {
                add(
                    key("register_expires"),
                    format!(
                        "{} is not between 60 and 86400 seconds",
                        trunk.register_expires
                    ),
                );
            }
            // As an account with the default caller_stream would call it.
            if let Err(e) = policy::plan_outgoing(
                CallerStream::RelayOrDecrypt,
                trunk.callee_stream,
                trunk_media(trunk),
            ) {
                add(key("callee_stream"), e.to_string());
            }
            if !matches!(trunk.reject_code, 480 | 486 | 600 | 603) {
                add(
                    key("reject_code"),
                    format!(
                        "{} is not a decline status (480, 486, 600 or 603)",
                        trunk.reject_code
                    ),
                );
            }
            for (j, source) in trunk.inbound_sources.iter().enumerate() {
                if parse_cidr(source).is_none() {
                    add(
                        key(&format!("inbound_sources[{j}]")),
                        format!("{source:?} is not an address or CIDR block"),
                    );
                }
            }
        }

        for (i, account) in self.accounts.iter().enumerate() {
            let key = |k: &str| format!("accounts[{i}].{k}");
            if account.name.is_empty()
                || !account
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                add(
                    key("name"),
                    "must be letters, digits, '-', '_' or '.' (it is a SIP user part)".into(),
                );
            }
            if self.accounts[..i].iter().any(|a| a.name == account.name) {
                add(key("name"), format!("duplicate account {:?}", account.name));
            }
            if !account.password_hash.starts_with("$argon2") {
                add(
                    key("password_hash"),
                    "must be an argon2 hash from `webrtc-sip-gateway hash-password`".into(),
                );
            }
            match self.trunks.iter().find(|t| t.name == account.trunk) {
                None => add(
                    key("trunk"),
                    format!("no [[trunks]] entry named {:?}", account.trunk),
                ),
                Some(trunk) => {
                    // The trunk's own callee_stream is checked above; an
                    // account's override or caller_stream may add a problem.
                    let callee = account.callee_stream.unwrap_or(trunk.callee_stream);
                    let own = account.callee_stream.is_some()
                        || account.caller_stream != CallerStream::RelayOrDecrypt;
                    if own {
                        if let Err(e) =
                            policy::plan_outgoing(account.caller_stream, callee, trunk_media(trunk))
                        {
                            let k = match e {
                                policy::PolicyError::PrivateCallUnsupported(_)
                                | policy::PolicyError::ForbiddenButPrivate => "caller_stream",
                                _ => "callee_stream",
                            };
                            add(key(k), e.to_string());
                        }
                    }
                }
            }
        }
        problems
    }

    /// Media worker threads: `media.workers`, or one per core for 0.
    pub fn media_workers(&self) -> usize {
        match self.media.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// How media runs, for `check-config`.
    pub fn media_summary(&self) -> String {
        let ports = if self.media.single_port {
            "browser legs share one UDP port per worker (media.single_port)"
        } else {
            "one browser UDP port per call (media.single_port = false)"
        };
        format!(
            "media: {} worker thread(s){}, ports {}-{}; {ports}",
            self.media_workers(),
            if self.media.workers == 0 {
                " (one per core)"
            } else {
                ""
            },
            self.media.port_min,
            self.media.port_max,
        )
    }

    /// The address media sockets bind to.
    pub fn media_bind_ip(&self) -> IpAddr {
        self.media.bind_ip.unwrap_or(self.server.public_ip)
    }

    pub fn trunk(&self, name: &str) -> Option<&TrunkConfig> {
        self.trunks.iter().find(|t| t.name == name)
    }

    pub fn account(&self, name: &str) -> Option<&AccountConfig> {
        self.accounts.iter().find(|a| a.name == name)
    }
}

/// Parses `10.0.0.0/8`, `192.0.2.1` or `2001:db8::/32`.
pub fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a.parse::<IpAddr>().ok()?, l.parse::<u8>().ok()?),
        None => {
            let a = text.parse::<IpAddr>().ok()?;
            (a, if a.is_ipv4() { 32 } else { 128 })
        }
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

/// Whether `ip` lies in the block `(net, prefix_len)` from [`parse_cidr`].
/// IPv4-mapped IPv6 addresses count as their IPv4 address.
pub fn cidr_contains((net, len): (IpAddr, u8), ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// A trunk's `secure_media` and `srtp_suites`, as the policy reads them.
fn trunk_media(trunk: &TrunkConfig) -> TrunkMedia<'_> {
    TrunkMedia {
        secure_media: trunk.secure_media,
        srtp_suites: &trunk.srtp_suites,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

    fn full() -> String {
        format!(
            r#"
[server]
https_listen = "127.0.0.1:8443"
public_ip = "10.99.0.1"
token_secret = "0123456789abcdef0123"

[sip]
udp_listen = "127.0.0.1:5060"

[media]
port_min = 30000
port_max = 30099

[[trunks]]
name = "carrier"
uri = "sip:127.0.0.1:5070;transport=udp"
username = "gw"
password = "secret"
callee_stream = "sdes"
secure_media = "mandatory"
srtp_suites = ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"]
inbound_sources = ["127.0.0.1/32"]

[[accounts]]
name = "alice"
password_hash = "{HASH}"
trunk = "carrier"
"#
        )
    }

    #[test]
    fn accept_refer_is_a_trunk_key_defaulting_to_true() {
        assert!(parse(&full()).unwrap().trunks[0].accept_refer);
        let off = full().replace(
            "inbound_sources = [\"127.0.0.1/32\"]",
            "inbound_sources = [\"127.0.0.1/32\"]\naccept_refer = false",
        );
        assert!(!parse(&off).unwrap().trunks[0].accept_refer);
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let c = parse("").unwrap();
        assert_eq!(
            c.server.https_listen,
            "127.0.0.1:8443".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            c.sip.udp_listen,
            "127.0.0.1:5060".parse::<SocketAddr>().unwrap()
        );
        assert!(c.accounts.is_empty());
        assert!(c.problems().is_empty());
    }

    #[test]
    fn shipped_example_is_the_defaults() {
        let c = parse(include_str!("../config/gateway.toml")).unwrap();
        assert!(c.accounts.is_empty() && c.trunks.is_empty());
        assert_eq!(c.problems(), vec![]);
    }

    #[test]
    fn cluster_keys_are_checked() {
        let c = parse(
            "[cluster]\nregistrar = \"sip:10.0.0.2:5060\"\ndomain = \"gw.example\"\noutbound_proxy = \"sip:10.0.0.2:5060;lr\"\n",
        )
        .unwrap();
        assert_eq!(c.problems(), vec![]);
        let cluster = c.cluster.unwrap();
        assert_eq!(cluster.drain_seconds, 300);
        let c = parse("[cluster]\nregistrar = \"http://x\"\noutbound_proxy = \"nope\"\n").unwrap();
        let keys: Vec<_> = c.problems().into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "cluster.registrar",
                "cluster.outbound_proxy",
                "cluster.domain"
            ]
        );
        assert!(parse("[cluster]\nregistrr = \"sip:x\"\n").is_err());
    }

    #[test]
    fn full_example_is_valid() {
        let c = parse(&full()).unwrap();
        assert_eq!(c.problems(), vec![]);
        assert_eq!(c.trunks[0].srtp_suites[1], SrtpSuite::AesCm128HmacSha1_32);
        assert_eq!(c.media_bind_ip(), "10.99.0.1".parse::<IpAddr>().unwrap());
        assert!(!format!("{:?}", c.trunks[0]).contains("secret\""));
    }

    #[test]
    fn unknown_key_names_its_path() {
        let text = full().replace("callee_stream = \"sdes\"", "calee_stream = \"sdes\"");
        let err = parse(&text).unwrap_err().to_string();
        eprintln!("{err}");
        assert!(err.contains("trunks[0]"), "{err}");
        assert!(err.contains("calee_stream"), "{err}");
    }

    #[test]
    fn bad_enum_value_names_its_path() {
        let text = full().replace("callee_stream = \"sdes\"", "callee_stream = \"zrtp\"");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("trunks[0].callee_stream"), "{err}");
        let text = full().replace("AES_CM_128_HMAC_SHA1_32", "NULL_HMAC_SHA1_80");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("trunks[0].srtp_suites"), "{err}");
    }

    #[test]
    fn semantic_problems_are_all_reported_with_keys() {
        let text = full()
            .replace("trunk = \"carrier\"", "trunk = \"nope\"")
            .replace("port_min = 30000", "port_min = 31000")
            .replace("0123456789abcdef0123", "change-me")
            .replace("127.0.0.1/32", "not-an-address")
            .replace("public_ip = \"10.99.0.1\"", "public_ip = \"0.0.0.0\"");
        let problems = parse(&text).unwrap().problems();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"accounts[0].trunk"), "{keys:?}");
        assert!(keys.contains(&"media.port_min"), "{keys:?}");
        assert!(keys.contains(&"server.token_secret"), "{keys:?}");
        assert!(keys.contains(&"trunks[0].inbound_sources[0]"), "{keys:?}");
        assert!(keys.contains(&"server.public_ip"), "{keys:?}");
    }

    #[test]
    fn media_timeouts_default_and_are_checked() {
        let c = parse(&full()).unwrap();
        assert_eq!((c.media.timeout, c.media.hold_timeout), (30, 3600));
        let set = |extra: &str| {
            parse(&full().replace("port_min = 30000", &format!("port_min = 30000\n{extra}")))
                .unwrap()
        };
        let c = set("timeout = 5\nhold_timeout = 60");
        assert_eq!((c.media.timeout, c.media.hold_timeout), (5, 60));
        assert_eq!(c.problems(), vec![]);
        let keys = |extra: &str| -> Vec<String> {
            set(extra).problems().into_iter().map(|p| p.key).collect()
        };
        assert_eq!(keys("timeout = 0"), ["media.timeout"]);
        assert_eq!(
            keys("timeout = 60\nhold_timeout = 30"),
            ["media.hold_timeout"]
        );
        assert_eq!(keys("hold_timeout = 100000"), ["media.hold_timeout"]);
    }

    #[test]
    fn media_workers_and_single_port() {
        let c = parse(&full()).unwrap();
        assert_eq!((c.media.workers, c.media.single_port), (0, true));
        assert!(c.media_workers() >= 1);
        assert!(
            c.media_summary().contains("(one per core)"),
            "{}",
            c.media_summary()
        );
        let set = |extra: &str| {
            parse(&full().replace("port_min = 30000", &format!("port_min = 30000\n{extra}")))
                .unwrap()
        };
        let c = set("workers = 3\nsingle_port = false");
        assert_eq!((c.media_workers(), c.media.single_port), (3, false));
        assert_eq!(c.problems(), vec![]);
        assert!(c.media_summary().contains("one browser UDP port per call"));
        let keys = |extra: &str| -> Vec<String> {
            set(extra).problems().into_iter().map(|p| p.key).collect()
        };
        assert_eq!(keys("workers = 5000"), ["media.workers"]);
        // A port per worker plus one call's pair must fit in the range.
        let small = |workers: usize| -> Vec<String> {
            let text = full().replace(
                "port_min = 30000",
                &format!("port_min = 30000\nworkers = {workers}"),
            );
            let mut c = parse(&text).unwrap();
            c.media.port_max = c.media.port_min + 5;
            c.problems().into_iter().map(|p| p.key).collect()
        };
        assert_eq!(small(3), Vec::<String>::new());
        assert_eq!(small(4), ["media.port_max"]);
        assert!(
            parse(&full().replace("port_min = 30000", "port_min = 30000\nsingle_port = 1"))
                .is_err()
        );
    }

    #[test]
    fn register_keys() {
        let c = parse(&full()).unwrap();
        assert!(!c.trunks[0].register);
        assert_eq!(c.trunks[0].register_expires, 3600);
        let text = full().replace(
            "inbound_sources",
            "register = true\nregister_expires = 600\ninbound_sources",
        );
        let c = parse(&text).unwrap();
        assert!(c.trunks[0].register);
        assert_eq!(c.trunks[0].register_expires, 600);
        assert_eq!(c.problems(), vec![]);
        for bad in ["59", "86401", "0"] {
            let text = full().replace(
                "inbound_sources",
                &format!("register_expires = {bad}\ninbound_sources"),
            );
            let problems = parse(&text).unwrap().problems();
            assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
            assert_eq!(problems[0].key, "trunks[0].register_expires");
        }
        let text = full()
            .replace("username = \"gw\"\n", "")
            .replace("password = \"secret\"\n", "")
            .replace("inbound_sources", "register = true\ninbound_sources");
        let problems = parse(&text).unwrap().problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "trunks[0].register");
        let err =
            parse(&full().replace("inbound_sources", "register_expires = -1\ninbound_sources"))
                .unwrap_err()
                .to_string();
        assert!(err.contains("trunks[0].register_expires"), "{err}");
    }

    #[test]
    fn policy_conflict_is_a_problem() {
        let text = full().replace("callee_stream = \"sdes\"", "callee_stream = \"decrypted\"");
        let problems = parse(&text).unwrap().problems();
        assert_eq!(problems[0].key, "trunks[0].callee_stream");
    }

    /// callee_stream = "dtls" is accepted (DTLS-SRTP toward the trunk),
    /// except where secure_media forbids SRTP or no suite has a DTLS profile.
    #[test]
    fn dtls_toward_a_trunk_is_checked_like_the_other_streams() {
        let dtls = full().replace("callee_stream = \"sdes\"", "callee_stream = \"dtls\"");
        let problems = parse(&dtls).unwrap().problems();
        assert!(problems.is_empty(), "{problems:?}");
        let forbidden = dtls.replace(
            "secure_media = \"mandatory\"",
            "secure_media = \"forbidden\"",
        );
        let problems = parse(&forbidden).unwrap().problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "trunks[0].callee_stream");
        assert!(problems[0].message.contains("dtls"), "{problems:?}");
        let cm256 = dtls.replace(
            "srtp_suites = [\"AES_CM_128_HMAC_SHA1_80\", \"AES_CM_128_HMAC_SHA1_32\"]",
            "srtp_suites = [\"AES_256_CM_HMAC_SHA1_80\"]",
        );
        let problems = parse(&cm256).unwrap().problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].message.contains("DTLS-SRTP"), "{problems:?}");
    }

    /// forced_relay places private calls: valid, except toward a trunk that
    /// forbids SRTP, which is named at the account's caller_stream.
    #[test]
    fn forced_relay_is_valid_unless_the_trunk_forbids_srtp() {
        let private = full().replace(
            "trunk = \"carrier\"\n",
            "trunk = \"carrier\"\ncaller_stream = \"forced_relay\"\n",
        );
        assert!(private.contains("forced_relay"));
        assert!(parse(&private).unwrap().problems().is_empty());
        let forbidden = private
            .replace(
                "secure_media = \"mandatory\"",
                "secure_media = \"forbidden\"",
            )
            .replace("callee_stream = \"sdes\"", "callee_stream = \"decrypted\"");
        let problems = parse(&forbidden).unwrap().problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "accounts[0].caller_stream");
        assert!(problems[0].message.contains("private call"), "{problems:?}");
    }

    #[test]
    fn tls_trunks_need_a_listener_and_a_usable_check() {
        let tls = full().replace("transport=udp", "transport=tls");
        let keys = |text: &str| -> Vec<String> {
            parse(text)
                .unwrap()
                .problems()
                .into_iter()
                .map(|p| p.key)
                .collect()
        };
        assert_eq!(keys(&tls), ["trunks[0].uri"]);
        let tls = tls.replace("[sip]\n", "[sip]\ntls_listen = \"127.0.0.1:5061\"\n");
        assert!(keys(&tls).is_empty(), "{:?}", keys(&tls));
        let pinned = tls.replace(
            "inbound_sources",
            "tls_verify = \"pinned\"\ninbound_sources",
        );
        assert_eq!(keys(&pinned), ["trunks[0].tls_fingerprint"]);
        let bad_pin = pinned.replace(
            "inbound_sources",
            "tls_fingerprint = \"sha-256 AB:CD\"\ninbound_sources",
        );
        assert_eq!(keys(&bad_pin), ["trunks[0].tls_fingerprint"]);
        let missing_ca = tls.replace(
            "inbound_sources",
            "ca_file = \"/nonexistent/ca.pem\"\ninbound_sources",
        );
        assert_eq!(keys(&missing_ca), ["trunks[0].ca_file"]);
        let limits = tls.replace(
            "[media]",
            "[sip.limits]\nidle_seconds = 0\nconnections_per_source = 0\n\n[media]",
        );
        assert_eq!(
            keys(&limits),
            [
                "sip.limits.idle_seconds",
                "sip.limits.connections_per_source"
            ]
        );
    }

    #[test]
    fn cidr_blocks() {
        let block = |t: &str| parse_cidr(t).unwrap();
        let ip = |t: &str| t.parse::<IpAddr>().unwrap();
        assert!(cidr_contains(block("10.0.0.0/8"), ip("10.1.2.3")));
        assert!(!cidr_contains(block("10.0.0.0/8"), ip("11.0.0.1")));
        assert!(cidr_contains(block("192.0.2.7"), ip("192.0.2.7")));
        assert!(!cidr_contains(block("192.0.2.7"), ip("192.0.2.8")));
        assert!(cidr_contains(block("0.0.0.0/0"), ip("203.0.113.9")));
        assert!(cidr_contains(block("127.0.0.1/32"), ip("::ffff:127.0.0.1")));
        assert!(cidr_contains(block("2001:db8::/32"), ip("2001:db8:1::5")));
        assert!(!cidr_contains(block("2001:db8::/32"), ip("10.0.0.1")));
        assert!(parse_cidr("10.0.0.0/33").is_none());
    }

    #[test]
    fn trunk_uris() {
        assert_eq!(
            TrunkUri::parse("sip:127.0.0.1:5070;transport=udp"),
            Ok(TrunkUri {
                host: "127.0.0.1".into(),
                port: 5070,
                transport: TrunkTransport::Udp
            })
        );
        let text = full().replace("transport=udp", "transport=tcp");
        let problems = parse(&text).unwrap().problems();
        assert_eq!(problems[0].key, "trunks[0].uri");
        let text = text.replace("[sip]\n", "[sip]\ntcp_listen = \"127.0.0.1:5060\"\n");
        assert_eq!(parse(&text).unwrap().problems(), vec![]);
        assert_eq!(
            TrunkUri::parse("sip:carrier.example;transport=TCP").map(|u| (u.port, u.transport)),
            Ok((5060, TrunkTransport::Tcp))
        );
        assert_eq!(
            TrunkUri::parse("sips:[2001:db8::1]").map(|u| (u.host, u.port)),
            Ok(("2001:db8::1".into(), 5061))
        );
        assert!(TrunkUri::parse("http://x").is_err());
        assert!(TrunkUri::parse("sip:host:99999").is_err());
        assert!(TrunkUri::parse("sip:host;transport=sctp").is_err());
    }
}
