//! SIP messages in and out, by method (requests) or status (responses), for
//! `/metrics`. Counted per message on the signaling path, never on media.
//! Labels are bounded: unknown methods count as `other`, statuses are
//! 100-699.

use rsip::SipMessage;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// The methods named in metrics; anything else is `other`.
const METHODS: [&str; 14] = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "REGISTER",
    "INFO",
    "UPDATE",
    "PRACK",
    "REFER",
    "NOTIFY",
    "SUBSCRIBE",
    "MESSAGE",
    "PUBLISH",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    In,
    Out,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

#[derive(Debug, Default)]
pub struct SipTraffic {
    requests: Mutex<BTreeMap<(Direction, &'static str), u64>>,
    responses: Mutex<BTreeMap<(Direction, u16), u64>>,
}

fn method_label(method: &str) -> &'static str {
    METHODS
        .iter()
        .find(|m| m.eq_ignore_ascii_case(method))
        .copied()
        .unwrap_or("other")
}

impl SipTraffic {
    pub fn count(&self, dir: Direction, msg: &SipMessage) {
        match msg {
            SipMessage::Request(r) => self.request(dir, &r.method.to_string()),
            SipMessage::Response(r) => self.response(dir, u16::from(r.status_code.clone())),
        }
    }

    /// Counts a message we send, from its start line (no parse needed).
    pub fn count_bytes(&self, dir: Direction, data: &[u8]) {
        let line = data
            .split(|b| *b == b'\r' || *b == b'\n')
            .next()
            .unwrap_or(&[]);
        let line = String::from_utf8_lossy(line);
        let mut words = line.split(' ');
        let first = words.next().unwrap_or("");
        if first.starts_with("SIP/") {
            if let Some(code) = words.next().and_then(|c| c.parse::<u16>().ok()) {
                self.response(dir, code);
            }
        } else if !first.is_empty() {
            self.request(dir, first);
        }
    }

    fn request(&self, dir: Direction, method: &str) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((dir, method_label(method))).or_default() += 1;
        }
    }

    fn response(&self, dir: Direction, code: u16) {
        if !(100..700).contains(&code) {
            return;
        }
        if let Ok(mut m) = self.responses.lock() {
            *m.entry((dir, code)).or_default() += 1;
        }
    }

    pub fn render_prometheus(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP gateway_sip_requests_total SIP requests received (in) and sent (out), by method.\n# TYPE gateway_sip_requests_total counter"
        );
        if let Ok(m) = self.requests.lock() {
            for ((dir, method), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "gateway_sip_requests_total{{direction=\"{}\",method=\"{method}\"}} {n}",
                    dir.label()
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP gateway_sip_responses_total SIP responses received (in) and sent (out), by status code.\n# TYPE gateway_sip_responses_total counter"
        );
        if let Ok(m) = self.responses.lock() {
            for ((dir, code), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "gateway_sip_responses_total{{direction=\"{}\",code=\"{code}\"}} {n}",
                    dir.label()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_method_and_code_with_bounded_labels() {
        let t = SipTraffic::default();
        t.count_bytes(Direction::Out, b"INVITE sip:a@b SIP/2.0\r\nVia: x\r\n");
        t.count_bytes(Direction::Out, b"SIP/2.0 180 Ringing\r\n");
        t.count_bytes(Direction::In, b"FOOBAR sip:a@b SIP/2.0\r\n");
        t.count_bytes(Direction::In, b"SIP/2.0 999 Nonsense\r\n");
        let mut out = String::new();
        t.render_prometheus(&mut out);
        assert!(out.contains("gateway_sip_requests_total{direction=\"out\",method=\"INVITE\"} 1\n"));
        assert!(out.contains("gateway_sip_requests_total{direction=\"in\",method=\"other\"} 1\n"));
        assert!(out.contains("gateway_sip_responses_total{direction=\"out\",code=\"180\"} 1\n"));
        assert!(!out.contains("999"));
    }
}
