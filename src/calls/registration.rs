//! Registration to trunks: one task per trunk with `register = true` drives a
//! [`Registration`](crate::sip::register::Registration) over the SIP
//! endpoint and writes its state here, where `/metrics`, the stats page and
//! the log read it. At shutdown the tasks remove their bindings.

use super::call::{uri_host, SipLocal};
use super::directory::Trunk;
use crate::sip::auth::DigestCredentials;
use crate::sip::register::{RegEvent, RegState, RegisterConfig, Registration, MAX_EXPIRES};
use crate::sip::transport::SipEndpoint;
use crate::sip::Transport;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, info_span, warn, Instrument};

/// How long shutdown waits for the registrar to confirm an unregistration
/// (best effort: an unconfirmed binding expires by itself).
pub const UNREGISTER_WAIT: Duration = Duration::from_secs(2);
/// Between attempts to resolve a trunk's host that did not resolve.
const RESOLVE_RETRY: Duration = Duration::from_secs(30);

/// One registering trunk as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegStatus {
    pub state: RegState,
    /// Failed attempts since the start.
    pub failures: u64,
}

/// The registration state of every registering trunk, by name.
#[derive(Debug, Default)]
pub struct TrunkRegistrations {
    trunks: RwLock<BTreeMap<String, RegStatus>>,
}

impl TrunkRegistrations {
    fn set(&self, name: &str, status: RegStatus) {
        if let Ok(mut t) = self.trunks.write() {
            t.insert(name.to_string(), status);
        }
    }

    pub fn get(&self, name: &str) -> Option<RegStatus> {
        self.trunks.read().ok()?.get(name).cloned()
    }

