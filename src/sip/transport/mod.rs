//! The tokio driver of the SIP layer: sockets in, parsed messages routed by
//! Call-ID to the task that owns the call; bytes out.
//!
//! `SipEndpoint` is a cheap `Clone` handle. Each datagram or TCP frame is
//! parsed with limits; a malformed request is answered `400` with the
//! reason when enough of it survives to address a response, otherwise it
//! is dropped and counted. Messages whose Call-ID is registered go to that
//! call's channel (never blocking the socket: a full channel drops and
//! counts); new INVITEs come out of the `IncomingRequest` receiver. The
//! endpoint opens the new call's channel itself at that moment and hands it
//! out on the first `register_call` for that Call-ID, so a retransmitted
//! INVITE (or a quick CANCEL) that arrives before the owner registers waits
//! in the call's channel instead of reaching the B2BUA a second time.

pub mod door;
mod stream;
pub mod traffic;
mod udp;

pub use stream::StreamLimits;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rsip::{Method, SipMessage};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::message::{self, ResponseParts};
use super::session_timer;
use super::uas::USER_AGENT;
use super::SipError;
pub use super::Transport;

/// Capacity of each call's message channel.
pub const CALL_QUEUE: usize = 64;
/// Capacity of the channel of new INVITEs.
pub const INCOMING_QUEUE: usize = 256;
/// How long the channel of a new INVITE waits for its owner's
/// `register_call` (then it is forgotten, as for a call refused at once).
const PENDING_TTL: Duration = Duration::from_secs(32);
/// New calls waiting for `register_call` beyond which INVITEs get 503.
const MAX_PENDING: usize = 10_000;

/// A request with a Call-ID no call has registered: in practice a new INVITE.
#[derive(Debug)]
pub struct IncomingRequest {
    pub msg: SipMessage,
    pub source: SocketAddr,
    pub transport: Transport,
    /// The trunk whose inbound digest credentials it carried, when it came
    /// from outside every trunk's addresses; None: the source names the
    /// trunk (`inbound_sources`).
    pub trunk: Option<String>,
}

/// A message routed to a registered call, with the address it came from
/// (the call refuses in-dialog requests from outside its own trunk).
#[derive(Debug)]
pub struct CallMessage {
    pub msg: SipMessage,
    pub source: SocketAddr,
}

/// A call's SIP messages, boxed: tokio's channel allocates its slots 32 at
/// a time, and a 248-byte message per slot made that 8 KiB per call for a
/// queue that is nearly always empty (one pointer per slot: 256 bytes).
pub type CallQueue = mpsc::Receiver<Box<CallMessage>>;
type CallSender = mpsc::Sender<Box<CallMessage>>;

/// The channel opened for a new INVITE, until its owner registers.
struct Pending {
    rx: CallQueue,
    tx: CallSender,
    since: Instant,
}

/// Counters of what the endpoint dropped or refused, read by `stats`.
#[derive(Debug, Default)]
pub struct EndpointStats {
    /// Unparseable messages that could not be answered.
    pub malformed_dropped: AtomicU64,
    /// Malformed requests answered with 400.
    pub bad_requests_answered: AtomicU64,
    /// Messages dropped because their call's channel was full.
    pub call_queue_full: AtomicU64,
    /// New INVITEs refused with 503 because the B2BUA's channel was full.
    pub incoming_queue_full: AtomicU64,
    /// Responses matching no call.
    pub stray_responses: AtomicU64,
    /// TCP and TLS connections closed at accept (stranger, banned, caps).
    pub connections_refused: AtomicU64,
    /// TCP and TLS connections closed for a time limit (handshake, idle,
    /// a message not completed).
    pub connections_timed_out: AtomicU64,
    /// TLS connections to trunks that failed (certificate, handshake).
    pub tls_failures: AtomicU64,
    /// Messages in and out by method and status.
    pub traffic: traffic::SipTraffic,
}

