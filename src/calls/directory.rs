//! Accounts and trunks as the call layer needs them: resolved once from the
//! config (plus the demo account on defaults), read-only afterwards.

use crate::config::{Config, TrunkTransport, TrunkUri};
use crate::policy::{self, CalleeStream, OutgoingPolicy, SecureMedia, TrunkLegPlan};
use crate::types::{Secret, SrtpSuite};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Trunk {
    pub name: String,
    pub uri: TrunkUri,
    pub username: Option<String>,
    pub password: Option<Secret<String>>,
    pub callee_stream: CalleeStream,
    pub secure_media: SecureMedia,
    pub srtp_suites: Vec<SrtpSuite>,
}

#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub trunk: Arc<Trunk>,
    pub callee_stream: Option<CalleeStream>,
    pub redact: bool,
}

impl Account {
    /// The trunk leg this account's outgoing calls get.
    pub fn outgoing_plan(&self) -> Result<TrunkLegPlan, policy::PolicyError> {
        policy::plan_outgoing(OutgoingPolicy {
            callee_stream: self.callee_stream.unwrap_or(self.trunk.callee_stream),
            secure_media: self.trunk.secure_media,
            srtp_suites: &self.trunk.srtp_suites,
        })
    }
}

#[derive(Debug, Default)]
pub struct Directory {
    accounts: HashMap<String, Arc<Account>>,
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
                        secure_media: t.secure_media,
                        srtp_suites: t.srtp_suites.clone(),
                    }),
                ))
            })
            .collect();
        let mut directory = Directory::default();
        for a in &config.accounts {
            let Some(trunk) = trunks.get(a.trunk.as_str()) else {
                tracing::warn!(account = %a.name, trunk = %a.trunk, "account's trunk is unknown; account disabled");
                continue;
            };
            directory.insert(Account {
                name: a.name.clone(),
                trunk: trunk.clone(),
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
        secure_media: SecureMedia::Mandatory,
        srtp_suites: vec![
            SrtpSuite::AesCm128HmacSha1_80,
            SrtpSuite::AesCm128HmacSha1_32,
        ],
    }
}
