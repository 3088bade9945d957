//! The write operations, each run by the writer thread inside its group's
//! transaction. An operation that fails with an error for which
//! [`QueueError::wrote_nothing`] holds must not have written anything (see
//! the `writer` module); every check comes before the first write.
//!
//! Every status change is counted in `ctx.counts`, and an invocation with a
//! partition key that finishes lets the next one of its partition run
//! ([`advance_partition`]).

use super::rows::{
    self, HeldRow, InvocationRow, RawRequest, RawRow, insert_request, load_by_id, load_held,
};
use super::writer::Ctx;
use crate::clock::{dur_ns, from_ns};
use crate::error::QueueError;
use crate::model::{Attempt, Completion, Enqueued, LeaseToken, Leased, NewInvocation, Status};
use crate::policy::{AsyncPolicy, Semantics};
use rand::Rng;
use rusqlite::{Connection, OptionalExtension, params};
use std::time::Duration;
use wisp_core::FunctionName;

/// Error of an invocation that waited past its `max_event_age`.
pub(crate) const EXPIRED_ERROR: &str = "expired: older than max_event_age";
/// Outcome of an attempt whose lease ran out.
pub(crate) const LEASE_EXPIRED: &str = "lease expired";
/// Error of an attempt whose lease ran out.
const LEASE_EXPIRED_ERROR: &str =
    "the executor stopped (or lost its lease) before the attempt finished";
/// Error of an at-most-once invocation whose executor stopped while it ran.
pub(crate) const AT_MOST_ONCE_LOST: &str =
    "the executor stopped while it ran; at-most-once invocations are not retried";

/// Most expired leases settled, and most expired invocations dead-lettered,
/// by one `lease` call; the rest wait for the next call.
const MAX_EXPIRIES_PER_LEASE: usize = 1000;
/// Rows deleted per pruning pass, per kind.
const PRUNE_CHUNK: i64 = 2000;

/// Queued, retrying and running invocations of `function`, as committed
/// (for readers; the writer asks `ctx.counts`).
pub(super) fn depth(conn: &Connection, function: &FunctionName) -> Result<u64, QueueError> {
    Ok(super::counts::read_depth(conn, function)?.max(0) as u64)
}

/// Whether `status` is one an invocation still runs from.
fn unfinished(status: Status) -> bool {
    !status.is_final()
}

/// Lets the first unfinished invocation of a partition run, once the one
/// before it finished. (Conditions on three statuses are spelled with `OR`
/// to match the partial indexes, see `schema::SCHEMA_V3`.)
fn advance_partition(
    conn: &Connection,
    function: &FunctionName,
    key: &str,
) -> Result<(), QueueError> {
    conn.prepare_cached(
        "UPDATE invocations SET blocked = 0 WHERE blocked = 1 AND seq = (
            SELECT seq FROM invocations
            WHERE function = ?1 AND partition_key = ?2
              AND (status = 'queued' OR status = 'retrying' OR status = 'running')
            ORDER BY seq LIMIT 1)",
    )?
    .execute(params![function.as_str(), key])?;
    Ok(())
}

/// After an invocation of `function` went from `was` to `now`: counts the
/// move and, if it finished, advances its partition.
fn moved(
    conn: &Connection,
    ctx: &mut Ctx,
    function: &FunctionName,
    partition_key: Option<&str>,
    was: Status,
    now: Status,
) -> Result<(), QueueError> {
    ctx.counts.moved(function, was, now);
    if let Some(key) = partition_key
        && unfinished(was)
        && now.is_final()
    {
        advance_partition(conn, function, key)?;
    }
    Ok(())
}

/// Writes back every mutable column of `row`, which had status `was`.
fn store(
    conn: &Connection,
    ctx: &mut Ctx,
    row: &InvocationRow,
    was: Status,
) -> Result<(), QueueError> {
    row.save(conn)?;
    moved(
        conn,
        ctx,
        &row.function,
        row.partition_key.as_deref(),
        was,
        row.status,
    )
}

