//! Media workers: a fixed set of OS threads, each owning its calls and their
//! sockets outright.
//!
//! ```text
//! engine ──Command (bounded queue + mio::Waker)──▶ worker thread
//!                                                  mio::Poll over
//!                                                  - the shared browser port (single-port mode)
//!                                                  - each call's trunk RTP/RTCP (and browser) sockets
//!                                                  timer heap ← CallRelay::poll_timeout
//! worker ──MediaEvent (tokio mpsc, try_send)─────▶ B2BUA
//! worker ──oneshot when a call's ports are freed─▶ MediaHandle::stopped
//! ```
//!
//! Per packet there is no lock, no channel, no task wake-up and no
//! allocation: a batch of datagrams is read with one `recvmmsg` into the
//! worker's preallocated buffers, each is decrypted, rewritten and encrypted
//! in place by its call's [`CallRelay`], and the results leave with one
//! `sendmmsg` per destination socket. One `Instant::now()` per batch.
//! Everything protocol-related stays in the relay; this file moves bytes and
//! time, and [`browser_demux`] decides which call a datagram on the shared
//! port belongs to.

pub(crate) mod batch;
pub mod browser_demux;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use tokio::sync::{mpsc, oneshot};

use self::batch::{RecvBatch, SendBatch};
use self::browser_demux::{BrowserDemux, Unrouted};
use super::counters::WorkerStats;
use super::engine::MediaEvent;
use super::relay::{CallRelay, LegId, RelayEvent, TrunkUpdate};

/// A call's name on the command queue (unique per engine).
pub(crate) type CallId = u64;

/// Forwarded datagrams held for one round's `sendmmsg`s at most; a round
/// with more sends early.
const MAX_PENDING: usize = 256;

/// Commands queued per worker. Bounded: a B2BUA that outruns a worker waits
/// for it rather than growing a queue without limit.
const COMMAND_QUEUE: usize = 1024;

/// While a terminal event waits for room in a full event channel, the loop
/// wakes this often to retry.
const EVENT_RETRY: Duration = Duration::from_millis(20);

/// What the engine asks of a worker.
pub(crate) enum Command {
    Start(Box<StartCall>),
    /// Boxed: re-INVITEs are rare, the queue's slots stay small.
    UpdateTrunk(CallId, Box<TrunkUpdate>),
    MediaTimeout(CallId, Duration),
    /// The browser held (true) or resumed the call.
    Hold(CallId, bool),
    /// A DTMF digit toward the trunk.
    Dtmf(CallId, super::rewrite::Toward, crate::types::DtmfDigit),
    /// End the call: DTLS close_notify to the browser, then free its ports.
    Stop(CallId),
    /// The engine is gone: end every call and exit.
    Shutdown,
}

/// A call handed to a worker.
pub(crate) struct StartCall {
    pub id: CallId,
    pub relay: CallRelay,
    /// Our ICE ufrag: the route of STUN checks on the shared port.
    pub ufrag: String,
    /// The call's own browser socket (per-call port mode), `None` when the
    /// worker's shared port serves it.
    pub browser: Option<std::net::UdpSocket>,
    pub trunk_rtp: std::net::UdpSocket,
    pub trunk_rtcp: std::net::UdpSocket,
    pub events: mpsc::Sender<MediaEvent>,
    /// Fired once the call's sockets are closed.
    pub done: oneshot::Sender<()>,
    pub load: LoadGuard,
    /// The call's tracing span (carries the call id).
    pub span: tracing::Span,
}

/// Counts a call on its worker from allocation until its ports are freed;
/// the engine places new calls on the worker with the fewest.
pub(crate) struct LoadGuard(Arc<AtomicUsize>);

