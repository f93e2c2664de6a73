//! The thin tokio driver of one call's media: one task owns the call's three
//! sockets and its [`CallRelay`], and `select!`s over the sockets, the relay's
//! next deadline and a command channel. No task or channel hop per packet:
//! a datagram goes socket → relay → socket inside this one task.
//!
//! Everything protocol-related is in `relay.rs`; this file only moves bytes
//! and time. That split is what lets a later change run many `CallRelay`s on
//! a fixed set of media worker threads (calls sharded by port, recvmmsg /
//! sendmmsg or quinn-udp GSO/GRO batches, one `Instant` per batch) by
//! replacing this file alone: the relay already takes `(LegId, from, bytes,
//! now)` and hands back `(LegId, to, bytes)`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::counters::MediaStats;
use super::engine::MediaEvent;
use super::relay::{CallRelay, LegId, RelayEvent, TrunkLegParams};
use crate::types::PayloadType;

/// The sockets of one call.
pub(crate) struct CallSockets {
    pub browser: UdpSocket,
    pub trunk_rtp: UdpSocket,
    pub trunk_rtcp: UdpSocket,
}

/// A renegotiated trunk leg and payload map (re-INVITE).
pub(crate) type TrunkUpdate = (TrunkLegParams, Vec<(PayloadType, PayloadType, u32)>);

/// What the B2BUA can ask of a running call.
pub(crate) enum Command {
    /// Boxed: re-INVITEs are rare, the channel's slots stay small.
    UpdateTrunk(Box<TrunkUpdate>),
    /// How long a leg may be silent before the call's media times out.
    MediaTimeout(std::time::Duration),
    /// End the call: DTLS close_notify to the browser, then exit.
    Stop,
    /// A digit toward a side (RFC 4733); the relay schedules its packets.
    Dtmf(super::rewrite::Toward, crate::types::DtmfDigit),
}

/// Largest datagram we read; anything longer is truncated by the kernel and
/// then fails authentication.
const RECV_BUFFER: usize = 2048;
/// Datagrams read from one socket per wakeup before looking at the others:
/// amortises the `select!` and keeps one busy socket from starving the rest.
const BATCH: usize = 32;

/// Keeps `calls_active` exact however the task ends (stop, abort, panic).
struct ActiveGuard(Arc<MediaStats>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.calls_active.fetch_sub(1, Relaxed);
    }
}

/// Runs one call until `Command::Stop`, the command channel closes (handle
/// dropped) or the relay reports a terminal event (failure, timeout).
pub(crate) async fn run(
    mut relay: CallRelay,
    sockets: CallSockets,
    events: mpsc::Sender<MediaEvent>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    stats: Arc<MediaStats>,
) {
    stats.calls_active.fetch_add(1, Relaxed);
    stats.calls_started.fetch_add(1, Relaxed);
    let _guard = ActiveGuard(stats);

    let mut browser_buf = vec![0u8; RECV_BUFFER];
    let mut rtp_buf = vec![0u8; RECV_BUFFER];
    let mut rtcp_buf = vec![0u8; RECV_BUFFER];
    // One timer for the whole call, moved only when the deadline changes:
    // no timer registration per packet.
    let far = || tokio::time::Instant::now() + std::time::Duration::from_secs(86_400);
    let sleep = tokio::time::sleep_until(far());
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;

    loop {
        flush(&mut relay, &sockets).await;
        if forward_events(&mut relay, &events).await {
            break;
        }
        let deadline = relay.poll_timeout();
        if deadline != armed {
            armed = deadline;
            let at = deadline.map_or_else(far, tokio::time::Instant::from_std);
            sleep.as_mut().reset(at);
        }

        tokio::select! {
            r = sockets.browser.recv_from(&mut browser_buf) => {
                drain(&mut relay, &sockets.browser, LegId::Browser, &mut browser_buf, r);
            }
            r = sockets.trunk_rtp.recv_from(&mut rtp_buf) => {
                drain(&mut relay, &sockets.trunk_rtp, LegId::TrunkRtp, &mut rtp_buf, r);
            }
            r = sockets.trunk_rtcp.recv_from(&mut rtcp_buf) => {
                drain(&mut relay, &sockets.trunk_rtcp, LegId::TrunkRtcp, &mut rtcp_buf, r);
            }
            () = &mut sleep, if armed.is_some() => {
                relay.handle_timeout(Instant::now());
                armed = None;
            }
            cmd = commands.recv() => match cmd {
                Some(Command::MediaTimeout(timeout)) => relay.set_media_timeout(timeout),
                Some(Command::Dtmf(toward, digit)) => {
                    // The B2BUA checked telephone-event was negotiated; a
                    // refusal here (queue full, media over) loses the digit
                    // (not logged: digits are PINs and card numbers).
                    if let Err(e) = relay.send_dtmf(toward, digit, Instant::now()) {
                        tracing::warn!(reason = %e, "DTMF digit not sent");
                    }
                }
                Some(Command::UpdateTrunk(update)) => {
                    let (trunk, payload_map) = *update;
                    relay.update_trunk(trunk, payload_map);
                }
                // Stop, or the handle was dropped.
                Some(Command::Stop) | None => {
                    relay.close(Instant::now());
                    break;
                }
            },
        }
    }
    // Last words (the DTLS close_notify): UDP sends do not wait long.
    flush(&mut relay, &sockets).await;
}

