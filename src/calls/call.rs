//! The B2BUA core: one sans-IO state machine per call, for both directions.
//!
//! ```text
//!            handle_session(now, SessionInput)   accept / reject / hangup / gone
//!            handle_sip(now, SipMessage)         responses and requests of this Call-ID
//! Call  ◀──  handle_media(now, MediaEvent)       DTLS up, failures, timeouts
//!            handle_timeout(now)
//!       ──▶  poll_output() → Output              SIP bytes, session events, media commands
//!            poll_timeout() → Option<Instant>
//! ```
//!
//! An outgoing call (browser → trunk) starts in [`Call::outgoing`]: it owns a
//! SIP client dialog (`sip::uac`). An incoming call (trunk → every session of
//! an account) starts in [`Call::incoming`]: it owns the server side
//! (`sip::uas`) and rings N sessions until one accepts. Both end through one
//! table of causes ([`Cause`]). Nothing here reads the clock, binds a socket
//! or spawns a task: the driver (`calls::driver`) does that and feeds the
//! results back, and tests drive it with a fake clock.
//!
//! A call hears only its own trunk: a request from another address (another
//! trunk's, which the endpoint's door lets in) is refused with 403 before the
//! dialog sees it, so a BYE forged with the call's Call-ID and tags from
//! there ends nothing. 403 rather than silence: the sender is a configured
//! peer, not a stranger to hide from, and a final answer stops its
//! retransmissions and shows up in its traces (a carrier that really sends
//! its BYEs from an address of another trunk entry gets told, visibly).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rsip::SipMessage;
use tracing::{info, warn};

use super::api::{HoldParty, Security, SessionEvent};
use super::cause::Cause;
use super::directory::Account;
use super::renegotiate::{Change, PayloadMap, Refusal, TrunkSession};
use super::sessions::SessionKey;
use super::transferee::{Outcome, Retired, TrunkTransfer};
use crate::config::cidr_contains;
use crate::media::relay::{
    BrowserLegParams, TelephoneEvent, TrunkCrypto, TrunkLegParams, TrunkUpdate,
};
use crate::media::rewrite::Toward;
use crate::media::{MediaEvent, RelayParams};
use crate::policy::{IncomingLegPlan, TrunkLegPlan};
use crate::sdp::{
    self, AnswerKeying, BrowserAnswer, BrowserAnswerParams, BrowserOffer, BrowserOfferParams,
    SipOffer, TrunkAnswer, TrunkOfferMedia, TrunkOfferParams,
};
use crate::sip::message::{self, ResponseParts};
use crate::sip::own_requests::{OwnError, OwnEvent};
use crate::sip::refer::Referral;
use crate::sip::reinvite::{OfferAnswer, RenegotiationEvent};
use crate::sip::target::Target;
use crate::sip::uac::{OutgoingCall, UacConfig, UacEvent};
use crate::sip::uas::{IncomingCall, UasEvent};
use crate::sip::Transport;
use crate::stats::live::{CallInfo, CallState};
use crate::types::{
    CallId, DtmfDigit, MediaSource, PayloadType, Personal, Secret, SrtpKeyMaterial, SrtpSuite, Ssrc,
};

/// The clocks of a call; the defaults are the production values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallTimers {
    /// How long the browser has to finish ICE and DTLS once it has the SDP.
    pub dtls: Duration,
    /// How long a call may ring (RFC 3261's Timer B stops at the first
    /// provisional response, so a trunk that rings for ever would otherwise
    /// hold an outgoing call; an incoming one rings the browsers this long).
    pub ring: Duration,
    /// How long a leg of an answered call may be silent (`media.timeout`).
    pub answered_media: Duration,
    /// The same while the trunk holds the call (`media.hold_timeout`).
    pub held_media: Duration,
    /// How long we keep the dialog alive to finish BYE/CANCEL after the end:
    /// a CANCEL's 487 may come up to 64*T1 later, then Timer D runs 32 s.
    pub teardown: Duration,
}

impl Default for CallTimers {
    fn default() -> Self {
        CallTimers {
            dtls: Duration::from_secs(15),
            ring: Duration::from_secs(120),
            answered_media: Duration::from_secs(30),
            held_media: Duration::from_secs(3600),
            teardown: Duration::from_secs(70),
        }
    }
}

/// The media resources the driver bound for this call before it started
/// (`MediaEngine::allocate`), as far as the SDP needs them.
#[derive(Debug, Clone)]
pub struct MediaPlan {
    pub public_ip: IpAddr,
    pub browser_port: u16,
    pub trunk_rtp_port: u16,
    pub ice_ufrag: String,
    pub ice_pwd: Secret<String>,
    pub ssrc_to_browser: Ssrc,
    /// Our DTLS certificate's SHA-256 fingerprint.
    pub fingerprint_sha256: String,
}

/// Where our SIP side is, for Via and Contact.
#[derive(Debug, Clone)]
pub struct SipLocal {
    /// Host as it goes into a URI (IPv6 in brackets).
    pub host: String,
    pub port: u16,
    pub transport: Transport,
}

impl SipLocal {
    /// `<sip:{user}@{host}:{port};transport=udp|tcp|tls>`
    pub(crate) fn contact(&self, user: &str) -> String {
        format!(
            "<sip:{user}@{}:{};transport={}>",
            self.host,
            self.port,
            self.transport.uri_param()
        )
    }
}

/// A browser session's input to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionInput {
    /// `accept` of an incoming call, with the browser's SDP answer.
    Accept { session: SessionKey, sdp: String },
    /// `reject` of an incoming call.
    Reject { session: SessionKey },
    /// `hangup`.
    Hangup { session: SessionKey },
    /// The session's socket closed.
    Gone { session: SessionKey },
    /// A session of the account opened while the call rings: ring it too.
    Join { session: SessionKey },
    /// `hold` (true) or `resume` (false) from the owner of a connected call.
    Hold { session: SessionKey, hold: bool },
    /// `transfer` from the owner of a connected call.
    Transfer { session: SessionKey, to: String },
    /// `answer`: the owner's answer to our re-offer (a codec change).
    Reanswer { session: SessionKey, sdp: String },
    /// The gateway is stopping.
    Shutdown,
    /// `dtmf`: digits toward the trunk.
    Dtmf {
        session: SessionKey,
        digits: Vec<DtmfDigit>,
    },
}

/// How a digit of the trunk arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DtmfFrom {
    /// RFC 4733 events in its stream (relayed as they are).
    Rfc4733,
    /// SIP INFO (RFC 6086 legacy usage).
    SipInfo,
}

/// What the media task of the call must do.
#[derive(Debug, Clone)]
pub enum MediaCommand {
    /// Start relaying (`MediaAllocation::start`).
    Start(Box<RelayParams>),
    SetTimeout(Duration),
    /// A later SDP of the trunk moved or re-keyed its leg.
    UpdateTrunk(Box<TrunkUpdate>),
    /// A digit toward a side as RFC 4733 events.
    Dtmf(Toward, DtmfDigit),
    /// The browser's hold is in force (true) or over: the relay stops or
    /// resumes sending the browser's audio to the trunk.
    Hold(bool),
    Stop,
}

/// What the driver must carry out, in order.
#[derive(Debug, Clone)]
pub enum Output {
    /// SIP to send; `to` may name a host the driver has to resolve.
    Sip {
        to: Target,
        bytes: Bytes,
    },
    Session {
        session: SessionKey,
        event: SessionEvent,
    },
    Media(MediaCommand),
    /// The call reached `connected` (for the counters).
    Connected,
    /// The trunk refused SRTP and the call went on with plain RTP
    /// (`secure_media = "optional"`; for the counters).
    SecureMediaFallback,
    /// DTMF digits went toward the trunk or came from it, by SIP INFO or
    /// RFC 4733 (for the counters).
    Dtmf {
        to_trunk: bool,
        info: bool,
        digits: u64,
    },
    /// A new dialog of the call (the INVITE a trunk's REFER asked for):
    /// messages with this Call-ID are the call's too.
    ListenCallId(String),
    /// The trunk's transfer was carried out: the call goes on with `to` in
    /// the dialog `sip_call_id` (for the call's record).
    Transferred {
        to: Personal,
        sip_call_id: String,
    },
}

/// An outgoing call as the browser's `call` message and the config give it.
pub struct OutgoingSetup {
    pub id: CallId,
    pub session: SessionKey,
    pub to: String,
    pub browser_sdp: String,
    pub account: Arc<Account>,
    pub media: MediaPlan,
    pub local: SipLocal,
    /// The trunk's address (resolved by the driver).
    pub destination: SocketAddr,
    /// Who may send requests in this call: the account's trunk
    /// (`Trunk::signaling_sources`, all its addresses).
    pub trunk_sources: Vec<(IpAddr, u8)>,
    /// Generate with `sip::message::new_call_id()`.
    pub sip_call_id: String,
    pub timers: CallTimers,
    /// `Route` values of the INVITE (a cluster's outbound proxy), else empty.
    pub routes: Vec<String>,
}

/// An incoming call as the router accepted it: the trunk's INVITE (its
/// server transaction already sent 100), its parsed offer and the policy's
/// decision on it, and the sessions to ring.
pub struct IncomingSetup {
    pub id: CallId,
    pub uas: IncomingCall,
    pub offer: SipOffer,
    pub plan: IncomingLegPlan,
    /// The trunk's fingerprint and role when it offered DTLS-SRTP (a
    /// private call: `IncomingLegPlan::Private`).
    pub trunk_dtls: Option<sdp::PrivateOfferDtls>,
    pub sessions: Vec<SessionKey>,
    /// The caller as the browsers are shown it (redacted per account).
    pub from: Personal,
    pub account: Arc<Account>,
    pub media: MediaPlan,
    pub local: SipLocal,
    /// Who may send requests in this call: the trunk the INVITE came in on
    /// (`Trunk::signaling_sources`).
    pub trunk_sources: Vec<(IpAddr, u8)>,
    /// The status when every session declined (the trunk's `reject_code`).
    pub reject_code: u16,
    pub timers: CallTimers,
    /// Where a new INVITE goes when the trunk's REFER is carried out;
    /// `None` (the trunk did not resolve): REFER gets 501.
    pub transfer_route: Option<NewInviteRoute>,
    /// The INVITE had no offer: `offer` is ours (`sdp::delayed_offer_template`),
    /// our 200 carries it and the trunk answers in its ACK.
    pub delayed_offer: bool,
}

/// The first hop of a new INVITE toward the trunk, as an outgoing call's:
/// the trunk's address, or the cluster's outbound proxy with its `Route`,
/// sent from our SIP address of that hop's transport.
#[derive(Debug, Clone)]
pub struct NewInviteRoute {
    pub local: SipLocal,
    pub destination: SocketAddr,
    pub routes: Vec<String>,
}

/// One call. See the module documentation.
pub struct Call {
    c: Common,
    kind: Kind,
    /// The new call a trunk's REFER asked for, until its final answer.
    transfer_in: Option<Box<TrunkTransfer>>,
    /// Dialogs left behind by a transfer, winding down.
    retired: Vec<Retired>,
}

enum Kind {
    Outgoing(Box<Outgoing>),
    Incoming(Box<Incoming>),
    /// Refused before any SIP was sent (unusable offer, policy): finished.
    Refused,
}

/// What both directions share: the outputs, the session that owns the call,
/// the timers and how it ended.
struct Common {
    id: CallId,
    /// The account redacts numbers (records of a transfer's target).
    redact: bool,
    timers: CallTimers,
    media: MediaPlan,
    /// The addresses of the call's trunk: requests from elsewhere get 403.
    trunk_sources: Vec<(IpAddr, u8)>,
    /// The dialog's transport (for the 403s).
    transport: Transport,
    /// The session whose call this is: the caller (outgoing) or the one that
    /// accepted (incoming).
    owner: Option<SessionKey>,
    out: VecDeque<Output>,
    media_started: bool,
    browser_suite: Option<SrtpSuite>,
    trunk_security: String,
    /// A DTLS-SRTP trunk leg whose handshake has not completed: `connected`
    /// waits for it, so that `security` names the negotiated profile.
    trunk_dtls_pending: bool,
    /// When a pending trunk handshake is given up (the `dtls` timer from
    /// the media start, outgoing, or from our 200, incoming).
    trunk_dtls_deadline: Option<Instant>,
    /// A private call (`TrunkLegPlan::Private`): `Some` once the browser and
    /// the trunk agreed keys through the relay, with the suite they chose if
    /// the relay could read it.
    private: bool,
    private_connected: Option<Option<SrtpSuite>>,
    /// The codec both legs run, once chosen (`PCMU/8000`).
    codec: Option<String>,
    connected_sent: bool,
    dtls_deadline: Option<Instant>,
    ring_deadline: Option<Instant>,
    teardown_deadline: Option<Instant>,
    /// The trunk leg as last negotiated, once media runs: what a re-offer
    /// of the trunk is checked against and answered from.
    trunk_session: Option<TrunkSession>,
    /// The trunk resumed a held call: at this time the media timeout goes
    /// back from `held_media` to `answered_media`. Not at once: the relay
    /// measures silence from the last packet, which on a long hold is far
    /// in the past, so the trunk gets `answered_media` to start sending.
    resume_deadline: Option<Instant>,
    /// Our last SDP to the browser (answer or offer): what a re-offer to it
    /// starts from.
    browser_sdp: Option<String>,
    /// The trunk's re-offer that waits for the browser's answer to ours.
    codec_switch: Option<CodecSwitch>,
    /// A re-offer of ours the browser did not answer in time, or our offer
    /// taking it back after it answered late (see [`LateReoffer`]).
    late_reoffer: Option<LateReoffer>,
    /// An answer to the trunk's pending re-offer, for the SIP side's next
    /// pump (`Common` cannot reach the dialog).
    deferred_answer: Option<OfferAnswer>,
    /// The telephone-event of the trunk leg, once media runs: without it
    /// the browser's `dtmf` is refused.
    telephone_event: Option<TelephoneEvent>,
    /// The browser's digits for a trunk without telephone-event, going out
    /// one SIP INFO at a time.
    info_dtmf: InfoDtmf,
    /// The trunk's media came from an IP its SDP does not name (dropped
    /// under `media_source = "signaled"`): for the reason of a failure.
    trunk_unsignaled_source: Option<SocketAddr>,
    /// The browser's `hold` (true) or `resume` whose re-INVITE is out.
    hold_request: Option<bool>,
    /// Our session refresh (RFC 4028) by re-INVITE is out.
    refresh_request: bool,
    /// `host:port` of the call's trunk, for the Refer-To of a transfer
    /// (as outgoing calls build their Request-URI).
    refer_base: String,
    /// The browser's `transfer` target while its REFER runs.
    transfer: Option<String>,
    /// The INVITE configuration of a new call to the call's trunk (as an
    /// outgoing call's own; its Call-ID and Request-URI are replaced): what
    /// a trunk's REFER is carried out with (`calls::transferee`).
    trunk_call: Option<UacConfig>,
    /// A REFER of the trunk that the SIP side accepted (202), for
    /// [`Call`] to carry out.
    referral: Option<Referral>,
    /// A trunk's REFER is being carried out: the end of the old dialog
    /// (the transferor's BYE) does not end the call.
    trunk_transfer: bool,
    /// The transferor hung up while the transfer ran; its dialog is over
    /// (`Terminated`) too when `old_dialog_done`.
    referrer_gone: bool,
    old_dialog_done: bool,
    /// Set once the browser side has been told the call ended.
    ended: Option<Cause>,
    /// The SIP side is done (or given up on): the driver can drop the call.
    finished: bool,
    /// Where the trunk's plain RTP may come from (the trunk's `media_source`).
    media_source: MediaSource,
}