impl EndpointStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Appends the SIP plane's counters in Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write;
        let counters: [(&str, &str, &AtomicU64); 8] = [
            (
                "gateway_sip_malformed_dropped_total",
                "Unparseable SIP messages that could not be answered.",
                &self.malformed_dropped,
            ),
            (
                "gateway_sip_bad_requests_total",
                "Malformed SIP requests answered 400.",
                &self.bad_requests_answered,
            ),
            (
                "gateway_sip_call_queue_full_total",
                "SIP messages dropped because their call's queue was full.",
                &self.call_queue_full,
            ),
            (
                "gateway_sip_incoming_queue_full_total",
                "New INVITEs answered 503 because the call layer's queue was full.",
                &self.incoming_queue_full,
            ),
            (
                "gateway_sip_stray_responses_total",
                "SIP responses that matched no call.",
                &self.stray_responses,
            ),
            (
                "gateway_sip_connections_refused_total",
                "SIP TCP/TLS connections closed at accept (stranger, banned, over a cap).",
                &self.connections_refused,
            ),
            (
                "gateway_sip_connections_timed_out_total",
                "SIP TCP/TLS connections closed for a time limit (handshake, idle, stalled message).",
                &self.connections_timed_out,
            ),
            (
                "gateway_sip_tls_failures_total",
                "TLS connections to trunks that failed (certificate not accepted, handshake).",
                &self.tls_failures,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        self.traffic.render_prometheus(out);
    }
}

/// Where the endpoint listens, and who it serves.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    pub udp_listen: SocketAddr,
    pub tcp_listen: Option<SocketAddr>,
    /// SIP over TLS: where, and the server side's rustls configuration.
    pub tls_listen: Option<(SocketAddr, Arc<rustls::ServerConfig>)>,
    pub door: door::DoorConfig,
    pub stream_limits: StreamLimits,
    /// Challenges strangers when some trunk has inbound credentials.
    pub digest: Option<Arc<super::auth_server::DigestGuard>>,
}

#[derive(Clone)]
pub struct SipEndpoint {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SipEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SipEndpoint")
            .field("udp", &self.inner.udp_addr)
            .field("tcp", &self.inner.tcp_addr)
            .field("tls", &self.inner.tls_addr)
            .finish()
    }
}

struct Inner {
    udp: Arc<UdpSocket>,
    udp_addr: SocketAddr,
    tcp_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    calls: Mutex<HashMap<String, CallSender>>,
    pending: Mutex<HashMap<String, Pending>>,
    incoming: mpsc::Sender<IncomingRequest>,
    /// TCP and TLS connections.
    streams: stream::Connections,
    stream_limits: StreamLimits,
    stats: EndpointStats,
    /// The receive loop and listeners.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Where each received request came from, by its top Via branch, so that
    /// its responses go back there whatever destination the sender names
    /// (RFC 3261 18.2.2: over TCP on the connection the request came on; over
    /// UDP to the source address, RFC 3581).
    response_routes: Mutex<ResponseRoutes>,
    /// Who gets service; who is banned.
    door: door::Door,
    /// INVITE transactions in progress of sources outside the trunks'
    /// addresses.
    inflight: Mutex<Inflight>,
    digest: Option<Arc<super::auth_server::DigestGuard>>,
    /// A clustered node leaving: OPTIONS get 503 so the proxy routes
    /// elsewhere.
    draining: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Clone, Copy)]
struct ResponseRoute {
    source: SocketAddr,
    transport: Transport,
    at: std::time::Instant,
}

/// Routes are kept for the lifetime of a server transaction (64*T1), and at
/// most this many at once (oldest dropped first when full).
const MAX_RESPONSE_ROUTES: usize = 10_000;

/// The response routes by branch, with their insertion order so that the
/// oldest go first in O(1) (no scan of the table on insert).
#[derive(Default)]
struct ResponseRoutes {
    map: HashMap<String, ResponseRoute>,
    order: std::collections::VecDeque<(String, Instant)>,
}

impl ResponseRoutes {
    fn insert(&mut self, branch: String, route: ResponseRoute) {
        let lifetime = super::T1 * 64;
        while let Some((oldest, at)) = self.order.front() {
            let expired = route.at.saturating_duration_since(*at) >= lifetime;
            let full = self.map.len() >= MAX_RESPONSE_ROUTES
                || self.order.len() >= 2 * MAX_RESPONSE_ROUTES;
            if !expired && !full {
                break;
            }
            // A branch seen again has a newer entry further back; drop the
            // map entry only when it is this one.
            if self.map.get(oldest).is_some_and(|r| r.at == *at) {
                self.map.remove(oldest);
            }
            self.order.pop_front();
        }
        self.order.push_back((branch.clone(), route.at));
        self.map.insert(branch, route);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The tasks hold only weak references; stop them with the last handle.
        if let Ok(tasks) = self.tasks.lock() {
            for t in tasks.iter() {
                t.abort();
            }
        }
        self.streams.close_all();
    }
}

