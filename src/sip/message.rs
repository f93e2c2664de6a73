//! Glue over `rsip`: parsing with limits and the checks rsip leaves out
//! (mandatory headers, Content-Length, compact header names, line folding),
//! accessors for the headers the state machines need, builders for the
//! requests and responses the gateway sends, and identifier generation.

use std::fmt::Write as _;

use bytes::Bytes;
use rand::distributions::Alphanumeric;
use rand::Rng;
use rsip::headers::{ToTypedHeader, UntypedHeader};
use rsip::message::HasHeaders;
use rsip::prelude::HeadersExt;
use rsip::{Header, Method, Request, Response, SipMessage};

use super::{SipError, Transport};

/// Largest SIP message accepted on any transport.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024;
/// Value of Max-Forwards on requests the gateway originates.
pub const MAX_FORWARDS: u32 = 70;
/// RFC 3261 section 8.1.1.7: every branch we generate starts with this cookie.
pub const BRANCH_MAGIC: &str = "z9hG4bK";

/// Parses one datagram (or one frame cut from a stream by [`frame_len`]) into
/// a SIP message, enforcing the size limit and the checks rsip does not do.
/// Never panics on any input.
pub fn parse(data: &[u8]) -> Result<SipMessage, SipError> {
    if data.len() > MAX_MESSAGE_SIZE {
        return Err(SipError::TooLarge {
            size: data.len(),
            limit: MAX_MESSAGE_SIZE,
        });
    }
    // RFC 3261's grammar has no control characters in the start line or
    // headers (HTAB aside); a NUL in a Call-ID must not become a dialog key.
    let head_end = find(data, b"\r\n\r\n").unwrap_or(data.len());
    let is_control = |b: &u8| *b < 0x20 && !matches!(b, b'\r' | b'\n' | b'\t');
    if let Some(line) = data[..head_end]
        .split(|b| *b == b'\n')
        .find(|line| line.iter().any(is_control))
    {
        // Name the header in the 400's reason phrase when it is one we know.
        let name = line.split(|b| *b == b':').next().unwrap_or_default();
        let header = transaction_header(&String::from_utf8_lossy(name)).unwrap_or("header");
        return Err(SipError::InvalidHeader {
            header,
            reason: "control character".into(),
        });
    }
    let msg = parse_lenient(data)?;
    validate(msg)
}

/// Methods the gateway understands (what rsip parses); any other token in a
/// request line is an unknown method, answered 501 (RFC 3261 8.2.1).
const KNOWN_METHODS: &[&str] = &[
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "REGISTER",
    "INFO",
    "MESSAGE",
    "NOTIFY",
    "PRACK",
    "PUBLISH",
    "REFER",
    "SUBSCRIBE",
    "UPDATE",
];

/// The canonical name of the headers that identify a request (the ones a
/// response copies, RFC 3261 8.2.6.2), from a raw header name, long or
/// compact form; `None` for any other header.
fn transaction_header(raw_name: &str) -> Option<&'static str> {
    match raw_name.trim().to_ascii_lowercase().as_str() {
        "via" | "v" => Some("Via"),
        "from" | "f" => Some("From"),
        "to" | "t" => Some("To"),
        "call-id" | "i" => Some("Call-ID"),
        "cseq" => Some("CSeq"),
        _ => None,
    }
}

/// Builds an error response for a request that does not parse at all, from
/// its raw lines: 501 for an unknown method, 505 for another SIP version,
/// else 400 with `reason`. The Via, From, To, Call-ID and CSeq lines are
/// copied (RFC 3261 8.2.6.2) after stripping control characters; without a
/// Via there is nowhere to send it, and an ACK is never answered: `None`.
pub fn raw_error_response(data: &[u8], reason: &str) -> Option<Bytes> {
    let head_end = find(data, b"\r\n\r\n").unwrap_or(data.len());
    let head = String::from_utf8_lossy(&data[..head_end.min(MAX_MESSAGE_SIZE)]);
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let request_line = lines.next()?;
    let mut parts = request_line.split(' ');
    let method = parts.next()?;
    let version = request_line.rsplit(' ').next()?;
    // Responses and ACKs are never answered.
    if method == "ACK" || request_line.starts_with("SIP/") {
        return None;
    }
    let token = !method.is_empty()
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b));
    let (code, phrase) = if !token || !version.starts_with("SIP/") {
        (400, reason.to_string())
    } else if version != "SIP/2.0" {
        (505, "Version Not Supported".to_string())
    } else if !KNOWN_METHODS.contains(&method) {
        (501, "Not Implemented".to_string())
    } else {
        (400, reason.to_string())
    };
    let clean = |v: &str| -> String {
        v.chars()
            .filter(|c| !c.is_control())
            .take(1024)
            .collect::<String>()
            .trim()
            .to_string()
    };
    let mut copied = String::new();
    let mut has_via = false;
    for line in lines.take(200) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let Some(canonical) = transaction_header(name) else {
            continue;
        };
        has_via |= canonical == "Via";
        copied.push_str(&format!("{canonical}: {}\r\n", clean(value)));
    }
    if !has_via {
        return None;
    }
    let phrase = clean(&phrase);
    Some(Bytes::from(format!(
        "SIP/2.0 {code} {phrase}\r\n{copied}Server: {}\r\nContent-Length: 0\r\n\r\n",
        crate::sip::uas::USER_AGENT
    )))
}

#[cfg(test)]
mod raw_error_tests {
    use super::*;

