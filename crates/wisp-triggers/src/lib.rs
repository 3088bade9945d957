//! Triggers connect event sources to functions: cron schedules, webhooks,
//! NATS and JetStream, RabbitMQ, MQTT and Redis, each mapped to
//! CloudEvents, filtered on their attributes, and delivered through the
//! durable asynchronous queue so retries, dead-letter queues and execution
//! semantics apply to every source.
//!
//! Sources and functions map n:m: each trigger connects one source to one
//! function qualifier, and any number of triggers may share a broker
//! subject or a function. Every source follows the same contract (see
//! [`source`]): the framework keeps its status and reconnects it, and it
//! acknowledges a message to its broker only after the event is on disk.
//!
//! ```
//! use wisp_triggers::{Filter, TriggerSpec};
//! use wisp_events::{EventBuilder, EventBuilderV10};
//!
//! let spec: TriggerSpec = serde_json::from_str(r#"{
//!     "target": "billing:live",
//!     "filters": [{"exact": {"type": "order.created"}}, {"prefix": {"source": "/shop"}}],
//!     "source": {"kind": "nats", "subject": "orders.>"}
//! }"#).unwrap();
//! let target = spec.validate().unwrap();
//! assert_eq!(target.to_string(), "billing:live");
//!
//! let event = EventBuilderV10::new()
//!     .id("1").source("/shop/eu").ty("order.created")
//!     .build().unwrap();
//! assert!(wisp_triggers::filter::matches_all(&spec.filters, &event));
//! ```

pub mod error;
pub mod filter;
pub mod manager;
pub mod publish;
pub mod sink;
pub mod source;
pub mod sources;
pub mod spec;
pub mod status;

pub use error::TriggerError;
pub use filter::Filter;
pub use manager::Manager;
pub use publish::{PublishConfig, PublishError, PublishStats, Publisher};
pub use sink::{BatchOutcome, CursorStore, Delivery, EventSink, SinkError};
pub use source::{Message, Source, SourceContext, SourceError, message_event};
pub use spec::{OrderedConfig, OrderedFailure, SourceConfig, Trigger, TriggerSpec};
pub use status::{Health, State, Status};
