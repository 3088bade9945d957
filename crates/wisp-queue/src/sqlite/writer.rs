//! Group commit: one thread owns the write connection and runs every write
//! job it finds waiting in one transaction, so one `fsync` makes a whole
//! group durable.
//!
//! Callers send a [`Job`] over a bounded channel and wait on a oneshot.
//! The thread blocks for the first job, then takes whatever else is already
//! waiting (up to [`MAX_GROUP_WEIGHT`] invocations or [`MAX_GROUP_BYTES`]),
//! runs each job inside its own savepoint (a failing job is rolled back
//! alone, never half-written), commits once, and only then answers every
//! caller. While one group is being synced the next one queues up, so the
//! group size grows with the load and no caller waits for a timer (the
//! thread only yields its core once per group, to let callers catch up).

use super::ops;
use crate::clock::Clock;
use crate::error::QueueError;
use crate::id::IdGenerator;
use crate::model::{QueueLimits, Retention};
use rand::rngs::ThreadRng;
use rusqlite::Connection;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Most jobs waiting for the writer; senders wait beyond it.
pub(super) const CHANNEL_CAPACITY: usize = 1024;
/// A group stops taking jobs once they carry this many invocations.
const MAX_GROUP_WEIGHT: usize = 8192;
/// A group stops taking jobs once they carry this many request bytes.
const MAX_GROUP_BYTES: usize = 64 * 1024 * 1024;
/// How often finished invocations and expired idempotency keys are pruned
/// while writes keep coming.
const PRUNE_INTERVAL: Duration = Duration::from_secs(1);
/// How often the checkpointer copies the write-ahead log into the database.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// What write jobs may use besides the connection. Lives on the writer
/// thread only.
pub(super) struct Ctx {
    pub clock: Clock,
    pub ids: IdGenerator,
    pub limits: QueueLimits,
    pub retention: Retention,
    pub rng: ThreadRng,
    pub stats: Arc<Stats>,
}

/// Counters of the writer's work, shared with the queue handle.
#[derive(Debug, Default)]
pub(super) struct Stats {
    /// Transactions committed for callers.
    pub groups: AtomicU64,
    /// Calls those transactions carried.
    pub jobs: AtomicU64,
}

/// A unit of work for the writer thread.
pub(super) trait Job: Send {
    /// How many invocations it writes, and how many request bytes it carries.
    fn weight(&self) -> (usize, usize);
    /// Runs inside the group's transaction (in a savepoint of its own) and
    /// returns what to do once the group's fate is known.
    fn run(self: Box<Self>, conn: &Connection, ctx: &mut Ctx) -> Box<dyn Done>;
    /// Answers the caller with `error` without running.
    fn fail(self: Box<Self>, error: QueueError);
}

/// A job that has run, waiting for its group to commit.
pub(super) trait Done: Send {
    /// Answers the caller: its own result if the group committed, else
    /// the commit's error.
    fn finish(self: Box<Self>, commit: Result<(), &QueueError>);
}

/// A closure job answering on a oneshot.
pub(super) struct Task<T, F> {
    pub weight: (usize, usize),
    pub f: F,
    pub reply: oneshot::Sender<Result<T, QueueError>>,
}

struct Finished<T> {
    result: Result<T, QueueError>,
    reply: oneshot::Sender<Result<T, QueueError>>,
}

impl<T, F> Job for Task<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection, &mut Ctx) -> Result<T, QueueError> + Send + 'static,
{
    fn weight(&self) -> (usize, usize) {
        self.weight
    }

    fn run(self: Box<Self>, conn: &Connection, ctx: &mut Ctx) -> Box<dyn Done> {
        let Task { f, reply, .. } = *self;
        let result = in_savepoint(conn, || {
            catch_unwind(AssertUnwindSafe(|| f(conn, ctx))).unwrap_or_else(|_| {
                tracing::error!("a queue write panicked; it was rolled back");
                Err(QueueError::Database(
                    "a queue write failed unexpectedly (see the server log); nothing was written"
                        .into(),
                ))
            })
        });
        Box::new(Finished { result, reply })
    }

    fn fail(self: Box<Self>, error: QueueError) {
        let _ = self.reply.send(Err(error));
    }
}

impl<T: Send> Done for Finished<T> {
    fn finish(self: Box<Self>, commit: Result<(), &QueueError>) {
        let result = match commit {
            Ok(()) => self.result,
            // Whatever the job did was rolled back with the group.
            Err(e) => Err(copy_error(e)),
        };
        // The caller may have stopped waiting; the write stands anyway.
        let _ = self.reply.send(result);
    }
}

/// Runs `f` inside a savepoint, rolled back if `f` fails.
fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce() -> Result<T, QueueError>,
) -> Result<T, QueueError> {
    // Cached statements: parsing these again for every job is measurable.
    let exec = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([]));
    exec("SAVEPOINT job")?;
    let result = f();
    let end = if result.is_ok() {
        exec("RELEASE job")
    } else {
        exec("ROLLBACK TO job").and_then(|_| exec("RELEASE job"))
    };
    match (result, end) {
        (Ok(v), Ok(_)) => Ok(v),
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e.into()),
    }
}