    fn answer(msg: &str) -> Option<String> {
        raw_error_response(msg.as_bytes(), "Bad Request")
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    const HEADERS: &str = "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKraw\r\n\
From: <sip:a@192.0.2.1>;tag=1\r\nTo: <sip:b@192.0.2.2>\r\nCall-ID: raw-1\r\nCSeq: 1 X\r\n";

    #[test]
    fn unknown_method_other_version_and_broken_headers() {
        let r = answer(&format!("FOO sip:b@192.0.2.2 SIP/2.0\r\n{HEADERS}\r\n")).unwrap();
        assert!(r.starts_with("SIP/2.0 501 Not Implemented\r\n"), "{r}");
        assert!(r.contains("Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKraw\r\n"));
        assert!(r.contains("Call-ID: raw-1\r\n"));
        let r = answer(&format!("OPTIONS sip:b@192.0.2.2 SIP/3.0\r\n{HEADERS}\r\n")).unwrap();
        assert!(r.starts_with("SIP/2.0 505 "), "{r}");
        let r = answer(&format!(
            "OPTIONS sip:b SIP/2.0\r\n{HEADERS}NoColonHere\r\n\r\n"
        ))
        .unwrap();
        assert!(r.starts_with("SIP/2.0 400 Bad Request\r\n"), "{r}");
        let r = answer(&format!(
            "OPTIONS sip:b SIP/2.0\r\n{}\r\n",
            HEADERS.replace("raw-1", "raw\u{0}-1")
        ))
        .unwrap();
        assert!(
            r.contains("Call-ID: raw-1\r\n"),
            "control characters stripped: {r}"
        );
    }

    #[test]
    fn nothing_to_answer() {
        assert_eq!(
            answer("FOO sip:b SIP/2.0\r\nCall-ID: x\r\n\r\n"),
            None,
            "no Via"
        );
        assert_eq!(answer(&format!("ACK sip:b SIP/2.0\r\n{HEADERS}\r\n")), None);
        assert_eq!(answer(&format!("SIP/2.0 200 OK\r\n{HEADERS}\r\n")), None);
        assert_eq!(answer(""), None);
        assert_eq!(answer("\u{0}\u{1}garbage"), None);
    }

    #[test]
    fn control_characters_in_headers_are_malformed() {
        let msg = format!(
            "OPTIONS sip:b@192.0.2.2 SIP/2.0\r\n{}Content-Length: 0\r\n\r\n",
            HEADERS.replace("raw-1", "raw\u{0}-1")
        );
        assert!(parse(msg.as_bytes()).is_err());
    }
}

/// Parses without checking mandatory headers or Content-Length: used only to
/// salvage enough of a bad request to answer it with a 400.
pub fn parse_lenient(data: &[u8]) -> Result<SipMessage, SipError> {
    if data.len() > MAX_MESSAGE_SIZE {
        return Err(SipError::TooLarge {
            size: data.len(),
            limit: MAX_MESSAGE_SIZE,
        });
    }
    // RFC 3261 section 7.5: CRLFs before the start line are ignored.
    let start = data
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(data.len());
    let data = &data[start..];
    let head_end = find(data, b"\r\n\r\n")
        .ok_or_else(|| SipError::Malformed("no empty line after the headers".into()))?;
    let head = &data[..head_end];
    let body = &data[head_end + 4..];
    // rsip does not unfold continuation lines (RFC 3261 section 7.3.1); a
    // folded header would fail the whole parse, so unfold here.
    let mut cleaned = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < head.len() {
        if head[i] == b'\r'
            && head.get(i + 1) == Some(&b'\n')
            && matches!(head.get(i + 2), Some(b' ') | Some(b'\t'))
        {
            cleaned.push(b' ');
            i += 3;
            while matches!(head.get(i), Some(b' ') | Some(b'\t')) {
                i += 1;
            }
        } else {
            cleaned.push(head[i]);
            i += 1;
        }
    }
    // RFC 3261 HCOLON allows whitespace before the colon ("Via  :"); rsip
    // does not, so drop it from header lines (not from the start line).
    let mut normalized = Vec::with_capacity(cleaned.len() + body.len() + 4);
    for (n, line) in cleaned.split(|b| *b == b'\n').enumerate() {
        if n > 0 {
            normalized.push(b'\n');
        }
        let colon = line.iter().position(|b| *b == b':');
        match colon {
            Some(c) if n > 0 && c > 0 && matches!(line[c - 1], b' ' | b'\t') => {
                let name_end = line[..c]
                    .iter()
                    .rposition(|b| !matches!(b, b' ' | b'\t'))
                    .map_or(0, |p| p + 1);
                normalized.extend_from_slice(&line[..name_end]);
                normalized.extend_from_slice(&line[c..]);
            }
            _ => normalized.extend_from_slice(line),
        }
    }
    let mut cleaned = normalized;
    cleaned.extend_from_slice(b"\r\n\r\n");
    cleaned.extend_from_slice(body);
    let mut msg = SipMessage::try_from(cleaned.as_slice())
        .map_err(|e| SipError::Malformed(truncate(&e.to_string(), 160)))?;
    expand_compact_headers(msg.headers_mut());
    // rsip keeps the reason phrase only for codes it does not know; keep the
    // peer's own phrase for every code, it is what the operator sees.
    if let SipMessage::Response(resp) = &mut msg {
        let first_line = cleaned.split(|b| *b == b'\r').next().unwrap_or_default();
        let line = String::from_utf8_lossy(first_line);
        if let Some(reason) = line.splitn(3, ' ').nth(2) {
            resp.status_code = rsip::StatusCode::Other(resp.status_code.code(), reason.to_string());
        }
    }
    Ok(msg)
}

/// RFC 3261 section 7.3.3 compact forms; rsip only knows the long names.
fn expand_compact_headers(headers: &mut rsip::Headers) {
    for h in headers.iter_mut() {
        if let Header::Other(name, value) = h {
            let value = value.clone();
            let expanded = match name.to_ascii_lowercase().as_str() {
                "i" => Header::CallId(value.into()),
                "m" => Header::Contact(value.into()),
                "e" => Header::ContentEncoding(value.into()),
                "l" => Header::ContentLength(value.into()),
                "c" => Header::ContentType(value.into()),
                "f" => Header::From(value.into()),
                "s" => Header::Subject(value.into()),
                "k" => Header::Supported(value.into()),
                "t" => Header::To(value.into()),
                "v" => Header::Via(value.into()),
                _ => continue,
            };
            *h = expanded;
        }
    }
}

fn validate(mut msg: SipMessage) -> Result<SipMessage, SipError> {
    for (name, count) in [
        ("Via", count_headers(&msg, |h| matches!(h, Header::Via(_)))),
        (
            "From",
            count_headers(&msg, |h| matches!(h, Header::From(_))),
        ),
        ("To", count_headers(&msg, |h| matches!(h, Header::To(_)))),
        (
            "Call-ID",
            count_headers(&msg, |h| matches!(h, Header::CallId(_))),
        ),
        (
            "CSeq",
            count_headers(&msg, |h| matches!(h, Header::CSeq(_))),
        ),
    ] {
        if count == 0 {
            return Err(SipError::MissingHeader(name));
        }
        if count > 1 && name != "Via" {
            return Err(SipError::InvalidHeader {
                header: name,
                reason: format!("appears {count} times"),
            });
        }
    }
    if call_id(&msg)?.is_empty() {
        return Err(SipError::InvalidHeader {
            header: "Call-ID",
            reason: "empty".into(),
        });
    }
    let (seq, method) = cseq(&msg)?;
    // RFC 3261 section 8.1.1.5: the sequence number is below 2**31.
    if seq >= 1 << 31 {
        return Err(SipError::InvalidHeader {
            header: "CSeq",
            reason: format!("sequence number {seq} is not below 2**31"),
        });
    }
    if let SipMessage::Request(req) = &msg {
        if req.method != method {
            return Err(SipError::InvalidHeader {
                header: "CSeq",
                reason: format!("method {method} differs from request method {}", req.method),
            });
        }
    }
    top_via(&msg)?;
    from_tag_checked(&msg)?;
    to_tag_checked(&msg)?;

    let mut declared = None;
    for h in msg.headers().iter() {
        if let Header::ContentLength(cl) = h {
            let n = cl
                .value()
                .trim()
                .parse::<usize>()
                .map_err(|_| SipError::InvalidHeader {
                    header: "Content-Length",
                    reason: format!("{:?} is not a length", truncate(cl.value(), 40)),
                })?;
            if declared.is_some_and(|d| d != n) {
                return Err(SipError::InvalidHeader {
                    header: "Content-Length",
                    reason: "appears twice with different values".into(),
                });
            }
            declared = Some(n);
        }
    }
    if let Some(declared) = declared {
        let actual = msg.body().len();
        if declared > actual {
            return Err(SipError::ContentLength { declared, actual });
        }
        // RFC 3261 section 18.3: bytes past Content-Length are discarded.
        msg.body_mut().truncate(declared);
    }
    Ok(msg)
}

fn count_headers(msg: &SipMessage, pred: impl Fn(&Header) -> bool) -> usize {
    msg.headers().iter().filter(|h| pred(h)).count()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// One unit cut from the front of a stream buffer by [`frame_len`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A complete message of this many bytes (headers and body).
    Message(usize),
    /// Keep-alive CRLFs (RFC 5626) of this many bytes, to be skipped.
    KeepAlive(usize),
}

/// Frames a stream (TCP) buffer by Content-Length. `Ok(None)` means more bytes
/// are needed; an error means the stream is unusable and must be closed.
pub fn frame_len(buf: &[u8]) -> Result<Option<Frame>, SipError> {
    let crlfs = buf
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    if crlfs > 0 {
        return Ok(Some(Frame::KeepAlive(crlfs)));
    }
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_MESSAGE_SIZE {
            return Err(SipError::TooLarge {
                size: buf.len(),
                limit: MAX_MESSAGE_SIZE,
            });
        }
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut content_length = 0usize;
    for line in head.split("\r\n") {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l") {
            content_length =
                value
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| SipError::InvalidHeader {
                        header: "Content-Length",
                        reason: format!("{:?} is not a length", truncate(value.trim(), 40)),
                    })?;
        }
    }
    let total = head_end.saturating_add(4).saturating_add(content_length);
    if total > MAX_MESSAGE_SIZE {
        return Err(SipError::TooLarge {
            size: total,
            limit: MAX_MESSAGE_SIZE,
        });
    }
    if buf.len() >= total {
        Ok(Some(Frame::Message(total)))
    } else {
        Ok(None)
    }
}

