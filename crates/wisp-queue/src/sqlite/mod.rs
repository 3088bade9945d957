//! The embedded SQLite backend of [`InvocationQueue`]: one database file in
//! WAL mode with `synchronous=FULL`, so every acknowledged write is on disk.
//!
//! Writes go to one writer thread that owns the write connection and
//! commits whatever writes are waiting as one transaction (group commit,
//! see the `writer` module): one `fsync` per group instead of one per
//! call. A failing call is rolled back alone and nothing is ever
//! half-written (checks come before writes; a call that fails halfway
//! rolls the group back and the others run again without it). Reads use a
//! second connection behind a mutex, on tokio's blocking pool; WAL lets
//! them run while the writer commits. The queue assumes it is the only
//! process writing to its file.
//!
//! # Schema (version 3, tracked in `PRAGMA user_version`)
//!
//! - `invocations`: one row per invocation. `seq` (the rowid) is enqueue
//!   order; `id` is the public, time-ordered id. `status` is the public
//!   status; `blocked` marks a partitioned invocation waiting behind an
//!   unfinished one of the same function and key; `dead_letter` marks a
//!   dead invocation still in the dead-letter queue. `policy` and
//!   `attempts` are JSON. `ready_ns` is when a queued or retrying
//!   invocation may run, `expires_ns` when it is too old to run
//!   (`max_event_age`), `lease_*` who holds a running one and until when.
//!   `attempts` holds the attempts that ended: a running invocation's
//!   current attempt started at `started_ns`, else when it was leased
//!   (`updated_ns`), so a lease writes only the status and lease columns.
//!   `dlq` is the named dead-letter queue from the policy (`default` when
//!   it names none), written when the invocation becomes a dead letter
//!   and `NULL` otherwise (version 2 had it as a virtual column).
//!   An index by function, status and id serves listings (a listing of
//!   every status merges the newest of each); it leaves out running
//!   invocations, which are few and listed through the index of leases,
//!   so that a lease and a completion move one index entry, not two. Partial indexes serve
//!   leasing (`ready_ns` of runnable rows), lease expiry, partition heads,
//!   the dead-letter queue (all, per function and per named queue) and
//!   pruning.
//! - `requests` and `results`: the request and the (capped) response of
//!   each invocation, apart so that scans do not read bodies.
//! - `idempotency_keys`: `(function, key)` to the id accepted with it,
//!   until the policy's window ends.
//! - `status_counts`: invocations per function and status, kept by the
//!   writer (one update per function and status per group, see the
//!   `counts` module); it answers depth checks and metrics without scans.
//! - The writer lifts `blocked` from the next invocation of a partition
//!   when the one before it finishes. (Version 3 replaced the triggers
//!   that did both.)
//!
//! Timestamps are integer nanoseconds since the Unix epoch.
//!
//! # Retention
//!
//! Succeeded, failed and replayed dead invocations are pruned once older
//! than [`Retention::max_age`] (since they finished), and the oldest of
//! them go early when the table holds more than [`Retention::max_rows`].
//! Dead letters are never pruned: they stay until deleted or replayed.
//! Idempotency keys are pruned when their window ends. The writer prunes
//! in bounded passes about once a second while writes come in.

mod counts;
mod ops;
mod rows;
mod schema;
mod writer;

use crate::clock::Clock;
use crate::error::QueueError;
use crate::id::is_valid_id;
use crate::limits::*;
use crate::model::*;
use crate::{IdGenerator, InvocationQueue};
use async_trait::async_trait;
use rows::InvocationRow;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, params};
use std::fmt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use wisp_core::{FunctionName, ValidationError};
use writer::{Ctx, Job, Stats, Task};

/// How long a statement waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Dead letters replayed per transaction by `replay_all`.
const REPLAY_CHUNK: usize = 100;
/// Sorts after every id, for "no cursor".
const NO_CURSOR: &str = "~";

/// How a [`SqliteQueue`] is set up.
#[derive(Debug, Clone, Default)]
pub struct QueueOptions {
    /// Depth limits.
    pub limits: QueueLimits,
    /// How long finished invocations are kept.
    pub retention: Retention,
    /// The time source (the system clock unless testing).
    pub clock: Clock,
}

/// Counters of group commit, from [`SqliteQueue::commit_stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitStats {
    /// Transactions committed for callers.
    pub transactions: u64,
    /// Write calls those transactions carried.
    pub calls: u64,
}

/// [`InvocationQueue`] on an SQLite file. Cloning is cheap and shares the
/// writer and the connections; the writer thread stops (after finishing
/// what was sent to it) when the last clone is dropped.
#[derive(Clone)]
pub struct SqliteQueue {
    inner: Arc<Inner>,
}

