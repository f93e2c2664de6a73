//! `OutgoingCall`: the sans-IO state machine of one outgoing INVITE dialog,
//! as the B2BUA drives it for every browser call toward a trunk.
//!
//! Inputs: `handle_message` (responses and in-dialog requests with this
//! Call-ID), `handle_timeout`, `hangup`. Outputs: `poll_transmit` (bytes and
//! where they go), `poll_event`, `poll_timeout`.
//!
//! Where messages go: the INVITE, its retransmissions, its CANCEL and the ACK
//! of a non-2xx answer go to the configured trunk address
//! ([`UacConfig::destination`], RFC 3261 9.1 and 17.1.1.3); once a 2xx made
//! the dialog, its ACK, our BYE and any later request go where the dialog
//! says: the first Record-Route of the 2xx (the set reversed, 12.1.2), else
//! its Contact ([`Dialog::next_hop`]). Responses to the trunk's requests are
//! addressed to the trunk too; the endpoint sends every response back where
//! its request came from anyway.
//!
//! Event contract: zero or more `Provisional`, at most one `Reoffered`
//! (followed by zero or more `Provisional` of the new INVITE), then at most
//! one of `Answered` / `Rejected` / `RemoteHangup` as the call's outcome, and
//! always exactly one `Terminated` last. After `Answered`, any number of
//! `Renegotiation` (the trunk's re-INVITE or UPDATE, see `sip::reinvite`):
//! each `Offer` must be answered with [`OutgoingCall::answer_offer`] before
//! the next input.
//!
//! A second INVITE in the same call: with [`OutgoingCall::set_fallback_offer`]
//! a 488 (Not Acceptable Here) to the INVITE is not the outcome; it is ACKed
//! (by its transaction) and a new INVITE with the fallback offer goes out,
//! reported as `Reoffered`. A non-2xx final response creates no dialog
//! (RFC 3261 12.1), so this is a new request outside any dialog, which RFC
//! 3261 8.1.3.5 says SHOULD keep the Call-ID, To and From (tag included) of
//! the refused one with a CSeq one higher, as the 401/407 retry does; its own
//! branch makes it a new transaction (17.1.1). After a 2xx the dialog exists
//! and a change of offer would be a re-INVITE inside it (14.1), which this
//! UAC does not send. After `Terminated`, `poll_timeout` is `None`
//! and the object can be dropped (and its Call-ID unregistered). Between the
//! outcome and `Terminated` the object still absorbs retransmissions (e.g.
//! Timer D after a rejection), so keep feeding it until then.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use rsip::{Header, Method, Request, Response, SipMessage};

use super::auth::{Authenticator, DigestCredentials};
use super::dialog::{Dialog, InDialog, LocalEndpoint};
use super::info;
use super::message::{self, RequestParts, ResponseParts};
use super::own_requests::{self, OwnError, OwnEvent, OwnRequests};
use super::reinvite::{OfferAnswer, PeerUpdates, RenegotiationEvent};
use super::session_timer::{self, Action, Role, SessionExpires, SessionTimer};
use super::target::Target;
use super::transaction::{ClientTransaction, TxEvent, TIMEOUT};
use super::Transport;

/// At most this many authenticated retries per call, so that a trunk that
/// answers every INVITE with `stale=true` cannot loop us forever.
const MAX_AUTH_RETRIES: usize = 3;

#[derive(Debug, Clone)]
pub struct UacConfig {
    /// Generate with `message::new_call_id()` if you like.
    pub call_id: String,
    /// `sip:{to}@{trunk host}:{port}`
    pub request_uri: String,
    /// `sip:{account}@{public_ip}`
    pub from_uri: String,
    /// `<sip:{account}@{public_ip}:{port};transport=udp>`
    pub contact: String,
    pub via_host: String,
    pub via_port: u16,
    pub transport: Transport,
    pub credentials: Option<DigestCredentials>,
    pub user_agent: String,
    /// The trunk's resolved address, or the outbound proxy's: where the
    /// INVITE (and its CANCEL) go.
    pub destination: SocketAddr,
    /// A pre-loaded route set (RFC 3261 8.1.2): `<sip:proxy;lr>` when a
    /// cluster's outbound proxy carries the INVITE; the Request-URI stays
    /// the trunk's. CANCEL and the ACK of a failure copy it; the dialog then
    /// follows the Record-Route of the answer.
    pub routes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UacEvent {
    /// 100 (once), 180, 183... with the SDP if the provisional carried one.
    Provisional { code: u16, sdp: Option<String> },
    /// A 2xx; its ACK is already queued.
    Answered { sdp: Option<String> },
    /// A 3xx-6xx final (after auth retries), or 408 when Timer B fired.
    Rejected { code: u16, reason: String },
    /// The INVITE was refused with `code` (488) and a new INVITE with the
    /// fallback offer is out; what follows is about that one.
    Reoffered { code: u16, reason: String },
    /// The trunk sent BYE; the 200 OK is queued.
    RemoteHangup,
    /// The trunk's re-INVITE or UPDATE, or the answer in the ACK of our 2xx
    /// to an offerless re-INVITE.
    Renegotiation(RenegotiationEvent),
    /// The trunk sent a DTMF digit in an INFO (answered 200).
    Dtmf(crate::types::DtmfDigit),
    /// The outcome of our own re-INVITE ([`OutgoingCall::reoffer`]) or REFER.
    Own(OwnEvent),
    /// A NOTIFY about our REFER (already answered 200): the status of the
    /// transferred call, from its sipfrag (RFC 3515).
    TransferNotify { code: u16 },
    /// The peer's REFER, accepted with 202 (after `set_refer_answer(202)`):
    /// call `user` and report with [`notify_referrer`](Self::notify_referrer).
    Referred(super::refer::Referral),
    /// RFC 4028: we refresh, the trunk takes no UPDATE, and half the
    /// interval has passed: send a re-INVITE with the session's SDP
    /// ([`OutgoingCall::reoffer`]).
    RefreshDue,
    /// RFC 4028: no refresh came in time. End the call ([`OutgoingCall::hangup`]).
    SessionExpired,
    /// Nothing left to do: the object can be dropped.
    Terminated,
}

#[derive(Debug)]
pub struct OutgoingCall {
    cfg: UacConfig,
    local: LocalEndpoint,
    local_tag: String,
    sdp_offer: String,
    /// Sent once in a new INVITE if the first offer is refused with 488.
    fallback_offer: Option<String>,
    /// The INVITE currently outstanding (the last one after auth retries).
    invite: Request,
    invite_cseq: u32,
    /// Its messages go to the trunk address.
    invite_tx: Option<ClientTransaction>,
    bye_tx: Option<Routed>,
    /// Transactions whose outcome no longer matters but that must keep
    /// absorbing retransmissions: superseded INVITEs, CANCEL, stray BYEs.
    background: Vec<Routed>,
    dialog: Option<Dialog>,
    /// The trunk's re-INVITEs and UPDATEs in the dialog.
    updates: PeerUpdates,
    /// Our own re-INVITEs in the dialog (hold and resume).
    own: OwnRequests,
    /// The `Session-Expires` and `Min-SE` our INVITE asks for (raised by a
    /// 422), and how many 422s were followed.
    session_expires: u64,
    min_se: u64,
    retries_422: usize,
    /// The session timer, once the 2xx named one (RFC 4028).
    timer: Option<SessionTimer>,
    /// The trunk's Allow (of its 2xx) names UPDATE: refreshes go as UPDATE.
    peer_allows_update: bool,
    /// The `Session-Expires` of the trunk's pending re-INVITE or UPDATE.
    peer_refresh: Option<SessionExpires>,
    /// How the trunk's REFERs are answered (`Dialog::set_refer_answer`).
    refer_answer: u16,
    /// Further headers of our INVITEs (`with_headers`).
    invite_headers: Vec<Header>,
    /// The ACK of our 2xx, resent for each retransmitted 2xx.
    ack_2xx: Option<(Bytes, Target)>,
    auth_headers: Vec<Header>,
    /// Reliable provisionals (RFC 3262): the last RSeq PRACKed per early
    /// dialog (To tag), and the highest CSeq a PRACK used, which the
    /// confirmed dialog's own requests must exceed.
    prack_rseq: Vec<(String, u32)>,
    prack_cseq: u32,
    bye_auth_tried: bool,
    provisional_seen: bool,
    trying_reported: bool,
    hangup_requested: bool,
    cancel_sent: bool,
    /// RFC 3261 9.1: give up on the INVITE 64*T1 after the CANCEL.
    cancel_deadline: Option<Instant>,
    /// The call is over; `Terminated` follows once the transactions finish.
    ended: bool,
    terminated: bool,
    transmit: VecDeque<(Bytes, Target)>,
    events: VecDeque<UacEvent>,
}

/// A client transaction and where its messages go.
#[derive(Debug)]
struct Routed {
    tx: ClientTransaction,
    to: Target,
}

impl OutgoingCall {
    /// Builds the INVITE and queues it.
    ///
    /// A `request_uri` that does not parse yields a call that is at once
    /// `Rejected { code: 400 }` and `Terminated`, so the caller has one error path.
    pub fn new(cfg: UacConfig, sdp_offer: String, now: Instant) -> Self {
        Self::with_headers(cfg, sdp_offer, Vec::new(), now)
    }

