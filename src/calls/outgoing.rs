//! One browser-to-trunk call: the B2BUA glue between the browser session, the
//! SIP client dialog (`sip::uac`), the SDP translator and the media relay.
//!
//! The protocol logic lives in the sans-IO pieces; this task only owns them,
//! moves messages between them and sleeps until the next deadline.

use super::api::{Security, SessionEvent};
use super::directory::Account;
use super::CallsContext;
use crate::config::TrunkTransport;
use crate::media::relay::{BrowserLegParams, TrunkCrypto, TrunkLegParams};
use crate::media::{MediaAllocation, MediaEvent, MediaHandle, RelayParams};
use crate::policy::TrunkLegPlan;
use crate::sdp::{
    self, BrowserAnswerParams, BrowserOffer, TrunkAnswer, TrunkOfferMedia, TrunkOfferParams,
};
use crate::sip::auth::DigestCredentials;
use crate::sip::transport::Transport;
use crate::sip::uac::{OutgoingCall, UacConfig, UacEvent};
use crate::types::{CallId, Personal, Secret, SrtpKeyMaterial, SrtpSuite};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// How long the browser has to finish ICE and DTLS once it has our answer.
const DTLS_DEADLINE: Duration = Duration::from_secs(15);
/// How long a call may ring before the gateway gives up (RFC 3261's Timer B
/// stops at the first provisional response, so a trunk that rings for ever
/// would otherwise hold the call).
const RING_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a leg of an answered call may be silent.
const ANSWERED_MEDIA_TIMEOUT: Duration = Duration::from_secs(30);
/// How long we keep the dialog alive to finish BYE/CANCEL after a hangup:
/// a CANCEL's 487 may come up to 64*T1 later, then Timer D runs 32 s.
const TEARDOWN_DEADLINE: Duration = Duration::from_secs(70);

/// Commands from the browser session to one of its calls.
#[derive(Debug)]
pub enum CallCommand {
    /// The browser hung up.
    Hangup,
    /// The gateway is stopping (SIGINT/SIGTERM).
    Shutdown,
}

/// Everything a call needs from the browser's `call` message.
pub struct OutgoingRequest {
    pub id: CallId,
    pub to: String,
    pub sdp: String,
    pub account: Arc<Account>,
    pub events: mpsc::Sender<SessionEvent>,
}

/// Why a call ended, as the browser is told.
struct Ending {
    code: u16,
    reason: String,
}

impl Ending {
    fn new(code: u16, reason: impl Into<String>) -> Self {
        Ending {
            code,
            reason: reason.into(),
        }
    }
}

