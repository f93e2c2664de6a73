//! The calls in progress as the operator sees them: who, which trunk, what
//! state, each leg's security and counters, and, for the detail view, both
//! legs' SDPs (keys removed) and the SIP ladder.
//!
//! Call drivers write here when something happens on the signaling side
//! (a handful of times per call); the packet path never does: packet
//! counters are the media plane's atomics, read at snapshot time. The last
//! ended calls stay for the detail view.

use crate::media::{CallCounters, DropReason, Leg, LegSnapshot};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// Ended calls whose detail (SDPs, ladder) stays in memory.
const KEEP_ENDED: usize = 100;
/// SIP ladder entries kept per call (a call has a dozen; a flood of
/// retransmissions must not grow it without bound).
const MAX_LADDER: usize = 200;

/// Who placed the call: the same vocabulary as the call records.
pub use crate::cdr::Direction;

/// Where a call is, for the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CallState {
    #[default]
    Ringing,
    Answering,
    Connected,
    Ending,
}

/// What the B2BUA knows of a call at a moment (see `calls::call::Call::info`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallInfo {
    pub state: CallState,
    pub codec: Option<String>,
    pub browser_security: Option<String>,
    pub trunk_security: Option<String>,
    pub private: bool,
}

/// The fixed facts of a call, known when it starts.
#[derive(Debug, Clone)]
pub struct CallStart {
    pub id: String,
    pub direction: Direction,
    pub account: String,
    /// The remote party, already masked when the account redacts.
    pub remote: String,
    pub trunk: String,
    /// The account redacts: SDPs shown lose what can name a person too.
    pub redact: bool,
}

/// One SIP message or browser event of the call, summarised.
#[derive(Debug, Clone, Serialize)]
pub struct LadderEntry {
    pub t_ms: u64,
    /// "in" toward the gateway, "out" from it.
    pub direction: &'static str,
    /// "trunk" or "browser".
    pub peer: &'static str,
    pub summary: String,
}

/// The SDPs of both legs, with keys and ICE passwords removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SdpSet {
    pub browser_offer: Option<String>,
    pub browser_answer: Option<String>,
    pub trunk_offer: Option<String>,
    pub trunk_answer: Option<String>,
}

/// Which of the four SDPs a text is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdpRole {
    BrowserOffer,
    BrowserAnswer,
    TrunkOffer,
    TrunkAnswer,
}

pub struct LiveCall {
    start: CallStart,
    started_at: SystemTime,
    started: Instant,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    info: CallInfo,
    answered_at: Option<SystemTime>,
    ended_at: Option<SystemTime>,
    counters: Option<Arc<CallCounters>>,
    sdp: SdpSet,
    ladder: Vec<LadderEntry>,
}

impl LiveCall {
    pub fn id(&self) -> &str {
        &self.start.id
    }

    /// The B2BUA's view changed (state, codec, security).
    pub fn update(&self, info: &CallInfo) {
        if let Ok(mut inner) = self.inner.lock() {
            if inner.info == *info {
                return;
            }
            if info.state == CallState::Connected && inner.answered_at.is_none() {
                inner.answered_at = Some(SystemTime::now());
            }
            inner.info = info.clone();
        }
    }

