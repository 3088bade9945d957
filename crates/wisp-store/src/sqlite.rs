//! The embedded SQLite backend of [`MetadataStore`]: one database file in
//! WAL mode with `synchronous=FULL`, so every acknowledged write is on disk.
//!
//! One connection sits behind a mutex and every call runs on tokio's
//! blocking pool. Each write is one `BEGIN IMMEDIATE` transaction. The
//! store assumes it is the only process writing to its file: the
//! [`resolve`](MetadataStore::resolve) cache is invalidated by this
//! process's writes only. That cache also holds every function's name (read
//! at open, kept by each write), so a request for an unknown function is
//! answered without a query, and remembers up to
//! [`MAX_CACHED_MISSES_PER_FUNCTION`] missing versions and aliases per
//! function.
//!
//! # Schema (version 1, tracked in `PRAGMA user_version`)
//!
//! - `functions`: one row per function holding `latest` (code, config as
//!   columns with `labels` and `env` as JSON objects) and `next_version`, a
//!   counter that only grows. A function recreated after deletion gets a new
//!   row id, so its versions start at 1 again.
//! - `versions`: published snapshots, keyed by `(function_id, version)`.
//! - `aliases`: keyed by `(function_id, name)`; foreign keys make sure their
//!   versions exist.
//! - `logs`: invocation output with an `AUTOINCREMENT` id (never reused,
//!   so `after` cursors stay valid across pruning), and `log_count`, kept
//!   by triggers, to prune cheaply.
//!
//! Timestamps are stored as integer nanoseconds since the Unix epoch.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wisp_store::StoreError> {
//! use wisp_core::Qualifier;
//! use wisp_store::{MetadataStore, sqlite::SqliteStore};
//!
//! let store = SqliteStore::open("/var/lib/wisp/wisp.db")?;
//! let resolved = store.resolve(&"hello".parse().unwrap(), &Qualifier::Latest).await?;
//! println!("{}", resolved.primary.code_digest);
//! # Ok(()) }
//! ```

use crate::{LogQuery, MetadataStore, NewLogRecord, Resolved, StoreError, WriteMode};
use chrono::{DateTime, Utc};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, Value, ValueRef};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};
use serde::de::DeserializeOwned;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;
use wisp_core::limits::{MAX_ALIASES_PER_FUNCTION, MAX_LOG_QUERY_LIMIT};
use wisp_core::{
    Alias, AliasName, AliasRouting, Deployment, Digest, FastMap, FastSet, Function, FunctionConfig,
    FunctionInput, FunctionName, FunctionVersion, LogPage, LogRecord, LogStream, Qualifier,
    ValidationError, VersionId,
};

/// How many log records the store keeps; older ones are pruned on append.
pub const LOG_RETENTION_RECORDS: u64 = 100_000;

/// How long a statement waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations; entry `i` takes `user_version` from `i` to `i + 1`.
/// Append new entries, never edit old ones.
const MIGRATIONS: &[&str] = &[SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5];

const SCHEMA_V1: &str = r#"
CREATE TABLE functions (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT    NOT NULL UNIQUE,
    code_digest     TEXT    NOT NULL,
    code_size       INTEGER NOT NULL CHECK (code_size >= 0),
    description     TEXT    NOT NULL,
    labels          TEXT    NOT NULL,
    env             TEXT    NOT NULL,
    memory_mib      INTEGER NOT NULL,
    timeout_ms      INTEGER NOT NULL,
    max_concurrency INTEGER NOT NULL,
    next_version    INTEGER NOT NULL DEFAULT 1 CHECK (next_version >= 1),
    created_ns      INTEGER NOT NULL,
    updated_ns      INTEGER NOT NULL
) STRICT;

CREATE TABLE versions (
    function_id     INTEGER NOT NULL REFERENCES functions (id) ON DELETE CASCADE,
    version         INTEGER NOT NULL CHECK (version >= 1),
    code_digest     TEXT    NOT NULL,
    code_size       INTEGER NOT NULL CHECK (code_size >= 0),
    description     TEXT    NOT NULL,
    labels          TEXT    NOT NULL,
    env             TEXT    NOT NULL,
    memory_mib      INTEGER NOT NULL,
    timeout_ms      INTEGER NOT NULL,
    max_concurrency INTEGER NOT NULL,
    created_ns      INTEGER NOT NULL,
    PRIMARY KEY (function_id, version)
) STRICT, WITHOUT ROWID;

CREATE TABLE aliases (
    function_id     INTEGER NOT NULL REFERENCES functions (id) ON DELETE CASCADE,
    name            TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    routing_version INTEGER,
    routing_weight  REAL,
    created_ns      INTEGER NOT NULL,
    updated_ns      INTEGER NOT NULL,
    PRIMARY KEY (function_id, name),
    FOREIGN KEY (function_id, version) REFERENCES versions (function_id, version),
    FOREIGN KEY (function_id, routing_version) REFERENCES versions (function_id, version),
    CHECK ((routing_version IS NULL) = (routing_weight IS NULL))
) STRICT, WITHOUT ROWID;

CREATE TABLE logs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id      TEXT    NOT NULL,
    timestamp_ns    INTEGER NOT NULL,
    function        TEXT    NOT NULL,
    version         TEXT    NOT NULL,
    stream          TEXT    NOT NULL,
    message         TEXT    NOT NULL,
    truncated       INTEGER NOT NULL
) STRICT;
CREATE INDEX logs_by_function ON logs (function, id);
CREATE INDEX logs_by_request ON logs (request_id);

CREATE TABLE log_count (
    only INTEGER PRIMARY KEY CHECK (only = 0),
    n    INTEGER NOT NULL
) STRICT;
INSERT INTO log_count (only, n) VALUES (0, 0);
CREATE TRIGGER logs_counted_in AFTER INSERT ON logs
    BEGIN UPDATE log_count SET n = n + 1; END;
CREATE TRIGGER logs_counted_out AFTER DELETE ON logs
    BEGIN UPDATE log_count SET n = n - 1; END;
"#;

/// Warm capacity and instance reuse.
const SCHEMA_V2: &str = r#"
ALTER TABLE functions ADD COLUMN min_instances INTEGER NOT NULL DEFAULT 0;
ALTER TABLE functions ADD COLUMN max_requests_per_instance INTEGER NOT NULL DEFAULT 1;
ALTER TABLE versions ADD COLUMN min_instances INTEGER NOT NULL DEFAULT 0;
ALTER TABLE versions ADD COLUMN max_requests_per_instance INTEGER NOT NULL DEFAULT 1;
"#;

/// The asynchronous-invocation policy, as JSON (defaults fill absent keys).
const SCHEMA_V3: &str = r#"
ALTER TABLE functions ADD COLUMN async_policy TEXT NOT NULL DEFAULT '{}';
ALTER TABLE versions ADD COLUMN async_policy TEXT NOT NULL DEFAULT '{}';
"#;

/// Triggers (their definitions as JSON) and the positions of sources whose
/// broker keeps none.
const SCHEMA_V4: &str = r#"
CREATE TABLE triggers (
    name            TEXT    PRIMARY KEY,
    spec            TEXT    NOT NULL,
    created_ns      INTEGER NOT NULL,
    updated_ns      INTEGER NOT NULL
) STRICT;
CREATE TABLE trigger_cursors (
    name            TEXT    PRIMARY KEY REFERENCES triggers (name) ON DELETE CASCADE,
    cursor          TEXT    NOT NULL
) STRICT;
"#;

/// Data-plane access; functions and versions from before it are private.
const SCHEMA_V5: &str = r#"
ALTER TABLE functions ADD COLUMN invoke_auth TEXT NOT NULL DEFAULT 'private';
ALTER TABLE versions ADD COLUMN invoke_auth TEXT NOT NULL DEFAULT 'private';
"#;

/// The config columns shared by `functions` and `versions`, in the order
/// [`read_code_and_config`] expects.
const CONFIG_COLUMNS: &str = "code_digest, code_size, description, labels, env, memory_mib, \
     timeout_ms, max_concurrency, min_instances, max_requests_per_instance, async_policy, \
     invoke_auth";
/// How many columns [`CONFIG_COLUMNS`] names.
const CONFIG_COLUMN_COUNT: usize = 12;

/// Most qualifiers of one function remembered as missing; past it that
/// function's misses are forgotten and counted afresh.
pub const MAX_CACHED_MISSES_PER_FUNCTION: usize = 1024;

/// What the data plane learnt resolving one qualifier.
#[derive(Clone)]
enum Cached {
    Hit(Resolved),
    /// Not found, and why: the error is made again from it.
    Miss(Missing),
}

/// A qualifier's not-found, kept so that asking again costs no query.
#[derive(Clone)]
enum Missing {
    Version(u32),
    Alias(AliasName),
}

impl Missing {
    fn of(error: &StoreError) -> Option<Missing> {
        match error {
            StoreError::VersionNotFound { version, .. } => Some(Missing::Version(*version)),
            StoreError::AliasNotFound { alias, .. } => Some(Missing::Alias(alias.clone())),
            _ => None,
        }
    }

    fn error(&self, function: &FunctionName) -> StoreError {
        let function = function.clone();
        match self {
            Missing::Version(version) => StoreError::VersionNotFound {
                function,
                version: *version,
            },
            Missing::Alias(alias) => StoreError::AliasNotFound {
                function,
                alias: alias.clone(),
            },
        }
    }
}

/// Resolved (and missing) qualifiers of one function.
#[derive(Default)]
struct FunctionCache {
    entries: FastMap<Qualifier, Cached>,
    misses: usize,
}

/// The data plane's view of the store, in memory: every function's name,
/// so an unknown name is answered without a query, and what each
/// qualifier asked for resolved to. Bounded by what the store holds, plus
/// [`MAX_CACHED_MISSES_PER_FUNCTION`] misses per function.
#[derive(Default)]
struct ResolveCache {
    names: FastSet<FunctionName>,
    functions: FastMap<FunctionName, FunctionCache>,
}

impl ResolveCache {
    /// What is known of `name:qualifier`, if anything.
    fn get(
        &self,
        name: &FunctionName,
        qualifier: &Qualifier,
    ) -> Option<Result<Resolved, StoreError>> {
        if !self.names.contains(name) {
            return Some(Err(StoreError::FunctionNotFound(name.clone())));
        }
        match self.functions.get(name)?.entries.get(qualifier)? {
            Cached::Hit(resolved) => Some(Ok(resolved.clone())),
            Cached::Miss(missing) => Some(Err(missing.error(name))),
        }
    }