impl LoadGuard {
    pub fn new(load: Arc<AtomicUsize>) -> Self {
        load.fetch_add(1, Relaxed);
        LoadGuard(load)
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// The engine's side of one worker thread.
pub(crate) struct WorkerHandle {
    commands: SyncSender<Command>,
    waker: Waker,
    /// The shared browser port (single-port mode).
    pub browser_port: Option<u16>,
    /// Calls allocated on this worker and not yet ended.
    pub load: Arc<AtomicUsize>,
    /// This worker's counters, handed to the relays it will run.
    pub stats: Arc<WorkerStats>,
}

impl WorkerHandle {
    /// Starts worker `index`. `shared_browser` is its browser port in
    /// single-port mode. `batch` is datagrams per syscall (1 turns batching
    /// off, for comparison).
    pub fn spawn(
        index: usize,
        shared_browser: Option<std::net::UdpSocket>,
        stats: Arc<WorkerStats>,
        batch: usize,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let browser_port = match &shared_browser {
            Some(socket) => Some(socket.local_addr()?.port()),
            None => None,
        };
        let shared = match shared_browser {
            Some(socket) => {
                socket.set_nonblocking(true)?;
                match batch::grow_socket_buffers(socket.as_raw_fd(), batch::SHARED_SOCKET_BUFFER) {
                    Ok(granted) => tracing::debug!(granted, "shared browser port receive buffer"),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot grow the shared browser port's buffers")
                    }
                }
                let mut socket = UdpSocket::from_std(socket);
                poll.registry()
                    .register(&mut socket, SHARED, Interest::READABLE)?;
                Some(socket)
            }
            None => None,
        };
        let (commands, command_rx) = std::sync::mpsc::sync_channel(COMMAND_QUEUE);
        std::thread::Builder::new()
            .name(format!("media-{index}"))
            // Built on the thread: the batch buffers hold raw pointers for
            // the kernel and never leave it.
            .spawn({
                let stats = stats.clone();
                move || Worker::new(poll, command_rx, shared, stats, batch).run()
            })?;
        Ok(WorkerHandle {
            commands,
            waker,
            browser_port,
            load: Arc::new(AtomicUsize::new(0)),
            stats,
        })
    }

    /// Queues `command` and wakes the worker. Ignored if the worker has
    /// exited (its calls are over).
    pub fn send(&self, command: Command) {
        let sent = match self.commands.try_send(command) {
            Ok(()) => true,
            // Back-pressure: the worker drains its queue every loop turn,
            // so this wait is short; wake it first so that it does.
            Err(TrySendError::Full(command)) => {
                let _ = self.waker.wake();
                self.commands.send(command).is_ok()
            }
            Err(TrySendError::Disconnected(_)) => false,
        };
        if sent {
            let _ = self.waker.wake();
        }
    }
}

const WAKER: Token = Token(0);
const SHARED: Token = Token(1);
/// Tokens of call sockets: `FIRST_CALL + slot * 3 + leg`.
const FIRST_CALL: usize = 2;

fn token(slot: usize, leg: LegId) -> Token {
    let leg = match leg {
        LegId::Browser => 0,
        LegId::TrunkRtp => 1,
        LegId::TrunkRtcp => 2,
    };
    Token(FIRST_CALL + slot * 3 + leg)
}

fn from_token(token: Token) -> Option<(usize, LegId)> {
    let n = token.0.checked_sub(FIRST_CALL)?;
    let leg = match n % 3 {
        0 => LegId::Browser,
        1 => LegId::TrunkRtp,
        _ => LegId::TrunkRtcp,
    };
    Some((n / 3, leg))
}

/// Where a batch was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Shared,
    Call(usize, LegId),
}

struct Call {
    id: CallId,
    generation: u32,
    relay: CallRelay,
    browser: Option<UdpSocket>,
    trunk_rtp: UdpSocket,
    trunk_rtcp: UdpSocket,
    events: mpsc::Sender<MediaEvent>,
    done: Option<oneshot::Sender<()>>,
    _load: LoadGuard,
    span: tracing::Span,
    /// The deadline in the timer heap, if any (later heap entries of this
    /// call are stale).
    armed: Option<Instant>,
    /// Listed in `touched` since the last service.
    touched: bool,
    /// Which of its sockets are in the ready queue.
    queued: [bool; 3],
}

