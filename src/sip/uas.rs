//! `IncomingCall`: the sans-IO answering side of one INVITE. Used by the
//! built-in demo echo trunk (a UAS inside the gateway that answers every
//! INVITE) and by inbound calls.
//!
//! It covers the INVITE server transaction (RFC 3261 17.2.1: responses
//! resent for retransmitted INVITEs, Timer G/H/I for a non-2xx final), the
//! 2xx retransmission of 13.3.1.4 (T1 doubling to T2 until the ACK, BYE
//! after 64*T1 without one), CANCEL (9.2) and the dialog's BYE both ways.
//!
//! Responses go to the address the INVITE came from (symmetric signaling as
//! with `rport`, RFC 3581). Our BYE belongs to the dialog: it goes to the
//! INVITE's Contact through its Record-Route set (RFC 3261 12.1.1, 12.2.1.1),
//! see [`Dialog::next_hop`]; only when those are unusable does it go back to
//! where the INVITE came from.
//!
//! Event contract: `Acked`, `Cancelled` or `RemoteHangup` as they happen,
//! `Renegotiation` for the caller's re-INVITEs and UPDATEs once the dialog
//! exists (see `sip::reinvite`; each `Offer` must be answered with
//! [`IncomingCall::answer_offer`] before the next input), and always exactly
//! one `Terminated` last; after it `poll_timeout` is `None` and the object
//! can be dropped.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rsip::{Method, Request, Response, SipMessage};

use super::auth::Authenticator;
use super::dialog::{Dialog, InDialog, LocalEndpoint};
use super::info;
use super::message::{self, ResponseParts};
use super::own_requests::{self, OwnError, OwnEvent, OwnRequests};
use super::reinvite::{OfferAnswer, PeerUpdates, RenegotiationEvent};
use super::session_timer::{self, Action, Role, SessionExpires, SessionTimer, UasDecision};
use super::target::Target;
use super::transaction::{ClientTransaction, TxEvent, TIMEOUT};
use super::{SipError, Transport, T1, T2, T4};

/// What we put in Server / User-Agent on the answering side.
pub const USER_AGENT: &str = concat!("webrtc-sip-gateway/", env!("CARGO_PKG_VERSION"));

/// The methods the gateway takes from a trunk (`Allow` of our INVITEs and of
/// the 200 to OPTIONS). PRACK is not among them: we send no reliable
/// provisionals.
/// What we take in a dialog: INFO (DTMF), REFER (carried out or refused
/// per `accept_refer`, RFC 3515 says a UA that takes REFER lists it) and
/// NOTIFY (about our own REFER) besides the INVITE usage.
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, REFER, NOTIFY";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UasEvent {
    /// The caller acknowledged our 2xx: media may flow both ways. `sdp`:
    /// the ACK's body, the answer when our 2xx carried the offer (an INVITE
    /// without one, RFC 3261 13.2.1).
    Acked { sdp: Option<String> },
    /// The caller sent BYE; the 200 OK is queued.
    RemoteHangup,
    /// The caller cancelled before we answered; 200 and 487 are queued.
    /// `elsewhere`: the CANCEL said why with RFC 3326's
    /// `Reason: SIP;cause=200` (a forking proxy's other branch answered).
    Cancelled { elsewhere: bool },
    /// The caller's re-INVITE or UPDATE, or the answer in the ACK of our
    /// 2xx to an offerless re-INVITE.
    Renegotiation(RenegotiationEvent),
    /// The caller sent a DTMF digit in an INFO (answered 200).
    Dtmf(crate::types::DtmfDigit),
    /// The outcome of our own re-INVITE ([`IncomingCall::reoffer`]) or REFER.
    Own(OwnEvent),
    /// A NOTIFY about our REFER (already answered 200): the status of the
    /// transferred call, from its sipfrag (RFC 3515).
    TransferNotify { code: u16 },
    /// The peer's REFER, accepted with 202 (after `set_refer_answer(202)`):
    /// call `user` and report with [`notify_referrer`](Self::notify_referrer).
    Referred(super::refer::Referral),
    /// RFC 4028: we refresh, the caller takes no UPDATE: send a re-INVITE
    /// with the session's SDP ([`IncomingCall::reoffer`]).
    RefreshDue,
    /// RFC 4028: no refresh came in time. End the call ([`IncomingCall::hangup`]).
    SessionExpired,
    /// Nothing left to do: the object can be dropped.
    Terminated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No final response yet.
    Proceeding,
    /// 2xx sent, waiting for the ACK.
    Accepted,
    /// Non-2xx final sent, waiting for the ACK.
    Completed,
    /// 2xx acknowledged: the dialog is up.
    Confirmed,
    /// Non-2xx acknowledged; absorbing ACK retransmissions (Timer I).
    Lingering,
    Ended,
}

#[derive(Debug)]
pub struct IncomingCall {
    invite: Request,
    invite_branch: Option<String>,
    source: SocketAddr,
    transport: Transport,
    local_tag: String,
    state: State,
    /// Resent for each retransmitted INVITE, and by the timers below.
    last_response: Option<Bytes>,
    /// 2xx retransmission or Timer G.
    retransmit_at: Option<Instant>,
    retransmit_interval: Duration,
    /// 64*T1 without an ACK (2xx: then BYE; non-2xx: Timer H).
    give_up_at: Option<Instant>,
    /// Timer I.
    linger_until: Option<Instant>,
    dialog: Option<Dialog>,
    /// The caller's re-INVITEs and UPDATEs in the dialog.
    updates: PeerUpdates,
    /// Our own re-INVITEs in the dialog (hold and resume).
    own: OwnRequests,
    /// RFC 4028: what our 2xx says (from the INVITE), the timer once the
    /// dialog is confirmed, whether the caller takes UPDATE, and the
    /// `Session-Expires` of its pending re-INVITE or UPDATE.
    timer_decision: UasDecision,
    timer: Option<SessionTimer>,
    peer_allows_update: bool,
    peer_refresh: Option<SessionExpires>,
    /// How the caller's REFERs are answered (`Dialog::set_refer_answer`).
    refer_answer: u16,
    /// Our BYE, and where it goes.
    bye_tx: Option<(ClientTransaction, Target)>,
    /// `hangup` came between our 2xx and its ACK (RFC 3261 15: BYE waits).
    bye_pending: bool,
    ended: bool,
    terminated: bool,
    transmit: VecDeque<(Bytes, Target)>,
    events: VecDeque<UasEvent>,
}