/// Starts a UDP-only endpoint. The error names the address that could not be bound.
pub async fn start(
    udp_listen: SocketAddr,
) -> Result<(SipEndpoint, mpsc::Receiver<IncomingRequest>), SipError> {
    start_with(EndpointConfig {
        udp_listen,
        tcp_listen: None,
        tls_listen: None,
        door: door::DoorConfig::open(),
        stream_limits: StreamLimits::default(),
        digest: None,
    })
    .await
}

/// Starts an endpoint on UDP and, if configured, TCP.
pub async fn start_with(
    cfg: EndpointConfig,
) -> Result<(SipEndpoint, mpsc::Receiver<IncomingRequest>), SipError> {
    let udp = UdpSocket::bind(cfg.udp_listen)
        .await
        .map_err(|source| SipError::Bind {
            transport: Transport::Udp,
            addr: cfg.udp_listen,
            source,
        })?;
    let udp_addr = udp.local_addr().map_err(|source| SipError::Bind {
        transport: Transport::Udp,
        addr: cfg.udp_listen,
        source,
    })?;
    let listener = match cfg.tcp_listen {
        Some(addr) => Some(bind_stream(addr, Transport::Tcp).await?),
        None => None,
    };
    let tcp_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
    let tls_listener = match &cfg.tls_listen {
        Some((addr, config)) => Some((
            bind_stream(*addr, Transport::Tls).await?,
            tokio_rustls::TlsAcceptor::from(config.clone()),
        )),
        None => None,
    };
    let tls_addr = tls_listener.as_ref().and_then(|(l, _)| l.local_addr().ok());
    let (incoming, incoming_rx) = mpsc::channel(INCOMING_QUEUE);
    let udp = Arc::new(udp);
    let inner = Arc::new(Inner {
        udp: udp.clone(),
        udp_addr,
        tcp_addr,
        tls_addr,
        calls: Mutex::new(HashMap::new()),
        pending: Mutex::new(HashMap::new()),
        incoming,
        streams: stream::Connections::default(),
        stream_limits: cfg.stream_limits,
        stats: EndpointStats::default(),
        door: door::Door::new(cfg.door.clone()),
        inflight: Mutex::new(Inflight::default()),
        digest: cfg.digest.clone().filter(|d| d.is_active()),
        tasks: Mutex::new(Vec::new()),
        response_routes: Mutex::new(ResponseRoutes::default()),
        draining: std::sync::atomic::AtomicBool::new(false),
    });
    let mut tasks = vec![tokio::spawn(udp::receive_loop(udp, Arc::downgrade(&inner)))];
    if let Some(listener) = listener {
        tasks.push(tokio::spawn(stream::accept_loop(
            listener,
            None,
            Arc::downgrade(&inner),
        )));
    }
    if let Some((listener, acceptor)) = tls_listener {
        tasks.push(tokio::spawn(stream::accept_loop(
            listener,
            Some(acceptor),
            Arc::downgrade(&inner),
        )));
    }
    if let Ok(mut t) = inner.tasks.lock() {
        t.extend(tasks);
    }
    tracing::info!(udp = %udp_addr, tcp = ?tcp_addr, tls = ?tls_addr, "SIP endpoint listening");
    Ok((SipEndpoint { inner }, incoming_rx))
}

async fn bind_stream(addr: SocketAddr, transport: Transport) -> Result<TcpListener, SipError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| SipError::Bind {
            transport,
            addr,
            source,
        })
}

impl SipEndpoint {
    /// Same as the free function [`start`].
    pub async fn start(
        udp_listen: SocketAddr,
    ) -> Result<(SipEndpoint, mpsc::Receiver<IncomingRequest>), SipError> {
        start(udp_listen).await
    }

    /// Same as the free function [`start_with`].
    pub async fn start_with(
        cfg: EndpointConfig,
    ) -> Result<(SipEndpoint, mpsc::Receiver<IncomingRequest>), SipError> {
        start_with(cfg).await
    }

