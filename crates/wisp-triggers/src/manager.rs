//! Runs the sources of the triggers the server knows: starts a trigger's
//! source when it is created or enabled, restarts it when its definition
//! changes, stops it when it is disabled or deleted, and answers for each
//! trigger's status.

use crate::sink::{CursorStore, EventSink};
use crate::source::{SourceContext, run};
use crate::sources;
use crate::spec::{SourceConfig, Trigger};
use crate::status::{Health, State, Status};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

struct Running {
    ctx: SourceContext,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The running triggers.
pub struct Manager {
    sink: Arc<dyn EventSink>,
    cursors: Arc<dyn CursorStore>,
    running: Mutex<HashMap<String, Running>>,
    shutdown: CancellationToken,
}

impl Manager {
    /// A manager that delivers to `sink`.
    pub fn new(sink: Arc<dyn EventSink>, cursors: Arc<dyn CursorStore>) -> Arc<Self> {
        Arc::new(Manager {
            sink,
            cursors,
            running: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts `trigger`, or restarts it if its definition changed; its
    /// counters are kept. A disabled trigger is stopped. A trigger whose
    /// spec does not validate is kept stopped and degraded with the reason.
    /// Must be called within a tokio runtime.
    pub fn apply(&self, trigger: Trigger) {
        let mut running = self.lock();
        let health = match running.remove(&trigger.name) {
            Some(old) => {
                old.ctx.cancel.cancel();
                old.ctx.health
            }
            None => Arc::new(Health::default()),
        };
        let target = match trigger.spec.validate() {
            Ok(t) => t,
            Err(e) => {
                health.degraded(format!("invalid definition: {e}"));
                return;
            }
        };
        let cancel = self.shutdown.child_token();
        let ctx = SourceContext {
            trigger: Arc::new(trigger),
            target,
            health,
            sink: self.sink.clone(),
            cursors: self.cursors.clone(),
            cancel,
        };
        let task = if !ctx.trigger.spec.enabled {
            ctx.health.disabled();
            None
        } else {
            match sources::build(&ctx.trigger.spec.source, &ctx.trigger.name) {
                Some(source) => {
                    ctx.health.starting();
                    Some(tokio::spawn(run(source, ctx.clone())))
                }
                None => {
                    // Webhooks receive requests: ready as soon as defined.
                    ctx.health.starting();
                    ctx.health.active();
                    None
                }
            }
        };
        running.insert(ctx.trigger.name.clone(), Running { ctx, task });
    }

    /// Stops and forgets a trigger.
    pub fn remove(&self, name: &str) {
        if let Some(old) = self.lock().remove(name) {
            old.ctx.cancel.cancel();
        }
    }

    /// A trigger's status, if the manager knows it.
    pub fn status(&self, name: &str) -> Option<Status> {
        self.lock().get(name).map(|r| r.ctx.health.snapshot())
    }

    /// Every known trigger's name, source kind and status.
    pub fn statuses(&self) -> Vec<(String, &'static str, Status)> {
        self.lock()
            .iter()
            .map(|(name, r)| {
                (
                    name.clone(),
                    r.ctx.trigger.spec.source.kind(),
                    r.ctx.health.snapshot(),
                )
            })
            .collect()
    }

    /// The context of an enabled webhook trigger, to deliver a request.
    pub fn webhook(&self, name: &str) -> Option<SourceContext> {
        let running = self.lock();
        let r = running.get(name)?;
        let enabled = r.ctx.health.state() != State::Disabled;
        matches!(r.ctx.trigger.spec.source, SourceConfig::Webhook(_))
            .then(|| r.ctx.clone())
            .filter(|_| enabled)
    }

    /// Stops every source and waits for them to end.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        let tasks: Vec<_> = self.lock().drain().filter_map(|(_, r)| r.task).collect();
        for t in tasks {
            let _ = t.await;
        }
    }
}
