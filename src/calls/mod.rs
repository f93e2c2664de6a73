//! The B2BUA. Each call is a sans-IO state machine ([`call::Call`], both
//! directions) run by a thin tokio driver ([`driver`]); browser sessions hand
//! it their commands through a channel. There is no global lock around calls:
//! a session knows the command senders of its own outgoing calls, and the
//! incoming calls ringing its account are found by their gateway-chosen id.
//!
//! - [`call`]: the state machine; [`cause`]: the table of end causes;
//! - [`inbound`]: routing of a trunk's new INVITE (404/480/488/503 or ring);
//! - [`sessions`]: which browser sessions each account has open;
//! - [`directory`]: accounts and trunks from the config;
//! - [`trunk_health`], [`registration`]: OPTIONS pings and REGISTER per trunk;
//! - [`cluster`]: REGISTER per account toward a cluster's proxy.

pub mod api;
pub mod call;
#[cfg(test)]
mod call_tests;
pub mod cause;
pub mod cluster;
pub mod directory;
pub mod driver;
pub mod inbound;
pub mod registration;
mod renegotiate;
pub mod sessions;
#[cfg(test)]
mod tests;
mod transferee;
pub mod trunk_health;

use crate::cdr::CdrStore;
use crate::media::MediaEngine;
use crate::sip::transport::SipEndpoint;
use crate::sip::Transport;
use crate::stats::live::{self, CallStart, LiveCalls, SdpRole};
use crate::stats::CallStats;
use crate::types::Personal;
use crate::types::{AccountName, CallId};
use api::{CallControl, SessionCommand, SessionControl, SessionEvent};
use call::{Call, CallTimers, MediaPlan, OutgoingSetup, SessionInput, SipLocal};
use cause::Cause;
use directory::{Account, Directory};
use driver::CallIo;
use sessions::{SessionKey, SessionRegistry};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{info_span, Instrument};
use trunk_health::TrunkHealth;

/// What every call needs, shared read-only.
pub struct CallsContext {
    pub directory: Directory,
    pub sip: SipEndpoint,
    pub media: MediaEngine,
    pub public_ip: IpAddr,
    pub stats: Arc<CallStats>,
    pub sessions: Arc<dyn SessionRegistry>,
    /// How long an incoming call rings the browsers (`sip.ring_timeout`).
    pub ring_timeout: Duration,
    /// `media.timeout`: silence on a leg of an answered call that ends it.
    pub media_timeout: Duration,
    /// `media.hold_timeout`: the same while the trunk holds the call.
    pub hold_timeout: Duration,
    /// The calls in progress as the operator's stats page shows them.
    pub live: Arc<LiveCalls>,
    /// Call detail records.
    pub cdr: CdrStore,
    /// Which trunks answer their OPTIONS pings.
    pub trunk_health: Arc<TrunkHealth>,
    /// `cluster.outbound_proxy`: every trunk INVITE goes there.
    pub outbound_proxy: Option<cluster::OutboundProxy>,
}

impl CallsContext {
    /// The clocks of a new call, from the config.
    pub(crate) fn call_timers(&self) -> CallTimers {
        CallTimers {
            ring: self.ring_timeout,
            answered_media: self.media_timeout,
            held_media: self.hold_timeout,
            ..CallTimers::default()
        }
    }
}

type Commands = mpsc::UnboundedSender<SessionInput>;
type Joins = mpsc::UnboundedSender<(SessionKey, mpsc::Sender<SessionEvent>)>;

#[derive(Clone)]
struct IncomingEntry {
    commands: Commands,
    joins: Joins,
    account: String,
}

/// The call layer as signaling and `main` see it.
#[derive(Clone)]
pub struct Calls {
    ctx: Arc<CallsContext>,
    /// Every call task, so shutdown can wait for their BYEs.
    tasks: Arc<Mutex<JoinSet<()>>>,
    /// Every call's command sender, weak so that only the sessions keep a
    /// call's channel open; shutdown upgrades them to hang every call up.
    live: Arc<Mutex<Vec<mpsc::WeakUnboundedSender<SessionInput>>>>,
    /// Incoming calls still open to their sessions, by their id: commands,
    /// where new sessions of the account join, and the account.
    incoming: Arc<Mutex<HashMap<CallId, IncomingEntry>>>,
    accepting: Arc<AtomicBool>,
}

