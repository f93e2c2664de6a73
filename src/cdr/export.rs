//! Right of access: every call of an account, as JSON or CSV. The
//! formatting is pure (rows in, text out); `export` reads the rows and
//! audits the export in one job on the writer thread.

use super::audit::{self, Entry};
use super::model::{format_rfc3339, CdrRow, ExportFormat};
use super::{query, CdrError};
use rusqlite::Connection;
use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::SystemTime;

pub(super) fn export(
    conn: &mut Connection,
    account: &str,
    format: ExportFormat,
    who: &str,
    now: SystemTime,
) -> Result<String, CdrError> {
    let rows = query::by_account(conn, account)?;
    let text = match format {
        ExportFormat::Json => to_json(&rows)?,
        ExportFormat::Csv => to_csv(&rows),
    };
    audit::insert(
        conn,
        &Entry {
            at: now,
            who: who.to_string(),
            action: "export".into(),
            detail: format!("{format}, {} calls", rows.len()),
            subject: Some(account.to_string()),
        },
    )?;
    Ok(text)
}

/// A JSON array of row objects (times as RFC 3339 strings), pretty-printed
/// for a person to read, with a final newline.
pub fn to_json(rows: &[CdrRow]) -> Result<String, CdrError> {
    let mut text = serde_json::to_string_pretty(rows)?;
    text.push('\n');
    Ok(text)
}

const CSV_HEADER: &[&str] = &[
    "id",
    "direction",
    "account",
    "remote",
    "trunk",
    "sip_call_id",
    "started_at",
    "answered_at",
    "ended_at",
    "duration_s",
    "cause_code",
    "cause",
    "hung_up_by",
    "codec",
    "browser_security",
    "trunk_security",
    "private",
    "browser_packets_in",
    "browser_packets_out",
    "browser_bytes_in",
    "browser_bytes_out",
    "browser_drops_total",
    "trunk_packets_in",
    "trunk_packets_out",
    "trunk_bytes_in",
    "trunk_bytes_out",
    "trunk_drops_total",
    "transferred_to",
    "transfer_sip_call_id",
];

/// RFC 4180 CSV: a header line, then one line per row, CRLF line ends.
/// Absent values are empty fields.
pub fn to_csv(rows: &[CdrRow]) -> String {
    let mut out = String::new();
    push_line(&mut out, CSV_HEADER.iter().map(|h| Cow::Borrowed(*h)));
    for r in rows {
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        let time = |t: Option<SystemTime>| t.map(format_rfc3339).unwrap_or_default();
        let fields: Vec<String> = vec![
            r.id.clone(),
            r.direction.as_str().into(),
            r.account.clone(),
            r.remote.clone(),
            r.trunk.clone(),
            r.sip_call_id.clone(),
            format_rfc3339(r.started_at),
            time(r.answered_at),
            time(r.ended_at),
            r.duration_s.map(|d| format!("{d:.3}")).unwrap_or_default(),
            r.cause_code.map(|c| c.to_string()).unwrap_or_default(),
            opt(&r.cause),
            r.hung_up_by
                .map(|h| h.as_str().to_string())
                .unwrap_or_default(),
            opt(&r.codec),
            opt(&r.browser_security),
            opt(&r.trunk_security),
            r.private.to_string(),
            r.browser_leg.packets_in.to_string(),
            r.browser_leg.packets_out.to_string(),
            r.browser_leg.bytes_in.to_string(),
            r.browser_leg.bytes_out.to_string(),
            r.browser_leg.drops_total.to_string(),
            r.trunk_leg.packets_in.to_string(),
            r.trunk_leg.packets_out.to_string(),
            r.trunk_leg.bytes_in.to_string(),
            r.trunk_leg.bytes_out.to_string(),
            r.trunk_leg.drops_total.to_string(),
            opt(&r.transferred_to),
            opt(&r.transfer_sip_call_id),
        ];
        push_line(&mut out, fields.into_iter().map(Cow::Owned));
    }
    out
}

fn push_line<'a>(out: &mut String, fields: impl Iterator<Item = Cow<'a, str>>) {
    for (i, f) in fields.enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{}", csv_field(&f));
    }
    out.push_str("\r\n");
}

/// One CSV field, quoted when it holds a comma, a quote or a line break
/// (quotes doubled, RFC 4180).
///
/// A field that a spreadsheet would run as a formula (starting with `=`,
/// `@`, a tab or CR, or `+`/`-` followed by anything but a number) gets a
/// leading `'`: the remote party of an incoming call is whatever the
/// trunk's From header said, and the person opening their own export must
/// not run a caller's formula. Numbers such as `+4930******89` stay as they are.
fn csv_field(f: &str) -> Cow<'_, str> {
    let formula = match f.chars().next() {
        Some('=' | '@' | '\t' | '\r') => true,
        Some('+' | '-') => !f[1..]
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '*' | ' ' | '.')),
        _ => false,
    };
    let needs_quotes = f.contains([',', '"', '\r', '\n']);
    if !formula && !needs_quotes {
        return Cow::Borrowed(f);
    }
    let mut s = String::with_capacity(f.len() + 3);
    if needs_quotes {
        s.push('"');
    }
    if formula {
        s.push('\'');
    }
    for c in f.chars() {
        if c == '"' {
            s.push('"');
        }
        s.push(c);
    }
    if needs_quotes {
        s.push('"');
    }
    Cow::Owned(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdr_csv_field_quoting() {
        let table = [
            ("plain", "plain"),
            ("", ""),
            ("a,b", "\"a,b\""),
            ("say \"hi\"", "\"say \"\"hi\"\"\""),
            ("two\nlines", "\"two\nlines\""),
            ("+4930******89", "+4930******89"),
            ("-12", "-12"),
            ("=HYPERLINK(\"x\")", "\"'=HYPERLINK(\"\"x\"\")\""),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
        ];
        for (input, want) in table {
            assert_eq!(csv_field(input), want, "csv_field({input:?})");
        }
    }
}