impl Common {
    fn new(
        id: CallId,
        timers: CallTimers,
        media: MediaPlan,
        owner: Option<SessionKey>,
        local: &SipLocal,
        trunk_sources: Vec<(IpAddr, u8)>,
    ) -> Self {
        Common {
            id,
            redact: false,
            timers,
            media,
            trunk_sources,
            transport: local.transport,
            owner,
            out: VecDeque::new(),
            media_started: false,
            browser_suite: None,
            trunk_security: String::new(),
            trunk_dtls_pending: false,
            trunk_dtls_deadline: None,
            private: false,
            private_connected: None,
            codec: None,
            connected_sent: false,
            dtls_deadline: None,
            ring_deadline: None,
            teardown_deadline: None,
            trunk_session: None,
            resume_deadline: None,
            browser_sdp: None,
            codec_switch: None,
            late_reoffer: None,
            deferred_answer: None,
            telephone_event: None,
            info_dtmf: InfoDtmf::default(),
            trunk_unsignaled_source: None,
            hold_request: None,
            refresh_request: false,
            refer_base: String::new(),
            transfer: None,
            trunk_call: None,
            referral: None,
            trunk_transfer: false,
            referrer_gone: false,
            old_dialog_done: false,
            ended: None,
            finished: false,
            media_source: MediaSource::Signaled,
        }
    }

    /// How the trunk's REFERs are answered: carried out (202) when a new
    /// call to the trunk can be made, refused (603) by `accept_refer =
    /// false`, else not carried out (501).
    fn refer_answer(&self, accept_refer: bool) -> u16 {
        match (accept_refer, self.trunk_call.is_some()) {
            (false, _) => 603,
            (true, true) => 202,
            (true, false) => 501,
        }
    }

    /// The old dialog's BYE from the transferor: while a trunk's REFER is
    /// carried out it does not end the call (true: taken).
    fn transferor_left(&mut self) -> bool {
        if self.trunk_transfer {
            info!("the transferor hung up; the transfer goes on");
            self.referrer_gone = true;
        }
        self.trunk_transfer
    }

    /// The old dialog is over (`Terminated`): the call is finished unless
    /// a trunk's REFER is being carried out.
    fn dialog_done(&mut self) {
        if self.trunk_transfer {
            self.old_dialog_done = true;
        } else {
            self.finished = true;
        }
    }

    /// Whether `source` is an address of the call's trunk.
    fn is_trunk(&self, source: SocketAddr) -> bool {
        self.trunk_sources
            .iter()
            .any(|net| cidr_contains(*net, source.ip()))
    }

    fn tell(&mut self, session: SessionKey, event: SessionEvent) {
        if let SessionEvent::Answer { sdp, .. } | SessionEvent::Incoming { sdp, .. } = &event {
            self.browser_sdp = Some(sdp.clone());
        }
        self.out.push_back(Output::Session { session, event });
    }

    fn tell_owner(&mut self, event: SessionEvent) {
        if let Some(owner) = self.owner {
            self.tell(owner, event);
        }
    }

    fn hangup_event(&self, cause: &Cause) -> SessionEvent {
        let (code, reason) = cause.browser();
        SessionEvent::Hangup {
            id: self.id.clone(),
            code,
            reason,
        }
    }

    fn error(&mut self, session: SessionKey, code: u16, message: &str) {
        self.tell(
            session,
            SessionEvent::Error {
                id: Some(self.id.clone()),
                code,
                message: message.into(),
            },
        );
    }

    fn media(&mut self, cmd: MediaCommand) {
        self.out.push_back(Output::Media(cmd));
    }

    /// The browser's `dtmf`: each digit to the media as RFC 4733 events, or
    /// an `error` saying why not. No SIP INFO fallback: a trunk that did not
    /// take telephone-event (offered on every call) is told nothing, the
    /// browser is told clearly.
    fn dtmf(&mut self, session: SessionKey, digits: &[DtmfDigit]) {
        if Some(session) != self.owner {
            return self.error(session, 404, "no call with this id");
        }
        if self.ended.is_some() {
            return self.error(session, 404, "the call has ended");
        }
        if !self.media_started {
            return self.error(
                session,
                409,
                "the call has no media yet: DTMF needs an answer",
            );
        }
        if self.telephone_event.is_none() {
            // RFC 4733 is impossible on this leg: SIP INFO carries the
            // digits instead, as FreeSWITCH's and Asterisk's INFO modes do.
            if self.info_dtmf.queue.len() + digits.len() > INFO_DTMF_QUEUE {
                return self.error(session, 409, "too many DTMF digits waiting to be sent");
            }
            info!(
                count = digits.len(),
                "DTMF toward the trunk by SIP INFO (no telephone-event)"
            );
            self.info_dtmf.queue.extend(digits.iter().copied());
            self.count_dtmf(true, true, digits.len());
            return;
        }
        info!(count = digits.len(), "DTMF toward the trunk");
        self.count_dtmf(true, false, digits.len());
        for digit in digits {
            self.media(MediaCommand::Dtmf(Toward::Trunk, *digit));
        }
    }

    /// A digit from the trunk (RFC 4733 event or SIP INFO): the owner hears
    /// it; one from SIP INFO is also played to the browser as RFC 4733
    /// events when it negotiated telephone-event (it then hears the tone).
    fn dtmf_from_trunk(&mut self, digit: DtmfDigit, how: DtmfFrom) {
        if self.ended.is_some() {
            return;
        }
        info!(how = ?how, "DTMF from the trunk");
        self.count_dtmf(false, how == DtmfFrom::SipInfo, 1);
        let browser_te = self.telephone_event.is_some_and(|te| te.browser.is_some());
        if how == DtmfFrom::SipInfo && browser_te {
            self.media(MediaCommand::Dtmf(Toward::Browser, digit));
        }
        let id = self.id.clone();
        self.tell_owner(SessionEvent::Dtmf { id, digit });
    }

    fn count_dtmf(&mut self, to_trunk: bool, info: bool, digits: usize) {
        let digits = u64::try_from(digits).unwrap_or(u64::MAX);
        self.out.push_back(Output::Dtmf {
            to_trunk,
            info,
            digits,
        });
    }

    /// The call is over for the browsers: the owner hears `cause`, media
    /// stops, and only the SIP dialog's (bounded) wind-down is left.
    fn finish(&mut self, cause: Cause, now: Instant) {
        if self.ended.is_some() {
            return;
        }
        info!(cause = %cause, "call ends");
        if self.codec_switch.take().is_some() {
            // The trunk's re-offer waited for the browser: it gets its final answer.
            self.deferred_answer = Some(OfferAnswer::Refuse(488));
        }
        if self.media_started {
            self.media(MediaCommand::Stop);
        }
        self.dtls_deadline = None;
        self.ring_deadline = None;
        self.resume_deadline = None;
        self.teardown_deadline = Some(now + self.timers.teardown);
        let event = self.hangup_event(&cause);
        self.tell_owner(event);
        self.ended = Some(cause);
    }

    /// The trunk's re-INVITE or UPDATE (see `calls::renegotiate`): the
    /// answer for the SIP side, `None` for an ACK's answer (nothing to send).
    fn renegotiate(&mut self, event: RenegotiationEvent, now: Instant) -> Option<OfferAnswer> {
        let live = self.ended.is_none();
        match event {
            // An UPDATE without SDP only refreshes the target (RFC 3311 5.2).
            RenegotiationEvent::Offer {
                update: true,
                sdp: None,
            } => Some(OfferAnswer::Empty),
            RenegotiationEvent::Offer { sdp, .. } => {
                let Some(session) = self.trunk_session.as_mut().filter(|_| live) else {
                    warn!("trunk re-offer before the media runs or after the end: 488");
                    return Some(OfferAnswer::Refuse(488));
                };
                let Some(sdp) = sdp else {
                    info!("trunk re-INVITE without SDP: our offer goes in the 200");
                    return Some(OfferAnswer::Sdp(session.offer()));
                };
                match session.answer(&sdp) {
                    Ok((answer, change)) => {
                        self.apply(change, now);
                        Some(OfferAnswer::Sdp(answer))
                    }
                    Err(e @ Refusal::CodecGone(_)) => {
                        if self.ask_browser(sdp, now) {
                            return Some(OfferAnswer::Later);
                        }
                        warn!(reason = %e, "trunk re-offer refused; the call goes on unchanged");
                        Some(OfferAnswer::Refuse(488))
                    }
                    Err(e) => {
                        warn!(reason = %e, "trunk re-offer refused; the call goes on unchanged");
                        Some(OfferAnswer::Refuse(488))
                    }
                }
            }
            RenegotiationEvent::AckAnswer { sdp } => {
                let session = self.trunk_session.as_mut().filter(|_| live)?;
                match session.take_answer(sdp.as_deref()) {
                    Ok(change) => self.apply(change, now),
                    // Too late to refuse: the offer was ours. The leg stays
                    // as it was; a trunk that sends elsewhere now ends in
                    // the media timeout.
                    Err(e) => warn!(reason = %e, "unusable answer in the trunk's ACK"),
                }
                None
            }
        }
    }

    /// The trunk's re-offer `trunk_sdp` dropped the call's codec: re-offers
    /// the browser another codec it accepted, if the offer has one. The
    /// trunk's request waits (100 sent) until [`Common::on_reanswer`] or
    /// [`CODEC_SWITCH_WAIT`]. False: nothing to ask (refuse the trunk).
    fn ask_browser(&mut self, trunk_sdp: String, now: Instant) -> bool {
        let Some(codecs) = self
            .trunk_session
            .as_ref()
            .and_then(|s| s.switch_for(&trunk_sdp))
        else {
            return false;
        };
        if self.owner.is_none() || self.codec_switch.is_some() {
            return false;
        }
        if matches!(self.late_reoffer, Some(LateReoffer::Reverting { .. })) {
            return false;
        }
        // After an abandoned re-offer the browser may hold its version:
        // ours must rise above it either way.
        let previous = match self.late_reoffer.take() {
            Some(LateReoffer::Abandoned { browser_sdp }) => Some(browser_sdp),
            _ => self.browser_sdp.clone(),
        };
        let Some(previous) = previous else {
            return false;
        };
        let offer = match sdp::write_browser_reoffer(&previous, &codecs) {
            Ok(offer) => offer,
            Err(e) => {
                warn!(error = %e, "cannot write the re-offer to the browser");
                return false;
            }
        };
        info!(codec = %codec_label(&codecs[0]), "the trunk changes the codec: re-offering the browser");
        let id = self.id.clone();
        self.tell_owner(SessionEvent::Offer {
            id,
            sdp: offer.clone(),
        });
        self.codec_switch = Some(CodecSwitch {
            trunk_sdp,
            codec: codecs[0].clone(),
            browser_sdp: offer,
            deadline: now + CODEC_SWITCH_WAIT,
        });
        true
    }

    /// The browser's `answer` to our re-offer: the trunk gets its answer
    /// with the codec the browser took, or 488 when it did not take it.
    fn on_reanswer(&mut self, session: SessionKey, sdp: &str, now: Instant) {
        if Some(session) != self.owner {
            return self.error(session, 403, "this call is not this session's");
        }
        let Some(switch) = self.codec_switch.take() else {
            return self.late_reanswer(session, sdp, now);
        };
        let answer = self.switched(switch, sdp, now);
        self.deferred_answer = Some(answer);
    }

