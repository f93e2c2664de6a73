//! Requests the gateway itself sends inside an established dialog, other
//! than BYE: a re-INVITE with a new offer (hold and resume from the browser,
//! RFC 3261 14.1), as `sip::uac` and `sip::uas` both send them. The
//! counterpart of `sip::reinvite`, which answers the peer's.
//!
//! Sans-IO: the caller hands in its dialog, where the request goes and an
//! explicit `Instant`; it drains bytes to send and [`OwnEvent`]s, and
//! sleeps until [`OwnRequests::poll_timeout`].
//!
//! What RFC 3261 asks of a UAC here, and where it is done:
//!
//! - one INVITE transaction of ours at a time in a dialog (14.1): a second
//!   offer while one is out is refused by [`OwnRequests::send_offer`]
//!   ([`OwnError::Busy`]), and the caller tells its user;
//! - the 2xx is ACKed by us (13.2.2.4, with the dialog's ACK), and the same
//!   ACK answers the 2xx's retransmissions; a 2xx refreshes the remote
//!   target (12.2.1.2);
//! - 491 Request Pending (glare): the same offer goes again in a new
//!   re-INVITE after a random delay (14.1): 2.1 to 4 s in steps of 10 ms
//!   when we own the Call-ID (we sent the dialog's first INVITE), 0 to 2 s
//!   otherwise, so that the two sides do not collide again. The random
//!   value is drawn when the 491 arrives; [`glare_delay`] is the pure rule;
//! - any other final answer leaves the session as it was before the offer
//!   (14.1) and is reported as [`OwnEvent::Refused`]; so is a timeout
//!   (Timer B, as 408). What to do about 481 and 408 (end the dialog, 14.1
//!   SHOULD) is the caller's decision: it has the code.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rsip::{Header, Method, Response};

use super::auth::Authenticator;
use super::dialog::Dialog;
use super::message;
use super::target::Target;
use super::transaction::{ClientTransaction, TxEvent};
use super::SipError;

/// The status line of a NOTIFY about our REFER (its sipfrag), if `req` is
/// one.
pub fn refer_notify(req: &rsip::Request) -> Option<u16> {
    if req.method != Method::Notify {
        return None;
    }
    let event = message::header_values(req, "Event");
    if !event.iter().any(|e| super::refer::is_refer_event(e)) {
        return None;
    }
    super::refer::sipfrag_status(std::str::from_utf8(&req.body).ok()?)
}

/// What the caller hears about its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnEvent {
    /// A 2xx to our re-INVITE (already ACKed), with the peer's answer and
    /// its `Session-Expires` (RFC 4028), if any.
    Answered {
        sdp: Option<String>,
        session_expires: Option<String>,
    },
    /// The final answer to our REFER (202: accepted, NOTIFYs follow); 408
    /// when none came.
    Referred { code: u16 },
    /// The final answer to our UPDATE without SDP (a session refresh,
    /// RFC 4028), with its `Session-Expires`; 408 when none came.
    Updated {
        code: u16,
        session_expires: Option<String>,
    },
    /// A final refusal (not 491, which is retried), or 408 when no final
    /// answer came in time. The session is as it was before the offer.
    Refused { code: u16, reason: String },
    /// The final answer to our INFO (a DTMF digit, RFC 6086); 408 when
    /// none came.
    InfoAnswered { code: u16 },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OwnError {
    /// No confirmed dialog (not answered yet, or ending).
    #[error("the call is not established")]
    NoDialog,
    /// An offer of ours is still out (or waits to be retried after 491).
    #[error("an offer of ours is still outstanding")]
    Busy,
    #[error("cannot build the request: {0}")]
    Build(String),
}

/// Our re-INVITE, from the first send until its final answer.
#[derive(Debug)]
struct Offer {
    sdp: String,
    to: Target,
    extra: Vec<Header>,
    /// The transaction of the current attempt (`None` while waiting out
    /// the 491 delay).
    tx: Option<ClientTransaction>,
    retry_at: Option<Instant>,
}

