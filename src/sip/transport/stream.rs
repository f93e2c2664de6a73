//! SIP over TCP and TLS: frames cut by Content-Length, one connection per
//! peer address and transport (accepted or opened), reopened on send when it
//! has closed.
//!
//! Hygiene, because a connection costs a task, buffers and a descriptor: a
//! connection from a stranger (outside every trunk's addresses) or a banned
//! source is closed at accept unless strangers are answered; each address
//! holds at most `per_source` connections; a TLS handshake and every started
//! message must complete within `message` (a peer that sends half a message
//! and stalls is closed), and a connection with no traffic at all for `idle`
//! is closed (before its first complete message, `message` applies).
//!
//! Toward a TLS trunk the connection is made only with that trunk's
//! profile (`TlsPeer`): its certificate is checked, and when the check
//! fails the send fails. Nothing is ever sent in plaintext instead.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{door, upgrade, EndpointStats, Inner};
use crate::sip::message::{frame_len, Frame};
use crate::sip::tls::{describe_handshake_error, TlsPeer};
use crate::sip::{SipError, Transport};

/// Messages queued for one connection's writer.
const WRITE_QUEUE: usize = 64;
/// Most SIP TCP and TLS connections at once; more are closed on accept.
/// Trunks use a handful; thousands are a flood.
const MAX_CONNECTIONS: usize = 512;
/// Pause after a failed accept: the usual cause is running out of file
/// descriptors, which retrying at once only turns into a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long opening a connection to a peer may take (TCP, then TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The time limits and caps of stream connections (`[sip.limits]`).
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    pub idle: Duration,
    pub message: Duration,
    pub per_source: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            idle: Duration::from_secs(300),
            message: Duration::from_secs(10),
            per_source: 16,
        }
    }
}

type Key = (Transport, SocketAddr);
type Queue = (mpsc::Sender<Bytes>, mpsc::Receiver<Bytes>);

#[derive(Default)]
pub(super) struct Connections {
    map: Mutex<HashMap<Key, mpsc::Sender<Bytes>>>,
    /// TLS profiles of trunks by address; see [`Connections::tls_peer`].
    tls_peers: Mutex<HashMap<SocketAddr, TlsPeer>>,
    /// Connection tasks, aborted with the endpoint.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Connections {
    fn get(&self, key: &Key) -> Option<mpsc::Sender<Bytes>> {
        self.map.lock().ok()?.get(key).cloned()
    }

    fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    fn count_from(&self, ip: IpAddr) -> usize {
        self.map
            .lock()
            .map(|m| m.keys().filter(|(_, a)| a.ip() == ip).count())
            .unwrap_or(0)
    }

    fn insert(&self, key: Key, tx: mpsc::Sender<Bytes>) {
        if let Ok(mut m) = self.map.lock() {
            m.insert(key, tx);
        }
    }

    /// Forgets `key` if it is still served by the connection `tx` belongs to.
    fn remove_if_same(&self, key: &Key, tx: &mpsc::Sender<Bytes>) {
        if let Ok(mut m) = self.map.lock() {
            if m.get(key).is_some_and(|cur| cur.same_channel(tx)) {
                m.remove(key);
            }
        }
    }

    pub(super) fn add_tls_peer(&self, addr: SocketAddr, peer: TlsPeer) {
        if let Ok(mut m) = self.tls_peers.lock() {
            m.insert(addr, peer);
        }
    }

    /// The TLS profile for `dest`: the trunk at that address, else the
    /// trunk on that host (a dialog's Contact may name another port of the
    /// same trunk). None: no TLS connection may be opened there.
    fn tls_peer(&self, dest: SocketAddr) -> Option<TlsPeer> {
        let peers = self.tls_peers.lock().ok()?;
        peers.get(&dest).cloned().or_else(|| {
            peers
                .iter()
                .find(|(addr, _)| addr.ip() == dest.ip())
                .map(|(_, p)| p.clone())
        })
    }

    fn track(&self, task: tokio::task::JoinHandle<()>) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.retain(|t| !t.is_finished());
            tasks.push(task);
        }
    }

    pub(super) fn close_all(&self) {
        if let Ok(mut m) = self.map.lock() {
            m.clear();
        }
        if let Ok(tasks) = self.tasks.lock() {
            for t in tasks.iter() {
                t.abort();
            }
        }
    }
}