    /// An `answer` with no re-offer of ours waiting: the answer to one we
    /// gave up on (the trunk got 488 and kept the call's codec, while the
    /// browser now sends the new one), which is taken back with an offer of
    /// the call's codec; or the answer to that offer.
    fn late_reanswer(&mut self, session: SessionKey, sdp: &str, now: Instant) {
        match self.late_reoffer.take() {
            Some(LateReoffer::Abandoned { browser_sdp }) => {
                let Some(codecs) = self
                    .trunk_session
                    .as_ref()
                    .map(|s| s.current_browser_codecs())
                else {
                    return;
                };
                let offer = match sdp::write_browser_reoffer(&browser_sdp, &codecs) {
                    Ok(offer) => offer,
                    Err(e) => {
                        return warn!(error = %e, "cannot write the offer back to the call's codec")
                    }
                };
                warn!(
                    codec = %codec_label(&codecs[0]),
                    "the browser answered our re-offer after the trunk was refused: offering it the call's codec again"
                );
                let id = self.id.clone();
                self.tell_owner(SessionEvent::Offer {
                    id,
                    sdp: offer.clone(),
                });
                self.late_reoffer = Some(LateReoffer::Reverting {
                    codec: codecs[0].clone(),
                    browser_sdp: offer,
                    deadline: now + CODEC_SWITCH_WAIT,
                });
            }
            Some(LateReoffer::Reverting {
                codec, browser_sdp, ..
            }) => {
                let back = sdp::parse_browser_reanswer(sdp).is_ok_and(|codecs| {
                    codecs
                        .iter()
                        .any(|c| !c.is_telephone_event() && c.same_as(&codec))
                });
                if back {
                    info!("the browser is back on the call's codec");
                    self.browser_sdp = Some(browser_sdp);
                } else {
                    warn!("the browser's answer does not take the call's codec back: its audio is not forwarded");
                    self.error(session, 488, "the answer lacks the call's codec");
                }
            }
            None => self.error(session, 409, "no offer of the gateway waits for an answer"),
        }
    }

    fn switched(&mut self, switch: CodecSwitch, sdp: &str, now: Instant) -> OfferAnswer {
        let codecs = match sdp::parse_browser_reanswer(sdp) {
            Ok(codecs) => codecs,
            Err(e) => {
                warn!(error = %e, "the browser's answer to our re-offer does not parse: 488 to the trunk");
                return OfferAnswer::Refuse(488);
            }
        };
        let Some(codec) = codecs
            .iter()
            .find(|c| !c.is_telephone_event() && c.same_as(&switch.codec))
        else {
            warn!("the browser's answer lacks the new codec: 488 to the trunk, the call goes on unchanged");
            return OfferAnswer::Refuse(488);
        };
        let te = codecs
            .iter()
            .find(|c| c.is_telephone_event() && c.clock_rate == codec.clock_rate)
            .map(|c| c.pt);
        let Some(session) = self.trunk_session.as_mut() else {
            return OfferAnswer::Refuse(488);
        };
        match session.answer_switched(&switch.trunk_sdp, codec.clone(), te) {
            Ok((answer, change)) => {
                info!(codec = %codec_label(codec), "the browser took the trunk's new codec");
                self.codec = Some(codec_label(codec));
                self.browser_sdp = Some(switch.browser_sdp);
                self.apply(change, now);
                OfferAnswer::Sdp(answer)
            }
            Err(e) => {
                warn!(reason = %e, "trunk re-offer refused after the browser's answer");
                OfferAnswer::Refuse(488)
            }
        }
    }

    /// No `answer` from the browser in time: 488 to the trunk.
    fn codec_switch_timeout(&mut self, now: Instant) {
        if self
            .codec_switch
            .as_ref()
            .is_some_and(|s| now >= s.deadline)
        {
            if let Some(switch) = self.codec_switch.take() {
                self.late_reoffer = Some(LateReoffer::Abandoned {
                    browser_sdp: switch.browser_sdp,
                });
            }
            warn!("the browser did not answer our re-offer: 488 to the trunk, the call goes on unchanged");
            self.deferred_answer = Some(OfferAnswer::Refuse(488));
        }
        if let Some(LateReoffer::Reverting { deadline, .. }) = &self.late_reoffer {
            if now >= *deadline {
                warn!("the browser did not answer our offer back to the call's codec");
                self.late_reoffer = None;
            }
        }
    }

    /// The call's telephone-event as the trunk session now has it: a
    /// re-offer may renumber the trunk's, a codec change the browser's and
    /// its clock, a transfer's new dialog both; our own DTMF and the relay
    /// follow. A trunk that dropped it leaves the call without one.
    fn sync_telephone_event(&mut self) {
        let (Some(s), Some(t)) = (&self.trunk_session, self.telephone_event.as_mut()) else {
            return;
        };
        match s.trunk_te {
            Some(pt) => {
                t.trunk = pt;
                t.browser = s.browser_te;
                if s.browser_te.is_some() {
                    t.clock_rate = s.browser_codec.clock_rate;
                }
            }
            None => self.telephone_event = None,
        }
    }

    /// Moves the relay's trunk leg (the call's media source setting and
    /// telephone-event applied).
    fn update_trunk_leg(&mut self, mut params: TrunkLegParams, map: PayloadMap) {
        params.media_source = self.media_source;
        self.media(MediaCommand::UpdateTrunk(Box::new(TrunkUpdate {
            trunk: params,
            payload_map: map,
            telephone_event: self.telephone_event,
        })));
    }

    /// Carries out what a re-offer changed: the trunk leg, hold, timeouts.
    fn apply(&mut self, change: Change, now: Instant) {
        if let Some((params, map)) = change.update {
            info!(remote = %params.remote_rtp, "trunk re-offer: moving or re-keying the trunk leg");
            if let Some(s) = &self.trunk_session {
                let security = s.security();
                // A DTLS leg keeps its profile's name; a rebuilt association
                // names it again when its handshake is done.
                if !(security == "dtls-srtp" && self.trunk_security.starts_with("dtls-srtp ")) {
                    self.trunk_security = security;
                }
            }
            self.sync_telephone_event();
            self.update_trunk_leg(params, map);
        }
        let id = self.id.clone();
        match change.hold {
            Some(true) => {
                info!("the trunk put the call on hold");
                // Our answer said recvonly (or inactive): the browser's
                // audio stops at the relay.
                self.media(MediaCommand::Hold(true));
                self.resume_deadline = None;
                self.media(MediaCommand::SetTimeout(self.timers.held_media));
                self.tell_owner(SessionEvent::Held {
                    id,
                    by: HoldParty::Trunk,
                });
            }
            Some(false) => {
                info!("the trunk took the call off hold");
                let browser_holds = self.browser_holds();
                self.media(MediaCommand::Hold(browser_holds));
                if !browser_holds {
                    self.resume_deadline = Some(now + self.timers.answered_media);
                }
                self.tell_owner(SessionEvent::Resumed {
                    id,
                    by: HoldParty::Trunk,
                });
            }
            None => {}
        }
    }

    fn browser_holds(&self) -> bool {
        self.trunk_session.as_ref().is_some_and(|s| s.local_hold)
    }

    /// Our re-INVITE refresh (RFC 4028) with the session as it is: the
    /// SDP of the browser's hold state, our key. `None` while an offer of
    /// ours is out (its answer refreshes) or the media does not run.
    fn refresh_offer(&mut self) -> Option<String> {
        if self.ended.is_some()
            || self.hold_request.is_some()
            || self.refresh_request
            || self.codec_switch.is_some()
        {
            return None;
        }
        let session = self.trunk_session.as_mut()?;
        let hold = session.local_hold;
        Some(session.hold_offer(hold))
    }

    /// Whether our refresh re-INVITE went out.
    fn refresh_sent(&mut self, sent: Result<(), OwnError>) {
        match sent {
            Ok(()) => self.refresh_request = true,
            Err(e) => {
                warn!(error = %e, "cannot send the session refresh");
                if let Some(s) = self.trunk_session.as_mut() {
                    s.drop_offer();
                }
            }
        }
    }

    /// The browser's `hold` / `resume`: checks it and writes our offer for
    /// the trunk, `None` when it was answered here (an `error`, or the
    /// state it asked for is already in force).
    fn hold_offer(&mut self, session: SessionKey, hold: bool) -> Option<String> {
        let what = if hold { "hold" } else { "resume" };
        if Some(session) != self.owner {
            self.error(session, 404, "no call with this id on this session");
            return None;
        }
        if self.ended.is_some() || !self.connected_sent {
            self.error(
                session,
                409,
                &format!("cannot {what}: the call is not connected"),
            );
            return None;
        }
        if self.hold_request.is_some() {
            self.error(session, 409, "a hold or resume of this call is in progress");
            return None;
        }
        if self.private {
            // Its re-INVITE would have to restate a DTLS-SRTP session the
            // gateway only relays: not built.
            self.error(
                session,
                409,
                &format!("cannot {what} a private call (relayed end to end)"),
            );
            return None;
        }
        // The trunk's re-INVITE waits for the browser's answer: no INVITE
        // of ours while it is open (RFC 3261 14.1).
        if self.codec_switch.is_some() {
            self.error(
                session,
                409,
                "a codec change of the trunk is in progress: answer its offer first",
            );
            return None;
        }
        let trunk_session = self.trunk_session.as_mut()?;
        if trunk_session.local_hold == hold {
            // Asked twice: the state is already in force; say so again.
            self.tell_hold(hold);
            return None;
        }
        info!(
            hold,
            "the browser asks to {what}: re-INVITE toward the trunk"
        );
        Some(trunk_session.hold_offer(hold))
    }

    fn tell_hold(&mut self, hold: bool) {
        let id = self.id.clone();
        let by = HoldParty::Browser;
        self.tell_owner(if hold {
            SessionEvent::Held { id, by }
        } else {
            SessionEvent::Resumed { id, by }
        });
    }

    /// The SIP side could not send our re-INVITE.
    fn hold_not_sent(&mut self, error: &str) {
        if let Some(s) = self.trunk_session.as_mut() {
            s.drop_offer();
        }
        if let Some(owner) = self.owner {
            self.error(owner, 409, &format!("cannot re-INVITE the trunk: {error}"));
        }
    }

    /// The outcome of our re-INVITE for the browser's hold or resume. A
    /// cause when the call must end: the trunk lost the dialog (481) or
    /// never answered (408), as RFC 3261 14.1 asks, or it answered with an
    /// SDP we cannot use (the 2xx is ACKed: nothing else to refuse it with).
    /// The browser's `transfer`: checks it and returns the Refer-To URI.
    fn transfer_target(&mut self, session: SessionKey, to: &str) -> Option<String> {
        if Some(session) != self.owner {
            self.error(session, 404, "no call with this id on this session");
            return None;
        }
        if self.ended.is_some() || !self.connected_sent {
            self.error(session, 409, "cannot transfer: the call is not connected");
            return None;
        }
        if self.transfer.is_some() {
            self.error(session, 409, "a transfer of this call is in progress");
            return None;
        }
        Some(format!("sip:{to}@{}", self.refer_base))
    }

    /// The REFER's final answer: a refusal ends the transfer (the browser
    /// hears its code in `transferred`); 202 waits for the NOTIFYs.
    fn on_referred(&mut self, code: u16) {
        if (200..300).contains(&code) {
            info!(
                code,
                "the trunk accepted the transfer; waiting for its NOTIFYs"
            );
            return;
        }
        warn!(code, "the trunk refused the transfer; the call goes on");
        if let Some(to) = self.transfer.take() {
            let id = self.id.clone();
            self.tell_owner(SessionEvent::Transferred { id, to, code });
        }
    }

    /// A NOTIFY about our REFER: a final status goes to the browser as
    /// `transferred`; a 2xx means the trunk now talks to the target, so
    /// the gateway leaves the call (BYE, RFC 5589 blind transfer).
    fn on_transfer_notify(&mut self, code: u16) -> Option<Cause> {
        info!(code, "NOTIFY about the transfer");
        if code < 200 {
            return None;
        }
        let to = self.transfer.take()?;
        let id = self.id.clone();
        self.tell_owner(SessionEvent::Transferred { id, to, code });
        (200..300).contains(&code).then_some(Cause::Transferred)
    }

    fn on_own(&mut self, event: OwnEvent, now: Instant) -> Option<Cause> {
        if let OwnEvent::Referred { code } = event {
            self.on_referred(code);
            return None;
        }
        if let OwnEvent::InfoAnswered { code } = event {
            self.on_info_dtmf_answered(code);
            return None;
        }
        let refresh = self.hold_request.is_none() && std::mem::take(&mut self.refresh_request);
        let hold = match self.hold_request.take() {
            Some(hold) => hold,
            None if refresh => self.browser_holds(),
            None => return None,
        };
        if self.ended.is_some() {
            return None;
        }
        let what = match (refresh, hold) {
            (true, _) => "session refresh",
            (false, true) => "hold",
            (false, false) => "resume",
        };
        match event {
            OwnEvent::Updated { .. }
            | OwnEvent::Referred { .. }
            | OwnEvent::InfoAnswered { .. } => None,
            OwnEvent::Answered { sdp, .. } => {
                let session = self.trunk_session.as_mut()?;
                match session.take_hold_answer(sdp.as_deref(), hold) {
                    Ok(change) if refresh => {
                        info!("the trunk answered our session refresh");
                        self.apply(change, now);
                        None
                    }
                    Ok(change) => {
                        info!(hold, "the trunk accepted our {what}");
                        self.apply(change, now);
                        let trunk_holds = self.trunk_session.as_ref().is_some_and(|s| s.held);
                        self.media(MediaCommand::Hold(hold || trunk_holds));
                        if hold {
                            self.resume_deadline = None;
                            self.media(MediaCommand::SetTimeout(self.timers.held_media));
                        } else if !trunk_holds {
                            self.resume_deadline = Some(now + self.timers.answered_media);
                        }
                        self.tell_hold(hold);
                        None
                    }
                    Err(e) => {
                        warn!(reason = %e, "unusable answer to our {what}");
                        Some(Cause::TrunkSdp {
                            code: 488,
                            reason: format!("unusable answer to our {what} re-INVITE: {e}"),
                        })
                    }
                }
            }
            OwnEvent::Refused { code, reason } => {
                if let Some(s) = self.trunk_session.as_mut() {
                    s.drop_offer();
                }
                if matches!(code, 408 | 481) {
                    warn!(code, %reason, "our {what} re-INVITE failed: the dialog is gone");
                    return Some(Cause::TrunkRejected {
                        code,
                        reason: format!("the trunk answered our {what} with {code} {reason}"),
                    });
                }
                warn!(code, %reason, "the trunk refused our {what}; the call goes on as it was");
                if refresh {
                    // The session timer ends the call if no refresh succeeds.
                    return None;
                }
                if let Some(owner) = self.owner {
                    self.error(
                        owner,
                        code,
                        &format!("the trunk refused the {what}: {code} {reason}"),
                    );
                }
                None
            }
        }
    }

