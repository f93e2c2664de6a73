//! `/ws`: token check before the upgrade, then one task per socket that
//! forwards parsed commands to the call layer and events back as JSON.
//!
//! The task is the only owner of the socket and of the `SessionControl`;
//! when it ends (close, error, ping timeout, shutdown) it drops the
//! `SessionControl`, which hangs up the calls of this session.

use super::protocol::{self, MAX_MESSAGE_LEN};
use super::{auth, http::json_error, AppState, SignalingError};
use crate::calls::api::{SessionControl, SessionEvent};
use crate::types::AccountName;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;
use tokio::time::{interval_at, sleep_until, Instant, MissedTickBehavior};
use tracing::{debug, info, info_span, warn, Instrument};

/// Events queued for one browser before the call layer's `send` waits.
const EVENT_QUEUE: usize = 64;

/// Numbers sessions in logs, so two tabs of one account can be told apart.
static SESSION_SEQ: AtomicU64 = AtomicU64::new(1);

#[derive(Deserialize)]
pub(crate) struct WsQuery {
    token: Option<String>,
}

/// `GET /ws?token=T`. The token is checked before the upgrade so that a
/// refused browser gets a plain `401` and no socket.
pub(crate) async fn upgrade(
    State(state): State<AppState>,
    super::http::Peer(peer): super::http::Peer,
    query: Result<Query<WsQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let token = query.ok().and_then(|Query(q)| q.token).unwrap_or_default();
    if token.is_empty() {
        return json_error(StatusCode::UNAUTHORIZED, "missing token");
    }
    // The token itself is never logged: it is a bearer credential.
    let account = match auth::verify_token(state.config.token_secret.expose().as_bytes(), &token) {
        Ok(account) => account,
        Err(SignalingError::TokenExpired) => {
            debug!("websocket refused: token expired");
            return json_error(StatusCode::UNAUTHORIZED, "token expired");
        }
        Err(e) => {
            warn!(error = %e, "websocket refused: bad token");
            return json_error(StatusCode::UNAUTHORIZED, "invalid token");
        }
    };
    // A validly signed token for an account that is not configured (removed
    // since, or minted by mistake) must not reach the call layer.
    if !state.config.accounts.contains_key(&account) {
        warn!(account = ?account, "websocket refused: token for unknown account");
        return json_error(StatusCode::UNAUTHORIZED, "unknown account");
    }
    let slot = match state.take_ws_slot(&account, peer.map(|p| p.ip())) {
        Ok(slot) => slot,
        Err(why) => {
            warn!(account = ?account, peer = ?peer, why, "websocket refused");
            return json_error(StatusCode::TOO_MANY_REQUESTS, why);
        }
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    upgrade
        .max_message_size(MAX_MESSAGE_LEN)
        .max_frame_size(MAX_MESSAGE_LEN)
        // tungstenite's defaults (128 KiB read buffer, allocated up front, and
        // 128 KiB of write batching) are sized for bulk transfer; signaling
        // messages are a few KiB and an idle socket should cost little. The
        // read buffer still grows for a message up to MAX_MESSAGE_LEN, and each
        // message is written at once (we flush every send anyway).
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_MESSAGE_LEN * 4)
        .on_upgrade(move |socket| {
            let seq = SESSION_SEQ.fetch_add(1, Ordering::Relaxed);
            let span = info_span!("ws", account = %account, session = seq);
            async move {
                // Held for the socket's life: the caps count open sessions.
                let _slot = slot;
                run(state, AccountName(account), socket).await
            }
            .instrument(span)
        })
}

/// Why a session ended, for the log line.
enum End {
    ClosedByBrowser,
    ReadError(String),
    WriteError(String),
    IdleTimeout,
    Shutdown,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::ClosedByBrowser => f.write_str("closed by the browser"),
            End::ReadError(e) => write!(f, "read error: {e}"),
            End::WriteError(e) => write!(f, "write error: {e}"),
            End::IdleTimeout => f.write_str("no frame from the browser within the idle timeout"),
            End::Shutdown => f.write_str("gateway shutting down"),
        }
    }
}

/// Longest a single write to the browser may take.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Initial WebSocket read buffer: one typical SDP-bearing message.
const WS_READ_BUFFER: usize = 4 * 1024;

