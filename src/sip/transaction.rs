//! RFC 3261 section 17.1 client transactions, sans-IO.
//!
//! One [`ClientTransaction`] covers both the INVITE machine (17.1.1: timers A,
//! B, D; the ACK for a non-2xx final generated here) and the non-INVITE one
//! (17.1.2: timers E, F, K). The caller feeds responses whose top Via branch
//! and CSeq method match ([`ClientTransaction::matches`]) and timer ticks;
//! it drains bytes to send and [`TxEvent`]s for the transaction user.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rsip::{Method, Request, Response};

use super::message;
use super::{Transport, T1, T2, T4};

/// Timer B and F: how long a request may wait for a final response.
pub const TIMEOUT: Duration = Duration::from_millis(64 * 500);
/// Timer D for unreliable transports: how long the Completed state absorbs
/// retransmitted final responses (at least 32 s).
pub const TIMER_D: Duration = Duration::from_secs(32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxState {
    /// INVITE sent, nothing heard yet.
    Calling,
    /// Non-INVITE sent, nothing heard yet.
    Trying,
    Proceeding,
    /// Final response received; absorbing retransmissions until D or K.
    Completed,
    Terminated,
}

/// What the transaction tells its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxEvent {
    /// A provisional, the first non-2xx final, or any 2xx (INVITE 2xx
    /// retransmissions bypass the terminated transaction, RFC 3261 17.1.1.2).
    Response(Response),
    /// Timer B or F: no final response in time.
    Timeout,
}

#[derive(Debug)]
pub struct ClientTransaction {
    method: Method,
    state: TxState,
    request: Request,
    wire: Bytes,
    branch: String,
    reliable: bool,
    /// Timer A or E.
    retransmit_at: Option<Instant>,
    retransmit_interval: Duration,
    /// Timer B or F.
    timeout_at: Option<Instant>,
    /// Timer D or K.
    terminate_at: Option<Instant>,
    /// The ACK for a non-2xx final, resent for each retransmitted final.
    ack: Option<Bytes>,
    transmit: VecDeque<Bytes>,
    events: VecDeque<TxEvent>,
}

impl ClientTransaction {
    /// Starts the transaction: the request is queued for sending at once.
    pub fn new(request: Request, transport: Transport, now: Instant) -> Self {
        let wire = message::to_bytes(request.clone());
        let branch = message::top_via_branch(&request).unwrap_or_default();
        let reliable = transport.is_reliable();
        let method = request.method;
        let state = if method == Method::Invite {
            TxState::Calling
        } else {
            TxState::Trying
        };
        let mut tx = ClientTransaction {
            method,
            state,
            request,
            wire: wire.clone(),
            branch,
            reliable,
            // Reliable transports do the retransmitting themselves (17.1.1.2).
            retransmit_at: (!reliable).then(|| now + T1),
            retransmit_interval: T1,
            timeout_at: Some(now + TIMEOUT),
            terminate_at: None,
            ack: None,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        };
        tx.transmit.push_back(wire);
        tracing::debug!(method = %tx.method, branch = %tx.branch, "client transaction started");
        tx
    }

    pub fn state(&self) -> TxState {
        self.state
    }

    pub fn is_terminated(&self) -> bool {
        self.state == TxState::Terminated
    }

    pub fn branch(&self) -> &str {
        &self.branch
    }

    pub fn request(&self) -> &Request {
        &self.request
    }

    /// RFC 3261 17.1.3: a response belongs to this transaction when its top
    /// Via branch and its CSeq method match the request's.
    pub fn matches(&self, resp: &Response) -> bool {
        let method_ok = message::cseq(resp).is_ok_and(|(_, m)| m == self.method);
        method_ok && message::top_via_branch(resp).as_deref() == Some(self.branch.as_str())
    }