/// Runs one outgoing call to its end. Returns when the trunk dialog is gone.
pub async fn run(
    ctx: Arc<CallsContext>,
    req: OutgoingRequest,
    mut commands: mpsc::UnboundedReceiver<CallCommand>,
) {
    let id = req.id.clone();
    let events = req.events.clone();
    let offer = match sdp::parse_browser_offer(&req.sdp) {
        Ok(offer) => offer,
        Err(e) => {
            warn!(error = %e, "browser offer refused");
            send(
                &events,
                SessionEvent::Hangup {
                    id,
                    code: 488,
                    reason: format!("unusable SDP offer: {e}"),
                },
            )
            .await;
            return;
        }
    };
    let plan = match req.account.outgoing_plan() {
        Ok(plan) => plan,
        Err(e) => {
            send(&events, hangup_event(&id, &Ending::new(500, e.to_string()))).await;
            return;
        }
    };
    let allocation = match ctx.media.allocate().await {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "no media ports");
            send(
                &events,
                hangup_event(&id, &Ending::new(503, "no media ports available")),
            )
            .await;
            return;
        }
    };
    let trunk = req.account.trunk.clone();
    let destination = match resolve(&trunk.uri.host, trunk.uri.port).await {
        Some(addr) => addr,
        None => {
            send(
                &events,
                hangup_event(
                    &id,
                    &Ending::new(503, format!("trunk {} cannot be resolved", trunk.name)),
                ),
            )
            .await;
            return;
        }
    };
    let transport = match trunk.uri.transport {
        TrunkTransport::Udp => Transport::Udp,
        TrunkTransport::Tcp => Transport::Tcp,
        TrunkTransport::Tls => {
            send(
                &events,
                hangup_event(&id, &Ending::new(501, "SIP over TLS is not supported yet")),
            )
            .await;
            return;
        }
    };

    let offer_media = match &plan {
        TrunkLegPlan::Sdes { suites, .. } => TrunkOfferMedia::Sdes {
            keys: suites
                .iter()
                .map(|suite| SrtpKeyMaterial::generate(*suite))
                .collect(),
        },
        TrunkLegPlan::Plain => TrunkOfferMedia::Plain,
    };
    let session_id = rand::random::<u32>() as u64;
    let offer_params = TrunkOfferParams {
        local_ip: ctx.public_ip,
        rtp_port: allocation.trunk_rtp_port,
        media: offer_media,
        session_id,
        session_version: 1,
    };
    let trunk_offer = sdp::write_trunk_offer(&offer, &offer_params);

    // The TCP listener is where in-dialog requests come back on TCP trunks
    // (config validation makes sure there is one).
    let local = match transport {
        Transport::Tcp => ctx.sip.tcp_local_addr().unwrap_or(ctx.sip.local_addr()),
        Transport::Udp => ctx.sip.local_addr(),
    };
    // Via and Contact name where the trunk reaches our SIP socket: its own
    // address, or public_ip when it listens on all addresses (NAT setups).
    let sip_host = if local.ip().is_unspecified() {
        ctx.public_ip
    } else {
        local.ip()
    };
    let public_host = uri_host(&sip_host.to_string());
    let account = &req.account.name;
    let transport_name = match transport {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
    };
    let uac_config = UacConfig {
        call_id: crate::sip::message::new_call_id(),
        request_uri: format!(
            "sip:{}@{}:{}",
            req.to,
            uri_host(&trunk.uri.host),
            trunk.uri.port
        ),
        from_uri: format!("sip:{account}@{public_host}"),
        contact: format!(
            "<sip:{account}@{public_host}:{};transport={transport_name}>",
            local.port()
        ),
        via_host: public_host.clone(),
        via_port: local.port(),
        transport,
        credentials: match (&trunk.username, &trunk.password) {
            (Some(username), Some(password)) => Some(DigestCredentials {
                username: username.clone(),
                password: password.clone(),
            }),
            _ => None,
        },
        user_agent: concat!("webrtc-sip-gateway/", env!("CARGO_PKG_VERSION")).to_string(),
    };
    let mut uac = OutgoingCall::new(uac_config, trunk_offer, Instant::now());
    let sip_call_id = uac.call_id().to_string();
    let mut sip_rx = ctx.sip.register_call(&sip_call_id);
    let to = Personal::new(req.to.clone(), req.account.redact);
    info!(sip_call_id = %sip_call_id, to = %to, trunk = %trunk.name, "calling trunk");

    let mut call = CallState {
        ctx: ctx.clone(),
        id: id.clone(),
        events: events.clone(),
        offer,
        offer_params,
        plan,
        allocation: Some(allocation),
        media: None,
        media_events: mpsc::channel(16),
        answered: false,
        browser_suite: None,
        trunk_security: String::new(),
        trunk_sdp: None,
        browser_codec: None,
        connected_sent: false,
        dtls_deadline: None,
        ring_deadline: Some(Instant::now() + RING_TIMEOUT),
        ended: None,
        teardown_deadline: None,
    };

    loop {
        if call.ended.is_some() {
            // Frees the call's id and slot in the browser session now, not
            // when the dialog's wind-down ends.
            commands.close();
        }
        // Everything the dialog wants sent goes to the trunk.
        let mut unreachable = false;
        while let Some(bytes) = uac.poll_transmit() {
            if let Err(e) = ctx.sip.send(destination, transport, bytes).await {
                warn!(error = %e, "sending to the trunk failed");
                // Over TCP a failed send is a transport error (RFC 3261
                // 8.1.3.1: treat as 503); over UDP the timers decide.
                unreachable |= transport == Transport::Tcp;
            }
        }
        if unreachable {
            call.finish(Ending::new(503, "the trunk cannot be reached"))
                .await;
            break;
        }
        let mut finished = false;
        while let Some(event) = uac.poll_event() {
            if call.on_uac_event(event, &mut uac).await {
                finished = true;
            }
        }
        if finished {
            break;
        }
        let deadline = [
            uac.poll_timeout(),
            call.dtls_deadline,
            call.ring_deadline,
            call.teardown_deadline,
        ]
        .into_iter()
        .flatten()
        .min();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = sip_rx.recv() => match msg {
                Some(msg) => uac.handle_message(msg, Instant::now()),
                None => break,
            },
            cmd = commands.recv(), if call.ended.is_none() => {
                // A hangup, or the socket closed (channel gone): end the call now.
                let ending = match cmd {
                    Some(CallCommand::Hangup) => Ending::new(200, "hung up by the browser"),
                    Some(CallCommand::Shutdown) => Ending::new(503, "the gateway is shutting down"),
                    None => Ending::new(200, "browser disconnected"),
                };
                info!(reason = %ending.reason, "call ends");
                call.end(&mut uac, ending).await;
            }
            Some(event) = call.media_events.1.recv() => call.on_media_event(event, &mut uac).await,
            _ = sleep => {
                let now = Instant::now();
                if call.teardown_deadline.is_some_and(|d| now >= d) {
                    warn!("trunk did not confirm the end of the call; giving up");
                    break;
                }
                if call.dtls_deadline.is_some_and(|d| now >= d) {
                    call.dtls_deadline = None;
                    call.end(&mut uac, Ending::new(408, "browser media did not connect (ICE/DTLS timeout)")).await;
                }
                if call.ring_deadline.is_some_and(|d| now >= d) {
                    call.ring_deadline = None;
                    call.end(&mut uac, Ending::new(408, "no answer")).await;
                }
                uac.handle_timeout(now);
            }
        }
    }
    ctx.sip.unregister_call(&sip_call_id);
    if let Some(media) = call.media.take() {
        let counters = media.counters();
        info!(counters = ?counters, "media stopped");
        media.stop();
    }
    if call.ended.is_none() {
        // The dialog ended without us knowing why (channel closed): tell the browser.
        send(&events, hangup_event(&id, &Ending::new(500, "call ended"))).await;
    }
}