struct Inner {
    sender: Option<mpsc::Sender<Box<dyn Job>>>,
    writer: Option<std::thread::JoinHandle<()>>,
    reader: Mutex<Connection>,
    limits: QueueLimits,
    stats: Arc<Stats>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel lets the writer drain and stop; waiting for
        // it means the file is closed when the queue is gone.
        self.sender.take();
        if let Some(handle) = self.writer.take() {
            let _ = handle.join();
        }
    }
}

impl fmt::Debug for SqliteQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteQueue").finish_non_exhaustive()
    }
}

/// Opens a connection as the queue uses it: WAL, durable commits, and a
/// page cache of at most 4 MiB (the queue's working set is the tail of
/// its tables; two connections, so 8 MiB in all, in `docs/limits.md`).
fn configure(conn: &Connection) -> Result<(), QueueError> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(QueueError::Database(format!(
            "could not switch the queue database to WAL mode (it is in `{mode}` mode)"
        )));
    }
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA cache_size = -4096;
         PRAGMA temp_store = MEMORY;
         PRAGMA journal_size_limit = 67108864;",
    )?;
    conn.set_prepared_statement_cache_capacity(64);
    // Plans that do not depend on bound values: otherwise SQLite (built
    // with STAT4) prepares a statement again whenever a value bound to a
    // range on an indexed column changes, which the lease query did on
    // every call.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(())
}

impl SqliteQueue {
    /// Opens (creating if needed) the queue database at `path` and its
    /// parent directories with the default limits and retention, and
    /// starts its writer thread.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, QueueError> {
        Self::open_with(path, QueueOptions::default())
    }

    /// [`open`](Self::open) with explicit options.
    pub fn open_with(path: impl AsRef<Path>, options: QueueOptions) -> Result<Self, QueueError> {
        let path = path.as_ref();
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)?;
        }
        wisp_core::files::private_sqlite(path)?;
        let mut conn = Connection::open(path)?;
        configure(&conn)?;
        schema::migrate(&mut conn)?;
        let newest: Option<String> =
            conn.query_row("SELECT MAX(id) FROM invocations", [], |r| r.get(0))?;

        let reader = Connection::open(path)?;
        configure(&reader)?;
        reader.execute_batch("PRAGMA query_only = ON")?;

        let (sender, rx) = mpsc::channel(writer::CHANNEL_CAPACITY);
        let QueueOptions {
            limits,
            retention,
            clock,
        } = options;
        let limits_copy = limits.clone();
        let stats = Arc::new(Stats::default());
        let writer_stats = stats.clone();
        let handle = std::thread::Builder::new()
            .name("wisp-queue-writer".into())
            .spawn(move || {
                let ctx = Ctx {
                    clock,
                    ids: IdGenerator::new(newest.as_deref()),
                    limits,
                    retention,
                    rng: rand::rng(),
                    stats: writer_stats,
                    counts: Default::default(),
                };
                writer::run(conn, ctx, rx);
            })?;
        Ok(SqliteQueue {
            inner: Arc::new(Inner {
                sender: Some(sender),
                writer: Some(handle),
                reader: Mutex::new(reader),
                limits: limits_copy,
                stats,
            }),
        })
    }

    /// Runs one bounded pruning pass now (the writer also prunes on its own
    /// about once a second while writes come in); true if there is more to
    /// prune.
    pub async fn prune(&self) -> Result<bool, QueueError> {
        self.submit((1, 0), ops::prune).await
    }

    /// How many transactions the writer has committed for callers, and how
    /// many calls they carried: `calls / transactions` is the mean group
    /// size, a gauge of how much group commit is saving.
    pub fn commit_stats(&self) -> CommitStats {
        CommitStats {
            transactions: self.inner.stats.groups.load(Ordering::Relaxed),
            calls: self.inner.stats.jobs.load(Ordering::Relaxed),
        }
    }

    /// Sends `f` to the writer thread and waits until its group committed.
    /// `f` may run more than once (see the `writer` module); only the
    /// last run's writes and answer count.
    async fn submit<T, F>(&self, weight: (usize, usize), f: F) -> Result<T, QueueError>
    where
        T: Send + 'static,
        F: FnMut(&Connection, &mut Ctx) -> Result<T, QueueError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Task::new(weight, f, reply));
        let sender = self.inner.sender.as_ref().ok_or(QueueError::Closed)?;
        sender.send(job).await.map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)?
    }

    /// Runs `f` on the read connection, on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, QueueError>
    where
        F: FnOnce(&mut Connection) -> Result<T, QueueError> + Send + 'static,
        T: Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.reader.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn)
        })
        .await
        .map_err(|e| QueueError::Database(format!("queue read task failed: {e}")))?
    }
}

