//! The tokio driver of one [`Call`]: it owns the call's SIP channel, its
//! media allocation and handle, and the event senders of the sessions the
//! call talks to; it feeds their input to the sans-IO call with the current
//! time and carries out what the call outputs. No call logic lives here.

use super::api::SessionEvent;
use super::call::{Call, MediaCommand, Output, SessionInput};
use super::cause::Side;
use super::sessions::SessionKey;
use crate::cdr::{CdrEvent, CdrStore, LegFigures};
use crate::media::{MediaAllocation, MediaEvent, MediaHandle};
use crate::sip::message;
use crate::sip::target::{Host, Target};
use crate::sip::transport::{CallMessage, CallQueue, SipEndpoint};
use crate::stats::live::{CallStart, CallState, Direction, LiveCall, LiveCalls, SdpRole};
use crate::stats::CallStats;
use futures_util::stream::{FuturesUnordered, StreamExt};
use rsip::SipMessage;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use std::time::SystemTime;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// What the driver needs besides the call.
pub struct CallIo {
    pub sip: SipEndpoint,
    pub sip_rx: CallQueue,
    pub allocation: MediaAllocation,
    /// The sessions the call may address, with their event senders.
    pub sessions: Vec<(SessionKey, mpsc::Sender<SessionEvent>)>,
    /// Input from the sessions. When it closes, `closed_means` is the input
    /// (an outgoing call's only session dropped its sender: its hangup).
    pub commands: mpsc::UnboundedReceiver<SessionInput>,
    pub closed_means: Option<SessionInput>,
    /// Sessions that open while the call rings (incoming calls), with
    /// their event senders.
    pub joins: Option<mpsc::UnboundedReceiver<(SessionKey, mpsc::Sender<SessionEvent>)>>,
    pub stats: Arc<CallStats>,
    /// Called once the browsers have been told the call ended (frees the
    /// call's id for its sessions).
    pub on_over: Box<dyn FnOnce() + Send>,
    /// The operator's view of this call, and the table it sits in.
    pub live: Arc<LiveCall>,
    pub live_calls: Arc<LiveCalls>,
    /// Where the call's record goes (its `Started` is already sent).
    pub cdr: CdrStore,
    /// When the call began (browser `call`, trunk INVITE), for setup times.
    pub started: Instant,
    pub direction: Direction,
}

type Closed = Pin<Box<dyn Future<Output = SessionKey> + Send>>;

