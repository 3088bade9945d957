//! Redis: pub/sub channels (at most once by Redis's design: a message
//! published while Wisp is disconnected is lost), or a stream read through
//! a consumer group (XREADGROUP, XACK after the event is queued; pending
//! entries of a crashed consumer are claimed again), optionally in ordered
//! stream mode.

use crate::TriggerError;
use crate::source::{Source, SourceContext, SourceError};
use crate::spec::{OrderedConfig, check_text, check_url};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A Redis trigger's source: `channels` or `stream`, not both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Server URL (default `redis://127.0.0.1:6379`).
    #[serde(default = "default_url")]
    pub url: String,
    /// Pub/sub channels; glob patterns (`orders.*`) when `pattern` is set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Subscribe to `channels` as patterns (PSUBSCRIBE).
    #[serde(default)]
    pub pattern: bool,
    /// A stream read through a consumer group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<RedisStreamConfig>,
}

/// A Redis stream consumer group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisStreamConfig {
    /// The stream key.
    pub key: String,
    /// Consumer group (default `wisp-<trigger>`), created with MKSTREAM if missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Consumer name within the group (default `wisp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    /// Where a new group starts: `$` (new entries, the default) or `0`
    /// (the whole stream).
    #[serde(default = "default_start")]
    pub start: String,
    /// Ordered stream mode: batches in stream order, acked after success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordered: Option<OrderedConfig>,
}

fn default_url() -> String {
    "redis://127.0.0.1:6379".into()
}
fn default_start() -> String {
    "$".into()
}

/// Most channels in one trigger.
pub const MAX_CHANNELS: usize = 100;

impl RedisConfig {
    /// Checks URL, channels or stream.
    pub fn validate(&self) -> Result<(), TriggerError> {
        check_url("url", &self.url, &["redis", "rediss"])?;
        match (&self.stream, self.channels.is_empty()) {
            (Some(_), false) => {
                return Err(TriggerError::invalid(
                    "channels",
                    "give `channels` or `stream`, not both",
                ));
            }
            (None, true) => {
                return Err(TriggerError::invalid(
                    "channels",
                    "give `channels` (pub/sub) or `stream`",
                ));
            }
            _ => {}
        }
        if self.channels.len() > MAX_CHANNELS {
            return Err(TriggerError::invalid(
                "channels",
                format!("at most {MAX_CHANNELS}"),
            ));
        }
        for (i, c) in self.channels.iter().enumerate() {
            check_text(&format!("channels[{i}]"), c)?;
        }
        if let Some(s) = &self.stream {
            check_text("stream.key", &s.key)?;
            if let Some(g) = &s.group {
                check_text("stream.group", g)?;
            }
            if let Some(c) = &s.consumer {
                check_text("stream.consumer", c)?;
            }
            if s.start != "$" && s.start != "0" {
                return Err(TriggerError::invalid("stream.start", "must be `$` or `0`"));
            }
            if let Some(o) = &s.ordered {
                o.validate().map_err(|e| e.under("stream.ordered"))?;
            }
        }
        Ok(())
    }
}

/// Consumes Redis channels or a stream.
pub struct RedisSource {
    config: RedisConfig,
    trigger: String,
}

impl RedisSource {
    /// A source for `config` (already validated) of trigger `trigger`.
    pub fn new(config: RedisConfig, trigger: &str) -> Self {
        RedisSource {
            config,
            trigger: trigger.to_string(),
        }
    }
}

#[async_trait]
impl Source for RedisSource {
    async fn session(&self, _ctx: &SourceContext) -> Result<(), SourceError> {
        let _ = (&self.config, &self.trigger);
        Err(SourceError::Config(
            "the Redis source is not built yet".into(),
        ))
    }
}
