//! The write operations, each run by the writer thread inside its group's
//! transaction (in a savepoint of its own).

use super::rows::{self, InvocationRow, insert_request, load_by_id, load_request};
use super::writer::Ctx;
use crate::clock::{dur_ns, from_ns};
use crate::error::QueueError;
use crate::limits::{MAX_ERROR_BYTES, MAX_OUTCOME_BYTES};
use crate::model::{Attempt, Completion, Enqueued, LeaseToken, Leased, NewInvocation, Status};
use crate::policy::{AsyncPolicy, Semantics};
use rand::Rng;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashMap;
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

/// Queued, retrying and running invocations of `function`.
pub(super) fn depth(conn: &Connection, function: &FunctionName) -> Result<u64, QueueError> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT COALESCE(SUM(n), 0) FROM status_counts
             WHERE function = ?1 AND status IN ('queued', 'retrying', 'running')",
        )?
        .query_row([function.as_str()], |r| r.get(0))?;
    Ok(n.max(0) as u64)
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
                   AND status IN ('queued', 'retrying', 'running')
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
        serde_json::to_string(row.policy)?,
        now,
        expires,
        row.replayed_from,
    ])?;
    Ok((conn.last_insert_rowid(), id))
}

/// Enqueues a checked batch: duplicates and full queues are answered per
/// invocation, everything else is inserted.
pub(super) fn enqueue(
    conn: &Connection,
    ctx: &mut Ctx,
    batch: Vec<NewInvocation>,
) -> Result<Vec<Enqueued>, QueueError> {
    let now = rows::now_ns(&ctx.clock);
    let limit = ctx.limits.max_depth_per_function;
    let mut depths: HashMap<FunctionName, u64> = HashMap::new();
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
        let d = match depths.get_mut(&inv.function) {
            Some(d) => d,
            None => {
                let d = depth(conn, &inv.function)?;
                depths.entry(inv.function.clone()).or_insert(d)
            }
        };
        if *d >= limit {
            out.push(Enqueued::Full {
                function: inv.function,
            });
            continue;
        }
        *d += 1;
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

/// Settles expired leases, then leases up to `max` runnable invocations,
/// dead-lettering those past their event age on the way.
pub(super) fn lease(
    conn: &Connection,
    ctx: &mut Ctx,
    max: usize,
    visibility: Duration,
) -> Result<Vec<Leased>, QueueError> {
    let now = rows::now_ns(&ctx.clock);
    expire_leases(conn, now)?;

    let mut leased = Vec::with_capacity(max);
    let mut expired = 0;
    while leased.len() < max && expired < MAX_EXPIRIES_PER_LEASE {
        let batch = rows::load_many(
            conn,
            &format!(
                "SELECT {} FROM invocations
                 WHERE status IN ('queued', 'retrying') AND blocked = 0 AND ready_ns <= ?1
                 ORDER BY ready_ns, seq LIMIT ?2",
                rows::COLUMNS
            ),
            params![now, (max - leased.len()) as i64],
        )?;
        if batch.is_empty() {
            break;
        }
        for mut row in batch {
            row.updated_ns = now;
            row.ready_ns = None;
            if row.expires_ns <= now {
                // Finishing it advances its partition, so the next pass may
                // find the invocation behind it.
                row.status = Status::Dead;
                row.dead_letter = true;
                row.error = Some(EXPIRED_ERROR.into());
                row.save(conn)?;
                expired += 1;
                continue;
            }
            let token = format!("{:032x}", ctx.rng.random::<u128>());
            row.status = Status::Running;
            row.lease_token = Some(token.clone());
            row.lease_expires_ns = Some(now.saturating_add(dur_ns(visibility)));
            row.started_ns = None;
            row.attempts.push(Attempt {
                started_at: from_ns(now),
                finished_at: None,
                outcome: "running".into(),
                error: None,
            });
            row.save(conn)?;
            let request = load_request(conn, row.seq)?;
            leased.push(Leased {
                attempt: row.attempts.len() as u32,
                lease: LeaseToken::new(row.id.clone(), token),
                policy: row.policy.clone(),
                invocation: row.to_invocation(),
                request,
            });
        }
    }
    Ok(leased)
}

/// Settles running invocations whose lease ran out: redelivers them (an
/// attempt with outcome `lease expired`), dead-letters them when out of
/// attempts, fails at-most-once ones that had started, and requeues
/// at-most-once ones that had not.
fn expire_leases(conn: &Connection, now: i64) -> Result<(), QueueError> {
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
        // Runnable again since the lease ran out.
        let since = row.lease_expires_ns.take().unwrap_or(now);
        row.updated_ns = now;
        row.lease_token = None;
        let started = row.started_ns.take().is_some();
        if row.policy.semantics == Semantics::AtMostOnce && !started {
            // It never ran, so running it now is still its only run.
            row.attempts.pop();
            row.status = if row.attempts.is_empty() {
                Status::Queued
            } else {
                Status::Retrying
            };
            row.ready_ns = Some(since);
            row.save(conn)?;
            continue;
        }
        let attempt = row.attempts.len() as u32;
        if let Some(last) = row.attempts.last_mut() {
            last.finished_at = Some(from_ns(now));
            last.outcome = LEASE_EXPIRED.into();
            last.error = Some(LEASE_EXPIRED_ERROR.into());
        }
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
        row.save(conn)?;
    }
    Ok(())
}