    /// Remembers what resolving `name:qualifier` gave, if it is worth it.
    fn fill(
        &mut self,
        name: &FunctionName,
        qualifier: &Qualifier,
        result: &Result<Resolved, StoreError>,
    ) {
        let cached = match result {
            Ok(resolved) => Cached::Hit(resolved.clone()),
            Err(StoreError::FunctionNotFound(_)) => {
                self.names.remove(name);
                return;
            }
            Err(e) => match Missing::of(e) {
                Some(missing) => Cached::Miss(missing),
                None => return,
            },
        };
        let function = self.functions.entry(name.clone()).or_default();
        if let Cached::Miss(_) = cached {
            if function.misses >= MAX_CACHED_MISSES_PER_FUNCTION {
                function.entries.retain(|_, c| matches!(c, Cached::Hit(_)));
                function.misses = 0;
            }
            function.misses += 1;
        }
        if let Some(Cached::Miss(_)) = function.entries.insert(qualifier.clone(), cached) {
            function.misses -= 1;
        }
    }
}

/// [`MetadataStore`] on an SQLite file. Cloning is cheap and shares the
/// connection and the cache.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<Connection>,
    /// Filled and invalidated only while `conn` is locked, so an entry is
    /// never older than the last write.
    cache: RwLock<ResolveCache>,
    log_retention: AtomicU64,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and its parent
    /// directories, and brings its schema up to date.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)?;
        }
        wisp_core::files::private_sqlite(path)?;
        Self::from_connection(Connection::open(path)?)
    }

    /// A store in memory, gone when dropped; for tests of other crates.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::from_connection(Connection::open_in_memory()?)
    }

    fn from_connection(mut conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
            return Err(StoreError::Database(format!(
                "could not switch the database to WAL mode (it is in `{mode}` mode)"
            )));
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
        migrate(&mut conn)?;
        let names = conn
            .prepare("SELECT name FROM functions")?
            .query_map([], |row| Ok(row.get::<_, Parsed<FunctionName>>(0)?.0))?
            .collect::<Result<_, _>>()?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                cache: RwLock::new(ResolveCache {
                    names,
                    functions: FastMap::default(),
                }),
                log_retention: AtomicU64::new(LOG_RETENTION_RECORDS),
            }),
        })
    }

    /// Changes how many log records are kept (default
    /// [`LOG_RETENTION_RECORDS`]); takes effect at the next append.
    pub fn set_log_retention(&self, records: u64) {
        self.inner.log_retention.store(records, Ordering::Relaxed);
    }

    /// Runs `f` on the connection, on the blocking pool.
    async fn with_conn<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Inner, &mut Connection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.lock_conn();
            f(&inner, &mut conn)
        })
        .await
        .map_err(|e| StoreError::Database(format!("store task failed: {e}")))?
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction and commits it if `f`
    /// succeeds. Drops `function`'s resolve cache before the connection is
    /// unlocked.
    async fn write<T, F>(&self, function: Option<FunctionName>, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        self.with_conn(move |inner, conn| {
            let result = (|| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let out = f(&tx)?;
                tx.commit()?;
                Ok(out)
            })();
            // Also on failure: cheap, and safe if a commit error left the
            // outcome unclear.
            if let Some(name) = &function {
                inner.invalidate(conn, name);
            }
            result
        })
        .await
    }

    /// How many qualifiers of `name` are cached.
    #[cfg(test)]
    fn cached(&self, name: &FunctionName) -> usize {
        self.inner
            .read_cache()
            .functions
            .get(name)
            .map_or(0, |f| f.entries.len())
    }
}

impl Inner {
    fn lock_conn(&self) -> MutexGuard<'_, Connection> {
        // A panic inside a transaction rolls it back while unwinding, so
        // the connection is still sound.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read_cache(&self) -> std::sync::RwLockReadGuard<'_, ResolveCache> {
        self.cache.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_cache(&self) -> std::sync::RwLockWriteGuard<'_, ResolveCache> {
        self.cache.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets what was resolved of `name` after a write to it, and
    /// whether it exists, read again from `conn` (which the caller holds);
    /// if that read fails, the name is kept (a name that is not there
    /// only costs a query).
    fn invalidate(&self, conn: &Connection, name: &FunctionName) {
        let exists = conn
            .prepare_cached("SELECT 1 FROM functions WHERE name = ?1")
            .and_then(|mut stmt| stmt.exists([name.as_str()]))
            .unwrap_or(true);
        let mut cache = self.write_cache();
        cache.functions.remove(name);
        if exists {
            cache.names.insert(name.clone());
        } else {
            cache.names.remove(name);
        }
    }
}

/// Applies the migrations the database has not seen, each in its own
/// transaction that also bumps `user_version`.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let target = MIGRATIONS.len() as i64;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Read inside the transaction, so a concurrent opener cannot apply
        // the same migration twice.
        let current: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if current > target {
            return Err(StoreError::Database(format!(
                "the database has schema version {current}, newer than this Wisp knows ({target}); use a newer Wisp"
            )));
        }
        if current == target {
            return Ok(());
        }
        tx.execute_batch(MIGRATIONS[current as usize])?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", current + 1))?;
        tx.commit()?;
        tracing::info!(version = current + 1, "migrated the metadata database");
    }
}

// ---------------------------------------------------------------------------
// Conversions

fn to_ns(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(if t.timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

fn from_ns(ns: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(ns)
}

/// A text column parsed with `FromStr`.
struct Parsed<T>(T);

impl<T> FromSql for Parsed<T>
where
    T: FromStr,
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

/// A `logs.stream` column.
struct Stream(LogStream);

impl FromSql for Stream {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value.as_str()? {
            "stdout" => Ok(Stream(LogStream::Stdout)),
            "stderr" => Ok(Stream(LogStream::Stderr)),
            "system" => Ok(Stream(LogStream::System)),
            other => Err(FromSqlError::Other(
                format!("unknown log stream `{other}`").into(),
            )),
        }
    }
}

/// A non-negative integer column read as `u64` (rusqlite reads `u64` only
/// with its `fallible_uint` feature; this keeps the conversion explicit).
struct Unsigned(u64);

impl FromSql for Unsigned {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let n = value.as_i64()?;
        u64::try_from(n)
            .map(Unsigned)
            .map_err(|_| FromSqlError::OutOfRange(n))
    }
}

/// A `u64` to store, or a validation error naming `field` if it does not
/// fit SQLite's signed 64-bit integers.
fn signed(value: u64, field: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| ValidationError::new(field, "is too large").into())
}

fn json(value: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Database(e.to_string()))
}

/// Whether `e` is an SQLite constraint violation with this extended code.
fn is_constraint(e: &rusqlite::Error, extended: std::ffi::c_int) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == extended)
}

// ---------------------------------------------------------------------------
// Row readers

/// Reads the [`CONFIG_COLUMNS`] starting at column `i`.
fn read_code_and_config(
    row: &Row<'_>,
    i: usize,
) -> rusqlite::Result<(Digest, u64, FunctionConfig)> {
    let Parsed(digest) = row.get(i)?;
    let Unsigned(size) = row.get(i + 1)?;
    let config = FunctionConfig {
        description: row.get(i + 2)?,
        labels: row.get::<_, Json<_>>(i + 3)?.0,
        env: row.get::<_, Json<_>>(i + 4)?.0,
        memory_mib: row.get(i + 5)?,
        timeout_ms: row.get::<_, Unsigned>(i + 6)?.0,
        max_concurrency: row.get(i + 7)?,
        min_instances: row.get(i + 8)?,
        max_requests_per_instance: row.get(i + 9)?,
        async_policy: row.get::<_, Json<_>>(i + 10)?.0,
        invoke_auth: row.get::<_, Parsed<_>>(i + 11)?.0,
    };
    Ok((digest, size, config))
}

/// A `functions` row.
struct LatestRow {
    id: i64,
    next_version: u32,
    latest: FunctionVersion,
}

fn load_latest(conn: &Connection, name: &FunctionName) -> Result<Option<LatestRow>, StoreError> {
    let sql = format!(
        "SELECT id, next_version, {CONFIG_COLUMNS}, created_ns, updated_ns
         FROM functions WHERE name = ?1"
    );
    let row = conn
        .prepare_cached(&sql)?
        .query_row([name.as_str()], |row| {
            let (code_digest, code_size, config) = read_code_and_config(row, 2)?;
            Ok(LatestRow {
                id: row.get(0)?,
                next_version: row.get(1)?,
                latest: FunctionVersion {
                    name: name.clone(),
                    version: VersionId::Latest,
                    code_digest,
                    code_size,
                    config,
                    created_at: from_ns(row.get(2 + CONFIG_COLUMN_COUNT)?),
                    updated_at: from_ns(row.get(3 + CONFIG_COLUMN_COUNT)?),
                },
            })
        })
        .optional()?;
    Ok(row)
}

fn require_latest(conn: &Connection, name: &FunctionName) -> Result<LatestRow, StoreError> {
    load_latest(conn, name)?.ok_or_else(|| StoreError::FunctionNotFound(name.clone()))
}

fn function_id(conn: &Connection, name: &FunctionName) -> Result<i64, StoreError> {
    conn.prepare_cached("SELECT id FROM functions WHERE name = ?1")?
        .query_row([name.as_str()], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::FunctionNotFound(name.clone()))
}

fn version_from_row(name: &FunctionName, row: &Row<'_>) -> rusqlite::Result<FunctionVersion> {
    let (code_digest, code_size, config) = read_code_and_config(row, 1)?;
    let created_at = from_ns(row.get(1 + CONFIG_COLUMN_COUNT)?);
    Ok(FunctionVersion {
        name: name.clone(),
        version: VersionId::Published(row.get(0)?),
        code_digest,
        code_size,
        config,
        created_at,
        updated_at: created_at,
    })
}