/// One worker thread's state.
struct Worker {
    poll: Poll,
    commands: Receiver<Command>,
    shared: Option<UdpSocket>,
    shared_queued: bool,
    demux: BrowserDemux<usize>,
    /// Boxed: a call is ~7.5 KiB (four SRTP contexts inline), and a slot
    /// vector of inline calls grows by doubling, so up to half of it would
    /// be empty slots of that size.
    calls: Vec<Option<Box<Call>>>,
    free: Vec<usize>,
    generation: u32,
    ids: HashMap<CallId, usize>,
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    /// Sockets that may have more to read, in round-robin order.
    ready: VecDeque<Source>,
    recv: RecvBatch,
    send: SendBatch,
    /// Forwarded datagrams waiting for the end of the round: (socket,
    /// buffer, to). Their buffers were swapped out of `recv` for spare ones,
    /// so one `sendmmsg` per socket carries a whole round (every call's
    /// packets toward the shared browser port in one syscall).
    out: Vec<(RawFd, Vec<u8>, SocketAddr)>,
    /// Empty buffers of the same capacity as `recv`'s, swapped in for the
    /// ones in `out`; preallocated, so no allocation per packet.
    spare: Vec<Vec<u8>>,
    touched: Vec<usize>,
    /// Terminal events waiting for room in a full channel.
    pending_events: VecDeque<(mpsc::Sender<MediaEvent>, MediaEvent)>,
    stats: Arc<WorkerStats>,
}