    /// The call's media started: its counters become visible.
    pub fn set_counters(&self, counters: Arc<CallCounters>) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.counters = Some(counters);
        }
    }

    pub fn set_sdp(&self, role: SdpRole, sdp: &str) {
        let mut clean = strip_secrets(sdp);
        if self.start.redact {
            clean = strip_personal(&clean);
        }
        if let Ok(mut inner) = self.inner.lock() {
            let slot = match role {
                SdpRole::BrowserOffer => &mut inner.sdp.browser_offer,
                SdpRole::BrowserAnswer => &mut inner.sdp.browser_answer,
                SdpRole::TrunkOffer => &mut inner.sdp.trunk_offer,
                SdpRole::TrunkAnswer => &mut inner.sdp.trunk_answer,
            };
            *slot = Some(clean);
        }
    }

    pub fn ladder(&self, direction: &'static str, peer: &'static str, summary: String) {
        let t_ms = self.started.elapsed().as_millis() as u64;
        if let Ok(mut inner) = self.inner.lock() {
            if inner.ladder.len() < MAX_LADDER {
                inner.ladder.push(LadderEntry {
                    t_ms,
                    direction,
                    peer,
                    summary,
                });
            }
        }
    }

    /// What the stats page shows of this call now.
    pub fn view(&self) -> LiveCallView {
        let inner = match self.inner.lock() {
            Ok(inner) => inner,
            Err(poisoned) => poisoned.into_inner(),
        };
        let end = inner.ended_at.unwrap_or_else(SystemTime::now);
        let duration_s = end
            .duration_since(self.started_at)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let leg = |leg: Leg, security: &Option<String>| {
            let (snap, rtcp) = inner
                .counters
                .as_ref()
                .map(|c| (c.leg(leg).snapshot(), c.leg(leg).rtcp()))
                .unwrap_or_default();
            LegView::new(security.clone(), &snap, rtcp)
        };
        LiveCallView {
            id: self.start.id.clone(),
            direction: self.start.direction,
            account: self.start.account.clone(),
            remote: self.start.remote.clone(),
            trunk: self.start.trunk.clone(),
            state: if inner.ended_at.is_some() {
                CallState::Ending
            } else {
                inner.info.state
            },
            started_at: rfc3339(self.started_at),
            answered_at: inner.answered_at.map(rfc3339),
            duration_s: (duration_s * 10.0).round() / 10.0,
            codec: inner.info.codec.clone(),
            private: inner.info.private,
            srtp_contexts: inner.counters.as_ref().map_or(0, |c| {
                c.srtp_contexts.load(std::sync::atomic::Ordering::Relaxed)
            }),
            legs: Legs {
                browser: leg(Leg::Browser, &inner.info.browser_security),
                trunk: leg(Leg::Trunk, &inner.info.trunk_security),
            },
        }
    }

    /// The detail view: SDPs and ladder.
    pub fn detail(&self) -> (SdpSet, Vec<LadderEntry>) {
        match self.inner.lock() {
            Ok(inner) => (inner.sdp.clone(), inner.ladder.clone()),
            Err(_) => (SdpSet::default(), Vec::new()),
        }
    }

    /// Packet and drop figures of both legs now (for the call record).
    pub fn figures(&self) -> (LegSnapshot, LegSnapshot) {
        let counters = self.inner.lock().ok().and_then(|i| i.counters.clone());
        match counters {
            Some(c) => (c.browser.snapshot(), c.trunk.snapshot()),
            None => Default::default(),
        }
    }

    pub fn info(&self) -> CallInfo {
        self.inner
            .lock()
            .map(|i| i.info.clone())
            .unwrap_or_default()
    }
}

/// Every call in progress, and the detail of the last ended ones.
#[derive(Default)]
pub struct LiveCalls {
    active: Mutex<HashMap<String, Arc<LiveCall>>>,
    ended: Mutex<VecDeque<Arc<LiveCall>>>,
}

impl LiveCalls {
    pub fn begin(&self, start: CallStart) -> Arc<LiveCall> {
        let call = Arc::new(LiveCall {
            start,
            started_at: SystemTime::now(),
            started: Instant::now(),
            inner: Mutex::new(Inner::default()),
        });
        if let Ok(mut active) = self.active.lock() {
            active.insert(call.start.id.clone(), call.clone());
        }
        call
    }

    /// The call ended: it leaves the live table, its detail stays a while.
    pub fn finish(&self, call: &Arc<LiveCall>) {
        if let Ok(mut inner) = call.inner.lock() {
            inner.ended_at = Some(SystemTime::now());
        }
        if let Ok(mut active) = self.active.lock() {
            // Remove only this very call: an incoming id is unique, but an
            // outgoing one is the browser's and may be reused later.
            if active.get(call.id()).is_some_and(|c| Arc::ptr_eq(c, call)) {
                active.remove(call.id());
            }
        }
        if let Ok(mut ended) = self.ended.lock() {
            ended.push_front(call.clone());
            ended.truncate(KEEP_ENDED);
        }
    }

    pub fn count(&self) -> usize {
        self.active.lock().map(|a| a.len()).unwrap_or(0)
    }

