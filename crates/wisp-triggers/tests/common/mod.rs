//! Shared by the source tests: an in-memory fake of Wisp's queue (our own
//! [`EventSink`] trait) that records what each source delivered, and a way
//! to run a trigger's source against it. The brokers are real.

#![allow(dead_code)]

use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use wisp_core::Target;
use wisp_events::{AttributesReader, Event};
use wisp_triggers::{
    BatchOutcome, CursorStore, Delivery, EventSink, Health, SinkError, SourceContext, Trigger,
    TriggerSpec,
};

/// Records deliveries; can be told to refuse them or to fail batches.
#[derive(Default)]
pub struct FakeSink {
    pub delivered: Mutex<Vec<Delivery>>,
    /// Each ordered batch run, in order.
    pub batches: Mutex<Vec<Vec<Event>>>,
    pub forgotten: Mutex<Vec<String>>,
    /// While set, `enqueue` and `run_batch` fail with `Unavailable`.
    pub refuse: AtomicBool,
    /// Batches containing an event with this `id` fail.
    pub poison_id: Mutex<Option<String>>,
    batch_seq: AtomicUsize,
}

impl FakeSink {
    pub fn events(&self) -> Vec<Event> {
        self.delivered
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.event.clone())
            .collect()
    }

    pub fn count(&self) -> usize {
        self.delivered.lock().unwrap().len()
    }

    /// Waits until at least `n` events were delivered (or `timeout`).
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let events = self.events();
            if events.len() >= n || tokio::time::Instant::now() > deadline {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[async_trait]
impl EventSink for FakeSink {
    async fn enqueue(&self, _target: &Target, deliveries: Vec<Delivery>) -> Result<(), SinkError> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(SinkError::Unavailable("refused by the test".into()));
        }
        self.delivered.lock().unwrap().extend(deliveries);
        Ok(())
    }

    async fn run_batch(
        &self,
        _target: &Target,
        _key: &str,
        events: Vec<Event>,
    ) -> Result<BatchOutcome, SinkError> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(SinkError::Unavailable("refused by the test".into()));
        }
        self.batches.lock().unwrap().push(events.clone());
        let poison = self.poison_id.lock().unwrap().clone();
        if let Some(p) = poison
            && events.iter().any(|e| e.id() == p)
        {
            let n = self.batch_seq.fetch_add(1, Ordering::SeqCst);
            return Ok(BatchOutcome::Failed {
                invocation_id: format!("batch-{n}"),
                error: "poisoned".into(),
            });
        }
        self.delivered
            .lock()
            .unwrap()
            .extend(events.into_iter().map(Delivery::new));
        Ok(BatchOutcome::Succeeded)
    }

    async fn forget_dead_letter(&self, invocation_id: &str) -> Result<(), SinkError> {
        self.forgotten.lock().unwrap().push(invocation_id.into());
        Ok(())
    }
}

/// Cursors in memory.
#[derive(Default)]
pub struct FakeCursors(pub Mutex<HashMap<String, String>>);

#[async_trait]
impl CursorStore for FakeCursors {
    async fn load_cursor(&self, trigger: &str) -> Result<Option<String>, SinkError> {
        Ok(self.0.lock().unwrap().get(trigger).cloned())
    }
    async fn save_cursor(&self, trigger: &str, cursor: &str) -> Result<(), SinkError> {
        self.0.lock().unwrap().insert(trigger.into(), cursor.into());
        Ok(())
    }
}

/// A running source.
pub struct Running {
    pub ctx: SourceContext,
    pub sink: Arc<FakeSink>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn health(&self) -> &Health {
        &self.ctx.health
    }

    /// Stops the source and waits for it.
    pub async fn stop(self) -> Arc<FakeSink> {
        self.ctx.cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        self.sink
    }

    /// Waits until the trigger is active (or `timeout`); true if it is.
    pub async fn wait_active(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.ctx.health.state() == wisp_triggers::State::Active {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

/// Starts the source of trigger `name` defined by `spec` (JSON), delivering
/// to `sink`.
pub fn start_with(
    name: &str,
    spec: serde_json::Value,
    sink: Arc<FakeSink>,
    cursors: Arc<FakeCursors>,
) -> Running {
    let spec: TriggerSpec = serde_json::from_value(spec).expect("a valid trigger spec");
    let target = spec.validate().expect("a valid trigger spec");
    let now = chrono::Utc::now();
    let trigger = Trigger {
        name: name.into(),
        spec,
        created_at: now,
        updated_at: now,
    };
    let source = wisp_triggers::sources::build(&trigger.spec.source, name)
        .expect("a source that runs (not a webhook)");
    let ctx = SourceContext {
        trigger: Arc::new(trigger),
        target,
        health: Arc::new(Health::default()),
        sink: sink.clone(),
        cursors,
        cancel: CancellationToken::new(),
    };
    let task = tokio::spawn(wisp_triggers::source::run(source, ctx.clone()));
    Running { ctx, sink, task }
}

/// Starts a source with a fresh fake sink and cursors.
pub fn start(name: &str, spec: serde_json::Value) -> Running {
    start_with(name, spec, Arc::default(), Arc::default())
}

/// A name unique to this test run, for subjects, queues, topics and keys.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

/// A free TCP port on loopback, for tests that start their own broker.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
