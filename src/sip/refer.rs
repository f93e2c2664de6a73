//! Blind transfer by REFER (RFC 3515), the parts that are plain text: the
//! status line of a NOTIFY's `message/sipfrag` body (RFC 3420) and whether
//! a NOTIFY reports on a REFER (`Event: refer`). Sending the REFER is
//! `sip::own_requests`; the B2BUA decides what the outcome means.

/// The status code of a sipfrag body's first line (`SIP/2.0 200 OK`);
/// `None` when the body is no response status line.
pub fn sipfrag_status(body: &str) -> Option<u16> {
    let line = body.trim_start().lines().next()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.eq_ignore_ascii_case("SIP/2.0") {
        return None;
    }
    let code: u16 = parts.next()?.parse().ok()?;
    (100..700).contains(&code).then_some(code)
}

/// Whether an `Event` header value names the refer package (`refer`,
/// `refer;id=93809824`).
pub fn is_refer_event(value: &str) -> bool {
    value
        .split(';')
        .next()
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("refer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sipfrag_status_lines() {
        assert_eq!(sipfrag_status("SIP/2.0 100 Trying\r\n"), Some(100));
        assert_eq!(sipfrag_status("SIP/2.0 200 OK"), Some(200));
        assert_eq!(
            sipfrag_status("  SIP/2.0 486 Busy Here\r\nContent-Length: 0\r\n"),
            Some(486)
        );
        assert_eq!(sipfrag_status("INVITE sip:x SIP/2.0"), None);
        assert_eq!(sipfrag_status("SIP/2.0 abc"), None);
        assert_eq!(sipfrag_status("SIP/2.0 99 Low"), None);
        assert_eq!(sipfrag_status(""), None);
    }

    #[test]
    fn refer_events() {
        assert!(is_refer_event("refer"));
        assert!(is_refer_event("Refer;id=17"));
        assert!(!is_refer_event("presence"));
        assert!(!is_refer_event(""));
    }
}
