//! DTMF in SIP INFO (the "legacy" INFO usage of RFC 6086 section 2, as
//! carriers and PBXs still send it): what a trunk's INFO body says and what
//! it is answered.
//!
//! - `application/dtmf-relay` (Cisco's format, the common one):
//!   `Signal=5\r\nDuration=160\r\n`; `Signal` is the digit (`0-9 * # A-D`,
//!   or the event number 10-15 as some equipment writes `*`, `#`, A-D);
//! - `application/dtmf`: the digit alone.
//!
//! Answers (RFC 6086 4.2.2): 200 for a digit; 200 for an INFO without a body
//! (a keep-alive some trunks send); 415 with `Accept` for any other body
//! type, since we cannot process it (we announce no Info Package, so a
//! package's INFO is legacy usage to us too and is judged by its body);
//! 400 for a DTMF body that names no digit.

use crate::types::DtmfDigit;

/// The body types we take, for the `Accept` of a 415.
pub const ACCEPT: &str = "application/dtmf-relay, application/dtmf";

/// What an INFO request carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InfoBody {
    /// No body: answered 200, nothing else.
    Empty,
    /// A DTMF digit.
    Dtmf(DtmfDigit),
    /// A body type we do not process: 415.
    Unsupported,
    /// A DTMF body without a usable digit: 400, with the reason.
    Malformed(&'static str),
}

impl InfoBody {
    /// Reads an INFO's Content-Type and body.
    pub fn parse(content_type: Option<&str>, body: &[u8]) -> Self {
        if body.iter().all(u8::is_ascii_whitespace) {
            return InfoBody::Empty;
        }
        let media_type = content_type
            .and_then(|ct| ct.split(';').next())
            .map(|t| t.trim().to_ascii_lowercase());
        let Ok(text) = std::str::from_utf8(body) else {
            return match media_type.as_deref() {
                Some("application/dtmf-relay" | "application/dtmf") => {
                    InfoBody::Malformed("DTMF body is not text")
                }
                _ => InfoBody::Unsupported,
            };
        };
        match media_type.as_deref() {
            Some("application/dtmf-relay") => dtmf_relay(text),
            Some("application/dtmf") => signal(text.trim()),
            _ => InfoBody::Unsupported,
        }
    }

    /// The status code the INFO is answered with.
    pub fn status(&self) -> u16 {
        match self {
            InfoBody::Empty | InfoBody::Dtmf(_) => 200,
            InfoBody::Unsupported => 415,
            InfoBody::Malformed(_) => 400,
        }
    }
}

/// The `application/dtmf-relay` body of one digit we send a trunk that did
/// not negotiate telephone-event: `Signal=5\r\nDuration=100\r\n` (the
/// duration in ms, the tone length our RFC 4733 events have).
pub fn dtmf_relay_body(digit: DtmfDigit, duration_ms: u32) -> String {
    format!("Signal={}\r\nDuration={duration_ms}\r\n", digit.as_char())
}

/// The tone length our INFO digits announce (as our RFC 4733 events last).
pub const DTMF_DURATION_MS: u32 = 100;

/// The Content-Type of [`dtmf_relay_body`].
pub const DTMF_RELAY: &str = "application/dtmf-relay";

/// `Signal=` of an `application/dtmf-relay` body (names case-insensitive,
/// lines ending in CRLF or LF; `Duration=` is not needed: the browser gets
/// the digit, not a tone).
fn dtmf_relay(text: &str) -> InfoBody {
    let value = text.lines().find_map(|line| {
        let (name, value) = line.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("signal")
            .then(|| value.trim())
    });
    match value {
        Some(v) => signal(v),
        None => InfoBody::Malformed("application/dtmf-relay without Signal="),
    }
}

/// One digit, or its RFC 4733 event number.
fn signal(value: &str) -> InfoBody {
    let mut chars = value.chars();
    let digit = match (chars.next(), chars.next()) {
        (Some(c), None) => DtmfDigit::from_char(c),
        _ => value.parse::<u8>().ok().and_then(DtmfDigit::from_event),
    };
    digit.map_or(
        InfoBody::Malformed("Signal is not a DTMF digit"),
        InfoBody::Dtmf,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digit(c: char) -> InfoBody {
        InfoBody::Dtmf(DtmfDigit::from_char(c).unwrap())
    }

    #[test]
    fn dtmf_relay_bodies() {
        let relay = Some("application/dtmf-relay");
        for (body, want) in [
            ("Signal=5\r\nDuration=160\r\n", digit('5')),
            ("Signal= *\r\nDuration= 250\r\n", digit('*')),
            ("signal=#\nduration=100\n", digit('#')),
            ("Duration=160\r\nSignal=D\r\n", digit('D')),
            ("Signal=11\r\nDuration=160\r\n", digit('#')),
            ("Signal=10\r\n", digit('*')),
            ("Signal=1\r\n", digit('1')),
        ] {
            assert_eq!(InfoBody::parse(relay, body.as_bytes()), want, "{body:?}");
        }
        for body in [
            "Duration=160\r\n",
            "Signal=\r\n",
            "Signal=16\r\n",
            "Signal=X\r\n",
        ] {
            let got = InfoBody::parse(relay, body.as_bytes());
            assert!(matches!(got, InfoBody::Malformed(_)), "{body:?}: {got:?}");
            assert_eq!(got.status(), 400);
        }
        assert_eq!(
            InfoBody::parse(Some("Application/DTMF-Relay; charset=utf-8"), b"Signal=7"),
            digit('7')
        );
    }

    #[test]
    fn our_dtmf_relay_bodies_read_back() {
        for c in "0123456789*#ABCD".chars() {
            let d = DtmfDigit::from_char(c).unwrap();
            let body = dtmf_relay_body(d, 100);
            assert_eq!(body, format!("Signal={c}\r\nDuration=100\r\n"));
            assert_eq!(InfoBody::parse(Some(DTMF_RELAY), body.as_bytes()), digit(c));
        }
    }

    #[test]
    fn dtmf_bodies_and_others() {
        assert_eq!(
            InfoBody::parse(Some("application/dtmf"), b"9\r\n"),
            digit('9')
        );
        assert_eq!(InfoBody::parse(Some("application/dtmf"), b"12"), digit('A'));
        assert_eq!(
            InfoBody::parse(Some("application/dtmf"), b"x").status(),
            400
        );
        assert_eq!(
            InfoBody::parse(Some("application/dtmf"), &[0xff, 0xfe]).status(),
            400
        );
        assert_eq!(InfoBody::parse(None, b""), InfoBody::Empty);
        assert_eq!(
            InfoBody::parse(Some("application/dtmf"), b"\r\n").status(),
            200
        );
        for ct in [
            Some("application/media_control+xml"),
            Some("text/plain"),
            None,
        ] {
            let got = InfoBody::parse(ct, b"<x/>");
            assert_eq!(got, InfoBody::Unsupported, "{ct:?}");
            assert_eq!(got.status(), 415);
        }
        assert_eq!(
            InfoBody::parse(Some("text/plain"), &[0xff]),
            InfoBody::Unsupported
        );
    }
}