/// Runs `call` until it is finished.
pub async fn run(mut call: Call, io: CallIo) {
    let CallIo {
        sip,
        mut sip_rx,
        allocation,
        sessions,
        mut commands,
        closed_means,
        joins,
        stats,
        on_over,
        live,
        live_calls,
        cdr,
        started,
        direction,
    } = io;
    let mut answered_recorded = false;
    let mut concluded = false;
    let sip_call_id = call.sip_call_id();
    let mut allocation = Some(allocation);
    let mut media: Option<MediaHandle> = None;
    let (media_tx, mut media_rx) = mpsc::channel::<MediaEvent>(16);
    // A session whose socket closes (its event receiver dropped) is gone.
    let mut gone: FuturesUnordered<Closed> = sessions
        .iter()
        .map(|(key, tx)| {
            let (key, tx) = (*key, tx.clone());
            Box::pin(async move {
                tx.closed().await;
                key
            }) as Closed
        })
        .collect();
    let mut senders: HashMap<SessionKey, mpsc::Sender<SessionEvent>> =
        sessions.into_iter().collect();
    let mut joins = joins;
    let mut commands_open = true;
    let mut closed_means = closed_means;
    let mut on_over = Some(on_over);
    let mut names = Names::default();
    // The call's further dialogs (a trunk's REFER carried out): their
    // messages are forwarded here by a task per Call-ID.
    let (extra_tx, mut extra_rx) = mpsc::channel::<Box<CallMessage>>(64);
    let mut extra_ids: Vec<String> = Vec::new();

    loop {
        let mut transport_failed: Option<String> = None;
        while let Some(output) = call.poll_output() {
            match output {
                Output::Sip { to, bytes } => {
                    observe_sip(&live, "out", &bytes);
                    let Some(addr) = names.address(&to).await else {
                        // The transaction's timers end what cannot be sent
                        // (logged once, where the name failed).
                        tracing::debug!(to = %to, "SIP destination does not resolve; message dropped");
                        continue;
                    };
                    if let Err(e) = sip.send(addr, to.transport, bytes).await {
                        warn!(error = %e, "sending to the trunk failed");
                        // Over TCP and TLS a failed send is a transport
                        // error (RFC 3261 8.1.3.1); over UDP the timers decide.
                        if to.transport.is_reliable() {
                            transport_failed = Some(match e {
                                crate::sip::SipError::Tls { reason, .. } => reason,
                                _ => "the trunk cannot be reached".into(),
                            });
                        }
                    }
                }
                Output::Session { session, event } => {
                    observe_event(&live, &event);
                    if let Some(tx) = senders.get(&session) {
                        send(tx, event);
                    }
                }
                Output::Media(cmd) => match cmd {
                    MediaCommand::Start(params) => {
                        if let Some(a) = allocation.take() {
                            let handle = a.start(*params, media_tx.clone());
                            live.set_counters(handle.counters());
                            media = Some(handle);
                        }
                    }
                    MediaCommand::SetTimeout(t) => {
                        if let Some(m) = &media {
                            m.set_media_timeout(t);
                        }
                    }
                    MediaCommand::Hold(hold) => {
                        if let Some(m) = &media {
                            m.set_hold(hold);
                        }
                    }
                    MediaCommand::UpdateTrunk(update) => {
                        if let Some(m) = &media {
                            m.update_trunk(*update);
                        }
                    }
                    MediaCommand::Dtmf(toward, digit) => {
                        if let Some(m) = &media {
                            m.send_dtmf(toward, digit);
                        }
                    }
                    MediaCommand::Stop => {
                        if let Some(m) = media.take() {
                            info!(counters = ?m.counters(), "media stopped");
                            m.stop();
                        }
                        allocation = None;
                    }
                },
                Output::Connected => {
                    stats.call_connected(direction, started.elapsed());
                    let info = call.info();
                    stats.legs_connected(
                        info.browser_security.as_deref(),
                        info.trunk_security.as_deref(),
                        info.private,
                    );
                    if info.private {
                        stats.private_call_connected();
                    }
                }
                Output::SecureMediaFallback => stats.secure_media_fallback(),
                Output::Dtmf {
                    to_trunk,
                    info,
                    digits,
                } => stats.dtmf(to_trunk, info, digits),
                Output::ListenCallId(id) => {
                    let mut rx = sip.register_call(&id);
                    let tx = extra_tx.clone();
                    // Ends when the endpoint forgets the Call-ID
                    // (`unregister_call` below) or the call is gone.
                    tokio::spawn(async move {
                        while let Some(m) = rx.recv().await {
                            if tx.send(m).await.is_err() {
                                break;
                            }
                        }
                    });
                    extra_ids.push(id);
                }
                Output::Transferred { to, sip_call_id } => cdr.record(CdrEvent::Transferred {
                    id: live.id().to_string(),
                    // Display masks it for a redacting account.
                    to: to.to_string(),
                    sip_call_id,
                }),
            }
        }
        let info = call.info();
        if info.state == CallState::Connected && !answered_recorded {
            answered_recorded = true;
            cdr.record(CdrEvent::Answered {
                id: live.id().to_string(),
                at: SystemTime::now(),
            });
        }
        live.update(&info);
        if let Some(reason) = transport_failed {
            call.handle_transport_error(Instant::now(), reason);
            continue;
        }
        if call.is_over_for_browsers() {
            if let Some(f) = on_over.take() {
                f();
            }
            if !concluded {
                concluded = true;
                conclude(&call, &live, &live_calls, &cdr, &stats, direction);
            }
            // Nothing a session says matters any more.
            commands.close();
        }
        if call.is_finished() {
            break;
        }
        let deadline = call.poll_timeout();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // Media events first: when the media failed (a trunk's DTLS
            // certificate that is not its fingerprint) and the peer, told
            // by the alert, hangs up at once, the call must end for the
            // reason that came first, not for the BYE that followed.
            biased;
            Some(event) = media_rx.recv() => call.handle_media(Instant::now(), event),
            msg = sip_rx.recv() => match msg {
                Some(m) => {
                    let CallMessage { msg, source } = *m;
                    observe_message(&live, "in", &msg);
                    call.handle_sip(Instant::now(), msg, source)
                }
                // The endpoint is gone (shutdown): nothing more can happen.
                None => break,
            },
            Some(m) = extra_rx.recv() => {
                let CallMessage { msg, source } = *m;
                observe_message(&live, "in", &msg);
                call.handle_sip(Instant::now(), msg, source)
            }
            cmd = commands.recv(), if commands_open => match cmd {
                Some(input) => {
                    observe_input(&live, &input);
                    call.handle_session(Instant::now(), input)
                }
                None => {
                    commands_open = false;
                    if let Some(input) = closed_means.take() {
                        call.handle_session(Instant::now(), input);
                    }
                }
            },
            Some((key, tx)) = async {
                match joins.as_mut() {
                    Some(j) => j.recv().await,
                    None => std::future::pending().await,
                }
            }, if !call.is_over_for_browsers() => {
                let watched = tx.clone();
                gone.push(Box::pin(async move {
                    watched.closed().await;
                    key
                }));
                senders.insert(key, tx);
                call.handle_session(Instant::now(), SessionInput::Join { session: key });
            }
            Some(key) = gone.next(), if !gone.is_empty() => {
                call.handle_session(Instant::now(), SessionInput::Gone { session: key });
            }
            _ = sleep => call.handle_timeout(Instant::now()),
        }
    }
    sip.unregister_call(&sip_call_id);
    for id in &extra_ids {
        sip.unregister_call(id);
    }
    if let Some(m) = media.take() {
        info!(counters = ?m.counters(), "media stopped");
        m.stop();
    }
    if let Some(f) = on_over.take() {
        f();
    }
    if !concluded {
        conclude(&call, &live, &live_calls, &cdr, &stats, direction);
    }
}