// ---------------------------------------------------------------- accessors

pub fn call_id<H: HeadersExt>(msg: &H) -> Result<String, SipError> {
    msg.call_id_header()
        .map(|h| h.value().trim().to_string())
        .map_err(|_| SipError::MissingHeader("Call-ID"))
}

/// The CSeq number and method.
pub fn cseq<H: HeadersExt>(msg: &H) -> Result<(u32, Method), SipError> {
    let h = msg
        .cseq_header()
        .map_err(|_| SipError::MissingHeader("CSeq"))?;
    let mut parts = h.value().split_whitespace();
    let (Some(num), Some(method), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(SipError::InvalidHeader {
            header: "CSeq",
            reason: format!("{:?} is not \"number method\"", truncate(h.value(), 40)),
        });
    };
    let num = num.parse::<u32>().map_err(|_| SipError::InvalidHeader {
        header: "CSeq",
        reason: format!("{:?} is not a sequence number", truncate(num, 20)),
    })?;
    let method = method
        .parse::<Method>()
        .map_err(|_| SipError::InvalidHeader {
            header: "CSeq",
            reason: format!("unknown method {:?}", truncate(method, 20)),
        })?;
    Ok((num, method))
}

/// The top Via, typed.
pub fn top_via<H: HeadersExt>(msg: &H) -> Result<rsip::typed::Via, SipError> {
    let h = msg
        .via_header()
        .map_err(|_| SipError::MissingHeader("Via"))?;
    // A Via header may hold several comma-separated values; the top one is first.
    let first = split_top_level_commas(h.value())
        .into_iter()
        .next()
        .unwrap_or_default();
    rsip::headers::Via::new(first)
        .typed()
        .map_err(|e| SipError::InvalidHeader {
            header: "Via",
            reason: truncate(&e.to_string(), 80),
        })
}

