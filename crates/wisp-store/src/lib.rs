//! Where Wisp keeps what it must not lose: function metadata (the
//! [`MetadataStore`] interface, with the embedded SQLite backend in
//! [`sqlite`]) and uploaded components (the content-addressed
//! [`artifacts::ArtifactDir`]).
//!
//! Every write is committed (SQLite WAL, synchronous=FULL) before the call
//! returns, so an acknowledged change survives a kill -9.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wisp_store::StoreError> {
//! use wisp_store::{MetadataStore, WriteMode, sqlite::SqliteStore};
//! use wisp_core::FunctionInput;
//!
//! let store = SqliteStore::open("/var/lib/wisp/wisp.db")?;
//! let input = FunctionInput {
//!     name: Some("hello".into()),
//!     code_digest: Some(format!("sha256:{}", "0".repeat(64))),
//!     ..Default::default()
//! };
//! let (function, created) = store.put_function("hello".parse().unwrap(), &input, 123, WriteMode::Create).await?;
//! assert!(created);
//! # Ok(()) }
//! ```

pub mod artifacts;
pub mod sqlite;
pub mod triggers;

pub use triggers::{MAX_TRIGGERS, StoredTrigger, TriggerStore};

use chrono::{DateTime, Utc};
use std::sync::Arc;
use wisp_core::{
    Alias, AliasName, AliasRouting, Deployment, Digest, Function, FunctionInput, FunctionName,
    FunctionVersion, LogPage, LogStream, Qualifier, ValidationError, VersionId,
};

/// What went wrong in a store operation. Each variant maps to one API error code.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A field of the input is invalid.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// No function with that name.
    #[error("function `{0}` does not exist")]
    FunctionNotFound(FunctionName),
    /// No such published version.
    #[error("function `{function}` has no version {version}")]
    VersionNotFound {
        /// The function.
        function: FunctionName,
        /// The missing version.
        version: u32,
    },
    /// No such alias.
    #[error("function `{function}` has no alias `{alias}`")]
    AliasNotFound {
        /// The function.
        function: FunctionName,
        /// The missing alias.
        alias: AliasName,
    },
    /// The function or alias exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The version is the target of an alias.
    #[error(
        "version {version} of `{function}` is used by alias `{alias}`; point the alias elsewhere or delete it first"
    )]
    VersionInUse {
        /// The function.
        function: FunctionName,
        /// The version.
        version: u32,
        /// An alias that uses it.
        alias: AliasName,
    },
    /// `code_digest` names no uploaded artifact.
    #[error("no artifact {0} has been uploaded; upload it with POST /v1/artifacts first")]
    ArtifactNotFound(String),
    /// No trigger with that name.
    #[error("trigger `{0}` does not exist")]
    TriggerNotFound(String),
    /// A limit on the number of things was reached.
    #[error("{0}")]
    LimitReached(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(String),
    /// The file system failed.
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

/// How `put_function` treats an existing or missing function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Create; fail with `AlreadyExists` if the function exists. `code_digest` is required.
    Create,
    /// Create or replace `latest`; fields not given take their defaults. `code_digest` is required.
    Replace,
    /// Change the given fields of `latest`; fail with `FunctionNotFound` if missing.
    Patch,
}

/// Where a qualifier points, resolved to immutable deployments.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The version that gets `1 - weight` of the traffic (all of it without routing).
    pub primary: Arc<Deployment>,
    /// The second version of a weighted alias and its share.
    pub secondary: Option<(Arc<Deployment>, f64)>,
}

impl Resolved {
    /// Picks a deployment for one invocation; `roll` is uniform in `[0, 1)`.
    pub fn pick(&self, roll: f64) -> &Arc<Deployment> {
        match &self.secondary {
            Some((d, weight)) if roll < *weight => d,
            _ => &self.primary,
        }
    }
}

/// One stream of one invocation, to append to the log.
#[derive(Debug, Clone)]
pub struct NewLogRecord {
    /// Request id.
    pub request_id: String,
    /// When the invocation started.
    pub timestamp: DateTime<Utc>,
    /// Function.
    pub function: FunctionName,
    /// Version that ran.
    pub version: VersionId,
    /// Stream.
    pub stream: LogStream,
    /// Text.
    pub message: String,
    /// Whether output was cut at the cap.
    pub truncated: bool,
}

