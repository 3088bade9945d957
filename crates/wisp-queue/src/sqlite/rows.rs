//! Reading and writing `invocations` rows and their requests and results.

use crate::clock::{from_ns, to_ns};
use crate::error::QueueError;
use crate::model::{Attempt, Invocation, Status, StoredRequest, StoredResponse};
use crate::policy::AsyncPolicy;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ValueRef};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::de::DeserializeOwned;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::LazyLock;
use wisp_core::FunctionName;

/// The `invocations` columns [`InvocationRow::read`] expects, in order.
pub(super) const COLUMNS: &str = "seq, id, function, qualifier, status, dead_letter, \
     partition_key, idempotency_key, policy, attempts, enqueued_ns, updated_ns, ready_ns, \
     expires_ns, lease_token, lease_expires_ns, started_ns, error, replayed_from, replayed_as";

/// [`COLUMNS`] of `invocations AS i`, then the request's columns of
/// `requests AS r` (NULL if it has none), for [`RawRow::read_with_request`].
pub(super) static COLUMNS_WITH_REQUEST: LazyLock<String> = LazyLock::new(|| {
    let mut s: Vec<String> = COLUMNS.split(", ").map(|c| format!("i.{c}")).collect();
    s.extend(["r.method", "r.path_and_query", "r.headers", "r.body"].map(String::from));
    s.join(", ")
});

/// One `invocations` row, without its request and result.
///
/// `attempts` holds the attempts that ended. While the invocation is
/// `running`, its current attempt is not stored: it started when the
/// lease was taken (`updated_ns`, the last status change) or, if the
/// executor said so, at `started_ns` (see [`InvocationRow::running_attempt`]).
/// So taking a lease never rewrites the attempts.
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
        RawRow::read(row)?.decode().map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(9, rusqlite::types::Type::Text, e.into())
        })
    }

    /// The attempt under way, while `running`.
    pub fn running_attempt(&self) -> Option<Attempt> {
        (self.status == Status::Running).then(|| Attempt {
            started_at: from_ns(self.started_ns.unwrap_or(self.updated_ns)),
            finished_at: None,
            outcome: "running".into(),
            error: None,
        })
    }

    /// The public view, without the result.
    pub fn to_invocation(&self) -> Invocation {
        let mut attempts = Vec::with_capacity(self.attempts.len() + 1);
        attempts.extend(self.attempts.iter().cloned());
        attempts.extend(self.running_attempt());
        Invocation {
            id: self.id.clone(),
            function: self.function.clone(),
            qualifier: self.qualifier.clone(),
            status: self.status,
            attempts,
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
    /// lease, error, dead-letter flag) in one statement. The hot paths
    /// (lease, complete) write only what they change instead.
    pub fn save(&self, conn: &Connection) -> Result<(), QueueError> {
        let attempts = serde_json::to_string(&self.attempts)?;
        conn.prepare_cached(
            "UPDATE invocations SET status = ?2, dead_letter = ?3, attempts = ?4,
                updated_ns = ?5, ready_ns = ?6, lease_token = ?7, lease_expires_ns = ?8,
                started_ns = ?9, error = ?10, replayed_as = ?11, dlq = ?12
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
            self.dead_letter
                .then(|| self.policy.dead_letter_queue_name()),
        ])?;
        Ok(())
    }
}