    /// The bound UDP address (the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.udp_addr
    }

    /// The bound TCP address, when TCP is enabled.
    pub fn tcp_local_addr(&self) -> Option<SocketAddr> {
        self.inner.tcp_addr
    }

    /// The bound TLS address, when SIP over TLS is enabled.
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.inner.tls_addr
    }

    /// How TLS connections to `addr` (a TLS trunk's address; also used for
    /// other ports of the same host) are checked. Without one, nothing is
    /// sent over TLS to that host.
    pub fn add_tls_peer(&self, addr: SocketAddr, peer: super::tls::TlsPeer) {
        self.inner.streams.add_tls_peer(addr, peer);
    }

    pub fn stats(&self) -> &EndpointStats {
        &self.inner.stats
    }

    /// Sources banned now, with the time left.
    pub fn bans(&self) -> Vec<(std::net::IpAddr, Duration)> {
        self.inner.door.bans(Instant::now())
    }

    /// The front door's counters in Prometheus text format.
    pub fn render_door_prometheus(&self, out: &mut String) {
        use std::fmt::Write;
        let d = &self.inner.door;
        let _ = writeln!(
            out,
            "# HELP gateway_sip_bans_total Sources banned for exceeding sip.limits.requests_per_second.\n# TYPE gateway_sip_bans_total counter\ngateway_sip_bans_total {}",
            d.bans_total.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP gateway_sip_banned_sources Sources banned now.\n# TYPE gateway_sip_banned_sources gauge\ngateway_sip_banned_sources {}",
            self.bans().len()
        );
        let _ = writeln!(
            out,
            "# HELP gateway_sip_banned_dropped_total Datagrams and frames from banned sources, dropped unread.\n# TYPE gateway_sip_banned_dropped_total counter\ngateway_sip_banned_dropped_total {}",
            d.dropped_banned.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP gateway_sip_challenges_total Digest challenges (401) sent to requests from outside every trunk's addresses.\n# TYPE gateway_sip_challenges_total counter\ngateway_sip_challenges_total {}",
            d.challenges_sent.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP gateway_sip_strangers_ignored_total Messages from outside every trunk's sources that got no service.\n# TYPE gateway_sip_strangers_ignored_total counter\ngateway_sip_strangers_ignored_total {}",
            d.strangers_ignored.load(Ordering::Relaxed)
        );
    }

    /// Whether the receive tasks (UDP, and the TCP and TLS listeners if
    /// any) still run: `/healthz` reports the SIP plane down when one has
    /// ended.
    /// From now on OPTIONS are answered 503 (the node is draining).
    pub fn set_draining(&self) {
        self.inner
            .draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.inner
            .draining
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn is_running(&self) -> bool {
        self.inner
            .tasks
            .lock()
            .map(|tasks| tasks.iter().all(|t| !t.is_finished()))
            .unwrap_or(false)
    }

    /// Routes every message with this Call-ID (responses and in-dialog
    /// requests) to the returned receiver. Registering again replaces the
    /// previous receiver.
    pub fn register_call(&self, call_id: &str) -> CallQueue {
        // The channel the endpoint opened for a new INVITE, with whatever
        // arrived for that call in the meantime.
        let pending = self
            .inner
            .pending
            .lock()
            .ok()
            .and_then(|mut p| p.remove(call_id));
        if let Some(p) = pending {
            let still_routed = self
                .inner
                .calls
                .lock()
                .is_ok_and(|c| c.get(call_id).is_some_and(|cur| cur.same_channel(&p.tx)));
            if still_routed {
                return p.rx;
            }
        }
        let (tx, rx) = mpsc::channel(CALL_QUEUE);
        if let Ok(mut calls) = self.inner.calls.lock() {
            calls.insert(call_id.to_string(), tx);
        }
        rx
    }

    pub fn unregister_call(&self, call_id: &str) {
        if let Ok(mut calls) = self.inner.calls.lock() {
            calls.remove(call_id);
        }
        if let Ok(mut pending) = self.inner.pending.lock() {
            pending.remove(call_id);
        }
    }

    /// Sends bytes produced by a call. Over TCP the connection to `dest` is
    /// reused, or opened (again) when there is none.
    pub async fn send(
        &self,
        dest: SocketAddr,
        transport: Transport,
        data: Bytes,
    ) -> Result<(), SipError> {
        self.inner.send(dest, transport, data).await
    }
}