    /// [`OutgoingCall::new`] with further headers in every INVITE (the
    /// `Referred-By` of a trunk's REFER that the call carries out).
    pub fn with_headers(
        cfg: UacConfig,
        sdp_offer: String,
        invite_headers: Vec<Header>,
        now: Instant,
    ) -> Self {
        let local = LocalEndpoint {
            via_host: cfg.via_host.clone(),
            via_port: cfg.via_port,
            transport: cfg.transport,
            contact: cfg.contact.clone(),
            user_agent: cfg.user_agent.clone(),
        };
        let mut call = OutgoingCall {
            local,
            local_tag: message::new_tag(),
            sdp_offer,
            fallback_offer: None,
            invite: placeholder_request(),
            invite_cseq: 1,
            invite_tx: None,
            bye_tx: None,
            background: Vec::new(),
            dialog: None,
            updates: PeerUpdates::default(),
            // We sent the first INVITE: the Call-ID is ours (491 delays).
            own: OwnRequests::new(true, Authenticator::new(cfg.credentials.clone())),
            session_expires: session_timer::REQUESTED_SE,
            min_se: session_timer::MIN_SE,
            retries_422: 0,
            timer: None,
            peer_allows_update: false,
            peer_refresh: None,
            refer_answer: 501,
            ack_2xx: None,
            auth_headers: Vec::new(),
            prack_rseq: Vec::new(),
            prack_cseq: 0,
            bye_auth_tried: false,
            provisional_seen: false,
            trying_reported: false,
            hangup_requested: false,
            cancel_sent: false,
            cancel_deadline: None,
            ended: false,
            terminated: false,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            invite_headers,
            cfg,
        };
        match call.build_invite() {
            Ok(invite) => {
                tracing::info!(call_id = %call.cfg.call_id, "sending INVITE");
                call.start_invite(invite, now);
            }
            Err(e) => {
                // The error quotes the Request-URI, which holds the dialed
                // number: it is not logged (redaction is the caller's to
                // decide), only a category.
                let what = match &e {
                    super::SipError::InvalidUri { .. } => "invalid Request-URI",
                    _ => "malformed request",
                };
                tracing::warn!(call_id = %call.cfg.call_id, what, "cannot build INVITE");
                call.events.push_back(UacEvent::Rejected {
                    code: 400,
                    reason: format!("cannot build the INVITE: {what}"),
                });
                call.ended = true;
                call.check_terminated();
            }
        }
        call
    }

    /// An offer to send, once, in a new INVITE when the trunk refuses the
    /// current one with 488 (see the module documentation). The B2BUA uses
    /// it for `secure_media = "optional"`: SRTP first, then plain RTP.
    pub fn set_fallback_offer(&mut self, sdp: String) {
        self.fallback_offer = Some(sdp);
    }

    pub fn call_id(&self) -> &str {
        &self.cfg.call_id
    }

    /// 202 carries the trunk's REFERs out (`UacEvent::Referred`), 603
    /// refuses them (`accept_refer = false`); the default 501 says a REFER
    /// is not carried out. Takes effect in the dialog at once.
    pub fn set_refer_answer(&mut self, code: u16) {
        self.refer_answer = code;
        if let Some(d) = self.dialog.as_mut() {
            d.set_refer_answer(code);
        }
    }

    /// True once `Terminated` has been emitted.
    pub fn is_finished(&self) -> bool {
        self.terminated
    }

    fn build_invite(&self) -> Result<Request, super::SipError> {
        let from = format!("<{}>;tag={}", self.cfg.from_uri, self.local_tag);
        let to = format!("<{}>", self.cfg.request_uri);
        let mut extra = vec![
            Header::Allow(super::uas::ALLOW.into()),
            // RFC 3262: carriers that insist on reliable 183s get them;
            // RFC 4028: session timers, with the interval we ask for.
            Header::Supported("100rel, timer".into()),
            Header::Other("Session-Expires".into(), self.session_expires.to_string()),
            Header::Other("Min-SE".into(), self.min_se.to_string()),
        ];
        extra.extend(self.invite_headers.iter().cloned());
        extra.extend(self.auth_headers.iter().cloned());
        message::build_request(RequestParts {
            method: Method::Invite,
            uri: &self.cfg.request_uri,
            via: message::via_value(
                &self.cfg.via_host,
                self.cfg.via_port,
                self.cfg.transport,
                &message::new_branch(),
            ),
            from: &from,
            to: &to,
            call_id: &self.cfg.call_id,
            cseq: self.invite_cseq,
            contact: Some(&self.cfg.contact),
            routes: &self.cfg.routes,
            user_agent: &self.cfg.user_agent,
            body: Some(("application/sdp", &self.sdp_offer)),
            extra,
        })
    }

    fn start_invite(&mut self, invite: Request, now: Instant) {
        self.invite = invite.clone();
        self.invite_tx = Some(ClientTransaction::new(invite, self.cfg.transport, now));
        self.provisional_seen = false;
        self.pump();
    }

    /// Feeds a response or in-dialog request carrying this call's Call-ID.
    pub fn handle_message(&mut self, msg: SipMessage, now: Instant) {
        if self.terminated {
            return;
        }
        if message::call_id(&msg).ok().as_deref() != Some(self.cfg.call_id.as_str()) {
            return;
        }
        match msg {
            SipMessage::Response(resp) => self.handle_response(resp, now),
            SipMessage::Request(req) => self.handle_request(req),
        }
        self.pump_events(now);
        self.pump();
        self.check_terminated();
    }

    fn handle_response(&mut self, resp: Response, now: Instant) {
        let Ok((seq, method)) = message::cseq(&resp) else {
            return;
        };
        if let Some(dialog) = self.dialog.as_mut() {
            if self.own.handle_response(dialog, &resp, now) {
                return;
            }
        }
        if let Some(tx) = self.invite_tx.as_mut().filter(|tx| tx.matches(&resp)) {
            tx.handle_response(resp, now);
            return;
        }
        if let Some(r) = self.bye_tx.as_mut().filter(|r| r.tx.matches(&resp)) {
            r.tx.handle_response(resp, now);
            return;
        }
        if let Some(r) = self.background.iter_mut().find(|r| r.tx.matches(&resp)) {
            r.tx.handle_response(resp, now);
            return;
        }
        // 2xx retransmissions arrive after the INVITE transaction is gone
        // (RFC 3261 13.2.2.4): each gets the ACK again.
        if method == Method::Invite
            && seq == self.invite_cseq
            && (200..300).contains(&message::status_code(&resp))
        {
            self.on_2xx(resp, now);
        }
    }

    fn handle_request(&mut self, req: Request) {
        let in_dialog = self
            .dialog
            .as_ref()
            .is_some_and(|d| d.matches_request(&req));
        if !in_dialog {
            if req.method != Method::Ack {
                let resp = self.response(&req, 481);
                self.reply(resp);
            }
            return;
        }
        let Some(dialog) = self.dialog.as_mut() else {
            return;
        };
        match dialog.handle_request(&req) {
            InDialog::Bye(resp) => {
                self.reply(resp);
                if !self.ended {
                    tracing::info!(call_id = %self.cfg.call_id, "trunk hung up");
                    if !self.hangup_requested {
                        self.events.push_back(UacEvent::RemoteHangup);
                    }
                    self.ended = true;
                    // Our own BYE, if any, can go: the dialog is over either way.
                    if let Some(tx) = self.bye_tx.take() {
                        self.background.push(tx);
                    }
                }
            }
            InDialog::Ack => {
                self.updates.on_ack(&req);
            }
            InDialog::Offer => {
                self.peer_refresh = session_timer::of(&req);
                let ours = self.own.invite_open();
                if let Some(refusal) = self.updates.begin(dialog, req, false, ours) {
                    let to = self.trunk();
                    self.transmit.push_back((refusal, to));
                }
            }
            InDialog::Other(resp) => {
                if let Some(code) = own_requests::refer_notify(&req) {
                    self.events.push_back(UacEvent::TransferNotify { code });
                }
                self.reply(resp)
            }
            InDialog::Retransmission(resp) => self.reply(resp),
            InDialog::Refer(resp, referral) => {
                self.reply(resp);
                self.events.push_back(UacEvent::Referred(referral));
            }
            InDialog::Dtmf(resp, digit) => {
                self.reply(resp);
                self.events.push_back(UacEvent::Dtmf(digit));
            }
        }
        while let Some(ev) = self.updates.poll_event() {
            self.events.push_back(UacEvent::Renegotiation(ev));
        }
    }

    /// Answers the trunk's re-INVITE or UPDATE reported as
    /// `Renegotiation(Offer)`. No-op when none is pending.
    pub fn answer_offer(&mut self, answer: OfferAnswer, now: Instant) {
        let Some(dialog) = self.dialog.as_mut() else {
            return;
        };
        // A 2xx to the trunk's re-INVITE or UPDATE refreshes the session
        // (RFC 4028 9): it names the interval and refresher in force.
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
            let to = self.trunk();
            self.transmit.push_back((bytes, to));
        }
    }

    /// Sends `sdp` as our new offer in a re-INVITE (the browser's hold or
    /// resume); the outcome comes as `UacEvent::Own`. Refused while the
    /// call is not answered or is ending, or while an offer of ours is out.
    pub fn reoffer(&mut self, sdp: String, now: Instant) -> Result<(), OwnError> {
        let mut extra = vec![Header::Allow(super::uas::ALLOW.into())];
        if let Some(timer) = &self.timer {
            extra.extend(session_timer::headers(timer, Role::Uac));
        }
        self.send_own(|own, dialog, to| own.send_offer(dialog, to, sdp, extra, now))
    }

    /// Sends a REFER asking the trunk to call `refer_to` (a blind
    /// transfer); the answer comes as `UacEvent::Own(Referred)`, the
    /// trunk's NOTIFYs as `TransferNotify`.
    pub fn refer(&mut self, refer_to: &str, now: Instant) -> Result<(), OwnError> {
        self.send_own(|own, dialog, to| own.send_refer(dialog, to, refer_to, now))
    }

    /// Sends one DTMF digit as SIP INFO (`application/dtmf-relay`), for a
    /// trunk that did not negotiate telephone-event; the answer comes as
    /// `OwnEvent::InfoAnswered`. `OwnError::Busy` while the last is out.
    pub fn info_dtmf(
        &mut self,
        digit: crate::types::DtmfDigit,
        now: Instant,
    ) -> Result<(), OwnError> {
        let body = info::dtmf_relay_body(digit, info::DTMF_DURATION_MS);
        self.send_own(|own, dialog, to| own.send_info(dialog, to, (info::DTMF_RELAY, &body), now))
    }

    /// Reports on the trunk's REFER with CSeq `refer_cseq` (see
    /// `UacEvent::Referred`): a NOTIFY with `status` as its sipfrag, the
    /// `last` one ending the subscription (RFC 3515 2.4.4).
    pub fn notify_referrer(
        &mut self,
        refer_cseq: u32,
        status: (u16, &str),
        last: bool,
        now: Instant,
    ) -> Result<(), OwnError> {
        self.send_own(|own, dialog, to| {
            own.send_refer_notify(dialog, to, refer_cseq, status, last, now)
        })
    }

    /// Runs `send` on our requests with the confirmed dialog and where its
    /// requests go; refused while the call is not answered or is ending.
    fn send_own(
        &mut self,
        send: impl FnOnce(&mut OwnRequests, &mut Dialog, Target) -> Result<(), OwnError>,
    ) -> Result<(), OwnError> {
        if self.ended || self.hangup_requested {
            return Err(OwnError::NoDialog);
        }
        let Some(to) = self.dialog.as_ref().map(|d| self.hop_of(d)) else {
            return Err(OwnError::NoDialog);
        };
        let Some(dialog) = self.dialog.as_mut() else {
            return Err(OwnError::NoDialog);
        };
        send(&mut self.own, dialog, to)?;
        self.pump();
        Ok(())
    }