/// Drives one socket until it ends; see the module doc.
async fn run(state: AppState, account: AccountName, mut socket: WebSocket) {
    let (events_tx, mut events) = mpsc::channel(EVENT_QUEUE);
    let mut session = state.calls.attach(account, events_tx);
    info!("session opened");

    let timing = state.ws_timing;
    let mut shutdown = state.shutdown.subscribe();
    // `wait_for` also sees a shutdown that began before this session
    // subscribed; the guard it returns is dropped inside (it is not `Send`).
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stop);
    let mut ping = interval_at(Instant::now() + timing.ping_every, timing.ping_every);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    // The call layer may drop its sender; then stop polling the closed
    // channel instead of spinning on it.
    let mut events_open = true;

    let end = loop {
        tokio::select! {
            frame = socket.recv() => {
                let Some(frame) = frame else { break End::ClosedByBrowser };
                let frame = match frame {
                    Ok(frame) => frame,
                    Err(e) => {
                        let e = e.to_string();
                        // tungstenite reports an oversized frame or message as
                        // "... too long ..."; tell the browser why (1009).
                        if e.contains("too long") {
                            let _ = socket
                                .send(close(close_code::SIZE, "message too big"))
                                .await;
                        }
                        break End::ReadError(e);
                    }
                };
                last_heard = Instant::now();
                if let Err(end) = handle_frame(&mut socket, session.as_mut(), frame).await {
                    break end;
                }
            }
            event = events.recv(), if events_open => match event {
                Some(event) => {
                    // A browser that keeps its socket open but stops reading
                    // must not stall this session (nor, through the event
                    // queue, its calls): a write that cannot finish in time
                    // ends the session, which hangs its calls up.
                    match tokio::time::timeout(WRITE_TIMEOUT, send_event(&mut socket, &event)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => break End::WriteError(e.to_string()),
                        Err(_) => break End::WriteError("browser not reading (write timed out)".into()),
                    }
                }
                None => events_open = false,
            },
            _ = ping.tick() => {
                // Any frame counts as a sign of life; the pings make a silent
                // but healthy browser answer with pongs.
                match tokio::time::timeout(WRITE_TIMEOUT, socket.send(Message::Ping(Default::default()))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => break End::WriteError(e.to_string()),
                    Err(_) => break End::WriteError("browser not reading (write timed out)".into()),
                }
            }
            () = sleep_until(last_heard + timing.idle_timeout) => {
                let _ = socket.send(close(close_code::AWAY, "idle timeout")).await;
                break End::IdleTimeout;
            }
            () = &mut stop => {
                let _ = socket.send(close(close_code::AWAY, "gateway shutting down")).await;
                break End::Shutdown;
            }
        }
    };
    // Dropping the session is what hangs up this browser's calls.
    drop(session);
    info!(reason = %end, "session closed");
}

/// Handles one frame from the browser. `Err` ends the session.
async fn handle_frame(
    socket: &mut WebSocket,
    session: &mut dyn SessionControl,
    frame: Message,
) -> Result<(), End> {
    let refusal = match frame {
        Message::Text(text) => match protocol::parse_command(text.as_str()) {
            Ok(cmd) => {
                debug!(command = ?command_name(&cmd), "command");
                session.command(cmd);
                return Ok(());
            }
            Err(refusal) => refusal,
        },
        Message::Binary(_) => protocol::Refusal {
            id: None,
            code: 400,
            message: "binary frames are not accepted: send JSON text".into(),
        },
        // axum answers pings itself; a pong only proves liveness.
        Message::Ping(_) | Message::Pong(_) => return Ok(()),
        Message::Close(_) => return Err(End::ClosedByBrowser),
    };
    debug!(code = refusal.code, message = %refusal.message, "message refused");
    send_event(socket, &refusal.into_event())
        .await
        .map_err(|e| End::WriteError(e.to_string()))
}

/// The command's type and call id, for the debug log; never its SDP or number.
fn command_name(cmd: &crate::calls::api::SessionCommand) -> (&'static str, &str) {
    use crate::calls::api::SessionCommand;
    match cmd {
        SessionCommand::Call { id, .. } => ("call", &id.0),
        SessionCommand::Hangup { id } => ("hangup", &id.0),
        SessionCommand::Accept { id, .. } => ("accept", &id.0),
        SessionCommand::Reject { id } => ("reject", &id.0),
        SessionCommand::Dtmf { id, .. } => ("dtmf", &id.0),
        SessionCommand::Hold { id, hold: true } => ("hold", &id.0),
        SessionCommand::Hold { id, hold: false } => ("resume", &id.0),
        SessionCommand::Transfer { id, .. } => ("transfer", &id.0),
        SessionCommand::Answer { id, .. } => ("answer", &id.0),
    }
}

async fn send_event(socket: &mut WebSocket, event: &SessionEvent) -> Result<(), axum::Error> {
    socket
        .send(Message::Text(protocol::event_json(event).into()))
        .await
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}
