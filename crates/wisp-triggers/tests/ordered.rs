//! Ordered stream mode's failure handling, on the in-memory sink: a failed
//! batch is bisected down to the poison event, or dead-lettered whole, as
//! configured; order is kept and no event is skipped silently.

mod common;

use common::FakeSink;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use wisp_events::{AttributesReader, Event, EventBuilder, EventBuilderV10};
use wisp_triggers::{Health, OrderedConfig, OrderedFailure, SourceContext, Trigger, TriggerSpec};

fn context(sink: Arc<FakeSink>) -> SourceContext {
    let spec: TriggerSpec = serde_json::from_value(serde_json::json!({
        "target": "f",
        "filters": [{"not": {"exact": {"type": "skip"}}}],
        "source": {"kind": "cron", "schedule": "* * * * *"}
    }))
    .unwrap();
    let now = chrono::Utc::now();
    SourceContext {
        target: spec.validate().unwrap(),
        trigger: Arc::new(Trigger {
            name: "t".into(),
            spec,
            created_at: now,
            updated_at: now,
        }),
        health: Arc::new(Health::default()),
        sink,
        cursors: Arc::new(common::FakeCursors::default()),
        cancel: CancellationToken::new(),
    }
}

fn events(n: usize, skip: &[usize]) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let ty = if skip.contains(&i) { "skip" } else { "t" };
            EventBuilderV10::new()
                .id(format!("e{i}"))
                .source("/test")
                .ty(ty)
                .build()
                .unwrap()
        })
        .collect()
}

fn ids(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.id().to_string()).collect()
}

fn config(on_failure: OrderedFailure) -> OrderedConfig {
    OrderedConfig {
        max_events: 100,
        max_wait_ms: 10,
        on_failure,
    }
}

#[tokio::test]
async fn bisect_runs_everything_but_the_poison_in_order() {
    let sink = Arc::new(FakeSink::default());
    *sink.poison_id.lock().unwrap() = Some("e5".into());
    let ctx = context(sink.clone());
    ctx.run_ordered(&config(OrderedFailure::Bisect), "k", events(10, &[2]))
        .await
        .unwrap();
    let want: Vec<String> = [0, 1, 3, 4, 6, 7, 8, 9]
        .iter()
        .map(|i| format!("e{i}"))
        .collect();
    assert_eq!(
        ids(&sink.events()),
        want,
        "in order, poison and filtered left out"
    );
    let batches = sink.batches.lock().unwrap().clone();
    // The last failed batch is the poison alone.
    let single_poison = batches.iter().filter(|b| ids(b) == ["e5"]).count();
    assert_eq!(single_poison, 1, "{batches:?}");
    // Every failed batch larger than one was split, and its dead letter
    // dropped; the poison's own dead letter stays.
    let failed_larger = batches
        .iter()
        .filter(|b| b.len() > 1 && ids(b).contains(&"e5".to_string()))
        .count();
    assert_eq!(sink.forgotten.lock().unwrap().len(), failed_larger);
    let s = ctx.health.snapshot();
    assert_eq!((s.delivered, s.failed, s.filtered), (8, 1, 1));
}

#[tokio::test]
async fn dead_letter_mode_leaves_the_whole_batch_dead_lettered() {
    let sink = Arc::new(FakeSink::default());
    *sink.poison_id.lock().unwrap() = Some("e5".into());
    let ctx = context(sink.clone());
    ctx.run_ordered(&config(OrderedFailure::DeadLetter), "k", events(10, &[]))
        .await
        .unwrap();
    assert!(sink.events().is_empty());
    assert_eq!(
        sink.batches.lock().unwrap().len(),
        1,
        "not retried or split"
    );
    assert!(
        sink.forgotten.lock().unwrap().is_empty(),
        "its dead letter stays"
    );
    let s = ctx.health.snapshot();
    assert_eq!((s.delivered, s.failed), (0, 10));
    assert!(s.last_error.unwrap().contains("batch of 10 failed"));
}

#[tokio::test]
async fn an_unavailable_queue_is_an_error_so_the_position_does_not_advance() {
    let sink = Arc::new(FakeSink::default());
    sink.refuse.store(true, std::sync::atomic::Ordering::SeqCst);
    let ctx = context(sink.clone());
    assert!(
        ctx.run_ordered(&config(OrderedFailure::Bisect), "k", events(3, &[]))
            .await
            .is_err()
    );
    assert!(sink.events().is_empty());
}