/// The branch parameter of the top Via, when present.
pub fn top_via_branch<H: HeadersExt>(msg: &H) -> Option<String> {
    top_via(msg).ok()?.branch().map(|b| b.value().to_string())
}

fn from_tag_checked<H: HeadersExt>(msg: &H) -> Result<Option<String>, SipError> {
    let h = msg
        .from_header()
        .map_err(|_| SipError::MissingHeader("From"))?;
    tag_param(h.value()).map_err(|reason| SipError::InvalidHeader {
        header: "From",
        reason,
    })
}

fn to_tag_checked<H: HeadersExt>(msg: &H) -> Result<Option<String>, SipError> {
    let h = msg.to_header().map_err(|_| SipError::MissingHeader("To"))?;
    tag_param(h.value()).map_err(|reason| SipError::InvalidHeader {
        header: "To",
        reason,
    })
}

/// The tag of the From header.
pub fn from_tag<H: HeadersExt>(msg: &H) -> Option<String> {
    from_tag_checked(msg).ok().flatten()
}

/// The tag of the To header.
pub fn to_tag<H: HeadersExt>(msg: &H) -> Option<String> {
    to_tag_checked(msg).ok().flatten()
}

/// The `tag` parameter of a name-addr header value (From/To). Parameters
/// inside `<...>` belong to the URI, not the header.
fn tag_param(value: &str) -> Result<Option<String>, String> {
    let params = header_params(value)?;
    Ok(params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("tag"))
        .and_then(|(_, v)| v.clone()))
}

/// Header parameters after the address (after `>` if bracketed).
fn header_params(value: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let rest = match value.find('<') {
        Some(open) => {
            let close = value[open..]
                .find('>')
                .ok_or_else(|| "unclosed '<'".to_string())?;
            &value[open + close + 1..]
        }
        None => match value.find(';') {
            Some(i) => &value[i..],
            None => "",
        },
    };
    Ok(rest
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.trim().to_string(), Some(v.trim().to_string())),
            None => (p.to_string(), None),
        })
        .collect())
}

/// The URI inside a name-addr or addr-spec value: `"Bob" <sip:b@h>;tag=1` → `sip:b@h`.
pub fn addr_uri(value: &str) -> Option<String> {
    let value = value.trim();
    let uri = match value.find('<') {
        Some(open) => {
            let close = value[open..].find('>')?;
            &value[open + 1..open + close]
        }
        None => value.split(';').next().unwrap_or(value),
    };
    let uri = uri.trim();
    (!uri.is_empty()).then(|| uri.to_string())
}

/// The URI of the first Contact.
pub fn contact_uri<H: HeadersExt>(msg: &H) -> Option<String> {
    let h = msg.contact_header().ok()?;
    let first = split_top_level_commas(h.value()).into_iter().next()?;
    addr_uri(&first)
}

/// The body as text when there is one (SDP is UTF-8 by RFC 4566).
pub fn body_text<H: HeadersExt + Body>(msg: &H) -> Option<String> {
    let body = msg.body_bytes();
    if body.is_empty() {
        return None;
    }
    String::from_utf8(body.to_vec()).ok()
}

/// The body if it is SDP (`application/sdp`), as text.
pub fn sdp_body<H: HeadersExt + Body>(msg: &H) -> Option<String> {
    let ct = content_type(msg)?;
    if !ct.to_ascii_lowercase().starts_with("application/sdp") {
        return None;
    }
    body_text(msg)
}

/// The Content-Type value, without surrounding whitespace.
pub fn content_type<H: HeadersExt>(msg: &H) -> Option<String> {
    msg.headers().iter().find_map(|h| match h {
        Header::ContentType(ct) => Some(ct.value().trim().to_string()),
        _ => None,
    })
}