/// Accepts TCP connections (and, with `tls`, makes them TLS) until the
/// endpoint is gone.
pub(super) async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    endpoint: Weak<Inner>,
) {
    let transport = if tls.is_some() {
        Transport::Tls
    } else {
        Transport::Tcp
    };
    let mut last_warning: Option<std::time::Instant> = None;
    loop {
        let accepted = listener.accept().await;
        let Some(inner) = upgrade(&endpoint) else {
            return;
        };
        match accepted {
            Ok((stream, peer)) => {
                if let Some(why) = refusal(&inner, peer) {
                    EndpointStats::bump(&inner.stats.connections_refused);
                    tracing::debug!(%peer, %transport, why, "SIP connection refused");
                    continue;
                }
                tracing::debug!(%peer, %transport, "SIP connection accepted");
                let weak = Arc::downgrade(&inner);
                let limits = inner.stream_limits;
                let task = match tls.clone() {
                    None => tokio::spawn(serve(weak, stream, peer, Transport::Tcp, None)),
                    Some(acceptor) => tokio::spawn(async move {
                        // The handshake runs in the connection's task, so a
                        // slow or silent client cannot hold up accepts.
                        let handshake =
                            tokio::time::timeout(limits.message, acceptor.accept(stream)).await;
                        match handshake {
                            Ok(Ok(tls)) => {
                                let (_, conn) = tls.get_ref();
                                tracing::debug!(
                                    %peer,
                                    version = ?conn.protocol_version(),
                                    group = ?conn.negotiated_key_exchange_group().map(|g| g.name()),
                                    "SIP TLS connection"
                                );
                                serve(weak, tls, peer, Transport::Tls, None).await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "SIP TLS handshake failed")
                            }
                            Err(_) => {
                                if let Some(inner) = upgrade(&weak) {
                                    EndpointStats::bump(&inner.stats.connections_timed_out);
                                }
                                tracing::debug!(%peer, "SIP TLS handshake timed out")
                            }
                        }
                    }),
                };
                inner.streams.track(task);
            }
            Err(e) => {
                // One warning a minute at most: a flood must not become a
                // log flood.
                let now = std::time::Instant::now();
                if last_warning.is_none_or(|t| now.duration_since(t).as_secs() >= 60) {
                    last_warning = Some(now);
                    tracing::warn!(error = %e, %transport, "SIP accept failed (pausing accepts briefly)");
                }
                drop(inner);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Why a new connection from `peer` is closed at once, if it is.
fn refusal(inner: &Inner, peer: SocketAddr) -> Option<&'static str> {
    match inner.door.admit(peer.ip(), std::time::Instant::now()) {
        door::Verdict::Banned { .. } => return Some("source banned"),
        door::Verdict::Stranger if !inner.door.answer_strangers() => {
            inner.door.strangers_ignored.fetch_add(1, Ordering::Relaxed);
            return Some("stranger");
        }
        _ => {}
    }
    if inner.streams.len() >= MAX_CONNECTIONS {
        return Some("too many connections");
    }
    if inner.streams.count_from(peer.ip()) >= inner.stream_limits.per_source {
        return Some("too many connections from this source");
    }
    None
}

/// Sends over the connection to `dest`, opening one if needed.
///
/// Boxed as `Send` by hand: a connection's task dispatches what it reads,
/// which may send, which may spawn a connection's task; the compiler cannot
/// see through that cycle on its own.
pub(super) fn send(
    inner: &Arc<Inner>,
    dest: SocketAddr,
    transport: Transport,
    data: Bytes,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SipError>> + Send + '_>> {
    Box::pin(send_inner(inner, dest, transport, data))
}

async fn send_inner(
    inner: &Arc<Inner>,
    dest: SocketAddr,
    transport: Transport,
    data: Bytes,
) -> Result<(), SipError> {
    let err = |kind, what: &str| SipError::Send {
        transport,
        addr: dest,
        source: std::io::Error::new(kind, what.to_string()),
    };
    let key = (transport, dest);
    if let Some(tx) = inner.streams.get(&key) {
        // Never wait on a peer that stopped reading: a full write queue is
        // a send error for this message (the transaction retries or times
        // out), not a stall of every call to that peer.
        match tx.try_send(data.clone()) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Err(err(
                    std::io::ErrorKind::WouldBlock,
                    "peer not reading (write queue full)",
                ));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => inner.streams.remove_if_same(&key, &tx),
        }
    }
    // Checked before connecting: without a profile there is nothing to
    // verify the peer against, so no connection at all.
    let tls = match transport {
        Transport::Tls => Some(inner.streams.tls_peer(dest).ok_or_else(|| SipError::Tls {
            addr: dest,
            reason: "no TLS trunk configured at this address".into(),
        })?),
        _ => None,
    };
    // A dead or filtered trunk would otherwise hold the call for the
    // kernel's SYN retries (about two minutes).
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(dest)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => {
            return Err(SipError::Send {
                transport,
                addr: dest,
                source,
            })
        }
        Err(_) => return Err(err(std::io::ErrorKind::TimedOut, "connect timed out")),
    };
    let weak = Arc::downgrade(inner);
    let (tx, task) = match tls {
        None => {
            tracing::debug!(peer = %dest, "SIP TCP connection opened");
            let (tx, rx) = mpsc::channel(WRITE_QUEUE);
            inner.streams.insert(key, tx.clone());
            let queue = (tx.clone(), rx);
            (
                tx,
                tokio::spawn(serve(weak, stream, dest, transport, Some(queue))),
            )
        }
        Some(peer) => {
            let connector = TlsConnector::from(peer.config.clone());
            let handshake = tokio::time::timeout(
                CONNECT_TIMEOUT,
                connector.connect(peer.server_name.clone(), stream),
            )
            .await;
            let tls = match handshake {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    let reason = describe_handshake_error(&e);
                    tracing::warn!(trunk = %peer.trunk, peer = %dest, %reason, "TLS to the trunk failed; nothing sent");
                    EndpointStats::bump(&inner.stats.tls_failures);
                    return Err(SipError::Tls { addr: dest, reason });
                }
                Err(_) => {
                    EndpointStats::bump(&inner.stats.tls_failures);
                    return Err(SipError::Tls {
                        addr: dest,
                        reason: "TLS handshake timed out".into(),
                    });
                }
            };
            tracing::debug!(
                trunk = %peer.trunk,
                peer = %dest,
                version = ?tls.get_ref().1.protocol_version(),
                group = ?tls.get_ref().1.negotiated_key_exchange_group().map(|g| g.name()),
                "SIP TLS connection opened"
            );
            let (tx, rx) = mpsc::channel(WRITE_QUEUE);
            inner.streams.insert(key, tx.clone());
            let queue = (tx.clone(), rx);
            (
                tx,
                tokio::spawn(serve(weak, tls, dest, transport, Some(queue))),
            )
        }
    };
    inner.streams.track(task);
    tx.send(data).await.map_err(|_| SipError::Send {
        transport,
        addr: dest,
        source: std::io::Error::new(std::io::ErrorKind::BrokenPipe, "connection closed"),
    })
}