impl Inner {
    async fn send(
        self: &Arc<Self>,
        dest: SocketAddr,
        transport: Transport,
        data: Bytes,
    ) -> Result<(), SipError> {
        let (dest, transport) = self.response_route(&data).unwrap_or((dest, transport));
        self.stats
            .traffic
            .count_bytes(traffic::Direction::Out, &data);
        match transport {
            Transport::Udp => self
                .udp
                .send_to(&data, dest)
                .await
                .map(|_| ())
                .map_err(|source| SipError::Send {
                    transport,
                    addr: dest,
                    source,
                }),
            Transport::Tcp | Transport::Tls => stream::send(self, dest, transport, data).await,
        }
    }

    /// Routes one received datagram or frame.
    async fn dispatch(self: &Arc<Self>, data: &[u8], source: SocketAddr, transport: Transport) {
        let verdict = match self.door.admit(source.ip(), Instant::now()) {
            door::Verdict::Banned { newly } => {
                if newly {
                    tracing::warn!(
                        %source,
                        limit = self.door.requests_per_second(),
                        "SIP source banned: over its requests per second; its packets are dropped unanswered"
                    );
                }
                return;
            }
            verdict => verdict,
        };
        let known = verdict == door::Verdict::Known;
        let msg = match message::parse(data) {
            Ok(msg) => msg,
            // Strangers learn nothing, not even that their message was bad.
            Err(_) if !known => {
                self.door.strangers_ignored.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(e) => return self.answer_malformed(data, &e, source, transport).await,
        };
        self.stats.traffic.count(traffic::Direction::In, &msg);
        let Ok(call_id) = message::call_id(&msg) else {
            return;
        };
        let sender = self
            .calls
            .lock()
            .ok()
            .and_then(|c| c.get(&call_id).cloned());
        // A stranger reaches no call either: a BYE or response forged with a
        // live call's Call-ID and tags, from outside every trunk's
        // addresses, is dropped here and the call goes on. A source that
        // authenticated as a trunk reaches the calls it is in; anything
        // new from it must authenticate again.
        let mut trunk = None;
        if !known {
            let in_dialog = verdict == door::Verdict::Trusted && sender.is_some();
            if !in_dialog {
                match self.authenticate(&msg, source.ip()) {
                    Ok(name) => trunk = Some(name),
                    Err(answer) => {
                        return self.answer_stranger(msg, answer, source, transport).await
                    }
                }
            }
        }
        // Only requests that get service: a stranger's answer goes to its
        // source directly, and a flood must not churn this table.
        if let SipMessage::Request(req) = &msg {
            self.remember_route(req, source, transport);
        }
        if let Some(sender) = sender {
            match sender.try_send(Box::new(CallMessage { msg, source })) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    EndpointStats::bump(&self.stats.call_queue_full);
                    tracing::debug!(%call_id, "call queue full; SIP message dropped");
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(m)) => {
                    let msg = m.msg;
                    // The call went away without unregistering: forget it and
                    // treat the message as one for an unknown call.
                    if let Ok(mut calls) = self.calls.lock() {
                        calls.remove(&call_id);
                    }
                    return self
                        .unknown_call(msg, call_id, source, transport, trunk)
                        .await;
                }
            }
        }
        self.unknown_call(msg, call_id, source, transport, trunk)
            .await
    }

    /// Whether a stranger's request carries a trunk's inbound credentials:
    /// the trunk's name, or how to answer it.
    fn authenticate(
        &self,
        msg: &SipMessage,
        source: std::net::IpAddr,
    ) -> Result<String, StrangerAnswer> {
        use super::auth_server::AuthOutcome;
        let (Some(guard), SipMessage::Request(req)) = (&self.digest, msg) else {
            return Err(StrangerAnswer::Refuse);
        };
        // An ACK cannot be challenged (it has no response); CANCEL must
        // match a transaction a stranger cannot have.
        if matches!(req.method, Method::Ack | Method::Cancel) {
            return Err(StrangerAnswer::Refuse);
        }
        let authorization = message::header_values(req, "Authorization");
        let now = unix_now();
        match guard.verify(
            authorization.first().map(String::as_str),
            &req.method.to_string(),
            &req.uri.to_string(),
            source,
            now,
        ) {
            AuthOutcome::Trunk(name) => {
                self.door.trust(source, Instant::now());
                Ok(name)
            }
            AuthOutcome::Stale => Err(StrangerAnswer::Challenge { stale: true }),
            AuthOutcome::Challenge => Err(StrangerAnswer::Challenge { stale: false }),
            AuthOutcome::Refused => {
                tracing::info!(%source, method = %req.method, "SIP digest credentials refused");
                Err(StrangerAnswer::Refuse)
            }
        }
    }

    fn remember_route(&self, req: &rsip::Request, source: SocketAddr, transport: Transport) {
        let Some(branch) = message::top_via_branch(req) else {
            return;
        };
        if let Ok(mut routes) = self.response_routes.lock() {
            routes.insert(
                branch,
                ResponseRoute {
                    source,
                    transport,
                    at: Instant::now(),
                },
            );
        }
    }

    /// For a response we are about to send: where its request came from.
    fn response_route(&self, data: &[u8]) -> Option<(SocketAddr, Transport)> {
        if !data.starts_with(b"SIP/2.0 ") {
            return None;
        }
        let msg = message::parse_lenient(data).ok()?;
        let branch = message::top_via_branch(&msg)?;
        if let SipMessage::Response(resp) = &msg {
            if message::status_code(resp) >= 200 {
                if let Ok(mut inflight) = self.inflight.lock() {
                    inflight.end(&branch);
                }
            }
        }
        let routes = self.response_routes.lock().ok()?;
        routes.map.get(&branch).map(|r| (r.source, r.transport))
    }

    async fn unknown_call(
        self: &Arc<Self>,
        msg: SipMessage,
        call_id: String,
        source: SocketAddr,
        transport: Transport,
        trunk: Option<String>,
    ) {
        let req = match msg {
            SipMessage::Response(_) => {
                EndpointStats::bump(&self.stats.stray_responses);
                tracing::debug!(%call_id, %source, "response for no known call dropped");
                return;
            }
            SipMessage::Request(req) => req,
        };
        // RFC 3261 8.2.2.3: an extension we do not implement that the
        // request requires is refused with 420 and named in Unsupported.
        let unsupported = unsupported_requirements(&req);
        if req.method == Method::Invite && !unsupported.is_empty() {
            tracing::info!(%call_id, %source, required = %unsupported, "INVITE requires an extension we lack: 420");
            let resp = message::build_response(
                &req,
                420,
                ResponseParts {
                    user_agent: USER_AGENT,
                    extra: vec![rsip::Header::Unsupported(unsupported.into())],
                    ..Default::default()
                },
            );
            let _ = self.send(source, transport, message::to_bytes(resp)).await;
            return;
        }
        // RFC 4028 8.1: a session interval below our floor gets 422 with
        // the Min-SE we take.
        if let (Method::Invite, Some(min_se)) = (
            req.method,
            session_timer::too_small(session_timer::of(&req)),
        ) {
            tracing::info!(%call_id, %source, "INVITE's Session-Expires below our Min-SE: 422");
            let resp = message::build_response(
                &req,
                422,
                ResponseParts {
                    user_agent: USER_AGENT,
                    extra: vec![rsip::Header::Other("Min-SE".into(), min_se.to_string())],
                    ..Default::default()
                },
            );
            let _ = self.send(source, transport, message::to_bytes(resp)).await;
            return;
        }
        let code = match req.method {
            Method::Ack => return,
            Method::Invite => {
                // A source that is not a trunk's address (it authenticated)
                // may hold only so many INVITE transactions at once.
                if trunk.is_some() && !self.begin_invite(&req, source) {
                    return;
                }
                let open = self.open_pending(&call_id);
                let incoming = IncomingRequest {
                    msg: SipMessage::Request(req),
                    source,
                    transport,
                    trunk,
                };
                let refused = if open {
                    self.incoming.try_send(incoming).map_err(|e| e.into_inner())
                } else {
                    Err(incoming)
                };
                match refused {
                    Ok(()) => return,
                    Err(incoming) => {
                        if let Ok(mut calls) = self.calls.lock() {
                            calls.remove(&call_id);
                        }
                        if let Ok(mut pending) = self.pending.lock() {
                            pending.remove(&call_id);
                        }
                        EndpointStats::bump(&self.stats.incoming_queue_full);
                        tracing::warn!(%call_id, %source, "cannot take a new INVITE now; answering 503");
                        let SipMessage::Request(req) = incoming.msg else {
                            return;
                        };
                        let resp = message::build_response(
                            &req,
                            503,
                            ResponseParts {
                                user_agent: USER_AGENT,
                                ..Default::default()
                            },
                        );
                        let _ = self.send(source, transport, message::to_bytes(resp)).await;
                        return;
                    }
                }
            }
            // Trunks probe with OPTIONS; answering keeps them routing to us.
            Method::Options => {
                options_status(self.draining.load(std::sync::atomic::Ordering::SeqCst))
            }
            _ => 481,
        };
        let extra = if code == 200 {
            vec![rsip::Header::Allow(super::uas::ALLOW.into())]
        } else {
            vec![]
        };
        let resp = message::build_response(
            &req,
            code,
            ResponseParts {
                user_agent: USER_AGENT,
                extra,
                ..Default::default()
            },
        );
        if let Err(e) = self.send(source, transport, message::to_bytes(resp)).await {
            tracing::debug!(error = %e, "cannot answer an out-of-dialog request");
        }
    }

    /// Counts an INVITE transaction of `source`; over the limit the source
    /// is banned (logged once) and the INVITE dropped unanswered, like all
    /// it sends while banned.
    fn begin_invite(&self, req: &rsip::Request, source: SocketAddr) -> bool {
        let Some(branch) = message::top_via_branch(req) else {
            return true;
        };
        let limit = self.door.concurrent_transactions();
        let admitted = self
            .inflight
            .lock()
            .map(|mut i| i.begin(branch, source.ip(), limit, Instant::now()))
            .unwrap_or(true);
        if !admitted && self.door.ban(source.ip(), Instant::now()) {
            tracing::warn!(
                %source,
                limit,
                "SIP source banned: over its concurrent INVITE transactions; its packets are dropped unanswered"
            );
        }
        admitted
    }

    /// Opens the channel of a new call and routes its Call-ID there;
    /// forgets channels nobody claimed in time. False when too many wait.
    fn open_pending(&self, call_id: &str) -> bool {
        let (Ok(mut pending), Ok(mut calls)) = (self.pending.lock(), self.calls.lock()) else {
            return false;
        };
        let now = Instant::now();
        pending.retain(|id, p| {
            let keep = now.duration_since(p.since) < PENDING_TTL;
            if !keep && calls.get(id).is_some_and(|cur| cur.same_channel(&p.tx)) {
                calls.remove(id);
            }
            keep
        });
        if pending.len() >= MAX_PENDING {
            return false;
        }
        let (tx, rx) = mpsc::channel(CALL_QUEUE);
        calls.insert(call_id.to_string(), tx.clone());
        pending.insert(call_id.to_string(), Pending { rx, tx, since: now });
        true
    }

    /// A stranger's message for no call: a digest challenge when some
    /// trunk has inbound credentials, else silence (nothing to probe or
    /// reflect), or 403 with `sip.answer_strangers`. The challenge is
    /// stateless: one response, no transaction, no retransmission.
    async fn answer_stranger(
        self: &Arc<Self>,
        msg: SipMessage,
        answer: StrangerAnswer,
        source: SocketAddr,
        transport: Transport,
    ) {
        self.door.strangers_ignored.fetch_add(1, Ordering::Relaxed);
        let SipMessage::Request(req) = msg else {
            return;
        };
        if req.method == Method::Ack {
            return;
        }
        let resp = match (answer, &self.digest) {
            (StrangerAnswer::Challenge { stale }, Some(guard)) => {
                self.door.challenges_sent.fetch_add(1, Ordering::Relaxed);
                let tag = message::new_tag();
                message::build_response(
                    &req,
                    401,
                    ResponseParts {
                        user_agent: USER_AGENT,
                        to_tag: Some(&tag),
                        extra: guard
                            .challenges(source.ip(), unix_now(), stale)
                            .into_iter()
                            .map(|v| rsip::Header::WwwAuthenticate(v.into()))
                            .collect(),
                        ..Default::default()
                    },
                )
            }
            _ if self.door.answer_strangers() || self.digest.is_some() => message::build_response(
                &req,
                403,
                ResponseParts {
                    user_agent: USER_AGENT,
                    ..Default::default()
                },
            ),
            _ => {
                tracing::debug!(%source, method = %req.method, "request from a stranger ignored");
                return;
            }
        };
        let _ = self.send(source, transport, message::to_bytes(resp)).await;
    }

    async fn answer_malformed(
        self: &Arc<Self>,
        data: &[u8],
        err: &SipError,
        source: SocketAddr,
        transport: Transport,
    ) {
        // A 400 needs at least a Via to be routed back (RFC 3261 18.2.2);
        // the other headers are copied when they survived.
        let salvage = match message::parse_lenient(data) {
            Ok(SipMessage::Request(req))
                if req.method != Method::Ack && message::top_via(&req).is_ok() =>
            {
                Some(req)
            }
            _ => None,
        };
        let Some(req) = salvage else {
            // rsip could not read it at all: answer from its raw lines when
            // they hold a Via (unknown method 501, other version 505, 400).
            if let Some(resp) = message::raw_error_response(data, &err.reason_phrase()) {
                EndpointStats::bump(&self.stats.bad_requests_answered);
                tracing::debug!(%source, error = %err, "unparseable SIP request answered");
                let _ = self.send(source, transport, resp).await;
                return;
            }
            EndpointStats::bump(&self.stats.malformed_dropped);
            tracing::debug!(%source, error = %err, "malformed SIP message dropped");
            return;
        };
        EndpointStats::bump(&self.stats.bad_requests_answered);
        tracing::debug!(%source, error = %err, "malformed SIP request answered 400");
        let reason = err.reason_phrase();
        let resp = message::build_response(
            &req,
            400,
            ResponseParts {
                reason: Some(&reason),
                user_agent: USER_AGENT,
                ..Default::default()
            },
        );
        let _ = self.send(source, transport, message::to_bytes(resp)).await;
    }
}