fn load_versions(
    conn: &Connection,
    id: i64,
    name: &FunctionName,
) -> Result<Vec<FunctionVersion>, StoreError> {
    let sql = format!(
        "SELECT version, {CONFIG_COLUMNS}, created_ns FROM versions
         WHERE function_id = ?1 ORDER BY version"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let versions = stmt
        .query_map([id], |row| version_from_row(name, row))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(versions)
}

fn load_version(
    conn: &Connection,
    id: i64,
    name: &FunctionName,
    version: u32,
) -> Result<Option<FunctionVersion>, StoreError> {
    let sql = format!(
        "SELECT version, {CONFIG_COLUMNS}, created_ns FROM versions
         WHERE function_id = ?1 AND version = ?2"
    );
    let v = conn
        .prepare_cached(&sql)?
        .query_row(params![id, version], |row| version_from_row(name, row))
        .optional()?;
    Ok(v)
}

fn require_version(
    conn: &Connection,
    id: i64,
    name: &FunctionName,
    version: u32,
) -> Result<FunctionVersion, StoreError> {
    load_version(conn, id, name, version)?.ok_or_else(|| StoreError::VersionNotFound {
        function: name.clone(),
        version,
    })
}

fn newest_version(
    conn: &Connection,
    id: i64,
    name: &FunctionName,
) -> Result<Option<FunctionVersion>, StoreError> {
    let sql = format!(
        "SELECT version, {CONFIG_COLUMNS}, created_ns FROM versions
         WHERE function_id = ?1 ORDER BY version DESC LIMIT 1"
    );
    let v = conn
        .prepare_cached(&sql)?
        .query_row([id], |row| version_from_row(name, row))
        .optional()?;
    Ok(v)
}

const ALIAS_COLUMNS: &str =
    "name, version, routing_version, routing_weight, created_ns, updated_ns";

fn alias_from_row(function: &FunctionName, row: &Row<'_>) -> rusqlite::Result<Alias> {
    let routing_version: Option<u32> = row.get(2)?;
    let routing_weight: Option<f64> = row.get(3)?;
    Ok(Alias {
        function: function.clone(),
        name: row.get::<_, Parsed<AliasName>>(0)?.0,
        version: row.get(1)?,
        routing: routing_version
            .zip(routing_weight)
            .map(|(version, weight)| AliasRouting { version, weight }),
        created_at: from_ns(row.get(4)?),
        updated_at: from_ns(row.get(5)?),
    })
}

fn load_aliases(
    conn: &Connection,
    id: i64,
    function: &FunctionName,
) -> Result<Vec<Alias>, StoreError> {
    let sql = format!("SELECT {ALIAS_COLUMNS} FROM aliases WHERE function_id = ?1 ORDER BY name");
    let mut stmt = conn.prepare_cached(&sql)?;
    let aliases = stmt
        .query_map([id], |row| alias_from_row(function, row))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(aliases)
}

fn load_alias(
    conn: &Connection,
    id: i64,
    function: &FunctionName,
    alias: &AliasName,
) -> Result<Option<Alias>, StoreError> {
    let sql = format!("SELECT {ALIAS_COLUMNS} FROM aliases WHERE function_id = ?1 AND name = ?2");
    let a = conn
        .prepare_cached(&sql)?
        .query_row(params![id, alias.as_str()], |row| {
            alias_from_row(function, row)
        })
        .optional()?;
    Ok(a)
}

fn require_alias(
    conn: &Connection,
    id: i64,
    function: &FunctionName,
    alias: &AliasName,
) -> Result<Alias, StoreError> {
    load_alias(conn, id, function, alias)?.ok_or_else(|| StoreError::AliasNotFound {
        function: function.clone(),
        alias: alias.clone(),
    })
}

fn load_function(conn: &Connection, name: &FunctionName) -> Result<Function, StoreError> {
    let row = require_latest(conn, name)?;
    let published_versions = conn
        .prepare_cached("SELECT version FROM versions WHERE function_id = ?1 ORDER BY version")?
        .query_map([row.id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Function {
        latest: row.latest,
        published_versions,
        aliases: load_aliases(conn, row.id, name)?,
    })
}

// ---------------------------------------------------------------------------
// Writes (each runs inside one transaction)

fn put_function_tx(
    tx: &Transaction<'_>,
    name: &FunctionName,
    input: &FunctionInput,
    code_size: u64,
    mode: WriteMode,
) -> Result<(Function, bool), StoreError> {
    if let Some(given) = &input.name
        && given != name.as_str()
    {
        return Err(ValidationError::new("name", "does not match the name in the path").into());
    }
    let digest = input.digest()?;
    let existing = load_latest(tx, name)?;
    let now = to_ns(Utc::now());

    let (id, digest, code_size, config, created) = match mode {
        WriteMode::Create | WriteMode::Replace => {
            let digest =
                digest.ok_or_else(|| ValidationError::new("code_digest", "is required"))?;
            let config = input.config_over(&FunctionConfig::default())?;
            match existing {
                Some(_) if mode == WriteMode::Create => {
                    return Err(StoreError::AlreadyExists(format!("function `{name}`")));
                }
                Some(row) => (Some(row.id), digest, code_size, config, false),
                None => (None, digest, code_size, config, true),
            }
        }
        WriteMode::Patch => {
            let row = existing.ok_or_else(|| StoreError::FunctionNotFound(name.clone()))?;
            let config = input.config_over(&row.latest.config)?;
            let (digest, code_size) = match digest {
                Some(d) => (d, code_size),
                None => (row.latest.code_digest, row.latest.code_size),
            };
            (Some(row.id), digest, code_size, config, false)
        }
    };

    let labels = json(&config.labels)?;
    let env = json(&config.env)?;
    match id {
        Some(id) => {
            tx.prepare_cached(
                "UPDATE functions SET code_digest = ?2, code_size = ?3, description = ?4,
                    labels = ?5, env = ?6, memory_mib = ?7, timeout_ms = ?8,
                    max_concurrency = ?9, min_instances = ?10,
                    max_requests_per_instance = ?11, async_policy = ?13, updated_ns = ?12,
                    invoke_auth = ?14
                 WHERE id = ?1",
            )?
            .execute(params![
                id,
                digest.to_string(),
                signed(code_size, "code_digest")?,
                config.description,
                labels,
                env,
                config.memory_mib,
                signed(config.timeout_ms, "timeout_ms")?,
                config.max_concurrency,
                config.min_instances,
                config.max_requests_per_instance,
                now,
                json(&config.async_policy)?,
                config.invoke_auth.as_str(),
            ])?;
        }
        None => {
            let sql = format!(
                "INSERT INTO functions (name, {CONFIG_COLUMNS}, created_ns, updated_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?14)"
            );
            tx.prepare_cached(&sql)?
                .execute(params![
                    name.as_str(),
                    digest.to_string(),
                    signed(code_size, "code_digest")?,
                    config.description,
                    labels,
                    env,
                    config.memory_mib,
                    signed(config.timeout_ms, "timeout_ms")?,
                    config.max_concurrency,
                    config.min_instances,
                    config.max_requests_per_instance,
                    json(&config.async_policy)?,
                    config.invoke_auth.as_str(),
                    now,
                ])
                .map_err(|e| {
                    if is_constraint(&e, rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE) {
                        StoreError::AlreadyExists(format!("function `{name}`"))
                    } else {
                        e.into()
                    }
                })?;
        }
    }
    Ok((load_function(tx, name)?, created))
}

fn publish_tx(
    tx: &Transaction<'_>,
    name: &FunctionName,
) -> Result<(FunctionVersion, bool), StoreError> {
    let row = require_latest(tx, name)?;
    if let Some(newest) = newest_version(tx, row.id, name)?
        && newest.code_digest == row.latest.code_digest
        && newest.config == row.latest.config
    {
        return Ok((newest, false));
    }
    let number = row.next_version;
    let next = number.checked_add(1).ok_or_else(|| {
        StoreError::LimitReached(format!("function `{name}` has used up its version numbers"))
    })?;
    let latest = &row.latest;
    let sql = format!(
        "INSERT INTO versions (function_id, version, {CONFIG_COLUMNS}, created_ns)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
    );
    tx.prepare_cached(&sql)?.execute(params![
        row.id,
        number,
        latest.code_digest.to_string(),
        signed(latest.code_size, "code_digest")?,
        latest.config.description,
        json(&latest.config.labels)?,
        json(&latest.config.env)?,
        latest.config.memory_mib,
        signed(latest.config.timeout_ms, "timeout_ms")?,
        latest.config.max_concurrency,
        latest.config.min_instances,
        latest.config.max_requests_per_instance,
        json(&latest.config.async_policy)?,
        latest.config.invoke_auth.as_str(),
        to_ns(Utc::now()),
    ])?;
    tx.prepare_cached("UPDATE functions SET next_version = ?2 WHERE id = ?1")?
        .execute(params![row.id, next])?;
    Ok((require_version(tx, row.id, name, number)?, true))
}

fn delete_version_tx(
    tx: &Transaction<'_>,
    name: &FunctionName,
    version: u32,
) -> Result<(), StoreError> {
    let id = function_id(tx, name)?;
    require_version(tx, id, name, version)?;
    let user: Option<Parsed<AliasName>> = tx
        .prepare_cached(
            "SELECT name FROM aliases
             WHERE function_id = ?1 AND (version = ?2 OR routing_version = ?2)
             ORDER BY name LIMIT 1",
        )?
        .query_row(params![id, version], |r| r.get(0))
        .optional()?;
    if let Some(Parsed(alias)) = user {
        return Err(StoreError::VersionInUse {
            function: name.clone(),
            version,
            alias,
        });
    }
    tx.prepare_cached("DELETE FROM versions WHERE function_id = ?1 AND version = ?2")?
        .execute(params![id, version])?;
    Ok(())
}

/// Checks an alias's targets: the routing is sane and both versions exist.
fn check_alias_targets(
    conn: &Connection,
    id: i64,
    name: &FunctionName,
    version: u32,
    routing: Option<&AliasRouting>,
) -> Result<(), StoreError> {
    if let Some(r) = routing {
        if r.version == version {
            return Err(ValidationError::new(
                "routing.version",
                "must differ from the alias's main version",
            )
            .into());
        }
        if !r.weight.is_finite() || !(0.0..=1.0).contains(&r.weight) {
            return Err(
                ValidationError::new("routing.weight", "must be a number from 0.0 to 1.0").into(),
            );
        }
    }
    let targets = std::iter::once(("version", version))
        .chain(routing.map(|r| ("routing.version", r.version)));
    for (field, v) in targets {
        if load_version(conn, id, name, v)?.is_none() {
            return Err(ValidationError::new(
                field,
                format!("function `{name}` has no version {v}"),
            )
            .into());
        }
    }
    Ok(())
}

fn create_alias_tx(
    tx: &Transaction<'_>,
    name: &FunctionName,
    alias: &AliasName,
    version: u32,
    routing: Option<AliasRouting>,
) -> Result<Alias, StoreError> {
    let id = function_id(tx, name)?;
    let exists = || StoreError::AlreadyExists(format!("alias `{alias}` of `{name}`"));
    if load_alias(tx, id, name, alias)?.is_some() {
        return Err(exists());
    }
    let count: i64 = tx
        .prepare_cached("SELECT COUNT(*) FROM aliases WHERE function_id = ?1")?
        .query_row([id], |r| r.get(0))?;
    if count >= MAX_ALIASES_PER_FUNCTION as i64 {
        return Err(StoreError::LimitReached(format!(
            "function `{name}` already has {count} aliases, the most allowed \
             ({MAX_ALIASES_PER_FUNCTION}); delete one before creating another"
        )));
    }
    check_alias_targets(tx, id, name, version, routing.as_ref())?;
    let now = to_ns(Utc::now());
    tx.prepare_cached(
        "INSERT INTO aliases (function_id, name, version, routing_version, routing_weight,
            created_ns, updated_ns)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
    )?
    .execute(params![
        id,
        alias.as_str(),
        version,
        routing.map(|r| r.version),
        routing.map(|r| r.weight),
        now,
    ])
    .map_err(|e| {
        if is_constraint(&e, rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY) {
            exists()
        } else {
            e.into()
        }
    })?;
    require_alias(tx, id, name, alias)
}

fn update_alias_tx(
    tx: &Transaction<'_>,
    name: &FunctionName,
    alias: &AliasName,
    version: u32,
    routing: Option<AliasRouting>,
) -> Result<Alias, StoreError> {
    let id = function_id(tx, name)?;
    require_alias(tx, id, name, alias)?;
    check_alias_targets(tx, id, name, version, routing.as_ref())?;
    tx.prepare_cached(
        "UPDATE aliases SET version = ?3, routing_version = ?4, routing_weight = ?5,
            updated_ns = ?6
         WHERE function_id = ?1 AND name = ?2",
    )?
    .execute(params![
        id,
        alias.as_str(),
        version,
        routing.map(|r| r.version),
        routing.map(|r| r.weight),
        to_ns(Utc::now()),
    ])?;
    require_alias(tx, id, name, alias)
}

fn append_logs_tx(
    tx: &Transaction<'_>,
    records: &[NewLogRecord],
    retention: u64,
) -> Result<(), StoreError> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO logs (request_id, timestamp_ns, function, version, stream, message, truncated)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for r in records {
        insert.execute(params![
            r.request_id,
            to_ns(r.timestamp),
            r.function.as_str(),
            r.version.to_string(),
            r.stream.as_str(),
            r.message,
            r.truncated,
        ])?;
    }
    let count: i64 = tx.query_row("SELECT n FROM log_count", [], |r| r.get(0))?;
    let excess = count.saturating_sub(i64::try_from(retention).unwrap_or(i64::MAX));
    if excess > 0 {
        tx.prepare_cached(
            "DELETE FROM logs WHERE id IN (SELECT id FROM logs ORDER BY id LIMIT ?1)",
        )?
        .execute([excess])?;
    }
    Ok(())
}

