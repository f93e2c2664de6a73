//! The JSON messages of the signaling WebSocket (PROTOCOL.md section 3),
//! without IO: text in, a validated `SessionCommand` or a refusal out;
//! `SessionEvent` in, text out.
//!
//! Every field is checked here, at the edge, so the call layer only ever
//! sees well-formed commands.

use crate::calls::api::{SessionCommand, SessionEvent};
use crate::types::{CallId, DtmfDigit};
use serde::Serialize;
use serde_json::{Map, Value};

/// Longest call id accepted (characters, printable ASCII only).
pub(crate) const MAX_ID_LEN: usize = 64;
/// Longest dial string accepted.
pub(crate) const MAX_TO_LEN: usize = 64;
/// Largest SDP offer accepted; a WebRTC audio offer is 2–6 KiB.
pub(crate) const MAX_SDP_LEN: usize = 16 * 1024;
/// Most digits in one `dtmf` message (each plays 200 ms: 6.4 s).
pub(crate) const MAX_DTMF_DIGITS: usize = 32;
/// Largest WebSocket message; bigger ones close the socket.
pub(crate) const MAX_MESSAGE_LEN: usize = 64 * 1024;

/// Message types of PROTOCOL.md that the call layer cannot handle yet; they
/// get a 501 instead of the 400 of an unknown type.
const NOT_IMPLEMENTED: [&str; 0] = [];

/// Why a browser message was refused; becomes an `error` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub id: Option<CallId>,
    pub code: u16,
    pub message: String,
}

impl Refusal {
    fn bad(id: Option<&CallId>, message: impl Into<String>) -> Self {
        Refusal {
            id: id.cloned(),
            code: 400,
            message: message.into(),
        }
    }

    pub fn into_event(self) -> SessionEvent {
        SessionEvent::Error {
            id: self.id,
            code: self.code,
            message: self.message,
        }
    }
}

/// Parses one text frame from the browser.
pub fn parse_command(text: &str) -> Result<SessionCommand, Refusal> {
    // serde_json limits nesting to 128 levels, so hostile input cannot
    // exhaust the stack; size is already capped by the WebSocket layer.
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Refusal::bad(None, format!("not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(Refusal::bad(None, "a message must be a JSON object"));
    };

    // Read the id first so that later refusals can name the call they refer
    // to; an unusable id is reported only if the type needs one.
    let id = field_id(&obj);
    let id_ok = id.as_ref().ok().cloned();

    let kind = match obj.get("type") {
        None => return Err(Refusal::bad(id_ok.as_ref(), "missing field `type`")),
        Some(Value::String(s)) => s.as_str(),
        Some(_) => {
            return Err(Refusal::bad(
                id_ok.as_ref(),
                "field `type` must be a string",
            ))
        }
    };

    match kind {
        "call" => {
            let id = id?;
            let to = field_str(&obj, "to", Some(&id))?;
            check_dial_string(to).map_err(|m| Refusal::bad(Some(&id), m))?;
            let sdp = field_sdp(&obj, &id)?;
            Ok(SessionCommand::Call {
                id,
                to: to.to_string(),
                sdp: sdp.to_string(),
            })
        }
        "hangup" => Ok(SessionCommand::Hangup { id: id? }),
        "accept" => {
            let id = id?;
            let sdp = field_sdp(&obj, &id)?;
            Ok(SessionCommand::Accept {
                id,
                sdp: sdp.to_string(),
            })
        }
        "reject" => Ok(SessionCommand::Reject { id: id? }),
        // The browser's answer to our `offer` (a codec change mid-call).
        "answer" => {
            let id = id?;
            let sdp = field_sdp(&obj, &id)?;
            Ok(SessionCommand::Answer {
                id,
                sdp: sdp.to_string(),
            })
        }
        "dtmf" => {
            let id = id?;
            let digits = field_str(&obj, "digits", Some(&id))?;
            let digits = parse_digits(digits).map_err(|m| Refusal::bad(Some(&id), m))?;
            Ok(SessionCommand::Dtmf { id, digits })
        }
        "hold" => Ok(SessionCommand::Hold {
            id: id?,
            hold: true,
        }),
        "transfer" => {
            let id = id?;
            let to = field_str(&obj, "to", Some(&id))?;
            check_dial_string(to).map_err(|m| Refusal::bad(Some(&id), m))?;
            Ok(SessionCommand::Transfer {
                id,
                to: to.to_string(),
            })
        }
        "resume" => Ok(SessionCommand::Hold {
            id: id?,
            hold: false,
        }),
        other if NOT_IMPLEMENTED.contains(&other) => Err(Refusal {
            id: id_ok,
            code: 501,
            message: format!("`{other}` is not implemented yet"),
        }),
        other => Err(Refusal::bad(
            id_ok.as_ref(),
            format!("unknown message type {:?}", shorten(other)),
        )),
    }
}

/// The `id` field: required, a non-empty string of at most `MAX_ID_LEN`
/// printable ASCII characters (ids end up in logs; control characters and
/// spaces would let a browser forge log lines).
fn field_id(obj: &Map<String, Value>) -> Result<CallId, Refusal> {
    let id = field_str(obj, "id", None)?;
    if id.len() > MAX_ID_LEN {
        return Err(Refusal::bad(
            None,
            format!("field `id` is longer than {MAX_ID_LEN} characters"),
        ));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Refusal::bad(
            None,
            "field `id` must be printable ASCII without spaces",
        ));
    }
    Ok(CallId(id.to_string()))
}

