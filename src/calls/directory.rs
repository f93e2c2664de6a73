//! Accounts and trunks as the call layer needs them: resolved once from the
//! config (plus the demo account on defaults), read-only afterwards.

use crate::config::{cidr_contains, parse_cidr, Config, TrunkTransport, TrunkUri};
use crate::policy::{self, CalleeStream, CallerStream, SecureMedia, TrunkLegPlan, TrunkMedia};
use crate::types::{Secret, SrtpSuite};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Trunk {
    pub name: String,
    pub uri: TrunkUri,
    pub username: Option<String>,
    pub password: Option<Secret<String>>,
    pub callee_stream: CalleeStream,
    /// How the gateway treats this trunk's stream on its incoming calls.
    pub caller_stream: CallerStream,
    pub secure_media: SecureMedia,
    pub srtp_suites: Vec<SrtpSuite>,
    /// Who may send INVITEs in on this trunk (`inbound_sources`).
    pub inbound_sources: Vec<(IpAddr, u8)>,
    /// The status when every browser session declines an incoming call.
    pub reject_code: u16,
    /// `accept_refer`: false refuses the trunk's REFERs with 603.
    pub accept_refer: bool,
    /// Between OPTIONS pings; zero: not probed.
    pub options_interval: std::time::Duration,
    /// The expiry to ask when the gateway REGISTERs to this trunk; `None`:
    /// it does not.
    pub register: Option<std::time::Duration>,
    /// Where the trunk's plain RTP may come from (`media_source`).
    pub media_source: crate::types::MediaSource,
}

impl Trunk {
    /// Its `secure_media` and `srtp_suites`, as the policy reads them.
    pub fn media(&self) -> TrunkMedia<'_> {
        TrunkMedia {
            secure_media: self.secure_media,
            srtp_suites: &self.srtp_suites,
        }
    }

    /// The digest credentials the gateway answers this trunk's challenges
    /// with (`username` and `password`), if both are set.
    pub fn credentials(&self) -> Option<crate::sip::auth::DigestCredentials> {
        match (&self.username, &self.password) {
            (Some(username), Some(password)) => Some(crate::sip::auth::DigestCredentials {
                username: username.clone(),
                password: password.clone(),
            }),
            _ => None,
        }
    }

    pub fn admits(&self, ip: IpAddr) -> bool {
        self.inbound_sources
            .iter()
            .any(|net| cidr_contains(*net, ip))
    }

    /// The addresses a call on this trunk accepts requests from: its
    /// `inbound_sources` and its own addresses (`addresses`, every address
    /// its `uri` host resolved to), the same sets the SIP door knows it by.
    pub fn signaling_sources(&self, addresses: &[IpAddr]) -> Vec<(IpAddr, u8)> {
        let mut sources = self.inbound_sources.clone();
        sources.extend(
            addresses
                .iter()
                .map(|ip| (*ip, if ip.is_ipv4() { 32 } else { 128 })),
        );
        sources
    }
}

#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub trunk: Arc<Trunk>,
    /// How the gateway treats the browser's stream on this account's
    /// outgoing calls.
    pub caller_stream: CallerStream,
    pub callee_stream: Option<CalleeStream>,
    pub redact: bool,
}

impl Account {
    /// The trunk leg this account's outgoing calls get: the account's
    /// `caller_stream` (a browser always asks for encryption), its
    /// `callee_stream` override or else the trunk's, the trunk's media.
    pub fn outgoing_policy(&self) -> Result<TrunkLegPlan, policy::PolicyError> {
        policy::plan_outgoing(
            self.caller_stream,
            self.callee_stream.unwrap_or(self.trunk.callee_stream),
            self.trunk.media(),
        )
    }
}

#[derive(Debug, Default)]
pub struct Directory {
    accounts: HashMap<String, Arc<Account>>,
    /// In config order: the first trunk whose `inbound_sources` admit a
    /// source is the one its calls come in on.
    trunks: Vec<Arc<Trunk>>,
}

