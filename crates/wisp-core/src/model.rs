//! The resources of the control API (`/v1`), shared by the server and the client.

use crate::digest::Digest;
use crate::names::{AliasName, FunctionName};
use crate::spec::{FunctionConfig, ValidationError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use utoipa::ToSchema;

/// Which version of a function a record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VersionId {
    /// The mutable working copy.
    Latest,
    /// A published version.
    Published(u32),
}

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionId::Latest => f.write_str("latest"),
            VersionId::Published(n) => write!(f, "{n}"),
        }
    }
}

impl std::str::FromStr for VersionId {
    type Err = crate::names::NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse()? {
            crate::Qualifier::Latest => Ok(VersionId::Latest),
            crate::Qualifier::Version(n) => Ok(VersionId::Published(n)),
            crate::Qualifier::Alias(_) => Err(crate::names::NameError::Version),
        }
    }
}

impl Serialize for VersionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VersionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for VersionId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^(latest|[1-9][0-9]*)$"))
            .description(Some("`latest` or a published version number"))
            .into()
    }
}
impl ToSchema for VersionId {}

/// One version of a function: `latest` or a published, immutable snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FunctionVersion {
    /// The function's name.
    pub name: FunctionName,
    /// `latest` or the version number.
    pub version: VersionId,
    /// Digest of the component this version runs.
    pub code_digest: Digest,
    /// Size of the component in bytes.
    pub code_size: u64,
    /// The configuration.
    #[serde(flatten)]
    pub config: FunctionConfig,
    /// When this version (for `latest`: the function) was created.
    pub created_at: DateTime<Utc>,
    /// When this version last changed (a published version never does).
    pub updated_at: DateTime<Utc>,
}

/// A function: its `latest` state, its published versions and its aliases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Function {
    /// The mutable `latest` version.
    #[serde(flatten)]
    pub latest: FunctionVersion,
    /// Published version numbers, ascending.
    pub published_versions: Vec<u32>,
    /// The function's aliases.
    pub aliases: Vec<Alias>,
}

/// `GET /v1/functions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FunctionList {
    /// `latest` of every matching function, by name.
    pub functions: Vec<FunctionVersion>,
}

/// `GET /v1/functions/{name}/versions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VersionList {
    /// Published versions, ascending.
    pub versions: Vec<FunctionVersion>,
}

/// `GET /v1/functions/{name}/aliases`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AliasList {
    /// Aliases by name.
    pub aliases: Vec<Alias>,
}

/// A named pointer at a published version, optionally splitting traffic with
/// a second version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Alias {
    /// The function's name.
    pub function: FunctionName,
    /// The alias name.
    pub name: AliasName,
    /// The version that gets `1 - routing.weight` of the traffic.
    pub version: u32,
    /// Optional weighted split to a second version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<AliasRouting>,
    /// When the alias was created.
    pub created_at: DateTime<Utc>,
    /// When the alias last changed.
    pub updated_at: DateTime<Utc>,
}

/// Sends a share of an alias's traffic to a second version.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AliasRouting {
    /// The second version.
    pub version: u32,
    /// Share of invocations it gets, from 0.0 to 1.0.
    pub weight: f64,
}

/// Body of create (`POST /v1/functions`), replace (`PUT /v1/functions/{name}`)
/// and update (`PATCH /v1/functions/{name}`). Every field is optional in the
/// type so that each request can name what is missing; `name` and
/// `code_digest` are required to create.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionInput {
    /// The function's name (required by `POST`; must match the path if given elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Digest of an uploaded artifact (`POST /v1/artifacts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_digest: Option<String>,
    /// See [`FunctionConfig::description`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// See [`FunctionConfig::labels`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// See [`FunctionConfig::env`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// See [`FunctionConfig::memory_mib`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// See [`FunctionConfig::timeout_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// See [`FunctionConfig::max_concurrency`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// See [`FunctionConfig::min_instances`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_instances: Option<u32>,
    /// See [`FunctionConfig::max_requests_per_instance`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_instance: Option<u32>,
    /// See [`FunctionConfig::async_policy`] (replaced whole when given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_policy: Option<crate::spec::AsyncConfig>,
    /// See [`FunctionConfig::invoke_auth`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoke_auth: Option<crate::spec::InvokeAuth>,
}

