//! Several gateway nodes as one behind a SIP proxy (Kamailio): each node
//! REGISTERs `sip:ACCOUNT@DOMAIN` for every account that has a signaling
//! session open on it, with its own Contact, so the proxy's registrar knows
//! which nodes hold which accounts and forks an incoming INVITE to all of
//! them (first accept wins, as between the tabs of one node).
//!
//! - [`Presence`]: the sans-IO decision "first session of an account opened"
//!   / "last one closed", which starts and ends a binding;
//! - [`ClusterSessions`]: the [`SessionRegistry`] of a clustered node: the
//!   local registry plus those decisions, sent to the registrar task;
//! - [`run`]: one task per account that keeps its binding while wanted and
//!   removes it (Expires: 0) when the last session closes or the node stops.
//!
//! Each node's Contact carries `+sip.instance` (RFC 5626 4.1; stable per
//! node, generated once into `data_dir`) so a registrar sees one binding per
//! node however often its address or Call-ID change.

use super::call::SipLocal;
use super::registration::keep_binding;
use super::sessions::{LocalSessions, SessionHandle, SessionKey, SessionRegistry};
use crate::calls::api::SessionEvent;
use crate::sip::auth::DigestCredentials;
use crate::sip::register::{RegEvent, RegisterConfig, Registration};
use crate::sip::transport::SipEndpoint;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, info_span, warn, Instrument};

/// The file in `data_dir` that holds this node's instance id.
const INSTANCE_FILE: &str = "cluster-instance";
/// How long a binding asks to live; refreshed well before (see
/// `register::refresh_after`). Short, so a node that dies without
/// unregistering stops receiving forks soon.
pub const BINDING_EXPIRES: u32 = 120;
/// Between lookups of a registrar that does not resolve.
const RESOLVE_RETRY: Duration = Duration::from_secs(5);

/// What a change in an account's sessions means for its binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceChange {
    /// The account's first session on this node opened: register.
    First(String),
    /// Its last session closed: unregister.
    Last(String),
}

/// Counts each account's sessions on this node; sans-IO.
#[derive(Debug, Default)]
pub struct Presence {
    counts: HashMap<String, usize>,
}

impl Presence {
    pub fn opened(&mut self, account: &str) -> Option<PresenceChange> {
        let n = self.counts.entry(account.to_string()).or_default();
        *n += 1;
        (*n == 1).then(|| PresenceChange::First(account.to_string()))
    }

    pub fn closed(&mut self, account: &str) -> Option<PresenceChange> {
        let n = self.counts.get_mut(account)?;
        *n -= 1;
        if *n > 0 {
            return None;
        }
        self.counts.remove(account);
        Some(PresenceChange::Last(account.to_string()))
    }
}

/// The session registry of a clustered node.
pub struct ClusterSessions {
    local: LocalSessions,
    presence: Mutex<Presence>,
    changes: mpsc::UnboundedSender<PresenceChange>,
}

impl ClusterSessions {
    pub fn new(changes: mpsc::UnboundedSender<PresenceChange>) -> ClusterSessions {
        ClusterSessions {
            local: LocalSessions::default(),
            presence: Mutex::default(),
            changes,
        }
    }

    fn tell(&self, change: Option<PresenceChange>) {
        if let Some(change) = change {
            let _ = self.changes.send(change);
        }
    }
}

impl SessionRegistry for ClusterSessions {
    fn register(&self, account: &str, events: mpsc::Sender<SessionEvent>) -> SessionKey {
        let key = self.local.register(account, events);
        let change = self
            .presence
            .lock()
            .ok()
            .and_then(|mut p| p.opened(account));
        self.tell(change);
        key
    }

    fn unregister(&self, account: &str, key: SessionKey) {
        self.local.unregister(account, key);
        let change = self
            .presence
            .lock()
            .ok()
            .and_then(|mut p| p.closed(account));
        self.tell(change);
    }

    fn sessions_of(&self, account: &str) -> Vec<SessionHandle> {
        self.local.sessions_of(account)
    }

    fn count(&self) -> usize {
        self.local.count()
    }
}

/// This node's `+sip.instance` URN: read from `data_dir`, else generated
/// (a random UUID, RFC 4122 version 4) and stored there.
pub fn instance_id(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(INSTANCE_FILE);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim();
        if existing.starts_with("urn:uuid:") && existing.len() == 45 {
            return Ok(existing.to_string());
        }
    }
    let id = uuid_urn(rand::random());
    std::fs::write(&path, format!("{id}\n"))?;
    Ok(id)
}

