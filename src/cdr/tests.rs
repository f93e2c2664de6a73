//! Store tests: a real SQLite file in a fresh temporary directory each, an
//! explicit clock (fixed `SystemTime`s), no sleeps.

use super::*;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A directory under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wsg-cdr-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn db(&self) -> PathBuf {
        database_path(&self.0)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// 2026-11-30T00:53:20Z.
fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_796_000_000)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn started(id: &str, account: &str, remote: &str, at: SystemTime) -> CdrEvent {
    CdrEvent::Started {
        id: id.into(),
        direction: Direction::Outgoing,
        account: account.into(),
        remote: remote.into(),
        trunk: "carrier".into(),
        sip_call_id: format!("{id}-sip@gw.example"),
        at,
    }
}

fn ended(id: &str, at: SystemTime) -> CdrEvent {
    CdrEvent::Ended {
        id: id.into(),
        at,
        cause_code: 200,
        cause: "hung up by the browser".into(),
        hung_up_by: HungUpBy::Browser,
        codec: Some("PCMU/8000".into()),
        browser_security: Some("dtls-srtp AEAD_AES_128_GCM".into()),
        trunk_security: Some("sdes-srtp AES_CM_128_HMAC_SHA1_80".into()),
        private: false,
        browser: LegFigures {
            packets_in: 3000,
            packets_out: 2990,
            bytes_in: 516_000,
            bytes_out: 514_280,
            drops_total: 2,
        },
        trunk: LegFigures {
            packets_in: 2990,
            packets_out: 3000,
            bytes_in: 514_280,
            bytes_out: 516_000,
            drops_total: 0,
        },
    }
}

/// A whole call: started at `at`, answered 5 s later, ended after `talk` s.
fn call(store: &CdrStore, id: &str, account: &str, remote: &str, at: SystemTime, talk: u64) {
    store.record(started(id, account, remote, at));
    store.record(CdrEvent::Answered {
        id: id.into(),
        at: at + secs(5),
    });
    store.record(ended(id, at + secs(5 + talk)));
}

#[test]
fn cdr_migrations_run_on_an_empty_file_and_are_idempotent_on_reopen() {
    let dir = TempDir::new("migrate");
    // An empty file, as a crash between create and first write leaves it.
    std::fs::write(dir.db(), b"").unwrap();
    let store = CdrStore::open(&dir.db(), t0()).unwrap();
    call(&store, "c1", "alice", "+493012345689", t0(), 60);
    store.flush().unwrap();
    drop(store);

    let salt = {
        let conn = Connection::open(dir.db()).unwrap();
        let version: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        conn.query_row(
            "SELECT value FROM meta WHERE key = 'pseudonym_salt'",
            [],
            |r| r.get::<_, String>(0),
        )
        .unwrap()
    };
    assert_eq!(salt.len(), 32);

    // Reopening runs nothing again: same salt, same version, data kept.
    let store = CdrStore::open(&dir.db(), t0() + secs(3600)).unwrap();
    let row = store.get("c1").unwrap().unwrap();
    assert_eq!(row.cause.as_deref(), Some("hung up by the browser"));
    drop(store);
    let conn = Connection::open(dir.db()).unwrap();
    let again: String = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'pseudonym_salt'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(again, salt);
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('calls', 'audit', 'meta')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 3);
}