    /// Every call in progress, oldest first.
    pub fn views(&self) -> Vec<LiveCallView> {
        let calls: Vec<Arc<LiveCall>> = self
            .active
            .lock()
            .map(|a| a.values().cloned().collect())
            .unwrap_or_default();
        let mut views: Vec<(SystemTime, LiveCallView)> =
            calls.iter().map(|c| (c.started_at, c.view())).collect();
        views.sort_by_key(|(at, _)| *at);
        views.into_iter().map(|(_, v)| v).collect()
    }

    /// A call in progress or recently ended, by id (the live one first).
    pub fn find(&self, id: &str) -> Option<(Arc<LiveCall>, bool)> {
        if let Some(call) = self.active.lock().ok().and_then(|a| a.get(id).cloned()) {
            return Some((call, true));
        }
        self.ended
            .lock()
            .ok()
            .and_then(|e| e.iter().find(|c| c.id() == id).cloned())
            .map(|c| (c, false))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LiveCallView {
    pub id: String,
    pub direction: Direction,
    pub account: String,
    pub remote: String,
    pub trunk: String,
    pub state: CallState,
    pub started_at: String,
    pub answered_at: Option<String>,
    pub duration_s: f64,
    pub codec: Option<String>,
    pub private: bool,
    /// SRTP contexts the relay created for this call (one per keyed
    /// direction): 0 for a private call, whose keys the gateway never holds.
    pub srtp_contexts: u64,
    pub legs: Legs,
}

#[derive(Debug, Clone, Serialize)]
pub struct Legs {
    pub browser: LegView,
    pub trunk: LegView,
}

#[derive(Debug, Clone, Serialize)]
pub struct LegView {
    pub security: Option<String>,
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub drops: std::collections::BTreeMap<&'static str, u64>,
    /// From RTCP receiver reports, when the leg sent any.
    pub loss: Option<f64>,
    pub jitter_ms: Option<f64>,
    pub rtt_ms: Option<f64>,
}

impl LegView {
    fn new(security: Option<String>, s: &LegSnapshot, rtcp: RtcpFigures) -> Self {
        let (loss, jitter_us, rtt_us) = rtcp;
        LegView {
            security,
            packets_in: s.packets_in,
            packets_out: s.packets_out,
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.label(), s.drops(*r)))
                .collect(),
            loss: loss.map(|ppm| ppm as f64 / 1e6),
            jitter_ms: jitter_us.map(|us| (us as f64 / 100.0).round() / 10.0),
            rtt_ms: rtt_us.map(|us| (us as f64 / 100.0).round() / 10.0),
        }
    }
}

/// Loss (ppm), jitter (µs), round trip (µs) from RTCP.
type RtcpFigures = (Option<u64>, Option<u64>, Option<u64>);

