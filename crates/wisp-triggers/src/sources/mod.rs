//! One module per source, each with the same layout: its configuration
//! (`…Config`, with `validate`), its [`Source`](crate::Source)
//! implementation, and how its messages map to CloudEvents. Integration
//! tests against the real broker are in `tests/<kind>.rs`.

pub mod cron;
pub mod mqtt;
pub mod nats;
pub mod rabbitmq;
pub mod redis;
pub mod webhook;

use crate::source::Source;
use crate::spec::SourceConfig;
use std::sync::Arc;

/// The running source for a configuration; `None` for webhooks, which
/// receive requests instead of running.
pub fn build(config: &SourceConfig, trigger: &str) -> Option<Arc<dyn Source>> {
    match config {
        SourceConfig::Cron(c) => Some(Arc::new(cron::CronSource::new(c.clone()))),
        SourceConfig::Webhook(_) => None,
        SourceConfig::Nats(c) => Some(Arc::new(nats::NatsSource::new(c.clone(), trigger))),
        SourceConfig::Rabbitmq(c) => {
            Some(Arc::new(rabbitmq::RabbitMqSource::new(c.clone(), trigger)))
        }
        SourceConfig::Mqtt(c) => Some(Arc::new(mqtt::MqttSource::new(c.clone(), trigger))),
        SourceConfig::Redis(c) => Some(Arc::new(redis::RedisSource::new(c.clone(), trigger))),
    }
}