impl Worker {
    fn new(
        poll: Poll,
        commands: Receiver<Command>,
        shared: Option<UdpSocket>,
        stats: Arc<WorkerStats>,
        batch: usize,
    ) -> Self {
        Worker {
            poll,
            commands,
            shared,
            shared_queued: false,
            demux: BrowserDemux::default(),
            calls: Vec::new(),
            free: Vec::new(),
            generation: 0,
            ids: HashMap::new(),
            timers: BinaryHeap::new(),
            ready: VecDeque::new(),
            recv: RecvBatch::new(batch),
            send: SendBatch::new(batch),
            out: Vec::with_capacity(MAX_PENDING),
            spare: (0..MAX_PENDING)
                .map(|_| Vec::with_capacity(batch::RECV_LEN + crate::media::srtp::MAX_OVERHEAD))
                .collect(),
            touched: Vec::new(),
            pending_events: VecDeque::new(),
            stats,
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "media worker cannot poll; its calls end");
                    self.shutdown();
                    return;
                }
            }
            let mut wake = false;
            for event in events.iter() {
                match event.token() {
                    WAKER => wake = true,
                    SHARED => self.mark_ready(Source::Shared),
                    t => {
                        if let Some((slot, leg)) = from_token(t) {
                            self.mark_ready(Source::Call(slot, leg));
                        }
                    }
                }
            }
            // Commands first: a Stop must not wait behind a media burst.
            if (wake || !events.is_empty()) && !self.handle_commands() {
                self.shutdown();
                return;
            }
            // One round: every ready socket gets its share, so a busy one
            // cannot starve the others; what may hold more goes round again.
            // A call's own socket gets one batch; the shared browser port
            // carries the browser legs of all the worker's calls, so it gets
            // one batch per `capacity` calls: with one batch per round it
            // was served as one call among hundreds, fell behind at 75,000
            // packets/s with 500 calls and lost browser->trunk only.
            let shared_share = self.ids.len().div_ceil(self.recv.capacity()).max(1);
            for _ in 0..self.ready.len() {
                let Some(source) = self.ready.pop_front() else {
                    break;
                };
                let share = match source {
                    Source::Shared => shared_share,
                    Source::Call(..) => 1,
                };
                let mut more = false;
                for _ in 0..share {
                    more = self.read_batch(source);
                    if !more {
                        break;
                    }
                }
                if more {
                    self.ready.push_back(source);
                } else {
                    self.unmark_ready(source);
                }
            }
            self.send_out();
            self.fire_timers(Instant::now());
            self.retry_events();
        }
    }

    /// How long `poll` may sleep: not at all while sockets hold data, else
    /// until the next timer.
    fn poll_timeout(&mut self) -> Option<Duration> {
        if !self.ready.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let timer = self.timers.peek().map(|Reverse((at, _, _))| {
            // Rounded up to the next millisecond: epoll's resolution.
            at.saturating_duration_since(now) + Duration::from_micros(999)
        });
        let retry = (!self.pending_events.is_empty()).then_some(EVENT_RETRY);
        match (timer, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn mark_ready(&mut self, source: Source) {
        let queued = match source {
            Source::Shared => &mut self.shared_queued,
            Source::Call(slot, leg) => match self.calls.get_mut(slot).and_then(Option::as_mut) {
                Some(call) => &mut call.queued[leg_index(leg)],
                None => return,
            },
        };
        if !*queued {
            *queued = true;
            self.ready.push_back(source);
        }
    }

    fn unmark_ready(&mut self, source: Source) {
        match source {
            Source::Shared => self.shared_queued = false,
            Source::Call(slot, leg) => {
                if let Some(call) = self.calls.get_mut(slot).and_then(Option::as_mut) {
                    call.queued[leg_index(leg)] = false;
                }
            }
        }
    }

    /// `false` when the worker must exit.
    fn handle_commands(&mut self) -> bool {
        loop {
            match self.commands.try_recv() {
                Ok(Command::Start(start)) => self.start_call(*start),
                Ok(Command::UpdateTrunk(id, update)) => {
                    if let Some(slot) = self.ids.get(&id).copied() {
                        if let Some(call) = self.calls[slot].as_mut() {
                            call.relay.update_trunk(*update, Instant::now());
                        }
                        self.service(slot);
                    }
                }
                Ok(Command::MediaTimeout(id, timeout)) => {
                    if let Some(slot) = self.ids.get(&id).copied() {
                        if let Some(call) = self.calls[slot].as_mut() {
                            call.relay.set_media_timeout(timeout);
                        }
                        self.service(slot);
                    }
                }
                Ok(Command::Hold(id, hold)) => {
                    if let Some(slot) = self.ids.get(&id).copied() {
                        if let Some(call) = self.calls[slot].as_mut() {
                            call.relay.set_hold(hold);
                        }
                        self.service(slot);
                    }
                }
                Ok(Command::Dtmf(id, toward, digit)) => {
                    if let Some(slot) = self.ids.get(&id).copied() {
                        if let Some(call) = self.calls[slot].as_mut() {
                            // The B2BUA checked telephone-event was negotiated;
                            // a refusal here (queue full, media over) loses the
                            // digit (not logged: digits are PINs and card numbers).
                            if let Err(e) = call.relay.send_dtmf(toward, digit, Instant::now()) {
                                let _enter = call.span.enter();
                                tracing::warn!(reason = %e, "DTMF digit not sent");
                            }
                        }
                        self.service(slot);
                    }
                }
                Ok(Command::Stop(id)) => {
                    if let Some(slot) = self.ids.get(&id).copied() {
                        self.stop_call(slot);
                    }
                }
                Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => return false,
                Err(TryRecvError::Empty) => return true,
            }
        }
    }

    fn start_call(&mut self, start: StartCall) {
        let StartCall {
            id,
            relay,
            ufrag,
            browser,
            trunk_rtp,
            trunk_rtcp,
            events,
            done,
            load,
            span,
        } = start;
        let slot = self.free.pop().unwrap_or_else(|| {
            self.calls.push(None);
            self.calls.len() - 1
        });
        let registered = (|| -> io::Result<_> {
            let registry = self.poll.registry();
            let register = |socket: std::net::UdpSocket, leg| -> io::Result<UdpSocket> {
                socket.set_nonblocking(true)?;
                let mut socket = UdpSocket::from_std(socket);
                registry.register(&mut socket, token(slot, leg), Interest::READABLE)?;
                Ok(socket)
            };
            let browser = match browser {
                Some(s) => Some(register(s, LegId::Browser)?),
                None => None,
            };
            Ok((
                browser,
                register(trunk_rtp, LegId::TrunkRtp)?,
                register(trunk_rtcp, LegId::TrunkRtcp)?,
            ))
        })();
        let (browser, trunk_rtp, trunk_rtcp) = match registered {
            Ok(sockets) => sockets,
            Err(e) => {
                self.free.push(slot);
                let _enter = span.enter();
                tracing::error!(error = %e, "media worker cannot watch the call's sockets");
                let _ = events.try_send(MediaEvent::Failed {
                    reason: format!("media worker cannot watch the call's sockets: {e}"),
                });
                let _ = done.send(());
                return;
            }
        };
        if browser.is_none() && !self.demux.add_call(slot, &ufrag) {
            // 48 random bits collided: the older call keeps the route.
            let _enter = span.enter();
            tracing::error!("ICE ufrag already in use on this media worker");
        }
        WorkerStats::incr(&self.stats.calls_active);
        WorkerStats::incr(&self.stats.calls_started);
        self.generation = self.generation.wrapping_add(1);
        self.ids.insert(id, slot);
        self.calls[slot] = Some(Box::new(Call {
            id,
            generation: self.generation,
            relay,
            browser,
            trunk_rtp,
            trunk_rtcp,
            events,
            done: Some(done),
            _load: load,
            span,
            armed: None,
            touched: false,
            queued: [false; 3],
        }));
        // Anything the relay already has to say (bad trunk keys), and its
        // first deadline. Datagrams that arrived before the sockets were
        // registered are waiting in them: read them too (edge-triggered
        // polling would not report them).
        self.service(slot);
        if self.calls[slot].is_some() {
            for leg in [LegId::Browser, LegId::TrunkRtp, LegId::TrunkRtcp] {
                if leg != LegId::Browser
                    || self.calls[slot]
                        .as_ref()
                        .is_some_and(|c| c.browser.is_some())
                {
                    self.mark_ready(Source::Call(slot, leg));
                }
            }
        }
    }

    /// Our side ends the call: close_notify to the browser, ports freed.
    fn stop_call(&mut self, slot: usize) {
        let Some(call) = self.calls[slot].as_mut() else {
            return;
        };
        call.relay.close(Instant::now());
        self.flush_transmits(slot);
        self.end_call(slot);
    }

    /// Forgets the call and closes its sockets; then tells `stopped()`.
    fn end_call(&mut self, slot: usize) {
        if self.calls[slot].is_none() {
            return;
        }
        self.send_out();
        let Some(call) = self.calls[slot].take() else {
            return;
        };
        self.demux.remove_call(slot);
        self.ids.remove(&call.id);
        self.free.push(slot);
        WorkerStats::decr(&self.stats.calls_active);
        let Call {
            browser,
            trunk_rtp,
            trunk_rtcp,
            mut done,
            ..
        } = *call;
        // Closing a socket removes it from the epoll set.
        drop((browser, trunk_rtp, trunk_rtcp));
        if let Some(done) = done.take() {
            let _ = done.send(());
        }
    }

    fn shutdown(&mut self) {
        for slot in 0..self.calls.len() {
            self.stop_call(slot);
        }
    }

    /// Reads one batch from `source` and forwards it; `true` when the
    /// socket may hold more.
    fn read_batch(&mut self, source: Source) -> bool {
        let fd = match source {
            Source::Shared => match &self.shared {
                Some(s) => s.as_raw_fd(),
                None => return false,
            },
            Source::Call(slot, leg) => match self.calls.get(slot).and_then(Option::as_ref) {
                Some(call) => match call.socket(leg) {
                    Some(s) => s.as_raw_fd(),
                    None => return false,
                },
                None => return false,
            },
        };
        let n = match self.recv.recv(fd) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            // An ICMP error of an earlier send reported here, say: it is
            // consumed, datagrams may still wait behind it.
            Err(_) => return true,
        };
        let now = Instant::now();
        if self.spare.len() < n {
            self.send_out();
        }
        let Worker {
            calls,
            demux,
            recv,
            out,
            spare,
            touched,
            shared,
            stats,
            ..
        } = self;
        for i in 0..n {
            let from = recv.from[i];
            let buf = &mut recv.bufs[i];
            let (slot, leg) = match source {
                Source::Call(slot, leg) => (slot, leg),
                Source::Shared => match demux.route(from, buf) {
                    Ok(slot) => (slot, LegId::Browser),
                    Err(why) => {
                        stats.add_unrouted(why == Unrouted::UnknownUfrag);
                        continue;
                    }
                },
            };
            let Some(call) = calls.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            let is_check = source == Source::Shared && buf.get(0..2) == Some(&[0, 1][..]);
            let forwarded = call.relay.handle_datagram_in_place(leg, from, buf, now);
            if is_check && call.relay.browser_address_valid(from) {
                demux.learn(slot, from);
            }
            if let Some((out_leg, to)) = forwarded {
                let fd = match (out_leg, &call.browser, shared.as_ref()) {
                    (LegId::Browser, Some(own), _) => Some(own.as_raw_fd()),
                    (LegId::Browser, None, shared) => shared.map(AsRawFd::as_raw_fd),
                    (leg, _, _) => call.socket(leg).map(AsRawFd::as_raw_fd),
                };
                if let (Some(fd), Some(mut fresh)) = (fd, spare.pop()) {
                    std::mem::swap(&mut fresh, buf);
                    out.push((fd, fresh, to));
                }
            }
            if !call.touched {
                call.touched = true;
                touched.push(slot);
            }
        }
        let mut touched = std::mem::take(&mut self.touched);
        for slot in touched.drain(..) {
            if let Some(call) = self.calls[slot].as_mut() {
                call.touched = false;
            }
            self.service(slot);
        }
        self.touched = touched;
        n == self.recv.capacity()
    }

    /// Sends the forwarded datagrams held, one `sendmmsg` per socket, and
    /// takes their buffers back. Runs at the end of each round, and before
    /// a call's sockets close (the held file descriptors must stay valid).
    fn send_out(&mut self) {
        if self.out.is_empty() {
            return;
        }
        // Group by socket; stable so a stream keeps its order.
        self.out.sort_by_key(|(fd, _, _)| *fd);
        let mut at = 0;
        while at < self.out.len() {
            let fd = self.out[at].0;
            let end = at + self.out[at..].iter().take_while(|o| o.0 == fd).count();
            let sent = self.send.send(
                fd,
                self.out[at..end]
                    .iter()
                    .map(|(_, buf, to)| (buf.as_slice(), *to)),
            );
            if sent.failed > 0 {
                tracing::debug!(failed = sent.failed, "media datagrams not sent");
            }
            at = end;
        }
        self.spare.extend(self.out.drain(..).map(|(_, buf, _)| buf));
    }

    /// After the relay of `slot` handled input: its STUN/DTLS answers go
    /// out, its events go to the B2BUA, its timer is re-armed; a call whose
    /// media is over ends.
    fn service(&mut self, slot: usize) {
        self.flush_transmits(slot);
        let Some(call) = self.calls[slot].as_mut() else {
            return;
        };
        let over = forward_events(call, &mut self.pending_events);
        if over {
            self.end_call(slot);
            return;
        }
        if let Some(deadline) = call.relay.poll_timeout() {
            // Lazy re-arming: a later deadline is noticed when the armed
            // one fires, so a packet that only pushes the media timeout
            // back costs no heap operation.
            if call.armed.is_none_or(|armed| deadline < armed) {
                call.armed = Some(deadline);
                self.timers.push(Reverse((deadline, slot, call.generation)));
            }
        }
    }

    /// Sends what the relay queued (STUN answers, DTLS flights, alerts).
    fn flush_transmits(&mut self, slot: usize) {
        let Some(call) = self.calls[slot].as_mut() else {
            return;
        };
        let shared = self.shared.as_ref();
        while let Some(t) = call.relay.poll_transmit() {
            let socket = match t.leg {
                LegId::Browser => call.browser.as_ref().or(shared),
                LegId::TrunkRtp => Some(&call.trunk_rtp),
                LegId::TrunkRtcp => Some(&call.trunk_rtcp),
            };
            // Not retried: the peer retransmits STUN and DTLS.
            if let Some(socket) = socket {
                let _ = socket.send_to(t.data, t.to);
            }
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, slot, generation))) = self.timers.peek().copied() {
            if at > now {
                return;
            }
            self.timers.pop();
            let Some(call) = self.calls.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            if call.generation != generation || call.armed != Some(at) {
                continue; // stale
            }
            call.armed = None;
            if call.relay.poll_timeout().is_some_and(|due| due <= now) {
                call.relay.handle_timeout(now);
            }
            self.service(slot);
        }
    }

    /// Terminal events that found the B2BUA's channel full: retried until
    /// delivered (or the B2BUA dropped its receiver).
    fn retry_events(&mut self) {
        for _ in 0..self.pending_events.len() {
            let Some((events, event)) = self.pending_events.pop_front() else {
                return;
            };
            match events.try_send(event) {
                Err(TrySendErrorTokio::Full(event)) => {
                    self.pending_events.push_back((events, event))
                }
                Ok(()) | Err(TrySendErrorTokio::Closed(_)) => {}
            }
        }
    }
}