struct CallState {
    ctx: Arc<CallsContext>,
    id: CallId,
    events: mpsc::Sender<SessionEvent>,
    offer: BrowserOffer,
    offer_params: TrunkOfferParams,
    plan: TrunkLegPlan,
    allocation: Option<MediaAllocation>,
    media: Option<MediaHandle>,
    media_events: (mpsc::Sender<MediaEvent>, mpsc::Receiver<MediaEvent>),
    answered: bool,
    browser_suite: Option<SrtpSuite>,
    trunk_security: String,
    /// The trunk SDP the media runs on, and the browser's PT of its codec.
    trunk_sdp: Option<String>,
    browser_codec: Option<crate::types::PayloadType>,
    connected_sent: bool,
    dtls_deadline: Option<Instant>,
    ring_deadline: Option<Instant>,
    /// Set once the browser has been told the call ended.
    ended: Option<Ending>,
    teardown_deadline: Option<Instant>,
}

impl CallState {
    /// Returns true when the dialog is over and the task can finish.
    async fn on_uac_event(&mut self, event: UacEvent, uac: &mut OutgoingCall) -> bool {
        match event {
            UacEvent::Provisional { code, sdp } => {
                if self.ended.is_some() {
                    return false;
                }
                send(
                    &self.events,
                    SessionEvent::Progress {
                        id: self.id.clone(),
                        code,
                    },
                )
                .await;
                if let Some(sdp) = sdp {
                    self.on_trunk_sdp(&sdp, uac).await;
                }
                false
            }
            UacEvent::Answered { sdp } => {
                if self.ended.is_some() {
                    return false;
                }
                self.answered = true;
                self.ring_deadline = None;
                if let Some(media) = &self.media {
                    media.set_media_timeout(ANSWERED_MEDIA_TIMEOUT);
                }
                match sdp {
                    Some(sdp) => self.on_trunk_sdp(&sdp, uac).await,
                    None if self.media.is_none() => {
                        self.end(uac, Ending::new(488, "trunk answered without SDP"))
                            .await;
                    }
                    None => {}
                }
                self.maybe_connected().await;
                false
            }
            // The dialog keeps running until `Terminated` (Timer D/K absorb
            // the trunk's retransmissions); the browser hears now.
            UacEvent::Rejected { code, reason } => {
                info!(code, reason = %reason, "trunk rejected the call");
                self.finish(Ending::new(code, reason)).await;
                false
            }
            UacEvent::RemoteHangup => {
                info!("trunk hung up");
                self.finish(Ending::new(200, "the other party hung up"))
                    .await;
                false
            }
            UacEvent::Terminated => true,
        }
    }