    /// Queues a response to one of the trunk's requests. Addressed to the
    /// trunk; the endpoint sends it where the request came from.
    fn reply(&mut self, resp: Response) {
        let to = self.trunk();
        self.transmit.push_back((message::to_bytes(resp), to));
    }

    /// Where the INVITE went.
    fn trunk(&self) -> Target {
        Target::addr(self.cfg.destination, self.cfg.transport)
    }

    /// Where requests of `dialog` go. A route or Contact that cannot be
    /// used (not a SIP URI) leaves the trunk address: the request may still
    /// reach the peer that way, and the call can end.
    fn hop_of(&self, dialog: &Dialog) -> Target {
        dialog.next_hop().unwrap_or_else(|e| {
            tracing::warn!(call_id = %self.cfg.call_id, error = %e,
                "unusable route or Contact in the answer; in-dialog requests go to the trunk address");
            self.trunk()
        })
    }

    fn response(&self, req: &Request, code: u16) -> Response {
        message::build_response(
            req,
            code,
            ResponseParts {
                user_agent: &self.cfg.user_agent,
                ..Default::default()
            },
        )
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.terminated {
            return;
        }
        if let Some(tx) = self.invite_tx.as_mut() {
            tx.handle_timeout(now);
        }
        if let Some(r) = self.bye_tx.as_mut() {
            r.tx.handle_timeout(now);
        }
        for r in &mut self.background {
            r.tx.handle_timeout(now);
        }
        if let Some(again) = self.updates.handle_timeout(now) {
            let to = self.trunk();
            self.transmit.push_back((again, to));
        }
        if let Some(dialog) = self.dialog.as_mut().filter(|_| !self.ended) {
            self.own.handle_timeout(dialog, now);
        }
        if !self.ended && !self.hangup_requested {
            self.session_timer(now);
        }
        if self.cancel_deadline.is_some_and(|t| t <= now) {
            self.cancel_deadline = None;
            if self.dialog.is_none() && !self.ended {
                tracing::info!(call_id = %self.cfg.call_id, "no final response after CANCEL; giving up");
                self.ended = true;
                self.invite_tx = None;
            }
        }
        self.pump_events(now);
        self.pump();
        self.check_terminated();
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.terminated {
            return None;
        }
        self.invite_tx
            .iter()
            .chain(self.bye_tx.iter().map(|r| &r.tx))
            .chain(self.background.iter().map(|r| &r.tx))
            .filter_map(|tx| tx.poll_timeout())
            .chain(self.cancel_deadline)
            .chain(self.updates.poll_timeout())
            .chain(self.own.poll_timeout().filter(|_| !self.ended))
            .chain(
                self.timer
                    .as_ref()
                    .filter(|_| !self.ended && !self.hangup_requested)
                    .map(|t| t.poll_timeout()),
            )
            .min()
    }