impl Directory {
    /// Builds the directory from a validated config (`Config::problems` empty).
    /// Entries that still do not resolve are skipped with a warning.
    pub fn from_config(config: &Config) -> Directory {
        let trunks: HashMap<&str, Arc<Trunk>> = config
            .trunks
            .iter()
            .filter_map(|t| {
                let uri = TrunkUri::parse(&t.uri).ok()?;
                Some((
                    t.name.as_str(),
                    Arc::new(Trunk {
                        name: t.name.clone(),
                        uri,
                        username: t.username.clone(),
                        password: t.password.clone(),
                        callee_stream: t.callee_stream,
                        caller_stream: t.caller_stream,
                        secure_media: t.secure_media,
                        srtp_suites: t.srtp_suites.clone(),
                        inbound_sources: t
                            .inbound_sources
                            .iter()
                            .filter_map(|s| parse_cidr(s))
                            .collect(),
                        reject_code: t.reject_code,
                        accept_refer: t.accept_refer,
                        options_interval: std::time::Duration::from_secs(t.options_interval),
                        media_source: t.media_source,
                        register: t
                            .register
                            .then(|| std::time::Duration::from_secs(u64::from(t.register_expires))),
                    }),
                ))
            })
            .collect();
        let mut directory = Directory {
            accounts: HashMap::new(),
            trunks: config
                .trunks
                .iter()
                .filter_map(|t| trunks.get(t.name.as_str()).cloned())
                .collect(),
        };
        for a in &config.accounts {
            let Some(trunk) = trunks.get(a.trunk.as_str()) else {
                tracing::warn!(account = %a.name, trunk = %a.trunk, "account's trunk is unknown; account disabled");
                continue;
            };
            directory.insert(Account {
                name: a.name.clone(),
                trunk: trunk.clone(),
                caller_stream: a.caller_stream,
                callee_stream: a.callee_stream,
                redact: a.redact || config.privacy.redact_all,
            });
        }
        directory
    }

    pub fn insert(&mut self, account: Account) {
        self.accounts
            .insert(account.name.clone(), Arc::new(account));
    }

    pub fn account(&self, name: &str) -> Option<Arc<Account>> {
        self.accounts.get(name).cloned()
    }

    /// Adds a trunk that is not in the config (the demo's, tests').
    pub fn insert_trunk(&mut self, trunk: Arc<Trunk>) {
        self.trunks.push(trunk);
    }

    /// The configured trunks, in config order.
    pub fn trunks(&self) -> &[Arc<Trunk>] {
        &self.trunks
    }

    pub fn trunk(&self, name: &str) -> Option<Arc<Trunk>> {
        self.trunks.iter().find(|t| t.name == name).cloned()
    }

    /// The trunk a request from `ip` comes in on, if any admits it.
    pub fn trunk_for_source(&self, ip: IpAddr) -> Option<Arc<Trunk>> {
        self.trunks.iter().find(|t| t.admits(ip)).cloned()
    }
}

/// The trunk of the built-in demo account: the echo endpoint on loopback.
pub fn demo_trunk(port: u16) -> Trunk {
    Trunk {
        name: "demo-echo".into(),
        uri: TrunkUri {
            host: "127.0.0.1".into(),
            port,
            transport: TrunkTransport::Udp,
        },
        username: None,
        password: None,
        callee_stream: CalleeStream::Sdes,
        caller_stream: CallerStream::RelayOrDecrypt,
        secure_media: SecureMedia::Mandatory,
        srtp_suites: vec![
            SrtpSuite::AesCm128HmacSha1_80,
            SrtpSuite::AesCm128HmacSha1_32,
        ],
        // The echo trunk never calls in.
        inbound_sources: Vec::new(),
        reject_code: 486,
        accept_refer: true,
        // It is inside the process: no need to ask whether it is there.
        options_interval: std::time::Duration::ZERO,
        media_source: crate::types::MediaSource::Signaled,
        register: None,
    }
}
