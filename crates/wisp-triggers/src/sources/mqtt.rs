//! MQTT 3.1.1 and 5: a topic filter (wildcards `+` and `#`) at QoS 1 with
//! a persistent session, each message acknowledged (PUBACK) once its event
//! is queued in Wisp.

use crate::TriggerError;
use crate::source::{Source, SourceContext, SourceError};
use crate::spec::{check_text, check_url};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An MQTT trigger's source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker URL (default `mqtt://127.0.0.1:1883`); user and password may
    /// be given in it.
    #[serde(default = "default_url")]
    pub url: String,
    /// Topic filter to subscribe to at QoS 1.
    pub topic: String,
    /// Protocol version (default `5`).
    #[serde(default)]
    pub protocol: MqttProtocol,
    /// Client id of the persistent session (default `wisp-<trigger>`, at
    /// most 23 characters as MQTT 3.1.1 guarantees).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// MQTT protocol version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum MqttProtocol {
    /// MQTT 3.1.1.
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5.
    #[default]
    #[serde(rename = "5")]
    V5,
}

fn default_url() -> String {
    "mqtt://127.0.0.1:1883".into()
}

impl MqttConfig {
    /// Checks URL, topic filter and client id.
    pub fn validate(&self) -> Result<(), TriggerError> {
        check_url("url", &self.url, &["mqtt", "tcp"])?;
        check_text("topic", &self.topic)?;
        let levels: Vec<&str> = self.topic.split('/').collect();
        for (i, level) in levels.iter().enumerate() {
            let bad = (level.contains('#') && (*level != "#" || i != levels.len() - 1))
                || (level.contains('+') && *level != "+");
            if bad {
                return Err(TriggerError::invalid(
                    "topic",
                    "`+` must fill a whole level and `#` must be the whole last level",
                ));
            }
        }
        if let Some(id) = &self.client_id {
            check_text("client_id", id)?;
            if id.len() > 23 {
                return Err(TriggerError::invalid(
                    "client_id",
                    "must be at most 23 characters",
                ));
            }
        }
        Ok(())
    }
}

/// Consumes an MQTT topic filter.
pub struct MqttSource {
    config: MqttConfig,
    trigger: String,
}

impl MqttSource {
    /// A source for `config` (already validated) of trigger `trigger`.
    pub fn new(config: MqttConfig, trigger: &str) -> Self {
        MqttSource {
            config,
            trigger: trigger.to_string(),
        }
    }
}

#[async_trait]
impl Source for MqttSource {
    async fn session(&self, _ctx: &SourceContext) -> Result<(), SourceError> {
        let _ = (&self.config, &self.trigger);
        Err(SourceError::Config(
            "the MQTT source is not built yet".into(),
        ))
    }
}
