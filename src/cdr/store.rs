//! [`CdrStore`]: the handle the gateway holds. Opening (file, pragmas,
//! migrations, closing what a previous process left open) happens on the
//! caller's thread so that its errors come back directly; then the
//! connection moves to the writer thread for good.

use super::model::{to_millis, AuditRow, CdrEvent, CdrRow, ExportFormat};
use super::writer::{Msg, Writer};
use super::{audit, erase, export, query, retention, schema, CdrError};
use super::{RESTART_CAUSE, RESTART_CAUSE_CODE};
use rusqlite::Connection;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

/// Events that can wait for the writer. At one Started, Answered and Ended
/// per call this absorbs a burst of well over a thousand call ends while
/// the disk is slow, for about 1 MiB of memory.
pub const QUEUE_CAPACITY: usize = 4096;

/// How long a write waits for another process (the CLI) holding the
/// database's write lock before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The call-detail-record store. Cheap to clone: every clone feeds the same
/// writer thread. The thread stops, after writing what is queued, when the
/// last clone is dropped.
#[derive(Clone)]
pub struct CdrStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` only while dropping: taking it closes the channel.
    tx: Option<SyncSender<Msg>>,
    dropped: AtomicU64,
    write_errors: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

/// Whether this process owns the records (the gateway) or only reads and
/// administers them (the CLI, possibly while a gateway runs).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Gateway,
    Admin,
}

impl CdrStore {
    /// Opens (creates) the database at `path` (`<data_dir>/cdr.sqlite3`) in
    /// WAL mode, runs the schema migrations, and closes every row left open
    /// by a previous process with cause "ended by restart" and `ended_at =
    /// now`: that is how a `kill -9` mid-call is recorded.
    ///
    /// Holds an exclusive lock (`<path>.lock`) while the store lives, so a
    /// second gateway on the same data directory fails here instead of
    /// closing the first one's live calls.
    pub fn open(path: &Path, now: SystemTime) -> Result<CdrStore, CdrError> {
        Self::open_with(path, now, Mode::Gateway, QUEUE_CAPACITY)
    }

    /// Opens an existing database for administration (export, erasure,
    /// reading) without taking the gateway's lock and without closing open
    /// rows: a gateway may be running, and its live calls are not over.
    pub fn open_admin(path: &Path) -> Result<CdrStore, CdrError> {
        if !path.exists() {
            return Err(CdrError::NoDatabase {
                path: path.to_path_buf(),
            });
        }
        Self::open_with(path, SystemTime::now(), Mode::Admin, QUEUE_CAPACITY)
    }

    /// `open` with a queue of `capacity` events, for tests of a full queue.
    #[cfg(test)]
    pub(crate) fn open_with_capacity(
        path: &Path,
        now: SystemTime,
        capacity: usize,
    ) -> Result<CdrStore, CdrError> {
        Self::open_with(path, now, Mode::Gateway, capacity)
    }

    fn open_with(
        path: &Path,
        now: SystemTime,
        mode: Mode,
        capacity: usize,
    ) -> Result<CdrStore, CdrError> {
        let io_err = |p: &Path| {
            let p = p.to_path_buf();
            move |source| CdrError::Io { path: p, source }
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let lock = match mode {
            Mode::Gateway => Some(lock_exclusive(path)?),
            Mode::Admin => None,
        };
        create_private(path).map_err(io_err(path))?;
        let open_err = |source| CdrError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        configure(&conn).map_err(open_err)?;
        schema::migrate(&mut conn)?;
        let salt = schema::pseudonym_salt(&conn)?;
        if mode == Mode::Gateway {
            let closed = close_open_rows(&conn, now)?;
            if closed > 0 {
                tracing::warn!(
                    calls = closed,
                    "call records: closed calls left open by the previous run ({RESTART_CAUSE})"
                );
            }
        }

        let (tx, rx) = mpsc::sync_channel(capacity);
        let write_errors = Arc::new(AtomicU64::new(0));
        let writer = Writer::new(conn, salt, write_errors.clone(), lock);
        let thread = std::thread::Builder::new()
            .name("cdr-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err(path))?;
        Ok(CdrStore {
            inner: Arc::new(Inner {
                tx: Some(tx),
                dropped: AtomicU64::new(0),
                write_errors,
                thread: Some(thread),
            }),
        })
    }

    /// Queues `event` for the writer thread without ever waiting: when the
    /// queue is full (or the writer has stopped) the event is dropped and
    /// counted in [`dropped`](Self::dropped). Call tasks are async and the
    /// packet path must never wait on SQLite.
    pub fn record(&self, event: CdrEvent) {
        let Some(tx) = &self.inner.tx else { return };
        match tx.try_send(Msg::Event(event)) {
            Ok(()) => {}
            Err(TrySendError::Full(msg) | TrySendError::Disconnected(msg)) => {
                let id = match &msg {
                    Msg::Event(e) => e.id().to_string(),
                    _ => String::new(),
                };
                let total = self.inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // The first drop and then every 1000th: a full queue must
                // not turn into a log flood on top of a slow disk.
                if total == 1 || total.is_multiple_of(1000) {
                    tracing::warn!(call = %id, dropped = total, "call record dropped: queue full");
                }
            }
        }
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Events the writer could not write (a database error, logged).
    pub fn write_errors(&self) -> u64 {
        self.inner.write_errors.load(Ordering::Relaxed)
    }

    /// The last `limit` ended calls, newest first (for the operator's stats page).
    pub fn recent(&self, limit: usize) -> Result<Vec<CdrRow>, CdrError> {
        self.job(move |w| query::recent(w.conn(), limit))
    }

    /// One call by id (for the call detail page); in progress or ended.
    pub fn get(&self, id: &str) -> Result<Option<CdrRow>, CdrError> {
        let id = id.to_string();
        self.job(move |w| query::get(w.conn(), &id))
    }

    /// Waits until every event queued before this call is written.
    pub fn flush(&self) -> Result<(), CdrError> {
        self.job(|_| Ok(()))
    }

    /// Deletes rows whose `ended_at` is older than `retention_days` before
    /// `now`; returns the count. A purge that deletes anything is audited
    /// (who = "retention").
    pub fn purge_older_than(
        &self,
        now: SystemTime,
        retention_days: u32,
    ) -> Result<usize, CdrError> {
        let cutoff = retention::retention_cutoff(now, retention_days);
        self.job(move |w| retention::purge(w.conn_mut(), cutoff, now))
    }

    /// Right of access: every row of `account` as JSON (an array of objects)
    /// or CSV (header line first), oldest first. Audited.
    pub fn export(
        &self,
        account: &str,
        format: ExportFormat,
        who: &str,
    ) -> Result<String, CdrError> {
        let (account, who) = (account.to_string(), who.to_string());
        let now = SystemTime::now();
        self.job(move |w| export::export(w.conn_mut(), &account, format, &who, now))
    }

    /// Right to erasure: replaces the account's name by a stable pseudonym
    /// (`erased-<8 hex>`), blanks the remote party and the SIP Call-ID,
    /// replaces each call id by a hash of it, and keeps what billing needs
    /// (times, duration, trunk, cause, codec, security, packet counts).
    /// Earlier audit rows about the account get the pseudonym too. Returns
    /// the number of calls touched. Audited.
    pub fn erase_account(&self, account: &str, who: &str) -> Result<usize, CdrError> {
        let (account, who) = (account.to_string(), who.to_string());
        let now = SystemTime::now();
        self.job(move |w| {
            let salt = w.salt().to_string();
            erase::erase(w.conn_mut(), &salt, &account, &who, now)
        })
    }

    /// Records an admin action: who, when (now), what. `detail` should not
    /// name an account: an erasure cannot find it there (see
    /// [`audit_about`](Self::audit_about)).
    pub fn audit(&self, who: &str, action: &str, detail: &str) -> Result<(), CdrError> {
        self.audit_row(who, action, detail, None)
    }

    /// [`audit`](Self::audit) of an action about one account (an admin
    /// reading its calls): the account is kept in a column of its own, which
    /// an erasure replaces with the pseudonym.
    pub fn audit_about(
        &self,
        who: &str,
        action: &str,
        detail: &str,
        account: &str,
    ) -> Result<(), CdrError> {
        self.audit_row(who, action, detail, Some(account))
    }

    fn audit_row(
        &self,
        who: &str,
        action: &str,
        detail: &str,
        subject: Option<&str>,
    ) -> Result<(), CdrError> {
        let entry = audit::Entry {
            at: SystemTime::now(),
            who: who.to_string(),
            action: action.to_string(),
            detail: detail.to_string(),
            subject: subject.map(str::to_string),
        };
        self.job(move |w| audit::insert(w.conn(), &entry))
    }

    /// The last `limit` audit entries, newest first.
    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditRow>, CdrError> {
        self.job(move |w| audit::list(w.conn(), limit))
    }

    /// Runs `f` on the writer thread after everything queued before it and
    /// waits for its result. Unlike `record`, this waits for room in the
    /// queue: reads and admin actions are not on the packet path.
    fn job<R, F>(&self, f: F) -> Result<R, CdrError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Writer) -> Result<R, CdrError> + Send + 'static,
    {
        let tx = self.inner.tx.as_ref().ok_or(CdrError::Closed)?;
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        tx.send(Msg::Job(Box::new(move |w: &mut Writer| {
            // The caller may have gone; nothing to do about it then.
            let _ = reply_tx.send(f(w));
        })))
        .map_err(|_| CdrError::Closed)?;
        reply_rx.recv().map_err(|_| CdrError::Closed)?
    }

    /// Stops the writer after the queue until the returned sender sends or
    /// is dropped; returns once the writer is parked. For tests of a full queue.
    #[cfg(test)]
    pub(crate) fn pause(&self) -> Result<SyncSender<()>, CdrError> {
        let tx = self.inner.tx.as_ref().ok_or(CdrError::Closed)?;
        let (parked_tx, parked_rx) = mpsc::sync_channel(1);
        let (resume_tx, resume_rx) = mpsc::sync_channel(1);
        tx.send(Msg::Pause {
            parked: parked_tx,
            resume: resume_rx,
        })
        .map_err(|_| CdrError::Closed)?;
        parked_rx.recv().map_err(|_| CdrError::Closed)?;
        Ok(resume_tx)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel lets the writer write what is queued and
        // return; joining makes sure the file is closed (and the lock
        // released) before whoever dropped the last handle goes on.
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("call records: the writer thread panicked");
            }
        }
    }
}

