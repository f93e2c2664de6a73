//! The peer's re-INVITE and UPDATE inside an established dialog (RFC 3261
//! 14.2, RFC 3311), as `sip::uac` and `sip::uas` both answer them.
//!
//! The SIP side only: the request is handed up as a
//! [`RenegotiationEvent::Offer`]; the B2BUA decides (hold, a new address, a
//! new key: `calls::renegotiate`) and answers with [`PeerUpdates::answer`],
//! in the same turn, or later after a 100 ([`OfferAnswer::Later`]: a codec
//! change the browser is re-asked about first). What is
//! kept is what RFC 3261 asks of a UAS after that:
//!
//! - the 2xx to a re-INVITE is resent (T1 doubling to T2) until its ACK
//!   comes (13.3.1.4); a 2xx never ACKed within 64*T1 is given up on (the
//!   session stays as answered; the media timeout still guards the call);
//! - a re-INVITE without SDP gets our offer in the 2xx and the peer's answer
//!   comes in the ACK ([`RenegotiationEvent::AckAnswer`], RFC 3261 13.2.1);
//! - glare: a re-INVITE while an INVITE transaction of the dialog is still
//!   open (our 2xx not yet ACKed, including the first INVITE's on the UAS
//!   side) and an UPDATE while our offer is outstanding get 491 (RFC 3261
//!   14.2, RFC 3311 5.2), and the session goes on unchanged; so does either
//!   while a re-INVITE of ours is out. The other half of glare (a 491 to
//!   ours, retried after a random delay, 14.1) is `sip::own_requests`.
//!
//! Retransmissions of the request itself are answered by the dialog
//! (`Dialog::handle_request` keeps the last answer).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rsip::{Method, Request};

use super::dialog::Dialog;
use super::message;
use super::transaction::TIMEOUT;
use super::{T1, T2};

/// What the B2BUA must look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenegotiationEvent {
    /// A re-INVITE (`update: false`) or UPDATE with the peer's offer, or
    /// without SDP (`sdp: None`: a re-INVITE asking for our offer, or an
    /// UPDATE that only refreshes the target). Answer it with `answer_offer`
    /// before the next input.
    Offer { update: bool, sdp: Option<String> },
    /// The ACK of our 2xx to an offerless re-INVITE, with the peer's answer
    /// to the offer we put in that 2xx (`None`: it sent none).
    AckAnswer { sdp: Option<String> },
}

/// How the B2BUA answers an [`RenegotiationEvent::Offer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfferAnswer {
    /// 200 with this SDP: the answer to the peer's offer, or our offer when
    /// the request had none.
    Sdp(String),
    /// 200 without a body (an UPDATE without SDP).
    Empty,
    /// A final refusal (488: the session goes on as it was).
    Refuse(u16),
    /// Not yet: the B2BUA must first re-ask the browser (a codec change,
    /// `calls::renegotiate`). 100 Trying goes out now, so the peer stops
    /// retransmitting and its retransmissions get the 100 again; the
    /// request stays pending for a later `answer_offer`.
    Later,
}

/// Our 2xx to a re-INVITE, until its ACK.
#[derive(Debug)]
struct Unacked {
    cseq: u32,
    bytes: Bytes,
    retransmit_at: Instant,
    interval: Duration,
    give_up_at: Instant,
    /// The 2xx carried our offer (the re-INVITE had none): the answer
    /// comes in the ACK.
    offered: bool,
}

/// The peer's session updates in one dialog. See the module documentation.
#[derive(Debug, Default)]
pub struct PeerUpdates {
    /// The request handed up, waiting for [`PeerUpdates::answer`].
    pending: Option<Request>,
    unacked: Option<Unacked>,
    events: VecDeque<RenegotiationEvent>,
}

impl PeerUpdates {
    /// A re-INVITE or UPDATE the dialog took in order (`InDialog::Offer`).
    /// `invite_open`: an INVITE transaction of the dialog is still open on
    /// our side (the UAS's first 2xx not yet ACKed). Returns a response to
    /// send at once (491 on glare); otherwise the request is reported as an
    /// [`RenegotiationEvent::Offer`].
    /// `our_offer_open`: a re-INVITE of ours with an offer is out
    /// (`sip::own_requests`): a re-INVITE or UPDATE of the peer is glare.
    pub fn begin(
        &mut self,
        dialog: &mut Dialog,
        req: Request,
        invite_open: bool,
        our_offer_open: bool,
    ) -> Option<Bytes> {
        let update = req.method == Method::Update;
        let glare = our_offer_open
            || if update {
                self.unacked.as_ref().is_some_and(|u| u.offered) || self.pending.is_some()
            } else {
                invite_open || self.unacked.is_some() || self.pending.is_some()
            };
        if glare {
            tracing::info!(call_id = %dialog.call_id, method = %req.method,
                "peer's session update crosses an open one: 491");
            return Some(message::to_bytes(dialog.answer(&req, 491, None, vec![])));
        }
        let sdp = message::sdp_body(&req).filter(|s| !s.trim().is_empty());
        self.events
            .push_back(RenegotiationEvent::Offer { update, sdp });
        self.pending = Some(req);
        None
    }