fn check_limit(limit: u32) -> Result<i64, QueueError> {
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(
            ValidationError::new("limit", format!("must be from 1 to {MAX_LIST_LIMIT}")).into(),
        );
    }
    Ok(i64::from(limit))
}

fn check_cursor(before: Option<&str>) -> Result<String, QueueError> {
    match before {
        None => Ok(NO_CURSOR.to_string()),
        Some(id) if is_valid_id(id) => Ok(id.to_string()),
        Some(_) => Err(ValidationError::new(
            "before",
            "must be an invocation id (32 lowercase hex digits) from a previous page",
        )
        .into()),
    }
}

fn check_replay_qualifier(qualifier: &Option<String>) -> Result<(), QueueError> {
    if let Some(q) = qualifier {
        crate::model::check_qualifier(q)?;
    }
    Ok(())
}

/// Ids and seqs of `function`'s newest invocations in `status` older than
/// `before`, newest first. Running invocations are not in the index by
/// status (see `schema::SCHEMA_V3`): they are few, and found through the
/// index of leases.
fn newest_of(
    conn: &Connection,
    function: &FunctionName,
    status: Status,
    before: &str,
    limit: i64,
) -> Result<Vec<(String, i64)>, QueueError> {
    let read = |r: &rusqlite::Row<'_>| Ok((r.get(0)?, r.get(1)?));
    let found = if status == Status::Running {
        conn.prepare_cached(
            "SELECT id, seq FROM invocations INDEXED BY invocations_leased
             WHERE status = 'running' AND function = ?1 AND id < ?2
             ORDER BY id DESC LIMIT ?3",
        )?
        .query_map(params![function.as_str(), before, limit], read)?
        .collect::<rusqlite::Result<_>>()?
    } else {
        conn.prepare_cached(
            "SELECT id, seq FROM invocations
             WHERE function = ?1 AND status = ?2 AND status <> 'running' AND id < ?3
             ORDER BY id DESC LIMIT ?4",
        )?
        .query_map(
            params![function.as_str(), status.as_str(), before, limit],
            read,
        )?
        .collect::<rusqlite::Result<_>>()?
    };
    Ok(found)
}

fn summaries(rows: Vec<InvocationRow>) -> Vec<Invocation> {
    rows.iter().map(InvocationRow::to_invocation).collect()
}

/// `outcome` cut to the limits it is stored under, on the caller's thread
/// rather than the writer's.
fn capped(outcome: Completion) -> Completion {
    match outcome {
        Completion::Succeeded { response } => Completion::Succeeded {
            response: response.into_capped(),
        },
        Completion::Failed {
            error,
            outcome,
            retryable,
        } => Completion::Failed {
            error: ops::truncate(error, MAX_ERROR_BYTES),
            outcome: ops::truncate(outcome, MAX_OUTCOME_BYTES),
            retryable,
        },
    }
}

/// Request bytes a completion carries to the writer.
fn completion_bytes(outcome: &Completion) -> usize {
    match outcome {
        Completion::Succeeded { response } => response.body.len(),
        Completion::Failed { .. } => 0,
    }
}

#[async_trait]
impl InvocationQueue for SqliteQueue {
    async fn enqueue(&self, batch: Vec<NewInvocation>) -> Result<Vec<Enqueued>, QueueError> {
        let total = check_batch(&batch)?;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.submit((batch.len(), total), move |conn, ctx| {
            ops::enqueue(conn, ctx, &batch)
        })
        .await
    }

    async fn lease(&self, max: usize, visibility: Duration) -> Result<Vec<Leased>, QueueError> {
        if max > MAX_LEASE_BATCH {
            return Err(ValidationError::new(
                "max",
                format!("at most {MAX_LEASE_BATCH} invocations are leased at once"),
            )
            .into());
        }
        if visibility.is_zero() || visibility > MAX_VISIBILITY {
            return Err(ValidationError::new(
                "visibility",
                "must be more than zero and at most 24 hours",
            )
            .into());
        }
        if max == 0 {
            return Ok(Vec::new());
        }
        let grants = self
            .submit((max, 0), move |conn, ctx| {
                ops::lease(conn, ctx, max, visibility)
            })
            .await?;
        grants.into_iter().map(ops::Grant::into_leased).collect()
    }

    async fn mark_started(&self, lease: &LeaseToken) -> Result<(), QueueError> {
        let lease = lease.clone();
        self.submit((1, 0), move |conn, ctx| {
            ops::mark_started(conn, ctx, &lease)
        })
        .await
    }

