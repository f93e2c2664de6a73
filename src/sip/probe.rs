//! Trunk liveness: an OPTIONS request every `interval` (RFC 3261 11), sans-IO.
//!
//! Any final response, whatever its status (a trunk may well answer 404 or
//! 405 to OPTIONS), proves the trunk is there: it is up, with that round
//! trip. No final response within `answer_within` (the UDP retransmissions
//! of the client transaction included) marks it down. Only changes are
//! reported as events; [`OptionsProbe::health`] says the current state.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rsip::{Method, SipMessage};

use super::message::{self, RequestParts};
use super::transaction::{ClientTransaction, TxEvent};
use super::Transport;

#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// The trunk's URI, e.g. `sip:203.0.113.10:5060`.
    pub request_uri: String,
    /// `sip:gateway@{our host}`.
    pub from_uri: String,
    pub via_host: String,
    pub via_port: u16,
    pub transport: Transport,
    /// One Call-ID for every ping of this trunk (the endpoint routes the
    /// responses by it).
    pub call_id: String,
    pub user_agent: String,
    pub interval: Duration,
    /// How long a ping may go unanswered before the trunk is down.
    pub answer_within: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No ping answered or failed yet.
    Unknown,
    Up {
        rtt: Duration,
    },
    Down,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeEvent {
    /// The trunk answered (first time, or again after being down).
    Up { rtt: Duration },
    /// A ping went unanswered.
    Down,
}

#[derive(Debug)]
pub struct OptionsProbe {
    cfg: ProbeConfig,
    from_tag: String,
    cseq: u32,
    ping: Option<(ClientTransaction, Instant)>,
    next_at: Instant,
    health: Health,
    transmit: VecDeque<Bytes>,
    events: VecDeque<ProbeEvent>,
}

