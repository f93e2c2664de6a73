//! The audit log: every export, erasure, retention purge and admin read,
//! with who did it, when and what. Rows are only ever added; an erasure
//! replaces the `subject` of earlier rows with the account's pseudonym, and
//! nothing else in them changes.

use super::model::{from_millis, to_millis, AuditRow};
use super::CdrError;
use rusqlite::{params, Connection};
use std::time::SystemTime;

/// One entry to add.
pub(super) struct Entry {
    pub at: SystemTime,
    pub who: String,
    pub action: String,
    pub detail: String,
    pub subject: Option<String>,
}

pub(super) fn insert(conn: &Connection, e: &Entry) -> Result<(), CdrError> {
    conn.prepare_cached(
        "INSERT INTO audit (at, who, action, detail, subject) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        to_millis(e.at),
        e.who,
        e.action,
        e.detail,
        e.subject
    ])?;
    Ok(())
}

/// The last `limit` entries, newest first.
pub(super) fn list(conn: &Connection, limit: usize) -> Result<Vec<AuditRow>, CdrError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(
        "SELECT at, who, action, detail, subject FROM audit ORDER BY seq DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map(params![limit], |r| {
        Ok(AuditRow {
            at: from_millis(r.get(0)?),
            who: r.get(1)?,
            action: r.get(2)?,
            detail: r.get(3)?,
            subject: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