impl IncomingCall {
    /// Takes a new INVITE (already parsed with limits) and queues `100 Trying`.
    pub fn new(invite: SipMessage, source: SocketAddr, now: Instant) -> Result<Self, SipError> {
        let _ = now;
        let invite = match invite {
            SipMessage::Request(r) if r.method == Method::Invite => r,
            other => {
                return Err(SipError::UnexpectedMessage {
                    expected: "INVITE",
                    got: start_line(&other),
                })
            }
        };
        let via = message::top_via(&invite)?;
        let transport = match via.transport {
            rsip::Transport::Tcp => Transport::Tcp,
            rsip::Transport::Tls => Transport::Tls,
            _ => Transport::Udp,
        };
        let timer_decision = session_timer::uas_decision(
            session_timer::of(&invite),
            message::header_values(&invite, "Supported")
                .iter()
                .flat_map(|v| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case("timer")),
        );
        let peer_allows_update = session_timer::allows_update(&invite);
        let mut call = IncomingCall {
            invite_branch: message::top_via_branch(&invite),
            invite,
            source,
            transport,
            local_tag: message::new_tag(),
            state: State::Proceeding,
            last_response: None,
            retransmit_at: None,
            retransmit_interval: T1,
            give_up_at: None,
            linger_until: None,
            dialog: None,
            updates: PeerUpdates::default(),
            // The caller chose the Call-ID: the shorter 491 delays are ours.
            own: OwnRequests::new(false, Authenticator::new(None)),
            timer_decision,
            timer: None,
            peer_allows_update,
            peer_refresh: None,
            refer_answer: 501,
            bye_tx: None,
            bye_pending: false,
            ended: false,
            terminated: false,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        };
        tracing::info!(call_id = %call.call_id(), %source, "incoming INVITE");
        call.respond(100, ResponseParts::default());
        Ok(call)
    }

    pub fn invite(&self) -> &Request {
        &self.invite
    }

    pub fn call_id(&self) -> String {
        message::call_id(&self.invite).unwrap_or_default()
    }