/// `urn:uuid:` and the version-4 UUID made of `bytes`.
fn uuid_urn(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Our binding for `account`: the node's own Contact with its instance id
/// and `reg-id=1` (one flow per node, RFC 5626 4.2).
pub fn contact(local: &SipLocal, account: &str, instance: &str) -> String {
    format!(
        "{};+sip.instance=\"<{instance}>\";reg-id=1",
        local.contact(account)
    )
}

/// `cluster.outbound_proxy`: where trunk INVITEs go, and their `Route`.
#[derive(Debug, Clone)]
pub struct OutboundProxy {
    pub uri: crate::config::TrunkUri,
    pub route: String,
}

impl OutboundProxy {
    /// From the config's URI (checked by `Config::problems`).
    pub fn parse(uri: &str) -> Option<OutboundProxy> {
        Some(OutboundProxy {
            uri: crate::config::TrunkUri::parse(uri).ok()?,
            route: proxy_route(uri),
        })
    }
}

/// The `Route` value for a cluster's outbound proxy: its URI in angle
/// brackets, with `lr` added when missing (we route loosely, RFC 3261 16.12).
pub fn proxy_route(uri: &str) -> String {
    let uri = uri.trim();
    let loose = uri.split(';').skip(1).any(|p| p.eq_ignore_ascii_case("lr"));
    if loose {
        format!("<{uri}>")
    } else {
        format!("<{uri};lr>")
    }
}

/// Where and as what the node registers.
#[derive(Debug, Clone)]
pub struct ClusterRegistrar {
    /// The registrar's Request-URI, `sip:host:port`.
    pub uri: String,
    pub host: String,
    pub port: u16,
    pub domain: String,
    pub instance: String,
    pub local: SipLocal,
}

impl ClusterRegistrar {
    fn register_config(&self, account: &str) -> RegisterConfig {
        RegisterConfig {
            registrar_uri: self.uri.clone(),
            aor: format!("sip:{account}@{}", self.domain),
            contact: contact(&self.local, account, &self.instance),
            via_host: self.local.host.clone(),
            via_port: self.local.port,
            transport: self.local.transport,
            call_id: crate::sip::message::new_call_id(),
            // The proxy trusts its nodes by address; a registrar that
            // challenges anyway gets these (and refuses them).
            credentials: DigestCredentials {
                username: account.to_string(),
                password: crate::types::Secret::new(String::new()),
            },
            expires: BINDING_EXPIRES,
            user_agent: crate::sip::uas::USER_AGENT.into(),
        }
    }
}

/// Handle on the registrar task: stopping it removes every binding.
#[derive(Debug)]
pub struct ClusterBindings {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ClusterBindings {
    /// Removes every binding now and takes no new ones; waits for the
    /// registrar's answers, at most `wait`.
    pub async fn stop(self, wait: Duration) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(wait, self.task).await;
    }
}

/// Starts the registrar task, fed by a [`ClusterSessions`]' changes.
pub fn start(
    registrar: ClusterRegistrar,
    sip: SipEndpoint,
    changes: mpsc::UnboundedReceiver<PresenceChange>,
) -> ClusterBindings {
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(run(registrar, sip, changes, stopped));
    ClusterBindings { stop, task }
}

/// One task per account seen, each told whether its binding is wanted.
async fn run(
    registrar: ClusterRegistrar,
    sip: SipEndpoint,
    mut changes: mpsc::UnboundedReceiver<PresenceChange>,
    mut stop: watch::Receiver<bool>,
) {
    let mut wanted: HashMap<String, watch::Sender<bool>> = HashMap::new();
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            change = changes.recv() => {
                let (account, want) = match change {
                    Some(PresenceChange::First(a)) => (a, true),
                    Some(PresenceChange::Last(a)) => (a, false),
                    None => break,
                };
                if let Some(tx) = wanted.get(&account) {
                    let _ = tx.send(want);
                    continue;
                }
                let (tx, rx) = watch::channel(want);
                wanted.insert(account.clone(), tx);
                let span = info_span!("cluster_binding", %account);
                tasks.spawn(
                    keep_account(registrar.clone(), sip.clone(), account, rx, stop.clone())
                        .instrument(span),
                );
            }
            _ = stop.changed() => break,
        }
    }
    // Every account task sees the stop and unregisters.
    while tasks.join_next().await.is_some() {}
}

/// Keeps `account`'s binding while `wanted` is true, until `stop`.
async fn keep_account(
    registrar: ClusterRegistrar,
    sip: SipEndpoint,
    account: String,
    mut wanted: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        // Wait until a session of the account is open.
        while !*wanted.borrow_and_update() {
            tokio::select! {
                r = wanted.changed() => if r.is_err() { return },
                _ = stop.changed() => return,
            }
        }
        if *stop.borrow() {
            return;
        }
        let Some(destination) = resolve(&registrar, &mut stop).await else {
            return;
        };
        let reg = Registration::new(registrar.register_config(&account), Instant::now());
        let mut w = wanted.clone();
        let mut s = stop.clone();
        let unwanted = async move {
            loop {
                if !*w.borrow_and_update() || *s.borrow_and_update() {
                    return;
                }
                tokio::select! {
                    r = w.changed() => if r.is_err() { return },
                    r = s.changed() => if r.is_err() { return },
                }
            }
        };
        keep_binding(reg, &sip, destination, unwanted, |reg| {
            while let Some(event) = reg.poll_event() {
                log_event(&event);
            }
        })
        .await;
        if *stop.borrow() {
            return;
        }
    }
}

