//! Reading and writing `invocations` rows and their requests and results.

use crate::clock::{from_ns, to_ns};
use crate::error::QueueError;
use crate::model::{Attempt, Invocation, Status, StoredRequest, StoredResponse};
use crate::policy::AsyncPolicy;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ValueRef};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::de::DeserializeOwned;
use wisp_core::FunctionName;

/// The `invocations` columns [`InvocationRow::read`] expects, in order.
pub(super) const COLUMNS: &str = "seq, id, function, qualifier, status, dead_letter, \
     partition_key, idempotency_key, policy, attempts, enqueued_ns, updated_ns, ready_ns, \
     expires_ns, lease_token, lease_expires_ns, started_ns, error, replayed_from, replayed_as";

/// One `invocations` row, without its request and result.
#[derive(Debug, Clone)]
pub(super) struct InvocationRow {
    pub seq: i64,
    pub id: String,
    pub function: FunctionName,
    pub qualifier: String,
    pub status: Status,
    pub dead_letter: bool,
    pub partition_key: Option<String>,
    pub idempotency_key: Option<String>,
    pub policy: AsyncPolicy,
    pub attempts: Vec<Attempt>,
    pub enqueued_ns: i64,
    pub updated_ns: i64,
    pub ready_ns: Option<i64>,
    pub expires_ns: i64,
    pub lease_token: Option<String>,
    pub lease_expires_ns: Option<i64>,
    pub started_ns: Option<i64>,
    pub error: Option<String>,
    pub replayed_from: Option<String>,
    pub replayed_as: Option<String>,
}

impl InvocationRow {
    /// Reads the [`COLUMNS`] of `row`.
    pub fn read(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(InvocationRow {
            seq: row.get(0)?,
            id: row.get(1)?,
            function: row.get::<_, Parsed<FunctionName>>(2)?.0,
            qualifier: row.get(3)?,
            status: row.get::<_, Parsed<Status>>(4)?.0,
            dead_letter: row.get(5)?,
            partition_key: row.get(6)?,
            idempotency_key: row.get(7)?,
            policy: row.get::<_, Json<AsyncPolicy>>(8)?.0,
            attempts: row.get::<_, Json<Vec<Attempt>>>(9)?.0,
            enqueued_ns: row.get(10)?,
            updated_ns: row.get(11)?,
            ready_ns: row.get(12)?,
            expires_ns: row.get(13)?,
            lease_token: row.get(14)?,
            lease_expires_ns: row.get(15)?,
            started_ns: row.get(16)?,
            error: row.get(17)?,
            replayed_from: row.get(18)?,
            replayed_as: row.get(19)?,
        })
    }

    /// The public view, without the result.
    pub fn to_invocation(&self) -> Invocation {
        Invocation {
            id: self.id.clone(),
            function: self.function.clone(),
            qualifier: self.qualifier.clone(),
            status: self.status,
            attempts: self.attempts.clone(),
            enqueued_at: from_ns(self.enqueued_ns),
            updated_at: from_ns(self.updated_ns),
            next_attempt_at: self.ready_ns.map(from_ns),
            result: None,
            error: self.error.clone(),
            partition_key: self.partition_key.clone(),
            idempotency_key: self.idempotency_key.clone(),
            replayed_from: self.replayed_from.clone(),
            replayed_as: self.replayed_as.clone(),
            dead_letter_queue: self.policy.dead_letter_queue_name().to_string(),
        }
    }

    /// Writes back every mutable column (status, attempts, timestamps,
    /// lease, error, dead-letter flag) in one statement.
    pub fn save(&self, conn: &Connection) -> Result<(), QueueError> {
        let attempts = serde_json::to_string(&self.attempts)?;
        conn.prepare_cached(
            "UPDATE invocations SET status = ?2, dead_letter = ?3, attempts = ?4,
                updated_ns = ?5, ready_ns = ?6, lease_token = ?7, lease_expires_ns = ?8,
                started_ns = ?9, error = ?10, replayed_as = ?11
             WHERE seq = ?1",
        )?
        .execute(params![
            self.seq,
            self.status.as_str(),
            self.dead_letter,
            attempts,
            self.updated_ns,
            self.ready_ns,
            self.lease_token,
            self.lease_expires_ns,
            self.started_ns,
            self.error,
            self.replayed_as,
        ])?;
        Ok(())
    }
}

/// The row with this id, if any.
pub(super) fn load_by_id(conn: &Connection, id: &str) -> Result<Option<InvocationRow>, QueueError> {
    let sql = format!("SELECT {COLUMNS} FROM invocations WHERE id = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([id], InvocationRow::read)
        .optional()?)
}

/// Rows from a query whose columns are [`COLUMNS`].
pub(super) fn load_many(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<InvocationRow>, QueueError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt
        .query_map(params, InvocationRow::read)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// The request of invocation `seq`.
pub(super) fn load_request(conn: &Connection, seq: i64) -> Result<StoredRequest, QueueError> {
    let request = conn
        .prepare_cached(
            "SELECT method, path_and_query, headers, body FROM requests WHERE seq = ?1",
        )?
        .query_row([seq], |r| {
            Ok(StoredRequest {
                method: r.get(0)?,
                path_and_query: r.get(1)?,
                headers: r.get::<_, Json<_>>(2)?.0,
                body: r.get(3)?,
            })
        })
        .optional()?;
    request.ok_or_else(|| QueueError::Database(format!("invocation #{seq} has no stored request")))
}

/// Stores the request of invocation `seq`.
pub(super) fn insert_request(
    conn: &Connection,
    seq: i64,
    request: &StoredRequest,
) -> Result<(), QueueError> {
    conn.prepare_cached(
        "INSERT INTO requests (seq, method, path_and_query, headers, body)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        seq,
        request.method,
        request.path_and_query,
        serde_json::to_string(&request.headers)?,
        request.body,
    ])?;
    Ok(())
}

/// The result of invocation `seq`, if it has one.
pub(super) fn load_result(
    conn: &Connection,
    seq: i64,
) -> Result<Option<StoredResponse>, QueueError> {
    Ok(conn
        .prepare_cached("SELECT status, headers, body, truncated FROM results WHERE seq = ?1")?
        .query_row([seq], |r| {
            Ok(StoredResponse {
                status: r.get(0)?,
                headers: r.get::<_, Json<_>>(1)?.0,
                body: r.get(2)?,
                truncated: r.get(3)?,
            })
        })
        .optional()?)
}

/// Stores the result of invocation `seq`, replacing any earlier one.
pub(super) fn insert_result(
    conn: &Connection,
    seq: i64,
    response: &StoredResponse,
) -> Result<(), QueueError> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO results (seq, status, headers, body, truncated)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        seq,
        response.status,
        serde_json::to_string(&response.headers)?,
        response.body,
        response.truncated,
    ])?;
    Ok(())
}

/// The current time, for rows.
pub(super) fn now_ns(clock: &crate::Clock) -> i64 {
    to_ns(clock.now())
}

/// A text column parsed with `FromStr`.
struct Parsed<T>(T);

impl<T> FromSql for Parsed<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let s = value.as_str()?;
        s.parse()
            .map(Parsed)
            .map_err(|e| FromSqlError::Other(format!("bad value `{s}`: {e}").into()))
    }
}

/// A text column holding JSON.
struct Json<T>(T);

impl<T: DeserializeOwned> FromSql for Json<T> {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        serde_json::from_str(value.as_str()?)
            .map(Json)
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}