/// An `invocations` row as read, its JSON columns not decoded yet: the
/// writer thread reads rows this way where it needs few of their fields,
/// and leaves the decoding to the caller.
#[derive(Debug)]
pub(super) struct RawRow {
    pub seq: i64,
    pub id: String,
    pub function: FunctionName,
    pub qualifier: String,
    pub status: Status,
    pub dead_letter: bool,
    pub partition_key: Option<String>,
    pub idempotency_key: Option<String>,
    pub policy: String,
    pub attempts: String,
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

impl RawRow {
    /// Reads the [`COLUMNS`] of `row`.
    pub fn read(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(RawRow {
            seq: row.get(0)?,
            id: row.get(1)?,
            function: row.get::<_, Parsed<FunctionName>>(2)?.0,
            qualifier: row.get(3)?,
            status: row.get::<_, Parsed<Status>>(4)?.0,
            dead_letter: row.get(5)?,
            partition_key: row.get(6)?,
            idempotency_key: row.get(7)?,
            policy: row.get(8)?,
            attempts: row.get(9)?,
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

    /// Reads the [`COLUMNS_WITH_REQUEST`] of `row`: the invocation and its
    /// request, if it has one.
    pub fn read_with_request(row: &Row<'_>) -> rusqlite::Result<(Self, Option<RawRequest>)> {
        let invocation = Self::read(row)?;
        let request = match row.get::<_, Option<String>>(20)? {
            Some(method) => Some(RawRequest {
                method,
                path_and_query: row.get(21)?,
                headers: row.get(22)?,
                body: row.get(23)?,
            }),
            None => None,
        };
        Ok((invocation, request))
    }

    /// The row with its policy and attempts decoded.
    pub fn decode(self) -> Result<InvocationRow, QueueError> {
        Ok(InvocationRow {
            policy: policy_from_json(&self.policy)?,
            attempts: serde_json::from_str(&self.attempts)?,
            seq: self.seq,
            id: self.id,
            function: self.function,
            qualifier: self.qualifier,
            status: self.status,
            dead_letter: self.dead_letter,
            partition_key: self.partition_key,
            idempotency_key: self.idempotency_key,
            enqueued_ns: self.enqueued_ns,
            updated_ns: self.updated_ns,
            ready_ns: self.ready_ns,
            lease_token: self.lease_token,
            lease_expires_ns: self.lease_expires_ns,
            started_ns: self.started_ns,
            error: self.error,
            replayed_from: self.replayed_from,
            replayed_as: self.replayed_as,
        })
    }
}

/// A stored request as read, its headers not decoded yet.
#[derive(Debug)]
pub(super) struct RawRequest {
    pub method: String,
    pub path_and_query: String,
    pub headers: String,
    pub body: Vec<u8>,
}

impl RawRequest {
    /// The request with its headers decoded.
    pub fn decode(self) -> Result<StoredRequest, QueueError> {
        Ok(StoredRequest {
            method: self.method,
            path_and_query: self.path_and_query,
            headers: serde_json::from_str(&self.headers)?,
            body: self.body,
        })
    }
}

/// What a lease holder's calls (`mark_started`, `complete`, `release`)
/// need of a running row, read without decoding the rest.
pub(super) struct HeldRow {
    pub seq: i64,
    pub function: FunctionName,
    pub status: Status,
    pub lease_token: Option<String>,
    pub lease_expires_ns: Option<i64>,
    pub started_ns: Option<i64>,
    pub updated_ns: i64,
    pub partition_key: Option<String>,
    /// The stored attempts (those that ended), as JSON.
    pub attempts: String,
    /// The policy, as JSON.
    pub policy: String,
}

impl HeldRow {
    /// When the attempt under way started.
    pub fn attempt_started_ns(&self) -> i64 {
        self.started_ns.unwrap_or(self.updated_ns)
    }

    /// The policy, decoded.
    pub fn policy(&self) -> Result<AsyncPolicy, QueueError> {
        Ok(policy_from_json(&self.policy)?)
    }
}

/// The lease-holder's view of the row with this seq (if `seq` is given)
/// or else this id, if any.
pub(super) fn load_held(
    conn: &Connection,
    seq: Option<i64>,
    id: &str,
) -> Result<Option<HeldRow>, QueueError> {
    const COLUMNS: &str = "id, seq, function, status, lease_token, lease_expires_ns, \
        started_ns, updated_ns, partition_key, attempts, policy";
    let read = |r: &Row<'_>| {
        Ok((
            r.get::<_, String>(0)?,
            HeldRow {
                seq: r.get(1)?,
                function: r.get::<_, Parsed<FunctionName>>(2)?.0,
                status: r.get::<_, Parsed<Status>>(3)?.0,
                lease_token: r.get(4)?,
                lease_expires_ns: r.get(5)?,
                started_ns: r.get(6)?,
                updated_ns: r.get(7)?,
                partition_key: r.get(8)?,
                attempts: r.get(9)?,
                policy: r.get(10)?,
            },
        ))
    };
    let found = match seq {
        Some(seq) => conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM invocations WHERE seq = ?1"))?
            .query_row([seq], read)
            .optional()?,
        None => conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM invocations WHERE id = ?1"))?
            .query_row([id], read)
            .optional()?,
    };
    Ok(found.filter(|(found, _)| found == id).map(|(_, row)| row))
}

/// `stored` (a JSON array of attempts, as written by this module) with
/// `attempt` appended, without decoding the attempts already there.
pub(super) fn append_attempt(stored: &str, attempt: &Attempt) -> Result<String, QueueError> {
    let new = serde_json::to_string(attempt)?;
    let inner = stored
        .trim()
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .ok_or_else(|| QueueError::Database(format!("corrupt stored attempts: {stored}")))?;
    Ok(if inner.trim().is_empty() {
        format!("[{new}]")
    } else {
        format!("[{inner},{new}]")
    })
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
    request.ok_or_else(|| no_request(seq))
}

/// The error for an invocation stored without its request.
pub(super) fn no_request(seq: i64) -> QueueError {
    QueueError::Database(format!("invocation #{seq} has no stored request"))
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

/// Stores the result of invocation `seq` (it has none: an invocation
/// succeeds once; a replay is a new invocation).
pub(super) fn insert_result(
    conn: &Connection,
    seq: i64,
    response: &StoredResponse,
) -> Result<(), QueueError> {
    conn.prepare_cached(
        "INSERT INTO results (seq, status, headers, body, truncated)
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

/// Most distinct policies each thread keeps decoded or encoded.
const POLICY_CACHE: usize = 64;

thread_local! {
    /// Stored policy JSON to the policy it decodes to: most rows share a
    /// handful of policies, and decoding one costs more than the lookup.
    static DECODED: RefCell<HashMap<String, AsyncPolicy>> = RefCell::new(HashMap::new());
    /// Recently encoded policies and their JSON, newest last.
    static ENCODED: RefCell<Vec<(AsyncPolicy, String)>> = const { RefCell::new(Vec::new()) };
}

/// The policy stored as `json`.
pub(super) fn policy_from_json(json: &str) -> Result<AsyncPolicy, serde_json::Error> {
    DECODED.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(p) = cache.get(json) {
            return Ok(p.clone());
        }
        let policy: AsyncPolicy = serde_json::from_str(json)?;
        if cache.len() >= POLICY_CACHE {
            cache.clear();
        }
        cache.insert(json.to_owned(), policy.clone());
        Ok(policy)
    })
}

/// `policy` as stored: only the fields that differ from the default (`{}`
/// for the default policy), which the policy's `serde(default)` reads back
/// as it was. Every row carries its policy, and the full JSON was half of
/// a typical row: fewer bytes per row are fewer pages per commit.
pub(super) fn policy_to_json(policy: &AsyncPolicy) -> Result<String, serde_json::Error> {
    ENCODED.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some((_, json)) = cache.iter().rev().find(|(p, _)| p == policy) {
            return Ok(json.clone());
        }
        let serde_json::Value::Object(mut fields) = serde_json::to_value(policy)? else {
            unreachable!("a policy serializes to an object")
        };
        if let serde_json::Value::Object(defaults) = serde_json::to_value(AsyncPolicy::default())? {
            fields.retain(|k, v| defaults.get(k) != Some(v));
        }
        let json = serde_json::to_string(&fields)?;
        if cache.len() >= POLICY_CACHE {
            cache.remove(0);
        }
        cache.push((policy.clone(), json.clone()));
        Ok(json)
    })
}

/// A text column parsed with `FromStr`.
pub(super) struct Parsed<T>(pub T);

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

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(outcome: &str) -> Attempt {
        Attempt {
            started_at: from_ns(1_000_000_000),
            finished_at: Some(from_ns(2_000_000_000)),
            outcome: outcome.into(),
            error: None,
        }
    }

