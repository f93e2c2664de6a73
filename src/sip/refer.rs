//! Blind transfer by REFER (RFC 3515), the parts that are plain text: the
//! status line of a NOTIFY's `message/sipfrag` body (RFC 3420), whether
//! a NOTIFY reports on a REFER (`Event: refer`), and, for a REFER of the
//! peer that we carry out, whom its `Refer-To` names ([`Referral`]) and the
//! sipfrag of our NOTIFYs. Sending REFER and NOTIFY is `sip::own_requests`;
//! the B2BUA decides what the outcome means.

/// A REFER of the peer that was accepted (202): the B2BUA calls `user` at
/// the call's trunk and reports with NOTIFYs (RFC 3515 2.4.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referral {
    /// The user part of the `Refer-To` URI (the number of a `tel:` URI).
    pub user: String,
    /// The REFER's `Referred-By` (RFC 3892), kept for the new INVITE.
    pub referred_by: Option<String>,
    /// The REFER's CSeq number: the `id` of its NOTIFYs' `Event`.
    pub cseq: u32,
}

/// Why a REFER cannot be carried out, and the status that says so.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferError {
    #[error("the REFER has no Refer-To (400)")]
    Missing,
    #[error("the Refer-To is no sip:, sips: or tel: URI with a user part (400)")]
    Unusable,
    /// `?Replaces=`: an attended transfer (RFC 3891), which would need the
    /// new INVITE to replace a dialog of the trunk's; not done.
    #[error("attended transfer (Refer-To with Replaces) is not supported (501)")]
    Replaces,
}

impl ReferError {
    pub fn status(&self) -> u16 {
        match self {
            ReferError::Missing | ReferError::Unusable => 400,
            ReferError::Replaces => 501,
        }
    }
}

/// The longest number taken from a Refer-To (as the browser's `to`).
const MAX_USER: usize = 64;

/// The number a `Refer-To` value names: the user part of a `sip:`/`sips:`
/// URI (`<sip:200@pbx;transport=udp>`) or the number of a `tel:` URI.
/// Only characters a dialled number has (digits, letters, `+*#.-_`): the
/// user part goes into our Request-URI and To as it is.
pub fn refer_to_user(value: &str) -> Result<String, ReferError> {
    let uri = super::message::addr_uri(value).ok_or(ReferError::Missing)?;
    let (uri, headers) = match uri.split_once('?') {
        Some((u, h)) => (u, h),
        None => (uri.as_str(), ""),
    };
    if headers
        .split('&')
        .any(|h| h.trim().to_ascii_lowercase().starts_with("replaces="))
    {
        return Err(ReferError::Replaces);
    }
    let (scheme, rest) = uri.split_once(':').ok_or(ReferError::Unusable)?;
    let user = match scheme.trim().to_ascii_lowercase().as_str() {
        "sip" | "sips" => rest.split_once('@').ok_or(ReferError::Unusable)?.0,
        "tel" => rest.split(';').next().unwrap_or_default(),
        _ => return Err(ReferError::Unusable),
    };
    // A user part may carry parameters (`200;phone-context=x`): not ours.
    let user = user.split(';').next().unwrap_or_default();
    let dialable = |c: char| c.is_ascii_alphanumeric() || "+*#.-_".contains(c);
    if user.is_empty() || user.len() > MAX_USER || !user.chars().all(dialable) {
        return Err(ReferError::Unusable);
    }
    Ok(user.to_string())
}

/// The `message/sipfrag` body of a NOTIFY about the call a REFER started
/// (RFC 3515 2.4.5): the status line of its latest response.
pub fn sipfrag(code: u16, reason: &str) -> String {
    let reason: String = reason
        .chars()
        .filter(|c| !c.is_control())
        .take(80)
        .collect();
    format!("SIP/2.0 {code} {reason}\r\n")
}

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
    fn refer_to_users() {
        assert_eq!(
            refer_to_user("<sip:200@10.0.0.1:5060;transport=udp>"),
            Ok("200".into())
        );
        assert_eq!(
            refer_to_user("sip:+4930123@pbx.example"),
            Ok("+4930123".into())
        );
        assert_eq!(
            refer_to_user("<sips:alice@pbx>;foo=bar"),
            Ok("alice".into())
        );
        assert_eq!(
            refer_to_user("<tel:+1555123;phone-context=x>"),
            Ok("+1555123".into())
        );
        assert_eq!(refer_to_user("<sip:200;npdi@pbx>"), Ok("200".into()));
        assert_eq!(refer_to_user(""), Err(ReferError::Missing));
        assert_eq!(
            refer_to_user("<sip:pbx.example>"),
            Err(ReferError::Unusable)
        );
        assert_eq!(refer_to_user("<http://x/>"), Err(ReferError::Unusable));
        assert_eq!(refer_to_user("<sip:a b@pbx>"), Err(ReferError::Unusable));
        assert_eq!(refer_to_user("<sip:%41@pbx>"), Err(ReferError::Unusable));
        let long = format!("<sip:{}@pbx>", "1".repeat(65));
        assert_eq!(refer_to_user(&long), Err(ReferError::Unusable));
        let attended = "<sip:200@pbx?Replaces=abc%40host%3Bto-tag%3D1%3Bfrom-tag%3D2>";
        assert_eq!(refer_to_user(attended), Err(ReferError::Replaces));
        assert_eq!(ReferError::Replaces.status(), 501);
        assert_eq!(ReferError::Unusable.status(), 400);
    }

    #[test]
    fn sipfrags() {
        assert_eq!(sipfrag(100, "Trying"), "SIP/2.0 100 Trying\r\n");
        assert_eq!(sipfrag(486, "Busy\r\nX: y"), "SIP/2.0 486 BusyX: y\r\n");
        assert_eq!(sipfrag_status(&sipfrag(603, "Decline")), Some(603));
    }

    #[test]
    fn refer_events() {
        assert!(is_refer_event("refer"));
        assert!(is_refer_event("Refer;id=17"));
        assert!(!is_refer_event("presence"));
        assert!(!is_refer_event(""));
    }
}