/// INVITE server transactions in progress by source, for sources that are
/// not a trunk's address: counted when the INVITE is handed to the call
/// layer, ended when a final response goes out for its branch (or after
/// `INFLIGHT_TTL`, for a call that ended without one).
#[derive(Default)]
struct Inflight {
    by_branch: HashMap<String, (std::net::IpAddr, Instant)>,
    per_source: HashMap<std::net::IpAddr, u32>,
}

/// Longer than any INVITE transaction (ring_timeout is at most an hour).
const INFLIGHT_TTL: Duration = Duration::from_secs(3700);
/// Transactions tracked at most (each source is capped far below).
const MAX_INFLIGHT: usize = 10_000;

impl Inflight {
    /// False when `source` holds `limit` transactions already (or the table
    /// is full).
    fn begin(
        &mut self,
        branch: String,
        source: std::net::IpAddr,
        limit: u32,
        now: Instant,
    ) -> bool {
        if self.by_branch.contains_key(&branch) {
            return true;
        }
        if self.by_branch.len() >= MAX_INFLIGHT {
            let stale: Vec<String> = self
                .by_branch
                .iter()
                .filter(|(_, (_, at))| now.saturating_duration_since(*at) >= INFLIGHT_TTL)
                .map(|(b, _)| b.clone())
                .collect();
            for b in stale {
                self.end(&b);
            }
            if self.by_branch.len() >= MAX_INFLIGHT {
                return false;
            }
        }
        let count = self.per_source.entry(source).or_default();
        if *count >= limit {
            return false;
        }
        *count += 1;
        self.by_branch.insert(branch, (source, now));
        true
    }