    /// The trunk's answer to the INFO of one of the browser's digits: the
    /// next may go; a refusal drops the digits left and tells the owner.
    fn on_info_dtmf_answered(&mut self, code: u16) {
        self.info_dtmf.out = false;
        if (200..300).contains(&code) {
            return;
        }
        let dropped = self.info_dtmf.queue.len();
        self.info_dtmf.queue.clear();
        warn!(
            code,
            dropped, "the trunk refused a DTMF digit sent by SIP INFO"
        );
        if let (Some(owner), None) = (self.owner, &self.ended) {
            self.error(
                owner,
                488,
                &format!(
                    "the trunk refused DTMF by SIP INFO ({code}) and did not negotiate telephone-event (RFC 4733)"
                ),
            );
        }
    }

    /// `connected` goes out once the trunk side is up and the browser's DTLS
    /// is, so the lock the browser shows is true for both legs.
    fn maybe_connected(&mut self, trunk_up: bool) {
        if self.connected_sent || !trunk_up || self.ended.is_some() || self.trunk_dtls_pending {
            return;
        }
        let security = if self.private {
            let Some(suite) = self.private_connected else {
                return;
            };
            let text = private_security(suite);
            Security {
                browser: text.clone(),
                trunk: text,
                private: true,
            }
        } else {
            let Some(suite) = self.browser_suite else {
                return;
            };
            Security {
                browser: format!("dtls-srtp {suite}"),
                trunk: self.trunk_security.clone(),
                private: false,
            }
        };
        self.connected_sent = true;
        info!(private = self.private, "call connected");
        self.out.push_back(Output::Connected);
        let event = SessionEvent::Connected {
            id: self.id.clone(),
            security,
        };
        self.tell_owner(event);
    }
}

/// How many of the browser's digits may wait for SIP INFO (as many as the
/// relay queues for RFC 4733).
const INFO_DTMF_QUEUE: usize = 64;
/// One INFO digit per 200 ms at most: the 100 ms tone its body announces
/// and a 100 ms pause, the cadence of our RFC 4733 digits.
const INFO_DTMF_CADENCE: Duration = Duration::from_millis(200);

/// The browser's digits toward a trunk without telephone-event: one INFO
/// out at a time (digits keep their order), the next not before the
/// cadence allows.
#[derive(Debug, Default)]
struct InfoDtmf {
    queue: VecDeque<DtmfDigit>,
    /// An INFO is waiting for its final answer.
    out: bool,
    /// The earliest the next INFO may go.
    next: Option<Instant>,
}

impl InfoDtmf {
    /// A digit waits, none is out, and the cadence allows it now.
    fn ready(&self, now: Instant) -> bool {
        !self.out && !self.queue.is_empty() && self.next.is_none_or(|t| t <= now)
    }

    /// When a waiting digit becomes due (the pump sends one that is due
    /// already as soon as it can).
    fn wakeup(&self) -> Option<Instant> {
        if self.out || self.queue.is_empty() {
            return None;
        }
        self.next
    }
}

impl Call {
    /// Starts a browser-to-trunk call: the INVITE is queued at once. An
    /// unusable browser offer or policy ends the call at once (the owner
    /// gets `hangup`, [`is_finished`](Self::is_finished) is true).
    pub fn outgoing(setup: OutgoingSetup, now: Instant) -> Call {
        let mut c = Common::new(
            setup.id.clone(),
            setup.timers,
            setup.media.clone(),
            Some(setup.session),
            &setup.local,
            setup.trunk_sources.clone(),
        );
        c.media_source = setup.account.trunk.media_source;
        c.redact = setup.account.redact;
        let refuse = |mut c: Common, cause: Cause| {
            c.finish(cause, now);
            c.finished = true;
            Call {
                c,
                kind: Kind::Refused,
                transfer_in: None,
                retired: Vec::new(),
            }
        };
        let offer = match sdp::parse_browser_offer(&setup.browser_sdp) {
            Ok(offer) => offer,
            Err(e) => {
                warn!(error = %e, "browser offer refused");
                return refuse(c, Cause::BrowserSdp(format!("unusable SDP offer: {e}")));
            }
        };
        let plan = match setup.account.outgoing_policy() {
            Ok(plan) => plan,
            Err(e) => return refuse(c, Cause::Policy(e.to_string())),
        };
        let trunk = &setup.account.trunk;
        c.refer_base = format!("{}:{}", uri_host(&trunk.uri.host), trunk.uri.port);
        let offer_media = match &plan {
            TrunkLegPlan::Sdes { suites, .. } => TrunkOfferMedia::Sdes {
                keys: suites
                    .iter()
                    .map(|suite| SrtpKeyMaterial::generate(*suite))
                    .collect(),
            },
            TrunkLegPlan::Dtls { .. } => TrunkOfferMedia::Dtls {
                fingerprint_sha256: setup.media.fingerprint_sha256.clone(),
            },
            TrunkLegPlan::Plain | TrunkLegPlan::Private => TrunkOfferMedia::Plain,
        };
        let offer_params = TrunkOfferParams {
            local_ip: setup.media.public_ip,
            rtp_port: setup.media.trunk_rtp_port,
            media: offer_media,
            session_id: rand::random::<u32>() as u64,
            session_version: 1,
        };
        let trunk_offer = if plan == TrunkLegPlan::Private {
            // The browser's DTLS peer is the trunk: the gateway holds no key.
            c.private = true;
            info!("private call: the media is relayed end to end, never decrypted");
            sdp::write_private_trunk_offer(&offer, &offer_params)
        } else {
            sdp::write_trunk_offer(&offer, &offer_params)
        };
        // secure_media = "optional": a plain RTP offer ready for a trunk that
        // refuses SRTP with 488 (FreeSWITCH's "SAVP preferred, AVP
        // accepted"). It goes in a new INVITE of the same call (see
        // `sip::uac`: a 488 leaves no dialog to re-INVITE in).
        let fallback = match &plan {
            TrunkLegPlan::Sdes {
                accept_plain: true, ..
            }
            | TrunkLegPlan::Dtls {
                accept_plain: true, ..
            } => {
                let params = TrunkOfferParams {
                    media: TrunkOfferMedia::Plain,
                    session_version: offer_params.session_version + 1,
                    ..offer_params.clone()
                };
                Some((sdp::write_trunk_offer(&offer, &params), params))
            }
            _ => None,
        };
        let cfg = UacConfig {
            call_id: setup.sip_call_id,
            request_uri: format!(
                "sip:{}@{}:{}",
                setup.to,
                uri_host(&trunk.uri.host),
                trunk.uri.port
            ),
            ..trunk_call_config(
                &setup.account,
                &setup.local,
                setup.destination,
                setup.routes,
            )
        };
        c.trunk_call = Some(cfg.clone());
        let mut uac = OutgoingCall::new(cfg, trunk_offer, now);
        uac.set_refer_answer(c.refer_answer(trunk.accept_refer));
        let fallback_params = fallback.map(|(sdp, params)| {
            uac.set_fallback_offer(sdp);
            params
        });
        let to = Personal::new(setup.to.clone(), setup.account.redact);
        info!(sip_call_id = %uac.call_id(), to = %to, trunk = %trunk.name, "calling trunk");
        c.ring_deadline = Some(now + c.timers.ring);
        let mut call = Call {
            transfer_in: None,
            retired: Vec::new(),
            c,
            kind: Kind::Outgoing(Box::new(Outgoing {
                uac,
                offer: Some(offer),
                offer_params: Some(offer_params),
                plan,
                fallback_params,
                fell_back: false,
                answered: false,
                trunk_sdp: None,
                browser_codec: None,
                dtls: None,
                private_fingerprint: None,
            })),
        };
        call.pump(now);
        call
    }

    /// Starts a trunk-to-browser call: every session gets `incoming` with
    /// the gateway's offer, and the trunk hears 180.
    pub fn incoming(setup: IncomingSetup, now: Instant) -> Call {
        let mut c = Common::new(
            setup.id.clone(),
            setup.timers,
            setup.media.clone(),
            None,
            &setup.local,
            setup.trunk_sources,
        );
        c.media_source = setup.account.trunk.media_source;
        c.redact = setup.account.redact;
        let offer_params = BrowserOfferParams {
            local_ip: setup.media.public_ip,
            port: setup.media.browser_port,
            ice_ufrag: setup.media.ice_ufrag.clone(),
            ice_pwd: setup.media.ice_pwd.expose().clone(),
            fingerprint_sha256: setup.media.fingerprint_sha256.clone(),
            session_id: rand::random::<u32>() as u64,
            session_version: 1,
            ssrc: setup.media.ssrc_to_browser,
        };
        let browser_offer = match (&setup.plan, &setup.trunk_dtls) {
            (IncomingLegPlan::Private, Some(trunk_dtls)) => {
                // The browsers' DTLS peer is the trunk: the gateway holds no key.
                c.private = true;
                info!("private call: the media is relayed end to end, never decrypted");
                sdp::write_private_browser_offer(&setup.offer, trunk_dtls, &offer_params)
                    .unwrap_or_else(|e| {
                        // Our own SDP re-read: cannot fail in practice; the
                        // browser's DTLS then fails and ends the call.
                        warn!(error = %e, "private browser offer not written");
                        sdp::write_browser_offer(&setup.offer, &offer_params)
                    })
            }
            _ => sdp::write_browser_offer(&setup.offer, &offer_params),
        };
        let ring_event = SessionEvent::Incoming {
            id: setup.id.clone(),
            from: setup.from.to_string(),
            sdp: browser_offer,
            verstat: String::new(),
        };
        for &session in &setup.sessions {
            c.tell(session, ring_event.clone());
        }
        c.ring_deadline = Some(now + c.timers.ring);
        let trunk = &setup.account.trunk;
        c.refer_base = format!("{}:{}", uri_host(&trunk.uri.host), trunk.uri.port);
        c.trunk_security = match &setup.plan {
            IncomingLegPlan::Sdes { suite, .. } => format!("sdes-srtp {suite}"),
            // The profile is known once the handshake is done.
            IncomingLegPlan::Dtls { .. } => "dtls-srtp".into(),
            IncomingLegPlan::Plain => "rtp (unencrypted)".into(),
            IncomingLegPlan::Private => "dtls-srtp (end to end)".into(),
        };
        c.trunk_dtls_pending = matches!(setup.plan, IncomingLegPlan::Dtls { .. });
        let mut uas = setup.uas;
        c.trunk_call = setup
            .transfer_route
            .map(|r| trunk_call_config(&setup.account, &r.local, r.destination, r.routes));
        uas.set_refer_answer(c.refer_answer(trunk.accept_refer));
        uas.ringing(now);
        info!(
            sessions = setup.sessions.len(),
            from = %setup.from,
            "ringing the account's browser sessions"
        );
        let mut call = Call {
            transfer_in: None,
            retired: Vec::new(),
            c,
            kind: Kind::Incoming(Box::new(Incoming {
                uas,
                offer: setup.offer,
                plan: setup.plan,
                contact: setup.local.contact(&setup.account.name),
                ringing: setup.sessions,
                ring_event,
                declined_any: false,
                reject_code: setup.reject_code,
                phase: Phase::Ringing,
                answer: None,
                suites: setup.account.trunk.srtp_suites.clone(),
                delayed_offer: setup.delayed_offer,
                accepted_sdp: None,
                srtp_optional: setup.account.trunk.secure_media
                    == crate::policy::SecureMedia::Optional,
            })),
        };
        if let Kind::Incoming(inc) = &mut call.kind {
            inc.check_all_gone(&mut call.c, now);
        }
        call.pump(now);
        call
    }

    pub fn id(&self) -> &CallId {
        &self.c.id
    }

    /// The Call-ID of the call's SIP dialog.
    pub fn sip_call_id(&self) -> String {
        match &self.kind {
            Kind::Outgoing(o) => o.uac.call_id().to_string(),
            Kind::Incoming(i) => i.uas.call_id(),
            Kind::Refused => String::new(),
        }
    }

    /// The browsers have been told the call ended; only SIP wind-down is left.
    pub fn is_over_for_browsers(&self) -> bool {
        self.c.ended.is_some()
    }

    /// Nothing is left to do: drop the call.
    pub fn is_finished(&self) -> bool {
        self.c.finished
    }

    /// Why the call ended, once it has.
    pub fn cause(&self) -> Option<&Cause> {
        self.c.ended.as_ref()
    }