/// The fields of a new `invocations` row.
struct NewRow<'a> {
    function: &'a FunctionName,
    qualifier: &'a str,
    partition_key: Option<&'a str>,
    idempotency_key: Option<&'a str>,
    policy: &'a AsyncPolicy,
    replayed_from: Option<&'a str>,
}

/// Inserts a queued invocation (without its request); returns its seq and id.
fn insert(
    conn: &Connection,
    ctx: &mut Ctx,
    now: i64,
    row: &NewRow<'_>,
) -> Result<(i64, String), QueueError> {
    // Behind an unfinished invocation of its partition, it waits its turn.
    let blocked = match row.partition_key {
        Some(key) => conn
            .prepare_cached(
                "SELECT 1 FROM invocations
                 WHERE function = ?1 AND partition_key = ?2
                   AND (status = 'queued' OR status = 'retrying' OR status = 'running')
                 LIMIT 1",
            )?
            .query_row(params![row.function.as_str(), key], |_| Ok(()))
            .optional()?
            .is_some(),
        None => false,
    };
    let now_ms = u64::try_from(now / 1_000_000).unwrap_or(0);
    let id = ctx.ids.next(now_ms, &mut ctx.rng);
    let expires = now.saturating_add(dur_ns(row.policy.max_event_age));
    conn.prepare_cached(
        "INSERT INTO invocations (id, function, qualifier, status, blocked, partition_key,
            idempotency_key, policy, enqueued_ns, updated_ns, ready_ns, expires_ns, replayed_from)
         VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?7, ?8, ?8, ?8, ?9, ?10)",
    )?
    .execute(params![
        id,
        row.function.as_str(),
        row.qualifier,
        blocked,
        row.partition_key,
        row.idempotency_key,
        rows::policy_to_json(row.policy)?,
        now,
        expires,
        row.replayed_from,
    ])?;
    ctx.counts.add(row.function, Status::Queued, 1);
    Ok((conn.last_insert_rowid(), id))
}

