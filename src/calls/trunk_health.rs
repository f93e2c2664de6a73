//! Which trunks answer: one OPTIONS prober task per trunk
//! ([`sip::probe`](crate::sip::probe)) writes here; outgoing calls to a trunk
//! that stopped answering fail at once with 503, and the stats page,
//! `/metrics` and the log show each trunk's state.

use super::directory::Trunk;
use crate::sip::probe::{Health, OptionsProbe, ProbeConfig, ProbeEvent};
use crate::sip::transport::SipEndpoint;
use crate::sip::Transport;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long a ping may go unanswered before its trunk is down.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub struct TrunkHealth {
    trunks: RwLock<BTreeMap<String, Health>>,
}

impl TrunkHealth {
    /// `name` is probed from now on (state unknown until the first answer).
    pub fn watch(&self, name: &str) {
        if let Ok(mut t) = self.trunks.write() {
            t.entry(name.to_string()).or_insert(Health::Unknown);
        }
    }

    fn set(&self, name: &str, health: Health) {
        if let Ok(mut t) = self.trunks.write() {
            t.insert(name.to_string(), health);
        }
    }

    /// The trunk is probed and its last ping went unanswered.
    pub fn is_down(&self, name: &str) -> bool {
        self.trunks
            .read()
            .is_ok_and(|t| t.get(name) == Some(&Health::Down))
    }

    /// Every probed trunk, by name.
    pub fn all(&self) -> Vec<(String, Health)> {
        self.trunks
            .read()
            .map(|t| t.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }

    pub fn render_prometheus(&self, out: &mut String) {
        let all = self.all();
        let _ = writeln!(
            out,
            "# HELP gateway_trunk_up Whether the trunk answered its last OPTIONS ping (1) or not (0); absent before the first.\n# TYPE gateway_trunk_up gauge"
        );
        for (name, health) in &all {
            match health {
                Health::Up { .. } => {
                    let _ = writeln!(out, "gateway_trunk_up{{trunk=\"{}\"}} 1", label(name));
                }
                Health::Down => {
                    let _ = writeln!(out, "gateway_trunk_up{{trunk=\"{}\"}} 0", label(name));
                }
                Health::Unknown => {}
            }
        }
        let _ = writeln!(
            out,
            "# HELP gateway_trunk_options_rtt_seconds Round trip of the trunk's last answered OPTIONS ping.\n# TYPE gateway_trunk_options_rtt_seconds gauge"
        );
        for (name, health) in &all {
            if let Health::Up { rtt } = health {
                let _ = writeln!(
                    out,
                    "gateway_trunk_options_rtt_seconds{{trunk=\"{}\"}} {}",
                    label(name),
                    rtt.as_secs_f64()
                );
            }
        }
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Where our side of the probes is (Via, From).
pub struct ProbeLocal {
    pub host: String,
    pub port: u16,
}

/// Pings `trunk` every `trunk.options_interval` until the endpoint closes.
pub async fn monitor(
    trunk: Arc<Trunk>,
    sip: SipEndpoint,
    local: ProbeLocal,
    health: Arc<TrunkHealth>,
) {
    let transport = Transport::from(trunk.uri.transport);
    let Some(destination) = tokio::net::lookup_host((trunk.uri.host.as_str(), trunk.uri.port))
        .await
        .ok()
        .and_then(|mut a| a.next())
    else {
        warn!(trunk = %trunk.name, "trunk does not resolve: not probed");
        return;
    };
    health.watch(&trunk.name);
    let call_id = crate::sip::message::new_call_id();
    let mut messages = sip.register_call(&call_id);
    let mut probe = OptionsProbe::new(
        ProbeConfig {
            request_uri: format!(
                "sip:{}:{}",
                super::call::uri_host(&trunk.uri.host),
                trunk.uri.port
            ),
            from_uri: format!("sip:gateway@{}", local.host),
            via_host: local.host,
            via_port: local.port,
            transport,
            call_id: call_id.clone(),
            user_agent: crate::sip::uas::USER_AGENT.into(),
            interval: trunk.options_interval,
            answer_within: ANSWER_WITHIN.min(trunk.options_interval),
        },
        Instant::now(),
    );
    loop {
        while let Some(bytes) = probe.poll_transmit() {
            if let Err(e) = sip.send(destination, transport, bytes).await {
                tracing::debug!(trunk = %trunk.name, error = %e, "OPTIONS not sent");
            }
        }
        while let Some(event) = probe.poll_event() {
            match event {
                ProbeEvent::Up { rtt } => info!(
                    trunk = %trunk.name,
                    rtt_ms = rtt.as_secs_f64() * 1000.0,
                    "trunk is up (answers OPTIONS)"
                ),
                ProbeEvent::Down => warn!(
                    trunk = %trunk.name,
                    "trunk is down: OPTIONS unanswered; calls to it fail with 503 until it answers"
                ),
            }
        }
        health.set(&trunk.name, probe.health());
        let at = probe
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + trunk.options_interval);
        tokio::select! {
            msg = messages.recv() => match msg {
                Some(m) => probe.handle_message(m.msg, Instant::now()),
                None => break,
            },
            _ = tokio::time::sleep_until(at.into()) => probe.handle_timeout(Instant::now()),
        }
    }
    sip.unregister_call(&call_id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_and_metrics() {
        let h = TrunkHealth::default();
        h.watch("a");
        h.watch("b");
        assert!(!h.is_down("a"));
        h.set("a", Health::Down);
        h.set(
            "b",
            Health::Up {
                rtt: Duration::from_millis(12),
            },
        );
        assert!(h.is_down("a") && !h.is_down("b") && !h.is_down("c"));
        let mut out = String::new();
        h.render_prometheus(&mut out);
        assert!(out.contains("gateway_trunk_up{trunk=\"a\"} 0\n"));
        assert!(out.contains("gateway_trunk_up{trunk=\"b\"} 1\n"));
        assert!(out.contains("gateway_trunk_options_rtt_seconds{trunk=\"b\"} 0.012\n"));
    }
}