impl Calls {
    pub fn new(ctx: CallsContext) -> Calls {
        Calls {
            ctx: Arc::new(ctx),
            tasks: Arc::default(),
            live: Arc::default(),
            incoming: Arc::default(),
            accepting: Arc::new(AtomicBool::new(true)),
        }
    }

    pub fn active_calls(&self) -> usize {
        self.live
            .lock()
            .map(|live| {
                live.iter()
                    .filter(|tx| tx.upgrade().is_some_and(|tx| !tx.is_closed()))
                    .count()
            })
            .unwrap_or(0)
    }

    fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    /// A clustered node leaving: takes no new calls (incoming INVITEs get
    /// 503, a browser's `call` an error) and waits up to `max` for the calls
    /// in progress to end by themselves; [`Calls::shutdown`] ends the rest.
    pub async fn drain(&self, max: Duration) {
        self.accepting.store(false, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + max;
        while self.active_calls() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops taking new calls, hangs up the others (BYE/CANCEL, or a final
    /// response to a ringing INVITE) and waits up to `grace` for their
    /// dialogs to finish.
    pub async fn shutdown(&self, grace: Duration) {
        self.accepting.store(false, Ordering::SeqCst);
        if let Ok(live) = self.live.lock() {
            for tx in live.iter().filter_map(|tx| tx.upgrade()) {
                let _ = tx.send(SessionInput::Shutdown);
            }
        }
        let mut tasks = match self.tasks.lock() {
            Ok(mut tasks) => std::mem::take(&mut *tasks),
            Err(_) => return,
        };
        let _ =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    }

    /// Where our SIP side is for a dialog on `transport`, for Via and Contact.
    fn sip_local(&self, transport: Transport) -> SipLocal {
        // The TCP (TLS) listener is where in-dialog requests come back on
        // TCP (TLS) trunks (config validation makes sure there is one).
        let local = match transport {
            Transport::Tcp => self.ctx.sip.tcp_local_addr(),
            Transport::Tls => self.ctx.sip.tls_local_addr(),
            Transport::Udp => None,
        }
        .unwrap_or(self.ctx.sip.local_addr());
        // Via and Contact name where the trunk reaches our SIP socket: its own
        // address, or public_ip when it listens on all addresses (NAT setups).
        let host = if local.ip().is_unspecified() {
            self.ctx.public_ip
        } else {
            local.ip()
        };
        SipLocal {
            host: call::uri_host(&host.to_string()),
            port: local.port(),
            transport,
        }
    }

    /// Starts an OPTIONS prober for every configured trunk whose
    /// `options_interval` is not zero.
    pub fn start_trunk_monitors(&self) {
        for trunk in self.ctx.directory.trunks() {
            if trunk.options_interval.is_zero() {
                continue;
            }
            let local = self.sip_local(trunk.uri.transport.into());
            tokio::spawn(trunk_health::monitor(
                trunk.clone(),
                self.ctx.sip.clone(),
                trunk_health::ProbeLocal {
                    host: local.host,
                    port: local.port,
                },
                self.ctx.trunk_health.clone(),
            ));
        }
    }

    /// Starts a registration task for every trunk with `register = true`;
    /// the returned handle unregisters them at shutdown.
    pub fn start_registrations(
        &self,
        status: Arc<registration::TrunkRegistrations>,
    ) -> registration::Registrars {
        let (mut registrars, stop) = registration::Registrars::new();
        for trunk in self.ctx.directory.trunks() {
            if trunk.register.is_none() {
                continue;
            }
            let transport = Transport::from(trunk.uri.transport);
            registrars.spawn(registration::run(
                trunk.clone(),
                self.ctx.sip.clone(),
                self.sip_local(transport),
                status.clone(),
                stop.clone(),
            ));
        }
        registrars
    }

    /// Starts keeping a binding at the cluster's registrar for every
    /// account with a session here (`changes` from a
    /// [`cluster::ClusterSessions`]).
    pub fn start_cluster(
        &self,
        registrar: &crate::config::TrunkUri,
        domain: String,
        instance: String,
        changes: mpsc::UnboundedReceiver<cluster::PresenceChange>,
    ) -> cluster::ClusterBindings {
        let transport = Transport::from(registrar.transport);
        let host = call::uri_host(&registrar.host);
        cluster::start(
            cluster::ClusterRegistrar {
                uri: format!("sip:{host}:{}", registrar.port),
                host: registrar.host.clone(),
                port: registrar.port,
                domain,
                instance,
                local: self.sip_local(transport),
            },
            self.ctx.sip.clone(),
            changes,
        )
    }

    fn spawn_task(&self, tx: Commands, task: impl Future<Output = ()> + Send + 'static) {
        if let Ok(mut tasks) = self.tasks.lock() {
            // Reap finished tasks so the set does not grow without bound.
            while tasks.try_join_next().is_some() {}
            tasks.spawn(task.in_current_span());
        }
        if let Ok(mut live) = self.live.lock() {
            live.retain(|tx| tx.upgrade().is_some());
            live.push(tx.downgrade());
        }
    }

    fn register_incoming(&self, id: CallId, entry: IncomingEntry) {
        if let Ok(mut map) = self.incoming.lock() {
            map.insert(id, entry);
        }
    }

    /// A session of `account` opened: the account's ringing calls ring it.
    fn join_ringing(&self, account: &str, key: SessionKey, events: &mpsc::Sender<SessionEvent>) {
        let joins: Vec<Joins> = self
            .incoming
            .lock()
            .map(|m| {
                m.values()
                    .filter(|e| e.account == account)
                    .map(|e| e.joins.clone())
                    .collect()
            })
            .unwrap_or_default();
        for j in joins {
            let _ = j.send((key, events.clone()));
        }
    }

    fn forget_incoming(&self, id: &CallId) {
        if let Ok(mut map) = self.incoming.lock() {
            map.remove(id);
        }
    }

    fn incoming_call(&self, id: &CallId) -> Option<Commands> {
        self.incoming
            .lock()
            .ok()?
            .get(id)
            .map(|e| e.commands.clone())
    }

    fn spawn_outgoing(&self, req: OutgoingRequest) -> Commands {
        let (tx, rx) = mpsc::unbounded_channel();
        let span = info_span!("call", call_id = %req.id, account = %req.account.name, direction = "outgoing");
        self.spawn_task(
            tx.clone(),
            run_outgoing(self.clone(), req, rx).instrument(span),
        );
        tx
    }
}

/// Everything an outgoing call needs from the browser's `call` message.
struct OutgoingRequest {
    id: CallId,
    session: SessionKey,
    to: String,
    sdp: String,
    account: Arc<Account>,
    events: mpsc::Sender<SessionEvent>,
}

/// Binds the call's media, resolves the trunk, then runs the call.
async fn run_outgoing(
    calls: Calls,
    req: OutgoingRequest,
    commands: mpsc::UnboundedReceiver<SessionInput>,
) {
    let ctx = &calls.ctx;
    let started = Instant::now();
    ctx.stats.call_started(live::Direction::Outgoing);
    let refuse = |cause: Cause| {
        let (code, reason) = cause.browser();
        ctx.stats
            .call_ended(live::Direction::Outgoing, code, cause.side().as_str());
        tracing::info!(cause = %cause, "call refused");
        let _ = req.events.try_send(SessionEvent::Hangup {
            id: req.id.clone(),
            code,
            reason,
        });
    };
    let trunk = req.account.trunk.clone();
    // The first hop's transport: the outbound proxy's when there is one.
    let transport = Transport::from(
        ctx.outbound_proxy
            .as_ref()
            .map_or(trunk.uri.transport, |p| p.uri.transport),
    );
    if ctx.trunk_health.is_down(&trunk.name) {
        return refuse(Cause::TrunkUnreachable(format!(
            "trunk {} is not answering (OPTIONS)",
            trunk.name
        )));
    }
    let allocation = match ctx.media.allocate().await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "no media ports");
            return refuse(Cause::NoResources("no media ports available".into()));
        }
    };
    // The INVITE goes to the first address; requests of the call are taken
    // from any of them (a trunk name with several nodes behind it).
    let mut addresses = resolve_all(&trunk.uri.host, trunk.uri.port).await;
    let (mut destination, mut routes) = (addresses.first().copied(), Vec::new());
    if let Some(proxy) = &ctx.outbound_proxy {
        // Through the cluster's proxy: it sends the INVITE on and is where
        // the trunk's answers and requests come from.
        let found = resolve_all(&proxy.uri.host, proxy.uri.port).await;
        destination = found.first().copied();
        addresses.extend(found);
        routes.push(proxy.route.clone());
    }
    let Some(destination) = destination else {
        return refuse(Cause::TrunkUnreachable(format!(
            "trunk {} cannot be resolved",
            trunk.name
        )));
    };
    let sip_call_id = crate::sip::message::new_call_id();
    let sip_rx = ctx.sip.register_call(&sip_call_id);
    let start = CallStart {
        // The browser's id is unique only within its session: records and
        // the stats page name the call with one of ours.
        id: format!("out-{:016x}", rand::random::<u64>()),
        direction: live::Direction::Outgoing,
        account: req.account.name.clone(),
        remote: Personal::new(req.to.clone(), req.account.redact).to_string(),
        trunk: trunk.name.clone(),
        redact: req.account.redact,
    };
    driver::record_start(&ctx.cdr, &start, &sip_call_id);
    let live = ctx.live.begin(start);
    live.set_sdp(SdpRole::BrowserOffer, &req.sdp);
    live.ladder("in", "browser", "call (SDP)".into());
    let media = MediaPlan {
        public_ip: ctx.public_ip,
        browser_port: allocation.browser_port,
        trunk_rtp_port: allocation.trunk_rtp_port,
        ice_ufrag: allocation.ice_ufrag.clone(),
        ice_pwd: allocation.ice_pwd.clone(),
        ssrc_to_browser: allocation.ssrc_to_browser,
        fingerprint_sha256: ctx.media.fingerprint_sha256().to_string(),
    };
    let call = Call::outgoing(
        OutgoingSetup {
            id: req.id.clone(),
            session: req.session,
            to: req.to.clone(),
            browser_sdp: req.sdp.clone(),
            account: req.account.clone(),
            media,
            local: calls.sip_local(transport),
            destination,
            trunk_sources: trunk
                .signaling_sources(&addresses.iter().map(|a| a.ip()).collect::<Vec<_>>()),
            sip_call_id,
            timers: calls.ctx.call_timers(),
            routes,
        },
        Instant::now(),
    );
    let io = CallIo {
        sip: ctx.sip.clone(),
        sip_rx,
        allocation,
        sessions: vec![(req.session, req.events.clone())],
        commands,
        closed_means: Some(SessionInput::Gone {
            session: req.session,
        }),
        joins: None,
        stats: ctx.stats.clone(),
        on_over: Box::new(|| {}),
        live,
        live_calls: ctx.live.clone(),
        cdr: ctx.cdr.clone(),
        started,
        direction: live::Direction::Outgoing,
    };
    driver::run(call, io).await;
}