/// Checkpoints the write-ahead log from a connection of its own, so the
/// writer thread never does (SQLite's automatic checkpoint runs on the
/// committing connection, inside the caller's latency). Stops when dropped.
struct Checkpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the database at `path`; `None` if it cannot
    /// (the writer then keeps SQLite's automatic checkpoints).
    fn start(path: &str) -> Option<Checkpointer> {
        let conn = Connection::open(path).ok()?;
        conn.busy_timeout(Duration::from_secs(5)).ok()?;
        let (stop, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("wisp-queue-checkpoint".into())
            .spawn(move || {
                // PASSIVE never blocks the writer or readers; the log is
                // rewound by the next write once it is fully copied.
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    rx.recv_timeout(CHECKPOINT_INTERVAL)
                {
                    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
                        tracing::debug!(error = %e, "queue checkpoint skipped");
                    }
                }
            })
            .ok()?;
        Some(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The same error for another caller of a failed group.
fn copy_error(e: &QueueError) -> QueueError {
    match e {
        QueueError::Closed => QueueError::Closed,
        other => QueueError::Database(format!("{other}; nothing was written")),
    }
}

/// The writer thread's loop: runs until every sender is gone and the
/// channel is drained.
pub(super) fn run(mut conn: Connection, mut ctx: Ctx, mut rx: mpsc::Receiver<Box<dyn Job>>) {
    let checkpointer = conn
        .path()
        .filter(|p| !p.is_empty())
        .and_then(Checkpointer::start);
    if checkpointer.is_some()
        && let Err(e) = conn.execute_batch("PRAGMA wal_autocheckpoint = 0")
    {
        tracing::warn!(error = %e, "could not move queue checkpoints off the writer");
    }
    let mut last_prune: Option<Instant> = None;
    let mut prune_soon = true;
    while let Some(first) = rx.blocking_recv() {
        let (mut weight, mut bytes) = first.weight();
        let mut jobs = vec![first];
        // Once out of waiting jobs, let the callers' threads run once: on a
        // small machine they share cores with this thread, and a caller
        // answered by the last commit is often about to send its next job.
        let mut yielded = false;
        while weight < MAX_GROUP_WEIGHT && bytes < MAX_GROUP_BYTES {
            match rx.try_recv() {
                Ok(job) => {
                    let (w, b) = job.weight();
                    weight += w;
                    bytes += b;
                    jobs.push(job);
                }
                Err(_) if !yielded => {
                    yielded = true;
                    std::thread::yield_now();
                }
                Err(_) => break,
            }
        }
        run_group(&mut conn, &mut ctx, jobs);

        if prune_soon || last_prune.is_none_or(|t| t.elapsed() >= PRUNE_INTERVAL) {
            last_prune = Some(Instant::now());
            prune_soon = match prune(&mut conn, &mut ctx) {
                Ok(more) => more,
                Err(e) => {
                    tracing::warn!(error = %e, "pruning the invocation queue failed");
                    false
                }
            };
        }
    }
    // Stop checkpointing before the connection closes; closing the last
    // connection checkpoints what is left.
    drop(checkpointer);
}

/// Runs `jobs` in one transaction and answers every caller after it ends.
fn run_group(conn: &mut Connection, ctx: &mut Ctx, jobs: Vec<Box<dyn Job>>) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let e = QueueError::from(e);
        for job in jobs {
            job.fail(copy_error(&e));
        }
        return;
    }
    let done: Vec<Box<dyn Done>> = jobs.into_iter().map(|job| job.run(conn, ctx)).collect();
    match conn.execute_batch("COMMIT") {
        Ok(()) => {
            ctx.stats.groups.fetch_add(1, Ordering::Relaxed);
            ctx.stats
                .jobs
                .fetch_add(done.len() as u64, Ordering::Relaxed);
            for d in done {
                d.finish(Ok(()));
            }
        }
        Err(e) => {
            let e = QueueError::from(e);
            tracing::error!(error = %e, "committing a group of queue writes failed");
            let _ = conn.execute_batch("ROLLBACK");
            for d in done {
                d.finish(Err(&e));
            }
        }
    }
}

/// One bounded pruning pass in its own transaction; true if there is more
/// to prune.
fn prune(conn: &mut Connection, ctx: &mut Ctx) -> Result<bool, QueueError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let more = ops::prune(&tx, ctx)?;
    tx.commit()?;
    Ok(more)
}

#[cfg(test)]
mod tests {
    use crate::sqlite::SqliteQueue;
    use crate::{InvocationQueue, NewInvocation, StoredRequest};
    use std::time::Duration;

    /// The writer no longer checkpoints; the checkpointer thread must, or
    /// the write-ahead log would grow with every write.
    #[tokio::test]
    async fn the_log_is_checkpointed_off_the_writer_and_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.db");
        let q = SqliteQueue::open(&path).unwrap();
        let wal = path.with_file_name("queue.db-wal");
        let mut largest = 0;
        for round in 0..20 {
            let batch = (0..200)
                .map(|i| {
                    NewInvocation::new(
                        "f".parse().unwrap(),
                        "latest",
                        StoredRequest {
                            method: "POST".into(),
                            path_and_query: format!("/{round}/{i}"),
                            headers: vec![],
                            body: vec![b'x'; 4096],
                        },
                    )
                })
                .collect();
            q.enqueue(batch).await.unwrap();
            // Longer than the checkpoint interval.
            tokio::time::sleep(Duration::from_millis(250)).await;
            largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        }
        // 20 rounds wrote over 16 MiB; with checkpoints the log is rewound
        // after each, so it never holds much more than one round (~1 MiB).
        assert!(largest < 4 << 20, "the log grew to {largest} bytes");
    }
}
