//! Masking of the values that identify a person (numbers, SIP/TEL URIs) and
//! the stable pseudonym an erased account is replaced with. Pure functions:
//! the same masking applies to CDRs, logs and the stats page.

use sha2::{Digest, Sha256};

/// How many leading digits of an E.164 number stay visible: country code
/// and area, enough for an operator to see where a call went.
const KEEP_LEADING: usize = 4;
/// How many trailing digits stay visible: enough for a person to recognise
/// their own call in a list, too few to dial it.
const KEEP_TRAILING: usize = 2;

/// Masks a party for storage or display.
///
/// - `+493012345689` → `+4930******89` (E.164: `+`, 4 leading and 2 trailing
///   digits kept; with 6 digits or fewer only the last two stay);
/// - `030123456` → `*******56` (no `+`: only the last two digits);
/// - `sip:+493012345689@carrier.example` → `sip:+4930******89@carrier.example`
///   (`sip:`, `sips:`, `tel:`: the user part masked as above, or `***` when
///   it is not a number; host and parameters kept);
/// - anything else that is not empty → `***`.
///
/// Visual separators inside a number (space, `-`, `.`, `(`, `)`) are kept
/// in place; digits are counted without them.
pub fn mask_party(s: &str) -> String {
    if s.is_empty() {
        return String::new();
    }
    if let Some(masked) = mask_uri(s) {
        return masked;
    }
    mask_number(s).unwrap_or_else(|| "***".to_string())
}

/// `scheme:user@host...` or `tel:number;params`; `None` when `s` is no such URI.
fn mask_uri(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once(':')?;
    match scheme.to_ascii_lowercase().as_str() {
        "sip" | "sips" => {
            // The user part ends at the last '@' before the headers (`?`);
            // user parameters (`;isub=`) count as user part, so a number
            // followed by one is masked as a whole rather than shown. Without
            // an '@' the URI names only a host, which is kept.
            let end = rest.find('?').unwrap_or(rest.len());
            match rest[..end].rfind('@') {
                Some(at) => Some(format!(
                    "{scheme}:{}{}",
                    mask_user(&rest[..at]),
                    &rest[at..]
                )),
                None => Some(s.to_string()),
            }
        }
        "tel" => {
            let end = rest.find(';').unwrap_or(rest.len());
            Some(format!(
                "{scheme}:{}{}",
                mask_user(&rest[..end]),
                &rest[end..]
            ))
        }
        _ => None,
    }
}

/// A URI's user part: a number is masked digit by digit, a name entirely.
fn mask_user(user: &str) -> String {
    if user.is_empty() {
        return String::new();
    }
    mask_number(user).unwrap_or_else(|| "***".to_string())
}

/// `None` when `s` is not a number (optional `+`, digits, separators).
fn mask_number(s: &str) -> Option<String> {
    let (plus, digits_part) = match s.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let is_separator = |c: char| matches!(c, ' ' | '-' | '.' | '(' | ')');
    if !digits_part
        .chars()
        .all(|c| c.is_ascii_digit() || is_separator(c))
    {
        return None;
    }
    let total = digits_part.chars().filter(char::is_ascii_digit).count();
    if total == 0 {
        return None;
    }
    // A short E.164 string keeps only its tail, like a local number: with 6
    // digits or fewer, 4 + 2 visible digits would show it whole.
    let leading = if plus && total > KEEP_LEADING + KEEP_TRAILING {
        KEEP_LEADING
    } else {
        0
    };
    let mut out = String::with_capacity(s.len());
    if plus {
        out.push('+');
    }
    let mut seen = 0;
    for c in digits_part.chars() {
        if c.is_ascii_digit() {
            seen += 1;
            let visible = seen <= leading || seen + KEEP_TRAILING > total;
            out.push(if visible { c } else { '*' });
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// The name an erased account is replaced with: `erased-` and 8 hex digits
/// of SHA-256 over the database's own random salt and the name. Stable, so
/// the billing rows of one erased account still group together; salted, so
/// that the pseudonyms of two databases cannot be matched with a table of
/// hashed common names computed once.
pub fn pseudonym(salt: &str, account: &str) -> String {
    format!("erased-{}", &short_hash(salt, account)[..8])
}

/// The id an erased call keeps: unique like the original (16 hex digits),
/// but no longer the browser-chosen string, which may contain anything.
pub fn erased_call_id(salt: &str, id: &str) -> String {
    format!("erased-{}", &short_hash(salt, id)[..16])
}

fn short_hash(salt: &str, value: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    // A separator that cannot occur in a hex salt keeps ("ab", "c") and
    // ("a", "bc") apart.
    h.update(b"\0");
    h.update(value.as_bytes());
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdr_mask_party_table() {
        let table = [
            // E.164
            ("+493012345689", "+4930******89"),
            ("+14155550123", "+1415*****23"),
            ("+49 30 1234-5689", "+49 30 ****-**89"),
            ("+4930123", "+4930*23"),
            ("+493012", "+****12"),
            ("+112", "+*12"),
            // no '+': only the last two digits
            ("030123456", "*******56"),
            ("0049301234", "********34"),
            ("112", "*12"),
            ("12", "12"),
            ("7", "7"),
            // URIs: user part masked, host and parameters kept
            (
                "sip:+493012345689@carrier.example",
                "sip:+4930******89@carrier.example",
            ),
            (
                "sips:+493012345689@carrier.example:5061;transport=tls",
                "sips:+4930******89@carrier.example:5061;transport=tls",
            ),
            (
                "sip:030123456@10.0.0.1;user=phone",
                "sip:*******56@10.0.0.1;user=phone",
            ),
            ("SIP:alice@example.com", "SIP:***@example.com"),
            ("sip:alice:secret@example.com", "sip:***@example.com"),
            ("sip:carrier.example", "sip:carrier.example"),
            ("sip:+493012345689;isub=12@gw", "sip:***@gw"),
            (
                "sip:+493012345689@gw?Subject=a@b",
                "sip:+4930******89@gw?Subject=a@b",
            ),
            ("tel:+493012345689", "tel:+4930******89"),
            (
                "tel:5689;phone-context=+4930",
                "tel:**89;phone-context=+4930",
            ),
            // anything else
            ("alice", "***"),
            ("\"Alice\" <sip:+493012345689@x>", "***"),
            ("+49abc", "***"),
            ("+", "***"),
            ("http://x@y", "***"),
            ("", ""),
        ];
        for (input, want) in table {
            assert_eq!(mask_party(input), want, "mask_party({input:?})");
        }
    }

    #[test]
    fn cdr_mask_party_never_shows_a_long_number_whole() {
        for n in ["+4930123456789012", "0301234567", "+441632960961"] {
            let masked = mask_party(n);
            assert_ne!(masked, n);
            assert!(masked.contains('*'));
            assert_eq!(masked.len(), n.len());
        }
    }

    #[test]
    fn cdr_pseudonym_is_stable_salted_and_short() {
        let p = pseudonym("00ff", "alice");
        assert_eq!(p, pseudonym("00ff", "alice"));
        assert_ne!(p, pseudonym("00fe", "alice"));
        assert_ne!(p, pseudonym("00ff", "bob"));
        assert!(p.starts_with("erased-"));
        assert_eq!(p.len(), "erased-".len() + 8);
        assert!(p["erased-".len()..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(erased_call_id("00ff", "c1").len(), "erased-".len() + 16);
    }
}