/// Host names of a call's SIP destinations (a Contact or Record-Route that
/// names its host), resolved once per call with the lookup the trunk's own
/// address gets (`calls::resolve`). A dialog has one next hop, so this stays
/// tiny.
#[derive(Default)]
struct Names(HashMap<(String, u16), Option<SocketAddr>>);

impl Names {
    async fn address(&mut self, to: &Target) -> Option<SocketAddr> {
        let name = match &to.host {
            Host::Ip(_) => return to.socket_addr(),
            Host::Name(name) => name,
        };
        let key = (name.clone(), to.port);
        if let Some(known) = self.0.get(&key) {
            return *known;
        }
        let resolved = super::resolve(name, to.port).await;
        match resolved {
            Some(addr) => info!(host = %name, port = to.port, %addr, "SIP next hop resolved"),
            None => warn!(host = %name, port = to.port,
                "SIP next hop (Contact or Record-Route) does not resolve; what goes there is dropped"),
        }
        self.0.insert(key, resolved);
        resolved
    }
}

/// The call is over for the browsers: its counters, its record and the
/// stats page's table learn how it ended, at once (the SIP dialog may take
/// seconds more to wind down, which is not the call's duration).
fn conclude(
    call: &Call,
    live: &Arc<LiveCall>,
    live_calls: &LiveCalls,
    cdr: &CdrStore,
    stats: &CallStats,
    direction: Direction,
) {
    let (code, reason, side) = match call.cause() {
        Some(cause) => {
            let (code, reason) = cause.browser();
            (code, reason, cause.side())
        }
        None => (500, "call ended".to_string(), Side::Gateway),
    };
    stats.call_ended(direction, code, side.as_str());
    let info = live.info();
    let (browser, trunk) = live.figures();
    let figures = |s: crate::media::LegSnapshot| LegFigures {
        packets_in: s.packets_in,
        packets_out: s.packets_out,
        bytes_in: s.bytes_in,
        bytes_out: s.bytes_out,
        drops_total: s.drops.iter().sum(),
    };
    cdr.record(CdrEvent::Ended {
        id: live.id().to_string(),
        at: SystemTime::now(),
        cause_code: code,
        cause: reason,
        hung_up_by: side,
        codec: info.codec,
        browser_security: info.browser_security,
        trunk_security: info.trunk_security,
        private: info.private,
        browser: figures(browser),
        trunk: figures(trunk),
    });
    live_calls.finish(live);
}

/// The first event of a call's record.
pub fn record_start(cdr: &CdrStore, start: &CallStart, sip_call_id: &str) {
    cdr.record(CdrEvent::Started {
        id: start.id.clone(),
        direction: start.direction,
        account: start.account.clone(),
        remote: start.remote.clone(),
        trunk: start.trunk.clone(),
        sip_call_id: sip_call_id.to_string(),
        at: SystemTime::now(),
    });
}