    /// What the operator sees of the call now.
    pub fn info(&self) -> CallInfo {
        let state = if self.c.ended.is_some() {
            CallState::Ending
        } else if self.c.connected_sent {
            CallState::Connected
        } else {
            match &self.kind {
                Kind::Outgoing(o) if o.answered => CallState::Answering,
                Kind::Incoming(i) if i.phase != Phase::Ringing => CallState::Answering,
                _ => CallState::Ringing,
            }
        };
        CallInfo {
            state,
            codec: self.c.codec.clone(),
            browser_security: match self.c.private_connected {
                Some(suite) => Some(private_security(suite)),
                None => self.c.browser_suite.map(|s| format!("dtls-srtp {s}")),
            },
            trunk_security: Some(self.c.trunk_security.clone()).filter(|s| !s.is_empty()),
            private: self.c.private,
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.c.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.c.finished {
            return None;
        }
        let sip = match &self.kind {
            Kind::Outgoing(o) => o.uac.poll_timeout(),
            Kind::Incoming(i) => i.uas.poll_timeout(),
            Kind::Refused => None,
        };
        let transfer = self.transfer_in.as_ref().and_then(|t| t.uac.poll_timeout());
        let retired = self.retired.iter().filter_map(|r| r.poll_timeout()).min();
        [
            sip,
            transfer,
            retired,
            self.c.dtls_deadline,
            self.c.trunk_dtls_deadline,
            self.c.ring_deadline,
            self.c.teardown_deadline,
            self.c.resume_deadline,
            self.c.codec_switch.as_ref().map(|s| s.deadline),
            match &self.c.late_reoffer {
                Some(LateReoffer::Reverting { deadline, .. }) => Some(*deadline),
                _ => None,
            },
            self.c.info_dtmf.wakeup(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn handle_session(&mut self, now: Instant, input: SessionInput) {
        if self.c.finished {
            return;
        }
        if let SessionInput::Dtmf { session, digits } = input {
            self.c.dtmf(session, &digits);
            self.pump(now);
            return;
        }
        if let SessionInput::Hold { session, hold } = input {
            self.browser_hold(session, hold, now);
            self.pump(now);
            return;
        }
        if let SessionInput::Transfer { session, to } = input {
            self.browser_transfer(session, to, now);
            self.pump(now);
            return;
        }
        if let SessionInput::Reanswer { session, sdp } = input {
            self.c.on_reanswer(session, &sdp, now);
            self.pump(now);
            return;
        }
        match &mut self.kind {
            Kind::Outgoing(o) => o.handle_session(&mut self.c, now, input),
            Kind::Incoming(i) => i.handle_session(&mut self.c, now, input),
            Kind::Refused => {}
        }
        self.pump(now);
    }

    /// A message of this call's Call-ID from `source`.
    pub fn handle_sip(&mut self, now: Instant, msg: SipMessage, source: SocketAddr) {
        if self.c.finished {
            return;
        }
        if let SipMessage::Request(req) = &msg {
            if !self.c.is_trunk(source) {
                // Responses need no such check: they match a transaction of
                // ours by its random branch, which a third party never saw.
                warn!(%source, method = %req.method, "request from outside the call's trunk refused");
                if req.method != rsip::Method::Ack {
                    let refusal = message::build_response(
                        req,
                        403,
                        ResponseParts {
                            user_agent: crate::sip::uas::USER_AGENT,
                            ..Default::default()
                        },
                    );
                    self.c.out.push_back(Output::Sip {
                        to: Target::addr(source, self.c.transport),
                        bytes: message::to_bytes(refusal),
                    });
                }
                return;
            }
        }
        // The new dialog of a trunk's REFER, or one left behind by it.
        let call_id = match &msg {
            SipMessage::Request(r) => message::call_id(r).ok(),
            SipMessage::Response(r) => message::call_id(r).ok(),
        };
        if let Some(t) = self
            .transfer_in
            .as_mut()
            .filter(|t| call_id.as_deref() == Some(t.uac.call_id()))
        {
            t.uac.handle_message(msg, now);
        } else if let Some(r) = self
            .retired
            .iter_mut()
            .find(|r| call_id.as_deref() == Some(r.call_id().as_str()))
        {
            r.handle_message(msg, now);
        } else {
            match &mut self.kind {
                Kind::Outgoing(o) => o.uac.handle_message(msg, now),
                Kind::Incoming(i) => i.uas.handle_message(msg, now),
                Kind::Refused => {}
            }
        }
        self.pump(now);
    }

    /// Sending toward the trunk failed on a connection-oriented transport
    /// (RFC 3261 8.1.3.1: as a 503).
    /// A send over TCP or TLS failed; `reason` says why, in words the
    /// browser may see (never a key or password).
    pub fn handle_transport_error(&mut self, now: Instant, reason: String) {
        if self.c.finished {
            return;
        }
        let cause = Cause::TrunkUnreachable(reason);
        match &mut self.kind {
            Kind::Outgoing(_) | Kind::Refused => {
                // The dialog cannot finish over a dead connection.
                self.c.finish(cause, now);
                self.c.finished = true;
            }
            Kind::Incoming(i) => i.end(&mut self.c, cause, now),
        }
        self.pump(now);
    }

    pub fn handle_media(&mut self, now: Instant, event: MediaEvent) {
        if self.c.finished || self.c.ended.is_some() {
            return;
        }
        match event {
            MediaEvent::BrowserConnected { suite } => {
                info!(suite = %suite, "browser DTLS-SRTP connected");
                self.c.browser_suite = Some(suite);
                self.c.dtls_deadline = None;
                match &mut self.kind {
                    Kind::Outgoing(o) => {
                        let up = o.answered;
                        self.c.maybe_connected(up);
                    }
                    Kind::Incoming(i) => i.browser_connected(&mut self.c, now),
                    Kind::Refused => {}
                }
            }
            MediaEvent::TrunkConnected { suite } => {
                info!(suite = %suite, "trunk DTLS-SRTP connected");
                self.c.trunk_security = format!("dtls-srtp {suite}");
                self.c.trunk_dtls_pending = false;
                self.c.trunk_dtls_deadline = None;
                let up = match &self.kind {
                    Kind::Outgoing(o) => o.answered,
                    Kind::Incoming(i) => i.phase == Phase::Confirmed,
                    Kind::Refused => false,
                };
                self.c.maybe_connected(up);
            }
            MediaEvent::PrivateConnected { suite } => {
                info!(
                    suite = suite.map_or("unknown", |s| s.name()),
                    private = true,
                    "browser and trunk connected end to end (DTLS-SRTP relayed, never decrypted)"
                );
                self.c.private_connected = Some(suite);
                self.c.trunk_security = private_security(suite);
                self.c.dtls_deadline = None;
                let up = match &self.kind {
                    Kind::Outgoing(o) => o.answered,
                    Kind::Incoming(i) => i.phase == Phase::Confirmed,
                    Kind::Refused => false,
                };
                self.c.maybe_connected(up);
            }
            MediaEvent::Failed { reason } => {
                warn!(reason = %reason, "media failed");
                self.end(Cause::MediaFailed(reason), now);
            }
            MediaEvent::BrowserClosed => {
                info!("browser closed its peer connection");
                self.end(Cause::BrowserClosedMedia, now);
            }
            MediaEvent::Timeout => {
                warn!("media timeout");
                self.end(Cause::MediaTimeout, now);
            }
            MediaEvent::Dtmf { digit } => self.c.dtmf_from_trunk(digit, DtmfFrom::Rfc4733),
            MediaEvent::TrunkUnsignaledSource { from } => {
                warn!(
                    from = %from.ip(),
                    "the trunk's media comes from an address its SDP does not name: dropped \
                     (trunks[].media_source = \"latch\" takes it, for a trunk behind NAT or multi-homed)"
                );
                self.c.trunk_unsignaled_source = Some(from);
            }
        }
        self.pump(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.c.finished {
            return;
        }
        if self.c.teardown_deadline.is_some_and(|d| now >= d) {
            warn!("the trunk did not confirm the end of the call; giving up");
            self.c.finished = true;
            return;
        }
        if self.c.dtls_deadline.is_some_and(|d| now >= d) {
            self.c.dtls_deadline = None;
            self.end(Cause::BrowserMediaTimeout, now);
        }
        if self.c.trunk_dtls_deadline.is_some_and(|d| now >= d) {
            self.c.trunk_dtls_deadline = None;
            let mut why = format!(
                "the trunk's DTLS handshake did not complete within {} s",
                self.c.timers.dtls.as_secs()
            );
            if let Some(from) = self.c.trunk_unsignaled_source {
                why.push_str(&format!(
                    " (its DTLS came from {}, which its SDP does not name: see trunks[].media_source)",
                    from.ip()
                ));
            }
            self.end(Cause::MediaFailed(why), now);
        }
        if self.c.ring_deadline.is_some_and(|d| now >= d) {
            self.c.ring_deadline = None;
            self.end(Cause::NoAnswer, now);
        }
        if self.c.resume_deadline.is_some_and(|d| now >= d) {
            self.c.resume_deadline = None;
            let timeout = self.c.timers.answered_media;
            self.c.media(MediaCommand::SetTimeout(timeout));
        }
        self.c.codec_switch_timeout(now);
        match &mut self.kind {
            Kind::Outgoing(o) => o.uac.handle_timeout(now),
            Kind::Incoming(i) => i.uas.handle_timeout(now),
            Kind::Refused => {}
        }
        if let Some(t) = self.transfer_in.as_mut() {
            t.uac.handle_timeout(now);
        }
        for r in &mut self.retired {
            r.handle_timeout(now);
        }
        self.pump(now);
    }

    /// The browser's `hold` / `resume`: our re-INVITE toward the trunk.
    fn browser_hold(&mut self, session: SessionKey, hold: bool, now: Instant) {
        if self.transfer_in.is_some() && Some(session) == self.c.owner {
            return self.c.error(session, 409, TRANSFER_RUNS);
        }
        let Some(sdp) = self.c.hold_offer(session, hold) else {
            return;
        };
        let sent = match &mut self.kind {
            Kind::Outgoing(o) => o.uac.reoffer(sdp, now),
            Kind::Incoming(i) => i.uas.reoffer(sdp, now),
            Kind::Refused => return,
        };
        match sent {
            Ok(()) => self.c.hold_request = Some(hold),
            Err(e) => self.c.hold_not_sent(&e.to_string()),
        }
    }

    /// The browser's `transfer`: REFER toward the trunk in the dialog.
    fn browser_transfer(&mut self, session: SessionKey, to: String, now: Instant) {
        if self.transfer_in.is_some() && Some(session) == self.c.owner {
            return self.c.error(session, 409, TRANSFER_RUNS);
        }
        let Some(refer_to) = self.c.transfer_target(session, &to) else {
            return;
        };
        let sent = match &mut self.kind {
            Kind::Outgoing(o) => o.uac.refer(&refer_to, now),
            Kind::Incoming(i) => i.uas.refer(&refer_to, now),
            Kind::Refused => return,
        };
        match sent {
            Ok(()) => self.c.transfer = Some(to),
            Err(e) => self
                .c
                .error(session, 409, &format!("cannot send REFER: {e}")),
        }
    }

    fn end(&mut self, cause: Cause, now: Instant) {
        match &mut self.kind {
            Kind::Outgoing(o) => o.end(&mut self.c, cause, now),
            Kind::Incoming(i) => i.end(&mut self.c, cause, now),
            Kind::Refused => {}
        }
    }

    /// Moves the SIP machines' output and events through the call.
    fn pump(&mut self, now: Instant) {
        loop {
            let mut progressed = match &mut self.kind {
                Kind::Outgoing(o) => o.pump(&mut self.c, now),
                Kind::Incoming(i) => i.pump(&mut self.c, now),
                Kind::Refused => false,
            };
            progressed |= self.pump_trunk_transfer(now);
            progressed |= self.pump_info_dtmf(now);
            for r in &mut self.retired {
                progressed |= r.drain(&mut self.c.out);
            }
            self.retired.retain(|r| !r.is_finished());
            if !progressed {
                break;
            }
        }
        // The transferor's dialog ended during a transfer that failed
        // afterwards: the call is finished once the dialogs left are.
        if self.c.ended.is_some()
            && self.c.old_dialog_done
            && self.retired.is_empty()
            && self.transfer_in.is_none()
        {
            self.c.finished = true;
        }
    }

    /// Sends the browser's next digit as SIP INFO when the last one was
    /// answered and the cadence allows (see [`InfoDtmf`]).
    fn pump_info_dtmf(&mut self, now: Instant) -> bool {
        if self.c.ended.is_some() {
            self.c.info_dtmf.queue.clear();
            return false;
        }
        if !self.c.info_dtmf.ready(now) {
            return false;
        }
        let Some(digit) = self.c.info_dtmf.queue.pop_front() else {
            return false;
        };
        let sent = match &mut self.kind {
            Kind::Outgoing(o) => o.uac.info_dtmf(digit, now),
            Kind::Incoming(i) => i.uas.info_dtmf(digit, now),
            Kind::Refused => return false,
        };
        match sent {
            Ok(()) => {
                self.c.info_dtmf.out = true;
                self.c.info_dtmf.next = Some(now + INFO_DTMF_CADENCE);
            }
            Err(e) => {
                self.c.info_dtmf.queue.clear();
                if let Some(owner) = self.c.owner {
                    self.c
                        .error(owner, 409, &format!("cannot send DTMF by SIP INFO: {e}"));
                }
            }
        }
        true
    }

    // ---- a REFER of the trunk (see calls::transferee) ----------------------

    fn pump_trunk_transfer(&mut self, now: Instant) -> bool {
        let mut progressed = false;
        if let Some(referral) = self.c.referral.take() {
            self.start_trunk_transfer(&referral, now);
            progressed = true;
        }
        if self.c.ended.is_some() {
            // The browser's end (or the call's) ends the new call too.
            if let Some(mut t) = self.transfer_in.take() {
                t.uac.hangup(now);
                self.retired.push(Retired::Uac(Box::new(t.uac)));
                // The new INVITE's CANCEL still has to run: the call
                // winds down by its teardown deadline, not at once, even
                // when the transferor's dialog is over already.
                self.c.trunk_transfer = false;
                progressed = true;
            }
            return progressed;
        }
        let Some(t) = self.transfer_in.as_mut() else {
            return progressed;
        };
        let (moved, outcome) = t.poll(&mut self.c.out, now);
        progressed |= moved;
        if let Some(Outcome::EarlyMedia(change)) = outcome {
            // The leg only: the session (and its hold) stays the
            // transferor's until the answer.
            if let Some((params, map)) = change.update {
                self.c.update_trunk_leg(params, map);
            }
        } else if let Some(outcome) = outcome {
            if let Some(t) = self.transfer_in.take() {
                self.c.trunk_transfer = false;
                match outcome {
                    Outcome::Answered(answered) => {
                        let (session, change) = *answered;
                        self.trunk_transfer_answered(*t, session, change, now)
                    }
                    Outcome::Failed { code, reason } => {
                        self.trunk_transfer_failed(*t, code, &reason, now)
                    }
                    Outcome::EarlyMedia(_) => {}
                }
            }
        }
        progressed
    }

    /// A NOTIFY about the trunk's REFER in the old dialog, unless the
    /// transferor has left it.
    fn notify_referrer(&mut self, refer_cseq: u32, status: (u16, &str), last: bool, now: Instant) {
        if self.c.referrer_gone {
            return;
        }
        let sent = match &mut self.kind {
            Kind::Outgoing(o) => o.uac.notify_referrer(refer_cseq, status, last, now),
            Kind::Incoming(i) => i.uas.notify_referrer(refer_cseq, status, last, now),
            Kind::Refused => return,
        };
        if let Err(e) = sent {
            warn!(error = %e, "cannot send NOTIFY about the trunk's REFER");
        }
    }

    fn tell_trunk_transfer(&mut self, to: &str, code: u16) {
        let id = self.c.id.clone();
        self.c.tell_owner(SessionEvent::TransferredByTrunk {
            id,
            to: to.to_string(),
            code,
        });
    }

    /// The trunk's REFER, accepted with 202: 100 Trying to the transferor
    /// and the new INVITE out, or at once the final NOTIFY saying why not.
    fn start_trunk_transfer(&mut self, referral: &Referral, now: Instant) {
        if self.c.ended.is_some() {
            return;
        }
        let busy = self.transfer_in.is_some()
            || self.c.transfer.is_some()
            || self.c.hold_request.is_some()
            || self.c.refresh_request;
        let ready = self.c.connected_sent && self.c.trunk_session.is_some();
        let (Some(template), Some(current), false, true) =
            (&self.c.trunk_call, &self.c.trunk_session, busy, ready)
        else {
            warn!(
                busy,
                ready, "the trunk's REFER cannot be carried out now: NOTIFY 503"
            );
            return self.notify_referrer(referral.cseq, (503, "Service Unavailable"), true, now);
        };
        let cfg = UacConfig {
            call_id: message::new_call_id(),
            request_uri: format!("sip:{}@{}", referral.user, self.c.refer_base),
            ..template.clone()
        };
        let refer_answer = self.c.refer_answer(true);
        info!(sip_call_id = %cfg.call_id, "the trunk transfers the call (REFER): calling the target");
        self.c
            .out
            .push_back(Output::ListenCallId(cfg.call_id.clone()));
        let t = TrunkTransfer::start(referral, cfg, current, refer_answer, now);
        self.notify_referrer(referral.cseq, (100, "Trying"), false, now);
        self.tell_trunk_transfer(&t.to, 100);
        self.transfer_in = Some(Box::new(t));
        self.c.trunk_transfer = true;
    }

    /// The target answered: the trunk leg moves to the new dialog, the
    /// transferor hears 200 and the old dialog ends with our BYE.
    fn trunk_transfer_answered(
        &mut self,
        t: TrunkTransfer,
        session: super::renegotiate::TrunkSession,
        change: super::renegotiate::Change,
        now: Instant,
    ) {
        self.notify_referrer(t.refer_cseq, (200, "OK"), true, now);
        let referrer_gone = std::mem::take(&mut self.c.referrer_gone);
        let old_done = std::mem::take(&mut self.c.old_dialog_done);
        let new = Kind::Outgoing(Box::new(Outgoing::transferred(t.uac)));
        let retired = match std::mem::replace(&mut self.kind, new) {
            Kind::Outgoing(mut o) => {
                if !referrer_gone {
                    o.uac.hangup(now);
                }
                Retired::Uac(Box::new(o.uac))
            }
            Kind::Incoming(mut i) => {
                if !referrer_gone {
                    i.uas.hangup(now);
                }
                Retired::Uas(Box::new(i.uas))
            }
            Kind::Refused => return,
        };
        if !old_done {
            self.retired.push(retired);
        }
        self.c.trunk_session = Some(session);
        self.c.apply(change, now);
        self.tell_trunk_transfer(&t.to, 200);
        if let Kind::Outgoing(o) = &self.kind {
            let sip_call_id = o.uac.call_id().to_string();
            self.c.out.push_back(Output::Transferred {
                to: Personal::new(t.to.clone(), self.c.redact),
                sip_call_id,
            });
        }
    }

    /// The new call failed: the transferor hears why; the call goes on
    /// with it, or ends when it has hung up.
    fn trunk_transfer_failed(&mut self, t: TrunkTransfer, code: u16, reason: &str, now: Instant) {
        if t.early_media && !self.c.referrer_gone {
            // Back from the target's early media to the transferor (its
            // SSRC learned anew).
            if let Some((params, map)) = self.c.trunk_session.as_ref().map(|s| s.leg(Vec::new())) {
                info!("the trunk leg goes back to the transferor");
                self.c.update_trunk_leg(params, map);
            }
        }
        self.notify_referrer(t.refer_cseq, (code, reason), true, now);
        self.tell_trunk_transfer(&t.to, code);
        if !t.uac.is_finished() {
            self.retired.push(Retired::Uac(Box::new(t.uac)));
        }
        if std::mem::take(&mut self.c.referrer_gone) {
            let cause = Cause::TrunkRejected {
                code,
                reason: format!(
                    "the trunk's transfer failed ({code} {reason}) and the transferor had hung up"
                ),
            };
            // Finished once the failed INVITE's transaction is (`pump`).
            self.end(cause, now);
        } else {
            info!(
                code,
                "the trunk's transfer failed; the call goes on with the transferor"
            );
        }
    }
}

// ---- browser → trunk ------------------------------------------------------

struct Outgoing {
    uac: OutgoingCall,
    offer: Option<BrowserOffer>,
    offer_params: Option<TrunkOfferParams>,
    plan: TrunkLegPlan,
    /// The plain RTP offer sent if the trunk refuses SRTP with 488.
    fallback_params: Option<TrunkOfferParams>,
    /// The trunk refused SRTP and the call went on with plain RTP (counted
    /// once).
    fell_back: bool,
    answered: bool,
    /// The trunk SDP the media runs on, and the browser's PT of its codec.
    trunk_sdp: Option<String>,
    browser_codec: Option<PayloadType>,
    /// The DTLS side of the trunk's last SDP (DTLS-SRTP legs).
    dtls: Option<sdp::TrunkDtls>,
    /// A private call: the trunk's certificate fingerprint the browser got.
    private_fingerprint: Option<crate::sdp::Fingerprint>,
}

impl Outgoing {
    /// The new dialog of a trunk's REFER, answered: it is the call's from
    /// now on. The browser's offer is answered already (its SDP is not
    /// needed again) and the session is the call's `trunk_session`.
    fn transferred(uac: OutgoingCall) -> Outgoing {
        Outgoing {
            uac,
            offer: None,
            offer_params: None,
            // Read only while the call is set up (fallbacks, answers).
            plan: TrunkLegPlan::Plain,
            fallback_params: None,
            fell_back: false,
            answered: true,
            trunk_sdp: None,
            browser_codec: None,
            // A REFER's new dialog (issue 13) runs SDES or plain RTP; a DTLS
            // leg is not transferred (see `TrunkLegPlan::Plain` above).
            dtls: None,
            private_fingerprint: None,
        }
    }

    fn handle_session(&mut self, c: &mut Common, now: Instant, input: SessionInput) {
        let cause = match input {
            // Before the trunk answered, the browser's end is a CANCEL.
            SessionInput::Hangup { session } | SessionInput::Gone { session }
                if Some(session) == c.owner && !self.answered =>
            {
                Cause::BrowserCancelled
            }
            SessionInput::Hangup { session } if Some(session) == c.owner => Cause::BrowserHangup,
            SessionInput::Gone { session } if Some(session) == c.owner => Cause::BrowserGone,
            SessionInput::Shutdown => Cause::Shutdown,
            SessionInput::Accept { session, .. } | SessionInput::Reject { session } => {
                c.error(session, 409, "this call is not an incoming call");
                return;
            }
            _ => return,
        };
        self.end(c, cause, now);
    }

    /// Ends the call from our side: CANCEL or BYE toward the trunk.
    fn end(&mut self, c: &mut Common, cause: Cause, now: Instant) {
        if c.ended.is_some() {
            return;
        }
        self.uac.hangup(now);
        c.finish(cause, now);
    }

    fn pump(&mut self, c: &mut Common, now: Instant) -> bool {
        let mut progressed = false;
        if let Some(answer) = c.deferred_answer.take() {
            self.uac.answer_offer(answer, now);
        }
        while let Some((bytes, to)) = self.uac.poll_transmit() {
            c.out.push_back(Output::Sip { to, bytes });
            progressed = true;
        }
        while let Some(event) = self.uac.poll_event() {
            progressed = true;
            self.on_uac_event(c, event, now);
        }
        progressed
    }

    fn on_uac_event(&mut self, c: &mut Common, event: UacEvent, now: Instant) {
        match event {
            UacEvent::Provisional { code, sdp } => {
                if c.ended.is_some() {
                    return;
                }
                let id = c.id.clone();
                c.tell_owner(SessionEvent::Progress { id, code });
                if let Some(sdp) = sdp {
                    self.on_trunk_sdp(c, &sdp, now);
                }
            }
            UacEvent::Answered { sdp } => {
                if c.ended.is_some() {
                    return;
                }
                self.answered = true;
                c.ring_deadline = None;
                if c.media_started {
                    c.media(MediaCommand::SetTimeout(c.timers.answered_media));
                }
                match sdp {
                    Some(sdp) => self.on_trunk_sdp(c, &sdp, now),
                    None if !c.media_started => {
                        let cause = Cause::TrunkSdp {
                            code: 488,
                            reason: "trunk answered without SDP".into(),
                        };
                        self.end(c, cause, now);
                    }
                    None => {}
                }
                c.maybe_connected(self.answered);
            }
            // The dialog keeps running until `Terminated` (Timer D/K absorb
            // the trunk's retransmissions); the browser hears now.
            UacEvent::Rejected { code, reason } => {
                info!(code, reason = %reason, "trunk rejected the call");
                let reason = match self.plan.refusal_reason(code) {
                    Some(policy) => format!("{reason}: {policy}"),
                    None => reason,
                };
                c.finish(Cause::TrunkRejected { code, reason }, now);
            }
            UacEvent::Reoffered { code, reason } => {
                // The first INVITE is done with: what comes now answers the
                // plain RTP offer.
                let Some(params) = self.fallback_params.take() else {
                    return;
                };
                warn!(code, reason = %reason, "trunk refused SRTP; offering plain RTP (secure_media = \"optional\")");
                self.offer_params = Some(params);
                self.plan = TrunkLegPlan::Plain;
                self.trunk_sdp = None;
                self.note_fallback(c);
            }
            UacEvent::RemoteHangup if c.transferor_left() => {}
            UacEvent::RemoteHangup => {
                info!("trunk hung up");
                c.finish(Cause::RemoteHangup, now);
            }
            UacEvent::Referred(referral) => c.referral = Some(referral),
            UacEvent::Renegotiation(event) => {
                if let Some(answer) = c.renegotiate(event, now) {
                    self.uac.answer_offer(answer, now);
                }
            }
            UacEvent::Dtmf(digit) => c.dtmf_from_trunk(digit, DtmfFrom::SipInfo),
            UacEvent::Own(event) => {
                if let Some(cause) = c.on_own(event, now) {
                    self.end(c, cause, now);
                }
            }
            UacEvent::RefreshDue => {
                if let Some(sdp) = c.refresh_offer() {
                    let sent = self.uac.reoffer(sdp, now);
                    c.refresh_sent(sent);
                }
            }
            UacEvent::SessionExpired => self.end(c, Cause::SessionExpired, now),
            UacEvent::TransferNotify { code } => {
                if let Some(cause) = c.on_transfer_notify(code) {
                    self.end(c, cause, now);
                }
            }
            UacEvent::Terminated => c.dialog_done(),
        }
    }

    /// Counts (once) a call that went on with plain RTP because the trunk
    /// refused SRTP.
    fn note_fallback(&mut self, c: &mut Common) {
        if !self.fell_back {
            self.fell_back = true;
            c.out.push_back(Output::SecureMediaFallback);
        }
    }

    /// The trunk's SDP (in a 183 or the 200): key the trunk leg, start the
    /// relay and give the browser its answer. A later, different SDP of the
    /// same dialog (the 200 after an announcement's 183, from another media
    /// server with other keys) re-keys and re-addresses the trunk leg; the
    /// browser's side and codec stay as answered.
    fn on_trunk_sdp(&mut self, c: &mut Common, sdp: &str, now: Instant) {
        if self.trunk_sdp.as_deref() == Some(sdp) {
            return;
        }
        if self.plan == TrunkLegPlan::Private {
            return self.on_private_trunk_sdp(c, sdp, now);
        }
        let (Some(offer), Some(offer_params)) = (&self.offer, &self.offer_params) else {
            return;
        };
        let answer = match sdp::parse_trunk_answer(sdp, offer_params, offer) {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "trunk SDP refused");
                let cause = Cause::TrunkSdp {
                    code: 488,
                    reason: format!("trunk SDP refused: {e}"),
                };
                return self.end(c, cause, now);
            }
        };
        let trunk_crypto = match (&answer.crypto, &answer.dtls) {
            (Some(a), _) => TrunkCrypto::Sdes {
                inbound: a.remote_key.clone(),
                outbound: a.local_key.clone(),
            },
            (None, Some(d)) => TrunkCrypto::Dtls {
                role: d.role,
                remote_fingerprint: d.fingerprint.clone(),
                suites: self.plan.suites().to_vec(),
            },
            // An RTP/AVP answer to our RTP/SAVP offer on an optional trunk:
            // the dialog exists once it comes in a 200, so the RFC-correct
            // way to restate the session would be a re-INVITE with RTP/AVP
            // (RFC 3261 14.1), which sip::uac does not send yet; the trunk's
            // answer already names plain RTP with its address and codec, so
            // the gateway runs plain RTP on it, counted as a fallback.
            (None, None) if self.plan.accepts_plain_answer() => {
                if !matches!(self.plan, TrunkLegPlan::Plain) && !self.fell_back {
                    warn!(
                        "trunk answered plain RTP to the SRTP offer (secure_media = \"optional\")"
                    );
                    self.fell_back = true;
                    c.out.push_back(Output::SecureMediaFallback);
                }
                TrunkCrypto::Plain
            }
            (None, None) => {
                let cause = Cause::Policy(
                    "the trunk answered plain RTP but its secure_media is \"mandatory\"".into(),
                );
                return self.end(c, cause, now);
            }
        };
        // A DTLS leg that already runs (a 200 after a 183 with the same
        // certificate) keeps its association and its profile.
        let same_dtls = c.media_started && answer.dtls.is_some() && self.dtls == answer.dtls;
        self.dtls = answer.dtls.clone();
        if !same_dtls {
            c.trunk_security = match (&answer.crypto, &answer.dtls) {
                (Some(a), _) => format!("sdes-srtp {}", a.remote_key.suite),
                (None, Some(_)) => "dtls-srtp".into(),
                (None, None) => "rtp (unencrypted)".into(),
            };
            c.trunk_dtls_pending = answer.dtls.is_some();
            c.trunk_dtls_deadline = answer.dtls.is_some().then(|| now + c.timers.dtls);
        }
        self.trunk_sdp = Some(sdp.to_string());
        let params = outgoing_relay_params(offer, &answer, trunk_crypto, c.media_source);
        let session = TrunkSession::new(
            offer_params.session_id,
            offer_params.session_version,
            (c.media.public_ip, c.media.trunk_rtp_port),
            (
                answer.codec.clone(),
                answer.telephone_event.map(|(_, browser)| browser),
            ),
            (
                answer.codec_trunk_pt,
                answer.telephone_event.map(|(trunk, _)| trunk),
            ),
            (answer.remote_rtp, answer.remote_rtcp),
            (answer.proto, answer.rtcp_mux, answer.ptime),
            answer
                .crypto
                .as_ref()
                .map(|a| (a.remote_key.clone(), a.local_key.clone(), a.tag)),
            self.plan.suites().to_vec(),
        );
        let session = match &answer.dtls {
            Some(d) => session.with_dtls(d.clone(), c.media.fingerprint_sha256.clone()),
            None => session,
        };
        let mut session = session;
        session.browser_codecs = offer.codecs.clone();

        if c.media_started {
            // Media runs already: only the trunk leg changes, and only if the
            // browser can keep its codec.
            if self.browser_codec != Some(answer.codec.pt) {
                let cause = Cause::TrunkSdp {
                    code: 488,
                    reason: "trunk changed the codec between 183 and 200".into(),
                };
                return self.end(c, cause, now);
            }
            info!("trunk SDP changed: re-keying the trunk leg");
            c.trunk_session = Some(session);
            c.telephone_event = params.telephone_event;
            c.media(MediaCommand::UpdateTrunk(Box::new(TrunkUpdate {
                trunk: params.trunk,
                payload_map: params.payload_map,
                telephone_event: params.telephone_event,
            })));
            return;
        }
        self.browser_codec = Some(answer.codec.pt);
        c.codec = Some(codec_label(&answer.codec));
        c.trunk_session = Some(session);
        let answer_params = BrowserAnswerParams {
            local_ip: c.media.public_ip,
            port: c.media.browser_port,
            ice_ufrag: c.media.ice_ufrag.clone(),
            ice_pwd: c.media.ice_pwd.expose().clone(),
            fingerprint_sha256: c.media.fingerprint_sha256.clone(),
            session_id: offer_params.session_id,
            session_version: 1,
            ssrc: Some(c.media.ssrc_to_browser),
        };
        let browser_answer = sdp::write_browser_answer(offer, &answer, &answer_params);
        self.start_media(c, params, browser_answer, now);
    }

    /// Starts the relay on the first trunk SDP and gives the browser its
    /// answer.
    fn start_media(
        &self,
        c: &mut Common,
        params: RelayParams,
        browser_answer: String,
        now: Instant,
    ) {
        c.telephone_event = params.telephone_event;
        c.media(MediaCommand::Start(Box::new(params)));
        c.media_started = true;
        // Early media may be silent while the callee rings: only the ring
        // timeout ends a call that has not been answered.
        let timeout = if self.answered {
            c.timers.answered_media
        } else {
            c.timers.ring + Duration::from_secs(10)
        };
        c.media(MediaCommand::SetTimeout(timeout));
        c.dtls_deadline = Some(now + c.timers.dtls);
        let id = c.id.clone();
        c.tell_owner(SessionEvent::Answer {
            id,
            sdp: browser_answer,
        });
    }
}

/// The `security` text of both legs of a private call.
fn private_security(suite: Option<SrtpSuite>) -> String {
    match suite {
        Some(suite) => format!("dtls-srtp {suite} end to end"),
        None => "dtls-srtp (end to end)".into(),
    }
}

#[path = "call_private.rs"]
mod private_side;

/// What the relay needs, from the browser's offer and the trunk's answer.
/// The local ICE credentials are filled in by `MediaAllocation::start`.
fn outgoing_relay_params(
    offer: &BrowserOffer,
    answer: &TrunkAnswer,
    crypto: TrunkCrypto,
    media_source: MediaSource,
) -> RelayParams {
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
            media_source,
        },
        payload_map,
        telephone_event: answer.trunk_telephone_event.map(|trunk| TelephoneEvent {
            trunk,
            browser: answer.telephone_event.map(|(_, browser)| browser),
            clock_rate: answer.codec.clock_rate,
        }),
    }
}

// ---- trunk → browsers -----------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Sessions ring; nobody accepted yet.
    Ringing,
    /// One session accepted; ICE/DTLS with it runs, the trunk still waits.
    Answering,
    /// Our 200 OK is out; waiting for the trunk's ACK.
    Answered,
    /// ACK received: the dialog is up.
    Confirmed,
}

