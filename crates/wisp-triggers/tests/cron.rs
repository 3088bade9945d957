//! The cron source against the real clock: ticks fire on schedule, once
//! each, and a restart neither fires a tick twice nor bursts missed ones
//! unless catch-up is configured.

mod common;

use common::{FakeCursors, FakeSink, start_with};
use std::sync::Arc;
use std::time::Duration;
use wisp_events::AttributesReader;

#[tokio::test]
async fn ticks_fire_once_each_in_order() {
    let sink = Arc::new(FakeSink::default());
    let cursors = Arc::new(FakeCursors::default());
    let run = start_with(
        "every-second",
        serde_json::json!({"target": "f", "source": {"kind": "cron", "schedule": "* * * * * *", "data": {"k": 1}}}),
        sink.clone(),
        cursors.clone(),
    );
    let events = sink.wait_for(3, Duration::from_secs(10)).await;
    run.stop().await;
    assert!(events.len() >= 3, "got {} ticks", events.len());
    let ids: Vec<String> = events.iter().map(|e| e.id().to_string()).collect();
    let mut sorted = ids.clone();
    sorted.dedup();
    assert_eq!(ids, sorted, "each tick once, in order");
    for e in &events {
        assert_eq!(e.ty(), "wisp.cron.tick");
        assert_eq!(e.source().to_string(), "/wisp/triggers/every-second");
        // Ticks land on whole seconds.
        assert!(e.id().ends_with(".000Z"), "{}", e.id());
    }
    // The idempotency key makes a re-fired tick a duplicate in the queue.
    let keys: Vec<Option<String>> = sink
        .delivered
        .lock()
        .unwrap()
        .iter()
        .map(|d| d.idempotency_key.clone())
        .collect();
    assert_eq!(
        keys[0].as_deref(),
        Some(format!("cron/every-second/{}", ids[0]).as_str())
    );
    // The cursor is the last fired tick.
    let cursor = cursors.0.lock().unwrap()["every-second"].clone();
    assert_eq!(&cursor, ids.last().unwrap());
}

#[tokio::test]
async fn a_restart_skips_missed_ticks_unless_catch_up_is_set() {
    // The last tick fired a minute ago; ticks every second were missed.
    let last = chrono::Utc::now() - chrono::Duration::seconds(60);
    let last = last.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for (catch_up, expect_missed) in [(0u32, 0usize), (3, 3)] {
        let sink = Arc::new(FakeSink::default());
        let cursors = Arc::new(FakeCursors::default());
        cursors.0.lock().unwrap().insert("t".into(), last.clone());
        let started = chrono::Utc::now();
        let run = start_with(
            "t",
            serde_json::json!({"target": "f", "source": {"kind": "cron", "schedule": "* * * * * *", "catch_up": catch_up}}),
            sink.clone(),
            cursors,
        );
        let events = sink
            .wait_for(expect_missed + 1, Duration::from_secs(10))
            .await;
        run.stop().await;
        let times: Vec<_> = events.iter().map(|e| e.time().copied().unwrap()).collect();
        let missed = times.iter().filter(|t| **t < started).count();
        assert_eq!(missed, expect_missed, "catch_up {catch_up}: {times:?}");
        if expect_missed > 0 {
            // The most recent missed ticks, in order, not the oldest.
            assert!(started - times[0] < chrono::Duration::seconds(5));
            assert!(times.windows(2).all(|w| w[0] < w[1]));
        }
    }
}

#[tokio::test]
async fn a_restart_within_the_same_tick_does_not_fire_it_again() {
    let sink = Arc::new(FakeSink::default());
    let cursors = Arc::new(FakeCursors::default());
    let spec =
        serde_json::json!({"target": "f", "source": {"kind": "cron", "schedule": "*/2 * * * * *"}});
    let run = start_with("t", spec.clone(), sink.clone(), cursors.clone());
    sink.wait_for(1, Duration::from_secs(10)).await;
    run.stop().await;
    // Restart at once: the tick just fired is in the past and is not fired
    // again; the next one comes two seconds later.
    let run = start_with("t", spec, sink.clone(), cursors);
    let events = sink.wait_for(2, Duration::from_secs(10)).await;
    run.stop().await;
    let ids: Vec<String> = events.iter().map(|e| e.id().to_string()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_ne!(ids[0], ids[1], "the same tick fired twice: {ids:?}");
}