/// A logs query. Records come in id order.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Only this invocation.
    pub request_id: Option<String>,
    /// Only invocations that started at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only records with an id greater than this.
    pub after: Option<i64>,
    /// At most this many (capped by `wisp_core::limits::MAX_LOG_QUERY_LIMIT`).
    pub limit: u32,
}

/// Function metadata: `latest`, published versions, aliases and logs.
#[async_trait::async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// Creates, replaces or patches `latest` per `mode`. `code_size` is the
    /// size of the artifact named by `input.code_digest` (ignored if absent).
    /// Returns the function and whether it was created.
    async fn put_function(
        &self,
        name: FunctionName,
        input: &FunctionInput,
        code_size: u64,
        mode: WriteMode,
    ) -> Result<(Function, bool), StoreError>;
    /// One function.
    async fn get_function(&self, name: &FunctionName) -> Result<Function, StoreError>;
    /// `latest` of every function whose labels include all of `selector`, by name.
    async fn list_functions(
        &self,
        selector: &[(String, String)],
    ) -> Result<Vec<FunctionVersion>, StoreError>;
    /// Deletes a function with all its versions and aliases.
    async fn delete_function(&self, name: &FunctionName) -> Result<(), StoreError>;

    /// Snapshots `latest` as the next version number. If the newest
    /// published version already has the same code and config, returns it
    /// instead and `false`.
    async fn publish(&self, name: &FunctionName) -> Result<(FunctionVersion, bool), StoreError>;
    /// Published versions, ascending.
    async fn list_versions(&self, name: &FunctionName) -> Result<Vec<FunctionVersion>, StoreError>;
    /// One published version.
    async fn get_version(
        &self,
        name: &FunctionName,
        version: u32,
    ) -> Result<FunctionVersion, StoreError>;
    /// Deletes a published version; `VersionInUse` if an alias points at it.
    /// Version numbers are never reused.
    async fn delete_version(&self, name: &FunctionName, version: u32) -> Result<(), StoreError>;

    /// Creates an alias; the versions must exist.
    async fn create_alias(
        &self,
        name: &FunctionName,
        alias: &AliasName,
        version: u32,
        routing: Option<AliasRouting>,
    ) -> Result<Alias, StoreError>;
    /// Repoints an existing alias.
    async fn update_alias(
        &self,
        name: &FunctionName,
        alias: &AliasName,
        version: u32,
        routing: Option<AliasRouting>,
    ) -> Result<Alias, StoreError>;
    /// Deletes an alias.
    async fn delete_alias(&self, name: &FunctionName, alias: &AliasName) -> Result<(), StoreError>;
    /// One alias.
    async fn get_alias(&self, name: &FunctionName, alias: &AliasName) -> Result<Alias, StoreError>;
    /// A function's aliases, by name.
    async fn list_aliases(&self, name: &FunctionName) -> Result<Vec<Alias>, StoreError>;

    /// The resolution of a qualifier if the store holds it in memory, without
    /// waiting on anything: the data plane's fast path (one lookup, no
    /// future). `None` means ask [`MetadataStore::resolve`].
    fn resolve_cached(&self, _name: &FunctionName, _qualifier: &Qualifier) -> Option<Resolved> {
        None
    }

    /// Resolves a qualifier for the data plane. Served from memory after the
    /// first call; every write to the function invalidates it.
    async fn resolve(
        &self,
        name: &FunctionName,
        qualifier: &Qualifier,
    ) -> Result<Resolved, StoreError>;

    /// Every version, `latest` or published, whose `min_instances` is above
    /// zero: what the runtime warms at start.
    async fn warm_deployments(&self) -> Result<Vec<Arc<Deployment>>, StoreError>;

    /// Every code digest that a function's `latest` or a published version
    /// refers to: the artifacts that must be kept.
    async fn code_digests(&self) -> Result<std::collections::HashSet<Digest>, StoreError>;

    /// Appends log records in one transaction, then prunes the oldest
    /// records beyond the retention cap.
    async fn append_logs(&self, records: Vec<NewLogRecord>) -> Result<(), StoreError>;
    /// Reads a function's log records.
    async fn query_logs(&self, name: &FunctionName, query: LogQuery)
    -> Result<LogPage, StoreError>;
}