/// A trunk's address, and any host a dialog names as its next hop: plain
/// A/AAAA lookup, first answer (no SRV, as for the configured `uri`).
pub(crate) async fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    resolve_all(host, port).await.into_iter().next()
}

/// Every address `host` resolves to (none when it does not).
pub(crate) async fn resolve_all(host: &str, port: u16) -> Vec<SocketAddr> {
    match tokio::net::lookup_host((host, port)).await {
        Ok(addrs) => addrs.collect(),
        Err(_) => Vec::new(),
    }
}

impl CallControl for Calls {
    fn attach(
        &self,
        account: AccountName,
        events: mpsc::Sender<SessionEvent>,
    ) -> Box<dyn SessionControl> {
        let key = self.ctx.sessions.register(&account.0, events.clone());
        self.join_ringing(&account.0, key, &events);
        Box::new(Session {
            calls: self.clone(),
            key,
            account,
            events,
            calls_by_id: HashMap::new(),
        })
    }
}

/// The most outgoing calls one browser session may have at once.
const MAX_CALLS_PER_SESSION: usize = 4;

/// One browser session's view of its calls. Dropping it (the socket closed)
/// drops the command senders of its outgoing calls, which each call takes as
/// a hangup, and takes the session out of the registry (incoming calls see
/// its event channel close).
struct Session {
    calls: Calls,
    key: SessionKey,
    account: AccountName,
    events: mpsc::Sender<SessionEvent>,
    calls_by_id: HashMap<CallId, Commands>,
}