    pub fn handle_response(&mut self, resp: Response, now: Instant) {
        let code = message::status_code(&resp);
        let is_invite = self.method == Method::Invite;
        match (self.state, code) {
            (TxState::Terminated, _) => {}
            (TxState::Completed, 200..=699) => {
                // A retransmitted final: our ACK got lost (INVITE), or nothing to do.
                if let Some(ack) = &self.ack {
                    self.transmit.push_back(ack.clone());
                }
            }
            (TxState::Completed, _) => {}
            (_, 100..=199) => {
                if matches!(self.state, TxState::Calling | TxState::Trying) {
                    self.set_state(TxState::Proceeding);
                }
                if is_invite {
                    // 17.1.1.2: a provisional stops retransmissions and Timer B.
                    self.retransmit_at = None;
                    self.timeout_at = None;
                }
                self.events.push_back(TxEvent::Response(resp));
            }
            (_, 200..=299) if is_invite => {
                // The TU acknowledges a 2xx itself (it belongs to the dialog).
                self.events.push_back(TxEvent::Response(resp));
                self.terminate();
            }
            (_, 200..=699) => {
                if is_invite {
                    let ack = message::to_bytes(message::ack_for_non_2xx(&self.request, &resp));
                    self.transmit.push_back(ack.clone());
                    self.ack = Some(ack);
                }
                self.events.push_back(TxEvent::Response(resp));
                self.retransmit_at = None;
                self.timeout_at = None;
                let linger = match (self.reliable, is_invite) {
                    (true, _) => Duration::ZERO,
                    (false, true) => TIMER_D,
                    (false, false) => T4,
                };
                self.set_state(TxState::Completed);
                if linger.is_zero() {
                    self.terminate();
                } else {
                    self.terminate_at = Some(now + linger);
                }
            }
            _ => {}
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.timeout_at.is_some_and(|t| t <= now) {
            tracing::debug!(method = %self.method, branch = %self.branch, "client transaction timed out");
            self.events.push_back(TxEvent::Timeout);
            self.terminate();
            return;
        }
        if self.terminate_at.is_some_and(|t| t <= now) {
            self.terminate();
            return;
        }
        if let Some(at) = self.retransmit_at.filter(|t| *t <= now) {
            self.transmit.push_back(self.wire.clone());
            self.retransmit_interval = if self.method == Method::Invite {
                // Timer A doubles without a cap.
                self.retransmit_interval * 2
            } else if self.state == TxState::Proceeding {
                T2
            } else {
                (self.retransmit_interval * 2).min(T2)
            };
            // Scheduled from the deadline, not from `now`, so a late tick
            // does not shift every later retransmission.
            self.retransmit_at = Some(at + self.retransmit_interval);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.retransmit_at, self.timeout_at, self.terminate_at]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmit.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<TxEvent> {
        self.events.pop_front()
    }

    fn set_state(&mut self, state: TxState) {
        if self.state != state {
            tracing::trace!(method = %self.method, branch = %self.branch, from = ?self.state, to = ?state, "transaction state");
            self.state = state;
        }
    }

    fn terminate(&mut self) {
        self.set_state(TxState::Terminated);
        self.retransmit_at = None;
        self.timeout_at = None;
        self.terminate_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{build_request, build_response, RequestParts, ResponseParts};
    use rsip::SipMessage;

    fn request(method: Method) -> Request {
        build_request(RequestParts {
            method,
            uri: "sip:bob@192.0.2.2:5060",
            via: message::via_value("192.0.2.1", 5060, Transport::Udp, &message::new_branch()),
            from: "<sip:gw@192.0.2.1>;tag=f",
            to: "<sip:bob@192.0.2.2>",
            call_id: "cid",
            cseq: 1,
            contact: None,
            routes: &[],
            user_agent: "t",
            body: None,
            extra: vec![],
        })
        .unwrap()
    }

    fn response(req: &Request, code: u16) -> Response {
        build_response(
            req,
            code,
            ResponseParts {
                to_tag: Some("tt"),
                ..Default::default()
            },
        )
    }

    fn drain(tx: &mut ClientTransaction) -> Vec<Bytes> {
        std::iter::from_fn(|| tx.poll_transmit()).collect()
    }

    /// Runs the clock from `t0` by following `poll_timeout`, recording the
    /// offset of every transmission, until `until` or termination.
    fn run(tx: &mut ClientTransaction, t0: Instant, until: Duration) -> Vec<Duration> {
        let mut sent = vec![];
        while let Some(at) = tx.poll_timeout() {
            if at > t0 + until {
                break;
            }
            tx.handle_timeout(at);
            for _ in drain(tx) {
                sent.push(at - t0);
            }
        }
        sent
    }

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|m| Duration::from_millis(*m)).collect()
    }

    #[test]
    fn invite_timer_a_doubles_and_timer_b_times_out() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(request(Method::Invite), Transport::Udp, t0);
        assert_eq!(drain(&mut tx).len(), 1);
        let sent = run(&mut tx, t0, Duration::from_secs(40));
        assert_eq!(sent, ms(&[500, 1500, 3500, 7500, 15500, 31500]));
        assert_eq!(tx.poll_event(), Some(TxEvent::Timeout));
        assert!(tx.is_terminated());
        assert_eq!(tx.poll_timeout(), None);
    }

