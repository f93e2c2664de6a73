//! What the `cdr export` and `account purge` commands run, kept here (not in
//! `main.rs`) so that tests can run them without the binary.

use super::{CdrError, CdrStore, ExportFormat};
use std::path::{Path, PathBuf};

/// The database's file name inside `server.data_dir`.
pub const DB_FILE: &str = "cdr.sqlite3";

/// `<data_dir>/cdr.sqlite3`.
pub fn database_path(data_dir: &Path) -> PathBuf {
    data_dir.join(DB_FILE)
}

/// The audit log's `who` for a command-line action: `cli:` and the OS user
/// (`$USER`), or `cli:unknown`.
pub fn cli_who(user: Option<&str>) -> String {
    match user.map(str::trim).filter(|u| !u.is_empty()) {
        Some(u) => format!("cli:{u}"),
        None => "cli:unknown".to_string(),
    }
}

/// `cdr export`: the account's calls as JSON or CSV, audited.
pub fn export_account(
    data_dir: &Path,
    account: &str,
    format: ExportFormat,
    who: &str,
) -> Result<String, CdrError> {
    let store = CdrStore::open_admin(&database_path(data_dir))?;
    store.export(account, format, who)
}

/// `account purge`: erases the account's identifiers, audited; returns the
/// number of calls touched.
pub fn purge_account(data_dir: &Path, account: &str, who: &str) -> Result<usize, CdrError> {
    let store = CdrStore::open_admin(&database_path(data_dir))?;
    store.erase_account(account, who)
}
