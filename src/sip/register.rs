//! Registration with a trunk's registrar (RFC 3261 section 10), sans-IO.
//!
//! One [`Registration`] keeps one binding (our Contact for the trunk's
//! address of record) alive: it REGISTERs, answers 401/407 with digest
//! credentials, follows a 423's Min-Expires, refreshes before the granted
//! expiry and, after a failure, retries with a growing back-off. Every
//! REGISTER of the binding carries the same Call-ID and a CSeq one higher
//! than the one before (RFC 3261 10.2.4), so the registrar can tell a
//! refresh from a stale retransmission. [`Registration::unregister`] removes
//! the binding (`Expires: 0`) at shutdown.
//!
//! Inputs: `handle_timeout`, `handle_message` (responses with this Call-ID),
//! `handle_transport_error`, `unregister`, each with an explicit `Instant`.
//! Outputs: `poll_transmit`, `poll_event`, `poll_timeout`; `state` says
//! where it stands.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rsip::{Header, Method, Response, SipMessage};

use super::auth::{Challenge, DigestClient, DigestCredentials};
use super::message::{self, RequestParts};
use super::transaction::{ClientTransaction, TxEvent};
use super::Transport;

/// Challenges answered per attempt: a registrar that answers every try with
/// a fresh nonce must not keep us in a loop.
const MAX_AUTH_RETRIES: usize = 3;
/// 423 Interval Too Brief retries per attempt (one is enough for a sane
/// registrar; a second covers one that raised its minimum meanwhile).
const MAX_INTERVAL_RETRIES: usize = 2;
/// The longest expiry a 423 may push us to (a day, as `register_expires`).
pub const MAX_EXPIRES: u32 = 86_400;
/// A refresh goes out this long before the binding expires, or at half its
/// lifetime when that is shorter: time for a timed-out refresh (32 s) and a
/// few back-off retries before the registrar forgets us.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// Never refresh sooner than this after a 2xx, whatever a registrar grants.
const MIN_REFRESH: Duration = Duration::from_secs(1);
/// The first retry after a failure: short, because most failures are a lost
/// burst of packets or a registrar restarting.
const FIRST_RETRY: Duration = Duration::from_secs(10);
/// The second retry; each later one doubles it, up to [`MAX_RETRY`].
const SECOND_RETRY: Duration = Duration::from_secs(30);
const MAX_RETRY: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, Clone)]
pub struct RegisterConfig {
    /// The registrar, `sip:{trunk host}:{port}` (RFC 3261 10.2: the
    /// Request-URI names the domain, no user part).
    pub registrar_uri: String,
    /// The address of record, `sip:{username}@{trunk host}`: To and From.
    pub aor: String,
    /// Our binding, `<sip:{username}@{our host}:{port};transport=udp>`.
    pub contact: String,
    pub via_host: String,
    pub via_port: u16,
    pub transport: Transport,
    /// One Call-ID for every REGISTER of this binding.
    pub call_id: String,
    pub credentials: DigestCredentials,
    /// The expiry asked for, in seconds (`register_expires`).
    pub expires: u32,
    pub user_agent: String,
}

/// Why an attempt failed, as an operator reads it: a SIP status (408 for no
/// answer, 503 for a transport error, RFC 3261 8.1.3.1) and a reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: u16,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegState {
    /// The first REGISTER is out, or about to go.
    Registering,
    /// The last REGISTER was accepted for `expires`.
    Registered { expires: Duration },
    /// The last attempt failed; the next goes at `retry_at`.
    Failed { failure: Failure, retry_at: Instant },
    /// After [`Registration::unregister`]: the binding is removed, or we
    /// gave up on removing it.
    Unregistered,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegEvent {
    /// Accepted, the first time or again after a failure.
    Registered { expires: Duration },
    /// A refresh was accepted while registered.
    Refreshed { expires: Duration },
    /// An attempt failed (each one); `consecutive` counts them since the
    /// last success.
    Failed {
        failure: Failure,
        retry_in: Duration,
        consecutive: u32,
    },
    /// The REGISTER with `Expires: 0` got its final answer: `removed` when
    /// the registrar accepted it (otherwise the binding expires by itself).
    Unregistered { removed: bool },
}

/// The REGISTER in flight and what this attempt has tried so far.
#[derive(Debug)]
struct Attempt {
    tx: ClientTransaction,
    /// What this REGISTER asks (0 to unregister).
    expires: u32,
    /// Nonces answered in this attempt: the same one challenged again
    /// (without `stale=true`) means the credentials are wrong.
    answered_nonces: Vec<String>,
    /// The challenge last answered, to authorise a 423 retry up front.
    challenge: Option<(Challenge, bool)>,
    interval_retries: usize,
}

