//! The operator's figures as the stats page and `/api/stats` show them:
//! live calls (from [`LiveCalls`]), the last hour's charts ([`History`]),
//! and the last ended calls from the call records in SQLite.

use super::history::History;
use super::live::{rfc3339, LiveCalls};
use crate::calls::registration::{RegStatus, TrunkRegistrations};
use crate::calls::trunk_health::TrunkHealth;
use crate::cdr::CdrStore;
use crate::signaling::OperatorView;
use crate::sip::probe::Health;
use crate::sip::register::RegState;
use crate::sip::transport::SipEndpoint;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// Ended calls listed under the live ones.
const RECENT_ENDED: usize = 100;

pub struct Operator {
    pub live: Arc<LiveCalls>,
    pub history: Arc<History>,
    pub cdr: CdrStore,
    pub started: Instant,
    /// Trunk names, in config order.
    pub trunks: Vec<String>,
    /// Their liveness from OPTIONS pings.
    pub trunk_health: Arc<TrunkHealth>,
    /// Their registration, for trunks with `register = true`.
    pub registrations: Arc<TrunkRegistrations>,
    /// The SIP endpoint, for its current bans.
    pub sip: SipEndpoint,
}

impl Operator {
    fn bans(&self) -> Vec<Value> {
        let now = SystemTime::now();
        self.sip
            .bans()
            .into_iter()
            .map(|(source, left)| {
                json!({
                    "source": source.to_string(),
                    "until": rfc3339(now + left),
                    "reason": "over sip.limits.requests_per_second",
                })
            })
            .collect()
    }
}

/// A trunk's registration for the stats page (`null` for a trunk that does
/// not register).
fn registration_view(status: &RegStatus) -> Value {
    let failures = status.failures;
    match &status.state {
        RegState::Registering => json!({"state": "registering", "failures": failures}),
        RegState::Registered { expires } => {
            json!({"state": "registered", "expires_s": expires.as_secs(), "failures": failures})
        }
        RegState::Failed { failure, retry_at } => json!({
            "state": "failed",
            "code": failure.code,
            "reason": failure.reason,
            "retry_in_s": retry_at.saturating_duration_since(Instant::now()).as_secs(),
            "failures": failures,
        }),
        RegState::Unregistered => json!({"state": "unregistered", "failures": failures}),
    }
}

impl OperatorView for Operator {
    fn stats(&self) -> Value {
        let ended = match self.cdr.recent(RECENT_ENDED) {
            Ok(rows) => serde_json::to_value(rows).unwrap_or(Value::Array(vec![])),
            Err(e) => {
                tracing::warn!(error = %e, "call records unreadable for the stats page");
                Value::Array(vec![])
            }
        };
        let health: std::collections::HashMap<String, Health> =
            self.trunk_health.all().into_iter().collect();
        let trunks: Vec<Value> = self
            .trunks
            .iter()
            .map(|name| {
                let (status, rtt) = match health.get(name) {
                    Some(Health::Up { rtt }) => {
                        ("up", Some((rtt.as_secs_f64() * 10_000.0).round() / 10.0))
                    }
                    Some(Health::Down) => ("down", None),
                    Some(Health::Unknown) | None => ("unknown", None),
                };
                json!({
                    "name": name,
                    "status": status,
                    "last_options_rtt_ms": rtt,
                    "registration": self.registrations.get(name).map(|r| registration_view(&r)),
                })
            })
            .collect();
        json!({
            "generated_at": rfc3339(SystemTime::now()),
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.started.elapsed().as_secs(),
            "calls_active": self.live.count(),
            "packets_per_second": self.history.packets_per_second(),
            "history": self.history.points(),
            "trunks": trunks,
            "bans": self.bans(),
            "calls": self.live.views(),
            "ended": ended,
        })
    }

    fn call_detail(&self, id: &str) -> Option<Value> {
        let found = self.live.find(id);
        let record = self.cdr.get(id).ok().flatten();
        if found.is_none() && record.is_none() {
            return None;
        }
        let (call, sdp, ladder) = match &found {
            Some((call, is_live)) => {
                let (sdp, ladder) = call.detail();
                let view = is_live.then(|| call.view());
                (view, Some(sdp), ladder)
            }
            None => (None, None, Vec::new()),
        };
        Some(json!({
            "call": call,
            "record": record,
            "sdp": sdp.unwrap_or_default(),
            "ladder": ladder,
        }))
    }

    fn audit(&self, who: &str, action: &str, detail: &str) {
        if let Err(e) = self.cdr.audit(who, action, detail) {
            tracing::warn!(error = %e, "audit record not written");
        }
    }
}