/// Record-Route values in message order, one entry per route (comma-split).
pub fn record_routes<H: HeadersExt>(msg: &H) -> Vec<String> {
    msg.headers()
        .iter()
        .filter_map(|h| match h {
            Header::RecordRoute(rr) => Some(split_top_level_commas(rr.value())),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Values of headers named `name` (case-insensitive), including unknown ones.
pub fn header_values<H: HeadersExt>(msg: &H, name: &str) -> Vec<String> {
    msg.headers()
        .iter()
        .filter_map(|h| {
            let line = h.to_string();
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
        .collect()
}

/// Splits at commas that are outside quotes and angle brackets.
pub fn split_top_level_commas(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut in_quotes, mut in_angle) = (false, false);
    let mut escaped = false;
    for c in value.chars() {
        if escaped {
            escaped = false;
            cur.push(c);
            continue;
        }
        match c {
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '<' if !in_quotes => in_angle = true,
            '>' if !in_quotes => in_angle = false,
            ',' if !in_quotes && !in_angle => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// Access to the body of any message type.
pub trait Body {
    fn body_bytes(&self) -> &[u8];
}
impl Body for SipMessage {
    fn body_bytes(&self) -> &[u8] {
        self.body()
    }
}
impl Body for Request {
    fn body_bytes(&self) -> &[u8] {
        &self.body
    }
}
impl Body for Response {
    fn body_bytes(&self) -> &[u8] {
        &self.body
    }
}

pub fn status_code(resp: &Response) -> u16 {
    resp.status_code.code()
}

// ----------------------------------------------------------- identifiers

fn random_token(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A fresh RFC 3261 branch: the magic cookie and 16 random characters.
pub fn new_branch() -> String {
    format!("{BRANCH_MAGIC}{}", random_token(16))
}

/// A fresh From/To tag.
pub fn new_tag() -> String {
    random_token(12)
}

/// A fresh, globally unique Call-ID.
pub fn new_call_id() -> String {
    random_token(24)
}

// --------------------------------------------------------------- builders

/// The value of a Via header we originate (`rport` asks for symmetric responses, RFC 3581).
pub fn via_value(host: &str, port: u16, transport: Transport, branch: &str) -> String {
    format!(
        "SIP/2.0/{} {}:{};branch={};rport",
        transport.via_name(),
        host_for_uri(host),
        port,
        branch
    )
}

/// IPv6 literals go in brackets inside URIs and Via.
fn host_for_uri(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Everything needed to write a request the gateway originates.
#[derive(Debug, Clone)]
pub struct RequestParts<'a> {
    pub method: Method,
    pub uri: &'a str,
    /// The full Via value, see [`via_value`].
    pub via: String,
    /// Full From value including `;tag=`.
    pub from: &'a str,
    /// Full To value (with `;tag=` inside a dialog).
    pub to: &'a str,
    pub call_id: &'a str,
    pub cseq: u32,
    pub contact: Option<&'a str>,
    /// Route header values, in order.
    pub routes: &'a [String],
    pub user_agent: &'a str,
    /// `(content type, body)`.
    pub body: Option<(&'a str, &'a str)>,
    /// Further headers (Authorization, Proxy-Authorization, ...).
    pub extra: Vec<Header>,
}

/// Writes a request with the mandatory headers of RFC 3261 section 8.1.1.
pub fn build_request(parts: RequestParts<'_>) -> Result<Request, SipError> {
    let uri = rsip::Uri::try_from(parts.uri).map_err(|e| SipError::InvalidUri {
        uri: parts.uri.to_string(),
        reason: truncate(&e.to_string(), 80),
    })?;
    let mut headers = rsip::Headers::default();
    headers.push(Header::Via(parts.via.into()));
    headers.push(Header::MaxForwards(MAX_FORWARDS.to_string().into()));
    headers.push(Header::From(parts.from.into()));
    headers.push(Header::To(parts.to.into()));
    headers.push(Header::CallId(parts.call_id.into()));
    headers.push(Header::CSeq(
        format!("{} {}", parts.cseq, parts.method).into(),
    ));
    for route in parts.routes {
        headers.push(Header::Route(route.as_str().into()));
    }
    if let Some(contact) = parts.contact {
        headers.push(Header::Contact(contact.into()));
    }
    for h in parts.extra {
        headers.push(h);
    }
    if !parts.user_agent.is_empty() {
        headers.push(Header::UserAgent(parts.user_agent.into()));
    }
    let body = match parts.body {
        Some((ct, body)) => {
            headers.push(Header::ContentType(ct.into()));
            body.as_bytes().to_vec()
        }
        None => Vec::new(),
    };
    headers.push(Header::ContentLength(body.len().to_string().into()));
    Ok(Request {
        method: parts.method,
        uri,
        version: rsip::Version::V2,
        headers,
        body,
    })
}

/// The ACK for a non-2xx final response, built by the INVITE client
/// transaction (RFC 3261 section 17.1.1.3): same Request-URI, top Via and
/// Route as the INVITE, To from the response.
pub fn ack_for_non_2xx(invite: &Request, resp: &Response) -> Request {
    let mut headers = rsip::Headers::default();
    if let Ok(via) = invite.via_header() {
        headers.push(Header::Via(via.clone()));
    }
    headers.push(Header::MaxForwards(MAX_FORWARDS.to_string().into()));
    copy_header(&mut headers, invite, |h| matches!(h, Header::From(_)));
    match resp.to_header() {
        Ok(to) => headers.push(Header::To(to.clone())),
        Err(_) => copy_header(&mut headers, invite, |h| matches!(h, Header::To(_))),
    }
    copy_header(&mut headers, invite, |h| matches!(h, Header::CallId(_)));
    let seq = cseq(invite).map(|(n, _)| n).unwrap_or(1);
    headers.push(Header::CSeq(format!("{seq} ACK").into()));
    copy_header(&mut headers, invite, |h| matches!(h, Header::Route(_)));
    headers.push(Header::ContentLength("0".into()));
    Request {
        method: Method::Ack,
        uri: invite.uri.clone(),
        version: rsip::Version::V2,
        headers,
        body: Vec::new(),
    }
}

/// The CANCEL for a pending INVITE (RFC 3261 section 9.1): same Request-URI,
/// top Via (branch), From, To, Call-ID, CSeq number and Route.
pub fn cancel_for(invite: &Request, user_agent: &str) -> Request {
    let mut headers = rsip::Headers::default();
    if let Ok(via) = invite.via_header() {
        headers.push(Header::Via(via.clone()));
    }
    headers.push(Header::MaxForwards(MAX_FORWARDS.to_string().into()));
    copy_header(&mut headers, invite, |h| matches!(h, Header::From(_)));
    copy_header(&mut headers, invite, |h| matches!(h, Header::To(_)));
    copy_header(&mut headers, invite, |h| matches!(h, Header::CallId(_)));
    let seq = cseq(invite).map(|(n, _)| n).unwrap_or(1);
    headers.push(Header::CSeq(format!("{seq} CANCEL").into()));
    copy_header(&mut headers, invite, |h| matches!(h, Header::Route(_)));
    if !user_agent.is_empty() {
        headers.push(Header::UserAgent(user_agent.into()));
    }
    headers.push(Header::ContentLength("0".into()));
    Request {
        method: Method::Cancel,
        uri: invite.uri.clone(),
        version: rsip::Version::V2,
        headers,
        body: Vec::new(),
    }
}

fn copy_header<H: HeadersExt>(into: &mut rsip::Headers, from: &H, pred: impl Fn(&Header) -> bool) {
    for h in from.headers().iter().filter(|h| pred(h)) {
        into.push(h.clone());
    }
}

/// The optional parts of a response.
#[derive(Debug, Clone, Default)]
pub struct ResponseParts<'a> {
    /// Reason phrase; the standard one for the code when `None`.
    pub reason: Option<&'a str>,
    /// Added to To when the request's To has no tag yet.
    pub to_tag: Option<&'a str>,
    pub contact: Option<&'a str>,
    /// `(content type, body)`.
    pub body: Option<(&'a str, &'a str)>,
    pub user_agent: &'a str,
    pub extra: Vec<Header>,
}

/// Writes a response to `req` (RFC 3261 section 8.2.6.2): Via, From, To,
/// Call-ID and CSeq copied, a To tag added when asked and absent, and
/// Record-Route copied for dialog-creating responses.
pub fn build_response(req: &Request, code: u16, parts: ResponseParts<'_>) -> Response {
    let mut headers = rsip::Headers::default();
    copy_header(&mut headers, req, |h| matches!(h, Header::Via(_)));
    copy_header(&mut headers, req, |h| matches!(h, Header::From(_)));
    for h in req.headers().iter() {
        if let Header::To(to) = h {
            let mut value = to.value().to_string();
            if let Some(tag) = parts.to_tag {
                if matches!(tag_param(&value), Ok(None)) && code != 100 {
                    let _ = write!(value, ";tag={tag}");
                }
            }
            headers.push(Header::To(value.into()));
        }
    }
    copy_header(&mut headers, req, |h| matches!(h, Header::CallId(_)));
    copy_header(&mut headers, req, |h| matches!(h, Header::CSeq(_)));
    if req.method == Method::Invite && (101..300).contains(&code) {
        copy_header(&mut headers, req, |h| matches!(h, Header::RecordRoute(_)));
    }
    if let Some(contact) = parts.contact {
        headers.push(Header::Contact(contact.into()));
    }
    for h in parts.extra {
        headers.push(h);
    }
    if !parts.user_agent.is_empty() {
        headers.push(Header::Server(parts.user_agent.into()));
    }
    let body = match parts.body {
        Some((ct, body)) => {
            headers.push(Header::ContentType(ct.into()));
            body.as_bytes().to_vec()
        }
        None => Vec::new(),
    };
    headers.push(Header::ContentLength(body.len().to_string().into()));
    let reason = parts.reason.unwrap_or_else(|| reason_phrase(code));
    Response {
        status_code: rsip::StatusCode::Other(code, sanitize_reason(reason)),
        version: rsip::Version::V2,
        headers,
        body,
    }
}

/// Reason phrases must not break the status line.
fn sanitize_reason(reason: &str) -> String {
    let clean: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    truncate(clean.trim(), 100)
}

/// The standard reason phrase of a status code.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        413 => "Request Entity Too Large",
        415 => "Unsupported Media Type",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        c if (100..200).contains(&c) => "Progress",
        c if (200..300).contains(&c) => "OK",
        c if (300..400).contains(&c) => "Redirect",
        c if (400..500).contains(&c) => "Client Error",
        c if (500..600).contains(&c) => "Server Error",
        _ => "Global Failure",
    }
}

/// The reason phrase of a received response.
/// Peer text: control characters removed and length capped before it
/// travels on (to a browser, a log, a CDR).
pub fn response_reason(resp: &Response) -> String {
    match &resp.status_code {
        rsip::StatusCode::Other(_, reason) => sanitize_reason(reason),
        other => reason_phrase(other.code()).to_string(),
    }
}

/// Serialises a message for the wire.
pub fn to_bytes(msg: impl Into<SipMessage>) -> Bytes {
    Bytes::from(msg.into().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@pc33.atlanta.example.com>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\
\r\n\
v=0\n";

    fn with(header_line_from: &str, header_line_to: &str) -> String {
        INVITE.replace(header_line_from, header_line_to)
    }

    #[test]
    fn parses_a_valid_invite_and_reads_headers() {
        let msg = parse(INVITE.as_bytes()).unwrap();
        assert_eq!(
            call_id(&msg).unwrap(),
            "a84b4c76e66710@pc33.atlanta.example.com"
        );
        assert_eq!(cseq(&msg).unwrap(), (314159, Method::Invite));
        assert_eq!(top_via_branch(&msg).as_deref(), Some("z9hG4bK776asdhds"));
        assert_eq!(from_tag(&msg).as_deref(), Some("1928301774"));
        assert_eq!(to_tag(&msg), None);
        assert_eq!(
            contact_uri(&msg).as_deref(),
            Some("sip:alice@pc33.atlanta.example.com")
        );
        assert_eq!(content_type(&msg).as_deref(), Some("application/sdp"));
        assert_eq!(sdp_body(&msg).as_deref(), Some("v=0\n"));
    }

    #[test]
    fn missing_mandatory_headers_are_named() {
        for (line, name) in [
            (
                "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n",
                "Via",
            ),
            ("To: Bob <sip:bob@biloxi.example.com>\r\n", "To"),
            (
                "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n",
                "From",
            ),
            (
                "Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n",
                "Call-ID",
            ),
            ("CSeq: 314159 INVITE\r\n", "CSeq"),
        ] {
            let msg = with(line, "");
            match parse(msg.as_bytes()) {
                Err(SipError::MissingHeader(h)) => assert_eq!(h, name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn torture_messages_are_rejected_without_panic() {
        let cases: Vec<Vec<u8>> = vec![
            // Content-Length larger than the body (truncated datagram).
            with("Content-Length: 4", "Content-Length: 9999").into_bytes(),
            // Content-Length not a number, negative.
            with("Content-Length: 4", "Content-Length: four").into_bytes(),
            with("Content-Length: 4", "Content-Length: -4").into_bytes(),
            // Negative, huge, non-numeric CSeq; method mismatch.
            with("CSeq: 314159 INVITE", "CSeq: -1 INVITE").into_bytes(),
            with("CSeq: 314159 INVITE", "CSeq: 4294967296 INVITE").into_bytes(),
            with("CSeq: 314159 INVITE", "CSeq: 2147483648 INVITE").into_bytes(),
            with("CSeq: 314159 INVITE", "CSeq: abc INVITE").into_bytes(),
            with("CSeq: 314159 INVITE", "CSeq: 314159 BYE").into_bytes(),
            with("CSeq: 314159 INVITE", "CSeq: 314159").into_bytes(),
            // Two Call-IDs.
            with("CSeq:", "Call-ID: other\r\nCSeq:").into_bytes(),
            // Empty Call-ID.
            with(
                "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
                "Call-ID: ",
            )
            .into_bytes(),
            // Bad Via, unclosed To.
            with(
                "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds",
                "Via: garbage",
            )
            .into_bytes(),
            with(
                "To: Bob <sip:bob@biloxi.example.com>",
                "To: Bob <sip:bob@biloxi",
            )
            .into_bytes(),
            // Garbage, empty, binary, no header end, bad start lines.
            b"".to_vec(),
            b"\r\n\r\n".to_vec(),
            b"garbage garbage garbage".to_vec(),
            (0u8..=255).collect(),
            INVITE.replace("\r\n\r\n", "\r\n").into_bytes(),
            INVITE.replace("SIP/2.0\r\n", "SIP/7.0\r\n").into_bytes(),
            b"SIP/2.0 999999 Huh\r\n\r\n".to_vec(),
            // A header line without a colon.
            with("Max-Forwards: 70", "Max-Forwards 70").into_bytes(),
            // Non-UTF-8 in a header value.
            with("Max-Forwards: 70", "Subject: \u{0}\u{7f}")
                .into_bytes()
                .into_iter()
                .map(|b| if b == 0 { 0xff } else { b })
                .collect(),
        ];
        for (i, case) in cases.iter().enumerate() {
            assert!(parse(case).is_err(), "case {i} accepted");
        }
        // Every prefix of a valid message parses or fails, never panics.
        for n in 0..INVITE.len() {
            let _ = parse(&INVITE.as_bytes()[..n]);
        }
    }

    #[test]
    fn random_mutations_never_panic() {
        let mut rng = rand::thread_rng();
        for _ in 0..3000 {
            let mut bytes = INVITE.as_bytes().to_vec();
            for _ in 0..rng.gen_range(1..8) {
                let i = rng.gen_range(0..bytes.len());
                match rng.gen_range(0..3) {
                    0 => bytes[i] = rng.gen(),
                    1 => {
                        bytes.remove(i);
                    }
                    _ => {
                        const SPECIAL: &[u8] = b":;<>\"\r\n, =@";
                        bytes.insert(i, SPECIAL[rng.gen_range(0..SPECIAL.len())])
                    }
                }
            }
            let _ = parse(&bytes);
            let _ = frame_len(&bytes);
        }
    }

    #[test]
    fn huge_messages_and_headers_are_refused() {
        let big = with(
            "Max-Forwards: 70",
            &format!("Max-Forwards: 70\r\nSubject: {}", "x".repeat(70_000)),
        );
        assert!(matches!(
            parse(big.as_bytes()),
            Err(SipError::TooLarge { limit: 65536, .. })
        ));
        let many = with("Max-Forwards: 70", &"X-H: y\r\n".repeat(9000));
        assert!(matches!(
            parse(many.as_bytes()),
            Err(SipError::TooLarge { .. })
        ));
    }

    #[test]
    fn extra_body_bytes_are_discarded_and_compact_folded_forms_work() {
        let msg = parse(with("Content-Length: 4", "Content-Length: 2").as_bytes()).unwrap();
        assert_eq!(msg.body(), b"v=");
        let compact = "\r\nBYE sip:bob@h SIP/2.0\r\n\
v: SIP/2.0/UDP h;branch=z9hG4bKx\r\n\
f: <sip:a@h>;tag=1\r\n\
t: <sip:b@h>;\r\n tag=2\r\n\
i: cid\r\n\
CSeq: 2 BYE\r\n\
l: 0\r\n\r\n";
        let msg = parse(compact.as_bytes()).unwrap();
        assert_eq!(call_id(&msg).unwrap(), "cid");
        let spaced = compact.replace("i: cid", "Call-ID \t :  cid");
        assert_eq!(call_id(&parse(spaced.as_bytes()).unwrap()).unwrap(), "cid");
        assert_eq!(to_tag(&msg).as_deref(), Some("2"));
        assert_eq!(top_via_branch(&msg).as_deref(), Some("z9hG4bKx"));
    }

    #[test]
    fn builders_round_trip() {
        let via = via_value("192.0.2.1", 5060, Transport::Udp, &new_branch());
        let req = build_request(RequestParts {
            method: Method::Invite,
            uri: "sip:123@trunk.example:5070",
            via,
            from: "<sip:gw@192.0.2.1>;tag=abc",
            to: "<sip:123@trunk.example:5070>",
            call_id: "cid-1",
            cseq: 1,
            contact: Some("<sip:gw@192.0.2.1:5060;transport=udp>"),
            routes: &[],
            user_agent: "test-ua",
            body: Some(("application/sdp", "v=0\r\n")),
            extra: vec![],
        })
        .unwrap();
        let bytes = to_bytes(req.clone());
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.starts_with("INVITE sip:123@trunk.example:5070 SIP/2.0\r\n"));
        assert!(text.contains("Max-Forwards: 70\r\n"));
        assert!(text.contains("Content-Length: 5\r\n"));
        assert!(text.contains("User-Agent: test-ua\r\n"));
        let parsed = parse(&bytes).unwrap();
        assert_eq!(cseq(&parsed).unwrap(), (1, Method::Invite));
        assert!(top_via_branch(&parsed).unwrap().starts_with(BRANCH_MAGIC));
        assert_eq!(sdp_body(&parsed).as_deref(), Some("v=0\r\n"));

        for code in [100u16, 180, 200, 400, 481, 486, 488, 503] {
            let resp = build_response(
                &req,
                code,
                ResponseParts {
                    to_tag: Some("tt"),
                    ..Default::default()
                },
            );
            let bytes = to_bytes(resp);
            let parsed = parse(&bytes).unwrap();
            let SipMessage::Response(r) = &parsed else {
                panic!()
            };
            assert_eq!(status_code(r), code);
            assert_eq!(response_reason(r), reason_phrase(code));
            assert_eq!(call_id(&parsed).unwrap(), "cid-1");
            assert_eq!(to_tag(&parsed).as_deref(), (code != 100).then_some("tt"));
        }
        let ok = build_response(
            &req,
            200,
            ResponseParts {
                to_tag: Some("tt"),
                body: Some(("application/sdp", "v=0\r\n")),
                contact: Some("<sip:b@h>"),
                ..Default::default()
            },
        );
        let parsed = parse(&to_bytes(ok)).unwrap();
        assert_eq!(sdp_body(&parsed).as_deref(), Some("v=0\r\n"));
        assert_eq!(contact_uri(&parsed).as_deref(), Some("sip:b@h"));

        let cancel = parse(&to_bytes(cancel_for(&req, "ua"))).unwrap();
        assert_eq!(cseq(&cancel).unwrap(), (1, Method::Cancel));
        assert_eq!(top_via_branch(&cancel), top_via_branch(&req));

        let bad = build_response(
            &req,
            400,
            ResponseParts {
                reason: Some("Missing\r\nCall-ID"),
                ..Default::default()
            },
        );
        let parsed = parse(&to_bytes(bad)).unwrap();
        let SipMessage::Response(r) = parsed else {
            panic!()
        };
        assert_eq!(response_reason(&r), "Missing  Call-ID");
    }

    #[test]
    fn stream_framing_by_content_length() {
        let mut buf = b"\r\n\r\n".to_vec();
        assert_eq!(frame_len(&buf).unwrap(), Some(Frame::KeepAlive(4)));
        buf.clear();
        buf.extend_from_slice(&INVITE.as_bytes()[..50]);
        assert_eq!(frame_len(&buf).unwrap(), None);
        buf.clear();
        buf.extend_from_slice(INVITE.as_bytes());
        buf.extend_from_slice(b"INVITE sip:x SIP/2.0\r\n");
        assert_eq!(frame_len(&buf).unwrap(), Some(Frame::Message(INVITE.len())));
        let bad = with("Content-Length: 4", "Content-Length: 99999999");
        assert!(frame_len(bad.as_bytes()).is_err());
    }

    #[test]
    fn identifiers_are_fresh() {
        assert_ne!(new_branch(), new_branch());
        assert_ne!(new_tag(), new_tag());
        assert_ne!(new_call_id(), new_call_id());
        assert!(new_branch().starts_with("z9hG4bK"));
    }
}