/// A SIP message as the call's ladder shows it: method or status, the CSeq
/// method, and whether it carried SDP. No URIs: they hold numbers that
/// redaction may have to hide.
pub fn sip_summary(msg: &SipMessage) -> String {
    let sdp = if message::sdp_body(msg).is_some() {
        " (SDP)"
    } else {
        ""
    };
    match msg {
        SipMessage::Request(r) => {
            let cseq = message::cseq(r).map(|(n, _)| n).unwrap_or(0);
            format!("{} (CSeq {cseq}){sdp}", r.method)
        }
        SipMessage::Response(r) => {
            let method = message::cseq(r)
                .map(|(_, m)| m.to_string())
                .unwrap_or_default();
            format!(
                "{} {} ({method}){sdp}",
                message::status_code(r),
                message::response_reason(r)
            )
        }
    }
}

/// Records a SIP message in the call's ladder, and its SDP: an INVITE's is
/// the trunk leg's offer, a response's the answer (whichever side wrote it:
/// the trunk answers our INVITEs, we answer the trunk's).
pub fn observe_message(live: &LiveCall, direction: &'static str, msg: &SipMessage) {
    live.ladder(direction, "trunk", sip_summary(msg));
    if let Some(sdp) = message::sdp_body(msg) {
        let role = match msg {
            SipMessage::Request(r) if r.method == rsip::Method::Invite => SdpRole::TrunkOffer,
            SipMessage::Request(_) => return,
            SipMessage::Response(_) => SdpRole::TrunkAnswer,
        };
        live.set_sdp(role, &sdp);
    }
}

fn observe_sip(live: &LiveCall, direction: &'static str, bytes: &[u8]) {
    if let Ok(msg) = message::parse(bytes) {
        observe_message(live, direction, &msg);
    }
}

fn observe_event(live: &LiveCall, event: &SessionEvent) {
    let summary = match event {
        SessionEvent::Progress { code, .. } => format!("progress {code}"),
        SessionEvent::Answer { sdp, .. } => {
            live.set_sdp(SdpRole::BrowserAnswer, sdp);
            "answer (SDP)".into()
        }
        SessionEvent::Connected { .. } => "connected".into(),
        // Not the digit: DTMF carries PINs and card numbers.
        SessionEvent::Dtmf { .. } => "dtmf".into(),
        SessionEvent::Offer { .. } => "offer (SDP, codec change)".into(),
        SessionEvent::Incoming { sdp, .. } => {
            live.set_sdp(SdpRole::BrowserOffer, sdp);
            "incoming (SDP)".into()
        }
        SessionEvent::Hangup { code, .. } => format!("hangup {code}"),
        SessionEvent::Held { .. } => "held".into(),
        SessionEvent::Resumed { .. } => "resumed".into(),
        SessionEvent::Transferred { code, .. } => format!("transferred {code}"),
        SessionEvent::TransferredByTrunk { code, .. } => format!("transferred by the trunk {code}"),
        SessionEvent::Error { code, .. } => format!("error {code}"),
    };
    live.ladder("out", "browser", summary);
}

fn observe_input(live: &LiveCall, input: &SessionInput) {
    let summary = match input {
        SessionInput::Accept { sdp, .. } => {
            live.set_sdp(SdpRole::BrowserAnswer, sdp);
            "accept (SDP)"
        }
        SessionInput::Reject { .. } => "reject",
        SessionInput::Hangup { .. } => "hangup",
        SessionInput::Gone { .. } => "socket closed",
        SessionInput::Dtmf { .. } => "dtmf",
        SessionInput::Hold { hold: true, .. } => "hold",
        SessionInput::Hold { hold: false, .. } => "resume",
        SessionInput::Transfer { .. } => "transfer",
        SessionInput::Reanswer { .. } => "answer (SDP)",
        SessionInput::Join { .. } => return,
        SessionInput::Shutdown => return,
    };
    live.ladder("in", "browser", summary.into());
}

/// Never waits on the browser: a call task that blocked here could not ACK,
/// answer a BYE or time out. A session that went away cannot receive (not an
/// error for the call); one whose queue is full is not reading and is being
/// closed by signaling's write timeout, which hangs the call up.
fn send(events: &mpsc::Sender<SessionEvent>, event: SessionEvent) {
    if let Err(mpsc::error::TrySendError::Full(_)) = events.try_send(event) {
        warn!("browser session is not reading; event dropped");
    }
}