/// Enqueues a checked batch: duplicates and full queues are answered per
/// invocation, everything else is inserted.
pub(super) fn enqueue(
    conn: &Connection,
    ctx: &mut Ctx,
    batch: &[NewInvocation],
) -> Result<Vec<Enqueued>, QueueError> {
    let now = rows::now_ns(&ctx.clock);
    let limit = ctx.limits.max_depth_per_function;
    let mut out = Vec::with_capacity(batch.len());
    for inv in batch {
        if let Some(key) = &inv.idempotency_key {
            let seen: Option<(String, i64)> = conn
                .prepare_cached(
                    "SELECT id, expires_ns FROM idempotency_keys WHERE function = ?1 AND key = ?2",
                )?
                .query_row(params![inv.function.as_str(), key], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            if let Some((id, expires)) = seen
                && expires > now
            {
                out.push(Enqueued::Duplicate { id });
                continue;
            }
        }
        // Counts what this batch queued so far, too.
        if ctx.counts.depth(conn, &inv.function)? >= limit {
            out.push(Enqueued::Full {
                function: inv.function.clone(),
            });
            continue;
        }
        let (seq, id) = insert(
            conn,
            ctx,
            now,
            &NewRow {
                function: &inv.function,
                qualifier: &inv.qualifier,
                partition_key: inv.partition_key.as_deref(),
                idempotency_key: inv.idempotency_key.as_deref(),
                policy: &inv.policy,
                replayed_from: None,
            },
        )?;
        insert_request(conn, seq, &inv.request)?;
        if let Some(key) = &inv.idempotency_key {
            let expires = now.saturating_add(dur_ns(inv.policy.idempotency_window));
            conn.prepare_cached(
                "INSERT OR REPLACE INTO idempotency_keys (function, key, id, expires_ns)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![inv.function.as_str(), key, id, expires])?;
        }
        out.push(Enqueued::Accepted { id });
    }
    Ok(out)
}

/// A lease as the writer grants it; the caller decodes it with
/// [`Grant::into_leased`], so that decoding JSON stays off the writer thread.
pub(super) struct Grant {
    row: RawRow,
    request: RawRequest,
}

impl Grant {
    /// The lease, decoded.
    pub fn into_leased(self) -> Result<Leased, QueueError> {
        let request = self.request.decode()?;
        let token = self.row.lease_token.clone().unwrap_or_default();
        let row = self.row.decode()?;
        Ok(Leased {
            attempt: row.attempts.len() as u32 + 1,
            lease: LeaseToken::new(row.id.clone(), token),
            invocation: row.to_invocation(),
            policy: row.policy,
            request,
        })
    }
}

/// Settles expired leases, then leases up to `max` runnable invocations,
/// dead-lettering those past their event age on the way.
pub(super) fn lease(
    conn: &Connection,
    ctx: &mut Ctx,
    max: usize,
    visibility: Duration,
) -> Result<Vec<Grant>, QueueError> {
    let now = rows::now_ns(&ctx.clock);
    expire_leases(conn, ctx, now)?;
    let lease_expires = now.saturating_add(dur_ns(visibility));

    let sql = format!(
        "SELECT {} FROM invocations AS i LEFT JOIN requests AS r ON r.seq = i.seq
         WHERE i.status IN ('queued', 'retrying') AND i.blocked = 0 AND i.ready_ns <= ?1
         ORDER BY i.ready_ns, i.seq LIMIT ?2",
        *rows::COLUMNS_WITH_REQUEST
    );
    let mut leased = Vec::with_capacity(max);
    let mut expired = 0;
    while leased.len() < max && expired < MAX_EXPIRIES_PER_LEASE {
        let batch: Vec<(RawRow, Option<RawRequest>)> = conn
            .prepare_cached(&sql)?
            .query_map(
                params![now, (max - leased.len()) as i64],
                RawRow::read_with_request,
            )?
            .collect::<rusqlite::Result<_>>()?;
        if batch.is_empty() {
            break;
        }
        for (mut row, request) in batch {
            let was = row.status;
            row.updated_ns = now;
            row.ready_ns = None;
            if row.expires_ns <= now {
                // Finishing it advances its partition, so the next pass may
                // find the invocation behind it.
                let mut row = row.decode()?;
                row.status = Status::Dead;
                row.dead_letter = true;
                row.error = Some(EXPIRED_ERROR.into());
                store(conn, ctx, &row, was)?;
                expired += 1;
                continue;
            }
            let request = request.ok_or_else(|| rows::no_request(row.seq))?;
            let token = new_token(row.seq, &mut ctx.rng);
            // Only what changes: the attempt under way is implied by the
            // lease (see `rows::InvocationRow`).
            conn.prepare_cached(
                "UPDATE invocations SET status = 'running', updated_ns = ?2, ready_ns = NULL,
                    lease_token = ?3, lease_expires_ns = ?4, started_ns = NULL
                 WHERE seq = ?1",
            )?
            .execute(params![row.seq, now, token, lease_expires])?;
            ctx.counts.moved(&row.function, was, Status::Running);
            row.status = Status::Running;
            row.lease_token = Some(token);
            row.lease_expires_ns = Some(lease_expires);
            row.started_ns = None;
            leased.push(Grant { row, request });
        }
    }
    Ok(leased)
}

/// Settles running invocations whose lease ran out: redelivers them (an
/// attempt with outcome `lease expired`), dead-letters them when out of
/// attempts, fails at-most-once ones that had started, and requeues
/// at-most-once ones that had not.
fn expire_leases(conn: &Connection, ctx: &mut Ctx, now: i64) -> Result<(), QueueError> {
    let expired = rows::load_many(
        conn,
        &format!(
            "SELECT {} FROM invocations
             WHERE status = 'running' AND lease_expires_ns < ?1
             ORDER BY lease_expires_ns LIMIT ?2",
            rows::COLUMNS
        ),
        params![now, MAX_EXPIRIES_PER_LEASE as i64],
    )?;
    for mut row in expired {
        let was = row.status;
        let attempt_started = row.started_ns.unwrap_or(row.updated_ns);
        // Runnable again since the lease ran out.
        let since = row.lease_expires_ns.take().unwrap_or(now);
        row.updated_ns = now;
        row.lease_token = None;
        let started = row.started_ns.take().is_some();
        if row.policy.semantics == Semantics::AtMostOnce && !started {
            // It never ran, so running it now is still its only run; the
            // attempt does not count.
            row.status = if row.attempts.is_empty() {
                Status::Queued
            } else {
                Status::Retrying
            };
            row.ready_ns = Some(since);
            store(conn, ctx, &row, was)?;
            continue;
        }
        row.attempts.push(Attempt {
            started_at: from_ns(attempt_started),
            finished_at: Some(from_ns(now)),
            outcome: LEASE_EXPIRED.into(),
            error: Some(LEASE_EXPIRED_ERROR.into()),
        });
        let attempt = row.attempts.len() as u32;
        if row.policy.semantics == Semantics::AtMostOnce {
            row.status = Status::Failed;
            row.error = Some(AT_MOST_ONCE_LOST.into());
        } else if row.policy.may_retry(attempt) {
            row.status = Status::Retrying;
            row.ready_ns = Some(since);
            row.error = Some(LEASE_EXPIRED_ERROR.into());
        } else {
            row.status = Status::Dead;
            row.dead_letter = true;
            row.error = Some(LEASE_EXPIRED_ERROR.into());
        }
        store(conn, ctx, &row, was)?;
    }
    Ok(())
}

/// A new lease token for row `seq`: random, and naming the row, so that
/// the lease holder's calls find it without a lookup by id.
fn new_token(seq: i64, rng: &mut impl Rng) -> String {
    format!("{:032x}.{seq:x}", rng.random::<u128>())
}

/// The row a lease token names (tokens of version 2 do not: `None`).
fn token_seq(token: &str) -> Option<i64> {
    i64::from_str_radix(token.rsplit_once('.')?.1, 16).ok()
}

/// The running invocation `lease` holds, or `LeaseLost`.
fn held(conn: &Connection, lease: &LeaseToken) -> Result<HeldRow, QueueError> {
    let lost = || QueueError::LeaseLost {
        id: lease.id.clone(),
    };
    if !crate::id::is_valid_id(&lease.id) {
        return Err(lost());
    }
    match load_held(conn, token_seq(&lease.token), &lease.id)? {
        Some(row)
            if row.status == Status::Running
                && row.lease_token.as_deref() == Some(lease.token.as_str()) =>
        {
            Ok(row)
        }
        _ => Err(lost()),
    }
}

/// Records that the leased attempt is about to execute.
pub(super) fn mark_started(
    conn: &Connection,
    ctx: &mut Ctx,
    lease: &LeaseToken,
) -> Result<(), QueueError> {
    let now = rows::now_ns(&ctx.clock);
    let row = held(conn, lease)?;
    // Past its expiry the lease may be settled at any moment: starting now
    // could run an at-most-once invocation twice.
    if row.lease_expires_ns.is_none_or(|t| t < now) {
        return Err(QueueError::LeaseLost {
            id: lease.id.clone(),
        });
    }
    if row.started_ns.is_some() {
        return Ok(());
    }
    conn.prepare_cached("UPDATE invocations SET started_ns = ?2 WHERE seq = ?1")?
        .execute(params![row.seq, now])?;
    Ok(())
}

/// Records how the leased attempt ended; returns the new status. The
/// completion must be capped already (see `SqliteQueue::complete`).
pub(super) fn complete(
    conn: &Connection,
    ctx: &mut Ctx,
    lease: &LeaseToken,
    completion: &Completion,
) -> Result<Status, QueueError> {
    let now = rows::now_ns(&ctx.clock);
    complete_at(conn, ctx, now, lease, completion)
}

/// Records how each of several leased attempts ended, in order. A lost
/// lease fails its own entry only; a storage error fails the call.
pub(super) fn complete_many(
    conn: &Connection,
    ctx: &mut Ctx,
    batch: &[(LeaseToken, Completion)],
) -> Result<Vec<Result<Status, QueueError>>, QueueError> {
    let now = rows::now_ns(&ctx.clock);
    let mut out = Vec::with_capacity(batch.len());
    for (lease, completion) in batch {
        match complete_at(conn, ctx, now, lease, completion) {
            Ok(status) => out.push(Ok(status)),
            Err(e) if e.wrote_nothing() => out.push(Err(e)),
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

fn complete_at(
    conn: &Connection,
    ctx: &mut Ctx,
    now: i64,
    lease: &LeaseToken,
    completion: &Completion,
) -> Result<Status, QueueError> {
    let row = held(conn, lease)?;
    let started_at = from_ns(row.attempt_started_ns());
    let status = match completion {
        Completion::Succeeded { response } => {
            let attempt = Attempt {
                started_at,
                finished_at: Some(from_ns(now)),
                outcome: response.status.to_string(),
                error: None,
            };
            conn.prepare_cached(
                "UPDATE invocations SET status = 'succeeded', attempts = ?2, updated_ns = ?3,
                    ready_ns = NULL, lease_token = NULL, lease_expires_ns = NULL,
                    started_ns = NULL, error = NULL
                 WHERE seq = ?1",
            )?
            .execute(params![
                row.seq,
                rows::append_attempt(&row.attempts, &attempt)?,
                now
            ])?;
            rows::insert_result(conn, row.seq, response)?;
            Status::Succeeded
        }
        Completion::Failed {
            error,
            outcome,
            retryable,
        } => {
            let policy = row.policy()?;
            let mut attempts: Vec<Attempt> = serde_json::from_str(&row.attempts)?;
            attempts.push(Attempt {
                started_at,
                finished_at: Some(from_ns(now)),
                outcome: outcome.clone(),
                error: Some(error.clone()),
            });
            let attempt = attempts.len() as u32;
            let (status, ready) = if *retryable && policy.may_retry(attempt) {
                let delay = policy.backoff(attempt, &mut ctx.rng);
                (Status::Retrying, Some(now.saturating_add(dur_ns(delay))))
            } else {
                (Status::Dead, None)
            };
            let dead = status == Status::Dead;
            conn.prepare_cached(
                "UPDATE invocations SET status = ?2, dead_letter = ?3, attempts = ?4,
                    updated_ns = ?5, ready_ns = ?6, lease_token = NULL, lease_expires_ns = NULL,
                    started_ns = NULL, error = ?7, dlq = ?8
                 WHERE seq = ?1",
            )?
            .execute(params![
                row.seq,
                status.as_str(),
                dead,
                serde_json::to_string(&attempts)?,
                now,
                ready,
                error,
                dead.then(|| policy.dead_letter_queue_name()),
            ])?;
            status
        }
    };
    moved(
        conn,
        ctx,
        &row.function,
        row.partition_key.as_deref(),
        Status::Running,
        status,
    )?;
    Ok(status)
}

/// Hands a leased invocation back without counting the attempt; it runs
/// again after `delay`.
pub(super) fn release(
    conn: &Connection,
    ctx: &mut Ctx,
    lease: &LeaseToken,
    delay: Duration,
) -> Result<(), QueueError> {
    let now = rows::now_ns(&ctx.clock);
    let row = held(conn, lease)?;
    if row.started_ns.is_some() && row.policy()?.semantics == Semantics::AtMostOnce {
        return Err(QueueError::AlreadyStarted {
            id: lease.id.clone(),
        });
    }
    let attempts: Vec<Attempt> = serde_json::from_str(&row.attempts)?;
    let status = if attempts.is_empty() {
        Status::Queued
    } else {
        Status::Retrying
    };
    conn.prepare_cached(
        "UPDATE invocations SET status = ?2, updated_ns = ?3, ready_ns = ?4, lease_token = NULL,
            lease_expires_ns = NULL, started_ns = NULL
         WHERE seq = ?1",
    )?
    .execute(params![
        row.seq,
        status.as_str(),
        now,
        now.saturating_add(dur_ns(delay))
    ])?;
    ctx.counts.moved(&row.function, Status::Running, status);
    Ok(())
}

/// Deletes a dead letter and everything stored with it.
pub(super) fn delete_dead(conn: &Connection, ctx: &mut Ctx, id: &str) -> Result<bool, QueueError> {
    let function: Option<rows::Parsed<FunctionName>> = conn
        .prepare_cached(
            "DELETE FROM invocations WHERE id = ?1 AND dead_letter = 1 RETURNING function",
        )?
        .query_row([id], |r| r.get(0))
        .optional()?;
    if let Some(f) = &function {
        ctx.counts.add(&f.0, Status::Dead, -1);
    }
    Ok(function.is_some())
}

/// Re-enqueues dead letter `id` as a new invocation (to `qualifier`, or
/// its own) and takes it out of the dead-letter queue.
pub(super) fn replay(
    conn: &Connection,
    ctx: &mut Ctx,
    id: &str,
    qualifier: Option<&str>,
) -> Result<String, QueueError> {
    let row = match load_by_id(conn, id)? {
        Some(row) if row.dead_letter => row,
        _ => {
            return Err(QueueError::DeadLetterNotFound { id: id.to_string() });
        }
    };
    replay_row(conn, ctx, row, qualifier)
}

fn replay_row(
    conn: &Connection,
    ctx: &mut Ctx,
    mut row: InvocationRow,
    qualifier: Option<&str>,
) -> Result<String, QueueError> {
    let limit = ctx.limits.max_depth_per_function;
    if ctx.counts.depth(conn, &row.function)? >= limit {
        return Err(QueueError::Full {
            function: row.function,
            limit,
        });
    }
    let now = rows::now_ns(&ctx.clock);
    let (seq, new_id) = insert(
        conn,
        ctx,
        now,
        &NewRow {
            function: &row.function,
            qualifier: qualifier.unwrap_or(&row.qualifier),
            partition_key: row.partition_key.as_deref(),
            // Kept for reference; a replay is deliberate, so never a duplicate.
            idempotency_key: row.idempotency_key.as_deref(),
            policy: &row.policy,
            replayed_from: Some(&row.id),
        },
    )?;
    let copied = conn
        .prepare_cached(
            "INSERT INTO requests (seq, method, path_and_query, headers, body)
             SELECT ?1, method, path_and_query, headers, body FROM requests WHERE seq = ?2",
        )?
        .execute(params![seq, row.seq])?;
    if copied != 1 {
        return Err(QueueError::Database(format!(
            "dead letter `{}` has no stored request",
            row.id
        )));
    }
    row.dead_letter = false;
    row.replayed_as = Some(new_id.clone());
    row.updated_ns = now;
    store(conn, ctx, &row, row.status)?;
    Ok(new_id)
}

/// How a chunk of `replay_all` went.
pub(super) struct ReplayChunk {
    /// Dead letters replayed.
    pub replayed: usize,
    /// Whether dead letters up to the bound remain.
    pub more: bool,
    /// Whether the function's queue filled up.
    pub full: bool,
}

/// Replays up to `chunk` of `function`'s dead letters with ids up to
/// `up_to`, oldest first, stopping at the depth limit.
pub(super) fn replay_chunk(
    conn: &Connection,
    ctx: &mut Ctx,
    function: &FunctionName,
    qualifier: Option<&str>,
    up_to: &str,
    chunk: usize,
) -> Result<ReplayChunk, QueueError> {
    let batch = rows::load_many(
        conn,
        &format!(
            "SELECT {} FROM invocations
             WHERE dead_letter = 1 AND function = ?1 AND id <= ?2
             ORDER BY id LIMIT ?3",
            rows::COLUMNS
        ),
        params![function.as_str(), up_to, chunk as i64],
    )?;
    let more = batch.len() == chunk;
    let mut replayed = 0;
    for row in batch {
        match replay_row(conn, ctx, row, qualifier) {
            Ok(_) => replayed += 1,
            Err(QueueError::Full { .. }) => {
                return Ok(ReplayChunk {
                    replayed,
                    more: true,
                    full: true,
                });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(ReplayChunk {
        replayed,
        more,
        full: false,
    })
}

/// One pruning pass: finished invocations past the retention age, the
/// oldest finished ones past the row cap, and expired idempotency keys,
/// at most [`PRUNE_CHUNK`] of each. True if a kind had more to prune.
pub(super) fn prune(conn: &Connection, ctx: &mut Ctx) -> Result<bool, QueueError> {
    let now = rows::now_ns(&ctx.clock);
    let cutoff = now.saturating_sub(dur_ns(ctx.retention.max_age));
    let aged = delete_counted(
        conn,
        ctx,
        "DELETE FROM invocations WHERE seq IN (
            SELECT seq FROM invocations
            WHERE (status = 'succeeded' OR status = 'failed' OR status = 'dead') AND dead_letter = 0
              AND updated_ns < ?1
            ORDER BY updated_ns LIMIT ?2)
         RETURNING function, status",
        params![cutoff, PRUNE_CHUNK],
    )?;

    let total = ctx.counts.total(conn)?;
    let cap = i64::try_from(ctx.retention.max_rows).unwrap_or(i64::MAX);
    let over = total.saturating_sub(cap).clamp(0, PRUNE_CHUNK);
    let capped = if over > 0 {
        delete_counted(
            conn,
            ctx,
            "DELETE FROM invocations WHERE seq IN (
                SELECT seq FROM invocations
                WHERE (status = 'succeeded' OR status = 'failed' OR status = 'dead') AND dead_letter = 0
                ORDER BY updated_ns LIMIT ?1)
             RETURNING function, status",
            params![over],
        )?
    } else {
        0
    };

    let keys = conn
        .prepare_cached(
            "DELETE FROM idempotency_keys WHERE (function, key) IN (
                SELECT function, key FROM idempotency_keys WHERE expires_ns <= ?1 LIMIT ?2)",
        )?
        .execute(params![now, PRUNE_CHUNK])?;
    if aged + capped + keys > 0 {
        tracing::debug!(aged, capped, keys, "pruned the invocation queue");
    }
    let full = PRUNE_CHUNK as usize;
    Ok(aged == full || keys == full || (capped == full && total - cap > PRUNE_CHUNK))
}

/// Runs a `DELETE ... RETURNING function, status` and counts what it
/// deleted; answers how many rows that was.
fn delete_counted(
    conn: &Connection,
    ctx: &mut Ctx,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<usize, QueueError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut deleted = stmt.query(params)?;
    let mut n = 0;
    while let Some(row) = deleted.next()? {
        let function: rows::Parsed<FunctionName> = row.get(0)?;
        let status: rows::Parsed<Status> = row.get(1)?;
        ctx.counts.add(&function.0, status.0, -1);
        n += 1;
    }
    Ok(n)
}

/// `s` cut to at most `max` bytes on a character boundary, marked with `…`.
pub(crate) fn truncate(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push('…');
    s
}