impl OptionsProbe {
    /// The first ping goes out at `first_at`.
    pub fn new(cfg: ProbeConfig, first_at: Instant) -> Self {
        OptionsProbe {
            cfg,
            from_tag: message::new_tag(),
            cseq: 0,
            ping: None,
            next_at: first_at,
            health: Health::Unknown,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn health(&self) -> Health {
        self.health
    }

    pub fn call_id(&self) -> &str {
        &self.cfg.call_id
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some((tx, sent)) = self.ping.as_mut() {
            if now >= *sent + self.cfg.answer_within {
                self.ping = None;
                self.set(Health::Down);
            } else {
                tx.handle_timeout(now);
                self.drain_tx(now);
            }
        }
        if self.ping.is_none() && now >= self.next_at {
            self.send_ping(now);
            self.next_at = now + self.cfg.interval;
        }
    }

    pub fn handle_message(&mut self, msg: SipMessage, now: Instant) {
        let SipMessage::Response(resp) = msg else {
            return;
        };
        if let Some((tx, _)) = self.ping.as_mut().filter(|(tx, _)| tx.matches(&resp)) {
            tx.handle_response(resp, now);
            self.drain_tx(now);
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmit.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ProbeEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let ping = self.ping.as_ref().map(|(tx, sent)| {
            let give_up = *sent + self.cfg.answer_within;
            tx.poll_timeout().map_or(give_up, |t| t.min(give_up))
        });
        Some(ping.map_or(self.next_at, |p| p.min(self.next_at)))
    }

    fn send_ping(&mut self, now: Instant) {
        self.cseq += 1;
        let from = format!("<{}>;tag={}", self.cfg.from_uri, self.from_tag);
        let to = format!("<{}>", self.cfg.request_uri);
        let request = message::build_request(RequestParts {
            method: Method::Options,
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
            cseq: self.cseq,
            contact: None,
            routes: &[],
            user_agent: &self.cfg.user_agent,
            body: None,
            extra: vec![rsip::Header::Accept("application/sdp".into())],
        });
        match request {
            Ok(request) => {
                self.ping = Some((
                    ClientTransaction::new(request, self.cfg.transport, now),
                    now,
                ));
                self.drain_tx(now);
            }
            Err(e) => {
                // A trunk URI that does not parse was refused by check-config;
                // say so rather than ping nothing.
                tracing::warn!(error = %e, "cannot build OPTIONS for the trunk");
                self.set(Health::Down);
            }
        }
    }

    fn drain_tx(&mut self, now: Instant) {
        let Some((tx, sent)) = self.ping.as_mut() else {
            return;
        };
        let sent = *sent;
        while let Some(bytes) = tx.poll_transmit() {
            self.transmit.push_back(bytes);
        }
        let mut outcome = None;
        while let Some(event) = tx.poll_event() {
            match event {
                TxEvent::Response(resp) if message::status_code(&resp) >= 200 => {
                    outcome = Some(Health::Up {
                        rtt: now.saturating_duration_since(sent),
                    });
                }
                TxEvent::Response(_) => {}
                TxEvent::Timeout => outcome = Some(Health::Down),
            }
        }
        if let Some(health) = outcome {
            self.ping = None;
            self.set(health);
        }
    }

    fn set(&mut self, health: Health) {
        let changed = !matches!(
            (self.health, health),
            (Health::Up { .. }, Health::Up { .. }) | (Health::Down, Health::Down)
        );
        self.health = health;
        if changed {
            self.events.push_back(match health {
                Health::Up { rtt } => ProbeEvent::Up { rtt },
                Health::Down | Health::Unknown => ProbeEvent::Down,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::ResponseParts;

    fn probe(now: Instant, transport: Transport) -> OptionsProbe {
        OptionsProbe::new(
            ProbeConfig {
                request_uri: "sip:192.0.2.10:5060".into(),
                from_uri: "sip:gateway@192.0.2.1".into(),
                via_host: "192.0.2.1".into(),
                via_port: 5060,
                transport,
                call_id: "probe-1".into(),
                user_agent: "test".into(),
                interval: Duration::from_secs(30),
                answer_within: Duration::from_secs(5),
            },
            now,
        )
    }

    fn answer(bytes: &Bytes, code: u16) -> SipMessage {
        let SipMessage::Request(req) = message::parse(bytes).unwrap() else {
            panic!("a request")
        };
        assert_eq!(req.method, Method::Options);
        SipMessage::Response(message::build_response(
            &req,
            code,
            ResponseParts::default(),
        ))
    }

    #[test]
    fn any_final_answer_is_up_and_silence_is_down() {
        let t0 = Instant::now();
        let mut p = probe(t0, Transport::Udp);
        assert_eq!(p.poll_timeout(), Some(t0));
        p.handle_timeout(t0);
        let ping = p.poll_transmit().expect("OPTIONS at once");
        assert_eq!(p.health(), Health::Unknown);
        // A 405 answer 40 ms later still proves the trunk is there.
        p.handle_message(answer(&ping, 405), t0 + Duration::from_millis(40));
        assert_eq!(
            p.poll_event(),
            Some(ProbeEvent::Up {
                rtt: Duration::from_millis(40)
            })
        );
        assert_eq!(p.poll_timeout(), Some(t0 + Duration::from_secs(30)));

        // The next ping goes unanswered: retransmitted (UDP), then down.
        let t1 = t0 + Duration::from_secs(30);
        p.handle_timeout(t1);
        assert!(p.poll_transmit().is_some());
        p.handle_timeout(t1 + Duration::from_millis(500));
        assert!(p.poll_transmit().is_some(), "Timer E retransmission");
        assert_eq!(p.poll_event(), None);
        p.handle_timeout(t1 + Duration::from_secs(5));
        assert_eq!(p.poll_event(), Some(ProbeEvent::Down));
        assert_eq!(p.health(), Health::Down);

        // It answers again at the next ping: up, one event.
        let t2 = t0 + Duration::from_secs(60);
        p.handle_timeout(t2);
        let ping = std::iter::from_fn(|| p.poll_transmit()).last().unwrap();
        p.handle_message(answer(&ping, 200), t2 + Duration::from_millis(3));
        assert_eq!(
            p.poll_event(),
            Some(ProbeEvent::Up {
                rtt: Duration::from_millis(3)
            })
        );
        assert_eq!(p.poll_event(), None);
    }

    #[test]
    fn a_provisional_or_foreign_response_is_not_an_answer() {
        let t0 = Instant::now();
        let mut p = probe(t0, Transport::Tcp);
        p.handle_timeout(t0);
        let ping = p.poll_transmit().unwrap();
        p.handle_message(answer(&ping, 100), t0);
        let mut other = probe(t0, Transport::Tcp);
        other.handle_timeout(t0);
        let foreign = other.poll_transmit().unwrap();
        p.handle_message(answer(&foreign, 200), t0);
        assert_eq!(p.poll_event(), None);
        assert_eq!(p.health(), Health::Unknown);
        p.handle_timeout(t0 + Duration::from_secs(5));
        assert_eq!(p.poll_event(), Some(ProbeEvent::Down));
    }
}