impl Session {
    fn error(&self, id: Option<CallId>, code: u16, message: impl Into<String>) {
        // try_send: command() must not block; a full queue means the browser
        // is not reading, and losing an error message is then acceptable.
        let _ = self.events.try_send(SessionEvent::Error {
            id,
            code,
            message: message.into(),
        });
    }

    /// The call `id` names for this session: one of its outgoing calls, or
    /// an incoming call (which checks itself that it rang this session).
    fn find(&self, id: &CallId) -> Option<Commands> {
        self.calls_by_id
            .get(id)
            .cloned()
            .or_else(|| self.calls.incoming_call(id))
    }

    fn forward(&self, id: CallId, input: SessionInput) {
        match self.find(&id) {
            Some(tx) => {
                let _ = tx.send(input);
            }
            None => self.error(Some(id), 404, "no call with this id"),
        }
    }
}

impl SessionControl for Session {
    fn command(&mut self, cmd: SessionCommand) {
        self.calls_by_id.retain(|_, tx| !tx.is_closed());
        let session = self.key;
        match cmd {
            SessionCommand::Call { id, to, sdp } => {
                if !self.calls.is_accepting() {
                    return self.error(Some(id), 503, "the gateway is shutting down");
                }
                if self.find(&id).is_some() {
                    return self.error(Some(id), 409, "a call with this id already exists");
                }
                if self.calls_by_id.len() >= MAX_CALLS_PER_SESSION {
                    return self.error(Some(id), 429, "too many calls on this session");
                }
                let Some(account) = self.calls.ctx.directory.account(&self.account.0) else {
                    return self.error(Some(id), 403, "account is not configured");
                };
                let tx = self.calls.spawn_outgoing(OutgoingRequest {
                    id: id.clone(),
                    session,
                    to,
                    sdp,
                    account,
                    events: self.events.clone(),
                });
                self.calls_by_id.insert(id, tx);
            }
            SessionCommand::Hangup { id } => self.forward(id, SessionInput::Hangup { session }),
            SessionCommand::Accept { id, sdp } => {
                self.forward(id, SessionInput::Accept { session, sdp })
            }
            SessionCommand::Reject { id } => self.forward(id, SessionInput::Reject { session }),
            SessionCommand::Dtmf { id, digits } => {
                self.forward(id, SessionInput::Dtmf { session, digits })
            }
            SessionCommand::Hold { id, hold } => {
                self.forward(id, SessionInput::Hold { session, hold })
            }
            SessionCommand::Transfer { id, to } => {
                self.forward(id, SessionInput::Transfer { session, to })
            }
            SessionCommand::Answer { id, sdp } => {
                self.forward(id, SessionInput::Reanswer { session, sdp })
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.calls
            .ctx
            .sessions
            .unregister(&self.account.0, self.key);
    }
}