/// The `sdp` field: required, at most `MAX_SDP_LEN` bytes.
fn field_sdp<'a>(obj: &'a Map<String, Value>, id: &CallId) -> Result<&'a str, Refusal> {
    let sdp = field_str(obj, "sdp", Some(id))?;
    if sdp.len() > MAX_SDP_LEN {
        return Err(Refusal::bad(
            Some(id),
            format!("field `sdp` is longer than {MAX_SDP_LEN} bytes"),
        ));
    }
    Ok(sdp)
}

/// A required, non-empty string field.
fn field_str<'a>(
    obj: &'a Map<String, Value>,
    name: &str,
    id: Option<&CallId>,
) -> Result<&'a str, Refusal> {
    match obj.get(name) {
        None | Some(Value::Null) => Err(Refusal::bad(id, format!("missing field `{name}`"))),
        Some(Value::String(s)) if s.is_empty() => {
            Err(Refusal::bad(id, format!("field `{name}` is empty")))
        }
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(Refusal::bad(id, format!("field `{name}` must be a string"))),
    }
}

/// A number or SIP user part: digits, `+ * #`, ASCII letters, and `. - _`
/// (common in user names). Anything else could smuggle URI syntax
/// (`@`, `;`, `:`, `<`) into the Request-URI the call layer builds.
fn check_dial_string(to: &str) -> Result<(), String> {
    if to.len() > MAX_TO_LEN {
        return Err(format!("field `to` is longer than {MAX_TO_LEN} characters"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "+*#.-_".contains(c);
    if !to.chars().all(allowed) {
        return Err(
            "field `to` must be a number or user name: digits, letters and + * # . - _".into(),
        );
    }
    Ok(())
}

/// The `digits` of a `dtmf` message: 1 to `MAX_DTMF_DIGITS` of `0-9 * # A-D`.
fn parse_digits(digits: &str) -> Result<Vec<DtmfDigit>, String> {
    if digits.chars().count() > MAX_DTMF_DIGITS {
        return Err(format!(
            "field `digits` has more than {MAX_DTMF_DIGITS} digits"
        ));
    }
    digits
        .chars()
        .map(|c| {
            DtmfDigit::from_char(c)
                .ok_or_else(|| format!("field `digits`: {c:?} is not a DTMF digit (0-9 * # A-D)"))
        })
        .collect()
}

/// At most 32 characters of an untrusted string, for echoing it back.
fn shorten(s: &str) -> &str {
    match s.char_indices().nth(32) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

/// The wire form of a `SessionEvent`; `type` comes first.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Wire<'a> {
    Progress {
        id: &'a str,
        code: u16,
    },
    Offer {
        id: &'a str,
        sdp: &'a str,
    },
    Answer {
        id: &'a str,
        sdp: &'a str,
    },
    Connected {
        id: &'a str,
        security: &'a crate::calls::api::Security,
    },
    Hangup {
        id: &'a str,
        code: u16,
        reason: &'a str,
    },
    Held {
        id: &'a str,
        by: crate::calls::api::HoldParty,
    },
    Resumed {
        id: &'a str,
        by: crate::calls::api::HoldParty,
    },
    Dtmf {
        id: &'a str,
        digit: String,
    },
    Transferred {
        id: &'a str,
        to: &'a str,
        code: u16,
        /// Set for the trunk's transfer (its REFER) only.
        #[serde(skip_serializing_if = "Option::is_none")]
        by: Option<crate::calls::api::HoldParty>,
    },
    Incoming {
        id: &'a str,
        from: &'a str,
        sdp: &'a str,
        verstat: &'a str,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        code: u16,
        message: &'a str,
    },
}

/// One event as the JSON text frame PROTOCOL.md specifies.
pub(crate) fn event_json(event: &SessionEvent) -> String {
    let wire = match event {
        SessionEvent::Progress { id, code } => Wire::Progress {
            id: &id.0,
            code: *code,
        },
        SessionEvent::Answer { id, sdp } => Wire::Answer { id: &id.0, sdp },
        SessionEvent::Offer { id, sdp } => Wire::Offer { id: &id.0, sdp },
        SessionEvent::Connected { id, security } => Wire::Connected {
            id: &id.0,
            security,
        },
        SessionEvent::Hangup { id, code, reason } => Wire::Hangup {
            id: &id.0,
            code: *code,
            reason,
        },
        SessionEvent::Held { id, by } => Wire::Held { id: &id.0, by: *by },
        SessionEvent::Resumed { id, by } => Wire::Resumed { id: &id.0, by: *by },
        SessionEvent::Dtmf { id, digit } => Wire::Dtmf {
            id: &id.0,
            digit: digit.to_string(),
        },
        SessionEvent::Transferred { id, to, code } => Wire::Transferred {
            id: &id.0,
            to,
            code: *code,
            by: None,
        },
        SessionEvent::TransferredByTrunk { id, to, code } => Wire::Transferred {
            id: &id.0,
            to,
            code: *code,
            by: Some(crate::calls::api::HoldParty::Trunk),
        },
        SessionEvent::Incoming {
            id,
            from,
            sdp,
            verstat,
        } => Wire::Incoming {
            id: &id.0,
            from,
            sdp,
            verstat,
        },
        SessionEvent::Error { id, code, message } => Wire::Error {
            id: id.as_ref().map(|id| id.0.as_str()),
            code: *code,
            message,
        },
    };
    // Serializing strings and integers cannot fail; the fallback only keeps
    // this function total.
    serde_json::to_string(&wire)
        .unwrap_or_else(|_| r#"{"type":"error","code":500,"message":"internal error"}"#.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::api::{HoldParty, Security};
    use serde_json::json;

    fn parse(v: Value) -> Result<SessionCommand, Refusal> {
        parse_command(&v.to_string())
    }

    #[test]
    fn call_and_hangup_parse() {
        assert_eq!(
            parse(json!({"type":"call","id":"c1","to":"+4930123*#","sdp":"v=0\r\n"})),
            Ok(SessionCommand::Call {
                id: CallId("c1".into()),
                to: "+4930123*#".into(),
                sdp: "v=0\r\n".into()
            })
        );
        assert_eq!(
            parse(json!({"type":"call","id":"c1","to":"bob.smith","sdp":"v=0","extra":1})),
            Ok(SessionCommand::Call {
                id: CallId("c1".into()),
                to: "bob.smith".into(),
                sdp: "v=0".into()
            })
        );
        assert_eq!(
            parse(json!({"type":"hangup","id":"c1"})),
            Ok(SessionCommand::Hangup {
                id: CallId("c1".into())
            })
        );
    }

    #[test]
    fn refusals() {
        let long_id = "x".repeat(MAX_ID_LEN + 1);
        let big_sdp = "a".repeat(MAX_SDP_LEN + 1);
        let cases: Vec<(String, Option<&str>, u16)> = vec![
            ("not json".into(), None, 400),
            ("[1,2]".into(), None, 400),
            (json!({"id":"c1"}).to_string(), Some("c1"), 400),
            (json!({"type":7,"id":"c1"}).to_string(), Some("c1"), 400),
            (
                json!({"type":"dance","id":"c1"}).to_string(),
                Some("c1"),
                400,
            ),
            (
                json!({"type":"call","to":"1","sdp":"v"}).to_string(),
                None,
                400,
            ),
            (
                json!({"type":"call","id":"","to":"1","sdp":"v"}).to_string(),
                None,
                400,
            ),
            (
                json!({"type":"call","id":5,"to":"1","sdp":"v"}).to_string(),
                None,
                400,
            ),
            (
                json!({"type":"call","id":long_id,"to":"1","sdp":"v"}).to_string(),
                None,
                400,
            ),
            (
                json!({"type":"call","id":"a b","to":"1","sdp":"v"}).to_string(),
                None,
                400,
            ),
            (
                json!({"type":"call","id":"c1","sdp":"v"}).to_string(),
                Some("c1"),
                400,
            ),
            (
                json!({"type":"call","id":"c1","to":"","sdp":"v"}).to_string(),
                Some("c1"),
                400,
            ),
            (
                json!({"type":"call","id":"c1","to":"bob@evil","sdp":"v"}).to_string(),
                Some("c1"),
                400,
            ),
            (
                json!({"type":"call","id":"c1","to":"1;x=y","sdp":"v"}).to_string(),
                Some("c1"),
                400,
            ),
            (
                json!({"type":"call","id":"c1","to":"1".repeat(65),"sdp":"v"}).to_string(),
                Some("c1"),
                400,
            ),
            (
                json!({"type":"call","id":"c1","to":"1"}).to_string(),
                Some("c1"),
                400,
            ),
            (
                json!({"type":"call","id":"c1","to":"1","sdp":null}).to_string(),
                Some("c1"),
                400,
            ),
            (
                json!({"type":"call","id":"c1","to":"1","sdp":["v"]}).to_string(),
                Some("c1"),
                400,
            ),
            (
                json!({"type":"call","id":"c1","to":"1","sdp":big_sdp}).to_string(),
                Some("c1"),
                400,
            ),
            (json!({"type":"hangup"}).to_string(), None, 400),
            // accept needs its SDP answer; reject only an id.
            (
                json!({"type":"accept","id":"c1"}).to_string(),
                Some("c1"),
                400,
            ),
            (
                json!({"type":"accept","id":"c1","sdp":7}).to_string(),
                Some("c1"),
                400,
            ),
            (json!({"type":"reject"}).to_string(), None, 400),
            (
                json!({"type":"dtmf","id":"c1","digits":"1x"}).to_string(),
                Some("c1"),
                400,
            ),
            (
                json!({"type":"dtmf","id":"c1","digits":""}).to_string(),
                Some("c1"),
                400,
            ),
            (
                json!({"type":"dtmf","id":"c1"}).to_string(),
                Some("c1"),
                400,
            ),
            (
                json!({"type":"dtmf","id":"c1","digits":5}).to_string(),
                Some("c1"),
                400,
            ),
            (
                json!({"type":"dtmf","id":"c1","digits":"1".repeat(33)}).to_string(),
                Some("c1"),
                400,
            ),
            (json!({"type":"dtmf","digits":"1"}).to_string(), None, 400),
            (
                json!({"type":"transfer","id":"c1","to":"2 3"}).to_string(),
                Some("c1"),
                400,
            ),
            (
                json!({"type":"transfer","id":"c1"}).to_string(),
                Some("c1"),
                400,
            ),
            (
                json!({"type":"answer","id":"c1"}).to_string(),
                Some("c1"),
                400,
            ),
            (
                json!({"type":"answer","sdp":"v=0\r\n"}).to_string(),
                None,
                400,
            ),
            // hold and resume need the call's id.
            (json!({"type":"hold"}).to_string(), None, 400),
            (json!({"type":"resume","id":7}).to_string(), None, 400),
        ];
        for (text, id, code) in cases {
            let refusal = parse_command(&text).expect_err(&text);
            assert_eq!(refusal.code, code, "{text}: {refusal:?}");
            assert_eq!(refusal.id.as_ref().map(|i| i.0.as_str()), id, "{text}");
            assert!(!refusal.message.is_empty());
        }
    }

    #[test]
    fn accept_and_reject_parse() {
        assert_eq!(
            parse(json!({"type":"accept","id":"in-1","sdp":"v=0\r\n"})),
            Ok(SessionCommand::Accept {
                id: CallId("in-1".into()),
                sdp: "v=0\r\n".into()
            })
        );
        assert_eq!(
            parse(json!({"type":"answer","id":"c1","sdp":"v=0\r\n"})),
            Ok(SessionCommand::Answer {
                id: CallId("c1".into()),
                sdp: "v=0\r\n".into()
            })
        );
        assert_eq!(
            parse(json!({"type":"reject","id":"in-1"})),
            Ok(SessionCommand::Reject {
                id: CallId("in-1".into())
            })
        );
    }

    #[test]
    fn dtmf_parses_every_digit() {
        let parsed = parse(json!({"type":"dtmf","id":"c1","digits":"0123456789*#ABCDabcd"}));
        let Ok(SessionCommand::Dtmf { id, digits }) = parsed else {
            panic!("{parsed:?}");
        };
        assert_eq!(id, CallId("c1".into()));
        let text: String = digits.iter().map(|d| d.as_char()).collect();
        assert_eq!(text, "0123456789*#ABCDABCD");
        let max = "#".repeat(MAX_DTMF_DIGITS);
        assert!(parse(json!({"type":"dtmf","id":"c1","digits":max})).is_ok());
    }

    #[test]
    fn hold_and_resume_parse() {
        let id = || CallId("c1".into());
        assert_eq!(
            parse(json!({"type":"hold","id":"c1"})),
            Ok(SessionCommand::Hold {
                id: id(),
                hold: true
            })
        );
        assert_eq!(
            parse(json!({"type":"resume","id":"c1"})),
            Ok(SessionCommand::Hold {
                id: id(),
                hold: false
            })
        );
    }

    #[test]
    fn unknown_type_is_echoed_short() {
        let refusal = parse(json!({"type": "y".repeat(1000)})).unwrap_err();
        assert!(refusal.message.len() < 80, "{}", refusal.message);
    }

    #[test]
    fn events_as_protocol_json() {
        let id = || CallId("c1".into());
        let cases = [
            (
                SessionEvent::Progress {
                    id: id(),
                    code: 180,
                },
                json!({"type":"progress","id":"c1","code":180}),
            ),
            (
                SessionEvent::Dtmf {
                    id: id(),
                    digit: crate::types::DtmfDigit::from_char('#').unwrap(),
                },
                json!({"type":"dtmf","id":"c1","digit":"#"}),
            ),
            (
                SessionEvent::Answer {
                    id: id(),
                    sdp: "v=0\r\n".into(),
                },
                json!({"type":"answer","id":"c1","sdp":"v=0\r\n"}),
            ),
            (
                SessionEvent::Connected {
                    id: id(),
                    security: Security {
                        browser: "dtls-srtp AEAD_AES_128_GCM".into(),
                        trunk: "sdes-srtp AES_CM_128_HMAC_SHA1_80".into(),
                        private: false,
                    },
                },
                json!({"type":"connected","id":"c1","security":{
                    "browser":"dtls-srtp AEAD_AES_128_GCM",
                    "trunk":"sdes-srtp AES_CM_128_HMAC_SHA1_80"}}),
            ),
            (
                SessionEvent::Hangup {
                    id: id(),
                    code: 486,
                    reason: "Busy Here".into(),
                },
                json!({"type":"hangup","id":"c1","code":486,"reason":"Busy Here"}),
            ),
            (
                SessionEvent::Incoming {
                    id: id(),
                    from: "+4930123".into(),
                    sdp: "v=0\r\n".into(),
                    verstat: String::new(),
                },
                json!({"type":"incoming","id":"c1","from":"+4930123","sdp":"v=0\r\n","verstat":""}),
            ),
            (
                SessionEvent::Held {
                    id: id(),
                    by: HoldParty::Trunk,
                },
                json!({"type":"held","id":"c1","by":"trunk"}),
            ),
            (
                SessionEvent::Offer {
                    id: id(),
                    sdp: "v=0\r\n".into(),
                },
                json!({"type":"offer","id":"c1","sdp":"v=0\r\n"}),
            ),
            (
                SessionEvent::Resumed {
                    id: id(),
                    by: HoldParty::Trunk,
                },
                json!({"type":"resumed","id":"c1","by":"trunk"}),
            ),
            (
                SessionEvent::Held {
                    id: id(),
                    by: HoldParty::Browser,
                },
                json!({"type":"held","id":"c1","by":"browser"}),
            ),
            (
                SessionEvent::Transferred {
                    id: id(),
                    to: "200".into(),
                    code: 200,
                },
                json!({"type":"transferred","id":"c1","to":"200","code":200}),
            ),
            (
                SessionEvent::TransferredByTrunk {
                    id: id(),
                    to: "300".into(),
                    code: 100,
                },
                json!({"type":"transferred","id":"c1","to":"300","code":100,"by":"trunk"}),
            ),
            (
                SessionEvent::Error {
                    id: None,
                    code: 400,
                    message: "bad".into(),
                },
                json!({"type":"error","code":400,"message":"bad"}),
            ),
            (
                SessionEvent::Error {
                    id: Some(id()),
                    code: 503,
                    message: "busy".into(),
                },
                json!({"type":"error","id":"c1","code":503,"message":"busy"}),
            ),
        ];
        for (event, expected) in cases {
            let text = event_json(&event);
            assert!(text.starts_with(r#"{"type":"#), "{text}");
            let got: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(got, expected);
        }
    }
}