    /// The trunk's SDP (in a 183 or the 200): key the trunk leg, start the
    /// relay and give the browser its answer. A later, different SDP of the
    /// same dialog (the 200 after an announcement's 183, from another media
    /// server with other keys) re-keys and re-addresses the trunk leg; the
    /// browser's side and codec stay as answered.
    async fn on_trunk_sdp(&mut self, sdp: &str, uac: &mut OutgoingCall) {
        if self.trunk_sdp.as_deref() == Some(sdp) {
            return;
        }
        let answer = match sdp::parse_trunk_answer(sdp, &self.offer_params, &self.offer) {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "trunk SDP refused");
                self.end(uac, Ending::new(488, format!("trunk SDP refused: {e}")))
                    .await;
                return;
            }
        };
        let trunk_crypto = match &answer.crypto {
            Some(c) => TrunkCrypto::Sdes {
                inbound: c.remote_key.clone(),
                outbound: c.local_key.clone(),
            },
            None if self.plan.accepts_plain_answer() => TrunkCrypto::Plain,
            None => {
                self.end(
                    uac,
                    Ending::new(
                        488,
                        "trunk answered plain RTP but secure media is mandatory",
                    ),
                )
                .await;
                return;
            }
        };
        self.trunk_security = match &answer.crypto {
            Some(c) => format!("sdes-srtp {}", c.remote_key.suite),
            None => "rtp (unencrypted)".into(),
        };
        self.trunk_sdp = Some(sdp.to_string());
        let params = relay_params(&self.offer, &answer, trunk_crypto);

        let Some(allocation) = self.allocation.take() else {
            // Media runs already: only the trunk leg changes, and only if the
            // browser can keep its codec.
            if self.browser_codec != Some(answer.codec.pt) {
                self.end(
                    uac,
                    Ending::new(488, "trunk changed the codec between 183 and 200"),
                )
                .await;
                return;
            }
            info!("trunk SDP changed: re-keying the trunk leg");
            if let Some(media) = &self.media {
                media.update_trunk(params.trunk, params.payload_map);
            }
            return;
        };
        self.browser_codec = Some(answer.codec.pt);
        let answer_params = BrowserAnswerParams {
            local_ip: self.ctx.public_ip,
            port: allocation.browser_port,
            ice_ufrag: allocation.ice_ufrag.clone(),
            ice_pwd: allocation.ice_pwd.expose().clone(),
            fingerprint_sha256: self.ctx.media.fingerprint_sha256().to_string(),
            session_id: self.offer_params.session_id,
            session_version: 1,
            ssrc: Some(allocation.ssrc_to_browser),
        };
        let browser_answer = sdp::write_browser_answer(&self.offer, &answer, &answer_params);
        let media = allocation.start(params, self.media_events.0.clone());
        if !self.answered {
            // Early media may be silent while the callee rings: only the
            // ring timeout ends a call that has not been answered.
            media.set_media_timeout(RING_TIMEOUT + Duration::from_secs(10));
        }
        self.media = Some(media);
        self.dtls_deadline = Some(Instant::now() + DTLS_DEADLINE);
        send(
            &self.events,
            SessionEvent::Answer {
                id: self.id.clone(),
                sdp: browser_answer,
            },
        )
        .await;
    }

    async fn on_media_event(&mut self, event: MediaEvent, uac: &mut OutgoingCall) {
        match event {
            MediaEvent::BrowserConnected { suite } => {
                info!(suite = %suite, "browser DTLS-SRTP connected");
                self.browser_suite = Some(suite);
                self.dtls_deadline = None;
                self.maybe_connected().await;
            }
            MediaEvent::Failed { reason } => {
                warn!(reason = %reason, "media failed");
                self.end(uac, Ending::new(488, format!("media failed: {reason}")))
                    .await;
            }
            MediaEvent::BrowserClosed => {
                info!("browser closed its peer connection");
                self.end(uac, Ending::new(200, "hung up by the browser"))
                    .await;
            }
            MediaEvent::Timeout => {
                warn!("media timeout");
                self.end(uac, Ending::new(408, "no media received")).await;
            }
        }
    }

    /// `connected` goes out once the trunk answered and the browser's DTLS is
    /// up, so the lock the browser shows is true for both legs.
    async fn maybe_connected(&mut self) {
        if self.connected_sent || !self.answered || self.ended.is_some() {
            return;
        }
        let Some(suite) = self.browser_suite else {
            return;
        };
        self.connected_sent = true;
        self.ctx.stats.calls_connected();
        info!("call connected");
        send(
            &self.events,
            SessionEvent::Connected {
                id: self.id.clone(),
                security: Security {
                    browser: format!("dtls-srtp {suite}"),
                    trunk: self.trunk_security.clone(),
                },
            },
        )
        .await;
    }

    /// Ends the call from our side: CANCEL or BYE toward the trunk, `hangup`
    /// toward the browser, media stopped (nothing more is forwarded).
    async fn end(&mut self, uac: &mut OutgoingCall, ending: Ending) {
        if self.ended.is_some() {
            return;
        }
        uac.hangup(Instant::now());
        self.finish(ending).await;
    }

    /// The call is over for the browser: `hangup` sent, media stopped, and
    /// only the SIP dialog's wind-down (bounded) is left.
    async fn finish(&mut self, ending: Ending) {
        if self.ended.is_some() {
            return;
        }
        if let Some(media) = self.media.take() {
            media.stop();
        }
        self.allocation = None;
        self.dtls_deadline = None;
        self.ring_deadline = None;
        self.teardown_deadline = Some(Instant::now() + TEARDOWN_DEADLINE);
        send(&self.events, hangup_event(&self.id, &ending)).await;
        self.ended = Some(ending);
    }
}