    /// The caller's SDP offer, if the INVITE had one.
    pub fn offer_sdp(&self) -> Option<&str> {
        let is_sdp = message::content_type(&self.invite)
            .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("application/sdp"));
        if !is_sdp || self.invite.body.is_empty() {
            return None;
        }
        std::str::from_utf8(&self.invite.body).ok()
    }

    /// 202 carries the caller's REFERs out (`UasEvent::Referred`), 603
    /// refuses them (`accept_refer = false`); the default 501 says a REFER
    /// is not carried out. Takes effect in the dialog at once.
    pub fn set_refer_answer(&mut self, code: u16) {
        self.refer_answer = code;
        if let Some(d) = self.dialog.as_mut() {
            d.set_refer_answer(code);
        }
    }

    pub fn source(&self) -> SocketAddr {
        self.source
    }

    pub fn is_finished(&self) -> bool {
        self.terminated
    }

    /// Queues `180 Ringing`. (`now` for symmetry with the other inputs.)
    pub fn ringing(&mut self, now: Instant) {
        let _ = now;
        if self.state == State::Proceeding {
            let tag = self.local_tag.clone();
            self.respond(
                180,
                ResponseParts {
                    to_tag: Some(&tag),
                    ..Default::default()
                },
            );
        }
    }

    /// Queues `200 OK` with `sdp`; it is resent (T1 doubling to T2) until
    /// the ACK arrives, and the call is ended with BYE after 64*T1 without one.
    /// `contact` is our full Contact value, e.g. `<sip:echo@192.0.2.1:5060>`.
    pub fn answer(&mut self, sdp: String, contact: String, now: Instant) {
        if self.state != State::Proceeding {
            return;
        }
        let local = LocalEndpoint {
            via_host: contact_host(&contact).unwrap_or_else(|| "invalid".into()),
            via_port: contact_port(&contact).unwrap_or(5060),
            transport: self.transport,
            contact: contact.clone(),
            user_agent: USER_AGENT.into(),
        };
        let dialog = match Dialog::uas(&self.invite, &self.local_tag, local) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(call_id = %self.call_id(), error = %e, "cannot answer");
                self.reject(500, now);
                return;
            }
        };
        let mut dialog = dialog;
        dialog.set_refer_answer(self.refer_answer);
        self.dialog = Some(dialog);
        let tag = self.local_tag.clone();
        // RFC 4028 9: the interval and refresher in force; the caller that
        // refreshes must (Require), and we say we support timers either way.
        let mut extra = vec![
            rsip::Header::Allow(ALLOW.into()),
            rsip::Header::Supported("timer".into()),
        ];
        if let UasDecision::Timer(se) = self.timer_decision {
            extra.push(rsip::Header::Other(
                "Session-Expires".into(),
                se.header_value(),
            ));
            if se.refresher == Some(Role::Uac) {
                extra.push(rsip::Header::Require("timer".into()));
            }
        }
        self.respond(
            200,
            ResponseParts {
                to_tag: Some(&tag),
                contact: Some(&contact),
                body: Some(("application/sdp", &sdp)),
                extra,
                ..Default::default()
            },
        );
        tracing::info!(call_id = %self.call_id(), "answered");
        self.state = State::Accepted;
        // 13.3.1.4: the UA core resends the 2xx on every transport.
        self.retransmit_interval = T1;
        self.retransmit_at = Some(now + T1);
        self.give_up_at = Some(now + TIMEOUT);
    }

    /// Queues a final non-2xx response (e.g. 486, 603).
    pub fn reject(&mut self, code: u16, now: Instant) {
        self.reject_with_warning(code, None, now);
    }

    /// [`reject`](Self::reject) with a `Warning: 399` (RFC 3261 20.43)
    /// saying why in words, for refusals the trunk's operator must act on
    /// (an offer the policy cannot take). The text must hold no secret.
    pub fn reject_with_warning(&mut self, code: u16, why: Option<&str>, now: Instant) {
        if self.state != State::Proceeding || !(300..700).contains(&code) {
            return;
        }
        let tag = self.local_tag.clone();
        let extra = why
            .map(|text| {
                // warn-text is a quoted-string: no raw quotes, backslashes
                // or line breaks inside.
                let text: String = text
                    .chars()
                    .map(|c| match c {
                        '"' => '\'',
                        '\\' | '\r' | '\n' => ' ',
                        c => c,
                    })
                    .collect();
                rsip::Header::Other(
                    "Warning".into(),
                    format!("399 webrtc-sip-gateway \"{text}\""),
                )
            })
            .into_iter()
            .collect();
        self.respond(
            code,
            ResponseParts {
                to_tag: Some(&tag),
                extra,
                ..Default::default()
            },
        );
        tracing::info!(call_id = %self.call_id(), code, "rejected");
        self.enter_completed(now);
    }

    /// Ends the call: 480 before an answer, BYE after (once the ACK came).
    pub fn hangup(&mut self, now: Instant) {
        match self.state {
            State::Proceeding => self.reject(480, now),
            State::Accepted => self.bye_pending = true,
            State::Confirmed => self.send_bye(now),
            _ => {}
        }
        self.check_terminated();
    }

    pub fn handle_message(&mut self, msg: SipMessage, now: Instant) {
        if self.terminated {
            return;
        }
        match msg {
            SipMessage::Request(req) => self.handle_request(req, now),
            SipMessage::Response(resp) => {
                if let Some(dialog) = self.dialog.as_mut() {
                    if self.own.handle_response(dialog, &resp, now) {
                        self.pump_own(now);
                        return;
                    }
                }
                if let Some((tx, _)) = self.bye_tx.as_mut().filter(|(tx, _)| tx.matches(&resp)) {
                    tx.handle_response(resp, now);
                }
            }
        }
        self.pump();
        self.check_terminated();
    }

    fn handle_request(&mut self, req: Request, now: Instant) {
        let same_tx = message::top_via_branch(&req) == self.invite_branch;
        match req.method {
            Method::Invite if same_tx => {
                // A retransmitted INVITE: our last response got lost.
                if let Some(r) = &self.last_response {
                    self.transmit.push_back((r.clone(), self.caller()));
                }
            }
            Method::Ack if same_tx && self.state == State::Completed => {
                // The ACK for a non-2xx final (same branch, 17.2.1).
                self.retransmit_at = None;
                self.give_up_at = None;
                self.state = State::Lingering;
                let linger = if self.transport.is_reliable() {
                    Duration::ZERO
                } else {
                    T4
                };
                self.linger_until = Some(now + linger);
                if linger.is_zero() {
                    self.finish();
                }
            }
            Method::Ack => {
                let ours = self
                    .dialog
                    .as_ref()
                    .is_some_and(|d| d.matches_request(&req));
                if ours && self.state == State::Accepted {
                    self.retransmit_at = None;
                    self.give_up_at = None;
                    self.state = State::Confirmed;
                    if let UasDecision::Timer(se) = self.timer_decision {
                        tracing::info!(call_id = %self.call_id(), interval_s = se.seconds,
                            refresher = se.refresher.map_or("uac", |r| r.as_str()), "session timer (RFC 4028)");
                        self.timer = Some(SessionTimer::new(se, Role::Uas, now));
                    }
                    self.events.push_back(UasEvent::Acked {
                        sdp: message::sdp_body(&req),
                    });
                    if self.bye_pending {
                        self.send_bye(now);
                    }
                } else if ours {
                    self.updates.on_ack(&req);
                }
            }
            Method::Cancel if same_tx => {
                let tag = self.local_tag.clone();
                let ok = message::build_response(
                    &req,
                    200,
                    ResponseParts {
                        to_tag: Some(&tag),
                        user_agent: USER_AGENT,
                        ..Default::default()
                    },
                );
                self.transmit
                    .push_back((message::to_bytes(ok), self.caller()));
                if self.state == State::Proceeding {
                    tracing::info!(call_id = %self.call_id(), "cancelled by the caller");
                    self.respond(
                        487,
                        ResponseParts {
                            to_tag: Some(&tag),
                            ..Default::default()
                        },
                    );
                    self.enter_completed(now);
                    let elsewhere = answered_elsewhere(&req);
                    self.events.push_back(UasEvent::Cancelled { elsewhere });
                }
            }
            _ => {
                let ours = self
                    .dialog
                    .as_ref()
                    .is_some_and(|d| d.matches_request(&req));
                let Some(dialog) = self.dialog.as_mut().filter(|_| ours) else {
                    self.reply_to(&req, 481);
                    return;
                };
                match dialog.handle_request(&req) {
                    InDialog::Retransmission(resp) => self
                        .transmit
                        .push_back((message::to_bytes(resp), self.caller())),
                    InDialog::Bye(resp) => {
                        self.transmit
                            .push_back((message::to_bytes(resp), self.caller()));
                        if !self.ended {
                            tracing::info!(call_id = %self.call_id(), "caller hung up");
                            self.events.push_back(UasEvent::RemoteHangup);
                            self.finish();
                            // A BYE of ours crossing theirs no longer matters.
                            self.bye_tx = None;
                        }
                    }
                    InDialog::Ack => {}
                    InDialog::Offer => {
                        // Before the ACK of our first 2xx the INVITE
                        // transaction is still open: a re-INVITE is glare.
                        let open = self.state == State::Accepted;
                        self.peer_refresh = session_timer::of(&req);
                        let ours = self.own.invite_open();
                        if let Some(refusal) = self.updates.begin(dialog, req, open, ours) {
                            self.transmit.push_back((refusal, self.caller()));
                        }
                    }
                    InDialog::Other(resp) => {
                        if let Some(code) = own_requests::refer_notify(&req) {
                            self.events.push_back(UasEvent::TransferNotify { code });
                        }
                        self.transmit
                            .push_back((message::to_bytes(resp), self.caller()))
                    }
                    InDialog::Refer(resp, referral) => {
                        self.transmit
                            .push_back((message::to_bytes(resp), self.caller()));
                        self.events.push_back(UasEvent::Referred(referral));
                    }
                    InDialog::Dtmf(resp, digit) => {
                        self.transmit
                            .push_back((message::to_bytes(resp), self.caller()));
                        self.events.push_back(UasEvent::Dtmf(digit));
                    }
                }
            }
        }
        while let Some(ev) = self.updates.poll_event() {
            self.events.push_back(UasEvent::Renegotiation(ev));
        }
    }

    /// Sends `sdp` as our new offer in a re-INVITE (the browser's hold or
    /// resume); the outcome comes as `UasEvent::Own`. Only once the dialog
    /// is confirmed (our 2xx ACKed) and not ending, one offer at a time.
    pub fn reoffer(&mut self, sdp: String, now: Instant) -> Result<(), OwnError> {
        let mut extra = vec![rsip::Header::Allow(ALLOW.into())];
        if let Some(timer) = &self.timer {
            extra.extend(session_timer::headers(timer, Role::Uac));
        }
        self.send_own(now, |own, dialog, to| {
            own.send_offer(dialog, to, sdp, extra, now)
        })
    }

    /// Our in-dialog requests answer the trunk's 401/407 with these (the
    /// trunk's `username` and `password`).
    pub fn set_credentials(&mut self, credentials: Option<super::auth::DigestCredentials>) {
        *self.own.auth() = Authenticator::new(credentials);
    }

    /// Sends a REFER asking the caller to call `refer_to` (see `sip::uac`).
    pub fn refer(&mut self, refer_to: &str, now: Instant) -> Result<(), OwnError> {
        self.send_own(now, |own, dialog, to| {
            own.send_refer(dialog, to, refer_to, now)
        })
    }

    /// Sends one DTMF digit as SIP INFO (see `sip::uac::OutgoingCall::info_dtmf`).
    pub fn info_dtmf(
        &mut self,
        digit: crate::types::DtmfDigit,
        now: Instant,
    ) -> Result<(), OwnError> {
        let body = info::dtmf_relay_body(digit, info::DTMF_DURATION_MS);
        self.send_own(now, |own, dialog, to| {
            own.send_info(dialog, to, (info::DTMF_RELAY, &body), now)
        })
    }

    /// Reports on the caller's REFER (see `sip::uac::OutgoingCall::notify_referrer`).
    pub fn notify_referrer(
        &mut self,
        refer_cseq: u32,
        status: (u16, &str),
        last: bool,
        now: Instant,
    ) -> Result<(), OwnError> {
        self.send_own(now, |own, dialog, to| {
            own.send_refer_notify(dialog, to, refer_cseq, status, last, now)
        })
    }

    /// Runs `send` on our requests with the confirmed dialog and where its
    /// requests go (the INVITE's source when its route is unusable).
    fn send_own(
        &mut self,
        now: Instant,
        send: impl FnOnce(&mut OwnRequests, &mut Dialog, Target) -> Result<(), OwnError>,
    ) -> Result<(), OwnError> {
        if self.state != State::Confirmed || self.ended {
            return Err(OwnError::NoDialog);
        }
        let caller = self.caller();
        let Some(dialog) = self.dialog.as_mut() else {
            return Err(OwnError::NoDialog);
        };
        let to = dialog.next_hop().unwrap_or(caller);
        send(&mut self.own, dialog, to)?;
        self.pump_own(now);
        Ok(())
    }

    /// Moves our re-INVITE's bytes and events out.
    fn pump_own(&mut self, now: Instant) {
        while let Some(out) = self.own.poll_transmit() {
            self.transmit.push_back(out);
        }
        while let Some(ev) = self.own.poll_event() {
            if self.state != State::Confirmed {
                continue;
            }
            if let Some(ev) = session_timer::absorb(self.timer.as_mut(), ev, now) {
                self.events.push_back(UasEvent::Own(ev));
            }
        }
    }

    /// What the session timer asks for at `now` (see `sip::uac`).
    fn session_timer(&mut self, now: Instant) {
        let pending = self.own.offer_pending();
        let action =
            session_timer::next_action(&mut self.timer, now, pending, self.peer_allows_update);
        match action {
            None => {}
            Some(Action::Expired) => {
                tracing::warn!(call_id = %self.call_id(), "session timer expired: no refresh (RFC 4028)");
                self.events.push_back(UasEvent::SessionExpired);
            }
            Some(Action::Reinvite) => self.events.push_back(UasEvent::RefreshDue),
            Some(Action::Update) => {
                let caller = self.caller();
                let extra = self
                    .timer
                    .as_ref()
                    .map(|t| session_timer::headers(t, Role::Uac))
                    .unwrap_or_default();
                if let Some(dialog) = self.dialog.as_mut() {
                    let to = dialog.next_hop().unwrap_or(caller);
                    if let Err(e) = self.own.send_update(dialog, to, extra, now) {
                        tracing::warn!(error = %e, "cannot send the UPDATE refresh");
                    }
                }
                self.pump_own(now);
            }
        }
    }

    /// Answers the caller's re-INVITE or UPDATE reported as
    /// `Renegotiation(Offer)`. No-op when none is pending.
    pub fn answer_offer(&mut self, answer: OfferAnswer, now: Instant) {
        let Some(dialog) = self.dialog.as_mut() else {
            return;
        };
        let accepted = !matches!(answer, OfferAnswer::Refuse(_));
        // A deferred answer keeps the session-timer request for the final one.
        let extra = if answer == OfferAnswer::Later {
            Vec::new()
        } else {
            session_timer::peer_refresh(
                self.timer.as_mut(),
                self.peer_refresh.take(),
                accepted,
                now,
            )
        };
        if let Some(bytes) = self.updates.answer(dialog, answer, extra, now) {
            self.transmit.push_back((bytes, self.caller()));
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.terminated {
            return;
        }
        if let Some(dialog) = self
            .dialog
            .as_mut()
            .filter(|_| self.state == State::Confirmed)
        {
            self.own.handle_timeout(dialog, now);
            self.pump_own(now);
            self.session_timer(now);
        }
        if self.give_up_at.is_some_and(|t| t <= now) {
            self.give_up_at = None;
            self.retransmit_at = None;
            match self.state {
                State::Accepted => {
                    tracing::info!(call_id = %self.call_id(), "no ACK for our 2xx; sending BYE");
                    self.state = State::Confirmed;
                    self.send_bye(now);
                }
                // Timer H: no ACK for our non-2xx.
                _ => self.finish(),
            }
        }
        if let Some(at) = self.retransmit_at.filter(|t| *t <= now) {
            if let Some(r) = &self.last_response {
                self.transmit.push_back((r.clone(), self.caller()));
            }
            self.retransmit_interval = (self.retransmit_interval * 2).min(T2);
            self.retransmit_at = Some(at + self.retransmit_interval);
        }
        if self.linger_until.is_some_and(|t| t <= now) {
            self.linger_until = None;
            self.finish();
        }
        if let Some((tx, _)) = self.bye_tx.as_mut() {
            tx.handle_timeout(now);
        }
        if let Some(again) = self.updates.handle_timeout(now) {
            self.transmit.push_back((again, self.caller()));
        }
        self.pump();
        self.check_terminated();
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.terminated {
            return None;
        }
        [self.retransmit_at, self.give_up_at, self.linger_until]
            .into_iter()
            .flatten()
            .chain(self.bye_tx.as_ref().and_then(|(tx, _)| tx.poll_timeout()))
            .chain(self.updates.poll_timeout())
            .chain(
                self.own
                    .poll_timeout()
                    .filter(|_| self.state == State::Confirmed),
            )
            .chain(
                self.timer
                    .as_ref()
                    .filter(|_| self.state == State::Confirmed)
                    .map(|t| t.poll_timeout()),
            )
            .min()
    }

    /// Bytes to send and where to: responses to the INVITE's source, our
    /// BYE along the dialog's route.
    pub fn poll_transmit(&mut self) -> Option<(Bytes, Target)> {
        self.transmit.pop_front()
    }

    /// Where the INVITE came from: where responses go.
    fn caller(&self) -> Target {
        Target::addr(self.source, self.transport)
    }

    pub fn poll_event(&mut self) -> Option<UasEvent> {
        self.events.pop_front()
    }

    fn respond(&mut self, code: u16, mut parts: ResponseParts<'_>) {
        parts.user_agent = USER_AGENT;
        let resp = message::build_response(&self.invite, code, parts);
        let bytes = message::to_bytes(resp);
        self.transmit.push_back((bytes.clone(), self.caller()));
        self.last_response = Some(bytes);
    }

    fn reply_to(&mut self, req: &Request, code: u16) {
        if req.method == Method::Ack {
            return;
        }
        let resp: Response = message::build_response(
            req,
            code,
            ResponseParts {
                user_agent: USER_AGENT,
                ..Default::default()
            },
        );
        self.transmit
            .push_back((message::to_bytes(resp), self.caller()));
    }

    fn enter_completed(&mut self, now: Instant) {
        self.state = State::Completed;
        self.retransmit_interval = T1;
        // Timer G only on unreliable transports; Timer H always.
        self.retransmit_at = (!self.transport.is_reliable()).then(|| now + T1);
        self.give_up_at = Some(now + TIMEOUT);
    }

    fn send_bye(&mut self, now: Instant) {
        let caller = self.caller();
        let Some(dialog) = self.dialog.as_mut() else {
            return;
        };
        // A Contact or Record-Route that cannot be used leaves the INVITE's
        // source, which answered to the INVITE all along.
        let to = dialog.next_hop().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "unusable Contact or Record-Route; BYE goes to the INVITE's source");
            caller
        });
        match dialog.bye() {
            Ok(bye) => {
                tracing::info!(call_id = %message::call_id(&bye).unwrap_or_default(), to = %to, "sending BYE");
                self.bye_tx = Some((ClientTransaction::new(bye, to.transport, now), to));
                self.state = State::Ended;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot build BYE");
                self.finish();
            }
        }
        self.pump();
    }

    fn pump(&mut self) {
        let Some((tx, to)) = self.bye_tx.as_mut() else {
            return;
        };
        while let Some(b) = tx.poll_transmit() {
            self.transmit.push_back((b, to.clone()));
        }
        while let Some(ev) = tx.poll_event() {
            match ev {
                TxEvent::Response(r) if r.status_code.code() < 200 => {}
                _ => self.ended = true,
            }
        }
        if tx.is_terminated() {
            self.bye_tx = None;
        }
    }

    fn finish(&mut self) {
        self.state = State::Ended;
        self.ended = true;
        self.retransmit_at = None;
        self.give_up_at = None;
    }

    fn check_terminated(&mut self) {
        if self.terminated || !self.ended || self.bye_tx.is_some() || self.linger_until.is_some() {
            return;
        }
        self.terminated = true;
        tracing::debug!(call_id = %self.call_id(), "incoming call terminated");
        self.events.push_back(UasEvent::Terminated);
    }
}