impl FunctionInput {
    /// The config that results from applying the given fields over `base`,
    /// validated.
    pub fn config_over(&self, base: &FunctionConfig) -> Result<FunctionConfig, ValidationError> {
        let config = FunctionConfig {
            description: self
                .description
                .clone()
                .unwrap_or_else(|| base.description.clone()),
            labels: self.labels.clone().unwrap_or_else(|| base.labels.clone()),
            env: self.env.clone().unwrap_or_else(|| base.env.clone()),
            memory_mib: self.memory_mib.unwrap_or(base.memory_mib),
            timeout_ms: self.timeout_ms.unwrap_or(base.timeout_ms),
            max_concurrency: self.max_concurrency.unwrap_or(base.max_concurrency),
            min_instances: self.min_instances.unwrap_or(base.min_instances),
            max_requests_per_instance: self
                .max_requests_per_instance
                .unwrap_or(base.max_requests_per_instance),
            async_policy: self
                .async_policy
                .clone()
                .unwrap_or_else(|| base.async_policy.clone()),
            invoke_auth: self.invoke_auth.unwrap_or(base.invoke_auth),
        };
        config.validate()?;
        Ok(config)
    }

    /// The validated `code_digest`, if given.
    pub fn digest(&self) -> Result<Option<Digest>, ValidationError> {
        self.code_digest
            .as_deref()
            .map(|d| {
                d.parse()
                    .map_err(|e| ValidationError::new("code_digest", format!("{e}")))
            })
            .transpose()
    }

    /// The validated `name`, if given.
    pub fn function_name(&self) -> Result<Option<FunctionName>, ValidationError> {
        self.name
            .as_deref()
            .map(|n| {
                n.parse()
                    .map_err(|e| ValidationError::new("name", format!("{e}")))
            })
            .transpose()
    }
}

/// Body of alias create (`POST .../aliases`) and update (`PUT .../aliases/{alias}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AliasInput {
    /// The alias name (required by `POST`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The published version it points at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Optional weighted split to a second version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<AliasRouting>,
}

impl AliasInput {
    /// Checks the version and routing fields (not whether the versions exist).
    pub fn validate(&self) -> Result<(u32, Option<AliasRouting>), ValidationError> {
        let version = self
            .version
            .ok_or_else(|| ValidationError::new("version", "is required"))?;
        if version == 0 {
            return Err(ValidationError::new("version", "versions start at 1"));
        }
        if let Some(r) = &self.routing {
            if r.version == 0 {
                return Err(ValidationError::new(
                    "routing.version",
                    "versions start at 1",
                ));
            }
            if r.version == version {
                return Err(ValidationError::new(
                    "routing.version",
                    "must differ from the alias's main version",
                ));
            }
            if !r.weight.is_finite() || !(0.0..=1.0).contains(&r.weight) {
                return Err(ValidationError::new(
                    "routing.weight",
                    "must be a number from 0.0 to 1.0",
                ));
            }
        }
        Ok((version, self.routing))
    }
}

/// `POST /v1/artifacts`: what was stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ArtifactInfo {
    /// Digest to use as `code_digest`.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
}

/// Which output stream a log record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    /// The function's stdout.
    Stdout,
    /// The function's stderr.
    Stderr,
    /// A message from Wisp about the invocation (trap, timeout, ...).
    System,
}

impl LogStream {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
            LogStream::System => "system",
        }
    }
}

/// What one invocation wrote to one stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogRecord {
    /// Increasing id; pass the last one seen as `after` to page or follow.
    pub id: i64,
    /// The invocation's request id.
    pub request_id: String,
    /// When the invocation started.
    pub timestamp: DateTime<Utc>,
    /// The function's name.
    pub function: FunctionName,
    /// The version that ran.
    pub version: VersionId,
    /// Which stream.
    pub stream: LogStream,
    /// The captured text (lossy UTF-8).
    pub message: String,
    /// Whether output past the per-invocation cap was dropped.
    pub truncated: bool,
}

/// `GET /v1/functions/{name}/logs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogPage {
    /// Records in id order.
    pub records: Vec<LogRecord>,
    /// Pass as `after` to get the records that follow.
    pub next_after: i64,
}

/// Duration percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DurationPercentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// Counters for one version (or all versions) over the stats window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VersionStats {
    /// `latest`, a version number, or `all`.
    pub version: String,
    /// Invocations that ran (including failed ones, excluding throttled).
    pub invocations: u64,
    /// Invocations that trapped, ran out of memory or gave no response.
    pub errors: u64,
    /// Invocations stopped at their timeout.
    pub timeouts: u64,
    /// Requests refused because the function was at its concurrency limit.
    pub throttles: u64,
    /// Invocations that had to load the component first.
    pub cold_starts: u64,
    /// Duration percentiles, from start to the end of the response body.
    pub duration_ms: DurationPercentiles,
}

/// `GET /v1/functions/{name}/stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FunctionStats {
    /// The function's name.
    pub function: FunctionName,
    /// Length of the window the figures cover, in seconds.
    pub window_seconds: u64,
    /// All versions together.
    pub total: VersionStats,
    /// Each version that ran in the window.
    pub versions: Vec<VersionStats>,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// The server's version.
    pub version: String,
}