/// What the relay needs, from the browser's offer and the trunk's answer.
/// The local ICE credentials are filled in by `MediaAllocation::start`.
fn relay_params(offer: &BrowserOffer, answer: &TrunkAnswer, crypto: TrunkCrypto) -> RelayParams {
    let mut payload_map = vec![(
        answer.codec.pt,
        answer.codec_trunk_pt,
        answer.codec.clock_rate,
    )];
    if let Some((trunk_pt, browser_pt)) = answer.telephone_event {
        // telephone-event was negotiated at the audio codec's clock.
        payload_map.push((browser_pt, trunk_pt, answer.codec.clock_rate));
    }
    RelayParams {
        browser: BrowserLegParams {
            local_ufrag: String::new(),
            local_pwd: Secret::new(String::new()),
            remote_ufrag: offer.ice_ufrag.clone(),
            remote_fingerprint: offer.fingerprint.clone(),
            ssrcs: offer.ssrcs.clone(),
        },
        trunk: TrunkLegParams {
            remote_rtp: answer.remote_rtp,
            remote_rtcp: answer.remote_rtcp,
            crypto,
            ssrcs: answer.ssrcs.clone(),
        },
        payload_map,
    }
}

fn hangup_event(id: &CallId, ending: &Ending) -> SessionEvent {
    SessionEvent::Hangup {
        id: id.clone(),
        code: ending.code,
        reason: ending.reason.clone(),
    }
}

/// Never waits on the browser: a call task that blocked here could not ACK,
/// answer a BYE or time out. A session that went away cannot receive (not an
/// error for the call); one whose queue is full is not reading and is being
/// closed by signaling's write timeout, which hangs the call up.
async fn send(events: &mpsc::Sender<SessionEvent>, event: SessionEvent) {
    if let Err(mpsc::error::TrySendError::Full(_)) = events.try_send(event) {
        warn!("browser session is not reading; event dropped");
    }
}

/// A host as it goes into a SIP URI: IPv6 literals in brackets.
fn uri_host(host: &str) -> String {
    match host.parse::<std::net::Ipv6Addr>() {
        Ok(v6) => format!("[{v6}]"),
        Err(_) => host.to_string(),
    }
}

async fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    tokio::net::lookup_host((host, port)).await.ok()?.next()
}
