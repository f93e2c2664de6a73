//! Call detail records in SQLite, with what the GDPR asks of them: masked
//! parties for accounts that redact, a retention limit, a right-of-access
//! export, a right-to-erasure purge that keeps only what billing needs, and
//! an audit log of every export, erasure and admin read.
//!
//! Call tasks hand events to [`CdrStore::record`], which never waits: the
//! one SQLite connection lives on a dedicated thread (`writer`) fed by a
//! bounded channel, and an event that finds the channel full is dropped and
//! counted. Reads and admin actions travel the same channel as jobs, so they
//! see every event recorded before them.
//!
//! | file | job |
//! | --- | --- |
//! | `model.rs` | events, rows, enums, time conversions |
//! | `schema.rs` | versioned migrations (`PRAGMA user_version`) |
//! | `store.rs` | [`CdrStore`]: opening, the channel, the public methods |
//! | `writer.rs` | the writer thread: batches of events into rows |
//! | `query.rs` | reading rows back |
//! | `redact.rs` | [`mask_party`] and the pseudonyms of erased accounts |
//! | `erase.rs` | the right to erasure |
//! | `export.rs` | JSON and CSV formatting (pure) |
//! | `retention.rs` | the retention cutoff (pure) and the purge |
//! | `audit.rs` | the audit log |
//! | `admin.rs` | what the `cdr export` and `account purge` commands run |

mod admin;
mod audit;
mod erase;
mod export;
mod model;
mod query;
mod redact;
mod retention;
mod schema;
mod store;
mod writer;

#[cfg(test)]
mod tests;

pub use admin::{cli_who, database_path, export_account, purge_account, DB_FILE};
pub use export::{to_csv, to_json};
pub use model::{
    format_rfc3339, AuditRow, CdrEvent, CdrRow, Direction, ExportFormat, HungUpBy, LegFigures,
};
pub use redact::{mask_party, pseudonym};
pub use retention::retention_cutoff;
pub use schema::SCHEMA_VERSION;
pub use store::{CdrStore, QUEUE_CAPACITY};

use std::path::PathBuf;

/// Cause of the rows a previous process left open (it was killed or the
/// machine stopped): recorded at the next start.
pub const RESTART_CAUSE: &str = "ended by restart";
/// The status those rows get: the same 503 a call ended by a shutdown gets.
pub const RESTART_CAUSE_CODE: u16 = 503;

#[derive(Debug, thiserror::Error)]
pub enum CdrError {
    #[error("call records {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("call records {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("call records: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(
        "call records: the database has schema version {found}, this build knows up to {known} \
         (written by a newer gateway?)"
    )]
    SchemaTooNew { found: u32, known: u32 },
    #[error("call records {path}: in use by another running gateway")]
    InUse { path: PathBuf },
    #[error("call records {path}: no such database (has the gateway run with this data_dir?)")]
    NoDatabase { path: PathBuf },
    #[error("call records: the writer thread has stopped")]
    Closed,
    #[error("call records: JSON export: {0}")]
    Json(#[from] serde_json::Error),
}