    fn end(&mut self, branch: &str) {
        if let Some((source, _)) = self.by_branch.remove(branch) {
            if let Some(count) = self.per_source.get_mut(&source) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.per_source.remove(&source);
                }
            }
        }
    }
}

/// Option tags of a request's `Require` that the gateway does not
/// implement as a UAS, comma-separated (empty: none). It implements session
/// timers (RFC 4028), not 100rel (it sends no reliable provisionals).
fn unsupported_requirements(req: &rsip::Request) -> String {
    const SUPPORTED: [&str; 1] = ["timer"];
    message::header_values(req, "Require")
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|tag| !tag.is_empty() && !SUPPORTED.iter().any(|s| s.eq_ignore_ascii_case(tag)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a stranger's request is answered.
#[derive(Debug, Clone, Copy)]
enum StrangerAnswer {
    /// 401 with a fresh nonce.
    Challenge { stale: bool },
    /// 403, or silence.
    Refuse,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Helper for the receive tasks: the endpoint, if any handle is left.
fn upgrade(weak: &Weak<Inner>) -> Option<Arc<Inner>> {
    weak.upgrade()
}

/// The answer to an out-of-dialog OPTIONS: 200, or 503 while the node drains
/// (a cluster proxy's dispatcher then stops sending it new calls).
fn options_status(draining: bool) -> u16 {
    if draining {
        503
    } else {
        200
    }
}

#[cfg(test)]
mod tests;