    /// The B2BUA's answer to the pending request: the response to send.
    /// `None` when nothing was pending.
    /// `extra`: headers for a 2xx (the session timer's, RFC 4028 9).
    pub fn answer(
        &mut self,
        dialog: &mut Dialog,
        answer: OfferAnswer,
        extra: Vec<rsip::Header>,
        now: Instant,
    ) -> Option<Bytes> {
        if answer == OfferAnswer::Later {
            let req = self.pending.as_ref()?;
            let trying = dialog.answer(req, 100, None, vec![]);
            return Some(message::to_bytes(trying));
        }
        let req = self.pending.take()?;
        let had_sdp = message::sdp_body(&req).is_some_and(|s| !s.trim().is_empty());
        let resp = match &answer {
            OfferAnswer::Sdp(sdp) => {
                dialog.answer(&req, 200, Some(("application/sdp", sdp)), extra)
            }
            OfferAnswer::Empty => dialog.answer(&req, 200, None, extra),
            OfferAnswer::Refuse(code) => dialog.answer(&req, *code, None, vec![]),
            OfferAnswer::Later => return None,
        };
        let code = resp.status_code.code();
        tracing::info!(call_id = %dialog.call_id, method = %req.method, code, "answered the peer's session update");
        let bytes = message::to_bytes(resp);
        if req.method == Method::Invite && (200..300).contains(&code) {
            let cseq = message::cseq(&req).map(|(n, _)| n).unwrap_or_default();
            self.unacked = Some(Unacked {
                cseq,
                bytes: bytes.clone(),
                retransmit_at: now + T1,
                interval: T1,
                give_up_at: now + TIMEOUT,
                offered: !had_sdp && matches!(answer, OfferAnswer::Sdp(_)),
            });
        }
        Some(bytes)
    }

    /// An ACK of the dialog: true when it was the one for our 2xx to a
    /// re-INVITE (its CSeq number is the re-INVITE's, 13.2.2.4).
    pub fn on_ack(&mut self, ack: &Request) -> bool {
        let Some(u) = &self.unacked else {
            return false;
        };
        if message::cseq(ack).map(|(n, _)| n).ok() != Some(u.cseq) {
            return false;
        }
        if u.offered {
            let sdp = message::sdp_body(ack).filter(|s| !s.trim().is_empty());
            self.events.push_back(RenegotiationEvent::AckAnswer { sdp });
        }
        self.unacked = None;
        true
    }

