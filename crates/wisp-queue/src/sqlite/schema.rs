//! The queue database's schema and its migrations.

use crate::error::QueueError;
use rusqlite::{Connection, TransactionBehavior};

/// Schema migrations; entry `i` takes `user_version` from `i` to `i + 1`.
/// Append new entries, never edit old ones.
const MIGRATIONS: &[&str] = &[SCHEMA_V1, SCHEMA_V2, SCHEMA_V3];

pub(super) const SCHEMA_V1: &str = r#"
CREATE TABLE invocations (
    seq              INTEGER PRIMARY KEY,
    id               TEXT    NOT NULL UNIQUE,
    function         TEXT    NOT NULL,
    qualifier        TEXT    NOT NULL,
    status           TEXT    NOT NULL CHECK (status IN
                        ('queued', 'running', 'retrying', 'succeeded', 'failed', 'dead')),
    blocked          INTEGER NOT NULL DEFAULT 0 CHECK (blocked IN (0, 1)),
    dead_letter      INTEGER NOT NULL DEFAULT 0 CHECK (dead_letter IN (0, 1)),
    partition_key    TEXT,
    idempotency_key  TEXT,
    policy           TEXT    NOT NULL,
    attempts         TEXT    NOT NULL DEFAULT '[]',
    enqueued_ns      INTEGER NOT NULL,
    updated_ns       INTEGER NOT NULL,
    ready_ns         INTEGER,
    expires_ns       INTEGER NOT NULL,
    lease_token      TEXT,
    lease_expires_ns INTEGER,
    started_ns       INTEGER,
    error            TEXT,
    replayed_from    TEXT,
    replayed_as      TEXT,
    CHECK ((status = 'running') = (lease_token IS NOT NULL)),
    CHECK (dead_letter = 0 OR status = 'dead')
) STRICT;
CREATE INDEX invocations_by_function ON invocations (function, id);
CREATE INDEX invocations_by_status ON invocations (function, status, id);
CREATE INDEX invocations_ready ON invocations (ready_ns, seq)
    WHERE status IN ('queued', 'retrying') AND blocked = 0;
CREATE INDEX invocations_leased ON invocations (lease_expires_ns)
    WHERE status = 'running';
CREATE INDEX invocations_partitions ON invocations (function, partition_key, seq)
    WHERE partition_key IS NOT NULL AND status IN ('queued', 'retrying', 'running');
CREATE INDEX invocations_dead_letters ON invocations (function, id)
    WHERE dead_letter = 1;
CREATE INDEX invocations_all_dead_letters ON invocations (id)
    WHERE dead_letter = 1;
CREATE INDEX invocations_finished ON invocations (updated_ns)
    WHERE status IN ('succeeded', 'failed', 'dead') AND dead_letter = 0;

CREATE TABLE requests (
    seq             INTEGER PRIMARY KEY REFERENCES invocations (seq) ON DELETE CASCADE,
    method          TEXT    NOT NULL,
    path_and_query  TEXT    NOT NULL,
    headers         TEXT    NOT NULL,
    body            BLOB    NOT NULL
) STRICT;

CREATE TABLE results (
    seq             INTEGER PRIMARY KEY REFERENCES invocations (seq) ON DELETE CASCADE,
    status          INTEGER NOT NULL,
    headers         TEXT    NOT NULL,
    body            BLOB    NOT NULL,
    truncated       INTEGER NOT NULL
) STRICT;

CREATE TABLE idempotency_keys (
    function        TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    id              TEXT    NOT NULL,
    expires_ns      INTEGER NOT NULL,
    PRIMARY KEY (function, key)
) STRICT, WITHOUT ROWID;
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_ns);

CREATE TABLE status_counts (
    function        TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    n               INTEGER NOT NULL,
    PRIMARY KEY (function, status)
) STRICT, WITHOUT ROWID;