    #[test]
    fn attempts_are_appended_as_valid_json() {
        let one = append_attempt("[]", &attempt("500")).unwrap();
        let two = append_attempt(&one, &attempt("200")).unwrap();
        let back: Vec<Attempt> = serde_json::from_str(&two).unwrap();
        assert_eq!(back, vec![attempt("500"), attempt("200")]);
        // Whitespace SQLite or a person may have left is fine too.
        let spaced = append_attempt(" [ ] ", &attempt("200")).unwrap();
        assert_eq!(
            serde_json::from_str::<Vec<Attempt>>(&spaced).unwrap(),
            vec![attempt("200")]
        );
        assert!(append_attempt("{}", &attempt("200")).is_err());
    }

    #[test]
    fn policies_round_trip_through_the_caches() {
        let named = AsyncPolicy {
            dead_letter_queue: Some("payments".into()),
            ..Default::default()
        };
        for p in [
            AsyncPolicy::default(),
            named.clone(),
            AsyncPolicy::default(),
        ] {
            let json = policy_to_json(&p).unwrap();
            assert_eq!(policy_from_json(&json).unwrap(), p);
            // The full encoding (as earlier versions stored it) reads the same.
            let full = serde_json::to_string(&p).unwrap();
            assert_eq!(policy_from_json(&full).unwrap(), p);
        }
        // Only what differs from the default is stored.
        assert_eq!(policy_to_json(&AsyncPolicy::default()).unwrap(), "{}");
        assert_eq!(
            policy_to_json(&named).unwrap(),
            r#"{"dead_letter_queue":"payments"}"#
        );
        let custom = AsyncPolicy {
            max_retries: 0,
            semantics: crate::policy::Semantics::AtMostOnce,
            ..Default::default()
        };
        let json = policy_to_json(&custom).unwrap();
        assert_eq!(json, r#"{"max_retries":0,"semantics":"at_most_once"}"#);
        assert_eq!(policy_from_json(&json).unwrap(), custom);
        // More policies than the caches hold still come out right.
        for retries in 0..(2 * POLICY_CACHE as u32) {
            let p = AsyncPolicy {
                max_retries: retries % 11,
                backoff_min: std::time::Duration::from_millis(u64::from(retries)),
                ..Default::default()
            };
            let json = policy_to_json(&p).unwrap();
            assert_eq!(policy_from_json(&json).unwrap(), p);
        }
        assert_eq!(
            policy_from_json(&policy_to_json(&named).unwrap()).unwrap(),
            named
        );
    }
}