#[test]
fn cdr_a_version_1_file_gains_the_transfer_columns_and_keeps_its_rows() {
    let dir = TempDir::new("migrate-v1");
    let store = CdrStore::open(&dir.db(), t0()).unwrap();
    call(&store, "c1", "alice", "+493012345689", t0(), 60);
    store.flush().unwrap();
    drop(store);
    // The file as a gateway before migration 2 left it.
    {
        let conn = Connection::open(dir.db()).unwrap();
        conn.execute_batch(
            "ALTER TABLE calls DROP COLUMN transferred_to;
             ALTER TABLE calls DROP COLUMN transfer_sip_call_id;
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let store = CdrStore::open(&dir.db(), t0() + secs(3600)).unwrap();
    let row = store.get("c1").unwrap().unwrap();
    assert_eq!(row.cause.as_deref(), Some("hung up by the browser"));
    assert_eq!((row.transferred_to, row.transfer_sip_call_id), (None, None));
    drop(store);
    let conn = Connection::open(dir.db()).unwrap();
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
}

#[test]
fn cdr_database_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("mode");
    let store = CdrStore::open(&dir.db(), t0()).unwrap();
    drop(store);
    let mode = std::fs::metadata(dir.db()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn cdr_a_newer_schema_is_refused() {
    let dir = TempDir::new("newer");
    drop(CdrStore::open(&dir.db(), t0()).unwrap());
    Connection::open(dir.db())
        .unwrap()
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    match CdrStore::open(&dir.db(), t0()) {
        Err(CdrError::SchemaTooNew { found, known }) => {
            assert_eq!((found, known), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a newer schema was opened"),
    }
}

#[test]
fn cdr_a_second_gateway_on_the_same_file_is_refused() {
    let dir = TempDir::new("inuse");
    let first = CdrStore::open(&dir.db(), t0()).unwrap();
    assert!(matches!(
        CdrStore::open(&dir.db(), t0()),
        Err(CdrError::InUse { .. })
    ));
    drop(first);
    // The lock goes with the store.
    CdrStore::open(&dir.db(), t0()).unwrap();
}

#[test]
fn cdr_started_answered_ended_make_one_row() {
    let dir = TempDir::new("lifecycle");
    let store = CdrStore::open(&dir.db(), t0()).unwrap();
    store.record(CdrEvent::Started {
        id: "call-1".into(),
        direction: Direction::Incoming,
        account: "alice".into(),
        remote: "+4930******89".into(),
        trunk: "carrier".into(),
        sip_call_id: "a84b4c76e66710@pc33.example".into(),
        at: t0(),
    });
    store.flush().unwrap();
    let open = store.get("call-1").unwrap().unwrap();
    assert_eq!(open.ended_at, None);
    assert_eq!(open.cause, None);
    assert!(
        store.recent(10).unwrap().is_empty(),
        "open calls are not recent"
    );

    store.record(CdrEvent::Answered {
        id: "call-1".into(),
        at: t0() + Duration::from_millis(4_500),
    });
    store.record(CdrEvent::Transferred {
        id: "call-1".into(),
        to: "+4930******00".into(),
        sip_call_id: "b93f2c@gw.example".into(),
    });
    let mut end = ended("call-1", t0() + secs(65));
    if let CdrEvent::Ended {
        private,
        hung_up_by,
        ..
    } = &mut end
    {
        *private = true;
        *hung_up_by = HungUpBy::Trunk;
    }
    store.record(end);
    // Events for no open call change nothing.
    store.record(ended("never-started", t0()));
    store.record(CdrEvent::Answered {
        id: "call-1".into(),
        at: t0() + secs(99),
    });
    store.record(started("call-1", "mallory", "x", t0()));
    store.flush().unwrap();

    let row = store.get("call-1").unwrap().unwrap();
    let want = CdrRow {
        id: "call-1".into(),
        direction: Direction::Incoming,
        account: "alice".into(),
        remote: "+4930******89".into(),
        trunk: "carrier".into(),
        sip_call_id: "a84b4c76e66710@pc33.example".into(),
        started_at: t0(),
        answered_at: Some(t0() + Duration::from_millis(4_500)),
        ended_at: Some(t0() + secs(65)),
        duration_s: Some(60.5),
        cause_code: Some(200),
        cause: Some("hung up by the browser".into()),
        hung_up_by: Some(HungUpBy::Trunk),
        codec: Some("PCMU/8000".into()),
        browser_security: Some("dtls-srtp AEAD_AES_128_GCM".into()),
        trunk_security: Some("sdes-srtp AES_CM_128_HMAC_SHA1_80".into()),
        private: true,
        browser_leg: LegFigures {
            packets_in: 3000,
            packets_out: 2990,
            bytes_in: 516_000,
            bytes_out: 514_280,
            drops_total: 2,
        },
        trunk_leg: LegFigures {
            packets_in: 2990,
            packets_out: 3000,
            bytes_in: 514_280,
            bytes_out: 516_000,
            drops_total: 0,
        },
        transferred_to: Some("+4930******00".into()),
        transfer_sip_call_id: Some("b93f2c@gw.example".into()),
    };
    assert_eq!(row, want);
    assert_eq!(store.get("never-started").unwrap(), None);
    assert_eq!(store.recent(10).unwrap(), vec![want]);
    assert_eq!(store.dropped(), 0);
    assert_eq!(store.write_errors(), 0);
}

#[test]
fn cdr_recent_is_newest_first_and_limited() {
    let dir = TempDir::new("recent");
    let store = CdrStore::open(&dir.db(), t0()).unwrap();
    for i in 0..5u64 {
        call(
            &store,
            &format!("c{i}"),
            "alice",
            "1",
            t0() + secs(i * 100),
            10,
        );
    }
    // A call that never got an answer ends too, without a duration.
    store.record(started("missed", "alice", "1", t0() + secs(1000)));
    store.record(ended("missed", t0() + secs(1030)));
    let ids: Vec<String> = store.recent(3).unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(ids, ["missed", "c4", "c3"]);
    assert_eq!(store.get("missed").unwrap().unwrap().duration_s, None);
}

#[test]
fn cdr_rows_left_open_are_closed_by_restart() {
    let dir = TempDir::new("restart");
    let store = CdrStore::open(&dir.db(), t0()).unwrap();
    call(&store, "done", "alice", "1", t0(), 30);
    store.record(started("talking", "alice", "2", t0() + secs(10)));
    store.record(CdrEvent::Answered {
        id: "talking".into(),
        at: t0() + secs(12),
    });
    store.record(started("ringing", "bob", "3", t0() + secs(20)));
    store.flush().unwrap();
    // The process dies here: nothing more is written for these calls.
    drop(store);

    let restart = t0() + secs(600);
    let store = CdrStore::open(&dir.db(), restart).unwrap();
    for id in ["talking", "ringing"] {
        let row = store.get(id).unwrap().unwrap();
        assert_eq!(row.ended_at, Some(restart), "{id}");
        assert_eq!(row.cause.as_deref(), Some(RESTART_CAUSE), "{id}");
        assert_eq!(row.cause_code, Some(RESTART_CAUSE_CODE), "{id}");
        assert_eq!(row.hung_up_by, Some(HungUpBy::Gateway), "{id}");
    }
    assert_eq!(
        store.get("talking").unwrap().unwrap().duration_s,
        Some(588.0)
    );
    assert_eq!(store.get("ringing").unwrap().unwrap().duration_s, None);
    let done = store.get("done").unwrap().unwrap();
    assert_eq!(done.ended_at, Some(t0() + secs(35)));
    assert_eq!(done.cause_code, Some(200));
}

#[test]
fn cdr_purge_deletes_rows_past_retention() {
    let dir = TempDir::new("purge");
    let now = t0() + secs(200 * 86_400);
    let store = CdrStore::open(&dir.db(), t0()).unwrap();
    let day = 86_400;
    call(&store, "old", "alice", "1", now - secs(91 * day + 35), 30);
    call(&store, "young", "alice", "1", now - secs(89 * day + 35), 30);
    // Started long ago but not over: no ended_at, nothing to measure from.
    store.record(started("open", "alice", "1", now - secs(120 * day)));

    assert_eq!(store.purge_older_than(now, 90).unwrap(), 1);
    assert_eq!(store.get("old").unwrap(), None);
    assert!(store.get("young").unwrap().is_some());
    assert!(store.get("open").unwrap().is_some());
    assert_eq!(store.purge_older_than(now, 90).unwrap(), 0);

    let log = store.audit_log(10).unwrap();
    assert_eq!(
        log.len(),
        1,
        "only a purge that deleted something is audited"
    );
    assert_eq!(log[0].who, "retention");
    assert_eq!(log[0].action, "purge");
    assert_eq!(log[0].at, now);
    assert!(log[0].detail.starts_with("1 calls ended before "));
}

#[test]
fn cdr_export_json_parses_and_csv_has_a_header_and_a_line_per_row() {
    let dir = TempDir::new("export");
    let store = CdrStore::open(&dir.db(), t0()).unwrap();
    call(&store, "c1", "alice", "+493012345689", t0(), 60);
    call(
        &store,
        "c2",
        "alice",
        "sip:bob@example.com",
        t0() + secs(100),
        5,
    );
    call(&store, "other", "bob", "+441632960961", t0(), 5);
    store.record(started("c3", "alice", "0301234", t0() + secs(200)));
    let mut tricky = ended("c3", t0() + secs(230));
    if let CdrEvent::Ended { cause, .. } = &mut tricky {
        *cause = "busy, \"really\"".into();
    }
    store.record(tricky);

    let json = store
        .export("alice", ExportFormat::Json, "cli:tester")
        .unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let rows = value.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["id"], "c1");
    assert_eq!(rows[0]["account"], "alice");
    assert_eq!(rows[0]["remote"], "+493012345689");
    assert_eq!(rows[0]["direction"], "outgoing");
    assert_eq!(rows[0]["started_at"], "2026-11-30T00:53:20Z");
    assert_eq!(rows[0]["answered_at"], "2026-11-30T00:53:25Z");
    assert_eq!(rows[0]["duration_s"], 60.0);
    assert_eq!(rows[0]["browser_leg"]["packets_in"], 3000);
    assert_eq!(rows[0]["hung_up_by"], "browser");
    assert_eq!(rows[2]["cause"], "busy, \"really\"");
    assert!(!json.contains("bob\""), "another account's call leaked");

    let csv = store
        .export("alice", ExportFormat::Csv, "cli:tester")
        .unwrap();
    let lines: Vec<&str> = csv.split_terminator("\r\n").collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(lines[0].starts_with("id,direction,account,remote,trunk,sip_call_id,started_at,"));
    assert_eq!(
        lines[0].split(',').count(),
        lines[1].split(',').count(),
        "header and a plain row have the same number of fields"
    );
    assert!(lines[1].starts_with(
        "c1,outgoing,alice,+493012345689,carrier,c1-sip@gw.example,2026-11-30T00:53:20Z,"
    ));
    assert!(lines[1].contains(",60.000,200,hung up by the browser,browser,PCMU/8000,"));
    assert!(
        lines[3].contains(",\"busy, \"\"really\"\"\","),
        "{}",
        lines[3]
    );

    let empty = store
        .export("nobody", ExportFormat::Csv, "cli:tester")
        .unwrap();
    assert_eq!(empty.split_terminator("\r\n").count(), 1);
    assert_eq!(
        store
            .export("nobody", ExportFormat::Json, "cli:tester")
            .unwrap()
            .trim(),
        "[]"
    );

    let log = store.audit_log(10).unwrap();
    assert_eq!(log.len(), 4);
    assert_eq!(log[3].action, "export");
    assert_eq!(log[3].who, "cli:tester");
    assert_eq!(log[3].subject.as_deref(), Some("alice"));
    assert_eq!(log[3].detail, "json, 3 calls");
    assert_eq!(log[2].detail, "csv, 3 calls");
}

/// Every text value of every row of every table, for the erasure test.
fn every_value(db: &Path) -> Vec<String> {
    let conn = Connection::open(db).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(tables.len() >= 3, "{tables:?}");
    let mut values = Vec::new();
    for table in tables {
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
        let columns = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            for i in 0..columns {
                let v: rusqlite::types::Value = row.get(i).unwrap();
                values.push(match v {
                    rusqlite::types::Value::Text(s) => s,
                    rusqlite::types::Value::Blob(b) => String::from_utf8_lossy(&b).into(),
                    other => format!("{other:?}"),
                });
            }
        }
    }
    values
}

fn file_contains(path: &Path, needle: &str) -> bool {
    match std::fs::read(path) {
        Ok(bytes) => bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
        Err(_) => false,
    }
}

#[test]
fn cdr_erase_leaves_no_trace_of_the_account_or_the_remote_party() {
    let dir = TempDir::new("erase");
    let account = "alice.wonderland";
    let remote = "+4930987654321";
    let sip_call_id = "3848276298220188511@alice-laptop.example";
    let target = "+4930111222333";
    let target_call_id = "77aa19@alice-transfer.example";
    let store = CdrStore::open(&dir.db(), t0()).unwrap();
    store.record(CdrEvent::Started {
        id: "alice.wonderland-call-1".into(),
        direction: Direction::Outgoing,
        account: account.into(),
        remote: remote.into(),
        trunk: "carrier".into(),
        sip_call_id: sip_call_id.into(),
        at: t0(),
    });
    store.record(CdrEvent::Answered {
        id: "alice.wonderland-call-1".into(),
        at: t0() + secs(5),
    });
    store.record(CdrEvent::Transferred {
        id: "alice.wonderland-call-1".into(),
        to: target.into(),
        sip_call_id: target_call_id.into(),
    });
    store.record(ended("alice.wonderland-call-1", t0() + secs(125)));
    call(
        &store,
        "c2",
        account,
        &format!("sip:{remote}@carrier.example"),
        t0() + secs(500),
        20,
    );
    call(&store, "bob-1", "bob", "+441632960961", t0(), 10);
    // Earlier admin actions about the account: an export, an admin read.
    store
        .export(account, ExportFormat::Json, "cli:root")
        .unwrap();
    store
        .audit_about("admin:ops", "read", "call detail page", account)
        .unwrap();
    // Enough churn that the first pages were written to the database file
    // itself, not only to the write-ahead log.
    for i in 0..300 {
        call(&store, &format!("filler-{i}"), "carol", "0301234", t0(), 1);
    }
    store.flush().unwrap();
    assert!(
        file_contains(&dir.db(), account)
            || file_contains(&dir.db().with_extension("sqlite3-wal"), account)
    );

    let billing_before = store.get("alice.wonderland-call-1").unwrap().unwrap();
    assert_eq!(store.erase_account(account, "cli:root").unwrap(), 2);

    // Nothing in any column of any table…
    let values = every_value(&dir.db());
    for needle in [
        account,
        "alice",
        remote,
        "987654321",
        sip_call_id,
        "alice-laptop",
        target,
        target_call_id,
        "alice-transfer",
    ] {
        let hits: Vec<&String> = values.iter().filter(|v| v.contains(needle)).collect();
        assert!(hits.is_empty(), "{needle:?} still in {hits:?}");
    }
    // …nor anywhere in the files' bytes.
    let wal = dir.0.join(format!("{DB_FILE}-wal"));
    for needle in [account, remote, sip_call_id, target, target_call_id] {
        assert!(
            !file_contains(&dir.db(), needle),
            "{needle:?} in the database file"
        );
        assert!(
            !file_contains(&wal, needle),
            "{needle:?} in the write-ahead log"
        );
    }

    // What billing needs is still there, under the pseudonym.
    let alias = store.recent(400).unwrap();
    let erased: Vec<&CdrRow> = alias
        .iter()
        .filter(|r| r.account.starts_with("erased-"))
        .collect();
    assert_eq!(erased.len(), 2);
    let first = erased
        .iter()
        .find(|r| r.started_at == t0())
        .expect("the first call, by its start time");
    assert_eq!(first.account.len(), "erased-".len() + 8);
    assert!(first.id.starts_with("erased-"));
    assert_eq!(first.remote, "");
    assert_eq!(first.sip_call_id, "");
    assert_eq!(first.duration_s, billing_before.duration_s);
    assert_eq!(first.ended_at, billing_before.ended_at);
    assert_eq!(first.trunk, billing_before.trunk);
    assert_eq!(first.cause_code, billing_before.cause_code);
    assert_eq!(first.codec, billing_before.codec);
    assert_eq!(first.browser_leg, billing_before.browser_leg);
    assert_eq!(first.trunk_security, billing_before.trunk_security);
    assert_eq!(erased[0].account, erased[1].account, "one stable pseudonym");
    // Other accounts are untouched.
    assert_eq!(store.get("bob-1").unwrap().unwrap().remote, "+441632960961");

    // The erasure is audited, and earlier audit rows name the pseudonym.
    let log = store.audit_log(10).unwrap();
    assert_eq!(log[0].action, "erase");
    assert_eq!(log[0].who, "cli:root");
    assert_eq!(log[0].subject.as_deref(), Some(first.account.as_str()));
    assert_eq!(log[0].detail, "2 calls pseudonymised");
    assert!(log[1..3]
        .iter()
        .all(|e| e.subject.as_deref() == Some(first.account.as_str())));

    // Erasing again finds nothing, and closing writes nothing back.
    assert_eq!(store.erase_account(account, "cli:root").unwrap(), 0);
    drop(store);
    for needle in [account, remote, sip_call_id] {
        assert!(
            !file_contains(&dir.db(), needle),
            "{needle:?} in the closed file"
        );
    }
    // An export asked for afterwards finds nothing (and, being a new request
    // by name, is audited under that name).
    let store = CdrStore::open(&dir.db(), t0()).unwrap();
    assert_eq!(
        store
            .export(account, ExportFormat::Json, "cli:root")
            .unwrap()
            .trim(),
        "[]"
    );
}

#[test]
fn cdr_record_never_blocks_on_a_full_queue_and_counts_drops() {
    let dir = TempDir::new("full");
    let store = CdrStore::open_with_capacity(&dir.db(), t0(), 4).unwrap();
    let resume = store.pause().unwrap();

    // With the writer parked, 4 events fit and 16 are dropped; `record` must
    // return for all 20. On another thread, so that a blocking `record`
    // fails this test instead of hanging it.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let sender = store.clone();
    let recorder = std::thread::spawn(move || {
        for i in 0..20 {
            sender.record(started(&format!("c{i}"), "alice", "1", t0()));
        }
        let _ = done_tx.send(());
    });
    done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("record blocked on a full queue");
    recorder.join().unwrap();
    assert_eq!(store.dropped(), 16);

    drop(resume);
    store.flush().unwrap();
    for i in 0..4 {
        assert!(store.get(&format!("c{i}")).unwrap().is_some(), "c{i}");
    }
    assert_eq!(store.get("c4").unwrap(), None);
    assert_eq!(store.dropped(), 16);
}

#[test]
fn cdr_cli_export_and_purge_work_beside_a_running_gateway() {
    let dir = TempDir::new("cli");
    assert!(matches!(
        export_account(&dir.0, "alice", ExportFormat::Json, "cli:tester"),
        Err(CdrError::NoDatabase { .. })
    ));
    assert!(matches!(
        purge_account(&dir.0, "alice", "cli:tester"),
        Err(CdrError::NoDatabase { .. })
    ));

    let gateway = CdrStore::open(&dir.db(), t0()).unwrap();
    call(&gateway, "c1", "alice", "+493012345689", t0(), 60);
    // A call in progress while the operator runs the commands: the CLI must
    // not close it as "ended by restart".
    gateway.record(started("live", "bob", "+441632960961", t0() + secs(300)));
    gateway.flush().unwrap();

    let who = cli_who(Some("operator"));
    let csv = export_account(&dir.0, "alice", ExportFormat::Csv, &who).unwrap();
    assert_eq!(csv.split_terminator("\r\n").count(), 2);
    let json = export_account(&dir.0, "bob", ExportFormat::Json, &who).unwrap();
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(rows[0]["ended_at"], serde_json::Value::Null);
    assert_eq!(gateway.get("live").unwrap().unwrap().ended_at, None);

    assert_eq!(purge_account(&dir.0, "alice", &who).unwrap(), 1);
    assert_eq!(gateway.get("c1").unwrap(), None, "the id was replaced");
    let log = gateway.audit_log(10).unwrap();
    let actions: Vec<(&str, &str)> = log
        .iter()
        .map(|e| (e.who.as_str(), e.action.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("cli:operator", "erase"),
            ("cli:operator", "export"),
            ("cli:operator", "export")
        ]
    );
}

#[test]
fn cdr_cli_who_names_the_os_user() {
    assert_eq!(cli_who(Some("root")), "cli:root");
    assert_eq!(cli_who(Some("")), "cli:unknown");
    assert_eq!(cli_who(None), "cli:unknown");
}

#[test]
fn cdr_queries_after_the_last_handle_keep_working_on_clones() {
    let dir = TempDir::new("clones");
    let store = CdrStore::open(&dir.db(), t0()).unwrap();
    let clone = store.clone();
    drop(store);
    call(&clone, "c1", "alice", "1", t0(), 1);
    assert!(clone.get("c1").unwrap().is_some());
}