struct Incoming {
    uas: IncomingCall,
    offer: SipOffer,
    plan: IncomingLegPlan,
    /// Our Contact for the 200 OK.
    contact: String,
    /// Sessions still ringing (the winner is not among them).
    ringing: Vec<SessionKey>,
    /// The `incoming` every ringing session got (for sessions that join).
    ring_event: SessionEvent,
    declined_any: bool,
    reject_code: u16,
    phase: Phase,
    /// The winner's answer and the key we answer the trunk with.
    answer: Option<(BrowserAnswer, Option<SrtpKeyMaterial>)>,
    /// The trunk's `srtp_suites`: what a re-key may move to.
    suites: Vec<SrtpSuite>,
    /// A delayed offer (see [`IncomingSetup::delayed_offer`]): the trunk's
    /// leg is known only once its ACK answers; until then the relay has a
    /// placeholder trunk leg that sends nowhere and takes nothing.
    delayed_offer: bool,
    /// The accepting browser's answer as it sent it.
    accepted_sdp: Option<String>,
    /// The trunk's `secure_media` is `optional`: a delayed offer's SRTP may
    /// be answered with plain RTP.
    srtp_optional: bool,
}

impl Incoming {
    fn handle_session(&mut self, c: &mut Common, now: Instant, input: SessionInput) {
        match input {
            SessionInput::Accept { session, sdp } => self.accept(c, session, &sdp, now),
            // Hanging up a ringing call is declining it.
            SessionInput::Reject { session } | SessionInput::Hangup { session }
                if self.stop_ringing(session) =>
            {
                info!(session, "a session declined");
                self.declined_any = true;
                let event = c.hangup_event(&Cause::Declined);
                c.tell(session, event);
                self.check_all_gone(c, now);
            }
            SessionInput::Reject { session } | SessionInput::Hangup { session }
                if Some(session) == c.owner =>
            {
                self.end(c, Cause::BrowserHangup, now);
            }
            SessionInput::Reject { session } => {
                c.error(session, 404, "no ringing call with this id");
            }
            SessionInput::Hangup { .. } => {}
            SessionInput::Gone { session } => {
                if self.stop_ringing(session) {
                    self.check_all_gone(c, now);
                } else if Some(session) == c.owner {
                    self.end(c, Cause::BrowserGone, now);
                }
            }
            SessionInput::Join { session } => {
                if self.phase == Phase::Ringing
                    && c.ended.is_none()
                    && !self.ringing.contains(&session)
                {
                    info!(session, "a session opened while ringing: it rings too");
                    self.ringing.push(session);
                    c.tell(session, self.ring_event.clone());
                }
            }
            SessionInput::Shutdown => self.end(c, Cause::Shutdown, now),
            // Taken by `Call::handle_session` for both directions.
            SessionInput::Dtmf { .. } => {}
            // Taken by `Call::handle_session`.
            SessionInput::Hold { .. }
            | SessionInput::Transfer { .. }
            | SessionInput::Reanswer { .. } => {}
        }
    }

