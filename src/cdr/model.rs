//! The vocabulary of call records: the events the call tasks send, the row an
//! operator or a data subject reads back, and the conversions between
//! `SystemTime` and what SQLite stores (integer milliseconds since the Unix
//! epoch, so that retention and ordering are plain integer comparisons).

use serde::{Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Who placed the call, seen from the browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Browser → trunk.
    Outgoing,
    /// Trunk → browser.
    Incoming,
}

/// Which side ended the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HungUpBy {
    Browser,
    Trunk,
    /// Timeouts, failures, shutdown, and rows closed after a restart.
    Gateway,
}

/// What one media leg carried during the call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LegFigures {
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Every packet the relay refused on this leg, whatever the reason.
    pub drops_total: u64,
}

/// What the call tasks report. Sent with [`super::CdrStore::record`]; the
/// writer thread turns a `Started`, an optional `Answered` and an `Ended`
/// with the same `id` into one row.
///
/// Deliberately without any field for keys, passwords or tokens: a secret
/// cannot reach the database because nothing here can carry one.
#[derive(Debug, Clone, PartialEq)]
pub enum CdrEvent {
    Started {
        id: String,
        direction: Direction,
        account: String,
        /// The other party, already masked by the caller when the account
        /// redacts (see [`super::mask_party`]).
        remote: String,
        trunk: String,
        sip_call_id: String,
        at: SystemTime,
    },
    Answered {
        id: String,
        at: SystemTime,
    },
    /// The trunk's REFER was carried out: the call went on with `to`
    /// (already masked when the account redacts) in the dialog
    /// `sip_call_id`. A later transfer replaces both.
    Transferred {
        id: String,
        to: String,
        sip_call_id: String,
    },
    Ended {
        id: String,
        at: SystemTime,
        cause_code: u16,
        cause: String,
        hung_up_by: HungUpBy,
        codec: Option<String>,
        browser_security: Option<String>,
        trunk_security: Option<String>,
        /// A private call: the gateway relayed the media without holding
        /// its keys (PortaSwitch `forced_relay`).
        private: bool,
        browser: LegFigures,
        trunk: LegFigures,
    },
}

impl CdrEvent {
    /// The call this event belongs to.
    pub fn id(&self) -> &str {
        match self {
            CdrEvent::Started { id, .. }
            | CdrEvent::Answered { id, .. }
            | CdrEvent::Transferred { id, .. }
            | CdrEvent::Ended { id, .. } => id,
        }
    }
}

/// One call as stored. Fields that only exist once the call has ended are
/// `None` while it is in progress.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CdrRow {
    pub id: String,
    pub direction: Direction,
    pub account: String,
    pub remote: String,
    pub trunk: String,
    pub sip_call_id: String,
    #[serde(serialize_with = "rfc3339")]
    pub started_at: SystemTime,
    #[serde(serialize_with = "rfc3339_opt")]
    pub answered_at: Option<SystemTime>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub ended_at: Option<SystemTime>,
    /// Seconds from answer to end: what is billed. `None` for calls that
    /// were never answered or have not ended.
    pub duration_s: Option<f64>,
    pub cause_code: Option<u16>,
    pub cause: Option<String>,
    pub hung_up_by: Option<HungUpBy>,
    pub codec: Option<String>,
    pub browser_security: Option<String>,
    pub trunk_security: Option<String>,
    pub private: bool,
    /// Media figures of the browser's leg (`browser` in the `Ended` event;
    /// renamed here because `trunk` already names the trunk).
    pub browser_leg: LegFigures,
    /// Media figures of the trunk's leg.
    pub trunk_leg: LegFigures,
    /// The number a trunk's transfer moved the call to, and the SIP
    /// Call-ID of that dialog (see [`CdrEvent::Transferred`]).
    pub transferred_to: Option<String>,
    pub transfer_sip_call_id: Option<String>,
}

/// One entry of the audit log: who did what to the records, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRow {
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
    /// `cli:<os user>`, `admin:<name>`, `retention`, ...
    pub who: String,
    /// `export`, `erase`, `purge`, `read`, ...
    pub action: String,
    pub detail: String,
    /// The account the action was about, if any (a pseudonym once erased).
    pub subject: Option<String>,
}