#[derive(Debug)]
pub struct Registration {
    cfg: RegisterConfig,
    from_tag: String,
    cseq: u32,
    digest: DigestClient,
    attempt: Option<Attempt>,
    /// When the next attempt (refresh or retry) starts; `None` while one is
    /// in flight or after unregistering.
    next_at: Option<Instant>,
    state: RegState,
    /// Until when the registrar holds our binding, as far as we know.
    bound_until: Option<Instant>,
    consecutive_failures: u32,
    failures: u64,
    unregistering: bool,
    transmit: VecDeque<Bytes>,
    events: VecDeque<RegEvent>,
}

impl Registration {
    /// The first REGISTER goes out at `first_at`.
    pub fn new(cfg: RegisterConfig, first_at: Instant) -> Self {
        Registration {
            cfg,
            from_tag: message::new_tag(),
            cseq: 0,
            digest: DigestClient::new(),
            attempt: None,
            next_at: Some(first_at),
            state: RegState::Registering,
            bound_until: None,
            consecutive_failures: 0,
            failures: 0,
            unregistering: false,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn state(&self) -> &RegState {
        &self.state
    }

    /// Failed attempts since the start.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    pub fn call_id(&self) -> &str {
        &self.cfg.call_id
    }

    /// The transport the REGISTERs go over.
    pub fn transport(&self) -> Transport {
        self.cfg.transport
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(attempt) = self.attempt.as_mut() {
            attempt.tx.handle_timeout(now);
            self.drain(now);
        }
        if self.attempt.is_none() && self.next_at.is_some_and(|at| at <= now) {
            self.next_at = None;
            self.start_attempt(self.cfg.expires, now);
        }
    }

    pub fn handle_message(&mut self, msg: SipMessage, now: Instant) {
        let SipMessage::Response(resp) = msg else {
            return;
        };
        if let Some(attempt) = self.attempt.as_mut().filter(|a| a.tx.matches(&resp)) {
            attempt.tx.handle_response(resp, now);
            self.drain(now);
        }
    }

    /// The REGISTER could not be sent (a TCP connection refused): the
    /// attempt fails as a 503 would (RFC 3261 8.1.3.1).
    pub fn handle_transport_error(&mut self, now: Instant) {
        if self.attempt.take().is_some() {
            self.fail(
                Failure {
                    code: 503,
                    reason: "transport error".into(),
                },
                now,
            );
        }
    }

    /// Removes the binding: a REGISTER with `Expires: 0` when the registrar
    /// may hold one, then [`RegEvent::Unregistered`]; when it cannot, the
    /// state is [`RegState::Unregistered`] at once, without an event. A
    /// REGISTER in flight is abandoned (its binding is removed with it).
    pub fn unregister(&mut self, now: Instant) {
        if self.unregistering {
            return;
        }
        self.unregistering = true;
        self.next_at = None;
        let in_flight = self.attempt.take().is_some();
        let bound = self.bound_until.is_some_and(|until| until > now);
        if in_flight || bound {
            self.start_attempt(0, now);
        } else {
            self.finish_unregister(None);
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmit.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<RegEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let tx = self.attempt.as_ref().and_then(|a| a.tx.poll_timeout());
        [tx, self.next_at].into_iter().flatten().min()
    }

    fn start_attempt(&mut self, expires: u32, now: Instant) {
        let attempt = Attempt {
            tx: match self.build_register(expires, None) {
                Ok(request) => ClientTransaction::new(request, self.cfg.transport, now),
                Err(e) => {
                    // The registrar URI was checked by check-config; say so
                    // rather than retry nothing in silence.
                    self.fail(
                        Failure {
                            code: 500,
                            reason: format!("cannot build REGISTER: {e}"),
                        },
                        now,
                    );
                    return;
                }
            },
            expires,
            answered_nonces: Vec::new(),
            challenge: None,
            interval_retries: 0,
        };
        self.attempt = Some(attempt);
        self.drain(now);
    }

    /// Sends the attempt's REGISTER again (new CSeq, new branch) with
    /// `expires` and an optional Authorization / Proxy-Authorization.
    fn resend(&mut self, expires: u32, auth: Option<Header>, now: Instant) -> bool {
        let request = match self.build_register(expires, auth) {
            Ok(r) => r,
            Err(_) => return false,
        };
        let Some(attempt) = self.attempt.as_mut() else {
            return false;
        };
        attempt.expires = expires;
        attempt.tx = ClientTransaction::new(request, self.cfg.transport, now);
        true
    }

    fn build_register(
        &mut self,
        expires: u32,
        auth: Option<Header>,
    ) -> Result<rsip::Request, super::SipError> {
        self.cseq += 1;
        let from = format!("<{}>;tag={}", self.cfg.aor, self.from_tag);
        let to = format!("<{}>", self.cfg.aor);
        let mut extra = vec![Header::Expires(expires.to_string().into())];
        extra.extend(auth);
        message::build_request(RequestParts {
            method: Method::Register,
            uri: &self.cfg.registrar_uri,
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
            contact: Some(&self.cfg.contact),
            routes: &[],
            user_agent: &self.cfg.user_agent,
            body: None,
            extra,
        })
    }

    /// Moves the transaction's bytes out and acts on its outcome.
    fn drain(&mut self, now: Instant) {
        let Some(attempt) = self.attempt.as_mut() else {
            return;
        };
        while let Some(bytes) = attempt.tx.poll_transmit() {
            self.transmit.push_back(bytes);
        }
        // The transaction reports at most one final outcome.
        let mut final_response = None;
        let mut timed_out = false;
        while let Some(event) = attempt.tx.poll_event() {
            match event {
                TxEvent::Response(resp) if message::status_code(&resp) >= 200 => {
                    final_response = Some(resp);
                }
                TxEvent::Response(_) => {}
                TxEvent::Timeout => timed_out = true,
            }
        }
        if let Some(resp) = final_response {
            self.handle_final(resp, now);
        } else if timed_out {
            self.attempt = None;
            self.fail(
                Failure {
                    code: 408,
                    reason: "no answer from the registrar".into(),
                },
                now,
            );
        }
        // A retry started above queued its REGISTER.
        if let Some(attempt) = self.attempt.as_mut() {
            while let Some(bytes) = attempt.tx.poll_transmit() {
                self.transmit.push_back(bytes);
            }
        }
    }

    fn handle_final(&mut self, resp: Response, now: Instant) {
        let code = message::status_code(&resp);
        let Some(asked) = self.attempt.as_ref().map(|a| a.expires) else {
            return;
        };
        match code {
            200..=299 => {
                self.attempt = None;
                if self.unregistering {
                    self.finish_unregister(Some(true));
                } else {
                    self.registered(granted_expiry(&resp, &self.cfg.contact, asked), now);
                }
                return;
            }
            401 | 407 => {
                if let Some(auth) = self.answer_challenge(&resp) {
                    if self.resend(asked, Some(auth), now) {
                        return;
                    }
                }
            }
            423 if !self.unregistering => {
                if let Some(min) = self.longer_interval(&resp, asked) {
                    let auth = self.reauthorize();
                    if self.resend(min, auth, now) {
                        return;
                    }
                }
            }
            _ => {}
        }
        self.attempt = None;
        let mut reason = message::response_reason(&resp);
        if matches!(code, 401 | 407) {
            reason = format!("{reason} (credentials refused or challenge unanswerable)");
        }
        self.fail(Failure { code, reason }, now);
    }

    fn registered(&mut self, granted: u32, now: Instant) {
        if granted == 0 {
            // A 2xx that lists our contact with expires=0: the registrar
            // holds no binding for us.
            self.bound_until = None;
            self.fail(
                Failure {
                    code: 200,
                    reason: "the registrar granted no time (expires=0)".into(),
                },
                now,
            );
            return;
        }
        let expires = Duration::from_secs(u64::from(granted));
        self.bound_until = Some(now + expires);
        self.next_at = Some(now + refresh_after(expires));
        self.consecutive_failures = 0;
        let was_registered = matches!(self.state, RegState::Registered { .. });
        self.state = RegState::Registered { expires };
        self.events.push_back(if was_registered {
            RegEvent::Refreshed { expires }
        } else {
            RegEvent::Registered { expires }
        });
    }

    fn fail(&mut self, failure: Failure, now: Instant) {
        if self.unregistering {
            // Best effort: the binding will expire by itself.
            self.finish_unregister(Some(false));
            return;
        }
        self.failures += 1;
        self.consecutive_failures += 1;
        let retry_in = backoff(self.consecutive_failures);
        self.next_at = Some(now + retry_in);
        self.state = RegState::Failed {
            failure: failure.clone(),
            retry_at: now + retry_in,
        };
        self.events.push_back(RegEvent::Failed {
            failure,
            retry_in,
            consecutive: self.consecutive_failures,
        });
    }

    /// `answered`: `None` when no REGISTER went out, else whether the
    /// registrar accepted it.
    fn finish_unregister(&mut self, answered: Option<bool>) {
        self.attempt = None;
        self.next_at = None;
        self.bound_until = None;
        if self.state != RegState::Unregistered {
            self.state = RegState::Unregistered;
            if let Some(removed) = answered {
                self.events.push_back(RegEvent::Unregistered { removed });
            }
        }
    }

    /// The Min-Expires of a 423 when it is longer than what we asked and not
    /// absurd, and this attempt has retries left.
    fn longer_interval(&mut self, resp: &Response, asked: u32) -> Option<u32> {
        let attempt = self.attempt.as_mut()?;
        if attempt.interval_retries >= MAX_INTERVAL_RETRIES {
            return None;
        }
        let min = message::header_values(resp, "Min-Expires")
            .first()
            .and_then(|v| v.trim().parse::<u32>().ok())?;
        if min <= asked || min > MAX_EXPIRES {
            return None;
        }
        attempt.interval_retries += 1;
        Some(min)
    }

    /// The Authorization / Proxy-Authorization answering a 401/407, when
    /// this attempt may answer it: a usable challenge, retries left, and not
    /// a nonce answered before (unless `stale=true`).
    fn answer_challenge(&mut self, resp: &Response) -> Option<Header> {
        let (challenge, proxy) = super::auth::pick_challenge(resp)?;
        let attempt = self.attempt.as_mut()?;
        if attempt.answered_nonces.len() >= MAX_AUTH_RETRIES {
            return None;
        }
        if attempt.answered_nonces.contains(&challenge.nonce) && !challenge.stale {
            return None;
        }
        attempt.answered_nonces.push(challenge.nonce.clone());
        attempt.challenge = Some((challenge, proxy));
        self.reauthorize()
    }

    /// The answer to the attempt's last challenge for the next REGISTER
    /// (the nonce count goes up by one each time).
    fn reauthorize(&mut self) -> Option<Header> {
        let (challenge, proxy) = self.attempt.as_ref()?.challenge.clone()?;
        let value = self
            .digest
            .authorize(
                &self.cfg.credentials,
                &challenge,
                "REGISTER",
                &self.cfg.registrar_uri,
            )
            .map_err(|e| tracing::warn!(error = %e, "cannot answer the registrar's challenge"))
            .ok()?;
        Some(if proxy {
            Header::ProxyAuthorization(value.into())
        } else {
            Header::Authorization(value.into())
        })
    }
}

/// When to refresh a binding granted for `expires`: [`REFRESH_MARGIN`]
/// before it ends, or at half its life when that is earlier.
pub fn refresh_after(expires: Duration) -> Duration {
    let early = (expires / 2).min(REFRESH_MARGIN);
    (expires - early).max(MIN_REFRESH).min(expires)
}

/// The wait before retry number `consecutive` (1 = after the first failure).
pub fn backoff(consecutive: u32) -> Duration {
    match consecutive {
        0 | 1 => FIRST_RETRY,
        n => {
            let doublings = (n - 2).min(16);
            SECOND_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
        }
    }
}

/// The expiry a 2xx grants our binding (RFC 3261 10.2.4): the `expires`
/// parameter of our Contact in the response, else its Expires header, else
/// what we asked. Never more than we asked: refreshing at our own pace is
/// always safe, and it keeps a huge value from overflowing a deadline.
fn granted_expiry(resp: &Response, our_contact: &str, asked: u32) -> u32 {
    let ours = message::addr_uri(our_contact).map(|u| contact_key(&u));
    let from_contact = message::header_values(resp, "Contact")
        .iter()
        .flat_map(|v| message::split_top_level_commas(v))
        .find(|c| message::addr_uri(c).map(|u| contact_key(&u)) == ours)
        .and_then(|c| contact_param(&c, "expires"))
        .and_then(|v| v.parse::<u32>().ok());
    let header = || {
        message::header_values(resp, "Expires")
            .first()
            .and_then(|v| v.trim().parse::<u32>().ok())
    };
    from_contact.or_else(header).unwrap_or(asked).min(asked)
}

/// A contact URI as compared here: scheme, user, host and port, lower case,
/// without parameters (a registrar may add or reorder them).
fn contact_key(uri: &str) -> String {
    uri.split([';', '?'])
        .next()
        .unwrap_or(uri)
        .trim()
        .to_ascii_lowercase()
}

/// A header parameter of one Contact value (after the `>` of its URI).
fn contact_param(contact: &str, name: &str) -> Option<String> {
    let params = match contact.rfind('>') {
        Some(i) => &contact[i + 1..],
        None => contact.split_once(';').map_or("", |(_, p)| p),
    };
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

#[cfg(test)]
#[path = "register_tests.rs"]
mod tests;