    fn stop_ringing(&mut self, session: SessionKey) -> bool {
        let before = self.ringing.len();
        self.ringing.retain(|s| *s != session);
        self.ringing.len() != before
    }

    /// No session is left ringing and none accepted: refuse the INVITE.
    fn check_all_gone(&mut self, c: &mut Common, now: Instant) {
        if self.phase != Phase::Ringing || !self.ringing.is_empty() || c.ended.is_some() {
            return;
        }
        let cause = if self.declined_any {
            Cause::AllDeclined {
                code: self.reject_code,
            }
        } else {
            Cause::NoSession
        };
        self.end(c, cause, now);
    }

    fn accept(&mut self, c: &mut Common, session: SessionKey, sdp: &str, now: Instant) {
        if Some(session) == c.owner {
            return c.error(session, 409, "this call is already accepted");
        }
        if self.phase != Phase::Ringing || c.ended.is_some() || !self.ringing.contains(&session) {
            let message = if c.owner.is_some() {
                "the call was answered elsewhere"
            } else {
                "no ringing call with this id"
            };
            return c.error(session, 409, message);
        }
        let parsed = if self.plan == IncomingLegPlan::Private {
            sdp::parse_private_browser_answer(sdp, &self.offer).map(|(a, setup)| (a, Some(setup)))
        } else {
            sdp::parse_browser_answer(sdp, &self.offer).map(|a| (a, None))
        };
        let (answer, browser_setup) = match parsed {
            Ok(answer) => answer,
            Err(e) => {
                warn!(session, error = %e, "browser answer refused");
                self.stop_ringing(session);
                let event = c.hangup_event(&Cause::BrowserSdp(format!("unusable SDP answer: {e}")));
                c.tell(session, event);
                return self.check_all_gone(c, now);
            }
        };
        info!(session, codec = answer.codec.name.as_str(), "accepted");
        c.codec = Some(codec_label(&answer.codec));
        self.stop_ringing(session);
        c.owner = Some(session);
        for other in std::mem::take(&mut self.ringing) {
            let event = c.hangup_event(&Cause::AnsweredElsewhere);
            c.tell(other, event);
        }
        if let Some(setup) = browser_setup {
            return self.accept_private(c, answer, setup, now);
        }
        let our_key = match self.plan {
            IncomingLegPlan::Sdes { suite, .. } => Some(SrtpKeyMaterial::generate(suite)),
            IncomingLegPlan::Dtls { .. } | IncomingLegPlan::Plain | IncomingLegPlan::Private => {
                None
            }
        };
        let params = match self.trunk_side(c, &answer, our_key.as_ref(), sdp) {
            Ok(params) => params,
            Err(cause) => return self.end(c, cause, now),
        };
        c.media(MediaCommand::Start(Box::new(params)));
        c.media_started = true;
        c.dtls_deadline = Some(now + c.timers.dtls);
        self.answer = Some((answer, our_key));
        self.accepted_sdp = Some(sdp.to_string());
        self.phase = Phase::Answering;
    }

