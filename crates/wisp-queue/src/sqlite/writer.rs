//! Group commit: one thread owns the write connection and runs every write
//! job it finds waiting in one transaction, so one `fsync` makes a whole
//! group durable.
//!
//! Callers send a [`Job`] over a bounded channel and wait on a oneshot.
//! The thread blocks for the first job, then takes whatever else is already
//! waiting (up to [`MAX_GROUP_WEIGHT`] invocations or [`MAX_GROUP_BYTES`]),
//! runs the jobs one after the other, commits once, and only then answers
//! every caller. While one group is being synced the next one queues up, so
//! the group size grows with the load and no caller waits for a timer (the
//! thread only yields its core once per group, to let callers catch up).
//!
//! Each call is atomic without a savepoint of its own (savepoints copied
//! every page a job touched into a sub-journal, a large share of the
//! writer's time): a job either succeeds, or fails *before writing*
//! (a lost lease, a full queue, an unknown id: [`QueueError::wrote_nothing`]),
//! or fails in a way that may have written part of its change (a storage
//! error, a panic). In the last case the whole group is rolled back, that
//! job is answered with its error, and the other jobs run again on their
//! own; jobs are closures that can run more than once, and nothing they
//! answered before the commit ever reached a caller.

use super::counts::Counts;
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
    /// `status_counts`, as the writer keeps it.
    pub counts: Counts,
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
    /// Runs inside the group's transaction and keeps the result. False if
    /// it failed in a way that may have written part of its change: the
    /// group must then be rolled back. May run again after a rollback.
    fn run(&mut self, conn: &Connection, ctx: &mut Ctx) -> bool;
    /// Answers the caller: the result of its last run if the group
    /// committed (or was rolled back because of this job), else the
    /// commit's error.
    fn finish(self: Box<Self>, commit: Result<(), &QueueError>);
    /// Answers the caller with `error` without running.
    fn fail(self: Box<Self>, error: QueueError);
}

/// A closure job answering on a oneshot.
pub(super) struct Task<T, F> {
    weight: (usize, usize),
    f: F,
    reply: oneshot::Sender<Result<T, QueueError>>,
    result: Option<Result<T, QueueError>>,
}

impl<T, F> Task<T, F> {
    pub fn new(
        weight: (usize, usize),
        f: F,
        reply: oneshot::Sender<Result<T, QueueError>>,
    ) -> Self {
        Task {
            weight,
            f,
            reply,
            result: None,
        }
    }
}

impl<T, F> Job for Task<T, F>
where
    T: Send + 'static,
    F: FnMut(&Connection, &mut Ctx) -> Result<T, QueueError> + Send + 'static,
{
    fn weight(&self) -> (usize, usize) {
        self.weight
    }

    fn run(&mut self, conn: &Connection, ctx: &mut Ctx) -> bool {
        let f = &mut self.f;
        let (result, clean) = match catch_unwind(AssertUnwindSafe(|| f(conn, ctx))) {
            Ok(Ok(v)) => (Ok(v), true),
            Ok(Err(e)) => {
                let clean = e.wrote_nothing();
                (Err(e), clean)
            }
            Err(_) => {
                tracing::error!("a queue write panicked; it was rolled back");
                let e = QueueError::Database(
                    "a queue write failed unexpectedly (see the server log); nothing was written"
                        .into(),
                );
                (Err(e), false)
            }
        };
        self.result = Some(result);
        clean
    }

    fn finish(self: Box<Self>, commit: Result<(), &QueueError>) {
        let result = match (commit, self.result) {
            (Ok(()), Some(result)) => result,
            // Whatever the job did was rolled back with the group.
            (Err(e), _) => Err(copy_error(e)),
            (Ok(()), None) => Err(QueueError::Database(
                "a queue write was answered without running; nothing was written".into(),
            )),
        };
        // The caller may have stopped waiting; the write stands anyway.
        let _ = self.reply.send(result);
    }

    fn fail(self: Box<Self>, error: QueueError) {
        let _ = self.reply.send(Err(error));
    }
}

/// Runs one of the transaction statements, prepared once.
fn exec(conn: &Connection, sql: &str) -> Result<(), QueueError> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
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
fn run_group(conn: &mut Connection, ctx: &mut Ctx, mut jobs: Vec<Box<dyn Job>>) {
    let calls = jobs.len() as u64;
    loop {
        if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
            for job in jobs {
                job.fail(copy_error(&e));
            }
            return;
        }
        let clean: Vec<bool> = jobs.iter_mut().map(|job| job.run(conn, ctx)).collect();
        if clean.iter().all(|c| *c) {
            let commit = ctx.counts.flush(conn).and_then(|()| exec(conn, "COMMIT"));
            match commit {
                Ok(()) => {
                    ctx.counts.committed();
                    ctx.stats.groups.fetch_add(1, Ordering::Relaxed);
                    ctx.stats.jobs.fetch_add(calls, Ordering::Relaxed);
                    for job in jobs {
                        job.finish(Ok(()));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "committing a group of queue writes failed");
                    let _ = conn.execute_batch("ROLLBACK");
                    ctx.counts.discard();
                    for job in jobs {
                        job.finish(Err(&e));
                    }
                }
            }
            return;
        }
        // A job may have written part of its change: roll everything back,
        // answer it (with its own error; nothing of it stays) and run the
        // others again without it.
        ctx.counts.discard();
        if let Err(e) = conn.execute_batch("ROLLBACK") {
            let e = QueueError::from(e);
            tracing::error!(error = %e, "rolling back a group of queue writes failed");
            for job in jobs {
                job.finish(Err(&e));
            }
            return;
        }
        let mut again = Vec::with_capacity(jobs.len());
        for (job, clean) in jobs.into_iter().zip(clean) {
            if clean {
                again.push(job);
            } else {
                job.finish(Ok(()));
            }
        }
        if again.is_empty() {
            return;
        }
        jobs = again;
    }
}

/// One bounded pruning pass in its own transaction; true if there is more
/// to prune.
fn prune(conn: &mut Connection, ctx: &mut Ctx) -> Result<bool, QueueError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let pass = ops::prune(&tx, ctx).and_then(|more| {
        ctx.counts.flush(&tx)?;
        Ok(more)
    });
    let done = pass.and_then(|more| {
        tx.commit()?;
        Ok(more)
    });
    match &done {
        Ok(_) => ctx.counts.committed(),
        // Dropping the transaction rolled it back.
        Err(_) => ctx.counts.discard(),
    }
    done
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
