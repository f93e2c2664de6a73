//! The right to erasure ("account purge"). What identifies the person goes:
//! the account name (replaced by a stable pseudonym, so billing can still
//! total one customer's calls), the remote party and the number a transfer
//! went to, the SIP Call-IDs (handles into the carrier's records, which hold
//! the numbers) and the browser-chosen
//! call id (replaced by a hash of it, still unique). What billing and
//! accounting need stays: times, duration, direction, trunk, cause, codec,
//! security and packet counts.
//!
//! `secure_delete` (set at open) zeroes the replaced values inside the file,
//! and a checkpoint afterwards moves the new pages out of the write-ahead
//! log and truncates it, so that no older copy of a page survives there.

use super::audit::{self, Entry};
use super::redact::{erased_call_id, pseudonym};
use super::CdrError;
use rusqlite::{params, Connection};
use std::time::SystemTime;

pub(super) fn erase(
    conn: &mut Connection,
    salt: &str,
    account: &str,
    who: &str,
    now: SystemTime,
) -> Result<usize, CdrError> {
    let alias = pseudonym(salt, account);
    let tx = conn.transaction()?;
    let ids: Vec<String> = {
        let mut stmt = tx.prepare("SELECT id FROM calls WHERE account = ?1")?;
        let ids = stmt.query_map(params![account], |r| r.get(0))?;
        ids.collect::<Result<_, _>>()?
    };
    {
        let mut update = tx.prepare(
            "UPDATE calls SET id = ?2, account = ?3, remote = '', sip_call_id = '',
                 transferred_to = CASE WHEN transferred_to IS NULL THEN NULL ELSE '' END,
                 transfer_sip_call_id =
                     CASE WHEN transfer_sip_call_id IS NULL THEN NULL ELSE '' END
             WHERE id = ?1",
        )?;
        for id in &ids {
            update.execute(params![id, erased_call_id(salt, id), alias])?;
        }
    }
    tx.execute(
        "UPDATE audit SET subject = ?2 WHERE subject = ?1",
        params![account, alias],
    )?;
    audit::insert(
        &tx,
        &Entry {
            at: now,
            who: who.to_string(),
            action: "erase".into(),
            detail: format!("{} calls pseudonymised", ids.len()),
            subject: Some(alias),
        },
    )?;
    tx.commit()?;
    checkpoint(conn);
    Ok(ids.len())
}

/// Copies the write-ahead log into the database and truncates it. Another
/// process reading at that moment (the gateway's, or the CLI's) can keep the
/// log from being emptied; then the next checkpoint, automatic after 1000
/// pages or at the last close, finishes the job. Logged, not an error: the
/// erasure itself has committed.
pub(super) fn checkpoint(conn: &Connection) {
    let result = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        r.get::<_, i64>(0)
    });
    match result {
        Ok(0) => {}
        Ok(_) => tracing::warn!(
            "call records: checkpoint blocked by another reader; the write-ahead log \
             keeps older pages until the next one"
        ),
        Err(e) => tracing::warn!("call records: checkpoint failed: {e}"),
    }
}