async fn resolve(
    registrar: &ClusterRegistrar,
    stop: &mut watch::Receiver<bool>,
) -> Option<SocketAddr> {
    loop {
        if let Some(addr) = super::resolve(&registrar.host, registrar.port).await {
            return Some(addr);
        }
        warn!(host = %registrar.host, "cluster registrar does not resolve; retrying");
        tokio::select! {
            _ = tokio::time::sleep(RESOLVE_RETRY) => {}
            _ = stop.changed() => return None,
        }
    }
}

fn log_event(event: &RegEvent) {
    match event {
        RegEvent::Registered { expires } => {
            info!(
                expires_s = expires.as_secs(),
                "account registered with the cluster registrar"
            )
        }
        RegEvent::Refreshed { .. } => debug!("cluster binding refreshed"),
        RegEvent::Failed {
            failure, retry_in, ..
        } => warn!(code = failure.code, reason = %failure.reason, retry_in_s = retry_in.as_secs(),
            "cluster registration failed"),
        RegEvent::Unregistered { removed } => {
            info!(removed, "account unregistered from the cluster registrar")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::Transport;

    #[test]
    fn first_session_registers_last_unregisters() {
        let mut p = Presence::default();
        assert_eq!(
            p.opened("alice"),
            Some(PresenceChange::First("alice".into()))
        );
        assert_eq!(p.opened("alice"), None);
        assert_eq!(p.opened("bob"), Some(PresenceChange::First("bob".into())));
        assert_eq!(p.closed("alice"), None);
        assert_eq!(
            p.closed("alice"),
            Some(PresenceChange::Last("alice".into()))
        );
        // A close without an open (cannot happen) changes nothing.
        assert_eq!(p.closed("alice"), None);
        assert_eq!(
            p.opened("alice"),
            Some(PresenceChange::First("alice".into()))
        );
    }

    #[test]
    fn the_registry_reports_changes_and_still_rings_locally() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let reg = ClusterSessions::new(tx);
        let (e1, _r1) = mpsc::channel(1);
        let (e2, _r2) = mpsc::channel(1);
        let k1 = reg.register("alice", e1);
        let k2 = reg.register("alice", e2);
        assert_eq!(
            rx.try_recv().ok(),
            Some(PresenceChange::First("alice".into()))
        );
        assert!(rx.try_recv().is_err());
        assert_eq!(reg.sessions_of("alice").len(), 2);
        reg.unregister("alice", k1);
        assert!(rx.try_recv().is_err());
        reg.unregister("alice", k2);
        assert_eq!(
            rx.try_recv().ok(),
            Some(PresenceChange::Last("alice".into()))
        );
        assert_eq!(reg.count(), 0);
    }

    #[test]
    fn contact_names_the_node_and_its_instance() {
        let local = SipLocal {
            host: "10.0.0.5".into(),
            port: 5080,
            transport: Transport::Udp,
        };
        let id = uuid_urn([0xab; 16]);
        assert_eq!(id, "urn:uuid:abababab-abab-4bab-abab-abababababab");
        assert_eq!(
            contact(&local, "alice", &id),
            "<sip:alice@10.0.0.5:5080;transport=udp>;+sip.instance=\"<urn:uuid:abababab-abab-4bab-abab-abababababab>\";reg-id=1"
        );
        let r = ClusterRegistrar {
            uri: "sip:10.0.0.2:5060".into(),
            host: "10.0.0.2".into(),
            port: 5060,
            domain: "gw.example".into(),
            instance: id,
            local,
        };
        let cfg = r.register_config("alice");
        assert_eq!(cfg.aor, "sip:alice@gw.example");
        assert_eq!(cfg.registrar_uri, "sip:10.0.0.2:5060");
        assert_eq!(cfg.expires, BINDING_EXPIRES);
    }

    #[test]
    fn the_proxy_route_is_loose() {
        assert_eq!(
            proxy_route("sip:10.0.0.2:5060;lr"),
            "<sip:10.0.0.2:5060;lr>"
        );
        assert_eq!(proxy_route("sip:10.0.0.2:5060"), "<sip:10.0.0.2:5060;lr>");
        assert_eq!(
            proxy_route("sip:k.example;transport=tcp"),
            "<sip:k.example;transport=tcp;lr>"
        );
    }

    #[test]
    fn the_instance_id_is_stable_per_data_dir() {
        let dir = std::env::temp_dir().join(format!("cluster-inst-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = instance_id(&dir).unwrap();
        let b = instance_id(&dir).unwrap();
        assert_eq!(a, b);
        assert!(a.starts_with("urn:uuid:") && a.len() == 45, "{a}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
