//! SIP over TCP: frames cut by Content-Length, one connection per peer
//! address (accepted or opened), reopened on send when it has closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::{upgrade, Inner};
use crate::sip::message::{frame_len, Frame};
use crate::sip::{SipError, Transport};

/// Messages queued for one connection's writer.
const WRITE_QUEUE: usize = 64;

#[derive(Default)]
pub(super) struct Connections {
    map: Mutex<HashMap<SocketAddr, mpsc::Sender<Bytes>>>,
}

impl Connections {
    fn get(&self, peer: &SocketAddr) -> Option<mpsc::Sender<Bytes>> {
        self.map.lock().ok()?.get(peer).cloned()
    }

    fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    fn insert(&self, peer: SocketAddr, tx: mpsc::Sender<Bytes>) {
        if let Ok(mut m) = self.map.lock() {
            m.insert(peer, tx);
        }
    }

    /// Forgets `peer` if it is still served by the connection `tx` belongs to.
    fn remove_if_same(&self, peer: &SocketAddr, tx: &mpsc::Sender<Bytes>) {
        if let Ok(mut m) = self.map.lock() {
            if m.get(peer).is_some_and(|cur| cur.same_channel(tx)) {
                m.remove(peer);
            }
        }
    }

    pub(super) fn close_all(&self) {
        if let Ok(mut m) = self.map.lock() {
            m.clear();
        }
    }
}

/// Most SIP TCP connections at once; more are closed on accept. Trunks use
/// a handful; thousands are a flood.
const MAX_CONNECTIONS: usize = 512;
/// Pause after a failed accept: the usual cause is running out of file
/// descriptors, which retrying at once only turns into a busy loop.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

pub(super) async fn accept_loop(listener: TcpListener, endpoint: Weak<Inner>) {
    let mut last_warning: Option<std::time::Instant> = None;
    loop {
        let accepted = listener.accept().await;
        let Some(inner) = upgrade(&endpoint) else {
            return;
        };
        match accepted {
            Ok((stream, peer)) => {
                if inner.tcp.len() >= MAX_CONNECTIONS {
                    tracing::debug!(%peer, "SIP TCP connection refused: too many open");
                    drop(stream);
                    continue;
                }
                tracing::debug!(%peer, "SIP TCP connection accepted");
                spawn_connection(&inner, stream, peer);
            }
            Err(e) => {
                // One warning a minute at most: a flood must not become a
                // log flood.
                let now = std::time::Instant::now();
                if last_warning.is_none_or(|t| now.duration_since(t).as_secs() >= 60) {
                    last_warning = Some(now);
                    tracing::warn!(error = %e, "SIP TCP accept failed (pausing accepts briefly)");
                }
                drop(inner);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// How long opening a connection to a peer may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Sends over the connection to `dest`, opening one if needed.
pub(super) async fn send(
    inner: &Arc<Inner>,
    dest: SocketAddr,
    data: Bytes,
) -> Result<(), SipError> {
    let err = |kind, what: &str| SipError::Send {
        transport: Transport::Tcp,
        addr: dest,
        source: std::io::Error::new(kind, what.to_string()),
    };
    if let Some(tx) = inner.tcp.get(&dest) {
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
            Err(mpsc::error::TrySendError::Closed(_)) => inner.tcp.remove_if_same(&dest, &tx),
        }
    }
    // A dead or filtered trunk would otherwise hold the call for the
    // kernel's SYN retries (about two minutes).
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(dest)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => {
            return Err(SipError::Send {
                transport: Transport::Tcp,
                addr: dest,
                source,
            })
        }
        Err(_) => return Err(err(std::io::ErrorKind::TimedOut, "connect timed out")),
    };
    tracing::debug!(peer = %dest, "SIP TCP connection opened");
    let tx = spawn_connection(inner, stream, dest);
    tx.send(data).await.map_err(|_| SipError::Send {
        transport: Transport::Tcp,
        addr: dest,
        source: std::io::Error::new(std::io::ErrorKind::BrokenPipe, "connection closed"),
    })
}

fn spawn_connection(
    inner: &Arc<Inner>,
    stream: TcpStream,
    peer: SocketAddr,
) -> mpsc::Sender<Bytes> {
    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
    inner.tcp.insert(peer, tx.clone());

    let writer_task = tokio::spawn(async move {
        while let Some(data) = rx.recv().await {
            if let Err(e) = writer.write_all(&data).await {
                tracing::debug!(%peer, error = %e, "SIP TCP write failed");
                break;
            }
        }
    });

    let weak = Arc::downgrade(inner);
    let own_tx = tx.clone();
    let reader_task = tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(8192);
        'read: loop {
            match reader.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            loop {
                match frame_len(&buf) {
                    Ok(None) => break,
                    Ok(Some(Frame::KeepAlive(n))) => buf.advance(n),
                    Ok(Some(Frame::Message(n))) => {
                        let frame = buf.split_to(n).freeze();
                        let Some(inner) = upgrade(&weak) else {
                            break 'read;
                        };
                        inner.dispatch(&frame, peer, Transport::Tcp).await;
                    }
                    Err(e) => {
                        // Framing is lost: nothing after this can be trusted.
                        tracing::debug!(%peer, error = %e, "closing SIP TCP connection");
                        break 'read;
                    }
                }
            }
        }
        if let Some(inner) = upgrade(&weak) {
            inner.tcp.remove_if_same(&peer, &own_tx);
        }
        tracing::debug!(%peer, "SIP TCP connection closed");
    });
    if let Ok(mut tasks) = inner.tasks.lock() {
        // Keep the listener tasks (first in the list) even when finished:
        // `SipEndpoint::is_running` reports on them.
        let listeners = 1 + usize::from(inner.tcp_addr.is_some());
        let mut index = 0;
        tasks.retain(|t| {
            index += 1;
            index <= listeners || !t.is_finished()
        });
        tasks.push(writer_task);
        tasks.push(reader_task);
    }
    tx
}
