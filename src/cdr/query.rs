//! Reading calls back: one column list and one row mapping for every query,
//! so that a column added by a migration is added in one place.

use super::model::{duration_s, from_millis, CdrRow, Direction, HungUpBy, LegFigures};
use super::CdrError;
use rusqlite::types::Type;
use rusqlite::{params, Connection, OptionalExtension, Row};

const COLUMNS: &str = "id, direction, account, remote, trunk, sip_call_id,
    started_at, answered_at, ended_at, cause_code, cause, hung_up_by, codec,
    browser_security, trunk_security, private,
    browser_packets_in, browser_packets_out, browser_bytes_in, browser_bytes_out,
    browser_drops_total,
    trunk_packets_in, trunk_packets_out, trunk_bytes_in, trunk_bytes_out,
    trunk_drops_total, transferred_to, transfer_sip_call_id";

/// The last `limit` ended calls, newest first.
pub(super) fn recent(conn: &Connection, limit: usize) -> Result<Vec<CdrRow>, CdrError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM calls WHERE ended_at IS NOT NULL
         ORDER BY ended_at DESC, started_at DESC LIMIT ?1"
    ))?;
    let rows = stmt.query_map(params![limit], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One call by id.
pub(super) fn get(conn: &Connection, id: &str) -> Result<Option<CdrRow>, CdrError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM calls WHERE id = ?1"))?;
    Ok(stmt.query_row(params![id], row).optional()?)
}

/// Every call of `account`, oldest first (an export reads like a statement).
pub(super) fn by_account(conn: &Connection, account: &str) -> Result<Vec<CdrRow>, CdrError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM calls WHERE account = ?1 ORDER BY started_at, id"
    ))?;
    let rows = stmt.query_map(params![account], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn row(r: &Row<'_>) -> rusqlite::Result<CdrRow> {
    let direction: String = r.get(1)?;
    let answered: Option<i64> = r.get(7)?;
    let ended: Option<i64> = r.get(8)?;
    let hung_up_by: Option<String> = r.get(11)?;
    Ok(CdrRow {
        id: r.get(0)?,
        direction: Direction::parse(&direction).ok_or_else(|| bad(1, "direction", &direction))?,
        account: r.get(2)?,
        remote: r.get(3)?,
        trunk: r.get(4)?,
        sip_call_id: r.get(5)?,
        started_at: from_millis(r.get(6)?),
        answered_at: answered.map(from_millis),
        ended_at: ended.map(from_millis),
        duration_s: duration_s(answered, ended),
        cause_code: r.get(9)?,
        cause: r.get(10)?,
        hung_up_by: match hung_up_by {
            Some(s) => Some(HungUpBy::parse(&s).ok_or_else(|| bad(11, "hung_up_by", &s))?),
            None => None,
        },
        codec: r.get(12)?,
        browser_security: r.get(13)?,
        trunk_security: r.get(14)?,
        private: r.get(15)?,
        browser_leg: leg(r, 16)?,
        trunk_leg: leg(r, 21)?,
        transferred_to: r.get(26)?,
        transfer_sip_call_id: r.get(27)?,
    })
}

fn leg(r: &Row<'_>, first: usize) -> rusqlite::Result<LegFigures> {
    let n = |i: usize| -> rusqlite::Result<u64> {
        let v: i64 = r.get(first + i)?;
        Ok(u64::try_from(v).unwrap_or(0))
    };
    Ok(LegFigures {
        packets_in: n(0)?,
        packets_out: n(1)?,
        bytes_in: n(2)?,
        bytes_out: n(3)?,
        drops_total: n(4)?,
    })
}

/// A value the schema's CHECK constraints should have kept out.
fn bad(column: usize, name: &str, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        Type::Text,
        format!("unknown {name} {value:?}").into(),
    )
}