    /// Bytes to send, and where to.
    pub fn poll_transmit(&mut self) -> Option<(Bytes, Target)> {
        self.transmit.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<UacEvent> {
        self.events.pop_front()
    }

    /// Ends the call in any state: CANCEL before a final response (once a
    /// provisional arrived; if none yet, as soon as one does), BYE after a
    /// 2xx; a 2xx arriving after CANCEL gets ACK then BYE. No-op once the
    /// call has ended.
    pub fn hangup(&mut self, now: Instant) {
        if self.ended || self.hangup_requested || self.terminated {
            return;
        }
        tracing::info!(call_id = %self.cfg.call_id, "hanging up");
        self.hangup_requested = true;
        if self.dialog.is_some() {
            self.send_bye(now);
        } else if self.provisional_seen {
            self.send_cancel(now);
        }
        self.pump();
        self.check_terminated();
    }

    fn send_cancel(&mut self, now: Instant) {
        if self.cancel_sent {
            return;
        }
        self.cancel_sent = true;
        // RFC 3261 9.1: the CANCEL goes where the INVITE went.
        let cancel = message::cancel_for(&self.invite, &self.cfg.user_agent);
        self.background.push(Routed {
            tx: ClientTransaction::new(cancel, self.cfg.transport, now),
            to: self.trunk(),
        });
        self.cancel_deadline = Some(now + TIMEOUT);
    }

    fn send_bye(&mut self, now: Instant) {
        let Some(to) = self.dialog.as_ref().map(|d| self.hop_of(d)) else {
            return;
        };
        let Some(dialog) = self.dialog.as_mut() else {
            return;
        };
        match dialog.bye() {
            Ok(bye) => {
                self.bye_tx = Some(Routed {
                    tx: ClientTransaction::new(bye, to.transport, now),
                    to,
                })
            }
            Err(e) => {
                tracing::warn!(call_id = %self.cfg.call_id, error = %e, "cannot build BYE");
                self.ended = true;
            }
        }
    }

    /// Handles what the transactions report.
    fn pump_events(&mut self, now: Instant) {
        while let Some(ev) = self.own.poll_event() {
            if self.ended {
                continue;
            }
            if let Some(ev) = session_timer::absorb(self.timer.as_mut(), ev, now) {
                self.events.push_back(UacEvent::Own(ev));
            }
        }
        while let Some(ev) = self.invite_tx.as_mut().and_then(|tx| tx.poll_event()) {
            match ev {
                TxEvent::Response(resp) => self.on_invite_response(resp, now),
                TxEvent::Timeout => {
                    if !self.ended {
                        if !self.hangup_requested {
                            tracing::info!(call_id = %self.cfg.call_id, "INVITE timed out");
                            self.events.push_back(UacEvent::Rejected {
                                code: 408,
                                reason: "Request Timeout".into(),
                            });
                        }
                        self.ended = true;
                    }
                }
            }
        }
        while let Some(ev) = self.bye_tx.as_mut().and_then(|r| r.tx.poll_event()) {
            match ev {
                TxEvent::Response(resp) if message::status_code(&resp) < 200 => {}
                TxEvent::Response(resp)
                    if matches!(message::status_code(&resp), 401 | 407)
                        && !self.bye_auth_tried
                        && self.retry_bye_with_auth(&resp, now) => {}
                // Any final or a timeout ends the dialog (RFC 3261 15.1.1).
                _ => self.ended = true,
            }
        }
        for r in &mut self.background {
            while r.tx.poll_event().is_some() {}
        }
        if self.invite_tx.as_ref().is_some_and(|tx| tx.is_terminated()) {
            self.invite_tx = None;
        }
        if self.bye_tx.as_ref().is_some_and(|r| r.tx.is_terminated()) {
            self.bye_tx = None;
        }
        self.background.retain(|r| !r.tx.is_terminated());
    }

    fn on_invite_response(&mut self, resp: Response, now: Instant) {
        let code = message::status_code(&resp);
        match code {
            100..=199 => {
                self.provisional_seen = true;
                if self.hangup_requested {
                    self.send_cancel(now);
                    return;
                }
                if code == 100 {
                    if self.trying_reported {
                        return;
                    }
                    self.trying_reported = true;
                }
                if code > 100 && requires_100rel(&resp) && !self.prack(&resp, now) {
                    // A retransmission or an out-of-order reliable
                    // provisional: already handled, or to be discarded.
                    return;
                }
                self.events.push_back(UacEvent::Provisional {
                    code,
                    sdp: message::sdp_body(&resp),
                });
            }
            200..=299 => self.on_2xx(resp, now),
            _ => {
                if (code == 401 || code == 407) && self.retry_with_auth(&resp, now) {
                    return;
                }
                if code == 488 && self.retry_with_fallback(&resp, now) {
                    return;
                }
                if code == 422 && self.retry_with_interval(&resp, now) {
                    return;
                }
                if !self.ended {
                    let reason = message::response_reason(&resp);
                    if !self.hangup_requested {
                        tracing::info!(call_id = %self.cfg.call_id, code, %reason, "call rejected");
                        self.events.push_back(UacEvent::Rejected { code, reason });
                    }
                    self.ended = true;
                }
            }
        }
    }

    fn on_2xx(&mut self, resp: Response, now: Instant) {
        if let Some(dialog) = &self.dialog {
            if dialog.matches_response(&resp) {
                if let Some(ack) = &self.ack_2xx {
                    self.transmit.push_back(ack.clone());
                }
            } else {
                self.reject_fork(resp, now);
            }
            return;
        }
        if self.ended {
            // A 2xx after we gave up: confirm and end it at once.
            self.reject_fork(resp, now);
            return;
        }
        let dialog = match Dialog::uac(&self.invite, &resp, self.local.clone()) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(call_id = %self.cfg.call_id, error = %e, "unusable 2xx");
                return;
            }
        };
        let mut dialog = dialog;
        dialog.set_refer_answer(self.refer_answer);
        // Our PRACKs used CSeqs of this dialog already.
        dialog.raise_local_cseq(self.prack_cseq);
        // The ACK of a 2xx belongs to the dialog (13.2.2.4): it goes where
        // the dialog's requests go, not where the INVITE went.
        let to = self.hop_of(&dialog);
        tracing::debug!(call_id = %self.cfg.call_id, next_hop = %to, "dialog established");
        match dialog.ack_with(self.invite_cseq, self.auth_headers.clone()) {
            Ok(ack) => {
                let ack = (message::to_bytes(ack), to);
                self.transmit.push_back(ack.clone());
                self.ack_2xx = Some(ack);
            }
            Err(e) => tracing::warn!(call_id = %self.cfg.call_id, error = %e, "cannot build ACK"),
        }
        self.dialog = Some(dialog);
        self.cancel_deadline = None;
        self.peer_allows_update = session_timer::allows_update(&resp);
        if let Some(se) = session_timer::uac_decision(session_timer::of(&resp)) {
            let timer = SessionTimer::new(se, Role::Uac, now);
            tracing::info!(call_id = %self.cfg.call_id, interval_s = se.seconds,
                we_refresh = timer.we_refresh(), "session timer (RFC 4028)");
            self.timer = Some(timer);
        }
        if self.hangup_requested {
            self.send_bye(now);
        } else {
            tracing::info!(call_id = %self.cfg.call_id, "call answered");
            self.events.push_back(UacEvent::Answered {
                sdp: message::sdp_body(&resp),
            });
        }
    }

    /// Answers a reliable provisional with PRACK (RFC 3262 section 4) in
    /// its early dialog. False when it must not be reported: a
    /// retransmission (its RSeq was PRACKed) or out of order.
    fn prack(&mut self, resp: &Response, now: Instant) -> bool {
        let (Some(tag), Some(rseq)) = (message::to_tag(resp), rseq(resp)) else {
            // Require: 100rel without RSeq or To tag: not reliable at all.
            return true;
        };
        let last = self
            .prack_rseq
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, r)| *r);
        match last {
            Some(last) if rseq <= last => return false,
            Some(last) if rseq != last.wrapping_add(1) => return false,
            _ => {}
        }
        let Ok(mut early) = Dialog::uac(&self.invite, resp, self.local.clone()) else {
            return true;
        };
        early.raise_local_cseq(self.prack_cseq.max(self.invite_cseq));
        let rack = Header::Other("RAck".into(), format!("{rseq} {} INVITE", self.invite_cseq));
        let mut extra = vec![rack];
        extra.extend(self.auth_headers.iter().cloned());
        match early.request_with(Method::PRack, None, extra) {
            Ok(prack) => {
                self.prack_cseq = early.local_cseq();
                let to = self.hop_of(&early);
                self.background.push(Routed {
                    tx: ClientTransaction::new(prack, to.transport, now),
                    to,
                });
                match self.prack_rseq.iter_mut().find(|(t, _)| *t == tag) {
                    Some(entry) => entry.1 = rseq,
                    None => self.prack_rseq.push((tag, rseq)),
                }
            }
            Err(e) => tracing::warn!(call_id = %self.cfg.call_id, error = %e, "cannot build PRACK"),
        }
        true
    }

    /// A 2xx from another fork (or after we gave up): ACK it and BYE it,
    /// as RFC 3261 13.2.2.4 asks, without reporting anything.
    fn reject_fork(&mut self, resp: Response, now: Instant) {
        let Ok(mut dialog) = Dialog::uac(&self.invite, &resp, self.local.clone()) else {
            return;
        };
        let to = self.hop_of(&dialog);
        if let Ok(ack) = dialog.ack(self.invite_cseq) {
            self.transmit
                .push_back((message::to_bytes(ack), to.clone()));
        }
        if let Ok(bye) = dialog.bye() {
            self.background.push(Routed {
                tx: ClientTransaction::new(bye, to.transport, now),
                to,
            });
        }
    }

    /// Resends the INVITE with credentials for a 401/407. False when the
    /// challenge cannot or must not be answered (no credentials, same nonce
    /// again without `stale=true`, too many retries, hangup pending).
    fn retry_with_auth(&mut self, resp: &Response, now: Instant) -> bool {
        if self.hangup_requested || self.own.auth().answered() >= MAX_AUTH_RETRIES {
            return false;
        }
        let uri = self.invite.uri.to_string();
        let Some(header) = self.own.auth().answer(resp, "INVITE", &uri, true) else {
            return false;
        };
        // One answer per kind: a newer challenge replaces the older answer.
        self.auth_headers
            .retain(|h| std::mem::discriminant(h) != std::mem::discriminant(&header));
        self.auth_headers.push(header);
        self.invite_cseq += 1;
        let invite = match self.build_invite() {
            Ok(i) => i,
            Err(_) => return false,
        };
        // The old transaction stays to ACK retransmissions of the challenge;
        // its first ACK goes out before the new INVITE.
        self.pump();
        if let Some(old) = self.invite_tx.take() {
            let to = self.trunk();
            self.background.push(Routed { tx: old, to });
        }
        self.start_invite(invite, now);
        true
    }

    /// Sends the fallback offer in a new INVITE after a 488. False when
    /// there is none (or it went out already), or the call is ending.
    fn retry_with_fallback(&mut self, resp: &Response, now: Instant) -> bool {
        if self.hangup_requested || self.ended || self.dialog.is_some() {
            return false;
        }
        let Some(offer) = self.fallback_offer.take() else {
            return false;
        };
        let previous = std::mem::replace(&mut self.sdp_offer, offer);
        self.invite_cseq += 1;
        let invite = match self.build_invite() {
            Ok(i) => i,
            Err(_) => {
                self.sdp_offer = previous;
                self.invite_cseq -= 1;
                return false;
            }
        };
        let reason = message::response_reason(resp);
        tracing::info!(call_id = %self.cfg.call_id, code = message::status_code(resp), %reason,
            "offer refused; sending the fallback offer in a new INVITE");
        self.events.push_back(UacEvent::Reoffered {
            code: message::status_code(resp),
            reason,
        });
        // As for a challenge: the old transaction ACKs the 488 (and its
        // retransmissions) before the new INVITE goes out.
        self.pump();
        if let Some(old) = self.invite_tx.take() {
            let to = self.trunk();
            self.background.push(Routed { tx: old, to });
        }
        self.start_invite(invite, now);
        true
    }

    /// Follows a 422 (RFC 4028 7.4): the INVITE goes again asking for the
    /// trunk's `Min-SE`, with a new CSeq, as after a challenge. False when
    /// the 422 names no larger interval or too many came.
    fn retry_with_interval(&mut self, resp: &Response, now: Instant) -> bool {
        if self.hangup_requested || self.ended || self.retries_422 >= session_timer::MAX_422_RETRIES
        {
            return false;
        }
        let min_se = message::header_values(resp, "Min-SE")
            .first()
            .and_then(|v| session_timer::parse_min_se(v));
        let Some(interval) = session_timer::retry_interval(self.session_expires, min_se) else {
            return false;
        };
        let (old_se, old_min) = (self.session_expires, self.min_se);
        self.session_expires = interval;
        self.min_se = interval;
        self.invite_cseq += 1;
        let invite = match self.build_invite() {
            Ok(i) => i,
            Err(_) => {
                (self.session_expires, self.min_se) = (old_se, old_min);
                self.invite_cseq -= 1;
                return false;
            }
        };
        self.retries_422 += 1;
        tracing::info!(call_id = %self.cfg.call_id, interval_s = interval,
            "422 Session Interval Too Small: asking again with the trunk's Min-SE");
        self.pump();
        if let Some(old) = self.invite_tx.take() {
            let to = self.trunk();
            self.background.push(Routed { tx: old, to });
        }
        self.start_invite(invite, now);
        true
    }

    /// What the session timer asks for at `now`: our refresh (an UPDATE
    /// when the trunk allows it, else `RefreshDue` for a re-INVITE with the
    /// session's SDP; nothing while an offer of ours is out, whose 2xx
    /// refreshes), or `SessionExpired`.
    fn session_timer(&mut self, now: Instant) {
        let pending = self.own.offer_pending();
        let action =
            session_timer::next_action(&mut self.timer, now, pending, self.peer_allows_update);
        match action {
            None => {}
            Some(Action::Expired) => {
                tracing::warn!(call_id = %self.cfg.call_id, "session timer expired: no refresh (RFC 4028)");
                self.events.push_back(UacEvent::SessionExpired);
            }
            Some(Action::Reinvite) => self.events.push_back(UacEvent::RefreshDue),
            Some(Action::Update) => {
                let Some(to) = self.dialog.as_ref().map(|d| self.hop_of(d)) else {
                    return;
                };
                let extra = self
                    .timer
                    .as_ref()
                    .map(|t| session_timer::headers(t, Role::Uac))
                    .unwrap_or_default();
                if let Some(dialog) = self.dialog.as_mut() {
                    if let Err(e) = self.own.send_update(dialog, to, extra, now) {
                        tracing::warn!(call_id = %self.cfg.call_id, error = %e, "cannot send the UPDATE refresh");
                    }
                }
            }
        }
    }

    /// Resends a challenged BYE once with credentials (some trunks
    /// authenticate every request). False when it cannot.
    fn retry_bye_with_auth(&mut self, resp: &Response, now: Instant) -> bool {
        self.bye_auth_tried = true;
        let Some(uri) = self.bye_tx.as_ref().map(|r| r.tx.request().uri.to_string()) else {
            return false;
        };
        let Some(header) = self.own.auth().answer(resp, "BYE", &uri, false) else {
            return false;
        };
        let Some(dialog) = self.dialog.as_mut() else {
            return false;
        };
        let Ok(bye) = dialog.request_with(Method::Bye, None, vec![header]) else {
            return false;
        };
        let Some(old) = self.bye_tx.take() else {
            return false;
        };
        let to = old.to.clone();
        self.background.push(old);
        self.bye_tx = Some(Routed {
            tx: ClientTransaction::new(bye, to.transport, now),
            to,
        });
        true
    }

    /// Moves bytes queued by the transactions into our queue.
    fn pump(&mut self) {
        let trunk = self.trunk();
        while let Some(out) = self.own.poll_transmit() {
            self.transmit.push_back(out);
        }
        if let Some(tx) = self.invite_tx.as_mut() {
            while let Some(b) = tx.poll_transmit() {
                self.transmit.push_back((b, trunk.clone()));
            }
        }
        for r in self.bye_tx.iter_mut().chain(self.background.iter_mut()) {
            while let Some(b) = r.tx.poll_transmit() {
                self.transmit.push_back((b, r.to.clone()));
            }
        }
    }

    fn check_terminated(&mut self) {
        if self.terminated || !self.ended {
            return;
        }
        let busy = self.invite_tx.is_some() || self.bye_tx.is_some() || !self.background.is_empty();
        if !busy {
            self.terminated = true;
            self.cancel_deadline = None;
            tracing::debug!(call_id = %self.cfg.call_id, "call terminated");
            self.events.push_back(UacEvent::Terminated);
        }
    }
}

/// Stands in until the real INVITE is built (only when building it failed).
fn placeholder_request() -> Request {
    Request {
        method: Method::Invite,
        uri: rsip::Uri::default(),
        version: rsip::Version::V2,
        headers: Default::default(),
        body: Vec::new(),
    }
}

/// Whether a provisional response asks to be acknowledged (`Require: 100rel`).
fn requires_100rel(resp: &Response) -> bool {
    message::header_values(resp, "Require")
        .iter()
        .flat_map(|v| v.split(','))
        .any(|o| o.trim().eq_ignore_ascii_case("100rel"))
}