/// The running invocation `lease` holds, or `LeaseLost`.
fn held(conn: &Connection, lease: &LeaseToken) -> Result<InvocationRow, QueueError> {
    if !crate::id::is_valid_id(&lease.id) {
        return Err(QueueError::LeaseLost {
            id: lease.id.clone(),
        });
    }
    match load_by_id(conn, &lease.id)? {
        Some(row)
            if row.status == Status::Running
                && row.lease_token.as_deref() == Some(lease.token.as_str()) =>
        {
            Ok(row)
        }
        _ => Err(QueueError::LeaseLost {
            id: lease.id.clone(),
        }),
    }
}

/// Records that the leased attempt is about to execute.
pub(super) fn mark_started(
    conn: &Connection,
    ctx: &mut Ctx,
    lease: &LeaseToken,
) -> Result<(), QueueError> {
    let now = rows::now_ns(&ctx.clock);
    let mut row = held(conn, lease)?;
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
    row.started_ns = Some(now);
    if let Some(last) = row.attempts.last_mut() {
        last.started_at = from_ns(now);
    }
    row.save(conn)
}

/// Records how the leased attempt ended; returns the new status.
pub(super) fn complete(
    conn: &Connection,
    ctx: &mut Ctx,
    lease: &LeaseToken,
    completion: Completion,
) -> Result<Status, QueueError> {
    let now = rows::now_ns(&ctx.clock);
    let mut row = held(conn, lease)?;
    let attempt = row.attempts.len() as u32;
    row.updated_ns = now;
    row.lease_token = None;
    row.lease_expires_ns = None;
    row.started_ns = None;
    match completion {
        Completion::Succeeded { response } => {
            let response = response.into_capped();
            if let Some(last) = row.attempts.last_mut() {
                last.finished_at = Some(from_ns(now));
                last.outcome = response.status.to_string();
                last.error = None;
            }
            row.status = Status::Succeeded;
            row.error = None;
            rows::insert_result(conn, row.seq, &response)?;
        }
        Completion::Failed {
            error,
            outcome,
            retryable,
        } => {
            let error = truncate(error, MAX_ERROR_BYTES);
            if let Some(last) = row.attempts.last_mut() {
                last.finished_at = Some(from_ns(now));
                last.outcome = truncate(outcome, MAX_OUTCOME_BYTES);
                last.error = Some(error.clone());
            }
            row.error = Some(error);
            if retryable && row.policy.may_retry(attempt) {
                let delay = row.policy.backoff(attempt, &mut ctx.rng);
                row.status = Status::Retrying;
                row.ready_ns = Some(now.saturating_add(dur_ns(delay)));
            } else {
                row.status = Status::Dead;
                row.dead_letter = true;
            }
        }
    }
    row.save(conn)?;
    Ok(row.status)
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
    let mut row = held(conn, lease)?;
    if row.policy.semantics == Semantics::AtMostOnce && row.started_ns.is_some() {
        return Err(QueueError::AlreadyStarted {
            id: lease.id.clone(),
        });
    }
    row.attempts.pop();
    row.status = if row.attempts.is_empty() {
        Status::Queued
    } else {
        Status::Retrying
    };
    row.updated_ns = now;
    row.ready_ns = Some(now.saturating_add(dur_ns(delay)));
    row.lease_token = None;
    row.lease_expires_ns = None;
    row.started_ns = None;
    row.save(conn)
}

/// Deletes a dead letter and everything stored with it.
pub(super) fn delete_dead(conn: &Connection, id: &str) -> Result<bool, QueueError> {
    let n = conn
        .prepare_cached("DELETE FROM invocations WHERE id = ?1 AND dead_letter = 1")?
        .execute([id])?;
    Ok(n > 0)
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
            return Err(QueueError::NotFound {
                what: "dead letter",
                id: id.to_string(),
            });
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
    if depth(conn, &row.function)? >= limit {
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
    row.save(conn)?;
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
    let aged = conn
        .prepare_cached(
            "DELETE FROM invocations WHERE seq IN (
                SELECT seq FROM invocations
                WHERE status IN ('succeeded', 'failed', 'dead') AND dead_letter = 0
                  AND updated_ns < ?1
                ORDER BY updated_ns LIMIT ?2)",
        )?
        .execute(params![cutoff, PRUNE_CHUNK])?;

    let total: i64 = conn
        .prepare_cached("SELECT COALESCE(SUM(n), 0) FROM status_counts")?
        .query_row([], |r| r.get(0))?;
    let cap = i64::try_from(ctx.retention.max_rows).unwrap_or(i64::MAX);
    let over = total.saturating_sub(cap).clamp(0, PRUNE_CHUNK);
    let capped = if over > 0 {
        conn.prepare_cached(
            "DELETE FROM invocations WHERE seq IN (
                SELECT seq FROM invocations
                WHERE status IN ('succeeded', 'failed', 'dead') AND dead_letter = 0
                ORDER BY updated_ns LIMIT ?1)",
        )?
        .execute([over])?
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