    #[test]
    fn invite_over_tcp_never_retransmits_but_times_out() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(request(Method::Invite), Transport::Tcp, t0);
        assert_eq!(drain(&mut tx).len(), 1);
        assert_eq!(tx.poll_timeout(), Some(t0 + Duration::from_secs(32)));
        assert!(run(&mut tx, t0, Duration::from_secs(40)).is_empty());
        assert_eq!(tx.poll_event(), Some(TxEvent::Timeout));
    }

    #[test]
    fn provisional_stops_retransmission_and_non_2xx_is_acked_with_timer_d() {
        let t0 = Instant::now();
        let req = request(Method::Invite);
        let mut tx = ClientTransaction::new(req.clone(), Transport::Udp, t0);
        drain(&mut tx);
        tx.handle_timeout(t0 + T1);
        assert_eq!(drain(&mut tx).len(), 1);
        let ringing = response(&req, 180);
        assert!(tx.matches(&ringing));
        tx.handle_response(ringing, t0 + Duration::from_millis(600));
        assert_eq!(tx.state(), TxState::Proceeding);
        assert_eq!(tx.poll_timeout(), None);
        assert!(
            matches!(tx.poll_event(), Some(TxEvent::Response(r)) if r.status_code.code() == 180)
        );

        let busy = response(&req, 486);
        let t1 = t0 + Duration::from_secs(5);
        tx.handle_response(busy.clone(), t1);
        let acks = drain(&mut tx);
        assert_eq!(acks.len(), 1);
        let SipMessage::Request(ack) = message::parse(&acks[0]).unwrap() else {
            panic!()
        };
        assert_eq!(ack.method, Method::Ack);
        assert_eq!(message::cseq(&ack).unwrap(), (1, Method::Ack));
        assert_eq!(message::top_via_branch(&ack), message::top_via_branch(&req));
        assert_eq!(message::to_tag(&ack).as_deref(), Some("tt"));
        assert!(
            matches!(tx.poll_event(), Some(TxEvent::Response(r)) if r.status_code.code() == 486)
        );
        // A retransmitted 486 is ACKed again and not passed up.
        tx.handle_response(busy, t1 + Duration::from_secs(1));
        assert_eq!(drain(&mut tx), acks);
        assert_eq!(tx.poll_event(), None);
        assert_eq!(tx.poll_timeout(), Some(t1 + Duration::from_secs(32)));
        tx.handle_timeout(t1 + Duration::from_secs(32));
        assert!(tx.is_terminated());
    }

    #[test]
    fn invite_2xx_goes_to_the_tu_and_terminates() {
        let t0 = Instant::now();
        let req = request(Method::Invite);
        let mut tx = ClientTransaction::new(req.clone(), Transport::Udp, t0);
        drain(&mut tx);
        tx.handle_response(response(&req, 200), t0 + Duration::from_millis(100));
        assert!(drain(&mut tx).is_empty(), "the 2xx ACK is the TU's job");
        assert!(
            matches!(tx.poll_event(), Some(TxEvent::Response(r)) if r.status_code.code() == 200)
        );
        assert!(tx.is_terminated());
        let mut other = response(&req, 200);
        other.headers.retain(|h| !matches!(h, rsip::Header::Via(_)));
        other.headers.push(rsip::Header::Via(
            "SIP/2.0/UDP h;branch=z9hG4bKother".into(),
        ));
        assert!(!tx.matches(&other));
    }

    #[test]
    fn non_invite_timer_e_caps_at_t2_and_timer_f_times_out() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(request(Method::Bye), Transport::Udp, t0);
        drain(&mut tx);
        let sent = run(&mut tx, t0, Duration::from_secs(40));
        assert_eq!(
            sent,
            ms(&[500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500])
        );
        assert_eq!(tx.poll_event(), Some(TxEvent::Timeout));
        assert!(tx.is_terminated());
    }

    #[test]
    fn non_invite_proceeding_retransmits_every_t2_and_final_waits_timer_k() {
        let t0 = Instant::now();
        let req = request(Method::Bye);
        let mut tx = ClientTransaction::new(req.clone(), Transport::Udp, t0);
        drain(&mut tx);
        tx.handle_response(response(&req, 100), t0 + Duration::from_millis(100));
        assert_eq!(tx.state(), TxState::Proceeding);
        let sent = run(&mut tx, t0, Duration::from_secs(10));
        assert_eq!(sent, ms(&[500, 4500, 8500]));
        tx.poll_event();
        let t1 = t0 + Duration::from_secs(10);
        tx.handle_response(response(&req, 200), t1);
        assert!(
            matches!(tx.poll_event(), Some(TxEvent::Response(r)) if r.status_code.code() == 200)
        );
        assert_eq!(tx.state(), TxState::Completed);
        assert_eq!(tx.poll_timeout(), Some(t1 + T4));
        tx.handle_response(response(&req, 200), t1 + Duration::from_secs(1));
        assert_eq!(tx.poll_event(), None);
        tx.handle_timeout(t1 + T4);
        assert!(tx.is_terminated());
    }

    #[test]
    fn non_invite_over_tcp_terminates_at_once_on_final() {
        let t0 = Instant::now();
        let req = request(Method::Cancel);
        let mut tx = ClientTransaction::new(req.clone(), Transport::Tcp, t0);
        drain(&mut tx);
        assert_eq!(tx.poll_timeout(), Some(t0 + TIMEOUT));
        tx.handle_response(response(&req, 200), t0);
        assert!(tx.is_terminated());
        assert_eq!(tx.poll_timeout(), None);
    }
}
