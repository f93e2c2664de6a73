//! The writer thread: the only owner of the SQLite connection. It turns
//! queued events into rows, several per transaction (one commit per batch
//! instead of per event keeps up with bursts of call ends), and
//! runs the jobs of reads and admin actions in queue order.

use super::model::{to_millis, CdrEvent, LegFigures};
use rusqlite::{params, Connection};
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

/// Events written in one transaction at most, so that a job queued behind
/// a long burst still runs soon.
const MAX_BATCH: usize = 256;

pub(super) type Job = Box<dyn FnOnce(&mut Writer) + Send>;

// Events are nearly every message: boxing them to shrink the rare jobs would
// cost an allocation per event on the callers' side.
#[allow(clippy::large_enum_variant)]
pub(super) enum Msg {
    Event(CdrEvent),
    Job(Job),
    /// Tests: park the writer (after telling `parked`) until `resume` fires.
    #[cfg(test)]
    Pause {
        parked: std::sync::mpsc::SyncSender<()>,
        resume: Receiver<()>,
    },
}

pub(super) struct Writer {
    conn: Connection,
    salt: String,
    write_errors: Arc<AtomicU64>,
    /// The gateway's exclusive lock on the database, released with the thread.
    _lock: Option<File>,
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        salt: String,
        write_errors: Arc<AtomicU64>,
        lock: Option<File>,
    ) -> Writer {
        Writer {
            conn,
            salt,
            write_errors,
            _lock: lock,
        }
    }

    pub(super) fn conn(&self) -> &Connection {
        &self.conn
    }

    pub(super) fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    pub(super) fn salt(&self) -> &str {
        &self.salt
    }

    /// Runs until every `CdrStore` handle is gone and the queue is empty.
    pub(super) fn run(mut self, rx: Receiver<Msg>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Ok(first) = rx.recv() {
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Event(event) => {
                        batch.push(event);
                        // Gather what is already queued, without waiting.
                        if batch.len() < MAX_BATCH {
                            if let Ok(more) = rx.try_recv() {
                                next = Some(more);
                                continue;
                            }
                        }
                        self.write(&mut batch);
                    }
                    Msg::Job(job) => {
                        // Events queued before the job are written first, so
                        // the job sees them (that is what `flush` relies on).
                        self.write(&mut batch);
                        job(&mut self);
                    }
                    #[cfg(test)]
                    Msg::Pause { parked, resume } => {
                        self.write(&mut batch);
                        let _ = parked.send(());
                        let _ = resume.recv();
                    }
                }
            }
        }
        self.write(&mut batch);
    }

    /// Writes and empties `batch` in one transaction. An event that fails is
    /// logged and counted; the others still commit.
    fn write(&mut self, batch: &mut Vec<CdrEvent>) {
        if batch.is_empty() {
            return;
        }
        let count = batch.len() as u64;
        let tx = match self.conn.transaction() {
            Ok(tx) => tx,
            Err(e) => {
                tracing::error!(events = count, "call records lost: {e}");
                self.write_errors.fetch_add(count, Ordering::Relaxed);
                batch.clear();
                return;
            }
        };
        for event in batch.drain(..) {
            if let Err(e) = apply(&tx, &event) {
                tracing::error!(call = %event.id(), "call record not written: {e}");
                self.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Err(e) = tx.commit() {
            tracing::error!(events = count, "call records lost: {e}");
            self.write_errors.fetch_add(count, Ordering::Relaxed);
        }
    }
}

/// One event into the `calls` table. Events that match no row (an Ended
/// whose Started was dropped from a full queue, a repeated Started) change
/// nothing and are logged: the row they belong to is already wrong or gone,
/// and guessing its account would be worse.
fn apply(conn: &Connection, event: &CdrEvent) -> rusqlite::Result<()> {
    match event {
        CdrEvent::Started {
            id,
            direction,
            account,
            remote,
            trunk,
            sip_call_id,
            at,
        } => {
            let n = conn.execute(
                "INSERT INTO calls (id, direction, account, remote, trunk, sip_call_id, started_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (id) DO NOTHING",
                params![
                    id,
                    direction.as_str(),
                    account,
                    remote,
                    trunk,
                    sip_call_id,
                    to_millis(*at)
                ],
            )?;
            if n == 0 {
                tracing::warn!(call = %id, "call record: a second Started for the same id, ignored");
            }
        }
        CdrEvent::Answered { id, at } => {
            let n = conn.execute(
                "UPDATE calls SET answered_at = ?2
                 WHERE id = ?1 AND answered_at IS NULL AND ended_at IS NULL",
                params![id, to_millis(*at)],
            )?;
            if n == 0 {
                tracing::warn!(call = %id, "call record: Answered for no open call, ignored");
            }
        }
        CdrEvent::Transferred {
            id,
            to,
            sip_call_id,
        } => {
            let n = conn.execute(
                "UPDATE calls SET transferred_to = ?2, transfer_sip_call_id = ?3
                 WHERE id = ?1 AND ended_at IS NULL",
                params![id, to, sip_call_id],
            )?;
            if n == 0 {
                tracing::warn!(call = %id, "call record: Transferred for no open call, ignored");
            }
        }
        CdrEvent::Ended {
            id,
            at,
            cause_code,
            cause,
            hung_up_by,
            codec,
            browser_security,
            trunk_security,
            private,
            browser,
            trunk,
        } => {
            let [bpi, bpo, bbi, bbo, bd] = figures(browser);
            let [tpi, tpo, tbi, tbo, td] = figures(trunk);
            let n = conn.execute(
                "UPDATE calls SET
                     ended_at = ?2, cause_code = ?3, cause = ?4, hung_up_by = ?5, codec = ?6,
                     browser_security = ?7, trunk_security = ?8, private = ?9,
                     browser_packets_in = ?10, browser_packets_out = ?11,
                     browser_bytes_in = ?12, browser_bytes_out = ?13, browser_drops_total = ?14,
                     trunk_packets_in = ?15, trunk_packets_out = ?16,
                     trunk_bytes_in = ?17, trunk_bytes_out = ?18, trunk_drops_total = ?19
                 WHERE id = ?1 AND ended_at IS NULL",
                params![
                    id,
                    to_millis(*at),
                    cause_code,
                    cause,
                    hung_up_by.as_str(),
                    codec,
                    browser_security,
                    trunk_security,
                    private,
                    bpi,
                    bpo,
                    bbi,
                    bbo,
                    bd,
                    tpi,
                    tpo,
                    tbi,
                    tbo,
                    td
                ],
            )?;
            if n == 0 {
                tracing::warn!(call = %id, "call record: Ended for no open call, ignored");
            }
        }
    }
    Ok(())
}

/// SQLite integers are signed 64-bit; a counter past `i64::MAX` (never, in
/// practice) is stored saturated rather than refused.
fn figures(f: &LegFigures) -> [i64; 5] {
    [
        f.packets_in,
        f.packets_out,
        f.bytes_in,
        f.bytes_out,
        f.drops_total,
    ]
    .map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}