fn start_line(msg: &SipMessage) -> String {
    msg.to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// `<sip:user@host:port;params>` → `host`.
fn contact_host(contact: &str) -> Option<String> {
    let uri = rsip::Uri::try_from(message::addr_uri(contact)?.as_str()).ok()?;
    Some(uri.host_with_port.host.to_string())
}

fn contact_port(contact: &str) -> Option<u16> {
    let uri = rsip::Uri::try_from(message::addr_uri(contact)?.as_str()).ok()?;
    uri.host_with_port.port.map(|p| *p.value())
}

/// RFC 3326: a CANCEL whose `Reason` names SIP cause 200 was sent because
/// another branch of a forked INVITE answered (Kamailio's tm and most
/// forking proxies add `Reason: SIP;cause=200;text="Call completed elsewhere"`).
fn answered_elsewhere(cancel: &rsip::Request) -> bool {
    message::header_values(cancel, "Reason")
        .iter()
        .any(|value| {
            value.split(',').any(|reason| {
                let mut parts = reason.split(';').map(str::trim);
                parts
                    .next()
                    .is_some_and(|proto| proto.eq_ignore_ascii_case("SIP"))
                    && parts.any(|p| {
                        p.split_once('=').is_some_and(|(k, v)| {
                            k.trim().eq_ignore_ascii_case("cause") && v.trim() == "200"
                        })
                    })
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::RequestParts;
    use crate::sip::uac::{OutgoingCall, UacConfig, UacEvent};

    fn peer() -> SocketAddr {
        "192.0.2.9:5070".parse().unwrap()
    }

    fn invite() -> Request {
        message::build_request(RequestParts {
            method: Method::Invite,
            uri: "sip:echo@192.0.2.1:5060",
            via: message::via_value("192.0.2.9", 5070, Transport::Udp, &message::new_branch()),
            from: "<sip:alice@192.0.2.9>;tag=caller",
            to: "<sip:echo@192.0.2.1>",
            call_id: "in-1",
            cseq: 1,
            contact: Some("<sip:alice@192.0.2.9:5070>"),
            routes: &[],
            user_agent: "caller",
            body: Some(("application/sdp", "v=0 offer\r\n")),
            extra: vec![],
        })
        .unwrap()
    }

    fn out(call: &mut IncomingCall) -> Vec<SipMessage> {
        std::iter::from_fn(|| call.poll_transmit())
            .map(|(b, dest)| {
                assert_eq!(dest, Target::addr(peer(), Transport::Udp));
                message::parse(&b).unwrap()
            })
            .collect()
    }

    fn codes(msgs: &[SipMessage]) -> Vec<u16> {
        msgs.iter()
            .map(|m| match m {
                SipMessage::Response(r) => r.status_code.code(),
                SipMessage::Request(r) => panic!("request {}", r.method),
            })
            .collect()
    }

    fn events(call: &mut IncomingCall) -> Vec<UasEvent> {
        std::iter::from_fn(|| call.poll_event()).collect()
    }

    fn run_until(
        call: &mut IncomingCall,
        t0: Instant,
        until: Instant,
    ) -> Vec<(Duration, SipMessage)> {
        let mut sent = vec![];
        while let Some(at) = call.poll_timeout() {
            if at > until {
                break;
            }
            call.handle_timeout(at);
            for m in out(call) {
                sent.push((at - t0, m));
            }
        }
        sent
    }

    /// The caller's dialog, to write ACK and BYE as the peer would.
    fn caller_dialog(inv: &Request, ok: &SipMessage) -> Dialog {
        let SipMessage::Response(ok) = ok else {
            panic!()
        };
        Dialog::uac(
            inv,
            ok,
            LocalEndpoint {
                via_host: "192.0.2.9".into(),
                via_port: 5070,
                transport: Transport::Udp,
                contact: "<sip:alice@192.0.2.9:5070>".into(),
                user_agent: "caller".into(),
            },
        )
        .unwrap()
    }

    #[test]
    fn trying_ringing_answer_with_2xx_retransmission_until_ack() {
        let t0 = Instant::now();
        let inv = invite();
        let mut call = IncomingCall::new(inv.clone().into(), peer(), t0).unwrap();
        assert_eq!(call.offer_sdp(), Some("v=0 offer\r\n"));
        assert_eq!(codes(&out(&mut call)), vec![100]);
        call.ringing(t0);
        assert_eq!(codes(&out(&mut call)), vec![180]);
        // A retransmitted INVITE gets the last response again.
        call.handle_message(inv.clone().into(), t0);
        assert_eq!(codes(&out(&mut call)), vec![180]);

        call.answer(
            "v=0 answer\r\n".into(),
            "<sip:echo@192.0.2.1:5060>".into(),
            t0,
        );
        let sent = out(&mut call);
        assert_eq!(codes(&sent), vec![200]);
        assert_eq!(
            message::sdp_body(&sent[0]).as_deref(),
            Some("v=0 answer\r\n")
        );
        assert_eq!(
            message::contact_uri(&sent[0]).as_deref(),
            Some("sip:echo@192.0.2.1:5060")
        );
        let ok = sent[0].clone();

        let retrans = run_until(&mut call, t0, t0 + Duration::from_secs(12));
        let at: Vec<u64> = retrans.iter().map(|(d, _)| d.as_millis() as u64).collect();
        assert_eq!(at, vec![500, 1500, 3500, 7500, 11500]);

        let ack = caller_dialog(&inv, &ok).ack(1).unwrap();
        call.handle_message(ack.into(), t0 + Duration::from_secs(12));
        assert_eq!(events(&mut call), vec![UasEvent::Acked { sdp: None }]);
        assert_eq!(call.poll_timeout(), None);

        let bye = caller_dialog(&inv, &ok).bye().unwrap();
        call.handle_message(bye.into(), t0 + Duration::from_secs(20));
        assert_eq!(codes(&out(&mut call)), vec![200]);
        assert_eq!(
            events(&mut call),
            vec![UasEvent::RemoteHangup, UasEvent::Terminated]
        );
    }

    #[test]
    fn no_ack_means_bye_after_64_t1() {
        let t0 = Instant::now();
        let mut call = IncomingCall::new(invite().into(), peer(), t0).unwrap();
        out(&mut call);
        call.answer("v=0\r\n".into(), "<sip:echo@192.0.2.1:5060>".into(), t0);
        out(&mut call);
        let sent = run_until(&mut call, t0, t0 + TIMEOUT);
        let (when, last) = sent.last().unwrap();
        assert_eq!(*when, TIMEOUT);
        let SipMessage::Request(bye) = last else {
            panic!()
        };
        assert_eq!(bye.method, Method::Bye);
        assert_eq!(bye.uri.to_string(), "sip:alice@192.0.2.9:5070");
        let resp = message::build_response(bye, 200, ResponseParts::default());
        call.handle_message(resp.into(), t0 + TIMEOUT);
        run_until(&mut call, t0, t0 + TIMEOUT + T4);
        assert_eq!(events(&mut call), vec![UasEvent::Terminated]);
    }

    #[test]
    fn a_cancel_with_reason_cause_200_says_answered_elsewhere() {
        let t0 = Instant::now();
        let inv = invite();
        let with = |reason: &str| {
            let mut call = IncomingCall::new(inv.clone().into(), peer(), t0).unwrap();
            call.ringing(t0);
            out(&mut call);
            let mut cancel = message::cancel_for(&inv, "proxy");
            if !reason.is_empty() {
                cancel
                    .headers
                    .push(rsip::Header::Other("Reason".into(), reason.into()));
            }
            call.handle_message(cancel.into(), t0);
            assert_eq!(codes(&out(&mut call)), vec![200, 487]);
            events(&mut call)
        };
        let elsewhere = |e: bool| vec![UasEvent::Cancelled { elsewhere: e }];
        // Kamailio's tm on the branches that lost a fork (RFC 3326)
        assert_eq!(
            with(r#"SIP;cause=200;text="Call completed elsewhere""#),
            elsewhere(true)
        );
        assert_eq!(with("Q.850;cause=16, sip ; cause = 200"), elsewhere(true));
        // another cause, another protocol, none, or junk: the caller gave up
        assert_eq!(with("SIP;cause=487"), elsewhere(false));
        assert_eq!(with("Q.850;cause=200"), elsewhere(false));
        assert_eq!(with(""), elsewhere(false));
        assert_eq!(with(";;=;cause"), elsewhere(false));
    }

    #[test]
    fn cancel_before_answer_gives_200_and_487() {
        let t0 = Instant::now();
        let inv = invite();
        let mut call = IncomingCall::new(inv.clone().into(), peer(), t0).unwrap();
        call.ringing(t0);
        out(&mut call);
        let cancel = message::cancel_for(&inv, "caller");
        call.handle_message(cancel.into(), t0);
        let sent = out(&mut call);
        assert_eq!(codes(&sent), vec![200, 487]);
        assert_eq!(message::cseq(&sent[0]).unwrap().1, Method::Cancel);
        assert_eq!(
            events(&mut call),
            vec![UasEvent::Cancelled { elsewhere: false }]
        );
        // 487 resent (Timer G) until the ACK.
        let again = run_until(&mut call, t0, t0 + Duration::from_millis(600));
        assert_eq!(again.len(), 1);
        let SipMessage::Response(r487) = &sent[1] else {
            panic!()
        };
        let ack = message::ack_for_non_2xx(&inv, r487);
        call.handle_message(ack.into(), t0 + Duration::from_secs(1));
        run_until(&mut call, t0, t0 + Duration::from_secs(10));
        assert_eq!(events(&mut call), vec![UasEvent::Terminated]);
    }

    #[test]
    fn reject_without_ack_ends_on_timer_h() {
        let t0 = Instant::now();
        let mut call = IncomingCall::new(invite().into(), peer(), t0).unwrap();
        out(&mut call);
        call.reject(486, t0);
        assert_eq!(codes(&out(&mut call)), vec![486]);
        let sent = run_until(&mut call, t0, t0 + Duration::from_secs(40));
        let at: Vec<u64> = sent.iter().map(|(d, _)| d.as_millis() as u64).collect();
        assert_eq!(&at[..5], &[500, 1500, 3500, 7500, 11500]);
        assert_eq!(events(&mut call), vec![UasEvent::Terminated]);
    }

    #[test]
    fn a_refusal_can_say_why_in_a_warning() {
        let t0 = Instant::now();
        let mut call = IncomingCall::new(invite().into(), peer(), t0).unwrap();
        out(&mut call);
        call.reject_with_warning(488, Some("secure_media is \"mandatory\"\r\nX: y"), t0);
        let (bytes, _) = call.poll_transmit().expect("the 488");
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.starts_with("SIP/2.0 488 "), "{text}");
        // One header, quoted text, no line break or raw quote smuggled in.
        assert!(
            text.contains(
                "\r\nWarning: 399 webrtc-sip-gateway \"secure_media is 'mandatory'  X: y\"\r\n"
            ),
            "{text}"
        );
        assert!(!text.contains("\r\nX: y"), "{text}");
    }

    #[test]
    fn not_an_invite_is_refused() {
        let mut bye = invite();
        bye.method = Method::Bye;
        assert!(IncomingCall::new(bye.into(), peer(), Instant::now()).is_err());
    }

    /// The outgoing and incoming machines talk to each other without sockets.
    #[test]
    fn uac_and_uas_complete_a_call_together() {
        let t0 = Instant::now();
        let mut uac = OutgoingCall::new(
            UacConfig {
                call_id: message::new_call_id(),
                request_uri: "sip:echo@192.0.2.1:5060".into(),
                from_uri: "sip:alice@192.0.2.9".into(),
                contact: "<sip:alice@192.0.2.9:5070;transport=udp>".into(),
                via_host: "192.0.2.9".into(),
                via_port: 5070,
                transport: Transport::Udp,
                credentials: None,
                user_agent: "uac".into(),
                destination: "192.0.2.1:5060".parse().unwrap(),
                routes: vec![],
            },
            "v=0 offer\r\n".into(),
            t0,
        );
        let first = message::parse(&uac.poll_transmit().unwrap().0).unwrap();
        let mut uas = IncomingCall::new(first, peer(), t0).unwrap();
        let shuttle = |uac: &mut OutgoingCall, uas: &mut IncomingCall, now: Instant| loop {
            let mut moved = false;
            while let Some((b, _)) = uac.poll_transmit() {
                uas.handle_message(message::parse(&b).unwrap(), now);
                moved = true;
            }
            while let Some((b, _)) = uas.poll_transmit() {
                uac.handle_message(message::parse(&b).unwrap(), now);
                moved = true;
            }
            if !moved {
                break;
            }
        };
        shuttle(&mut uac, &mut uas, t0);
        uas.ringing(t0);
        uas.answer(
            "v=0 answer\r\n".into(),
            "<sip:echo@192.0.2.1:5060>".into(),
            t0,
        );
        shuttle(&mut uac, &mut uas, t0);
        let uac_events: Vec<UacEvent> = std::iter::from_fn(|| uac.poll_event()).collect();
        assert_eq!(
            uac_events,
            vec![
                UacEvent::Provisional {
                    code: 100,
                    sdp: None
                },
                UacEvent::Provisional {
                    code: 180,
                    sdp: None
                },
                UacEvent::Answered {
                    sdp: Some("v=0 answer\r\n".into())
                }
            ]
        );
        assert_eq!(events(&mut uas), vec![UasEvent::Acked { sdp: None }]);
        let t1 = t0 + Duration::from_secs(1);
        uac.hangup(t1);
        shuttle(&mut uac, &mut uas, t1);
        assert_eq!(
            events(&mut uas),
            vec![UasEvent::RemoteHangup, UasEvent::Terminated]
        );
        uac.handle_timeout(t1 + T4);
        assert_eq!(uac.poll_event(), Some(UacEvent::Terminated));
    }

    #[test]
    fn our_bye_goes_to_the_invites_contact_via_its_record_route() {
        let t0 = Instant::now();
        let mut inv = invite();
        inv.headers
            .retain(|h| !matches!(h, rsip::Header::Contact(_)));
        inv.headers
            .push(rsip::Header::Contact("<sip:alice@192.0.2.70:5072>".into()));
        inv.headers.push(rsip::Header::RecordRoute(
            "<sip:192.0.2.8:5070;lr>, <sip:192.0.2.80;lr>".into(),
        ));
        let mut call = IncomingCall::new(inv.clone().into(), peer(), t0).unwrap();
        call.answer("v=0\r\n".into(), "<sip:echo@192.0.2.1:5060>".into(), t0);
        let sent: Vec<(SipMessage, Target)> = std::iter::from_fn(|| call.poll_transmit())
            .map(|(b, to)| (message::parse(&b).unwrap(), to))
            .collect();
        // Responses go back where the INVITE came from.
        assert_eq!(
            codes(&[sent[0].0.clone(), sent[1].0.clone()]),
            vec![100, 200]
        );
        assert!(sent
            .iter()
            .all(|(_, to)| *to == Target::addr(peer(), Transport::Udp)));
        let ack = caller_dialog(&inv, &sent[1].0).ack(1).unwrap();
        call.handle_message(ack.into(), t0);
        assert_eq!(events(&mut call), vec![UasEvent::Acked { sdp: None }]);

        call.hangup(t0 + Duration::from_secs(1));
        let (bytes, to) = call.poll_transmit().unwrap();
        let SipMessage::Request(bye) = message::parse(&bytes).unwrap() else {
            panic!("expected the BYE")
        };
        assert_eq!(bye.method, Method::Bye);
        // 12.1.1: the route set in the INVITE's order; the first proxy gets it.
        assert_eq!(
            to,
            Target::addr("192.0.2.8:5070".parse().unwrap(), Transport::Udp)
        );
        assert_eq!(bye.uri.to_string(), "sip:alice@192.0.2.70:5072");
        assert_eq!(
            message::header_values(&bye, "Route"),
            vec!["<sip:192.0.2.8:5070;lr>", "<sip:192.0.2.80;lr>"]
        );
    }

    // ---- session timers (RFC 4028) ----------------------------------------

    /// An INVITE with these extra headers, answered and ACKed at `t0`;
    /// returns the call, the 200 and the caller's dialog.
    fn timed_call(extra: Vec<rsip::Header>, t0: Instant) -> (IncomingCall, SipMessage, Dialog) {
        let mut inv = invite();
        inv.headers.extend(extra);
        let mut call = IncomingCall::new(inv.clone().into(), peer(), t0).unwrap();
        call.answer(
            "v=0 answer\r\n".into(),
            "<sip:echo@192.0.2.1:5060>".into(),
            t0,
        );
        let sent = out(&mut call);
        let ok = sent
            .into_iter()
            .find(|m| codes(std::slice::from_ref(m)) == [200])
            .unwrap();
        let caller = caller_dialog(&inv, &ok);
        call.handle_message(caller.ack(1).unwrap().into(), t0);
        assert_eq!(events(&mut call), [UasEvent::Acked { sdp: None }]);
        (call, ok, caller)
    }

    fn se(v: &str) -> rsip::Header {
        rsip::Header::Other("Session-Expires".into(), v.into())
    }

    #[test]
    fn a_caller_with_timers_refreshes_and_its_silence_expires_the_session() {
        let t0 = Instant::now();
        let (mut call, ok, mut caller) =
            timed_call(vec![rsip::Header::Supported("timer".into()), se("120")], t0);
        assert_eq!(
            message::header_values(&ok, "Session-Expires"),
            ["120;refresher=uac"]
        );
        assert_eq!(message::header_values(&ok, "Require"), ["timer"]);
        // 120 - min(32, 40) = 88 s without a refresh.
        assert_eq!(call.poll_timeout(), Some(t0 + Duration::from_secs(88)));
        // Its UPDATE at 60 s refreshes (answered with the interval).
        let t1 = t0 + Duration::from_secs(60);
        let update = caller
            .request_with(Method::Update, None, vec![se("120;refresher=uac")])
            .unwrap();
        call.handle_message(update.into(), t1);
        assert!(matches!(
            events(&mut call)[..],
            [UasEvent::Renegotiation(_)]
        ));
        call.answer_offer(OfferAnswer::Empty, t1);
        let ok = out(&mut call).remove(0);
        assert_eq!(codes(std::slice::from_ref(&ok)), [200]);
        assert_eq!(
            message::header_values(&ok, "Session-Expires"),
            ["120;refresher=uac"]
        );
        call.handle_timeout(t1 + Duration::from_secs(87));
        assert!(events(&mut call).is_empty());
        call.handle_timeout(t1 + Duration::from_secs(88));
        assert_eq!(events(&mut call), [UasEvent::SessionExpired]);
        call.hangup(t1 + Duration::from_secs(88));
        let bye = out(&mut call).remove(0);
        assert!(matches!(bye, SipMessage::Request(ref r) if r.method == Method::Bye));
    }

    #[test]
    fn a_caller_without_timers_leaves_the_refresh_to_us() {
        let t0 = Instant::now();
        // No Supported: timer: we refresh; its Allow names UPDATE.
        let (mut call, ok, _) = timed_call(
            vec![
                se("90"),
                rsip::Header::Allow("INVITE, ACK, BYE, UPDATE".into()),
            ],
            t0,
        );
        assert_eq!(
            message::header_values(&ok, "Session-Expires"),
            ["90;refresher=uas"]
        );
        assert!(message::header_values(&ok, "Require").is_empty());
        call.handle_timeout(t0 + Duration::from_secs(45));
        let update = out(&mut call).remove(0);
        let SipMessage::Request(update) = update else {
            panic!("a request")
        };
        assert_eq!(update.method, Method::Update);
        assert_eq!(
            message::header_values(&update, "Session-Expires"),
            ["90;refresher=uac"]
        );
        // Without an Allow naming UPDATE the B2BUA writes a re-INVITE.
        let (mut call, _, _) = timed_call(vec![se("90")], t0);
        call.handle_timeout(t0 + Duration::from_secs(45));
        assert_eq!(events(&mut call), [UasEvent::RefreshDue]);
        // No Session-Expires at all: no timer.
        let (call, ok, _) = timed_call(vec![], t0);
        assert!(message::header_values(&ok, "Session-Expires").is_empty());
        assert_eq!(message::header_values(&ok, "Supported"), ["timer"]);
        assert_eq!(call.poll_timeout(), None);
    }
}