/// Reads frames from one connection and writes what is queued for it,
/// until either side ends or a time limit passes. `queue` is the write
/// queue when the caller registered it already (connections we open).
async fn serve<S>(
    endpoint: Weak<Inner>,
    stream: S,
    peer: SocketAddr,
    transport: Transport,
    queue: Option<Queue>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let key = (transport, peer);
    // A connection we opened is a trunk's: the idle clock applies from the
    // start, it need not prove itself with a first message.
    let opened_by_us = queue.is_some();
    let (own_tx, mut rx, limits) = {
        let Some(inner) = upgrade(&endpoint) else {
            return;
        };
        let (tx, rx) = queue.unwrap_or_else(|| {
            let (tx, rx) = mpsc::channel(WRITE_QUEUE);
            inner.streams.insert(key, tx.clone());
            (tx, rx)
        });
        (tx, rx, inner.stream_limits)
    };
    let (mut reader, mut writer) = tokio::io::split(stream);
    let writer_task = tokio::spawn(async move {
        while let Some(data) = rx.recv().await {
            if let Err(e) = writer.write_all(&data).await {
                tracing::debug!(%peer, error = %e, "SIP write failed");
                break;
            }
        }
        let _ = writer.shutdown().await;
    });

    let mut buf = BytesMut::with_capacity(8192);
    let mut seen_message = opened_by_us;
    let mut last_traffic = Instant::now();
    let mut message_started: Option<Instant> = None;
    let why = 'read: loop {
        // Before its first message a connection is on the short clock;
        // a started message must finish on it too, however slowly it drips.
        let deadline = match message_started {
            Some(start) => start + limits.message,
            None if !seen_message => last_traffic + limits.message,
            None => last_traffic + limits.idle,
        };
        let read = tokio::time::timeout_at(deadline, reader.read_buf(&mut buf)).await;
        match read {
            Err(_) => {
                if let Some(inner) = upgrade(&endpoint) {
                    EndpointStats::bump(&inner.stats.connections_timed_out);
                }
                break if message_started.is_some() {
                    "message not completed in time"
                } else {
                    "idle"
                };
            }
            Ok(Ok(0)) => break "closed by peer",
            Ok(Err(_)) => break "read error",
            Ok(Ok(_)) => {}
        }
        last_traffic = Instant::now();
        loop {
            match frame_len(&buf) {
                Ok(None) => break,
                Ok(Some(Frame::KeepAlive(n))) => buf.advance(n),
                Ok(Some(Frame::Message(n))) => {
                    let frame = buf.split_to(n).freeze();
                    seen_message = true;
                    let Some(inner) = upgrade(&endpoint) else {
                        break 'read "endpoint stopped";
                    };
                    inner.dispatch(&frame, peer, transport).await;
                }
                Err(e) => {
                    // Framing is lost: nothing after this can be trusted.
                    tracing::debug!(%peer, error = %e, "SIP framing lost");
                    break 'read "framing lost";
                }
            }
        }
        message_started = if buf.is_empty() {
            None
        } else {
            message_started.or(Some(last_traffic))
        };
    };
    if let Some(inner) = upgrade(&endpoint) {
        inner.streams.remove_if_same(&key, &own_tx);
    }
    // A peer that stopped reading would hold the writer forever.
    writer_task.abort();
    tracing::debug!(%peer, why, "SIP {transport} connection closed");
}
