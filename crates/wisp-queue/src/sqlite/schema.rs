//! The queue database's schema and its migrations.

use crate::error::QueueError;
use rusqlite::{Connection, TransactionBehavior};

/// Schema migrations; entry `i` takes `user_version` from `i` to `i + 1`.
/// Append new entries, never edit old ones.
const MIGRATIONS: &[&str] = &[SCHEMA_V1, SCHEMA_V2];

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
const SCHEMA_V2: &str = r#"
ALTER TABLE invocations ADD COLUMN dlq TEXT
    GENERATED ALWAYS AS (COALESCE(json_extract(policy, '$.dead_letter_queue'), 'default')) VIRTUAL;
CREATE INDEX invocations_dead_letters_by_queue ON invocations (dlq, id)
    WHERE dead_letter = 1;
"#;

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
        tx.execute_batch(&format!("PRAGMA user_version = {}", current + 1))?;
        tx.commit()?;
        tracing::info!(version = current + 1, "migrated the queue database");
    }
}