/// Our in-dialog requests. See the module documentation.
#[derive(Debug)]
pub struct OwnRequests {
    /// We sent the dialog's first INVITE (we chose the Call-ID).
    call_id_owner: bool,
    /// Answers the peer's 401/407 to our requests (the trunk's
    /// credentials; none: a challenge is a refusal).
    auth: Authenticator,
    offer: Option<Offer>,
    /// Our UPDATE without SDP (a session refresh), and where it goes.
    update: Option<(ClientTransaction, Target)>,
    /// Our REFER (a blind transfer), and where it goes.
    refer: Option<(ClientTransaction, Target)>,
    /// Our INFOs carrying DTMF digits, where they go, and whether each got
    /// its final answer (a non-INVITE transaction lingers after it, Timer
    /// K, to absorb retransmitted answers). One unanswered at a time, so
    /// that digits arrive in order.
    infos: Vec<(ClientTransaction, Target, bool)>,
    /// Transactions whose answers change nothing, left to retransmit and
    /// absorb retransmissions until they end: our NOTIFYs about the peer's
    /// REFER, and requests of ours that were challenged (401/407) and went
    /// again with credentials (an INVITE's transaction ACKs its challenge).
    unheeded: Vec<(ClientTransaction, Target)>,
    /// The ACK of the last 2xx to a re-INVITE of ours (its CSeq, bytes and
    /// destination), resent for each retransmission of that 2xx.
    last_ack: Option<(u32, Bytes, Target)>,
    transmit: VecDeque<(Bytes, Target)>,
    events: VecDeque<OwnEvent>,
}

/// How long to wait before retrying a re-INVITE refused with 491 (RFC 3261
/// 14.1): `random` picks a step of 10 ms in [2.1 s, 4 s] for the owner of the
/// Call-ID, in [0 s, 2 s] for the other side.
pub fn glare_delay(call_id_owner: bool, random: u32) -> Duration {
    let (base, steps) = if call_id_owner { (2100, 191) } else { (0, 201) };
    Duration::from_millis(base + u64::from(random % steps) * 10)
}

/// The final status a non-INVITE transaction reported (408 for no answer
/// in time), `None` for a provisional.
fn final_code(ev: &TxEvent) -> Option<u16> {
    match ev {
        TxEvent::Response(r) => Some(message::status_code(r)).filter(|code| *code >= 200),
        TxEvent::Timeout => Some(408),
    }
}