    pub fn all(&self) -> Vec<(String, RegStatus)> {
        self.trunks
            .read()
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    pub fn render_prometheus(&self, out: &mut String) {
        let all = self.all();
        let _ = writeln!(
            out,
            "# HELP gateway_trunk_registered Whether the trunk's registrar accepted the gateway's last REGISTER (1) or not (0); trunks with register = true only.\n# TYPE gateway_trunk_registered gauge"
        );
        for (name, status) in &all {
            let registered = matches!(status.state, RegState::Registered { .. });
            let _ = writeln!(
                out,
                "gateway_trunk_registered{{trunk=\"{}\"}} {}",
                label(name),
                u8::from(registered)
            );
        }
        let _ = writeln!(
            out,
            "# HELP gateway_trunk_registration_failures_total REGISTER attempts to the trunk that failed (refused, unanswered or not sent).\n# TYPE gateway_trunk_registration_failures_total counter"
        );
        for (name, status) in &all {
            let _ = writeln!(
                out,
                "gateway_trunk_registration_failures_total{{trunk=\"{}\"}} {}",
                label(name),
                status.failures
            );
        }
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The registration tasks, to stop them at shutdown.
#[derive(Debug)]
pub struct Registrars {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Registrars {
    pub fn new() -> (Registrars, watch::Receiver<bool>) {
        let (stop, stopped) = watch::channel(false);
        (
            Registrars {
                stop,
                tasks: JoinSet::new(),
            },
            stopped,
        )
    }

    pub fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Asks every task to unregister and waits for them, at most `wait`.
    pub async fn stop(mut self, wait: Duration) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(wait, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
    }
}

/// Keeps `trunk` registered until `stop` turns true (then unregisters) or
/// the endpoint closes.
pub async fn run(
    trunk: Arc<Trunk>,
    sip: SipEndpoint,
    local: SipLocal,
    status: Arc<TrunkRegistrations>,
    stop: watch::Receiver<bool>,
) {
    let span = info_span!("registration", trunk = %trunk.name);
    drive(trunk, sip, local, status, stop)
        .instrument(span)
        .await
}

async fn drive(
    trunk: Arc<Trunk>,
    sip: SipEndpoint,
    local: SipLocal,
    status: Arc<TrunkRegistrations>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(expires) = trunk.register else {
        return;
    };
    let (Some(username), Some(password)) = (trunk.username.clone(), trunk.password.clone()) else {
        warn!("register = true without username and password: not registering");
        return;
    };
    let Some(destination) = resolve(&trunk, &status, &mut stop).await else {
        return;
    };
    let host = uri_host(&trunk.uri.host);
    let cfg = RegisterConfig {
        registrar_uri: format!("sip:{host}:{}", trunk.uri.port),
        aor: format!("sip:{username}@{host}"),
        contact: local.contact(&username),
        via_host: local.host.clone(),
        via_port: local.port,
        transport: local.transport,
        call_id: crate::sip::message::new_call_id(),
        credentials: DigestCredentials { username, password },
        expires: u32::try_from(expires.as_secs())
            .unwrap_or(MAX_EXPIRES)
            .min(MAX_EXPIRES),
        user_agent: crate::sip::uas::USER_AGENT.into(),
    };
    let mut log = EventLog::default();
    keep_binding(
        Registration::new(cfg, Instant::now()),
        &sip,
        destination,
        async move {
            // A closed channel (the handle dropped) means stop as well.
            let _ = stop.changed().await;
        },
        |reg| {
            while let Some(event) = reg.poll_event() {
                log.event(&event);
            }
            status.set(
                &trunk.name,
                RegStatus {
                    state: reg.state().clone(),
                    failures: reg.failures(),
                },
            );
        },
    )
    .await;
}

/// Drives one binding until `unregister` resolves, then removes it (waiting
/// at most [`UNREGISTER_WAIT`] for the registrar's answer), or until the
/// endpoint closes. `observe` runs after every step: it drains the events
/// and reads the state. Shared by trunk registration and the cluster's
/// per-account bindings.
pub(crate) async fn keep_binding(
    mut reg: Registration,
    sip: &SipEndpoint,
    destination: SocketAddr,
    unregister: impl std::future::Future<Output = ()>,
    mut observe: impl FnMut(&mut Registration),
) {
    let call_id = reg.call_id().to_string();
    let transport = reg.transport();
    let mut messages = sip.register_call(&call_id);
    let mut unregister_by = None;
    tokio::pin!(unregister);
    loop {
        send_all(&mut reg, sip, destination, transport).await;
        observe(&mut reg);
        if *reg.state() == RegState::Unregistered {
            break;
        }
        let deadline = match (reg.poll_timeout(), unregister_by) {
            (Some(at), Some(by)) => at.min(by),
            (Some(at), None) => at,
            (None, Some(by)) => by,
            // Nothing scheduled (cannot happen while registering): wait for
            // a message or the stop.
            (None, None) => Instant::now() + Duration::from_secs(3600),
        };
        tokio::select! {
            msg = messages.recv() => match msg {
                Some(m) => reg.handle_message(m.msg, Instant::now()),
                None => break,
            },
            _ = tokio::time::sleep_until(deadline.into()) => {
                let now = Instant::now();
                if unregister_by.is_some_and(|by| now >= by) {
                    info!("unregistration unanswered; the binding expires by itself");
                    break;
                }
                reg.handle_timeout(now);
            }
            _ = &mut unregister, if unregister_by.is_none() => {
                let now = Instant::now();
                unregister_by = Some(now + UNREGISTER_WAIT);
                reg.unregister(now);
            }
        }
    }
    sip.unregister_call(&call_id);
}

/// Sends what the registration queued; a send that fails fails the attempt.
async fn send_all(
    reg: &mut Registration,
    sip: &SipEndpoint,
    destination: SocketAddr,
    transport: Transport,
) {
    while let Some(bytes) = reg.poll_transmit() {
        if let Err(e) = sip.send(destination, transport, bytes).await {
            debug!(error = %e, "REGISTER not sent");
            reg.handle_transport_error(Instant::now());
        }
    }
}

/// The trunk's address, retried until it resolves or the gateway stops.
async fn resolve(
    trunk: &Trunk,
    status: &TrunkRegistrations,
    stop: &mut watch::Receiver<bool>,
) -> Option<SocketAddr> {
    let mut failures = 0;
    loop {
        let found = tokio::net::lookup_host((trunk.uri.host.as_str(), trunk.uri.port))
            .await
            .ok()
            .and_then(|mut a| a.next());
        if found.is_some() {
            return found;
        }
        failures += 1;
        if failures == 1 {
            warn!(host = %trunk.uri.host, "trunk does not resolve: not registered; retrying every {}s", RESOLVE_RETRY.as_secs());
        }
        status.set(
            &trunk.name,
            RegStatus {
                state: RegState::Failed {
                    failure: crate::sip::register::Failure {
                        code: 503,
                        reason: "the trunk's host does not resolve".into(),
                    },
                    retry_at: Instant::now() + RESOLVE_RETRY,
                },
                failures,
            },
        );
        tokio::select! {
            _ = tokio::time::sleep(RESOLVE_RETRY) => {}
            _ = stop.changed() => return None,
        }
    }
}

/// Logs each change of state once: a failure repeating with the same status
/// goes to debug, so a long outage is one warning, not one per retry.
#[derive(Debug, Default)]
struct EventLog {
    failing_with: Option<u16>,
}

impl EventLog {
    fn event(&mut self, event: &RegEvent) {
        match event {
            RegEvent::Registered { expires } => {
                self.failing_with = None;
                info!(expires_s = expires.as_secs(), "registered with the trunk");
            }
            RegEvent::Refreshed { expires } => {
                debug!(
                    expires_s = expires.as_secs(),
                    "registration with the trunk refreshed"
                );
            }
            RegEvent::Failed {
                failure,
                retry_in,
                consecutive,
            } => {
                if self.failing_with == Some(failure.code) {
                    debug!(code = failure.code, reason = %failure.reason, retry_in_s = retry_in.as_secs(),
                        consecutive, "registration still failing");
                } else {
                    self.failing_with = Some(failure.code);
                    warn!(code = failure.code, reason = %failure.reason, retry_in_s = retry_in.as_secs(),
                        consecutive, "registration with the trunk failed");
                }
            }
            RegEvent::Unregistered { removed: true } => info!("unregistered from the trunk"),
            RegEvent::Unregistered { removed: false } => {
                info!("unregistration refused; the binding expires by itself")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::register::Failure;

    #[test]
    fn state_and_metrics() {
        let r = TrunkRegistrations::default();
        r.set(
            "a",
            RegStatus {
                state: RegState::Registered {
                    expires: Duration::from_secs(60),
                },
                failures: 2,
            },
        );
        r.set(
            "b\"x",
            RegStatus {
                state: RegState::Failed {
                    failure: Failure {
                        code: 403,
                        reason: "Forbidden".into(),
                    },
                    retry_at: Instant::now(),
                },
                failures: 1,
            },
        );
        let mut out = String::new();
        r.render_prometheus(&mut out);
        assert!(
            out.contains("gateway_trunk_registered{trunk=\"a\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("gateway_trunk_registered{trunk=\"b\\\"x\"} 0\n"),
            "{out}"
        );
        assert!(out.contains("gateway_trunk_registration_failures_total{trunk=\"a\"} 2\n"));
        assert!(out.contains("gateway_trunk_registration_failures_total{trunk=\"b\\\"x\"} 1\n"));
        assert_eq!(out.matches("# TYPE").count(), 2);
        assert_eq!(r.get("a").map(|s| s.failures), Some(2));
        assert!(r.get("c").is_none());
    }
}