/// WAL lets the CLI read while the gateway writes. `synchronous = NORMAL`
/// is durable against a killed process (what the restart rule is about),
/// not against a power cut, which may lose the last transactions but never
/// corrupts the file. `secure_delete` overwrites deleted and replaced
/// content, so an erased name does not linger in free pages of the file.
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode = %mode, "call records: WAL mode refused by SQLite");
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "secure_delete", true)?;
    Ok(())
}

/// Closes the rows a previous process left open; returns how many.
fn close_open_rows(conn: &Connection, now: SystemTime) -> Result<usize, CdrError> {
    // MAX keeps ended_at from preceding the start or the answer when the
    // clock went back across the restart.
    Ok(conn.execute(
        "UPDATE calls SET
             ended_at = MAX(?1, started_at, COALESCE(answered_at, 0)),
             cause_code = ?2, cause = ?3, hung_up_by = 'gateway'
         WHERE ended_at IS NULL",
        rusqlite::params![to_millis(now), RESTART_CAUSE_CODE, RESTART_CAUSE],
    )?)
}

/// Creates the database file readable by its owner only (it holds personal
/// data); SQLite gives the WAL and shared-memory files the same mode.
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// An exclusive `flock` on `<path>.lock`, held as long as the file is open.
/// The kernel releases it when the process dies, however it dies.
fn lock_exclusive(path: &Path) -> Result<File, CdrError> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|source| CdrError::Io {
            path: lock_path.clone(),
            source,
        })?;
    // SAFETY: flock only reads the descriptor, which `file` keeps open.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(if err.kind() == std::io::ErrorKind::WouldBlock {
            CdrError::InUse {
                path: path.to_path_buf(),
            }
        } else {
            CdrError::Io {
                path: lock_path,
                source: err,
            }
        });
    }
    Ok(file)
}