use tokio::sync::mpsc::error::TrySendError as TrySendErrorTokio;

impl Call {
    fn socket(&self, leg: LegId) -> Option<&UdpSocket> {
        match leg {
            LegId::Browser => self.browser.as_ref(),
            LegId::TrunkRtp => Some(&self.trunk_rtp),
            LegId::TrunkRtcp => Some(&self.trunk_rtcp),
        }
    }
}

fn leg_index(leg: LegId) -> usize {
    match leg {
        LegId::Browser => 0,
        LegId::TrunkRtp => 1,
        LegId::TrunkRtcp => 2,
    }
}

/// Passes the relay's events to the B2BUA; `true` when the call's media is
/// over. Terminal events are never lost: if the channel is full they wait
/// in `pending` for the next loop turn.
fn forward_events(
    call: &mut Call,
    pending: &mut VecDeque<(mpsc::Sender<MediaEvent>, MediaEvent)>,
) -> bool {
    let mut over = false;
    while let Some(event) = call.relay.poll_event() {
        let _enter = call.span.enter();
        let (event, terminal) = match event {
            RelayEvent::BrowserConnected { suite } => {
                tracing::info!(%suite, "browser media connected");
                (MediaEvent::BrowserConnected { suite }, false)
            }
            RelayEvent::TrunkConnected { suite } => (MediaEvent::TrunkConnected { suite }, false),
            RelayEvent::PrivateConnected { suite } => {
                tracing::info!(
                    suite = suite.map_or("unknown", |s| s.name()),
                    private = true,
                    "private call media connected (relayed, never decrypted)"
                );
                (MediaEvent::PrivateConnected { suite }, false)
            }
            RelayEvent::Failed { reason } => (MediaEvent::Failed { reason }, true),
            RelayEvent::Timeout { leg } => {
                tracing::info!(leg = leg.label(), "media timeout");
                (MediaEvent::Timeout, true)
            }
            RelayEvent::BrowserClosed => {
                tracing::info!("browser closed DTLS");
                (MediaEvent::BrowserClosed, true)
            }
            RelayEvent::Dtmf { digit } => (MediaEvent::Dtmf { digit }, false),
            RelayEvent::TrunkUnsignaledSource { from } => {
                (MediaEvent::TrunkUnsignaledSource { from }, false)
            }
        };
        over |= terminal;
        match call.events.try_send(event) {
            Ok(()) | Err(TrySendErrorTokio::Closed(_)) => {}
            Err(TrySendErrorTokio::Full(event)) if terminal => {
                pending.push_back((call.events.clone(), event));
            }
            Err(TrySendErrorTokio::Full(_)) => {
                // A full channel means the B2BUA is not listening; media
                // that flows must not wait for it.
                tracing::warn!("media event dropped: the call's event channel is full");
            }
        }
    }
    over
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for slot in [0usize, 1, 7, 100_000] {
            for leg in [LegId::Browser, LegId::TrunkRtp, LegId::TrunkRtcp] {
                let t = token(slot, leg);
                assert!(t != WAKER && t != SHARED);
                assert_eq!(from_token(t), Some((slot, leg)));
            }
        }
        assert_eq!(from_token(WAKER), None);
        assert_eq!(from_token(SHARED), None);
    }
}