/// The two shapes of a right-of-access export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// An array of objects, times as RFC 3339 strings.
    Json,
    /// RFC 4180: a header line, then one line per call.
    Csv,
}

impl FromStr for ExportFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "json" => Ok(ExportFormat::Json),
            "csv" => Ok(ExportFormat::Csv),
            other => Err(format!("unknown export format {other:?} (json or csv)")),
        }
    }
}

impl fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExportFormat::Json => "json",
            ExportFormat::Csv => "csv",
        })
    }
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outgoing => "outgoing",
            Direction::Incoming => "incoming",
        }
    }
    /// The column value back; `None` for anything the schema's CHECK
    /// constraint should have refused.
    pub fn parse(s: &str) -> Option<Direction> {
        match s {
            "outgoing" => Some(Direction::Outgoing),
            "incoming" => Some(Direction::Incoming),
            _ => None,
        }
    }
}

impl HungUpBy {
    pub fn as_str(self) -> &'static str {
        match self {
            HungUpBy::Browser => "browser",
            HungUpBy::Trunk => "trunk",
            HungUpBy::Gateway => "gateway",
        }
    }
    pub fn parse(s: &str) -> Option<HungUpBy> {
        match s {
            "browser" => Some(HungUpBy::Browser),
            "trunk" => Some(HungUpBy::Trunk),
            "gateway" => Some(HungUpBy::Gateway),
            _ => None,
        }
    }
}

/// Milliseconds since the Unix epoch, as stored. Times before 1970 (a clock
/// set wrong) become 0 rather than an error: a record with a wrong time is
/// better than a lost one.
pub fn to_millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// The inverse of [`to_millis`]; negative values (never written) read as the epoch.
pub fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Billable seconds: from answer to end, never negative (a clock stepped
/// back between the two must not produce a credit).
pub fn duration_s(answered_ms: Option<i64>, ended_ms: Option<i64>) -> Option<f64> {
    match (answered_ms, ended_ms) {
        (Some(a), Some(e)) => Some((e.saturating_sub(a)).max(0) as f64 / 1000.0),
        _ => None,
    }
}

/// `2026-12-03T10:15:00.250Z`: UTC, milliseconds when there are any.
pub fn format_rfc3339(t: SystemTime) -> String {
    let nanos = i128::from(to_millis(t)) * 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|dt| {
            dt.format(&time::format_description::well_known::Rfc3339)
                .ok()
        }) {
        Some(s) => s,
        // Only reachable for times past year 9999, which `to_millis` can
        // produce from a corrupt clock; show the raw value rather than fail.
        None => format!("@{}ms", to_millis(t)),
    }
}

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_rfc3339(*t))
}

fn rfc3339_opt<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&format_rfc3339(*t)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdr_times_round_trip_and_format() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_000_000_250);
        assert_eq!(from_millis(to_millis(t)), t);
        assert_eq!(format_rfc3339(t), "2026-11-30T00:53:20.25Z");
        assert_eq!(
            format_rfc3339(UNIX_EPOCH + Duration::from_secs(1_796_000_000)),
            "2026-11-30T00:53:20Z"
        );
        assert_eq!(to_millis(UNIX_EPOCH - Duration::from_secs(5)), 0);
    }

    #[test]
    fn cdr_duration_is_answer_to_end_and_never_negative() {
        assert_eq!(duration_s(Some(1_000), Some(62_500)), Some(61.5));
        assert_eq!(duration_s(None, Some(62_500)), None);
        assert_eq!(duration_s(Some(1_000), None), None);
        assert_eq!(duration_s(Some(5_000), Some(1_000)), Some(0.0));
    }

    #[test]
    fn cdr_export_format_parses() {
        assert_eq!("JSON".parse::<ExportFormat>(), Ok(ExportFormat::Json));
        assert_eq!("csv".parse::<ExportFormat>(), Ok(ExportFormat::Csv));
        assert!("xml".parse::<ExportFormat>().is_err());
    }
}
