//! Retention: calls that ended more than `privacy.cdr_retention_days` ago
//! are deleted (data minimisation; 90 days by default).

use super::audit::{self, Entry};
use super::model::{format_rfc3339, to_millis};
use super::CdrError;
use rusqlite::{params, Connection};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// Calls that ended before this instant are past retention. Days are
/// 24-hour days of UTC time: retention is a legal limit, not a calendar
/// appointment, so daylight-saving changes do not move it.
pub fn retention_cutoff(now: SystemTime, retention_days: u32) -> SystemTime {
    // Stored times start at the epoch, so an earlier cutoff means the same
    // as the epoch; clamping keeps it representable on every platform.
    now.checked_sub(DAY * retention_days)
        .filter(|t| *t >= UNIX_EPOCH)
        .unwrap_or(UNIX_EPOCH)
}

/// Deletes the calls that ended before `cutoff` and audits the purge when it
/// deleted anything; returns how many.
pub(super) fn purge(
    conn: &mut Connection,
    cutoff: SystemTime,
    now: SystemTime,
) -> Result<usize, CdrError> {
    let tx = conn.transaction()?;
    let deleted = tx.execute(
        "DELETE FROM calls WHERE ended_at IS NOT NULL AND ended_at < ?1",
        params![to_millis(cutoff)],
    )?;
    if deleted > 0 {
        audit::insert(
            &tx,
            &Entry {
                at: now,
                who: "retention".into(),
                action: "purge".into(),
                detail: format!("{deleted} calls ended before {}", format_rfc3339(cutoff)),
                subject: None,
            },
        )?;
    }
    tx.commit()?;
    if deleted > 0 {
        super::erase::checkpoint(conn);
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdr_retention_cutoff_is_whole_days_before_now() {
        let now = UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        assert_eq!(
            retention_cutoff(now, 90),
            now - Duration::from_secs(90 * 86_400)
        );
        assert_eq!(retention_cutoff(now, 0), now);
        // Further back than the epoch: everything ended is past retention
        // only if it ended before 1970, i.e. nothing.
        assert_eq!(retention_cutoff(now, u32::MAX), UNIX_EPOCH);
    }
}