/// `2026-12-03T16:00:00.123Z`.
pub fn rfc3339(at: SystemTime) -> String {
    let t: time::OffsetDateTime = at.into();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// An SDP with its secrets removed: SDES inline keys and ICE passwords.
/// The rest (addresses, codecs, fingerprints, which are public keys' hashes)
/// is what an operator needs to debug a call.
pub fn strip_secrets(sdp: &str) -> String {
    sdp.split_inclusive('\n')
        .map(|line| {
            let trimmed = line.trim_end_matches(['\r', '\n']);
            let end = &line[trimmed.len()..];
            if let Some(rest) = trimmed.strip_prefix("a=ice-pwd:") {
                let _ = rest;
                format!("a=ice-pwd:<removed>{end}")
            } else if trimmed.starts_with("a=crypto:") {
                format!("{}{end}", strip_inline_keys(trimmed))
            } else {
                line.to_string()
            }
        })
        .collect()
}

/// An SDP without what can name a person, for accounts that redact: peers
/// put their SIP URI or number in `a=ssrc ... cname:`, the `o=` user name,
/// and the free-text lines (`i=`, `u=`, `e=`, `p=`); any other line holding
/// a `sip:`/`sips:`/`tel:` URI is dropped whole.
pub fn strip_personal(sdp: &str) -> String {
    sdp.split_inclusive('\n')
        .filter_map(|line| {
            let trimmed = line.trim_end_matches(['\r', '\n']);
            let end = &line[trimmed.len()..];
            if let Some(at) = trimmed.find("cname:") {
                return Some(format!("{}cname:<removed>{end}", &trimmed[..at]));
            }
            if let Some(rest) = trimmed.strip_prefix("o=") {
                let fields = rest.split_once(' ').map_or("", |(_, f)| f);
                return Some(format!("o=- {fields}{end}"));
            }
            if ["i=", "u=", "e=", "p="]
                .iter()
                .any(|p| trimmed.starts_with(p))
            {
                return None;
            }
            let lower = trimmed.to_ascii_lowercase();
            if ["sip:", "sips:", "tel:"].iter().any(|s| lower.contains(s)) {
                return None;
            }
            Some(line.to_string())
        })
        .collect()
}

/// `inline:KEY|2^31|1:1` → `inline:<removed>|2^31|1:1` for every key.
fn strip_inline_keys(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find("inline:") {
        out.push_str(&rest[..at + "inline:".len()]);
        out.push_str("<removed>");
        rest = &rest[at + "inline:".len()..];
        let key_end = rest
            .find(|c: char| c == '|' || c == ';' || c.is_whitespace())
            .unwrap_or(rest.len());
        rest = &rest[key_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_leave_the_sdp_and_nothing_else_does() {
        let sdp = "v=0\r\na=ice-pwd:supersecretpassword\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^31|1:1\r\n\
a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:d2VsbCBob3cgYWJvdXQgdGhhdCB0aGVuIG9rYXkK\r\n\
a=fingerprint:sha-256 AB:CD\r\n";
        let clean = strip_secrets(sdp);
        assert!(!clean.contains("supersecret"));
        assert!(!clean.contains("WVNfX19z"));
        assert!(!clean.contains("d2VsbCBo"));
        assert!(clean.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:<removed>|2^31|1:1\r\n"));
        assert!(clean.contains("a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:<removed>\r\n"));
        assert!(clean.contains("a=fingerprint:sha-256 AB:CD\r\n"));
        assert!(clean.starts_with("v=0\r\n"));
    }

    #[test]
    fn personal_data_leaves_a_redacted_calls_sdp() {
        let sdp = "v=0\r\no=+4930123456789 1 2 IN IP4 10.0.0.1\r\ns=-\r\ni=call from Bob\r\n\
e=bob@example.com\r\nm=audio 4000 RTP/AVP 0\r\na=ssrc:26 cname:sip:+4930123456789@127.0.0.1:5060\r\n\
a=x-who:tel:+4930123456789\r\na=rtpmap:0 PCMU/8000\r\n";
        let clean = strip_personal(sdp);
        assert!(!clean.contains("4930123456789"), "{clean}");
        assert!(!clean.contains("Bob") && !clean.contains("bob@"), "{clean}");
        assert!(clean.contains("o=- 1 2 IN IP4 10.0.0.1\r\n"), "{clean}");
        assert!(clean.contains("a=ssrc:26 cname:<removed>\r\n"), "{clean}");
        assert!(clean.contains("a=rtpmap:0 PCMU/8000\r\n"));
    }

    #[test]
    fn calls_move_from_live_to_ended() {
        let live = LiveCalls::default();
        let call = live.begin(CallStart {
            id: "in-1".into(),
            direction: Direction::Incoming,
            account: "alice".into(),
            remote: "+4930******89".into(),
            trunk: "carrier".into(),
            redact: true,
        });
        call.update(&CallInfo {
            state: CallState::Connected,
            codec: Some("PCMU/8000".into()),
            browser_security: Some("dtls-srtp AEAD_AES_128_GCM".into()),
            trunk_security: Some("sdes-srtp AES_CM_128_HMAC_SHA1_80".into()),
            private: false,
        });
        let counters = Arc::new(CallCounters::default());
        counters.trunk.add_in_single_writer(172);
        call.set_counters(counters);
        let views = live.views();
        assert_eq!(views.len(), 1);
        assert_eq!(views[0].state, CallState::Connected);
        assert!(views[0].answered_at.is_some());
        assert_eq!(views[0].legs.trunk.packets_in, 1);
        assert_eq!(views[0].legs.trunk.bytes_in, 172);
        live.finish(&call);
        assert_eq!(live.count(), 0);
        let (found, is_live) = live.find("in-1").unwrap();
        assert!(!is_live);
        assert_eq!(found.view().state, CallState::Ending);
    }
}