/// Feeds the datagram `first` and whatever else is already queued on the
/// socket (up to `BATCH`) to the relay, with one clock reading.
fn drain(
    relay: &mut CallRelay,
    socket: &UdpSocket,
    leg: LegId,
    buf: &mut [u8],
    first: std::io::Result<(usize, std::net::SocketAddr)>,
) {
    let now = Instant::now();
    // Errors (ICMP port unreachable reported on a later recv, for one) say
    // nothing about the next datagram: skip them.
    if let Ok((n, from)) = first {
        relay.handle_datagram(leg, from, &buf[..n], now);
    }
    for _ in 1..BATCH {
        match socket.try_recv_from(buf) {
            Ok((n, from)) => relay.handle_datagram(leg, from, &buf[..n], now),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(_) => continue,
        }
    }
}

/// Sends everything the relay queued. UDP send errors are not retried:
/// media is loss-tolerant, and the counters already show what was queued.
async fn flush(relay: &mut CallRelay, sockets: &CallSockets) {
    while let Some(t) = relay.poll_transmit() {
        let socket = match t.leg {
            LegId::Browser => &sockets.browser,
            LegId::TrunkRtp => &sockets.trunk_rtp,
            LegId::TrunkRtcp => &sockets.trunk_rtcp,
        };
        match socket.try_send_to(t.data, t.to) {
            Ok(_) => {}
            // Socket buffer full: wait for room rather than drop.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let _ = socket.send_to(t.data, t.to).await;
            }
            Err(_) => {}
        }
    }
}

/// Passes relay events to the B2BUA; `true` when the call's media is over.
async fn forward_events(relay: &mut CallRelay, events: &mpsc::Sender<MediaEvent>) -> bool {
    let mut over = false;
    while let Some(event) = relay.poll_event() {
        let terminal = !matches!(
            event,
            RelayEvent::BrowserConnected { .. } | RelayEvent::Dtmf { .. }
        );
        let event = match event {
            RelayEvent::BrowserConnected { suite } => {
                tracing::info!(%suite, "browser media connected");
                MediaEvent::BrowserConnected { suite }
            }
            RelayEvent::Failed { reason } => {
                over = true;
                MediaEvent::Failed { reason }
            }
            RelayEvent::Timeout { leg } => {
                over = true;
                tracing::info!(leg = leg.label(), "media timeout");
                MediaEvent::Timeout
            }
            RelayEvent::Dtmf { digit } => MediaEvent::Dtmf { digit },
            RelayEvent::BrowserClosed => {
                over = true;
                tracing::info!("browser closed DTLS");
                MediaEvent::BrowserClosed
            }
        };
        if terminal {
            // The media task ends after this; the B2BUA must learn why.
            let _ = events.send(event).await;
        } else if events.try_send(event).is_err() {
            // A full channel means the B2BUA is not listening; media that
            // flows must not wait for it.
            tracing::warn!("media event dropped: the call's event channel is full or closed");
        }
    }
    over
}