CREATE TRIGGER invocations_counted_in AFTER INSERT ON invocations BEGIN
    INSERT INTO status_counts (function, status, n) VALUES (new.function, new.status, 1)
        ON CONFLICT (function, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER invocations_counted_move AFTER UPDATE OF status ON invocations
    WHEN old.status <> new.status BEGIN
    UPDATE status_counts SET n = n - 1 WHERE function = old.function AND status = old.status;
    INSERT INTO status_counts (function, status, n) VALUES (new.function, new.status, 1)
        ON CONFLICT (function, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER invocations_counted_out AFTER DELETE ON invocations BEGIN
    UPDATE status_counts SET n = n - 1 WHERE function = old.function AND status = old.status;
END;

CREATE TRIGGER invocations_partition_advance AFTER UPDATE OF status ON invocations
    WHEN new.partition_key IS NOT NULL
     AND old.status IN ('queued', 'retrying', 'running')
     AND new.status IN ('succeeded', 'failed', 'dead') BEGIN
    UPDATE invocations SET blocked = 0 WHERE seq = (
        SELECT seq FROM invocations
        WHERE function = new.function AND partition_key = new.partition_key
          AND status IN ('queued', 'retrying', 'running')
        ORDER BY seq LIMIT 1);
END;
"#;

/// Named dead-letter queues: `dlq`, the queue a dead invocation is kept
/// in, derived from its policy (so rows written before it need no
/// rewrite), and an index listing one queue's dead letters newest first.
pub(super) const SCHEMA_V2: &str = r#"
ALTER TABLE invocations ADD COLUMN dlq TEXT
    GENERATED ALWAYS AS (COALESCE(json_extract(policy, '$.dead_letter_queue'), 'default')) VIRTUAL;
CREATE INDEX invocations_dead_letters_by_queue ON invocations (dlq, id)
    WHERE dead_letter = 1;
"#;

/// Cheaper writes. The writer keeps the counts and advances partitions
/// itself: the triggers cost a trigger program, a statement journal and
/// (with them) no one-pass update on every insert and status change. The
/// counts are rebuilt once, to start exact. A running invocation's
/// current attempt is no longer stored (it is implied by the lease, see
/// `rows::InvocationRow`), so a lease does not rewrite `attempts`: the
/// running attempt stored by earlier versions is dropped. Conditions on
/// three or more statuses are spelled with `OR` instead of `IN (...)`:
/// SQLite evaluates a constant `IN` list of more than two values through a
/// temporary b-tree it builds on every execution of a statement, which was
/// a large share of each insert and update (the partial indexes'
/// conditions are evaluated on every write; queries must spell them the
/// same way to use the indexes). The `status` check is rewritten the same
/// way by [`rewrite_status_check`]. `dlq` becomes a stored column, written
/// when an invocation becomes a dead letter (and `NULL` otherwise): as a
/// virtual column SQLite computed it, with `json_extract`, on every insert
/// and update. `invocations_by_function` goes: `invocations_by_status`
/// serves a listing of all statuses too (newest of each status, merged),
/// and every insert wrote one index entry fewer (with many functions,
/// one more page per function per commit). `invocations_by_status` leaves
/// out running invocations (they are few: listing them goes through
/// `invocations_leased`), so a lease only takes an entry out of it and a
/// completion only puts one in.
const SCHEMA_V3: &str = r#"
DROP TRIGGER invocations_counted_in;
DROP TRIGGER invocations_counted_move;
DROP TRIGGER invocations_counted_out;
DROP TRIGGER invocations_partition_advance;
DELETE FROM status_counts;
INSERT INTO status_counts (function, status, n)
    SELECT function, status, COUNT(*) FROM invocations GROUP BY function, status;
UPDATE invocations SET attempts = json_remove(attempts, '$[#-1]')
    WHERE status = 'running' AND json_array_length(attempts) > 0;
DROP INDEX invocations_partitions;
CREATE INDEX invocations_partitions ON invocations (function, partition_key, seq)
    WHERE partition_key IS NOT NULL
      AND (status = 'queued' OR status = 'retrying' OR status = 'running');
DROP INDEX invocations_finished;
CREATE INDEX invocations_finished ON invocations (updated_ns)
    WHERE (status = 'succeeded' OR status = 'failed' OR status = 'dead') AND dead_letter = 0;
DROP INDEX invocations_by_function;
DROP INDEX invocations_by_status;
CREATE INDEX invocations_by_status ON invocations (function, status, id)
    WHERE status <> 'running';
DROP INDEX invocations_dead_letters_by_queue;
ALTER TABLE invocations DROP COLUMN dlq;
ALTER TABLE invocations ADD COLUMN dlq TEXT;
UPDATE invocations SET dlq = COALESCE(json_extract(policy, '$.dead_letter_queue'), 'default')
    WHERE dead_letter = 1;
CREATE INDEX invocations_dead_letters_by_queue ON invocations (dlq, id)
    WHERE dead_letter = 1;
"#;

/// What [`rewrite_status_check`] writes instead of the first version's
/// `CHECK (status IN (...))`: the same condition.
const STATUS_CHECK: &str = "CHECK (status = 'queued' OR status = 'running' OR status = 'retrying' \
     OR status = 'succeeded' OR status = 'failed' OR status = 'dead')";

/// Rewrites the `status` check of `invocations` without an `IN` list (see
/// [`SCHEMA_V3`]). SQLite cannot alter a check, so this edits the stored
/// table definition in place, the way SQLite's documentation describes
/// for changes that leave the stored rows valid ("Making Other Kinds Of
/// Table Schema Changes"), and bumps the schema version so that every
/// connection reloads it.
fn rewrite_status_check(tx: &Connection) -> Result<(), QueueError> {
    let sql: String = tx.query_row(
        "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'invocations'",
        [],
        |r| r.get(0),
    )?;
    let Some(start) = sql.find("CHECK (status IN") else {
        return Ok(());
    };
    let Some(len) = sql[start..].find("))") else {
        return Ok(());
    };
    let rewritten = format!("{}{STATUS_CHECK}{}", &sql[..start], &sql[start + len + 2..]);
    let version: i64 = tx.query_row("PRAGMA schema_version", [], |r| r.get(0))?;
    tx.execute_batch("PRAGMA writable_schema = ON")?;
    let updated = tx.execute(
        "UPDATE sqlite_schema SET sql = ?1 WHERE type = 'table' AND name = 'invocations'",
        [&rewritten],
    );
    tx.execute_batch(&format!(
        "PRAGMA schema_version = {}; PRAGMA writable_schema = OFF;",
        version + 1
    ))?;
    updated?;
    Ok(())
}

/// Applies the migrations the database has not seen, each in its own
/// transaction that also bumps `user_version`.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), QueueError> {
    let target = MIGRATIONS.len() as i64;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Read inside the transaction, so a concurrent opener cannot apply
        // the same migration twice.
        let current: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if current > target {
            return Err(QueueError::Database(format!(
                "the queue database has schema version {current}, newer than this Wisp knows ({target}); use a newer Wisp"
            )));
        }
        if current == target {
            return Ok(());
        }
        tx.execute_batch(MIGRATIONS[current as usize])?;
        if current == 2 {
            rewrite_status_check(&tx)?;
        }
        tx.execute_batch(&format!("PRAGMA user_version = {}", current + 1))?;
        tx.commit()?;
        tracing::info!(version = current + 1, "migrated the queue database");
    }
}
