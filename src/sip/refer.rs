//! Blind transfer by REFER (RFC 3515), the parts that are plain text: the
//! status line of a NOTIFY's `message/sipfrag` body (RFC 3420), whether
//! a NOTIFY reports on a REFER (`Event: refer`), and, for a REFER of the
//! peer that we carry out, whom its `Refer-To` names ([`Referral`]: a
//! number, and for an attended transfer the dialog the new call replaces)
//! and the sipfrag of our NOTIFYs. Sending REFER and NOTIFY is `sip::own_requests`;
//! the B2BUA decides what the outcome means.

/// A REFER of the peer that was accepted (202): the B2BUA calls `user` at
/// the call's trunk and reports with NOTIFYs (RFC 3515 2.4.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referral {
    /// The user part of the `Refer-To` URI (the number of a `tel:` URI).
    pub user: String,
    /// The REFER's `Referred-By` (RFC 3892), kept for the new INVITE.
    pub referred_by: Option<String>,
    /// An attended transfer: the `Replaces` value (RFC 3891) the Refer-To
    /// URI carried (`call-id;to-tag=..;from-tag=..`, unescaped), for the
    /// new INVITE, which then replaces that dialog at the trunk.
    pub replaces: Option<String>,
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
    /// `?Replaces=` that is not `call-id;to-tag=..;from-tag=..` (RFC 3891 6.1).
    #[error("the Refer-To's Replaces is not call-id;to-tag=..;from-tag=.. (400)")]
    Replaces,
}

impl ReferError {
    pub fn status(&self) -> u16 {
        match self {
            ReferError::Missing | ReferError::Unusable | ReferError::Replaces => 400,
        }
    }
}

/// The longest number taken from a Refer-To (as the browser's `to`).
const MAX_USER: usize = 64;

/// The number a `Refer-To` value names: the user part of a `sip:`/`sips:`
/// URI (`<sip:200@pbx;transport=udp>`) or the number of a `tel:` URI.
/// Only characters a dialled number has (digits, letters, `+*#.-_`): the
/// user part goes into our Request-URI and To as it is.
/// With it, the `Replaces` the URI's headers carry (an attended transfer).
pub fn refer_to_user(value: &str) -> Result<(String, Option<String>), ReferError> {
    let uri = super::message::addr_uri(value).ok_or(ReferError::Missing)?;
    let (uri, headers) = match uri.split_once('?') {
        Some((u, h)) => (u, h),
        None => (uri.as_str(), ""),
    };
    let replaces = headers
        .split('&')
        .find_map(|h| {
            let (name, value) = h.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("replaces")
                .then_some(value)
        })
        .map(replaces_value)
        .transpose()?;
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
    Ok((user.to_string(), replaces))
}

/// The longest `Replaces` value taken (a Call-ID and two tags).
const MAX_REPLACES: usize = 512;

/// An escaped `Replaces` URI header (`abc%40host%3Bto-tag%3D1%3Bfrom-tag%3D2`)
/// as the header value it becomes (`abc@host;to-tag=1;from-tag=2`), checked
/// for the shape RFC 3891 6.1 gives it: a Call-ID, then `to-tag` and
/// `from-tag` (and maybe `early-only`), nothing that could break a header.
fn replaces_value(escaped: &str) -> Result<String, ReferError> {
    let value = percent_encoding::percent_decode_str(escaped)
        .decode_utf8()
        .map_err(|_| ReferError::Replaces)?;
    let printable = value
        .chars()
        .all(|c| c.is_ascii_graphic() && !"<>\"".contains(c));
    if value.len() > MAX_REPLACES || !printable {
        return Err(ReferError::Replaces);
    }
    let mut parts = value.split(';');
    let call_id = parts.next().unwrap_or_default();
    let (mut to_tag, mut from_tag) = (false, false);
    for (name, v) in parts.filter_map(|p| p.split_once('=')) {
        let set = !v.is_empty();
        to_tag |= set && name.trim().eq_ignore_ascii_case("to-tag");
        from_tag |= set && name.trim().eq_ignore_ascii_case("from-tag");
    }
    if call_id.is_empty() || !to_tag || !from_tag {
        return Err(ReferError::Replaces);
    }
    Ok(value.into_owned())
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
            Ok(("200".into(), None))
        );
        assert_eq!(
            refer_to_user("sip:+4930123@pbx.example"),
            Ok(("+4930123".into(), None))
        );
        assert_eq!(
            refer_to_user("<sips:alice@pbx>;foo=bar"),
            Ok(("alice".into(), None))
        );
        assert_eq!(
            refer_to_user("<tel:+1555123;phone-context=x>"),
            Ok(("+1555123".into(), None))
        );
        assert_eq!(
            refer_to_user("<sip:200;npdi@pbx>"),
            Ok(("200".into(), None))
        );
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
        // An attended transfer: the Replaces header unescaped, checked.
        let attended = "<sip:200@pbx?Replaces=abc%40host%3Bto-tag%3D1%3Bfrom-tag%3D2>";
        assert_eq!(
            refer_to_user(attended),
            Ok(("200".into(), Some("abc@host;to-tag=1;from-tag=2".into())))
        );
        let early =
            "<sip:200@pbx?replaces=x%3Bfrom-tag%3Df%3Bto-tag%3Dt%3Bearly-only&Priority=urgent>";
        assert_eq!(
            refer_to_user(early).map(|(_, r)| r),
            Ok(Some("x;from-tag=f;to-tag=t;early-only".into()))
        );
        for bad in [
            "<sip:200@pbx?Replaces=a%40b>",
            "<sip:200@pbx?Replaces=%3Bto-tag%3D1%3Bfrom-tag%3D2>",
            "<sip:200@pbx?Replaces=a%3Bto-tag%3D%3Bfrom-tag%3D2>",
            "<sip:200@pbx?Replaces=a%0D%0AVia%3A%20x%3Bto-tag%3D1%3Bfrom-tag%3D2>",
            "<sip:200@pbx?Replaces=a%FF%3Bto-tag%3D1%3Bfrom-tag%3D2>",
        ] {
            assert_eq!(refer_to_user(bad), Err(ReferError::Replaces), "{bad}");
        }
        assert_eq!(ReferError::Replaces.status(), 400);
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