impl OwnRequests {
    pub fn new(call_id_owner: bool, auth: Authenticator) -> Self {
        OwnRequests {
            call_id_owner,
            auth,
            offer: None,
            update: None,
            refer: None,
            infos: Vec::new(),
            unheeded: Vec::new(),
            last_ack: None,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The dialog's digest answers (the UAC's INVITE and BYE use it too, so
    /// that nonce counts and refused nonces are one record).
    pub fn auth(&mut self) -> &mut Authenticator {
        &mut self.auth
    }

    /// An offer of ours is out or waits for its retry.
    pub fn offer_pending(&self) -> bool {
        self.offer.is_some()
    }

    /// A re-INVITE transaction of ours is open right now (the peer's
    /// re-INVITE or UPDATE with an offer is then glare, 491).
    pub fn invite_open(&self) -> bool {
        self.offer.as_ref().is_some_and(|o| o.tx.is_some())
    }

    /// Sends `sdp` as a new offer in a re-INVITE of `dialog`, to `to`.
    pub fn send_offer(
        &mut self,
        dialog: &mut Dialog,
        to: Target,
        sdp: String,
        extra: Vec<Header>,
        now: Instant,
    ) -> Result<(), OwnError> {
        if self.offer.is_some() {
            return Err(OwnError::Busy);
        }
        let mut offer = Offer {
            sdp,
            to,
            extra,
            tx: None,
            retry_at: None,
        };
        Self::start(&mut offer, dialog, now).map_err(|e| OwnError::Build(e.to_string()))?;
        self.offer = Some(offer);
        self.pump();
        Ok(())
    }

    fn start(offer: &mut Offer, dialog: &mut Dialog, now: Instant) -> Result<(), SipError> {
        let req = dialog.request_with(
            Method::Invite,
            Some(("application/sdp", &offer.sdp)),
            offer.extra.clone(),
        )?;
        tracing::info!(call_id = %dialog.call_id, cseq = dialog.local_cseq(), "sending our re-INVITE");
        offer.tx = Some(ClientTransaction::new(req, offer.to.transport, now));
        offer.retry_at = None;
        Ok(())
    }

    /// Sends an UPDATE without SDP in `dialog` (a session refresh: no
    /// offer, so no glare with anything but another UPDATE of ours).
    pub fn send_update(
        &mut self,
        dialog: &mut Dialog,
        to: Target,
        extra: Vec<Header>,
        now: Instant,
    ) -> Result<(), OwnError> {
        if self.update.is_some() {
            return Err(OwnError::Busy);
        }
        let req = dialog
            .request_with(Method::Update, None, extra)
            .map_err(|e| OwnError::Build(e.to_string()))?;
        tracing::info!(call_id = %dialog.call_id, "sending UPDATE (session refresh)");
        self.update = Some((ClientTransaction::new(req, to.transport, now), to));
        self.pump();
        Ok(())
    }

    /// Sends a REFER in `dialog` asking the peer to call `refer_to` (RFC
    /// 3515); its NOTIFYs are the user agent's to report.
    pub fn send_refer(
        &mut self,
        dialog: &mut Dialog,
        to: Target,
        refer_to: &str,
        now: Instant,
    ) -> Result<(), OwnError> {
        if self.refer.is_some() {
            return Err(OwnError::Busy);
        }
        let extra = vec![
            Header::Other("Refer-To".into(), format!("<{refer_to}>")),
            Header::Other("Referred-By".into(), dialog.local_uri()),
        ];
        let req = dialog
            .request_with(Method::Refer, None, extra)
            .map_err(|e| OwnError::Build(e.to_string()))?;
        tracing::info!(call_id = %dialog.call_id, "sending REFER (blind transfer)");
        self.refer = Some((ClientTransaction::new(req, to.transport, now), to));
        self.pump();
        Ok(())
    }

    /// Sends an INFO with `body` of `content_type` in `dialog` (RFC 6086:
    /// no Info-Package, the legacy usage every DTMF-over-INFO peer takes).
    /// One at a time, so that digits keep their order.
    pub fn send_info(
        &mut self,
        dialog: &mut Dialog,
        to: Target,
        (content_type, body): (&str, &str),
        now: Instant,
    ) -> Result<(), OwnError> {
        if self.infos.iter().any(|(_, _, answered)| !answered) {
            return Err(OwnError::Busy);
        }
        let req = dialog
            .request_with(Method::Info, Some((content_type, body)), Vec::new())
            .map_err(|e| OwnError::Build(e.to_string()))?;
        // The body is a digit: never logged (PINs, card numbers).
        tracing::debug!(call_id = %dialog.call_id, content_type, "sending INFO");
        self.infos
            .push((ClientTransaction::new(req, to.transport, now), to, false));
        self.pump();
        Ok(())
    }

    /// Acts on what our INFOs' transactions reported.
    fn drain_infos(&mut self) {
        for (tx, to, answered) in &mut self.infos {
            while let Some(b) = tx.poll_transmit() {
                self.transmit.push_back((b, to.clone()));
            }
            while let Some(ev) = tx.poll_event() {
                let Some(code) = final_code(&ev) else {
                    continue;
                };
                if !*answered {
                    *answered = true;
                    self.events.push_back(OwnEvent::InfoAnswered { code });
                }
            }
        }
        self.infos.retain(|(tx, _, _)| !tx.is_terminated());
    }

    /// Sends a NOTIFY about the peer's REFER with CSeq `refer_cseq` (RFC
    /// 3515 2.4.4): `message/sipfrag` with `code` and `reason`, the last one
    /// (`terminated`) ending the implicit subscription. Several may be out
    /// at once (100 Trying, then the final status a moment later).
    #[allow(clippy::too_many_arguments)]
    pub fn send_refer_notify(
        &mut self,
        dialog: &mut Dialog,
        to: Target,
        refer_cseq: u32,
        (code, reason): (u16, &str),
        terminated: bool,
        now: Instant,
    ) -> Result<(), OwnError> {
        let state = if terminated {
            "terminated;reason=noresource"
        } else {
            "active;expires=60"
        };
        let extra = vec![
            Header::Other("Event".into(), format!("refer;id={refer_cseq}")),
            Header::Other("Subscription-State".into(), state.into()),
        ];
        let body = super::refer::sipfrag(code, reason);
        let req = dialog
            .request_with(
                Method::Notify,
                Some(("message/sipfrag;version=2.0", &body)),
                extra,
            )
            .map_err(|e| OwnError::Build(e.to_string()))?;
        tracing::info!(call_id = %dialog.call_id, code, terminated, "sending NOTIFY about the peer's REFER");
        self.unheeded
            .push((ClientTransaction::new(req, to.transport, now), to));
        self.pump();
        Ok(())
    }

    /// Moves the unheeded transactions' retransmissions out and forgets
    /// finished ones.
    fn drain_unheeded(&mut self) {
        for (tx, to) in &mut self.unheeded {
            while let Some(b) = tx.poll_transmit() {
                self.transmit.push_back((b, to.clone()));
            }
            while tx.poll_event().is_some() {}
        }
        self.unheeded.retain(|(tx, _)| !tx.is_terminated());
    }

    /// Acts on what our REFER's transaction reported.
    fn drain_refer(&mut self) {
        let Some((tx, to)) = self.refer.as_mut() else {
            return;
        };
        while let Some(b) = tx.poll_transmit() {
            self.transmit.push_back((b, to.clone()));
        }
        while let Some(ev) = tx.poll_event() {
            if let Some(code) = final_code(&ev) {
                self.events.push_back(OwnEvent::Referred { code });
            }
        }
        if tx.is_terminated() {
            self.refer = None;
        }
    }

    /// Acts on what our UPDATE's transaction reported.
    fn drain_update(&mut self) {
        let Some((tx, to)) = self.update.as_mut() else {
            return;
        };
        while let Some(b) = tx.poll_transmit() {
            self.transmit.push_back((b, to.clone()));
        }
        while let Some(ev) = tx.poll_event() {
            let (code, session_expires) = match ev {
                TxEvent::Response(r) if message::status_code(&r) < 200 => continue,
                TxEvent::Response(r) => (
                    message::status_code(&r),
                    message::header_values(&r, "Session-Expires")
                        .into_iter()
                        .next(),
                ),
                TxEvent::Timeout => (408, None),
            };
            self.events.push_back(OwnEvent::Updated {
                code,
                session_expires,
            });
        }
        if tx.is_terminated() {
            self.update = None;
        }
    }

    /// A response of the dialog: true when it was ours to take.
    pub fn handle_response(&mut self, dialog: &mut Dialog, resp: &Response, now: Instant) -> bool {
        if self.retry_challenged(dialog, resp, now) {
            self.pump();
            return true;
        }
        if let Some((tx, _)) = self.update.as_mut().filter(|(tx, _)| tx.matches(resp)) {
            tx.handle_response(resp.clone(), now);
            self.drain_update();
            return true;
        }
        if let Some((tx, _)) = self.refer.as_mut().filter(|(tx, _)| tx.matches(resp)) {
            tx.handle_response(resp.clone(), now);
            self.drain_refer();
            return true;
        }
        if let Some((tx, _, _)) = self.infos.iter_mut().find(|(tx, _, _)| tx.matches(resp)) {
            tx.handle_response(resp.clone(), now);
            self.drain_infos();
            return true;
        }
        if let Some((tx, _)) = self.unheeded.iter_mut().find(|(tx, _)| tx.matches(resp)) {
            tx.handle_response(resp.clone(), now);
            self.drain_unheeded();
            return true;
        }
        if let Some(tx) = self
            .offer
            .as_mut()
            .and_then(|o| o.tx.as_mut())
            .filter(|tx| tx.matches(resp))
        {
            tx.handle_response(resp.clone(), now);
            self.drain(dialog, now);
            return true;
        }
        // A retransmitted 2xx of a re-INVITE already answered: ACK again.
        let code = message::status_code(resp);
        if let (Some((cseq, ack, to)), Ok((seq, Method::Invite))) =
            (&self.last_ack, message::cseq(resp))
        {
            if seq == *cseq && (200..300).contains(&code) && dialog.matches_response(resp) {
                self.transmit.push_back((ack.clone(), to.clone()));
                return true;
            }
        }
        false
    }

    /// A 401/407 to a request of ours that carried no credentials yet,
    /// when the dialog has credentials for the challenge (RFC 3261 22.2;
    /// carriers that authenticate every request challenge re-INVITEs and
    /// INFOs too): the old transaction takes the response (an INVITE's
    /// ACKs it) and lingers, the request goes again as a new transaction
    /// with the next CSeq and the credentials, and nobody is told of the
    /// challenge. False when `resp` is not such a challenge.
    fn retry_challenged(&mut self, dialog: &mut Dialog, resp: &Response, now: Instant) -> bool {
        let code = message::status_code(resp);
        if code != 401 && code != 407 {
            return false;
        }
        let slot = self
            .offer
            .as_mut()
            .and_then(|o| o.tx.as_mut().map(|tx| (tx, o.to.clone())))
            .into_iter()
            .chain(self.update.as_mut().map(|(tx, to)| (tx, to.clone())))
            .chain(self.refer.as_mut().map(|(tx, to)| (tx, to.clone())))
            .chain(self.infos.iter_mut().map(|(tx, to, _)| (tx, to.clone())))
            .find(|(tx, _)| tx.matches(resp));
        let Some((slot, to)) = slot else {
            return false;
        };
        let old = slot.request();
        let has_credentials = old.headers.iter().any(|h| {
            matches!(
                h,
                rsip::Header::Authorization(_) | rsip::Header::ProxyAuthorization(_)
            )
        });
        if has_credentials {
            return false;
        }
        let (method, uri) = (old.method.to_string(), old.uri.to_string());
        let Some(header) = self.auth.answer(resp, &method, &uri, true) else {
            return false;
        };
        let again = dialog.reissue_with(old, header);
        tracing::info!(call_id = %dialog.call_id, method, code, "our request was challenged: sent again with credentials");
        let mut old_tx = std::mem::replace(slot, ClientTransaction::new(again, to.transport, now));
        old_tx.handle_response(resp.clone(), now);
        while old_tx.poll_event().is_some() {}
        self.unheeded.push((old_tx, to));
        true
    }

    /// Acts on what the transaction reported.
    fn drain(&mut self, dialog: &mut Dialog, now: Instant) {
        let Some(offer) = self.offer.as_mut() else {
            return;
        };
        let Some(tx) = offer.tx.as_mut() else {
            return;
        };
        let to = offer.to.clone();
        while let Some(b) = tx.poll_transmit() {
            self.transmit.push_back((b, to.clone()));
        }
        let mut outcome = None;
        while let Some(ev) = tx.poll_event() {
            match ev {
                TxEvent::Response(r) if message::status_code(&r) < 200 => {}
                TxEvent::Response(r) => outcome = Some(Ok(r)),
                TxEvent::Timeout => outcome = Some(Err(())),
            }
        }
        let cseq = message::cseq(tx.request()).map(|(n, _)| n).unwrap_or(0);
        // A non-2xx final lingers in its transaction (Timer D, its ACK for
        // retransmissions); nothing else about the offer waits on it.
        let finished_tx = tx.is_terminated();
        match outcome {
            None => {
                if finished_tx {
                    offer.tx = None;
                }
            }
            Some(Err(())) => {
                tracing::warn!(call_id = %dialog.call_id, "no final answer to our re-INVITE");
                self.offer = None;
                self.events.push_back(OwnEvent::Refused {
                    code: 408,
                    reason: "Request Timeout".into(),
                });
            }
            Some(Ok(resp)) => {
                let code = message::status_code(&resp);
                if (200..300).contains(&code) {
                    dialog.refresh_target(&resp);
                    match dialog.ack(cseq) {
                        Ok(ack) => {
                            let ack = message::to_bytes(ack);
                            self.transmit.push_back((ack.clone(), to.clone()));
                            self.last_ack = Some((cseq, ack, to));
                        }
                        Err(e) => {
                            tracing::warn!(call_id = %dialog.call_id, error = %e, "cannot build ACK")
                        }
                    }
                    self.offer = None;
                    self.events.push_back(OwnEvent::Answered {
                        sdp: message::sdp_body(&resp),
                        session_expires: message::header_values(&resp, "Session-Expires")
                            .into_iter()
                            .next(),
                    });
                } else if code == 491 {
                    let delay = glare_delay(self.call_id_owner, rand::random());
                    tracing::info!(call_id = %dialog.call_id, delay_ms = delay.as_millis() as u64,
                        "our re-INVITE crossed the peer's (491); retrying");
                    // The 491 was ACKed by its transaction, which goes: a
                    // retransmitted 491 (the ACK lost) stays unanswered and
                    // the peer's Timer H ends it. A new attempt starts fresh.
                    offer.tx = None;
                    offer.retry_at = Some(now + delay);
                } else {
                    let reason = message::response_reason(&resp);
                    tracing::info!(call_id = %dialog.call_id, code, %reason, "our re-INVITE was refused");
                    self.offer = None;
                    self.events.push_back(OwnEvent::Refused { code, reason });
                }
            }
        }
    }

    pub fn handle_timeout(&mut self, dialog: &mut Dialog, now: Instant) {
        if let Some((tx, _)) = self.update.as_mut() {
            tx.handle_timeout(now);
            self.drain_update();
        }
        if let Some((tx, _)) = self.refer.as_mut() {
            tx.handle_timeout(now);
            self.drain_refer();
        }
        if !self.infos.is_empty() {
            for (tx, _, _) in &mut self.infos {
                tx.handle_timeout(now);
            }
            self.drain_infos();
        }
        if !self.unheeded.is_empty() {
            for (tx, _) in &mut self.unheeded {
                tx.handle_timeout(now);
            }
            self.drain_unheeded();
        }
        let Some(offer) = self.offer.as_mut() else {
            return;
        };
        if let Some(tx) = offer.tx.as_mut() {
            tx.handle_timeout(now);
            self.drain(dialog, now);
            return;
        }
        if offer.retry_at.is_some_and(|t| t <= now) {
            if let Err(e) = Self::start(offer, dialog, now) {
                tracing::warn!(call_id = %dialog.call_id, error = %e, "cannot retry our re-INVITE");
                self.offer = None;
                self.events.push_back(OwnEvent::Refused {
                    code: 500,
                    reason: "cannot build the re-INVITE".into(),
                });
                return;
            }
            self.pump();
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let offer = self.offer.as_ref();
        offer
            .and_then(|o| o.tx.as_ref())
            .and_then(|tx| tx.poll_timeout())
            .into_iter()
            .chain(offer.and_then(|o| o.retry_at))
            .chain(self.update.as_ref().and_then(|(tx, _)| tx.poll_timeout()))
            .chain(self.refer.as_ref().and_then(|(tx, _)| tx.poll_timeout()))
            .chain(self.infos.iter().filter_map(|(tx, _, _)| tx.poll_timeout()))
            .chain(self.unheeded.iter().filter_map(|(tx, _)| tx.poll_timeout()))
            .min()
    }

    pub fn poll_transmit(&mut self) -> Option<(Bytes, Target)> {
        self.transmit.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<OwnEvent> {
        self.events.pop_front()
    }

    fn pump(&mut self) {
        let lingering = self.infos.iter_mut().map(|(tx, to, _)| (tx, &*to));
        for (tx, to) in self
            .update
            .iter_mut()
            .chain(self.refer.iter_mut())
            .chain(self.unheeded.iter_mut())
            .map(|(tx, to)| (tx, &*to))
            .chain(lingering)
        {
            while let Some(b) = tx.poll_transmit() {
                self.transmit.push_back((b, to.clone()));
            }
        }
        if let Some(offer) = self.offer.as_mut() {
            if let Some(tx) = offer.tx.as_mut() {
                while let Some(b) = tx.poll_transmit() {
                    self.transmit.push_back((b, offer.to.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::ResponseParts;
    use crate::sip::reinvite::tests::dialog;
    use crate::sip::Transport;
    use rsip::{Request, SipMessage};

    fn to() -> Target {
        Target::addr("192.0.2.2:5080".parse().unwrap(), Transport::Udp)
    }

    fn sent(o: &mut OwnRequests) -> Vec<Request> {
        std::iter::from_fn(|| o.poll_transmit())
            .filter_map(|(b, _)| match message::parse(&b).unwrap() {
                SipMessage::Request(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    fn answer(req: &Request, code: u16, sdp: Option<&str>) -> Response {
        message::build_response(
            req,
            code,
            ResponseParts {
                to_tag: Some("theirs"),
                contact: Some("<sip:bob@192.0.2.2:5080>"),
                body: sdp.map(|s| ("application/sdp", s)),
                ..Default::default()
            },
        )
    }

    #[test]
    fn a_2xx_is_acked_reported_and_its_retransmission_acked_again() {
        let (mut d, mut o, t0) = (
            dialog(),
            OwnRequests::new(true, Authenticator::default()),
            Instant::now(),
        );
        o.send_offer(&mut d, to(), "v=0\r\nhold\r\n".into(), vec![], t0)
            .unwrap();
        let reinvite = sent(&mut o).pop().unwrap();
        assert_eq!(reinvite.method, Method::Invite);
        assert_eq!(message::cseq(&reinvite).unwrap().0, 2);
        assert_eq!(
            message::sdp_body(&reinvite).as_deref(),
            Some("v=0\r\nhold\r\n")
        );
        assert!(o.invite_open());
        assert_eq!(
            o.send_offer(&mut d, to(), "x".into(), vec![], t0),
            Err(OwnError::Busy)
        );
        let ok = answer(&reinvite, 200, Some("v=0\r\nanswer\r\n"));
        assert!(o.handle_response(&mut d, &ok, t0));
        let ack = sent(&mut o).pop().unwrap();
        assert_eq!(ack.method, Method::Ack);
        assert_eq!(message::cseq(&ack).unwrap(), (2, Method::Ack));
        assert_eq!(
            o.poll_event(),
            Some(OwnEvent::Answered {
                sdp: Some("v=0\r\nanswer\r\n".into()),
                session_expires: None,
            })
        );
        assert!(!o.offer_pending());
        assert!(o.handle_response(&mut d, &ok, t0), "a retransmitted 2xx");
        assert_eq!(sent(&mut o).pop().map(|r| r.method), Some(Method::Ack));
        assert_eq!(o.poll_event(), None);
    }

    fn challenge(req: &Request, code: u16, nonce: &str) -> Response {
        let mut resp = answer(req, code, None);
        let name = if code == 407 {
            "Proxy-Authenticate"
        } else {
            "WWW-Authenticate"
        };
        resp.headers.push(Header::Other(
            name.into(),
            format!("Digest realm=\"carrier\", nonce=\"{nonce}\", qop=\"auth\", algorithm=MD5"),
        ));
        resp
    }

    fn with_credentials() -> Authenticator {
        Authenticator::new(Some(crate::sip::auth::DigestCredentials {
            username: "gw".into(),
            password: crate::types::Secret::new("secret".into()),
        }))
    }

    #[test]
    fn a_challenged_reinvite_goes_again_with_credentials_once() {
        let (mut d, mut o, t0) = (
            dialog(),
            OwnRequests::new(true, with_credentials()),
            Instant::now(),
        );
        o.send_offer(&mut d, to(), "v=0\r\nhold\r\n".into(), vec![], t0)
            .unwrap();
        let first = sent(&mut o).pop().unwrap();
        assert!(o.handle_response(&mut d, &challenge(&first, 401, "n1"), t0));
        let out = sent(&mut o);
        let methods: Vec<_> = out.iter().map(|r| r.method).collect();
        assert_eq!(
            methods,
            [Method::Ack, Method::Invite],
            "the 401's ACK, the new INVITE"
        );
        let (ack, again) = (&out[0], &out[1]);
        assert_eq!(message::cseq(ack).unwrap(), (2, Method::Ack));
        assert_eq!(message::cseq(again).unwrap(), (3, Method::Invite));
        assert_ne!(
            message::header_values(again, "Via"),
            message::header_values(&first, "Via"),
            "a new transaction"
        );
        let auth = message::header_values(again, "Authorization");
        assert!(
            auth.len() == 1
                && auth[0].contains("nonce=\"n1\"")
                && auth[0].contains("username=\"gw\""),
            "{auth:?}"
        );
        assert_eq!(message::sdp_body(again).as_deref(), Some("v=0\r\nhold\r\n"));
        assert_eq!(
            o.poll_event(),
            None,
            "the challenge is nobody else's business"
        );
        assert!(o.invite_open());
        // The 401 retransmitted: its ACK again, nothing else.
        assert!(o.handle_response(&mut d, &challenge(&first, 401, "n1"), t0));
        assert_eq!(
            sent(&mut o).iter().map(|r| r.method).collect::<Vec<_>>(),
            [Method::Ack]
        );
        // Challenged again: the credentials are wrong, a refusal.
        assert!(o.handle_response(&mut d, &challenge(again, 401, "n1"), t0));
        assert!(matches!(
            o.poll_event(),
            Some(OwnEvent::Refused { code: 401, .. })
        ));
        assert!(!o.offer_pending());
    }

    #[test]
    fn a_challenged_info_goes_again_with_proxy_credentials_and_without_them_is_refused() {
        let (mut d, mut o, t0) = (
            dialog(),
            OwnRequests::new(true, with_credentials()),
            Instant::now(),
        );
        o.send_info(
            &mut d,
            to(),
            ("application/dtmf-relay", "Signal=5\r\nDuration=100\r\n"),
            t0,
        )
        .unwrap();
        let first = sent(&mut o).pop().unwrap();
        assert!(o.handle_response(&mut d, &challenge(&first, 407, "p1"), t0));
        let again = sent(&mut o).pop().unwrap();
        assert_eq!(again.method, Method::Info);
        assert_eq!(
            message::header_values(&again, "Proxy-Authorization").len(),
            1
        );
        assert_eq!(again.body, first.body);
        assert!(o.handle_response(&mut d, &answer(&again, 200, None), t0));
        assert_eq!(o.poll_event(), Some(OwnEvent::InfoAnswered { code: 200 }));

        // No credentials for this dialog: the challenge is the answer.
        let (mut d, mut o) = (dialog(), OwnRequests::new(true, Authenticator::default()));
        o.send_info(&mut d, to(), ("application/dtmf-relay", "Signal=5\r\n"), t0)
            .unwrap();
        let first = sent(&mut o).pop().unwrap();
        assert!(o.handle_response(&mut d, &challenge(&first, 401, "n1"), t0));
        assert!(sent(&mut o).is_empty());
        assert_eq!(o.poll_event(), Some(OwnEvent::InfoAnswered { code: 401 }));
    }

    #[test]
    fn glare_delays_follow_rfc_3261_14_1() {
        for r in [0, 1, 189, 190, 191, 200, 201, u32::MAX] {
            let owner = glare_delay(true, r);
            assert!(
                owner >= Duration::from_millis(2100) && owner <= Duration::from_secs(4),
                "{owner:?}"
            );
            let other = glare_delay(false, r);
            assert!(other <= Duration::from_secs(2), "{other:?}");
            assert_eq!(owner.as_millis() % 10, 0);
            assert_eq!(other.as_millis() % 10, 0);
        }
        assert_eq!(glare_delay(true, 0), Duration::from_millis(2100));
        assert_eq!(glare_delay(true, 190), Duration::from_secs(4));
        assert_eq!(glare_delay(false, 200), Duration::from_secs(2));
    }

    #[test]
    fn a_491_is_retried_with_the_same_offer_after_the_random_delay() {
        for owner in [true, false] {
            let (mut d, mut o, t0) = (
                dialog(),
                OwnRequests::new(owner, Authenticator::default()),
                Instant::now(),
            );
            o.send_offer(&mut d, to(), "v=0\r\nhold\r\n".into(), vec![], t0)
                .unwrap();
            let first = sent(&mut o).pop().unwrap();
            let t1 = t0 + Duration::from_millis(30);
            assert!(o.handle_response(&mut d, &answer(&first, 491, None), t1));
            // The 491 is ACKed by its transaction; no event, no new INVITE yet.
            assert_eq!(sent(&mut o).pop().map(|r| r.method), Some(Method::Ack));
            assert_eq!(o.poll_event(), None);
            assert!(o.offer_pending());
            assert!(
                !o.invite_open(),
                "waiting: the peer may re-INVITE meanwhile"
            );
            let at = o.poll_timeout().unwrap();
            let (lo, hi) = if owner {
                (Duration::from_millis(2100), Duration::from_secs(4))
            } else {
                (Duration::ZERO, Duration::from_secs(2))
            };
            assert!(
                at >= t1 + lo && at <= t1 + hi,
                "owner {owner}: {:?}",
                at - t1
            );
            o.handle_timeout(&mut d, at - Duration::from_millis(1));
            assert!(sent(&mut o).is_empty(), "not before its time");
            o.handle_timeout(&mut d, at);
            let again = sent(&mut o).pop().unwrap();
            assert_eq!(again.method, Method::Invite);
            assert_eq!(message::cseq(&again).unwrap().0, 3, "a new CSeq");
            assert_ne!(
                message::top_via_branch(&again),
                message::top_via_branch(&first)
            );
            assert_eq!(message::sdp_body(&again), message::sdp_body(&first));
            assert!(o.handle_response(&mut d, &answer(&again, 200, Some("v=0\r\n")), at));
            assert!(matches!(o.poll_event(), Some(OwnEvent::Answered { .. })));
        }
    }

    #[test]
    fn a_refusal_or_a_timeout_is_reported_and_frees_the_slot() {
        let (mut d, mut o, t0) = (
            dialog(),
            OwnRequests::new(true, Authenticator::default()),
            Instant::now(),
        );
        o.send_offer(&mut d, to(), "v=0\r\n".into(), vec![], t0)
            .unwrap();
        let req = sent(&mut o).pop().unwrap();
        assert!(o.handle_response(&mut d, &answer(&req, 488, None), t0));
        assert_eq!(
            o.poll_event(),
            Some(OwnEvent::Refused {
                code: 488,
                reason: "Not Acceptable Here".into()
            })
        );
        assert!(!o.offer_pending());
        // Timer B: 64*T1 without any answer.
        o.send_offer(&mut d, to(), "v=0\r\n".into(), vec![], t0)
            .unwrap();
        let mut now = t0;
        while let Some(at) = o.poll_timeout() {
            now = at;
            o.handle_timeout(&mut d, now);
        }
        assert!(now >= t0 + crate::sip::transaction::TIMEOUT);
        assert_eq!(
            o.poll_event(),
            Some(OwnEvent::Refused {
                code: 408,
                reason: "Request Timeout".into()
            })
        );
    }
}

#[cfg(test)]
mod update_tests {
    use super::*;
    use crate::sip::message::ResponseParts;
    use crate::sip::reinvite::tests::dialog;
    use crate::sip::Transport;
    use rsip::SipMessage;

    #[test]
    fn an_update_refresh_reports_its_answer_and_session_expires() {
        let (mut d, mut o, t0) = (
            dialog(),
            OwnRequests::new(true, Authenticator::default()),
            Instant::now(),
        );
        let to = Target::addr("192.0.2.2:5080".parse().unwrap(), Transport::Udp);
        let se = Header::Other("Session-Expires".into(), "90;refresher=uac".into());
        o.send_update(&mut d, to.clone(), vec![se], t0).unwrap();
        assert_eq!(
            o.send_update(&mut d, to, vec![], t0),
            Err(OwnError::Busy),
            "one at a time"
        );
        let (bytes, _) = o.poll_transmit().unwrap();
        let SipMessage::Request(update) = message::parse(&bytes).unwrap() else {
            panic!("not a request")
        };
        assert_eq!(update.method, Method::Update);
        assert!(update.body.is_empty());
        assert_eq!(
            message::header_values(&update, "Session-Expires"),
            ["90;refresher=uac"]
        );
        assert!(!o.offer_pending(), "an UPDATE without SDP is no offer");
        let ok = message::build_response(
            &update,
            200,
            ResponseParts {
                extra: vec![Header::Other(
                    "Session-Expires".into(),
                    "90;refresher=uac".into(),
                )],
                ..Default::default()
            },
        );
        assert!(o.handle_response(&mut d, &ok, t0));
        assert_eq!(
            o.poll_event(),
            Some(OwnEvent::Updated {
                code: 200,
                session_expires: Some("90;refresher=uac".into())
            })
        );
    }
}