    /// The trunk's side of the call from its SDP (`self.offer`: its offer,
    /// or with a delayed offer the answer in its ACK), the browser's
    /// `answer` (`browser_sdp` as sent) and our key: sets the call's trunk
    /// session and telephone-event, and returns the relay's parameters.
    fn trunk_side(
        &self,
        c: &mut Common,
        answer: &BrowserAnswer,
        our_key: Option<&SrtpKeyMaterial>,
        browser_sdp: &str,
    ) -> Result<RelayParams, Cause> {
        let crypto = match (&self.plan, our_key) {
            (IncomingLegPlan::Sdes { tag, .. }, Some(ours)) => {
                let theirs = self
                    .offer
                    .cryptos
                    .iter()
                    .find(|a| a.tag == *tag)
                    .and_then(|a| a.key())
                    .map(|k| k.material.clone());
                match theirs {
                    Some(inbound) => TrunkCrypto::Sdes {
                        inbound,
                        outbound: ours.clone(),
                    },
                    None => return Err(Cause::Policy("the trunk's a=crypto line vanished".into())),
                }
            }
            (IncomingLegPlan::Dtls { suites }, _) => match &self.offer.dtls {
                Some(d) => TrunkCrypto::Dtls {
                    role: d.role,
                    remote_fingerprint: d.fingerprint.clone(),
                    suites: suites.clone(),
                },
                None => return Err(Cause::Policy("the trunk's a=fingerprint vanished".into())),
            },
            _ => TrunkCrypto::Plain,
        };
        let sdes = match (&self.plan, &crypto) {
            (IncomingLegPlan::Sdes { tag, .. }, TrunkCrypto::Sdes { inbound, outbound }) => {
                Some((inbound.clone(), outbound.clone(), *tag))
            }
            _ => None,
        };
        let te_pt = answer.telephone_event.as_ref().map(|te| te.pt);
        let trunk_te = trunk_telephone_event(&self.offer, answer);
        let mut trunk_session = TrunkSession::new(
            rand::random::<u32>() as u64,
            1,
            (c.media.public_ip, c.media.trunk_rtp_port),
            (answer.codec.clone(), te_pt),
            (answer.codec.pt, trunk_te.as_ref().map(|te| te.pt)),
            (
                SocketAddr::new(self.offer.address, self.offer.port),
                self.offer.remote_rtcp,
            ),
            (self.offer.proto, self.offer.rtcp_mux, self.offer.ptime),
            sdes,
            self.suites.clone(),
        );
        // What the browser accepted: the codecs of its answer.
        trunk_session.browser_codecs =
            sdp::parse_browser_reanswer(browser_sdp).unwrap_or_else(|_| vec![answer.codec.clone()]);
        if let Some(d) = &self.offer.dtls {
            trunk_session = trunk_session.with_dtls(d.clone(), c.media.fingerprint_sha256.clone());
        }
        c.trunk_session = Some(trunk_session);
        let mut params = self.relay_params(answer, crypto, c.media_source);
        params.telephone_event = trunk_te.map(|te| TelephoneEvent {
            trunk: te.pt,
            browser: te_pt,
            clock_rate: answer.codec.clock_rate,
        });
        c.telephone_event = params.telephone_event;
        Ok(params)
    }

    /// The answer in the trunk's ACK to the offer our 200 carried (a delayed
    /// offer): checked against it (our codec, our `a=crypto` tag and suite,
    /// or plain RTP as offered), it becomes the trunk's side of the call
    /// and the relay's trunk leg. `Err`: the call ends (BYE).
    fn take_delayed_answer(&mut self, c: &mut Common, sdp: Option<&str>) -> Result<(), Cause> {
        self.delayed_offer = false;
        let refuse = |why: String| Cause::TrunkSdp {
            code: 488,
            reason: format!("the answer in the trunk's ACK {why}"),
        };
        let sdp = sdp.ok_or_else(|| refuse("is missing (our 200 carried the offer)".into()))?;
        let real = sdp::parse_sip_offer(sdp).map_err(|e| refuse(format!("does not parse: {e}")))?;
        let Some((answer, our_key)) = self.answer.clone() else {
            return Err(refuse("came before any browser answered".into()));
        };
        if !real
            .codecs
            .iter()
            .any(|k| !k.is_telephone_event() && k.same_as(&answer.codec))
        {
            return Err(refuse(format!(
                "lacks our codec {}",
                codec_label(&answer.codec)
            )));
        }
        if matches!(self.plan, IncomingLegPlan::Sdes { .. })
            && self.srtp_optional
            && !real.proto.is_secure()
        {
            // `secure_media = "optional"`: the trunk answered our SRTP offer
            // with plain RTP, which that setting accepts (counted).
            info!("the trunk answered our SRTP offer with plain RTP (secure_media optional)");
            self.plan = IncomingLegPlan::Plain;
            c.trunk_security = "rtp (unencrypted)".into();
            c.out.push_back(Output::SecureMediaFallback);
        }
        match &self.plan {
            IncomingLegPlan::Sdes { tag, suite } => {
                let ok = real.proto.is_secure()
                    && real
                        .cryptos
                        .iter()
                        .any(|k| k.tag == *tag && k.suite == *suite && k.key().is_some());
                if !ok {
                    return Err(refuse(format!(
                        "does not take our a=crypto:{tag} {} (secure_media)",
                        suite
                    )));
                }
            }
            _ if real.proto.is_secure() => {
                return Err(refuse("is SRTP where we offered plain RTP".into()));
            }
            _ => {}
        }
        self.offer = real;
        let browser_sdp = self.accepted_sdp.clone().unwrap_or_default();
        let params = self.trunk_side(c, &answer, our_key.as_ref(), &browser_sdp)?;
        info!("the trunk answered our offer in its ACK (delayed offer)");
        c.media(MediaCommand::UpdateTrunk(Box::new(TrunkUpdate {
            trunk: params.trunk,
            payload_map: params.payload_map,
            telephone_event: params.telephone_event,
        })));
        Ok(())
    }

    /// The relay of the accepted browser's leg and the trunk's offer; the
    /// browser was offered the trunk's payload numbers, so they map one to
    /// one. No telephone-event (the caller adds the trunk's if it has one).
    fn relay_params(
        &self,
        answer: &BrowserAnswer,
        crypto: TrunkCrypto,
        media_source: MediaSource,
    ) -> RelayParams {
        let clock = answer.codec.clock_rate;
        let mut payload_map = vec![(answer.codec.pt, answer.codec.pt, clock)];
        if let Some(te) = &answer.telephone_event {
            payload_map.push((te.pt, te.pt, clock));
        }
        RelayParams {
            browser: BrowserLegParams {
                local_ufrag: String::new(),
                local_pwd: Secret::new(String::new()),
                remote_ufrag: answer.ice_ufrag.clone(),
                remote_fingerprint: answer.fingerprint.clone(),
                ssrcs: answer.ssrcs.clone(),
            },
            trunk: TrunkLegParams {
                remote_rtp: SocketAddr::new(self.offer.address, self.offer.port),
                remote_rtcp: self.offer.remote_rtcp,
                crypto,
                ssrcs: self.offer.ssrcs.clone(),
                media_source,
            },
            payload_map,
            telephone_event: None,
        }
    }

    /// The winner's DTLS is up: answer the trunk.
    fn browser_connected(&mut self, c: &mut Common, now: Instant) {
        if self.phase != Phase::Answering {
            return;
        }
        let Some((answer, our_key)) = &self.answer else {
            return;
        };
        let mut codecs = vec![answer.codec.clone()];
        codecs.extend(trunk_telephone_event(&self.offer, answer));
        let keying = match (&self.plan, our_key) {
            (IncomingLegPlan::Sdes { tag, .. }, Some(key)) => AnswerKeying::Sdes(*tag, key),
            (IncomingLegPlan::Dtls { .. }, _) => AnswerKeying::Dtls {
                fingerprint_sha256: &c.media.fingerprint_sha256,
            },
            _ => AnswerKeying::None,
        };
        let sdp = sdp::write_sip_answer_keyed(
            &self.offer,
            &codecs,
            c.media.public_ip,
            c.media.trunk_rtp_port,
            keying,
            (c.trunk_session.as_ref().map_or(1, |s| s.session_id), 1),
        );
        self.uas.answer(sdp, self.contact.clone(), now);
        if c.trunk_dtls_pending {
            // A DTLS trunk starts its handshake once it has our answer.
            c.trunk_dtls_deadline = Some(now + c.timers.dtls);
        }
        self.phase = Phase::Answered;
        c.ring_deadline = None;
        c.media(MediaCommand::SetTimeout(c.timers.answered_media));
    }

    /// Ends the call from our side: a final response before our 2xx, BYE
    /// after it; every session still involved hears `cause`.
    fn end(&mut self, c: &mut Common, cause: Cause, now: Instant) {
        if c.ended.is_some() {
            return;
        }
        match self.phase {
            Phase::Ringing | Phase::Answering => self.uas.reject(cause.sip_status(), now),
            Phase::Answered | Phase::Confirmed => self.uas.hangup(now),
        }
        for session in std::mem::take(&mut self.ringing) {
            let event = c.hangup_event(&cause);
            c.tell(session, event);
        }
        c.finish(cause, now);
    }

    fn pump(&mut self, c: &mut Common, now: Instant) -> bool {
        let mut progressed = false;
        if let Some(answer) = c.deferred_answer.take() {
            self.uas.answer_offer(answer, now);
        }
        while let Some((bytes, to)) = self.uas.poll_transmit() {
            c.out.push_back(Output::Sip { to, bytes });
            progressed = true;
        }
        while let Some(event) = self.uas.poll_event() {
            progressed = true;
            match event {
                UasEvent::Acked { sdp } => {
                    self.phase = Phase::Confirmed;
                    if self.delayed_offer {
                        if let Err(cause) = self.take_delayed_answer(c, sdp.as_deref()) {
                            warn!(reason = %cause, "the trunk's ACK did not answer our offer usably");
                            self.end(c, cause, now);
                            continue;
                        }
                    }
                    c.maybe_connected(true);
                }
                UasEvent::Cancelled { elsewhere } => {
                    // A forking proxy (several gateway nodes behind Kamailio)
                    // cancels the branches that lost with RFC 3326's cause 200:
                    // their browsers are told the call was answered elsewhere.
                    let cause = if elsewhere {
                        Cause::AnsweredElsewhere
                    } else {
                        Cause::CallerCancelled
                    };
                    info!(elsewhere, "the trunk cancelled the call");
                    for session in std::mem::take(&mut self.ringing) {
                        let event = c.hangup_event(&cause);
                        c.tell(session, event);
                    }
                    c.finish(cause, now);
                }
                UasEvent::RemoteHangup if c.transferor_left() => {}
                UasEvent::RemoteHangup => {
                    info!("trunk hung up");
                    c.finish(Cause::RemoteHangup, now);
                }
                UasEvent::Referred(referral) => c.referral = Some(referral),
                UasEvent::Renegotiation(event) => {
                    if let Some(answer) = c.renegotiate(event, now) {
                        self.uas.answer_offer(answer, now);
                    }
                }
                UasEvent::Dtmf(digit) => c.dtmf_from_trunk(digit, DtmfFrom::SipInfo),
                UasEvent::Own(event) => {
                    if let Some(cause) = c.on_own(event, now) {
                        self.end(c, cause, now);
                    }
                }
                UasEvent::RefreshDue => {
                    if let Some(sdp) = c.refresh_offer() {
                        let sent = self.uas.reoffer(sdp, now);
                        c.refresh_sent(sent);
                    }
                }
                UasEvent::SessionExpired => self.end(c, Cause::SessionExpired, now),
                UasEvent::TransferNotify { code } => {
                    if let Some(cause) = c.on_transfer_notify(code) {
                        self.end(c, cause, now);
                    }
                }
                UasEvent::Terminated => c.dialog_done(),
            }
        }
        progressed
    }
}

/// How long the trunk's codec change waits for the browser's `answer`:
/// a browser answers in milliseconds; the trunk's re-INVITE client gives
/// up after 32 s (Timer B), its user long before.
const CODEC_SWITCH_WAIT: Duration = Duration::from_secs(4);

/// The trunk's re-offer that changes the codec, while the browser is asked.
#[derive(Debug)]
struct CodecSwitch {
    trunk_sdp: String,
    /// The codec offered to the browser (its PT).
    codec: sdp::Codec,
    /// Our re-offer: the browser's view once it answered.
    browser_sdp: String,
    deadline: Instant,
}

/// A re-offer of ours to the browser after its wait ran out.
#[derive(Debug)]
enum LateReoffer {
    /// Not answered in time (the trunk got 488 and keeps the call's codec):
    /// our offer, should the browser answer it after all.
    Abandoned { browser_sdp: String },
    /// The browser did answer it late, so it sends a codec the trunk
    /// refused: our offer taking it back to the call's codec, until its
    /// answer.
    Reverting {
        codec: sdp::Codec,
        browser_sdp: String,
        deadline: Instant,
    },
}

/// Why the browser's `hold`, `resume` or `transfer` waits.
const TRANSFER_RUNS: &str = "the trunk is transferring this call (REFER): try again after it";

/// The telephone-event our answer gives the trunk on an incoming call: the
/// browser's (the trunk's entry at the chosen clock), else the trunk's own
/// at that clock even though the browser did not take it: the gateway then
/// sends the browser's `dtmf` itself and reads the trunk's events for it.
fn trunk_telephone_event(offer: &SipOffer, answer: &BrowserAnswer) -> Option<sdp::Codec> {
    answer.telephone_event.clone().or_else(|| {
        offer
            .codecs
            .iter()
            .find(|c| c.is_telephone_event() && c.clock_rate == answer.codec.clock_rate)
            .cloned()
    })
}

/// `PCMU/8000`, `opus/48000/2`: how the operator sees a codec.
fn codec_label(codec: &sdp::Codec) -> String {
    if codec.channels > 1 {
        format!(
            "{}/{}/{}",
            codec.name.as_str(),
            codec.clock_rate,
            codec.channels
        )
    } else {
        format!("{}/{}", codec.name.as_str(), codec.clock_rate)
    }
}

/// An INVITE of `account` toward its trunk at `destination`, without its
/// Call-ID and Request-URI (the caller's to fill in): From, Contact, Via,
/// the trunk's credentials.
fn trunk_call_config(
    account: &Account,
    local: &SipLocal,
    destination: SocketAddr,
    routes: Vec<String>,
) -> UacConfig {
    let trunk = &account.trunk;
    let name = &account.name;
    UacConfig {
        call_id: String::new(),
        request_uri: String::new(),
        from_uri: format!("sip:{name}@{}", local.host),
        contact: local.contact(name),
        via_host: local.host.clone(),
        via_port: local.port,
        transport: local.transport,
        credentials: trunk.credentials(),
        user_agent: crate::sip::uas::USER_AGENT.to_string(),
        destination,
        routes,
    }
}

/// A host as it goes into a SIP URI: IPv6 literals in brackets.
pub fn uri_host(host: &str) -> String {
    match host.parse::<std::net::Ipv6Addr>() {
        Ok(v6) => format!("[{v6}]"),
        Err(_) => host.to_string(),
    }
}