    async fn complete(
        &self,
        lease: &LeaseToken,
        outcome: Completion,
    ) -> Result<Status, QueueError> {
        let lease = lease.clone();
        let outcome = capped(outcome);
        let bytes = completion_bytes(&outcome);
        self.submit((1, bytes), move |conn, ctx| {
            ops::complete(conn, ctx, &lease, &outcome)
        })
        .await
    }

    async fn complete_many(
        &self,
        batch: Vec<(LeaseToken, Completion)>,
    ) -> Result<Vec<Result<Status, QueueError>>, QueueError> {
        if batch.len() > MAX_LEASE_BATCH {
            return Err(ValidationError::new(
                "batch",
                format!("at most {MAX_LEASE_BATCH} completions are recorded at once"),
            )
            .into());
        }
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let batch: Vec<(LeaseToken, Completion)> = batch
            .into_iter()
            .map(|(lease, outcome)| (lease, capped(outcome)))
            .collect();
        let bytes = batch.iter().map(|(_, o)| completion_bytes(o)).sum();
        self.submit((batch.len(), bytes), move |conn, ctx| {
            ops::complete_many(conn, ctx, &batch)
        })
        .await
    }

    async fn release(&self, lease: &LeaseToken, delay: Duration) -> Result<(), QueueError> {
        if delay > MAX_BACKOFF_MAX {
            return Err(ValidationError::new("delay", "must be at most 6 hours").into());
        }
        let lease = lease.clone();
        self.submit((1, 0), move |conn, ctx| {
            ops::release(conn, ctx, &lease, delay)
        })
        .await
    }

    async fn get(&self, id: &str) -> Result<Option<Invocation>, QueueError> {
        if !is_valid_id(id) {
            return Ok(None);
        }
        let id = id.to_string();
        self.read(move |conn| {
            let tx = conn.transaction()?;
            let Some(row) = rows::load_by_id(&tx, &id)? else {
                return Ok(None);
            };
            let mut invocation = row.to_invocation();
            invocation.result = rows::load_result(&tx, row.seq)?;
            Ok(Some(invocation))
        })
        .await
    }