/// The `RSeq` of a reliable provisional.
fn rseq(resp: &Response) -> Option<u32> {
    message::header_values(resp, "RSeq")
        .first()
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::auth;
    use crate::sip::{T1, T4};
    use crate::types::Secret;
    use std::time::Duration;

    fn cfg(credentials: Option<DigestCredentials>) -> UacConfig {
        UacConfig {
            call_id: message::new_call_id(),
            request_uri: "sip:15551234@192.0.2.9:5070".into(),
            from_uri: "sip:alice@192.0.2.1".into(),
            contact: "<sip:alice@192.0.2.1:5060;transport=udp>".into(),
            via_host: "192.0.2.1".into(),
            via_port: 5060,
            transport: Transport::Udp,
            credentials,
            user_agent: "gw-test".into(),
            destination: trunk(),
            routes: vec![],
        }
    }

    /// The configured trunk address.
    fn trunk() -> SocketAddr {
        "192.0.2.9:5070".parse().unwrap()
    }

    fn creds() -> DigestCredentials {
        DigestCredentials {
            username: "gw".into(),
            password: Secret::new("s3cret".into()),
        }
    }

    /// Everything the call sent, parsed.
    fn sent(call: &mut OutgoingCall) -> Vec<SipMessage> {
        sent_to(call).into_iter().map(|(m, _)| m).collect()
    }

    /// Everything the call sent, parsed, with where it went.
    fn sent_to(call: &mut OutgoingCall) -> Vec<(SipMessage, Target)> {
        std::iter::from_fn(|| call.poll_transmit())
            .map(|(b, to)| (message::parse(&b).expect("we send valid SIP"), to))
            .collect()
    }

    fn events(call: &mut OutgoingCall) -> Vec<UacEvent> {
        std::iter::from_fn(|| call.poll_event()).collect()
    }

    fn req(msg: &SipMessage) -> &Request {
        match msg {
            SipMessage::Request(r) => r,
            SipMessage::Response(_) => panic!("expected a request, got {msg}"),
        }
    }

    fn reply(to: &Request, code: u16, sdp: Option<&str>, extra: Vec<Header>) -> SipMessage {
        message::build_response(
            to,
            code,
            ResponseParts {
                to_tag: (code > 100).then_some("trunktag"),
                contact: (code < 300).then_some("<sip:15551234@192.0.2.9:5070>"),
                body: sdp.map(|s| ("application/sdp", s)),
                extra,
                ..Default::default()
            },
        )
        .into()
    }

    /// Runs timers until `until`, returning what was sent.
    fn run_until(call: &mut OutgoingCall, until: Instant) -> Vec<SipMessage> {
        let mut out = vec![];
        while let Some(at) = call.poll_timeout() {
            if at > until {
                break;
            }
            call.handle_timeout(at);
            out.extend(sent(call));
        }
        out
    }

    fn start(credentials: Option<DigestCredentials>) -> (OutgoingCall, Request, Instant) {
        let t0 = Instant::now();
        let mut call = OutgoingCall::new(cfg(credentials), "v=0\r\n".into(), t0);
        let out = sent(&mut call);
        assert_eq!(out.len(), 1);
        let invite = req(&out[0]).clone();
        assert_eq!(invite.method, Method::Invite);
        (call, invite, t0)
    }

    #[test]
    fn happy_path_with_bye() {
        let (mut call, invite, t0) = start(None);
        assert_eq!(message::sdp_body(&invite).as_deref(), Some("v=0\r\n"));
        assert_eq!(invite.uri.to_string(), "sip:15551234@192.0.2.9:5070");
        assert!(message::header_values(&invite, "User-Agent").contains(&"gw-test".to_string()));
        let t = t0 + Duration::from_millis(100);
        call.handle_message(reply(&invite, 100, None, vec![]), t);
        call.handle_message(reply(&invite, 100, None, vec![]), t);
        call.handle_message(reply(&invite, 180, None, vec![]), t);
        call.handle_message(reply(&invite, 183, Some("v=0 early\r\n"), vec![]), t);
        assert_eq!(
            events(&mut call),
            vec![
                UacEvent::Provisional {
                    code: 100,
                    sdp: None
                },
                UacEvent::Provisional {
                    code: 180,
                    sdp: None
                },
                UacEvent::Provisional {
                    code: 183,
                    sdp: Some("v=0 early\r\n".into())
                },
            ]
        );
        assert!(sent(&mut call).is_empty());
        let ok = reply(&invite, 200, Some("v=0 answer\r\n"), vec![]);
        call.handle_message(ok.clone(), t);
        assert_eq!(
            events(&mut call),
            vec![UacEvent::Answered {
                sdp: Some("v=0 answer\r\n".into())
            }]
        );
        let out = sent(&mut call);
        assert_eq!(out.len(), 1);
        let ack = req(&out[0]);
        assert_eq!(ack.method, Method::Ack);
        assert_eq!(ack.uri.to_string(), "sip:15551234@192.0.2.9:5070");
        assert_eq!(message::cseq(ack).unwrap(), (1, Method::Ack));
        assert_eq!(message::to_tag(ack).as_deref(), Some("trunktag"));
        // A retransmitted 200 gets the same ACK again.
        call.handle_message(ok, t + Duration::from_millis(500));
        let again = sent(&mut call);
        assert_eq!(again, out);
        assert_eq!(call.poll_timeout(), None, "nothing pending while connected");

        call.hangup(t + Duration::from_secs(10));
        let out = sent(&mut call);
        let bye = req(&out[0]).clone();
        assert_eq!(bye.method, Method::Bye);
        assert_eq!(message::cseq(&bye).unwrap(), (2, Method::Bye));
        call.handle_message(reply(&bye, 200, None, vec![]), t + Duration::from_secs(11));
        assert!(events(&mut call).is_empty(), "Terminated waits for Timer K");
        let end = t + Duration::from_secs(11) + T4;
        run_until(&mut call, end);
        assert_eq!(events(&mut call), vec![UacEvent::Terminated]);
        assert!(call.is_finished());
        assert_eq!(call.poll_timeout(), None);
    }

    #[test]
    fn reliable_provisionals_are_pracked_once_each_in_order() {
        let (mut call, invite, t0) = start(None);
        let supported = message::header_values(&invite, "Supported");
        assert!(
            supported.iter().any(|v| v.contains("100rel")),
            "{supported:?}"
        );
        let reliable = |rseq: u32, sdp: Option<&str>| {
            reply(
                &invite,
                183,
                sdp,
                vec![
                    Header::Other("Require".into(), "100rel".into()),
                    Header::Other("RSeq".into(), rseq.to_string()),
                    Header::RecordRoute("<sip:192.0.2.50:5060;lr>".into()),
                ],
            )
        };
        let t = t0 + Duration::from_millis(100);
        call.handle_message(reliable(7, Some("v=0 early\r\n")), t);
        assert_eq!(
            events(&mut call),
            vec![UacEvent::Provisional {
                code: 183,
                sdp: Some("v=0 early\r\n".into())
            }]
        );
        let out = sent_to(&mut call);
        assert_eq!(out.len(), 1, "one PRACK");
        let prack = req(&out[0].0).clone();
        assert_eq!(prack.method, Method::PRack);
        // In the early dialog: the 183's Contact, through its Record-Route.
        assert_eq!(prack.uri.to_string(), "sip:15551234@192.0.2.9:5070");
        assert_eq!(
            out[0].1.socket_addr(),
            Some("192.0.2.50:5060".parse().unwrap())
        );
        assert_eq!(message::to_tag(&prack).as_deref(), Some("trunktag"));
        assert_eq!(
            message::header_values(&prack, "RAck"),
            vec!["7 1 INVITE".to_string()]
        );
        assert_eq!(message::cseq(&prack).unwrap(), (2, Method::PRack));
        // Its retransmission is neither reported nor PRACKed again (the
        // PRACK transaction retransmits itself); a skipped RSeq is dropped.
        call.handle_message(reliable(7, Some("v=0 early\r\n")), t);
        call.handle_message(reliable(9, None), t);
        assert!(events(&mut call).is_empty());
        assert!(sent(&mut call).is_empty());
        call.handle_message(reliable(8, None), t);
        assert_eq!(events(&mut call).len(), 1);
        let prack2 = sent(&mut call);
        assert_eq!(message::cseq(req(&prack2[0])).unwrap(), (3, Method::PRack));
        call.handle_message(reply(req(&prack2[0]), 200, None, vec![]), t);
        // The confirmed dialog's BYE comes after the PRACKs' CSeqs.
        call.handle_message(reply(&invite, 200, Some("v=0 answer\r\n"), vec![]), t);
        let _ = events(&mut call);
        let _ = sent(&mut call);
        call.hangup(t + Duration::from_secs(1));
        let bye = sent(&mut call);
        assert_eq!(message::cseq(req(&bye[0])).unwrap(), (4, Method::Bye));
    }

    #[test]
    fn proxy_auth_407_then_200() {
        let (mut call, invite, t0) = start(Some(creds()));
        let challenge = Header::ProxyAuthenticate(
            "Digest realm=\"trunk\", nonce=\"abc123\", qop=\"auth\", algorithm=MD5".into(),
        );
        call.handle_message(reply(&invite, 407, None, vec![challenge]), t0);
        let out = sent(&mut call);
        assert_eq!(out.len(), 2, "ACK for the 407 and the new INVITE");
        let ack = req(&out[0]);
        assert_eq!(ack.method, Method::Ack);
        assert_eq!(
            message::top_via_branch(ack),
            message::top_via_branch(&invite)
        );
        let invite2 = req(&out[1]).clone();
        assert_eq!(invite2.method, Method::Invite);
        assert_eq!(message::cseq(&invite2).unwrap(), (2, Method::Invite));
        assert_ne!(
            message::top_via_branch(&invite2),
            message::top_via_branch(&invite)
        );
        assert_eq!(
            message::call_id(&invite2).unwrap(),
            message::call_id(&invite).unwrap()
        );
        assert_eq!(message::from_tag(&invite2), message::from_tag(&invite));
        assert!(events(&mut call).is_empty());

        let auth = message::header_values(&invite2, "Proxy-Authorization");
        assert_eq!(auth.len(), 1);
        let value = &auth[0];
        let get = |k: &str| {
            let start = value.find(&format!("{k}=")).unwrap() + k.len() + 1;
            let rest = &value[start..];
            let rest = rest.strip_prefix('"').unwrap_or(rest);
            rest.split(['"', ',']).next().unwrap().to_string()
        };
        assert_eq!(get("username"), "gw");
        assert_eq!(get("realm"), "trunk");
        assert_eq!(get("nonce"), "abc123");
        assert_eq!(get("uri"), "sip:15551234@192.0.2.9:5070");
        assert_eq!(get("nc"), "00000001");
        let ch = auth::Challenge::parse(
            "Digest realm=\"trunk\", nonce=\"abc123\", qop=\"auth\", algorithm=MD5",
        )
        .unwrap();
        let expected = auth::authorization(
            &creds(),
            &ch,
            "INVITE",
            "sip:15551234@192.0.2.9:5070",
            1,
            &get("cnonce"),
        )
        .unwrap();
        assert_eq!(value, &expected);
        assert!(!value.contains("s3cret"));

        call.handle_message(reply(&invite2, 200, Some("v=0\r\n"), vec![]), t0);
        assert_eq!(
            events(&mut call),
            vec![UacEvent::Answered {
                sdp: Some("v=0\r\n".into())
            }]
        );
        let out = sent(&mut call);
        assert_eq!(req(&out[0]).method, Method::Ack);
        assert_eq!(message::cseq(req(&out[0])).unwrap(), (2, Method::Ack));
        // RFC 3261 22.1: the ACK for the 2xx repeats the INVITE's credentials.
        assert_eq!(
            message::header_values(req(&out[0]), "Proxy-Authorization"),
            auth
        );
    }

    #[test]
    fn challenged_bye_is_resent_once_with_credentials() {
        let (mut call, invite, t0) = start(Some(creds()));
        call.handle_message(reply(&invite, 200, None, vec![]), t0);
        sent(&mut call);
        events(&mut call);
        call.hangup(t0);
        let bye = req(&sent(&mut call)[0]).clone();
        let ch = Header::ProxyAuthenticate("Digest realm=\"r\", nonce=\"b1\", qop=\"auth\"".into());
        call.handle_message(reply(&bye, 407, None, vec![ch.clone()]), t0);
        let out = sent(&mut call);
        assert_eq!(out.len(), 1);
        let bye2 = req(&out[0]).clone();
        assert_eq!(bye2.method, Method::Bye);
        assert_eq!(message::cseq(&bye2).unwrap(), (3, Method::Bye));
        assert!(message::header_values(&bye2, "Proxy-Authorization")[0].contains("nonce=\"b1\""));
        // A second challenge ends the call anyway.
        call.handle_message(reply(&bye2, 407, None, vec![ch]), t0);
        run_until(&mut call, t0 + Duration::from_secs(10));
        assert_eq!(events(&mut call), vec![UacEvent::Terminated]);
    }

    #[test]
    fn www_auth_401_sha256_and_second_challenge_same_nonce_is_rejected() {
        let (mut call, invite, t0) = start(Some(creds()));
        let ch = "Digest realm=\"r\", nonce=\"n1\", qop=\"auth\", algorithm=SHA-256";
        call.handle_message(
            reply(&invite, 401, None, vec![Header::WwwAuthenticate(ch.into())]),
            t0,
        );
        let out = sent(&mut call);
        let invite2 = req(&out[1]).clone();
        let auth = message::header_values(&invite2, "Authorization");
        assert!(auth[0].contains("algorithm=SHA-256"));
        let response = auth[0].split("response=\"").nth(1).unwrap();
        assert_eq!(
            response.split('"').next().unwrap().len(),
            64,
            "SHA-256 hex digest"
        );
        // The same nonce again, not stale: the credentials are wrong.
        call.handle_message(
            reply(
                &invite2,
                401,
                None,
                vec![Header::WwwAuthenticate(ch.into())],
            ),
            t0,
        );
        let out = sent(&mut call);
        assert_eq!(out.len(), 1);
        assert_eq!(req(&out[0]).method, Method::Ack);
        assert_eq!(
            events(&mut call),
            vec![UacEvent::Rejected {
                code: 401,
                reason: "Unauthorized".into()
            }]
        );
        run_until(&mut call, t0 + Duration::from_secs(60));
        assert_eq!(events(&mut call), vec![UacEvent::Terminated]);
    }

    #[test]
    fn challenge_without_credentials_is_rejected() {
        let (mut call, invite, t0) = start(None);
        let ch = Header::WwwAuthenticate("Digest realm=\"r\", nonce=\"n1\"".into());
        call.handle_message(reply(&invite, 401, None, vec![ch]), t0);
        assert!(matches!(
            events(&mut call)[..],
            [UacEvent::Rejected { code: 401, .. }]
        ));
    }

    #[test]
    fn busy_is_rejected_acked_and_terminated_after_timer_d() {
        let (mut call, invite, t0) = start(None);
        let busy = reply(&invite, 486, None, vec![]);
        call.handle_message(busy.clone(), t0 + Duration::from_secs(1));
        assert_eq!(
            events(&mut call),
            vec![UacEvent::Rejected {
                code: 486,
                reason: "Busy Here".into()
            }]
        );
        assert_eq!(req(&sent(&mut call)[0]).method, Method::Ack);
        call.handle_message(busy, t0 + Duration::from_secs(2));
        assert_eq!(
            req(&sent(&mut call)[0]).method,
            Method::Ack,
            "retransmitted 486 re-ACKed"
        );
        assert_eq!(call.poll_timeout(), Some(t0 + Duration::from_secs(33)));
        run_until(&mut call, t0 + Duration::from_secs(33));
        assert_eq!(events(&mut call), vec![UacEvent::Terminated]);
    }

    #[test]
    fn a_488_sends_the_fallback_offer_in_a_new_invite_once() {
        let (mut call, invite, t0) = start(None);
        call.set_fallback_offer("v=0 plain\r\n".into());
        call.handle_message(reply(&invite, 180, None, vec![]), t0);
        events(&mut call);
        let t1 = t0 + Duration::from_secs(1);
        let refused = reply(&invite, 488, None, vec![]);
        call.handle_message(refused.clone(), t1);
        let out = sent(&mut call);
        assert_eq!(out.len(), 2, "ACK for the 488, then the new INVITE");
        let ack = req(&out[0]);
        assert_eq!(ack.method, Method::Ack);
        assert_eq!(message::cseq(ack).unwrap(), (1, Method::Ack));
        let invite2 = req(&out[1]).clone();
        assert_eq!(invite2.method, Method::Invite);
        // RFC 3261 8.1.3.5: same Call-ID, From (tag) and To, CSeq + 1; a new
        // transaction (branch).
        assert_eq!(message::cseq(&invite2).unwrap(), (2, Method::Invite));
        assert_eq!(
            message::call_id(&invite2).unwrap(),
            message::call_id(&invite).unwrap()
        );
        assert_eq!(message::from_tag(&invite2), message::from_tag(&invite));
        assert_eq!(message::to_tag(&invite2), None);
        assert_ne!(
            message::top_via_branch(&invite2),
            message::top_via_branch(&invite)
        );
        assert_eq!(
            message::sdp_body(&invite2).as_deref(),
            Some("v=0 plain\r\n")
        );
        assert_eq!(
            events(&mut call),
            vec![UacEvent::Reoffered {
                code: 488,
                reason: "Not Acceptable Here".into()
            }]
        );
        // A retransmitted 488 is ACKed again by the old transaction only.
        call.handle_message(refused, t1 + Duration::from_millis(500));
        let out = sent(&mut call);
        assert_eq!(out.len(), 1);
        assert_eq!(req(&out[0]).method, Method::Ack);
        assert!(events(&mut call).is_empty());

        call.handle_message(reply(&invite2, 200, Some("v=0 answer\r\n"), vec![]), t1);
        assert_eq!(
            events(&mut call),
            vec![UacEvent::Answered {
                sdp: Some("v=0 answer\r\n".into())
            }]
        );
        let out = sent(&mut call);
        assert_eq!(message::cseq(req(&out[0])).unwrap(), (2, Method::Ack));
        // Hanging up CANCELs or BYEs the new INVITE's dialog.
        call.hangup(t1 + Duration::from_secs(5));
        let bye = req(&sent(&mut call)[0]).clone();
        assert_eq!(bye.method, Method::Bye);
        assert_eq!(message::cseq(&bye).unwrap(), (3, Method::Bye));
    }

    #[test]
    fn a_second_488_is_the_outcome() {
        let (mut call, invite, t0) = start(None);
        call.set_fallback_offer("v=0 plain\r\n".into());
        call.handle_message(reply(&invite, 488, None, vec![]), t0);
        let invite2 = req(&sent(&mut call)[1]).clone();
        events(&mut call);
        call.handle_message(reply(&invite2, 488, None, vec![]), t0);
        assert_eq!(
            events(&mut call),
            vec![UacEvent::Rejected {
                code: 488,
                reason: "Not Acceptable Here".into()
            }]
        );
        run_until(&mut call, t0 + Duration::from_secs(40));
        assert_eq!(events(&mut call), vec![UacEvent::Terminated]);
    }

    #[test]
    fn without_a_fallback_a_488_is_rejected_and_other_codes_never_reoffer() {
        let (mut call, invite, t0) = start(None);
        call.handle_message(reply(&invite, 488, None, vec![]), t0);
        assert!(matches!(
            events(&mut call)[..],
            [UacEvent::Rejected { code: 488, .. }]
        ));
        let (mut call, invite, t0) = start(None);
        call.set_fallback_offer("v=0 plain\r\n".into());
        call.handle_message(reply(&invite, 486, None, vec![]), t0);
        assert!(matches!(
            events(&mut call)[..],
            [UacEvent::Rejected { code: 486, .. }]
        ));
        assert_eq!(sent(&mut call).len(), 1, "only the ACK");
    }

    #[test]
    fn timer_b_rejects_with_408_after_retransmissions() {
        let (mut call, _invite, t0) = start(None);
        let out = run_until(&mut call, t0 + Duration::from_secs(40));
        assert_eq!(out.len(), 6, "Timer A retransmissions");
        assert_eq!(
            events(&mut call),
            vec![
                UacEvent::Rejected {
                    code: 408,
                    reason: "Request Timeout".into()
                },
                UacEvent::Terminated
            ]
        );
    }

    #[test]
    fn invite_retransmission_stops_after_100() {
        let (mut call, invite, t0) = start(None);
        call.handle_timeout(t0 + T1);
        assert_eq!(sent(&mut call).len(), 1);
        call.handle_message(
            reply(&invite, 100, None, vec![]),
            t0 + Duration::from_millis(700),
        );
        assert_eq!(call.poll_timeout(), None);
        assert!(run_until(&mut call, t0 + Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn cancel_before_answer() {
        let (mut call, invite, t0) = start(None);
        call.handle_message(reply(&invite, 180, None, vec![]), t0);
        events(&mut call);
        let t = t0 + Duration::from_secs(3);
        call.hangup(t);
        let out = sent(&mut call);
        assert_eq!(out.len(), 1);
        let cancel = req(&out[0]).clone();
        assert_eq!(cancel.method, Method::Cancel);
        assert_eq!(message::cseq(&cancel).unwrap(), (1, Method::Cancel));
        assert_eq!(
            message::top_via_branch(&cancel),
            message::top_via_branch(&invite)
        );
        assert_eq!(cancel.uri, invite.uri);
        call.handle_message(reply(&cancel, 200, None, vec![]), t);
        call.handle_message(reply(&invite, 487, None, vec![]), t);
        let out = sent(&mut call);
        assert_eq!(out.len(), 1);
        let ack = req(&out[0]);
        assert_eq!(ack.method, Method::Ack);
        assert_eq!(message::cseq(ack).unwrap(), (1, Method::Ack));
        assert!(
            events(&mut call).is_empty(),
            "no Rejected for our own CANCEL"
        );
        run_until(&mut call, t + Duration::from_secs(40));
        assert_eq!(events(&mut call), vec![UacEvent::Terminated]);
    }

    #[test]
    fn hangup_before_any_provisional_cancels_when_one_arrives() {
        let (mut call, invite, t0) = start(None);
        call.hangup(t0 + Duration::from_millis(10));
        assert!(
            sent(&mut call).is_empty(),
            "no CANCEL before a provisional (RFC 3261 9.1)"
        );
        call.handle_message(
            reply(&invite, 100, None, vec![]),
            t0 + Duration::from_millis(20),
        );
        let out = sent(&mut call);
        assert_eq!(req(&out[0]).method, Method::Cancel);
        assert!(events(&mut call).is_empty());
        // The trunk answers anyway: ACK then BYE.
        call.handle_message(
            reply(&invite, 200, Some("v=0\r\n"), vec![]),
            t0 + Duration::from_millis(30),
        );
        let out = sent(&mut call);
        let methods: Vec<Method> = out.iter().map(|m| req(m).method).collect();
        assert_eq!(methods, vec![Method::Ack, Method::Bye]);
        assert!(events(&mut call).is_empty(), "no Answered after hangup");
        let bye = req(&out[1]).clone();
        let t1 = t0 + Duration::from_secs(1);
        call.handle_message(reply(&bye, 200, None, vec![]), t1);
        run_until(&mut call, t1 + Duration::from_secs(40));
        assert_eq!(events(&mut call), vec![UacEvent::Terminated]);
    }

    #[test]
    fn hangup_with_silent_trunk_terminates_on_timer_b() {
        let (mut call, _invite, t0) = start(None);
        call.hangup(t0);
        run_until(&mut call, t0 + Duration::from_secs(40));
        assert_eq!(events(&mut call), vec![UacEvent::Terminated]);
    }

    #[test]
    fn cancel_ignored_by_trunk_gives_up_after_64_t1() {
        let (mut call, invite, t0) = start(None);
        call.handle_message(reply(&invite, 180, None, vec![]), t0);
        events(&mut call);
        call.hangup(t0 + Duration::from_secs(1));
        sent(&mut call);
        run_until(&mut call, t0 + Duration::from_secs(1) + 64 * T1);
        assert_eq!(events(&mut call), vec![UacEvent::Terminated]);
    }

    #[test]
    fn remote_bye_is_answered_and_reported() {
        let (mut call, invite, t0) = start(None);
        call.handle_message(reply(&invite, 200, Some("v=0\r\n"), vec![]), t0);
        events(&mut call);
        sent(&mut call);
        // The trunk's side of the dialog writes its BYE.
        let SipMessage::Response(ok) = reply(&invite, 200, None, vec![]) else {
            unreachable!()
        };
        let theirs_local = LocalEndpoint {
            via_host: "192.0.2.9".into(),
            via_port: 5070,
            transport: Transport::Udp,
            contact: "<sip:15551234@192.0.2.9:5070>".into(),
            user_agent: "trunk".into(),
        };
        let mut theirs =
            Dialog::uas(&invite, &message::to_tag(&ok).unwrap(), theirs_local).unwrap();
        let bye = theirs.bye().unwrap();
        call.handle_message(bye.into(), t0 + Duration::from_secs(5));
        let out = sent(&mut call);
        assert_eq!(out.len(), 1);
        let SipMessage::Response(r) = &out[0] else {
            panic!()
        };
        assert_eq!(r.status_code.code(), 200);
        assert_eq!(message::cseq(r).unwrap().1, Method::Bye);
        assert_eq!(
            events(&mut call),
            vec![UacEvent::RemoteHangup, UacEvent::Terminated]
        );
        call.hangup(t0 + Duration::from_secs(6));
        assert!(sent(&mut call).is_empty());
    }

    #[test]
    fn unknown_in_dialog_request_gets_481() {
        let (mut call, invite, t0) = start(None);
        let mut bye = invite.clone();
        bye.method = Method::Bye;
        bye.headers.retain(|h| !matches!(h, Header::CSeq(_)));
        bye.headers.push(Header::CSeq("5 BYE".into()));
        call.handle_message(bye.into(), t0);
        let out = sent(&mut call);
        let SipMessage::Response(r) = &out[0] else {
            panic!()
        };
        assert_eq!(r.status_code.code(), 481);
    }

    #[test]
    fn bad_request_uri_is_an_immediate_rejection() {
        let mut c = cfg(None);
        c.request_uri = "".into();
        let mut call = OutgoingCall::new(c, String::new(), Instant::now());
        assert!(matches!(
            events(&mut call)[..],
            [UacEvent::Rejected { code: 400, .. }, UacEvent::Terminated]
        ));
        assert!(call.poll_transmit().is_none());
    }

    /// A 2xx whose Contact and Record-Route (one header, proxies' order)
    /// are given.
    fn answer_via(invite: &Request, tag: &str, contact: &str, rr: Option<&str>) -> SipMessage {
        message::build_response(
            invite,
            200,
            ResponseParts {
                to_tag: Some(tag),
                contact: Some(contact),
                body: Some(("application/sdp", "v=0\r\n")),
                extra: rr
                    .map(|r| Header::RecordRoute(r.into()))
                    .into_iter()
                    .collect(),
                ..Default::default()
            },
        )
        .into()
    }

    fn at(addr: &str) -> Target {
        Target::addr(addr.parse().unwrap(), Transport::Udp)
    }

    #[test]
    fn ack_and_bye_go_along_the_record_route_to_the_contact() {
        let (mut call, invite, t0) = start(None);
        let ok = answer_via(
            &invite,
            "trunktag",
            "<sip:x@192.0.2.7:5099>",
            Some("<sip:192.0.2.8:5070;lr>,<sip:192.0.2.9;lr>"),
        );
        call.handle_message(ok.clone(), t0);
        let out = sent_to(&mut call);
        assert_eq!(out.len(), 1);
        let (ack, to) = (req(&out[0].0), &out[0].1);
        assert_eq!(ack.method, Method::Ack);
        // Reversed by the UAC (12.1.2): 192.0.2.9 is the first hop.
        assert_eq!(*to, at("192.0.2.9:5060"));
        assert_eq!(ack.uri.to_string(), "sip:x@192.0.2.7:5099");
        let routes = vec!["<sip:192.0.2.9;lr>", "<sip:192.0.2.8:5070;lr>"];
        assert_eq!(message::header_values(ack, "Route"), routes);
        // A retransmitted 2xx: the same ACK, the same way.
        call.handle_message(ok, t0 + Duration::from_millis(500));
        assert_eq!(sent_to(&mut call)[0].1, at("192.0.2.9:5060"));

        call.hangup(t0 + Duration::from_secs(3));
        let out = sent_to(&mut call);
        let (bye, to) = (req(&out[0].0).clone(), out[0].1.clone());
        assert_eq!(bye.method, Method::Bye);
        assert_eq!(to, at("192.0.2.9:5060"));
        assert_eq!(bye.uri.to_string(), "sip:x@192.0.2.7:5099");
        assert_eq!(message::header_values(&bye, "Route"), routes);
        call.handle_message(reply(&bye, 200, None, vec![]), t0 + Duration::from_secs(4));
        run_until(&mut call, t0 + Duration::from_secs(20));
        assert!(events(&mut call).contains(&UacEvent::Terminated));
    }

    #[test]
    fn retransmitted_bye_goes_where_the_first_went() {
        let (mut call, invite, t0) = start(None);
        call.handle_message(answer_via(&invite, "t", "<sip:x@192.0.2.7:5099>", None), t0);
        sent(&mut call);
        call.hangup(t0);
        assert_eq!(sent_to(&mut call)[0].1, at("192.0.2.7:5099"));
        call.handle_timeout(t0 + T1);
        let again = sent_to(&mut call);
        assert_eq!(req(&again[0].0).method, Method::Bye);
        assert_eq!(
            again[0].1,
            at("192.0.2.7:5099"),
            "without Record-Route: the Contact"
        );
    }

    #[test]
    fn a_strict_router_gets_the_requests() {
        let (mut call, invite, t0) = start(None);
        call.handle_message(
            answer_via(
                &invite,
                "t",
                "<sip:x@192.0.2.7:5099>",
                Some("<sip:192.0.2.9:5062>"),
            ),
            t0,
        );
        let out = sent_to(&mut call);
        let ack = req(&out[0].0);
        assert_eq!(out[0].1, at("192.0.2.9:5062"));
        assert_eq!(ack.uri.to_string(), "sip:192.0.2.9:5062");
        assert_eq!(
            message::header_values(ack, "Route"),
            vec!["<sip:x@192.0.2.7:5099>"]
        );
    }

    #[test]
    fn cancel_and_the_ack_of_its_487_go_where_the_invite_went() {
        let (mut call, invite, t0) = start(None);
        // The 180 names another Contact: irrelevant to the INVITE's transaction.
        call.handle_message(reply(&invite, 180, None, vec![]), t0);
        events(&mut call);
        call.hangup(t0 + Duration::from_secs(1));
        let out = sent_to(&mut call);
        assert_eq!(req(&out[0].0).method, Method::Cancel);
        assert_eq!(out[0].1, Target::addr(trunk(), Transport::Udp));
        call.handle_message(
            reply(&invite, 487, None, vec![]),
            t0 + Duration::from_secs(1),
        );
        let out = sent_to(&mut call);
        assert_eq!(req(&out[0].0).method, Method::Ack);
        assert_eq!(out[0].1, Target::addr(trunk(), Transport::Udp));
    }

    #[test]
    fn a_fork_is_acked_and_ended_at_its_own_contact() {
        let (mut call, invite, t0) = start(None);
        call.handle_message(answer_via(&invite, "a", "<sip:a@192.0.2.7:5099>", None), t0);
        sent(&mut call);
        // A second 2xx with another tag: another dialog, ended at once.
        call.handle_message(
            answer_via(&invite, "b", "<sip:b@192.0.2.77:5098>", None),
            t0,
        );
        let out = sent_to(&mut call);
        let kinds: Vec<(Method, Target)> = out
            .iter()
            .map(|(m, to)| (req(m).method, to.clone()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (Method::Ack, at("192.0.2.77:5098")),
                (Method::Bye, at("192.0.2.77:5098"))
            ]
        );
    }

    /// The trunk's side of the dialog the 2xx `ok` made, to write its requests.
    fn trunk_side(invite: &Request, ok: &SipMessage) -> Dialog {
        let SipMessage::Response(ok) = ok else {
            unreachable!()
        };
        let local = LocalEndpoint {
            via_host: "192.0.2.7".into(),
            via_port: 5099,
            transport: Transport::Udp,
            contact: "<sip:x@192.0.2.7:5099>".into(),
            user_agent: "trunk".into(),
        };
        Dialog::uas(invite, &message::to_tag(ok).unwrap(), local).unwrap()
    }

    fn status(msg: &SipMessage) -> u16 {
        match msg {
            SipMessage::Response(r) => r.status_code.code(),
            SipMessage::Request(r) => panic!("expected a response, got {}", r.method),
        }
    }

    #[test]
    fn trunk_requests_need_the_tags_and_a_rising_cseq() {
        let (mut call, invite, t0) = start(None);
        let ok = answer_via(&invite, "trunktag", "<sip:x@192.0.2.7:5099>", None);
        call.handle_message(ok.clone(), t0);
        sent(&mut call);
        events(&mut call);
        let mut theirs = trunk_side(&invite, &ok);
        let options = theirs.request(Method::Options, None).unwrap();
        call.handle_message(options.clone().into(), t0);
        assert_eq!(status(&sent(&mut call)[0]), 200);

        // Wrong tag: no such dialog.
        let mut forged = theirs.bye().unwrap();
        forged.headers.retain(|h| !matches!(h, Header::From(_)));
        forged
            .headers
            .push(Header::From("<sip:15551234@192.0.2.9>;tag=guess".into()));
        call.handle_message(forged.into(), t0);
        assert_eq!(status(&sent(&mut call)[0]), 481);

        // An older CSeq than the OPTIONS (not its retransmission): 500.
        let mut stale = theirs.bye().unwrap();
        stale.headers.retain(|h| !matches!(h, Header::CSeq(_)));
        stale.headers.push(Header::CSeq("1 BYE".into()));
        call.handle_message(stale.into(), t0);
        assert_eq!(status(&sent(&mut call)[0]), 500);
        assert!(events(&mut call).is_empty(), "the call goes on");

        // The OPTIONS again (a retransmission): its answer again.
        call.handle_message(options.into(), t0);
        assert_eq!(status(&sent(&mut call)[0]), 200);

        let bye = theirs.bye().unwrap();
        call.handle_message(bye.clone().into(), t0);
        assert_eq!(status(&sent(&mut call)[0]), 200);
        assert_eq!(
            events(&mut call),
            vec![UacEvent::RemoteHangup, UacEvent::Terminated]
        );
    }

    // ---- session timers (RFC 4028) ----------------------------------------

    fn hdr(name: &str, value: &str) -> Header {
        Header::Other(name.into(), value.into())
    }

    /// The call answered with these 2xx headers; its ACK drained.
    fn answered_with(extra: Vec<Header>) -> (OutgoingCall, Request, Instant) {
        let (mut call, invite, t0) = start(None);
        call.handle_message(reply(&invite, 200, Some("v=0\r\n"), extra), t0);
        assert_eq!(req(&sent(&mut call)[0]).method, Method::Ack);
        events(&mut call);
        (call, invite, t0)
    }

    #[test]
    fn our_invite_offers_timers_and_follows_a_422_once_per_min_se() {
        let (mut call, invite, t0) = start(None);
        assert_eq!(
            message::header_values(&invite, "Supported"),
            ["100rel, timer"]
        );
        assert_eq!(message::header_values(&invite, "Session-Expires"), ["1800"]);
        assert_eq!(message::header_values(&invite, "Min-SE"), ["90"]);
        call.handle_message(reply(&invite, 422, None, vec![hdr("Min-SE", "3600")]), t0);
        let out = sent(&mut call);
        let methods: Vec<Method> = out.iter().map(|m| req(m).method).collect();
        assert_eq!(
            methods,
            [Method::Ack, Method::Invite],
            "the 422 ACKed, then again"
        );
        let again = req(&out[1]).clone();
        assert_eq!(message::header_values(&again, "Session-Expires"), ["3600"]);
        assert_eq!(message::header_values(&again, "Min-SE"), ["3600"]);
        assert_eq!(message::cseq(&again).unwrap().0, 2);
        assert_eq!(
            message::call_id(&again).unwrap(),
            message::call_id(&invite).unwrap()
        );
        assert!(events(&mut call).is_empty(), "no outcome yet");
        // A 422 that asks for nothing more is the outcome.
        call.handle_message(reply(&again, 422, None, vec![hdr("Min-SE", "3600")]), t0);
        assert!(matches!(
            events(&mut call)[..],
            [UacEvent::Rejected { code: 422, .. }]
        ));
    }

    #[test]
    fn we_refresh_with_update_at_half_the_interval() {
        let (mut call, _, t0) = answered_with(vec![
            hdr("Session-Expires", "90;refresher=uac"),
            Header::Allow("INVITE, ACK, BYE, UPDATE".into()),
        ]);
        assert_eq!(call.poll_timeout(), Some(t0 + Duration::from_secs(45)));
        call.handle_timeout(t0 + Duration::from_secs(44));
        assert!(sent(&mut call).is_empty());
        let t1 = t0 + Duration::from_secs(45);
        call.handle_timeout(t1);
        let out = sent(&mut call);
        let update = req(&out[0]).clone();
        assert_eq!(update.method, Method::Update);
        assert!(update.body.is_empty());
        assert_eq!(
            message::header_values(&update, "Session-Expires"),
            ["90;refresher=uac"]
        );
        call.handle_message(
            reply(
                &update,
                200,
                None,
                vec![hdr("Session-Expires", "90;refresher=uac")],
            ),
            t1,
        );
        assert!(
            events(&mut call).is_empty(),
            "a refresh is the UAC's business"
        );
        // Refreshed at 45 s: the next refresh at 90 s, nothing expires.
        call.handle_timeout(t0 + Duration::from_secs(89));
        assert!(sent(&mut call).is_empty());
        assert!(events(&mut call).is_empty());
        call.handle_timeout(t0 + Duration::from_secs(90));
        assert_eq!(req(&sent(&mut call)[0]).method, Method::Update);
    }

    #[test]
    fn without_update_the_refresh_is_a_reinvite_the_b2bua_writes() {
        let (mut call, _, t0) = answered_with(vec![hdr("Session-Expires", "120")]);
        let t1 = t0 + Duration::from_secs(60);
        call.handle_timeout(t1);
        assert!(sent(&mut call).is_empty());
        assert_eq!(events(&mut call), [UacEvent::RefreshDue]);
        call.reoffer("v=0\r\nsame\r\n".into(), t1).unwrap();
        let reinvite = req(&sent(&mut call)[0]).clone();
        assert_eq!(reinvite.method, Method::Invite);
        assert_eq!(
            message::header_values(&reinvite, "Session-Expires"),
            ["120;refresher=uac"]
        );
        call.handle_message(reply(&reinvite, 200, Some("v=0\r\n"), vec![]), t1);
        assert_eq!(req(&sent(&mut call)[0]).method, Method::Ack);
        assert!(matches!(
            events(&mut call)[..],
            [UacEvent::Own(OwnEvent::Answered { .. })]
        ));
        assert_eq!(call.poll_timeout(), Some(t1 + Duration::from_secs(60)));
    }

    #[test]
    fn when_the_trunk_refreshes_its_silence_expires_the_session() {
        let (mut call, invite, t0) =
            answered_with(vec![hdr("Session-Expires", "90;refresher=uas")]);
        // The trunk's UPDATE at 50 s refreshes: our 200 names the interval
        // and the trunk (the UAC of the UPDATE) as refresher.
        let mut trunk = Dialog::uas(
            &invite,
            "trunktag",
            LocalEndpoint {
                via_host: "192.0.2.9".into(),
                via_port: 5070,
                transport: Transport::Udp,
                contact: "<sip:15551234@192.0.2.9:5070>".into(),
                user_agent: "trunk".into(),
            },
        )
        .unwrap();
        let t1 = t0 + Duration::from_secs(50);
        let update = trunk
            .request_with(
                Method::Update,
                None,
                vec![hdr("Session-Expires", "90;refresher=uac")],
            )
            .unwrap();
        call.handle_message(update.into(), t1);
        assert_eq!(
            events(&mut call),
            [UacEvent::Renegotiation(RenegotiationEvent::Offer {
                update: true,
                sdp: None
            })]
        );
        call.answer_offer(OfferAnswer::Empty, t1);
        let ok = sent(&mut call).remove(0);
        let SipMessage::Response(ok) = ok else {
            panic!("a response")
        };
        assert_eq!(ok.status_code.code(), 200);
        assert_eq!(
            message::header_values(&ok, "Session-Expires"),
            ["90;refresher=uac"]
        );
        // Expiry: 50 + 90 - 30 = 110 s.
        assert_eq!(call.poll_timeout(), Some(t0 + Duration::from_secs(110)));
        call.handle_timeout(t0 + Duration::from_secs(109));
        assert!(events(&mut call).is_empty());
        call.handle_timeout(t0 + Duration::from_secs(110));
        assert_eq!(events(&mut call), [UacEvent::SessionExpired]);
        call.hangup(t0 + Duration::from_secs(110));
        assert_eq!(req(&sent(&mut call)[0]).method, Method::Bye);
    }
}