    /// A 2xx to resend now, if its time came.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Bytes> {
        let u = self.unacked.as_mut()?;
        if u.give_up_at <= now {
            tracing::warn!("no ACK for our 2xx to the peer's re-INVITE; giving up on it");
            self.unacked = None;
            return None;
        }
        if u.retransmit_at > now {
            return None;
        }
        u.interval = (u.interval * 2).min(T2);
        u.retransmit_at = now + u.interval;
        Some(u.bytes.clone())
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.unacked
            .as_ref()
            .map(|u| u.retransmit_at.min(u.give_up_at))
    }

    pub fn poll_event(&mut self) -> Option<RenegotiationEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::sip::dialog::{InDialog, LocalEndpoint};
    use crate::sip::message::{RequestParts, ResponseParts};
    use crate::sip::Transport;

    pub(crate) fn local() -> LocalEndpoint {
        LocalEndpoint {
            via_host: "192.0.2.1".into(),
            via_port: 5060,
            transport: Transport::Udp,
            contact: "<sip:gw@192.0.2.1:5060>".into(),
            user_agent: "t".into(),
        }
    }

    /// Our dialog as the UAC of `cid`, and a maker of the peer's requests.
    pub(crate) fn dialog() -> Dialog {
        let invite = message::build_request(RequestParts {
            method: Method::Invite,
            uri: "sip:bob@192.0.2.2",
            via: message::via_value("192.0.2.1", 5060, Transport::Udp, "z9hG4bKi"),
            from: "<sip:gw@192.0.2.1>;tag=ours",
            to: "<sip:bob@192.0.2.2>",
            call_id: "cid",
            cseq: 1,
            contact: Some("<sip:gw@192.0.2.1:5060>"),
            routes: &[],
            user_agent: "t",
            body: None,
            extra: vec![],
        })
        .unwrap();
        let ok = message::build_response(
            &invite,
            200,
            ResponseParts {
                to_tag: Some("theirs"),
                contact: Some("<sip:bob@192.0.2.2:5080>"),
                ..Default::default()
            },
        );
        Dialog::uac(&invite, &ok, local()).unwrap()
    }

    fn peer(method: Method, cseq: u32, sdp: Option<&str>) -> Request {
        message::build_request(RequestParts {
            method,
            uri: "sip:gw@192.0.2.1:5060",
            via: message::via_value("192.0.2.2", 5080, Transport::Udp, &message::new_branch()),
            from: "<sip:bob@192.0.2.2>;tag=theirs",
            to: "<sip:gw@192.0.2.1>;tag=ours",
            call_id: "cid",
            cseq,
            contact: Some("<sip:bob@192.0.2.2:5080>"),
            routes: &[],
            user_agent: "peer",
            body: sdp.map(|s| ("application/sdp", s)),
            extra: vec![],
        })
        .unwrap()
    }

    fn code(bytes: &Bytes) -> u16 {
        match message::parse(bytes).unwrap() {
            rsip::SipMessage::Response(r) => r.status_code.code(),
            _ => panic!("not a response"),
        }
    }

    /// Feeds `req` through the dialog as `sip::uac` does.
    fn offer(d: &mut Dialog, u: &mut PeerUpdates, req: Request) -> Option<Bytes> {
        assert!(matches!(d.handle_request(&req), InDialog::Offer));
        u.begin(d, req, false, false)
    }

    #[test]
    fn an_offerless_reinvite_gets_our_offer_and_the_ack_answers_it() {
        let (mut d, mut u, t0) = (dialog(), PeerUpdates::default(), Instant::now());
        assert!(offer(&mut d, &mut u, peer(Method::Invite, 2, None)).is_none());
        assert_eq!(
            u.poll_event(),
            Some(RenegotiationEvent::Offer {
                update: false,
                sdp: None
            })
        );
        let ok = u
            .answer(&mut d, OfferAnswer::Sdp("v=0\r\n".into()), vec![], t0)
            .unwrap();
        assert_eq!(code(&ok), 200);
        // While our offer waits for the ACK, an UPDATE with another is glare.
        let glare = offer(&mut d, &mut u, peer(Method::Update, 3, Some("v=0\r\n"))).unwrap();
        assert_eq!(code(&glare), 491);
        let mut ack = peer(Method::Ack, 2, Some("v=0\r\nanswer\r\n"));
        assert!(u.on_ack(&ack), "the ACK of the re-INVITE's 200");
        assert_eq!(
            u.poll_event(),
            Some(RenegotiationEvent::AckAnswer {
                sdp: Some("v=0\r\nanswer\r\n".into())
            })
        );
        ack.body.clear();
        assert!(!u.on_ack(&ack), "once");
        assert_eq!(u.poll_timeout(), None);
    }

    #[test]
    fn a_deferred_answer_sends_100_keeps_the_request_and_answers_later() {
        let (mut d, mut u, t0) = (dialog(), PeerUpdates::default(), Instant::now());
        let req = peer(Method::Invite, 2, Some("v=0\r\n"));
        offer(&mut d, &mut u, req.clone());
        u.poll_event();
        let trying = u.answer(&mut d, OfferAnswer::Later, vec![], t0).unwrap();
        assert_eq!(code(&trying), 100);
        // A retransmission of the re-INVITE gets the 100 again.
        assert!(
            matches!(d.handle_request(&req), InDialog::Retransmission(r) if r.status_code.code() == 100)
        );
        // Another session update meanwhile is glare.
        let glare = offer(&mut d, &mut u, peer(Method::Update, 3, Some("v=0\r\n"))).unwrap();
        assert_eq!(code(&glare), 491);
        let ok = u
            .answer(&mut d, OfferAnswer::Sdp("v=0\r\n".into()), vec![], t0)
            .unwrap();
        assert_eq!(code(&ok), 200);
        assert!(u
            .answer(&mut d, OfferAnswer::Refuse(488), vec![], t0)
            .is_none());
    }

    #[test]
    fn an_unacked_2xx_is_resent_then_given_up() {
        let (mut d, mut u, t0) = (dialog(), PeerUpdates::default(), Instant::now());
        offer(&mut d, &mut u, peer(Method::Invite, 2, Some("v=0\r\n")));
        u.poll_event();
        let ok = u
            .answer(&mut d, OfferAnswer::Sdp("v=0\r\n".into()), vec![], t0)
            .unwrap();
        let mut resent = 0;
        let mut now = t0;
        while let Some(at) = u.poll_timeout() {
            now = at;
            if let Some(again) = u.handle_timeout(now) {
                assert_eq!(again, ok);
                resent += 1;
            }
        }
        assert!(now >= t0 + TIMEOUT, "given up after 64*T1");
        assert!((7..=11).contains(&resent), "{resent}");
        // A refusal is final at once: nothing to resend, no ACK awaited.
        offer(&mut d, &mut u, peer(Method::Invite, 3, Some("v=0\r\n")));
        let no = u
            .answer(&mut d, OfferAnswer::Refuse(488), vec![], now)
            .unwrap();
        assert_eq!(code(&no), 488);
        assert_eq!(u.poll_timeout(), None);
    }
}