fn query_logs_conn(
    conn: &Connection,
    name: &FunctionName,
    query: &LogQuery,
) -> Result<LogPage, StoreError> {
    let after = query.after.unwrap_or(0);
    let limit = match query.limit {
        0 => MAX_LOG_QUERY_LIMIT,
        n => n.min(MAX_LOG_QUERY_LIMIT),
    };
    let mut sql = String::from(
        "SELECT id, request_id, timestamp_ns, function, version, stream, message, truncated
         FROM logs WHERE function = ? AND id > ?",
    );
    let mut args = vec![
        Value::Text(name.as_str().to_string()),
        Value::Integer(after),
    ];
    if let Some(request_id) = &query.request_id {
        sql.push_str(" AND request_id = ?");
        args.push(Value::Text(request_id.clone()));
    }
    if let Some(since) = query.since {
        sql.push_str(" AND timestamp_ns >= ?");
        args.push(Value::Integer(to_ns(since)));
    }
    sql.push_str(" ORDER BY id LIMIT ?");
    args.push(Value::Integer(limit.into()));

    let mut stmt = conn.prepare_cached(&sql)?;
    let records: Vec<LogRecord> = stmt
        .query_map(rusqlite::params_from_iter(args), |row| {
            Ok(LogRecord {
                id: row.get(0)?,
                request_id: row.get(1)?,
                timestamp: from_ns(row.get(2)?),
                function: row.get::<_, Parsed<FunctionName>>(3)?.0,
                version: row.get::<_, Parsed<VersionId>>(4)?.0,
                stream: row.get::<_, Stream>(5)?.0,
                message: row.get(6)?,
                truncated: row.get(7)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let next_after = records.last().map_or(after, |r| r.id);
    Ok(LogPage {
        records,
        next_after,
    })
}

fn deployment(version: FunctionVersion) -> Arc<Deployment> {
    Arc::new(Deployment {
        function: version.name,
        version: version.version,
        code_digest: version.code_digest,
        config: version.config,
    })
}

fn resolve_conn(
    conn: &Connection,
    name: &FunctionName,
    qualifier: &Qualifier,
) -> Result<Resolved, StoreError> {
    let row = require_latest(conn, name)?;
    let resolved = match qualifier {
        Qualifier::Latest => Resolved {
            primary: deployment(row.latest),
            secondary: None,
        },
        Qualifier::Version(n) => Resolved {
            primary: deployment(require_version(conn, row.id, name, *n)?),
            secondary: None,
        },
        Qualifier::Alias(a) => {
            let alias = require_alias(conn, row.id, name, a)?;
            let primary = deployment(require_version(conn, row.id, name, alias.version)?);
            let secondary = match alias.routing {
                Some(r) => Some((
                    deployment(require_version(conn, row.id, name, r.version)?),
                    r.weight,
                )),
                None => None,
            };
            Resolved { primary, secondary }
        }
    };
    Ok(resolved)
}

#[async_trait::async_trait]
impl MetadataStore for SqliteStore {
    async fn put_function(
        &self,
        name: FunctionName,
        input: &FunctionInput,
        code_size: u64,
        mode: WriteMode,
    ) -> Result<(Function, bool), StoreError> {
        let input = input.clone();
        self.write(Some(name.clone()), move |tx| {
            put_function_tx(tx, &name, &input, code_size, mode)
        })
        .await
    }

    async fn get_function(&self, name: &FunctionName) -> Result<Function, StoreError> {
        let name = name.clone();
        self.with_conn(move |_, conn| load_function(conn, &name))
            .await
    }

    async fn warm_deployments(&self) -> Result<Vec<Arc<Deployment>>, StoreError> {
        self.with_conn(move |_, conn| {
            let sql = format!(
                "SELECT name, NULL, {CONFIG_COLUMNS} FROM functions WHERE min_instances > 0
                 UNION ALL
                 SELECT f.name, v.version, {} FROM versions v JOIN functions f ON f.id = v.function_id
                 WHERE v.min_instances > 0",
                CONFIG_COLUMNS
                    .split(", ")
                    .map(|c| format!("v.{}", c.trim()))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map([], |row| {
                let (code_digest, _, config) = read_code_and_config(row, 2)?;
                let version = match row.get::<_, Option<u32>>(1)? {
                    Some(n) => VersionId::Published(n),
                    None => VersionId::Latest,
                };
                Ok(Arc::new(Deployment {
                    function: row.get::<_, Parsed<FunctionName>>(0)?.0,
                    version,
                    code_digest,
                    config,
                }))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn code_digests(&self) -> Result<std::collections::HashSet<Digest>, StoreError> {
        self.with_conn(move |_, conn| {
            let mut stmt = conn.prepare(
                "SELECT code_digest FROM functions UNION SELECT code_digest FROM versions",
            )?;
            let rows = stmt.query_map([], |row| Ok(row.get::<_, Parsed<Digest>>(0)?.0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn list_functions(
        &self,
        selector: &[(String, String)],
    ) -> Result<Vec<FunctionVersion>, StoreError> {
        let selector = selector.to_vec();
        self.with_conn(move |_, conn| {
            let sql = format!(
                "SELECT name, {CONFIG_COLUMNS}, created_ns, updated_ns FROM functions ORDER BY name"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map([], |row| {
                let (code_digest, code_size, config) = read_code_and_config(row, 1)?;
                Ok(FunctionVersion {
                    name: row.get::<_, Parsed<FunctionName>>(0)?.0,
                    version: VersionId::Latest,
                    code_digest,
                    code_size,
                    config,
                    created_at: from_ns(row.get(1 + CONFIG_COLUMN_COUNT)?),
                    updated_at: from_ns(row.get(2 + CONFIG_COLUMN_COUNT)?),
                })
            })?;
            let mut out = Vec::new();
            for row in rows {
                let f = row?;
                if selector
                    .iter()
                    .all(|(k, v)| f.config.labels.get(k) == Some(v))
                {
                    out.push(f);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn delete_function(&self, name: &FunctionName) -> Result<(), StoreError> {
        let name = name.clone();
        self.write(Some(name.clone()), move |tx| {
            let deleted = tx
                .prepare_cached("DELETE FROM functions WHERE name = ?1")?
                .execute([name.as_str()])?;
            if deleted == 0 {
                return Err(StoreError::FunctionNotFound(name));
            }
            Ok(())
        })
        .await
    }

    async fn publish(&self, name: &FunctionName) -> Result<(FunctionVersion, bool), StoreError> {
        let name = name.clone();
        self.write(Some(name.clone()), move |tx| publish_tx(tx, &name))
            .await
    }

    async fn list_versions(&self, name: &FunctionName) -> Result<Vec<FunctionVersion>, StoreError> {
        let name = name.clone();
        self.with_conn(move |_, conn| {
            let id = function_id(conn, &name)?;
            load_versions(conn, id, &name)
        })
        .await
    }

    async fn get_version(
        &self,
        name: &FunctionName,
        version: u32,
    ) -> Result<FunctionVersion, StoreError> {
        let name = name.clone();
        self.with_conn(move |_, conn| {
            let id = function_id(conn, &name)?;
            require_version(conn, id, &name, version)
        })
        .await
    }

    async fn delete_version(&self, name: &FunctionName, version: u32) -> Result<(), StoreError> {
        let name = name.clone();
        self.write(Some(name.clone()), move |tx| {
            delete_version_tx(tx, &name, version)
        })
        .await
    }

    async fn create_alias(
        &self,
        name: &FunctionName,
        alias: &AliasName,
        version: u32,
        routing: Option<AliasRouting>,
    ) -> Result<Alias, StoreError> {
        let (name, alias) = (name.clone(), alias.clone());
        self.write(Some(name.clone()), move |tx| {
            create_alias_tx(tx, &name, &alias, version, routing)
        })
        .await
    }

    async fn update_alias(
        &self,
        name: &FunctionName,
        alias: &AliasName,
        version: u32,
        routing: Option<AliasRouting>,
    ) -> Result<Alias, StoreError> {
        let (name, alias) = (name.clone(), alias.clone());
        self.write(Some(name.clone()), move |tx| {
            update_alias_tx(tx, &name, &alias, version, routing)
        })
        .await
    }

    async fn delete_alias(&self, name: &FunctionName, alias: &AliasName) -> Result<(), StoreError> {
        let (name, alias) = (name.clone(), alias.clone());
        self.write(Some(name.clone()), move |tx| {
            let id = function_id(tx, &name)?;
            let deleted = tx
                .prepare_cached("DELETE FROM aliases WHERE function_id = ?1 AND name = ?2")?
                .execute(params![id, alias.as_str()])?;
            if deleted == 0 {
                return Err(StoreError::AliasNotFound {
                    function: name,
                    alias,
                });
            }
            Ok(())
        })
        .await
    }

    async fn get_alias(&self, name: &FunctionName, alias: &AliasName) -> Result<Alias, StoreError> {
        let (name, alias) = (name.clone(), alias.clone());
        self.with_conn(move |_, conn| {
            let id = function_id(conn, &name)?;
            require_alias(conn, id, &name, &alias)
        })
        .await
    }

    async fn list_aliases(&self, name: &FunctionName) -> Result<Vec<Alias>, StoreError> {
        let name = name.clone();
        self.with_conn(move |_, conn| {
            let id = function_id(conn, &name)?;
            load_aliases(conn, id, &name)
        })
        .await
    }

    fn resolve_cached(&self, name: &FunctionName, qualifier: &Qualifier) -> Option<Resolved> {
        self.inner.read_cache().get(name, qualifier)?.ok()
    }

    async fn resolve(
        &self,
        name: &FunctionName,
        qualifier: &Qualifier,
    ) -> Result<Resolved, StoreError> {
        if let Some(known) = self.inner.read_cache().get(name, qualifier) {
            return known;
        }
        let (name, qualifier) = (name.clone(), qualifier.clone());
        self.with_conn(move |inner, conn| {
            let resolved = resolve_conn(conn, &name, &qualifier);
            // Still holding the connection: no write can slip in between
            // the read and the fill.
            inner.write_cache().fill(&name, &qualifier, &resolved);
            resolved
        })
        .await
    }

    async fn append_logs(&self, records: Vec<NewLogRecord>) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let retention = self.inner.log_retention.load(Ordering::Relaxed);
        self.write(None, move |tx| append_logs_tx(tx, &records, retention))
            .await
    }

    async fn query_logs(
        &self,
        name: &FunctionName,
        query: LogQuery,
    ) -> Result<LogPage, StoreError> {
        let name = name.clone();
        self.with_conn(move |_, conn| query_logs_conn(conn, &name, &query))
            .await
    }
}

mod triggers;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tempfile::TempDir;
    use wisp_core::InvokeAuth;

    fn fname(s: &str) -> FunctionName {
        s.parse().unwrap()
    }

    fn aname(s: &str) -> AliasName {
        s.parse().unwrap()
    }

    fn digest(n: u8) -> String {
        Digest::of(&[n]).to_string()
    }

    fn labels(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn input(n: u8) -> FunctionInput {
        FunctionInput {
            code_digest: Some(digest(n)),
            ..Default::default()
        }
    }

    fn env_input(key: &str, value: &str) -> FunctionInput {
        FunctionInput {
            env: Some(labels(&[(key, value)])),
            ..Default::default()
        }
    }

    fn open() -> (TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("nested/dir/wisp.db")).unwrap();
        (dir, store)
    }

    async fn create(store: &SqliteStore, name: &str, n: u8) -> Function {
        let (f, created) = store
            .put_function(
                fname(name),
                &input(n),
                100 + u64::from(n),
                WriteMode::Create,
            )
            .await
            .unwrap();
        assert!(created);
        f
    }

    fn invalid_field(e: StoreError) -> (String, String) {
        match e {
            StoreError::Invalid(v) => (v.field, v.message),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    fn log(function: &str, request_id: &str, ts: DateTime<Utc>, message: &str) -> NewLogRecord {
        NewLogRecord {
            request_id: request_id.into(),
            timestamp: ts,
            function: fname(function),
            version: VersionId::Latest,
            stream: LogStream::Stdout,
            message: message.into(),
            truncated: false,
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn create_get_and_list_with_a_label_selector() {
        let (_dir, store) = open();
        let hello = fname("hello");

        let e = store
            .put_function(
                hello.clone(),
                &FunctionInput::default(),
                0,
                WriteMode::Create,
            )
            .await
            .unwrap_err();
        assert_eq!(
            invalid_field(e),
            ("code_digest".into(), "is required".into())
        );
        let e = store
            .put_function(
                hello.clone(),
                &FunctionInput {
                    name: Some("other".into()),
                    ..input(1)
                },
                0,
                WriteMode::Create,
            )
            .await
            .unwrap_err();
        assert_eq!(
            invalid_field(e),
            ("name".into(), "does not match the name in the path".into())
        );
        let e = store
            .put_function(
                hello.clone(),
                &FunctionInput {
                    memory_mib: Some(0),
                    ..input(1)
                },
                0,
                WriteMode::Create,
            )
            .await
            .unwrap_err();
        assert_eq!(invalid_field(e).0, "memory_mib");
        let e = store
            .put_function(
                hello.clone(),
                &FunctionInput {
                    code_digest: Some("sha256:nope".into()),
                    ..Default::default()
                },
                0,
                WriteMode::Create,
            )
            .await
            .unwrap_err();
        assert_eq!(invalid_field(e).0, "code_digest");
        assert!(matches!(
            store.get_function(&hello).await,
            Err(StoreError::FunctionNotFound(n)) if n == hello
        ));

        let full = FunctionInput {
            name: Some("hello".into()),
            code_digest: Some(digest(1)),
            description: Some("says hello".into()),
            labels: Some(labels(&[("team", "a"), ("tier", "web")])),
            env: Some(labels(&[("GREETING", "hi")])),
            memory_mib: Some(64),
            timeout_ms: Some(1234),
            max_concurrency: Some(7),
            min_instances: Some(2),
            max_requests_per_instance: Some(50),
            async_policy: Some(wisp_core::AsyncConfig {
                max_retries: 5,
                semantics: wisp_core::Semantics::AtMostOnce,
                ..Default::default()
            }),
            invoke_auth: Some(InvokeAuth::Public),
        };
        let (created, was_created) = store
            .put_function(hello.clone(), &full, 4242, WriteMode::Create)
            .await
            .unwrap();
        assert!(was_created);
        let latest = &created.latest;
        assert_eq!(latest.name, hello);
        assert_eq!(latest.version, VersionId::Latest);
        assert_eq!(latest.code_digest.to_string(), digest(1));
        assert_eq!(latest.code_size, 4242);
        assert_eq!(latest.config.description, "says hello");
        assert_eq!(latest.config.env, labels(&[("GREETING", "hi")]));
        assert_eq!(latest.config.memory_mib, 64);
        assert_eq!(latest.config.timeout_ms, 1234);
        assert_eq!(latest.config.max_concurrency, 7);
        assert_eq!(latest.config.min_instances, 2);
        assert_eq!(latest.config.max_requests_per_instance, 50);
        assert_eq!(latest.config.async_policy.max_retries, 5);
        assert_eq!(
            latest.config.async_policy.semantics,
            wisp_core::Semantics::AtMostOnce
        );
        assert_eq!(latest.config.invoke_auth, InvokeAuth::Public);
        assert_eq!(latest.created_at, latest.updated_at);
        assert!(created.published_versions.is_empty());
        assert!(created.aliases.is_empty());
        assert_eq!(store.get_function(&hello).await.unwrap(), created);

        let e = store
            .put_function(hello.clone(), &input(2), 1, WriteMode::Create)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::AlreadyExists(what) if what == "function `hello`"),
            "{e:?}"
        );

        // Defaults fill whatever a create leaves out.
        let other = create(&store, "another", 2).await;
        assert_eq!(other.latest.config, FunctionConfig::default());
        store
            .put_function(
                fname("beta"),
                &FunctionInput {
                    labels: Some(labels(&[("team", "a")])),
                    ..input(3)
                },
                1,
                WriteMode::Create,
            )
            .await
            .unwrap();

        let names = |list: Vec<FunctionVersion>| {
            list.into_iter()
                .map(|f| f.name.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(store.list_functions(&[]).await.unwrap()),
            ["another", "beta", "hello"]
        );
        let sel = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(store.list_functions(&sel(&[("team", "a")])).await.unwrap()),
            ["beta", "hello"]
        );
        assert_eq!(
            names(
                store
                    .list_functions(&sel(&[("team", "a"), ("tier", "web")]))
                    .await
                    .unwrap()
            ),
            ["hello"]
        );
        assert!(
            store
                .list_functions(&sel(&[("team", "b")]))
                .await
                .unwrap()
                .is_empty()
        );
        let listed = store
            .list_functions(&sel(&[("tier", "web")]))
            .await
            .unwrap();
        assert_eq!(listed, vec![created.latest]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn patch_keeps_and_replace_resets_absent_fields() {
        let (_dir, store) = open();
        let f = fname("f");
        let e = store
            .put_function(f.clone(), &env_input("A", "1"), 0, WriteMode::Patch)
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::FunctionNotFound(_)), "{e:?}");

        let original = FunctionInput {
            description: Some("d".into()),
            memory_mib: Some(256),
            env: Some(labels(&[("A", "1")])),
            ..input(1)
        };
        let (before, _) = store
            .put_function(f.clone(), &original, 11, WriteMode::Create)
            .await
            .unwrap();

        // Patch without a digest keeps code and size; other fields too.
        let (patched, created) = store
            .put_function(f.clone(), &env_input("B", "2"), 999, WriteMode::Patch)
            .await
            .unwrap();
        assert!(!created);
        let p = &patched.latest;
        assert_eq!(p.code_digest, before.latest.code_digest);
        assert_eq!(p.code_size, 11);
        assert_eq!(p.config.description, "d");
        assert_eq!(p.config.memory_mib, 256);
        assert_eq!(p.config.env, labels(&[("B", "2")]));
        assert_eq!(p.created_at, before.latest.created_at);
        assert!(p.updated_at > before.latest.updated_at);

        // Patch with a digest takes the new size.
        let (patched, _) = store
            .put_function(f.clone(), &input(2), 22, WriteMode::Patch)
            .await
            .unwrap();
        assert_eq!(patched.latest.code_digest.to_string(), digest(2));
        assert_eq!(patched.latest.code_size, 22);
        assert_eq!(patched.latest.config.memory_mib, 256);

        // A patch that fails validation changes nothing.
        let e = store
            .put_function(
                f.clone(),
                &FunctionInput {
                    timeout_ms: Some(0),
                    ..input(3)
                },
                33,
                WriteMode::Patch,
            )
            .await
            .unwrap_err();
        assert_eq!(invalid_field(e).0, "timeout_ms");
        assert_eq!(store.get_function(&f).await.unwrap(), patched);

        // Replace: absent fields go back to defaults, code is required.
        let e = store
            .put_function(f.clone(), &env_input("C", "3"), 0, WriteMode::Replace)
            .await
            .unwrap_err();
        assert_eq!(invalid_field(e).0, "code_digest");
        let (replaced, created) = store
            .put_function(f.clone(), &input(4), 44, WriteMode::Replace)
            .await
            .unwrap();
        assert!(!created);
        assert_eq!(replaced.latest.config, FunctionConfig::default());
        assert_eq!(replaced.latest.code_size, 44);
        assert_eq!(replaced.latest.created_at, before.latest.created_at);
        assert_eq!(store.get_function(&f).await.unwrap(), replaced);

        // Replace creates a missing function.
        let (new, created) = store
            .put_function(fname("g"), &input(5), 55, WriteMode::Replace)
            .await
            .unwrap();
        assert!(created);
        assert_eq!(new.latest.code_size, 55);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn warm_deployments_lists_every_version_with_min_instances() {
        let (_dir, store) = open();
        create(&store, "cold", 1).await;
        create(&store, "warm", 2).await;
        let warm = fname("warm");
        assert!(store.warm_deployments().await.unwrap().is_empty());
        let patch = FunctionInput {
            min_instances: Some(2),
            ..Default::default()
        };
        store
            .put_function(warm.clone(), &patch, 0, WriteMode::Patch)
            .await
            .unwrap();
        store.publish(&warm).await.unwrap();
        let mut got: Vec<(String, VersionId, u32)> = store
            .warm_deployments()
            .await
            .unwrap()
            .iter()
            .map(|d| (d.function.to_string(), d.version, d.config.min_instances))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("warm".to_string(), VersionId::Latest, 2),
                ("warm".to_string(), VersionId::Published(1), 2)
            ]
        );
        assert_eq!(
            store.warm_deployments().await.unwrap()[0]
                .code_digest
                .to_string(),
            digest(2)
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn publish_numbers_versions_and_skips_identical_snapshots() {
        let (_dir, store) = open();
        let f = fname("f");
        assert!(matches!(
            store.publish(&f).await,
            Err(StoreError::FunctionNotFound(_))
        ));
        create(&store, "f", 1).await;

        let (v1, created) = store.publish(&f).await.unwrap();
        assert!(created);
        assert_eq!(v1.version, VersionId::Published(1));
        assert_eq!(v1.code_digest.to_string(), digest(1));
        assert_eq!(v1.code_size, 101);
        assert_eq!(v1.created_at, v1.updated_at);

        // Nothing changed: the same version comes back.
        let (again, created) = store.publish(&f).await.unwrap();
        assert!(!created);
        assert_eq!(again, v1);

        // A config change is a new version even with the same code.
        store
            .put_function(f.clone(), &env_input("A", "1"), 0, WriteMode::Patch)
            .await
            .unwrap();
        let (v2, created) = store.publish(&f).await.unwrap();
        assert!(created);
        assert_eq!(v2.version, VersionId::Published(2));
        assert_eq!(v2.config.env, labels(&[("A", "1")]));
        // The snapshot is immutable: later patches do not touch it.
        store
            .put_function(f.clone(), &env_input("A", "changed"), 0, WriteMode::Patch)
            .await
            .unwrap();
        assert_eq!(store.get_version(&f, 2).await.unwrap(), v2);
        let (v3, _) = store.publish(&f).await.unwrap();
        assert_eq!(v3.version, VersionId::Published(3));

        assert_eq!(
            store.list_versions(&f).await.unwrap(),
            vec![v1.clone(), v2.clone(), v3.clone()]
        );
        assert_eq!(
            store.get_function(&f).await.unwrap().published_versions,
            [1, 2, 3]
        );

        // Deleting the newest does not free its number.
        store.delete_version(&f, 3).await.unwrap();
        assert!(matches!(
            store.get_version(&f, 3).await,
            Err(StoreError::VersionNotFound { version: 3, .. })
        ));
        assert!(matches!(
            store.delete_version(&f, 3).await,
            Err(StoreError::VersionNotFound { version: 3, .. })
        ));
        // Latest now differs from v2 (the newest left), so this publishes.
        let (v4, created) = store.publish(&f).await.unwrap();
        assert!(created);
        assert_eq!(v4.version, VersionId::Published(4));
        assert_eq!(
            store.get_function(&f).await.unwrap().published_versions,
            [1, 2, 4]
        );
        store.delete_version(&f, 4).await.unwrap();
        store.delete_version(&f, 2).await.unwrap();
        store.delete_version(&f, 1).await.unwrap();
        let (v5, created) = store.publish(&f).await.unwrap();
        assert!(created);
        assert_eq!(v5.version, VersionId::Published(5));
        assert!(matches!(
            store.list_versions(&fname("missing")).await,
            Err(StoreError::FunctionNotFound(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_publishes_get_distinct_numbers() {
        let (_dir, store) = open();
        let f = fname("f");
        create(&store, "f", 1).await;
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let (store, f) = (store.clone(), f.clone());
                tokio::spawn(async move {
                    store
                        .put_function(
                            f.clone(),
                            &env_input("N", &i.to_string()),
                            0,
                            WriteMode::Patch,
                        )
                        .await
                        .unwrap();
                    store.publish(&f).await.unwrap()
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let versions = store.get_function(&f).await.unwrap().published_versions;
        let expected: Vec<u32> = (1..=versions.len() as u32).collect();
        assert_eq!(versions, expected);
        assert!(!versions.is_empty());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn aliases_lifecycle_and_version_in_use() {
        let (_dir, store) = open();
        let f = fname("f");
        let prod = aname("prod");
        assert!(matches!(
            store.create_alias(&f, &prod, 1, None).await,
            Err(StoreError::FunctionNotFound(_))
        ));
        create(&store, "f", 1).await;
        store.publish(&f).await.unwrap();
        store
            .put_function(f.clone(), &input(2), 2, WriteMode::Patch)
            .await
            .unwrap();
        store.publish(&f).await.unwrap();
        store
            .put_function(f.clone(), &input(3), 3, WriteMode::Patch)
            .await
            .unwrap();
        store.publish(&f).await.unwrap();

        let e = store.create_alias(&f, &prod, 9, None).await.unwrap_err();
        assert_eq!(
            invalid_field(e),
            ("version".into(), "function `f` has no version 9".into())
        );
        let e = store
            .create_alias(
                &f,
                &prod,
                1,
                Some(AliasRouting {
                    version: 8,
                    weight: 0.5,
                }),
            )
            .await
            .unwrap_err();
        assert_eq!(
            invalid_field(e),
            (
                "routing.version".into(),
                "function `f` has no version 8".into()
            )
        );
        let e = store
            .create_alias(
                &f,
                &prod,
                1,
                Some(AliasRouting {
                    version: 2,
                    weight: f64::NAN,
                }),
            )
            .await
            .unwrap_err();
        assert_eq!(invalid_field(e).0, "routing.weight");
        assert!(store.list_aliases(&f).await.unwrap().is_empty());

        let created = store.create_alias(&f, &prod, 1, None).await.unwrap();
        assert_eq!(created.function, f);
        assert_eq!(created.name, prod);
        assert_eq!(created.version, 1);
        assert_eq!(created.routing, None);
        assert_eq!(created.created_at, created.updated_at);
        let e = store.create_alias(&f, &prod, 2, None).await.unwrap_err();
        assert!(
            matches!(&e, StoreError::AlreadyExists(what) if what == "alias `prod` of `f`"),
            "{e:?}"
        );

        let canary = AliasRouting {
            version: 3,
            weight: 0.25,
        };
        let beta = store
            .create_alias(&f, &aname("beta"), 2, Some(canary))
            .await
            .unwrap();
        assert_eq!(beta.routing, Some(canary));
        assert_eq!(store.get_alias(&f, &aname("beta")).await.unwrap(), beta);
        let names: Vec<_> = store
            .list_aliases(&f)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.name.to_string())
            .collect();
        assert_eq!(names, ["beta", "prod"]);
        assert_eq!(
            store.get_function(&f).await.unwrap().aliases,
            store.list_aliases(&f).await.unwrap()
        );

        // Version 2 is beta's primary; 3 is beta's routing target. The
        // error names the lowest alias using it.
        let e = store.delete_version(&f, 2).await.unwrap_err();
        assert!(
            matches!(&e, StoreError::VersionInUse { version: 2, alias, .. } if alias.as_str() == "beta"),
            "{e:?}"
        );
        let e = store.delete_version(&f, 3).await.unwrap_err();
        assert!(
            matches!(&e, StoreError::VersionInUse { version: 3, alias, .. } if alias.as_str() == "beta"),
            "{e:?}"
        );
        store.update_alias(&f, &prod, 3, None).await.unwrap();
        let e = store.delete_version(&f, 3).await.unwrap_err();
        assert!(
            matches!(&e, StoreError::VersionInUse { alias, .. } if alias.as_str() == "beta"),
            "{e:?}"
        );
        store.delete_version(&f, 1).await.unwrap();

        // Update: repoint, drop routing, keep created_at.
        let e = store
            .update_alias(&f, &aname("nope"), 2, None)
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::AliasNotFound { .. }), "{e:?}");
        let e = store
            .update_alias(&f, &aname("beta"), 1, None)
            .await
            .unwrap_err();
        assert_eq!(invalid_field(e).0, "version");
        let updated = store
            .update_alias(&f, &aname("beta"), 3, None)
            .await
            .unwrap();
        assert_eq!(updated.version, 3);
        assert_eq!(updated.routing, None);
        assert_eq!(updated.created_at, beta.created_at);
        assert!(updated.updated_at > beta.updated_at);
        store.delete_version(&f, 2).await.unwrap();

        // Delete.
        store.delete_alias(&f, &aname("beta")).await.unwrap();
        assert!(matches!(
            store.delete_alias(&f, &aname("beta")).await,
            Err(StoreError::AliasNotFound { .. })
        ));
        assert!(matches!(
            store.get_alias(&f, &aname("beta")).await,
            Err(StoreError::AliasNotFound { .. })
        ));
        store.delete_alias(&f, &prod).await.unwrap();
        store.delete_version(&f, 3).await.unwrap();
        assert!(store.list_aliases(&f).await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn alias_count_is_limited() {
        let (_dir, store) = open();
        let f = fname("f");
        create(&store, "f", 1).await;
        store.publish(&f).await.unwrap();
        for i in 0..MAX_ALIASES_PER_FUNCTION {
            store
                .create_alias(&f, &aname(&format!("a{i}")), 1, None)
                .await
                .unwrap();
        }
        let e = store
            .create_alias(&f, &aname("one-more"), 1, None)
            .await
            .unwrap_err();
        match e {
            StoreError::LimitReached(msg) => {
                assert!(msg.contains(&MAX_ALIASES_PER_FUNCTION.to_string()), "{msg}")
            }
            other => panic!("{other:?}"),
        }
        // Updating an existing alias is still allowed at the limit.
        store.update_alias(&f, &aname("a0"), 1, None).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn delete_function_cascades_and_a_new_function_starts_over() {
        let (_dir, store) = open();
        let f = fname("f");
        assert!(matches!(
            store.delete_function(&f).await,
            Err(StoreError::FunctionNotFound(_))
        ));
        create(&store, "f", 1).await;
        store.publish(&f).await.unwrap();
        store
            .put_function(f.clone(), &input(2), 2, WriteMode::Patch)
            .await
            .unwrap();
        store.publish(&f).await.unwrap();
        store
            .create_alias(
                &f,
                &aname("prod"),
                1,
                Some(AliasRouting {
                    version: 2,
                    weight: 0.5,
                }),
            )
            .await
            .unwrap();
        store
            .append_logs(vec![log("f", "r1", Utc::now(), "kept")])
            .await
            .unwrap();

        store.delete_function(&f).await.unwrap();
        assert!(matches!(
            store.get_function(&f).await,
            Err(StoreError::FunctionNotFound(_))
        ));
        assert!(matches!(
            store.list_aliases(&f).await,
            Err(StoreError::FunctionNotFound(_))
        ));
        assert!(store.list_functions(&[]).await.unwrap().is_empty());
        {
            let conn = store.inner.lock_conn();
            let count = |table: &str| -> i64 {
                conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
                    .unwrap()
            };
            assert_eq!(count("versions"), 0);
            assert_eq!(count("aliases"), 0);
        }
        // Logs outlive the function.
        let page = store.query_logs(&f, LogQuery::default()).await.unwrap();
        assert_eq!(page.records.len(), 1);

        let again = create(&store, "f", 3).await;
        assert!(again.published_versions.is_empty());
        assert!(again.aliases.is_empty());
        let (v, _) = store.publish(&f).await.unwrap();
        assert_eq!(v.version, VersionId::Published(1));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn resolve_latest_versions_and_aliases() {
        let (_dir, store) = open();
        let f = fname("f");
        assert!(matches!(
            store.resolve(&f, &Qualifier::Latest).await,
            Err(StoreError::FunctionNotFound(_))
        ));
        create(&store, "f", 1).await;
        let r = store.resolve(&f, &Qualifier::Latest).await.unwrap();
        assert_eq!(r.primary.function, f);
        assert_eq!(r.primary.version, VersionId::Latest);
        assert_eq!(r.primary.code_digest.to_string(), digest(1));
        assert!(r.secondary.is_none());

        store.publish(&f).await.unwrap();
        store
            .put_function(f.clone(), &input(2), 2, WriteMode::Patch)
            .await
            .unwrap();
        store.publish(&f).await.unwrap();

        let r = store.resolve(&f, &Qualifier::Version(1)).await.unwrap();
        assert_eq!(r.primary.version, VersionId::Published(1));
        assert_eq!(r.primary.code_digest.to_string(), digest(1));
        assert!(matches!(
            store.resolve(&f, &Qualifier::Version(7)).await,
            Err(StoreError::VersionNotFound { version: 7, .. })
        ));
        let prod = Qualifier::Alias(aname("prod"));
        assert!(matches!(
            store.resolve(&f, &prod).await,
            Err(StoreError::AliasNotFound { .. })
        ));

        store
            .create_alias(
                &f,
                &aname("prod"),
                1,
                Some(AliasRouting {
                    version: 2,
                    weight: 0.1,
                }),
            )
            .await
            .unwrap();
        let r = store.resolve(&f, &prod).await.unwrap();
        assert_eq!(r.primary.version, VersionId::Published(1));
        let (second, weight) = r.secondary.clone().unwrap();
        assert_eq!(second.version, VersionId::Published(2));
        assert_eq!(second.code_digest.to_string(), digest(2));
        assert_eq!(weight, 0.1);
        assert_eq!(r.pick(0.05).version, VersionId::Published(2));
        assert_eq!(r.pick(0.5).version, VersionId::Published(1));

        // Repointing the alias is seen at once.
        store
            .update_alias(&f, &aname("prod"), 2, None)
            .await
            .unwrap();
        let r = store.resolve(&f, &prod).await.unwrap();
        assert_eq!(r.primary.version, VersionId::Published(2));
        assert!(r.secondary.is_none());
        store.delete_alias(&f, &aname("prod")).await.unwrap();
        assert!(matches!(
            store.resolve(&f, &prod).await,
            Err(StoreError::AliasNotFound { .. })
        ));
        store.resolve(&f, &Qualifier::Version(1)).await.unwrap();
        store.delete_version(&f, 1).await.unwrap();
        assert!(matches!(
            store.resolve(&f, &Qualifier::Version(1)).await,
            Err(StoreError::VersionNotFound { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn resolve_cache_is_invalidated_by_writes() {
        let (_dir, store) = open();
        let f = fname("f");
        store
            .put_function(
                f.clone(),
                &FunctionInput {
                    env: Some(labels(&[("MODE", "old")])),
                    ..input(1)
                },
                1,
                WriteMode::Create,
            )
            .await
            .unwrap();
        assert!(store.resolve_cached(&f, &Qualifier::Latest).is_none());
        let r = store.resolve(&f, &Qualifier::Latest).await.unwrap();
        assert_eq!(r.primary.config.env["MODE"], "old");
        assert_eq!(store.cached(&f), 1);
        let hit = store.resolve_cached(&f, &Qualifier::Latest).unwrap();
        assert!(Arc::ptr_eq(&hit.primary, &r.primary));
        // Only the qualifier that was resolved is held.
        assert!(store.resolve_cached(&f, &Qualifier::Version(1)).is_none());

        store
            .put_function(f.clone(), &env_input("MODE", "new"), 0, WriteMode::Patch)
            .await
            .unwrap();
        assert_eq!(store.cached(&f), 0);
        assert!(store.resolve_cached(&f, &Qualifier::Latest).is_none());
        let r = store.resolve(&f, &Qualifier::Latest).await.unwrap();
        assert_eq!(r.primary.config.env["MODE"], "new");
        let hit = store.resolve_cached(&f, &Qualifier::Latest).unwrap();
        assert_eq!(hit.primary.config.env["MODE"], "new");

        // Other functions' entries survive a write to this one.
        create(&store, "g", 2).await;
        let g = fname("g");
        store.resolve(&g, &Qualifier::Latest).await.unwrap();
        store.publish(&f).await.unwrap();
        assert_eq!(store.cached(&f), 0);
        assert_eq!(store.cached(&g), 1);

        // A missing version is remembered as missing, and is no hit.
        assert!(store.resolve(&f, &Qualifier::Version(9)).await.is_err());
        assert_eq!(store.cached(&f), 1);
        assert!(store.resolve_cached(&f, &Qualifier::Version(9)).is_none());

        store.resolve(&f, &Qualifier::Latest).await.unwrap();
        store.delete_function(&f).await.unwrap();
        assert_eq!(store.cached(&f), 0);
        assert!(matches!(
            store.resolve(&f, &Qualifier::Latest).await,
            Err(StoreError::FunctionNotFound(_))
        ));

        // Recreated under the same name: the new code, not the old.
        create(&store, "f", 3).await;
        let r = store.resolve(&f, &Qualifier::Latest).await.unwrap();
        assert_eq!(r.primary.code_digest.to_string(), digest(3));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_cache_hit_does_not_touch_the_database() {
        let (_dir, store) = open();
        let f = fname("f");
        create(&store, "f", 1).await;
        let first = store.resolve(&f, &Qualifier::Latest).await.unwrap();

        // With the connection locked (by another thread), only a cache hit
        // can answer.
        let locked = Locked::new(&store);
        let hit = tokio::time::timeout(
            Duration::from_secs(5),
            store.resolve(&f, &Qualifier::Latest),
        )
        .await
        .expect("a cache hit must not wait for the connection")
        .unwrap();
        assert!(Arc::ptr_eq(&hit.primary, &first.primary));
        let cached = store.resolve_cached(&f, &Qualifier::Latest).unwrap();
        assert!(Arc::ptr_eq(&cached.primary, &first.primary));
        let miss = tokio::time::timeout(
            Duration::from_millis(200),
            store.resolve(&f, &Qualifier::Version(1)),
        )
        .await;
        assert!(miss.is_err(), "a miss must go to the database");
        locked.release();
    }

    /// The store's connection held by another thread until released.
    struct Locked {
        release: std::sync::mpsc::Sender<()>,
        holder: std::thread::JoinHandle<()>,
    }

    impl Locked {
        fn new(store: &SqliteStore) -> Locked {
            let inner = store.inner.clone();
            let (locked_tx, locked_rx) = std::sync::mpsc::channel();
            let (release, release_rx) = std::sync::mpsc::channel::<()>();
            let holder = std::thread::spawn(move || {
                let _conn = inner.lock_conn();
                locked_tx.send(()).unwrap();
                let _ = release_rx.recv();
            });
            locked_rx.recv().unwrap();
            Locked { release, holder }
        }

        fn release(self) {
            self.release.send(()).unwrap();
            self.holder.join().unwrap();
        }
    }

    /// Resolves with the connection locked: only what the cache knows
    /// can answer; `None` if it had to wait for the database.
    async fn resolve_locked(
        store: &SqliteStore,
        name: &str,
        qualifier: Qualifier,
    ) -> Option<Result<Resolved, StoreError>> {
        let locked = Locked::new(store);
        let answer = tokio::time::timeout(
            Duration::from_millis(200),
            store.resolve(&fname(name), &qualifier),
        )
        .await
        .ok();
        locked.release();
        answer
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn misses_are_answered_from_memory_until_a_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wisp.db");
        create(&SqliteStore::open(&path).unwrap(), "f", 1).await;
        // A store opened on it knows its functions' names from the start.
        let store = SqliteStore::open(&path).unwrap();

        // An unknown name never needs the database.
        let unknown = resolve_locked(&store, "nope", Qualifier::Latest).await;
        assert!(
            matches!(unknown, Some(Err(StoreError::FunctionNotFound(_)))),
            "{unknown:?}"
        );
        // A known function's missing version and alias do after the first time.
        for q in [Qualifier::Version(7), Qualifier::Alias(aname("prod"))] {
            assert!(
                resolve_locked(&store, "f", q.clone()).await.is_none(),
                "first {q:?}"
            );
            let first = store.resolve(&fname("f"), &q).await;
            let again = resolve_locked(&store, "f", q.clone()).await;
            assert_eq!(
                format!("{first:?}"),
                format!("{:?}", again.expect("a known miss is answered from memory")),
            );
        }
        assert!(
            store
                .resolve_cached(&fname("f"), &Qualifier::Version(7))
                .is_none()
        );

        // Writes make them real: a created function, a published version
        // and an alias resolve at once.
        create(&store, "nope", 2).await;
        store.publish(&fname("f")).await.unwrap();
        let created = store.resolve(&fname("nope"), &Qualifier::Latest).await;
        assert!(created.is_ok(), "{created:?}");
        let published = store.resolve(&fname("f"), &Qualifier::Version(1)).await;
        assert!(published.is_ok(), "{published:?}");
        // A deleted function is unknown again, without a query.
        store.delete_function(&fname("nope")).await.unwrap();
        let gone = resolve_locked(&store, "nope", Qualifier::Latest).await;
        assert!(
            matches!(gone, Some(Err(StoreError::FunctionNotFound(_)))),
            "{gone:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn misses_kept_per_function_are_bounded() {
        let (_dir, store) = open();
        create(&store, "f", 1).await;
        let f = fname("f");
        store.resolve(&f, &Qualifier::Latest).await.unwrap();
        for n in 0..(MAX_CACHED_MISSES_PER_FUNCTION as u32 * 3 + 7) {
            assert!(
                store
                    .resolve(&f, &Qualifier::Version(1000 + n))
                    .await
                    .is_err()
            );
            assert!(store.cached(&f) <= MAX_CACHED_MISSES_PER_FUNCTION + 1);
        }
        // The hit survives the misses being forgotten.
        assert!(store.resolve_cached(&f, &Qualifier::Latest).is_some());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn everything_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wisp.db");
        let f = fname("f");
        let (function, logs) = {
            let store = SqliteStore::open(&path).unwrap();
            store
                .put_function(
                    f.clone(),
                    &FunctionInput {
                        labels: Some(labels(&[("team", "a")])),
                        env: Some(labels(&[("K", "v")])),
                        description: Some("durable".into()),
                        ..input(1)
                    },
                    77,
                    WriteMode::Create,
                )
                .await
                .unwrap();
            store.publish(&f).await.unwrap();
            store
                .put_function(f.clone(), &input(2), 88, WriteMode::Patch)
                .await
                .unwrap();
            store.publish(&f).await.unwrap();
            store.delete_version(&f, 2).await.unwrap();
            store
                .create_alias(&f, &aname("prod"), 1, None)
                .await
                .unwrap();
            store
                .append_logs(vec![
                    log("f", "r1", Utc::now(), "one"),
                    log("f", "r2", Utc::now(), "two"),
                ])
                .await
                .unwrap();
            let logs = store.query_logs(&f, LogQuery::default()).await.unwrap();
            (store.get_function(&f).await.unwrap(), logs)
        };

        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.get_function(&f).await.unwrap(), function);
        assert_eq!(function.published_versions, [1]);
        assert_eq!(function.aliases.len(), 1);
        assert_eq!(
            store.query_logs(&f, LogQuery::default()).await.unwrap(),
            logs
        );
        // The version counter survived too.
        let (v, _) = store.publish(&f).await.unwrap();
        assert_eq!(v.version, VersionId::Published(3));
        let version: i64 = store
            .inner
            .lock_conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let mode: String = store
            .inner
            .lock_conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn invoke_auth_is_stored_and_snapshotted_by_publish() {
        let (_dir, store) = open();
        let f = fname("f");
        let made = create(&store, "f", 1).await;
        assert_eq!(made.latest.config.invoke_auth, InvokeAuth::Private);
        let public = FunctionInput {
            invoke_auth: Some(InvokeAuth::Public),
            ..Default::default()
        };
        store
            .put_function(f.clone(), &public, 0, WriteMode::Patch)
            .await
            .unwrap();
        let (v1, _) = store.publish(&f).await.unwrap();
        assert_eq!(v1.config.invoke_auth, InvokeAuth::Public);
        let private = FunctionInput {
            invoke_auth: Some(InvokeAuth::Private),
            ..Default::default()
        };
        store
            .put_function(f.clone(), &private, 0, WriteMode::Patch)
            .await
            .unwrap();
        // Only the access changed, and that is a new version.
        let (v2, new) = store.publish(&f).await.unwrap();
        assert!(new);
        assert_eq!(v2.config.invoke_auth, InvokeAuth::Private);
        assert_eq!(
            store.get_version(&f, 1).await.unwrap().config.invoke_auth,
            InvokeAuth::Public
        );
        let latest = store.get_function(&f).await.unwrap().latest;
        assert_eq!(latest.config.invoke_auth, InvokeAuth::Private);
        let resolved = store.resolve(&f, &Qualifier::Version(1)).await.unwrap();
        assert_eq!(resolved.primary.config.invoke_auth, InvokeAuth::Public);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn functions_from_before_invoke_auth_become_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wisp.db");
        let f = fname("old");
        {
            let store = SqliteStore::open(&path).unwrap();
            let public = FunctionInput {
                invoke_auth: Some(InvokeAuth::Public),
                ..input(1)
            };
            store
                .put_function(f.clone(), &public, 1, WriteMode::Create)
                .await
                .unwrap();
            store.publish(&f).await.unwrap();
        }
        // Back to the schema before the column existed.
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "ALTER TABLE functions DROP COLUMN invoke_auth;
                 ALTER TABLE versions DROP COLUMN invoke_auth;
                 PRAGMA user_version = 4;",
            )
            .unwrap();
        let store = SqliteStore::open(&path).unwrap();
        let function = store.get_function(&f).await.unwrap();
        assert_eq!(function.latest.config.invoke_auth, InvokeAuth::Private);
        assert_eq!(
            store.get_version(&f, 1).await.unwrap().config.invoke_auth,
            InvokeAuth::Private
        );
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wisp.db");
        drop(SqliteStore::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA user_version = 99")
            .unwrap();
        let e = SqliteStore::open(&path).unwrap_err();
        assert!(
            matches!(&e, StoreError::Database(m) if m.contains("schema version 99")),
            "{e:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bad_rows_are_errors_not_panics() {
        let (_dir, store) = open();
        let f = fname("f");
        create(&store, "f", 1).await;
        store
            .inner
            .lock_conn()
            .execute("UPDATE functions SET labels = 'not json'", [])
            .unwrap();
        assert!(matches!(
            store.get_function(&f).await,
            Err(StoreError::Database(_))
        ));
        assert!(matches!(
            store.list_functions(&[]).await,
            Err(StoreError::Database(_))
        ));
        store
            .inner
            .lock_conn()
            .execute(
                "UPDATE functions SET labels = '{}', code_digest = 'garbage'",
                [],
            )
            .unwrap();
        assert!(matches!(
            store.resolve(&f, &Qualifier::Latest).await,
            Err(StoreError::Database(_))
        ));
        store
            .append_logs(vec![log("f", "r", Utc::now(), "x")])
            .await
            .unwrap();
        store
            .inner
            .lock_conn()
            .execute("UPDATE logs SET stream = 'weird'", [])
            .unwrap();
        assert!(matches!(
            store.query_logs(&f, LogQuery::default()).await,
            Err(StoreError::Database(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn logs_are_filtered_and_paged() {
        let (_dir, store) = open();
        let (f, g) = (fname("f"), fname("g"));
        let t0 = DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap();
        let t1 = t0 + chrono::Duration::seconds(10);
        let mut records = vec![
            log("f", "r1", t0, "f one"),
            NewLogRecord {
                stream: LogStream::Stderr,
                truncated: true,
                version: VersionId::Published(3),
                ..log("f", "r1", t0, "f one err")
            },
            log("g", "r2", t0, "g one"),
            NewLogRecord {
                stream: LogStream::System,
                ..log("f", "r3", t1, "f two")
            },
        ];
        store.append_logs(records.clone()).await.unwrap();
        store.append_logs(Vec::new()).await.unwrap();

        let all = store.query_logs(&f, LogQuery::default()).await.unwrap();
        let messages = |page: &LogPage| {
            page.records
                .iter()
                .map(|r| r.message.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(messages(&all), ["f one", "f one err", "f two"]);
        assert!(all.records.windows(2).all(|w| w[0].id < w[1].id));
        assert_eq!(all.next_after, all.records[2].id);
        let err = &all.records[1];
        assert_eq!(err.request_id, "r1");
        assert_eq!(err.timestamp, t0);
        assert_eq!(err.function, f);
        assert_eq!(err.version, VersionId::Published(3));
        assert_eq!(err.stream, LogStream::Stderr);
        assert!(err.truncated);
        assert_eq!(all.records[2].stream, LogStream::System);
        assert!(!all.records[0].truncated);

        let g_page = store.query_logs(&g, LogQuery::default()).await.unwrap();
        assert_eq!(messages(&g_page), ["g one"]);

        let by_request = store
            .query_logs(
                &f,
                LogQuery {
                    request_id: Some("r1".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(messages(&by_request), ["f one", "f one err"]);
        // The request id filter still only sees this function's records.
        let other = store
            .query_logs(
                &f,
                LogQuery {
                    request_id: Some("r2".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(other.records.is_empty());
        assert_eq!(other.next_after, 0);

        let since = store
            .query_logs(
                &f,
                LogQuery {
                    since: Some(t1),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(messages(&since), ["f two"]);
        let since_exact = store
            .query_logs(
                &f,
                LogQuery {
                    since: Some(t0),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(since_exact.records.len(), 3);

        // Paging with limit and after.
        let page1 = store
            .query_logs(
                &f,
                LogQuery {
                    limit: 2,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(messages(&page1), ["f one", "f one err"]);
        let page2 = store
            .query_logs(
                &f,
                LogQuery {
                    limit: 2,
                    after: Some(page1.next_after),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(messages(&page2), ["f two"]);
        let page3 = store
            .query_logs(
                &f,
                LogQuery {
                    limit: 2,
                    after: Some(page2.next_after),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(page3.records.is_empty());
        assert_eq!(page3.next_after, page2.next_after);

        // Following: new records show up after the cursor.
        records.truncate(1);
        records[0].message = "f three".into();
        store.append_logs(records).await.unwrap();
        let page4 = store
            .query_logs(
                &f,
                LogQuery {
                    after: Some(page3.next_after),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(messages(&page4), ["f three"]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn log_limit_is_clamped() {
        let (_dir, store) = open();
        let f = fname("f");
        let n = MAX_LOG_QUERY_LIMIT as usize + 5;
        let records = (0..n)
            .map(|i| log("f", &format!("r{i}"), Utc::now(), "x"))
            .collect();
        store.append_logs(records).await.unwrap();
        for limit in [0, MAX_LOG_QUERY_LIMIT + 1, u32::MAX] {
            let page = store
                .query_logs(
                    &f,
                    LogQuery {
                        limit,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            assert_eq!(page.records.len(), MAX_LOG_QUERY_LIMIT as usize, "{limit}");
        }
        let page = store
            .query_logs(
                &f,
                LogQuery {
                    limit: 1,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(page.records.len(), 1);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn logs_are_pruned_to_the_retention() {
        let (_dir, store) = open();
        store.set_log_retention(5);
        let f = fname("f");
        let batch = |range: std::ops::Range<u32>| {
            range
                .map(|i| log("f", &format!("r{i}"), Utc::now(), &i.to_string()))
                .collect::<Vec<_>>()
        };
        store.append_logs(batch(0..3)).await.unwrap();
        store.append_logs(batch(3..8)).await.unwrap();
        let page = store.query_logs(&f, LogQuery::default()).await.unwrap();
        let messages: Vec<_> = page.records.iter().map(|r| r.message.as_str()).collect();
        assert_eq!(messages, ["3", "4", "5", "6", "7"]);
        let first_id = page.records[0].id;

        // A batch bigger than the retention keeps only its newest records.
        store.append_logs(batch(8..20)).await.unwrap();
        let page = store.query_logs(&f, LogQuery::default()).await.unwrap();
        let messages: Vec<_> = page.records.iter().map(|r| r.message.as_str()).collect();
        assert_eq!(messages, ["15", "16", "17", "18", "19"]);
        // Ids keep growing; pruned ids are not reused.
        assert!(page.records[0].id > first_id);
        let count: i64 = store
            .inner
            .lock_conn()
            .query_row("SELECT n FROM log_count", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 5);

        // Pruning counts every function's records together.
        store
            .append_logs(vec![log("g", "x", Utc::now(), "g")])
            .await
            .unwrap();
        let page = store.query_logs(&f, LogQuery::default()).await.unwrap();
        assert_eq!(page.records.len(), 4);
        assert_eq!(page.records[0].message, "16");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn open_in_memory_works() {
        let store = SqliteStore::open_in_memory().unwrap();
        let start = Instant::now();
        create(&store, "f", 1).await;
        assert_eq!(store.list_functions(&[]).await.unwrap().len(), 1);
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}