    async fn list(
        &self,
        function: &FunctionName,
        status: Option<Status>,
        limit: u32,
        before: Option<&str>,
    ) -> Result<Vec<Invocation>, QueueError> {
        let limit = check_limit(limit)?;
        let before = check_cursor(before)?;
        let function = function.clone();
        self.read(move |conn| {
            let tx = conn.transaction()?;
            let mut newest: Vec<(String, i64)> = Vec::new();
            match status {
                Some(status) => newest = newest_of(&tx, &function, status, &before, limit)?,
                // There is no index by function alone (it cost every insert
                // a write): the newest of each status, merged.
                None => {
                    for status in Status::ALL {
                        newest.extend(newest_of(&tx, &function, status, &before, limit)?);
                    }
                    newest.sort_unstable_by(|a, b| b.0.cmp(&a.0));
                    newest.truncate(limit as usize);
                }
            }
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT {} FROM invocations WHERE seq = ?1",
                rows::COLUMNS
            ))?;
            let mut rows = Vec::with_capacity(newest.len());
            for (_, seq) in newest {
                rows.push(stmt.query_row([seq], InvocationRow::read)?);
            }
            Ok(summaries(rows))
        })
        .await
    }

    async fn dead_letters(
        &self,
        function: Option<&FunctionName>,
        queue: Option<&str>,
        limit: u32,
        before: Option<&str>,
    ) -> Result<Vec<Invocation>, QueueError> {
        let limit = check_limit(limit)?;
        let before = check_cursor(before)?;
        if let Some(q) = queue {
            wisp_core::destination::check_queue_name(q)
                .map_err(|e| ValidationError::new("queue", e.to_string()))?;
        }
        let function = function.cloned();
        let queue = queue.map(str::to_string);
        self.read(move |conn| {
            let rows = match (function, queue) {
                (Some(function), Some(queue)) => rows::load_many(
                    conn,
                    &format!(
                        "SELECT {} FROM invocations
                         WHERE dead_letter = 1 AND dlq = ?1 AND function = ?2 AND id < ?3
                         ORDER BY id DESC LIMIT ?4",
                        rows::COLUMNS
                    ),
                    params![queue, function.as_str(), before, limit],
                )?,
                (None, Some(queue)) => rows::load_many(
                    conn,
                    &format!(
                        "SELECT {} FROM invocations
                         WHERE dead_letter = 1 AND dlq = ?1 AND id < ?2
                         ORDER BY id DESC LIMIT ?3",
                        rows::COLUMNS
                    ),
                    params![queue, before, limit],
                )?,
                (Some(function), None) => rows::load_many(
                    conn,
                    &format!(
                        "SELECT {} FROM invocations
                         WHERE dead_letter = 1 AND function = ?1 AND id < ?2
                         ORDER BY id DESC LIMIT ?3",
                        rows::COLUMNS
                    ),
                    params![function.as_str(), before, limit],
                )?,
                (None, None) => rows::load_many(
                    conn,
                    &format!(
                        "SELECT {} FROM invocations WHERE dead_letter = 1 AND id < ?1
                         ORDER BY id DESC LIMIT ?2",
                        rows::COLUMNS
                    ),
                    params![before, limit],
                )?,
            };
            Ok(summaries(rows))
        })
        .await
    }

    async fn dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, QueueError> {
        if !is_valid_id(id) {
            return Ok(None);
        }
        let id = id.to_string();
        self.read(move |conn| {
            let tx = conn.transaction()?;
            let Some(row) = rows::load_by_id(&tx, &id)?.filter(|r| r.dead_letter) else {
                return Ok(None);
            };
            Ok(Some(DeadLetter {
                request: rows::load_request(&tx, row.seq)?,
                policy: row.policy.clone(),
                invocation: row.to_invocation(),
            }))
        })
        .await
    }

    async fn delete_dead(&self, id: &str) -> Result<bool, QueueError> {
        if !is_valid_id(id) {
            return Ok(false);
        }
        let id = id.to_string();
        self.submit((1, 0), move |conn, ctx| ops::delete_dead(conn, ctx, &id))
            .await
    }

    async fn replay(&self, id: &str, qualifier: Option<String>) -> Result<String, QueueError> {
        check_replay_qualifier(&qualifier)?;
        if !is_valid_id(id) {
            return Err(QueueError::DeadLetterNotFound { id: id.to_string() });
        }
        let id = id.to_string();
        self.submit((1, 0), move |conn, ctx| {
            ops::replay(conn, ctx, &id, qualifier.as_deref())
        })
        .await
    }

    async fn replay_all(
        &self,
        function: &FunctionName,
        qualifier: Option<String>,
    ) -> Result<usize, QueueError> {
        check_replay_qualifier(&qualifier)?;
        // Only what is dead now: letters that die while this runs wait for
        // the next call, so a function failing as fast as it is replayed
        // cannot keep this loop going.
        let f = function.clone();
        let newest: Option<String> = self
            .read(move |conn| {
                Ok(conn.query_row(
                    "SELECT MAX(id) FROM invocations WHERE dead_letter = 1 AND function = ?1",
                    [f.as_str()],
                    |r| r.get(0),
                )?)
            })
            .await?;
        let Some(newest) = newest else {
            return Ok(0);
        };
        let mut total = 0;
        loop {
            let f = function.clone();
            let qualifier = qualifier.clone();
            let newest = newest.clone();
            let chunk = self
                .submit((REPLAY_CHUNK, 0), move |conn, ctx| {
                    ops::replay_chunk(conn, ctx, &f, qualifier.as_deref(), &newest, REPLAY_CHUNK)
                })
                .await?;
            total += chunk.replayed;
            if chunk.full && total == 0 {
                return Err(QueueError::Full {
                    function: function.clone(),
                    limit: self.inner.limits.max_depth_per_function,
                });
            }
            if chunk.full || !chunk.more {
                return Ok(total);
            }
        }
    }

    async fn expire_leases(&self) -> Result<u64, QueueError> {
        self.submit((1, 0), |conn, _| {
            let n = conn.execute(
                "UPDATE invocations SET lease_expires_ns = 0
                 WHERE status = 'running' AND lease_expires_ns IS NOT NULL",
                [],
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn depth(&self, function: &FunctionName) -> Result<u64, QueueError> {
        let function = function.clone();
        self.read(move |conn| ops::depth(conn, &function)).await
    }

    async fn counts(&self) -> Result<Vec<(FunctionName, Status, u64)>, QueueError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT function, status, n FROM status_counts WHERE n > 0
                 ORDER BY function, status",
            )?;
            let mut out = Vec::new();
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let function: String = row.get(0)?;
                let status: String = row.get(1)?;
                let n: i64 = row.get(2)?;
                let function = function
                    .parse()
                    .map_err(|e| QueueError::Database(format!("bad function `{function}`: {e}")))?;
                let status = status
                    .parse()
                    .map_err(|e| QueueError::Database(format!("{e}")))?;
                out.push((function, status, n.max(0) as u64));
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests;
