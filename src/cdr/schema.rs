//! The database schema as an ordered list of migrations. `PRAGMA
//! user_version` holds how many have run; each runs in its own transaction
//! together with the version bump, so a crash between two leaves the file at
//! a version it really has.
//!
//! Never edit a migration that has shipped: append a new one.

use super::CdrError;
use rusqlite::Connection;

/// Migration `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: calls, the audit log, and the per-database salt of pseudonyms.
    //
    // Times are integer milliseconds since the Unix epoch (UTC). There is no
    // column for SRTP keys, passwords or tokens: secrets have no place here.
    r#"
    CREATE TABLE calls (
        id                   TEXT PRIMARY KEY NOT NULL,
        direction            TEXT NOT NULL CHECK (direction IN ('outgoing', 'incoming')),
        account              TEXT NOT NULL,
        remote               TEXT NOT NULL,
        trunk                TEXT NOT NULL,
        sip_call_id          TEXT NOT NULL,
        started_at           INTEGER NOT NULL,
        answered_at          INTEGER,
        ended_at             INTEGER,
        cause_code           INTEGER,
        cause                TEXT,
        hung_up_by           TEXT CHECK (hung_up_by IN ('browser', 'trunk', 'gateway')),
        codec                TEXT,
        browser_security     TEXT,
        trunk_security       TEXT,
        private              INTEGER NOT NULL DEFAULT 0,
        browser_packets_in   INTEGER NOT NULL DEFAULT 0,
        browser_packets_out  INTEGER NOT NULL DEFAULT 0,
        browser_bytes_in     INTEGER NOT NULL DEFAULT 0,
        browser_bytes_out    INTEGER NOT NULL DEFAULT 0,
        browser_drops_total  INTEGER NOT NULL DEFAULT 0,
        trunk_packets_in     INTEGER NOT NULL DEFAULT 0,
        trunk_packets_out    INTEGER NOT NULL DEFAULT 0,
        trunk_bytes_in       INTEGER NOT NULL DEFAULT 0,
        trunk_bytes_out      INTEGER NOT NULL DEFAULT 0,
        trunk_drops_total    INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX calls_account ON calls (account);
    CREATE INDEX calls_ended_at ON calls (ended_at);
    -- Open rows are found at every start; a partial index keeps that cheap.
    CREATE INDEX calls_open ON calls (id) WHERE ended_at IS NULL;

    CREATE TABLE audit (
        seq     INTEGER PRIMARY KEY AUTOINCREMENT,
        at      INTEGER NOT NULL,
        who     TEXT NOT NULL,
        action  TEXT NOT NULL,
        detail  TEXT NOT NULL,
        -- The account an action was about, kept apart from `detail` so that
        -- an erasure can replace it with the pseudonym.
        subject TEXT
    );
    CREATE INDEX audit_subject ON audit (subject);

    CREATE TABLE meta (
        key   TEXT PRIMARY KEY NOT NULL,
        value TEXT NOT NULL
    );
    INSERT INTO meta (key, value) VALUES ('pseudonym_salt', lower(hex(randomblob(16))));
    "#,
    // 2: a call the trunk transferred (its REFER carried out): the number
    // the call went on with (masked like `remote` for redacting accounts)
    // and the SIP Call-ID of the new dialog, the handle into the carrier's
    // records of the part after the transfer. NULL: not transferred.
    r#"
    ALTER TABLE calls ADD COLUMN transferred_to TEXT;
    ALTER TABLE calls ADD COLUMN transfer_sip_call_id TEXT;
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Runs every migration the file has not had yet; returns the version found.
pub fn migrate(conn: &mut Connection) -> Result<u32, CdrError> {
    let found: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        // A newer gateway wrote this file: writing to it with an older
        // schema in mind could corrupt what the newer one relies on.
        return Err(CdrError::SchemaTooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version as u32 + 1)?;
        tx.commit()?;
    }
    Ok(found)
}

/// The salt of pseudonyms, written by migration 1.
pub fn pseudonym_salt(conn: &Connection) -> Result<String, CdrError> {
    Ok(conn.query_row(
        "SELECT value FROM meta WHERE key = 'pseudonym_salt'",
        [],
        |r| r.get(0),
    )?)
}
