//! The trigger store: trigger definitions, kept as the JSON the API
//! accepted (the store does not interpret them), and durable per-trigger
//! cursors for sources whose broker keeps no position (cron).

use crate::StoreError;
use chrono::{DateTime, Utc};

/// Most triggers one server keeps.
pub const MAX_TRIGGERS: u64 = 10_000;
/// Longest trigger definition, in bytes of JSON.
pub const MAX_TRIGGER_SPEC_BYTES: usize = 64 * 1024;

/// A trigger as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTrigger {
    /// Its name.
    pub name: String,
    /// Its definition, as JSON.
    pub spec: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its definition last changed.
    pub updated_at: DateTime<Utc>,
}

/// Where triggers are kept. Every write is durable on return.
#[async_trait::async_trait]
pub trait TriggerStore: Send + Sync + 'static {
    /// Creates (`create`: fails with `AlreadyExists` if it exists) or
    /// replaces (`!create`: fails with `TriggerNotFound` if it does not) a
    /// trigger. Fails with `LimitReached` past [`MAX_TRIGGERS`]. A replaced
    /// trigger keeps its cursor only if `keep_cursor`.
    async fn put_trigger(
        &self,
        name: &str,
        spec: String,
        create: bool,
        keep_cursor: bool,
    ) -> Result<StoredTrigger, StoreError>;
    /// One trigger.
    async fn get_trigger(&self, name: &str) -> Result<StoredTrigger, StoreError>;
    /// Every trigger, by name.
    async fn list_triggers(&self) -> Result<Vec<StoredTrigger>, StoreError>;
    /// Deletes a trigger and its cursor.
    async fn delete_trigger(&self, name: &str) -> Result<(), StoreError>;
    /// The trigger's saved cursor.
    async fn trigger_cursor(&self, name: &str) -> Result<Option<String>, StoreError>;
    /// Saves the trigger's cursor (ignored if the trigger is gone).
    async fn save_trigger_cursor(&self, name: &str, cursor: &str) -> Result<(), StoreError>;
}
