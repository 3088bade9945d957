use super::*;
use crate::policy::{AsyncPolicy, Semantics};
use chrono::{DateTime, Utc};
use std::collections::HashSet;
use tempfile::TempDir;

const MINUTE: Duration = Duration::from_secs(60);

fn start() -> DateTime<Utc> {
    "2025-01-01T00:00:00Z".parse().unwrap()
}

/// A queue on a fresh file with a manual clock.
fn open_manual(options: QueueOptions) -> (SqliteQueue, Clock, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(start());
    let queue = SqliteQueue::open_with(
        dir.path().join("q/queue.db"),
        QueueOptions {
            clock: clock.clone(),
            ..options
        },
    )
    .unwrap();
    (queue, clock, dir)
}

fn open() -> (SqliteQueue, Clock, TempDir) {
    open_manual(QueueOptions::default())
}

fn name(s: &str) -> FunctionName {
    s.parse().unwrap()
}

fn request(body: &str) -> StoredRequest {
    StoredRequest {
        method: "POST".into(),
        path_and_query: "/hook?x=1".into(),
        headers: vec![
            ("ce-id".into(), "1".into()),
            ("ce-type".into(), "t".into()),
            ("ce-type".into(), "repeated".into()),
        ],
        body: body.as_bytes().to_vec(),
    }
}

fn inv(function: &str, body: &str) -> NewInvocation {
    NewInvocation::new(name(function), "latest", request(body))
}

fn with_policy(mut i: NewInvocation, policy: AsyncPolicy) -> NewInvocation {
    i.policy = policy;
    i
}

fn keyed(mut i: NewInvocation, partition: &str) -> NewInvocation {
    i.partition_key = Some(partition.into());
    i
}

async fn enqueue_one(q: &SqliteQueue, i: NewInvocation) -> String {
    match q.enqueue(vec![i]).await.unwrap().remove(0) {
        Enqueued::Accepted { id } => id,
        other => panic!("not accepted: {other:?}"),
    }
}

fn ok(status: u16, body: &str) -> Completion {
    Completion::Succeeded {
        response: StoredResponse::capped(
            status,
            vec![("content-type".into(), "text/plain".into())],
            body.as_bytes().to_vec(),
        ),
    }
}

fn failed(error: &str, retryable: bool) -> Completion {
    Completion::Failed {
        error: error.into(),
        outcome: "500".into(),
        retryable,
    }
}

fn ids(leased: &[Leased]) -> Vec<String> {
    leased.iter().map(|l| l.invocation.id.clone()).collect()
}

async fn lease_all(q: &SqliteQueue) -> Vec<Leased> {
    q.lease(MAX_LEASE_BATCH, MINUTE).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn enqueue_lease_complete() {
    let (q, clock, _dir) = open();
    let id = enqueue_one(&q, inv("orders", "hello")).await;
    assert!(is_valid_id(&id));
    let got = q.get(&id).await.unwrap().unwrap();
    assert_eq!(got.status, Status::Queued);
    assert_eq!(got.function, name("orders"));
    assert_eq!(got.qualifier, "latest");
    assert_eq!(got.enqueued_at, start());
    assert_eq!(got.next_attempt_at, Some(start()));
    assert!(got.attempts.is_empty() && got.result.is_none());
    assert_eq!(q.depth(&name("orders")).await.unwrap(), 1);

    clock.advance(Duration::from_secs(1));
    let leased = lease_all(&q).await;
    assert_eq!(leased.len(), 1);
    let l = &leased[0];
    assert_eq!(l.attempt, 1);
    assert_eq!(l.request, request("hello"));
    assert_eq!(l.policy, AsyncPolicy::default());
    assert_eq!(l.invocation.status, Status::Running);
    assert_eq!(l.lease.id, id);
    assert_eq!(l.invocation.attempts[0].outcome, "running");
    assert!(
        lease_all(&q).await.is_empty(),
        "a running invocation is not leased twice"
    );
    assert_eq!(q.get(&id).await.unwrap().unwrap().status, Status::Running);
    assert_eq!(q.depth(&name("orders")).await.unwrap(), 1);

    q.mark_started(&l.lease).await.unwrap();
    clock.advance(Duration::from_secs(2));
    let status = q.complete(&l.lease, ok(200, "done")).await.unwrap();
    assert_eq!(status, Status::Succeeded);

    let got = q.get(&id).await.unwrap().unwrap();
    assert_eq!(got.status, Status::Succeeded);
    assert_eq!(got.next_attempt_at, None);
    assert_eq!(got.error, None);
    let result = got.result.unwrap();
    assert_eq!((result.status, result.body.as_slice()), (200, &b"done"[..]));
    assert_eq!(result.headers[0].0, "content-type");
    assert!(!result.truncated);
    assert_eq!(got.attempts.len(), 1);
    let a = &got.attempts[0];
    assert_eq!(a.outcome, "200");
    assert_eq!(a.started_at, start() + Duration::from_secs(1));
    assert_eq!(a.finished_at, Some(start() + Duration::from_secs(3)));
    assert_eq!(q.depth(&name("orders")).await.unwrap(), 0);
    assert_eq!(
        q.counts().await.unwrap(),
        vec![(name("orders"), Status::Succeeded, 1)]
    );
    // Completing twice is refused.
    assert!(matches!(
        q.complete(&l.lease, ok(200, "")).await,
        Err(QueueError::LeaseLost { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_with_backoff_then_dead_letters_every_attempt() {
    let (q, clock, _dir) = open();
    let policy = AsyncPolicy {
        max_retries: 2,
        backoff_min: Duration::from_secs(10),
        backoff_max: Duration::from_secs(15),
        ..Default::default()
    };
    let id = enqueue_one(&q, with_policy(inv("f", "payload"), policy.clone())).await;

    for attempt in 1..=3u32 {
        let leased = lease_all(&q).await;
        assert_eq!(ids(&leased), vec![id.clone()], "attempt {attempt}");
        assert_eq!(leased[0].attempt, attempt);
        let now = clock.now();
        let status = q
            .complete(&leased[0].lease, failed(&format!("boom {attempt}"), true))
            .await
            .unwrap();
        let got = q.get(&id).await.unwrap().unwrap();
        if attempt < 3 {
            assert_eq!(status, Status::Retrying);
            assert_eq!(got.status, Status::Retrying);
            let wait = got.next_attempt_at.unwrap() - now;
            let ceiling = [10, 15][attempt as usize - 1];
            assert!(
                (10_000..=ceiling * 1000).contains(&wait.num_milliseconds()),
                "attempt {attempt}: {wait}"
            );
            // Not runnable before its backoff ends.
            clock.advance(Duration::from_secs(9));
            assert!(lease_all(&q).await.is_empty());
            clock.advance(Duration::from_secs(6));
        } else {
            assert_eq!(status, Status::Dead);
            assert_eq!(got.status, Status::Dead);
            assert_eq!(got.next_attempt_at, None);
        }
    }
    assert!(lease_all(&q).await.is_empty());

    let dead = q
        .dead_letters(Some(&name("f")), None, 10, None)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, id);
    assert_eq!(dead[0].error.as_deref(), Some("boom 3"));
    let letter = q.dead_letter(&id).await.unwrap().unwrap();
    assert_eq!(letter.request, request("payload"));
    assert_eq!(letter.policy, policy);
    let attempts = &letter.invocation.attempts;
    assert_eq!(attempts.len(), 3);
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(a.error.as_deref(), Some(format!("boom {}", i + 1).as_str()));
        assert_eq!(a.outcome, "500");
        assert!(a.finished_at.unwrap() >= a.started_at);
    }
    assert!(attempts[1].started_at > attempts[0].finished_at.unwrap());
    assert_eq!(q.depth(&name("f")).await.unwrap(), 0);
    assert_eq!(
        q.counts().await.unwrap(),
        vec![(name("f"), Status::Dead, 1)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn non_retryable_failures_go_straight_to_dead() {
    let (q, _clock, _dir) = open();
    // The dispatcher decides `retryable` from the policy: a 4xx is
    // retryable only with retry_on_4xx.
    let strict = enqueue_one(&q, inv("f", "a")).await;
    let lenient_policy = AsyncPolicy {
        retry_on_4xx: true,
        ..Default::default()
    };
    let lenient = enqueue_one(&q, with_policy(inv("f", "b"), lenient_policy)).await;
    let leased = lease_all(&q).await;
    assert_eq!(ids(&leased), vec![strict.clone(), lenient.clone()]);
    for l in &leased {
        let retryable = l.policy.retry_on_4xx;
        let c = Completion::Failed {
            error: "the function answered 404".into(),
            outcome: "404".into(),
            retryable,
        };
        q.complete(&l.lease, c).await.unwrap();
    }
    let strict = q.get(&strict).await.unwrap().unwrap();
    assert_eq!(strict.status, Status::Dead);
    assert_eq!(strict.attempts.len(), 1);
    assert_eq!(strict.attempts[0].outcome, "404");
    let lenient = q.get(&lenient).await.unwrap().unwrap();
    assert_eq!(lenient.status, Status::Retrying);
    let dead = q.dead_letters(None, None, 10, None).await.unwrap();
    assert_eq!(ids_of(&dead), vec![strict.id]);
}

fn ids_of(invocations: &[Invocation]) -> Vec<String> {
    invocations.iter().map(|i| i.id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn at_most_once_never_runs_again() {
    let (q, clock, _dir) = open();
    let amo = AsyncPolicy {
        semantics: Semantics::AtMostOnce,
        max_retries: 5,
        ..Default::default()
    };
    let started = enqueue_one(&q, with_policy(inv("f", "1"), amo.clone())).await;
    let unstarted = enqueue_one(&q, with_policy(inv("f", "2"), amo.clone())).await;
    let failing = enqueue_one(&q, with_policy(inv("f", "3"), amo.clone())).await;
    let leased = q.lease(10, Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        ids(&leased),
        vec![started.clone(), unstarted.clone(), failing.clone()]
    );
    q.mark_started(&leased[0].lease).await.unwrap();
    // A failure, even retryable, is final.
    q.mark_started(&leased[2].lease).await.unwrap();
    assert_eq!(
        q.complete(&leased[2].lease, failed("boom", true))
            .await
            .unwrap(),
        Status::Dead
    );
    // A started invocation cannot be handed back to run again.
    assert!(matches!(
        q.release(&leased[0].lease, Duration::ZERO).await,
        Err(QueueError::AlreadyStarted { .. })
    ));

    // Both executors die.
    clock.advance(Duration::from_secs(11));
    let again = lease_all(&q).await;
    // The one that never started may still run its only time.
    assert_eq!(ids(&again), vec![unstarted.clone()]);
    assert_eq!(again[0].attempt, 1);
    let got = q.get(&started).await.unwrap().unwrap();
    assert_eq!(got.status, Status::Failed);
    assert_eq!(got.error.as_deref(), Some(ops::AT_MOST_ONCE_LOST));
    assert_eq!(got.attempts.len(), 1);
    assert_eq!(got.attempts[0].outcome, ops::LEASE_EXPIRED);
    assert_eq!(
        got.attempts[0].started_at,
        start(),
        "mark_started records the start"
    );
    // The dead executor's late answer is discarded.
    assert!(matches!(
        q.complete(&leased[0].lease, ok(200, "")).await,
        Err(QueueError::LeaseLost { .. })
    ));
    // Nothing of it is ever leased again, nor is it dead-lettered.
    clock.advance(Duration::from_secs(3600));
    let later = lease_all(&q).await;
    assert_eq!(
        ids(&later),
        vec![unstarted.clone()],
        "only the expired unstarted one"
    );
    assert!(q.dead_letter(&started).await.unwrap().is_none());
    // Marking a lease started after it ran out is refused: it may already
    // be settled elsewhere.
    clock.advance(Duration::from_secs(61));
    assert!(matches!(
        q.mark_started(&later[0].lease).await,
        Err(QueueError::LeaseLost { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn expire_leases_redelivers_at_once() {
    let (q, _clock, _dir) = open();
    let id = enqueue_one(&q, inv("f", "x")).await;
    let first = q.lease(10, Duration::from_secs(600)).await.unwrap();
    assert_eq!(ids(&first), vec![id.clone()]);
    assert!(lease_all(&q).await.is_empty(), "still leased");
    assert_eq!(q.expire_leases().await.unwrap(), 1);
    let again = lease_all(&q).await;
    assert_eq!(ids(&again), vec![id]);
    assert_eq!(again[0].attempt, 2);
    assert_eq!(q.expire_leases().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_leases_are_redelivered() {
    let (q, clock, _dir) = open();
    let id = enqueue_one(&q, inv("f", "x")).await;
    let once = enqueue_one(
        &q,
        with_policy(
            inv("g", "y"),
            AsyncPolicy {
                max_retries: 0,
                ..Default::default()
            },
        ),
    )
    .await;
    let first = q.lease(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(ids(&first), vec![id.clone(), once.clone()]);
    q.mark_started(&first[0].lease).await.unwrap();

    // Within the visibility timeout nothing comes back.
    clock.advance(Duration::from_secs(5));
    assert!(lease_all(&q).await.is_empty());
    // The executor died: the invocation is redelivered as attempt 2.
    clock.advance(Duration::from_secs(1));
    let second = lease_all(&q).await;
    assert_eq!(ids(&second), vec![id.clone()]);
    assert_eq!(second[0].attempt, 2);
    let attempts = &second[0].invocation.attempts;
    assert_eq!(attempts[0].outcome, ops::LEASE_EXPIRED);
    assert!(attempts[0].error.is_some());
    assert_eq!(attempts[1].outcome, "running");
    // Out of attempts, it is dead-lettered instead.
    let g = q.get(&once).await.unwrap().unwrap();
    assert_eq!(g.status, Status::Dead);
    assert_eq!(g.attempts[0].outcome, ops::LEASE_EXPIRED);

    // The old executor's lease is lost: its answer changes nothing.
    let lost = q.complete(&first[0].lease, ok(200, "late")).await;
    assert!(
        matches!(&lost, Err(QueueError::LeaseLost { id: lost_id }) if *lost_id == id),
        "{lost:?}"
    );
    assert!(matches!(
        q.mark_started(&first[0].lease).await,
        Err(QueueError::LeaseLost { .. })
    ));
    assert!(matches!(
        q.release(&first[0].lease, Duration::ZERO).await,
        Err(QueueError::LeaseLost { .. })
    ));
    assert_eq!(q.get(&id).await.unwrap().unwrap().status, Status::Running);
    // A made-up token is refused as well.
    let forged = LeaseToken::new(id.clone(), "0".repeat(32));
    assert!(matches!(
        q.complete(&forged, ok(200, "")).await,
        Err(QueueError::LeaseLost { .. })
    ));
    q.complete(&second[0].lease, ok(202, "")).await.unwrap();
    let done = q.get(&id).await.unwrap().unwrap();
    assert_eq!(done.status, Status::Succeeded);
    assert_eq!(done.attempts.len(), 2);
    assert_eq!(done.result.unwrap().status, 202);
    // A lease that ran out but was not yet taken over may still complete.
    let late = enqueue_one(&q, inv("f", "z")).await;
    let l = q.lease(1, Duration::from_secs(1)).await.unwrap();
    assert_eq!(ids(&l), vec![late.clone()]);
    clock.advance(Duration::from_secs(30));
    q.complete(&l[0].lease, ok(200, "")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotency_keys_deduplicate_within_the_window() {
    let (q, clock, _dir) = open();
    let policy = AsyncPolicy {
        semantics: Semantics::EffectivelyOnce,
        idempotency_window: Duration::from_secs(60),
        ..Default::default()
    };
    let event = |function: &str, key: &str| {
        let mut i = with_policy(inv(function, "e"), policy.clone());
        i.idempotency_key = Some(key.into());
        i
    };
    let original = enqueue_one(&q, event("f", "src/1")).await;
    clock.advance(Duration::from_secs(30));
    // A duplicate, also twice in one batch, gets the original id.
    let out = q
        .enqueue(vec![
            event("f", "src/1"),
            event("f", "src/2"),
            event("f", "src/2"),
        ])
        .await
        .unwrap();
    assert_eq!(
        out[0],
        Enqueued::Duplicate {
            id: original.clone()
        }
    );
    let second = out[1].id().unwrap().to_string();
    assert_eq!(out[1], Enqueued::Accepted { id: second.clone() });
    assert_eq!(out[2], Enqueued::Duplicate { id: second.clone() });
    // Keys are per function.
    let other = enqueue_one(&q, event("g", "src/1")).await;
    assert_ne!(other, original);
    assert_eq!(q.depth(&name("f")).await.unwrap(), 2);
    // Finished or not, the key holds for the window...
    let leased = lease_all(&q).await;
    for l in &leased {
        q.complete(&l.lease, ok(200, "")).await.unwrap();
    }
    clock.advance(Duration::from_secs(29));
    assert_eq!(
        q.enqueue(vec![event("f", "src/1")]).await.unwrap(),
        vec![Enqueued::Duplicate {
            id: original.clone()
        }]
    );
    // ...and not after it.
    clock.advance(Duration::from_secs(1));
    let fresh = enqueue_one(&q, event("f", "src/1")).await;
    assert_ne!(fresh, original);
    assert_eq!(
        q.enqueue(vec![event("f", "src/1")]).await.unwrap(),
        vec![Enqueued::Duplicate { id: fresh }]
    );
    // Without a key nothing is deduplicated.
    let a = enqueue_one(&q, inv("f", "same")).await;
    let b = enqueue_one(&q, inv("f", "same")).await;
    assert_ne!(a, b);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_refuses_per_function() {
    let (q, _clock, _dir) = open_manual(QueueOptions {
        limits: QueueLimits {
            max_depth_per_function: 3,
        },
        ..Default::default()
    });
    let out = q
        .enqueue((0..5).map(|i| inv("f", &i.to_string())).collect())
        .await
        .unwrap();
    let accepted = out
        .iter()
        .filter(|e| matches!(e, Enqueued::Accepted { .. }))
        .count();
    assert_eq!(accepted, 3);
    assert_eq!(
        &out[3..],
        &[
            Enqueued::Full {
                function: name("f")
            },
            Enqueued::Full {
                function: name("f")
            }
        ]
    );
    // Other functions are not affected.
    enqueue_one(&q, inv("g", "x")).await;
    // Running invocations count; finished ones do not.
    let leased = q.lease(2, MINUTE).await.unwrap();
    assert!(matches!(
        q.enqueue(vec![inv("f", "y")]).await.unwrap()[0],
        Enqueued::Full { .. }
    ));
    q.complete(&leased[0].lease, failed("no", false))
        .await
        .unwrap();
    assert_eq!(q.depth(&name("f")).await.unwrap(), 2);
    enqueue_one(&q, inv("f", "z")).await;
    assert_eq!(q.depth(&name("f")).await.unwrap(), 3);
    // Replaying into a full queue is refused too, and keeps the letter.
    let dead = leased[0].invocation.id.clone();
    assert!(matches!(
        q.replay(&dead, None).await,
        Err(QueueError::Full { limit: 3, .. })
    ));
    assert!(matches!(
        q.replay_all(&name("f"), None).await,
        Err(QueueError::Full { .. })
    ));
    assert!(q.dead_letter(&dead).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn partitions_run_one_at_a_time_in_order() {
    let (q, clock, _dir) = open();
    let policy = AsyncPolicy {
        backoff_min: Duration::from_secs(1),
        backoff_max: Duration::from_secs(1),
        ..Default::default()
    };
    let p = |key: &str, body: &str| keyed(with_policy(inv("f", body), policy.clone()), key);
    let a1 = enqueue_one(&q, p("a", "a1")).await;
    let b1 = enqueue_one(&q, p("b", "b1")).await;
    let a2 = enqueue_one(&q, p("a", "a2")).await;
    let free1 = enqueue_one(&q, inv("f", "free1")).await;
    let a3 = enqueue_one(&q, p("a", "a3")).await;
    let b2 = enqueue_one(&q, p("b", "b2")).await;
    let free2 = enqueue_one(&q, inv("f", "free2")).await;
    // The same key on another function is another partition.
    let other = enqueue_one(&q, keyed(inv("g", "g1"), "a")).await;

    let first = q.lease(10, MINUTE).await.unwrap();
    assert_eq!(
        ids(&first),
        vec![a1.clone(), b1.clone(), free1, free2, other]
    );
    assert!(lease_all(&q).await.is_empty(), "a2, a3, b2 wait their turn");
    for l in &first[2..] {
        q.complete(&l.lease, ok(200, "")).await.unwrap();
    }
    // a1 succeeds: a2 (only) becomes runnable.
    q.complete(&first[0].lease, ok(200, "")).await.unwrap();
    let second = q.lease(10, MINUTE).await.unwrap();
    assert_eq!(ids(&second), vec![a2.clone()]);
    // a2 fails and waits for its retry: a3 still waits behind it.
    q.complete(&second[0].lease, failed("x", true))
        .await
        .unwrap();
    assert!(lease_all(&q).await.is_empty());
    clock.advance(Duration::from_secs(1));
    let third = lease_all(&q).await;
    assert_eq!(ids(&third), vec![a2.clone()]);
    // a2 dies: a3 proceeds.
    q.complete(&third[0].lease, failed("x", false))
        .await
        .unwrap();
    let fourth = lease_all(&q).await;
    assert_eq!(ids(&fourth), vec![a3.clone()]);
    // The leases of b1 and a3 run out: both are redelivered, and b2 still
    // waits behind b1.
    clock.advance(MINUTE + Duration::from_secs(1));
    let fifth = lease_all(&q).await;
    assert_eq!(ids(&fifth), vec![b1.clone(), a3.clone()]);
    assert!(matches!(
        q.complete(&fourth[0].lease, ok(200, "")).await,
        Err(QueueError::LeaseLost { .. })
    ));
    q.complete(&fifth[0].lease, ok(200, "")).await.unwrap();
    assert_eq!(ids(&lease_all(&q).await), vec![b2]);
    // A replayed letter joins the end of its partition.
    let replayed = q.replay(&a2, None).await.unwrap();
    assert!(lease_all(&q).await.is_empty(), "a3 is still running");
    q.complete(&fifth[1].lease, ok(200, "")).await.unwrap();
    assert_eq!(ids(&lease_all(&q).await), vec![replayed]);
}

#[tokio::test(flavor = "multi_thread")]
async fn partition_order_holds_with_many_events() {
    let (q, _clock, _dir) = open();
    let mut expected = Vec::new();
    let batch: Vec<_> = (0..30)
        .map(|i| keyed(inv("f", &i.to_string()), &format!("k{}", i % 3)))
        .collect();
    for e in q.enqueue(batch).await.unwrap() {
        expected.push(e.id().unwrap().to_string());
    }
    let mut order = Vec::new();
    loop {
        let leased = q.lease(10, MINUTE).await.unwrap();
        if leased.is_empty() {
            break;
        }
        assert!(leased.len() <= 3, "one per key at a time");
        for l in leased {
            order.push(l.invocation.id.clone());
            q.complete(&l.lease, ok(200, "")).await.unwrap();
        }
    }
    assert_eq!(order.len(), 30);
    for k in 0..3 {
        let want: Vec<_> = expected.iter().skip(k).step_by(3).collect();
        let got: Vec<_> = order.iter().filter(|id| want.contains(id)).collect();
        assert_eq!(got, want, "key k{k} ran in enqueue order");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn old_events_are_dead_lettered_instead_of_run() {
    let (q, clock, _dir) = open();
    let policy = AsyncPolicy {
        max_event_age: Duration::from_secs(60),
        ..Default::default()
    };
    let old = enqueue_one(&q, keyed(with_policy(inv("f", "old"), policy.clone()), "k")).await;
    let behind = enqueue_one(&q, keyed(inv("f", "behind"), "k")).await;
    clock.advance(Duration::from_secs(59));
    let young = enqueue_one(&q, with_policy(inv("f", "young"), policy.clone())).await;
    clock.advance(Duration::from_secs(2));
    // The expired head is dead-lettered, and the one behind it runs in the
    // same call.
    let leased = lease_all(&q).await;
    let mut got = ids(&leased);
    got.sort();
    assert_eq!(got, vec![behind, young]);
    for l in &leased {
        q.complete(&l.lease, ok(200, "")).await.unwrap();
    }
    let got = q.get(&old).await.unwrap().unwrap();
    assert_eq!(got.status, Status::Dead);
    assert_eq!(got.error.as_deref(), Some(ops::EXPIRED_ERROR));
    assert!(got.attempts.is_empty());
    let letter = q.dead_letter(&old).await.unwrap().unwrap();
    assert_eq!(letter.request, request("old"));
    // A retry that would start too late is dead-lettered as well.
    let retried = enqueue_one(&q, with_policy(inv("f", "r"), policy)).await;
    let l = lease_all(&q).await;
    q.complete(&l[0].lease, failed("x", true)).await.unwrap();
    clock.advance(Duration::from_secs(61));
    assert!(lease_all(&q).await.is_empty());
    assert_eq!(q.get(&retried).await.unwrap().unwrap().status, Status::Dead);
}

#[tokio::test(flavor = "multi_thread")]
async fn released_invocations_come_back_without_an_attempt() {
    let (q, clock, _dir) = open();
    let id = enqueue_one(&q, inv("f", "x")).await;
    let l = lease_all(&q).await;
    q.release(&l[0].lease, Duration::from_secs(5))
        .await
        .unwrap();
    let got = q.get(&id).await.unwrap().unwrap();
    assert_eq!(got.status, Status::Queued);
    assert!(got.attempts.is_empty());
    assert_eq!(got.next_attempt_at, Some(start() + Duration::from_secs(5)));
    assert!(lease_all(&q).await.is_empty());
    clock.advance(Duration::from_secs(5));
    let again = lease_all(&q).await;
    assert_eq!(again[0].attempt, 1);
    assert!(matches!(
        q.complete(&l[0].lease, ok(200, "")).await,
        Err(QueueError::LeaseLost { .. })
    ));
}

/// Enqueues an invocation of `function` and fails it for good.
async fn make_dead(q: &SqliteQueue, function: &str, body: &str) -> String {
    let policy = AsyncPolicy {
        max_retries: 0,
        ..Default::default()
    };
    let mut i = with_policy(keyed(inv(function, body), "p"), policy);
    i.qualifier = "3".into();
    i.idempotency_key = Some(format!("key-{body}"));
    let id = enqueue_one(q, i).await;
    let leased = lease_all(q).await;
    let l = leased.iter().find(|l| l.invocation.id == id).unwrap();
    assert_eq!(
        q.complete(&l.lease, failed(&format!("error {body}"), true))
            .await
            .unwrap(),
        Status::Dead
    );
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letter_queue_operations() {
    let (q, _clock, _dir) = open();
    let f1 = make_dead(&q, "f", "1").await;
    let g1 = make_dead(&q, "g", "g1").await;
    let f2 = make_dead(&q, "f", "2").await;
    let f3 = make_dead(&q, "f", "3").await;
    let f4 = make_dead(&q, "f", "4").await;

    // List, newest first, paged.
    let page = q
        .dead_letters(Some(&name("f")), None, 2, None)
        .await
        .unwrap();
    assert_eq!(ids_of(&page), vec![f4.clone(), f3.clone()]);
    let page = q
        .dead_letters(Some(&name("f")), None, 2, Some(&f3))
        .await
        .unwrap();
    assert_eq!(ids_of(&page), vec![f2.clone(), f1.clone()]);
    let page = q
        .dead_letters(Some(&name("f")), None, 2, Some(&f1))
        .await
        .unwrap();
    assert!(page.is_empty());
    let all = q.dead_letters(None, None, 100, None).await.unwrap();
    assert_eq!(
        ids_of(&all),
        vec![f4.clone(), f3.clone(), f2.clone(), g1.clone(), f1.clone()]
    );
    assert!(
        all.iter()
            .all(|i| i.status == Status::Dead && i.result.is_none())
    );

    // Inspect.
    let letter = q.dead_letter(&f2).await.unwrap().unwrap();
    assert_eq!(letter.request, request("2"));
    assert_eq!(letter.invocation.error.as_deref(), Some("error 2"));
    assert_eq!(
        letter.invocation.attempts[0].error.as_deref(),
        Some("error 2")
    );
    assert!(q.dead_letter("nonsense").await.unwrap().is_none());

    // Delete.
    assert!(q.delete_dead(&f1).await.unwrap());
    assert!(!q.delete_dead(&f1).await.unwrap());
    assert!(!q.delete_dead("nonsense").await.unwrap());
    assert!(q.get(&f1).await.unwrap().is_none());

    // Replay one, to another qualifier.
    let new = q.replay(&f2, Some("prod".into())).await.unwrap();
    let replayed = q.get(&new).await.unwrap().unwrap();
    assert_eq!(replayed.status, Status::Queued);
    assert_eq!(replayed.qualifier, "prod");
    assert_eq!(replayed.replayed_from.as_deref(), Some(f2.as_str()));
    assert_eq!(replayed.partition_key.as_deref(), Some("p"));
    assert!(replayed.attempts.is_empty());
    let old = q.get(&f2).await.unwrap().unwrap();
    assert_eq!(old.status, Status::Dead);
    assert_eq!(old.replayed_as.as_deref(), Some(new.as_str()));
    assert!(q.dead_letter(&f2).await.unwrap().is_none());
    assert!(matches!(
        q.replay(&f2, None).await,
        Err(QueueError::DeadLetterNotFound { .. })
    ));
    assert!(matches!(
        q.replay(&f3, Some("Not A Qualifier".into())).await,
        Err(QueueError::Invalid(e)) if e.field == "qualifier"
    ));
    // The replay carries the original request and policy, and is not a
    // duplicate of the original despite its idempotency key.
    let leased = lease_all(&q).await;
    assert_eq!(ids(&leased), vec![new.clone()]);
    assert_eq!(leased[0].request, request("2"));
    assert_eq!(leased[0].policy.max_retries, 0);
    q.complete(&leased[0].lease, ok(200, "")).await.unwrap();

    // Replay all of one function, to its own qualifier.
    assert_eq!(q.replay_all(&name("f"), None).await.unwrap(), 2);
    assert!(
        q.dead_letters(Some(&name("f")), None, 10, None)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ids_of(&q.dead_letters(None, None, 10, None).await.unwrap()),
        vec![g1]
    );
    let leased = lease_all(&q).await;
    assert_eq!(leased.len(), 1, "one partition: one at a time");
    assert_eq!(leased[0].invocation.qualifier, "3");
    assert_eq!(
        leased[0].invocation.replayed_from.as_deref(),
        Some(f3.as_str())
    );
    assert_eq!(leased[0].request, request("3"));
    assert_eq!(q.replay_all(&name("f"), None).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_all_covers_more_than_one_chunk() {
    let (q, _clock, _dir) = open();
    let policy = AsyncPolicy {
        max_retries: 0,
        ..Default::default()
    };
    let n = REPLAY_CHUNK * 2 + 5;
    let batch = (0..n)
        .map(|i| with_policy(inv("f", &i.to_string()), policy.clone()))
        .collect();
    q.enqueue(batch).await.unwrap();
    for l in lease_all(&q).await {
        q.complete(&l.lease, failed("x", false)).await.unwrap();
    }
    assert_eq!(q.replay_all(&name("f"), Some("2".into())).await.unwrap(), n);
    assert_eq!(q.depth(&name("f")).await.unwrap(), n as u64);
    let listed = q
        .list(&name("f"), Some(Status::Queued), 1000, None)
        .await
        .unwrap();
    assert_eq!(listed.len(), n);
    assert!(listed.iter().all(|i| i.qualifier == "2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn list_is_newest_first_and_paged() {
    let (q, _clock, _dir) = open();
    let mut all = Vec::new();
    for i in 0..7 {
        all.push(enqueue_one(&q, inv("f", &i.to_string())).await);
    }
    enqueue_one(&q, inv("g", "other")).await;
    let leased = q.lease(2, MINUTE).await.unwrap();
    q.complete(&leased[0].lease, ok(200, "big")).await.unwrap();

    all.reverse();
    let first = q.list(&name("f"), None, 4, None).await.unwrap();
    assert_eq!(ids_of(&first), all[..4]);
    let rest = q.list(&name("f"), None, 4, Some(&all[3])).await.unwrap();
    assert_eq!(ids_of(&rest), all[4..]);
    assert!(first.iter().chain(&rest).all(|i| i.result.is_none()));
    let succeeded = q
        .list(&name("f"), Some(Status::Succeeded), 10, None)
        .await
        .unwrap();
    assert_eq!(ids_of(&succeeded), vec![all[6].clone()]);
    let running = q
        .list(&name("f"), Some(Status::Running), 10, None)
        .await
        .unwrap();
    assert_eq!(ids_of(&running), vec![all[5].clone()]);
    assert_eq!(
        q.list(&name("f"), Some(Status::Queued), 10, None)
            .await
            .unwrap()
            .len(),
        5
    );
    assert!(
        q.list(&name("nobody"), None, 10, None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        q.list(&name("f"), None, 0, None).await,
        Err(QueueError::Invalid(e)) if e.field == "limit"
    ));
    assert!(matches!(
        q.list(&name("f"), None, 1001, None).await,
        Err(QueueError::Invalid(e)) if e.field == "limit"
    ));
    assert!(matches!(
        q.list(&name("f"), None, 10, Some("x' OR 1=1 --")).await,
        Err(QueueError::Invalid(e)) if e.field == "before"
    ));
    assert!(q.get("../etc").await.unwrap().is_none());
    assert!(q.get(&"0".repeat(32)).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn caller_sizes_are_bounded() {
    let (q, _clock, _dir) = open();
    let too_many: Vec<_> = (0..MAX_BATCH_LEN + 1).map(|_| inv("f", "")).collect();
    assert!(matches!(
        q.enqueue(too_many).await,
        Err(QueueError::BatchTooLarge { len: 1001 })
    ));
    let mut big = inv("f", "");
    big.request.body = vec![0; MAX_BODY_BYTES + 1];
    let err = q.enqueue(vec![inv("f", "fine"), big]).await.unwrap_err();
    assert!(
        matches!(err, QueueError::BodyTooLarge { index: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("6291456"), "{err}");
    // Six bodies of 6 MiB are each fine but too much for one call.
    let batch: Vec<_> = (0..6)
        .map(|_| {
            let mut i = inv("f", "");
            i.request.body = vec![0; MAX_BODY_BYTES];
            i
        })
        .collect();
    assert!(matches!(
        q.enqueue(batch).await,
        Err(QueueError::BodyTooLarge { index: 5, .. })
    ));
    let field = |e: QueueError| match e {
        QueueError::Invalid(v) => v.field,
        other => panic!("{other}"),
    };
    let bad_policy = with_policy(
        inv("f", ""),
        AsyncPolicy {
            max_retries: 11,
            ..Default::default()
        },
    );
    assert_eq!(
        field(q.enqueue(vec![inv("f", ""), bad_policy]).await.unwrap_err()),
        "batch[1].policy.max_retries"
    );
    let mut bad = inv("f", "");
    bad.qualifier = "no such:thing".into();
    assert_eq!(
        field(q.enqueue(vec![bad]).await.unwrap_err()),
        "batch[0].qualifier"
    );
    let mut bad = inv("f", "");
    bad.partition_key = Some("k".repeat(MAX_PARTITION_KEY_BYTES + 1));
    assert_eq!(
        field(q.enqueue(vec![bad]).await.unwrap_err()),
        "batch[0].partition_key"
    );
    let mut bad = inv("f", "");
    bad.idempotency_key = Some(String::new());
    assert_eq!(
        field(q.enqueue(vec![bad]).await.unwrap_err()),
        "batch[0].idempotency_key"
    );
    let mut bad = inv("f", "");
    bad.request.headers = vec![("h".into(), "v".into()); MAX_HEADERS + 1];
    assert_eq!(
        field(q.enqueue(vec![bad]).await.unwrap_err()),
        "batch[0].request.headers"
    );
    let mut bad = inv("f", "");
    bad.request.path_and_query = "no-slash".into();
    assert_eq!(
        field(q.enqueue(vec![bad]).await.unwrap_err()),
        "batch[0].request.path_and_query"
    );
    let mut bad = inv("f", "");
    bad.request.method = "GET /".into();
    assert_eq!(
        field(q.enqueue(vec![bad]).await.unwrap_err()),
        "batch[0].request.method"
    );
    assert_eq!(
        field(q.lease(MAX_LEASE_BATCH + 1, MINUTE).await.unwrap_err()),
        "max"
    );
    assert_eq!(
        field(q.lease(1, Duration::ZERO).await.unwrap_err()),
        "visibility"
    );
    // None of the rejected calls wrote anything.
    assert_eq!(q.depth(&name("f")).await.unwrap(), 0);
    assert!(q.counts().await.unwrap().is_empty());
    assert!(q.enqueue(vec![]).await.unwrap().is_empty());
    assert!(q.lease(0, MINUTE).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn results_and_errors_are_capped() {
    let (q, _clock, _dir) = open();
    enqueue_one(&q, inv("f", "a")).await;
    enqueue_one(&q, inv("f", "b")).await;
    let leased = lease_all(&q).await;
    let response = StoredResponse {
        status: 200,
        headers: vec![("x".into(), "y".repeat(MAX_RESULT_HEADER_BYTES)); 2],
        body: vec![7; MAX_RESULT_BYTES + 10],
        truncated: false,
    };
    q.complete(&leased[0].lease, Completion::Succeeded { response })
        .await
        .unwrap();
    let result = q
        .get(&leased[0].invocation.id)
        .await
        .unwrap()
        .unwrap()
        .result
        .unwrap();
    assert_eq!(result.body.len(), MAX_RESULT_BYTES);
    assert!(result.headers.is_empty());
    assert!(result.truncated);
    let long = "é".repeat(MAX_ERROR_BYTES);
    q.complete(
        &leased[1].lease,
        Completion::Failed {
            error: long,
            outcome: "trap: ".to_string() + &"x".repeat(1000),
            retryable: false,
        },
    )
    .await
    .unwrap();
    let got = q.get(&leased[1].invocation.id).await.unwrap().unwrap();
    assert!(got.error.as_ref().unwrap().len() <= MAX_ERROR_BYTES);
    assert!(got.error.as_ref().unwrap().ends_with('…'));
    assert!(got.attempts[0].outcome.len() <= MAX_OUTCOME_BYTES);
}

#[tokio::test(flavor = "multi_thread")]
async fn everything_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let clock = Clock::manual(start());
    let options = || QueueOptions {
        clock: clock.clone(),
        ..Default::default()
    };
    let (queued, running, dead, done, key_id);
    {
        let q = SqliteQueue::open_with(&path, options()).unwrap();
        dead = make_dead(&q, "f", "dead").await;
        done = enqueue_one(&q, inv("f", "done")).await;
        running = enqueue_one(&q, inv("f", "running")).await;
        let l = q.lease(2, Duration::from_secs(30)).await.unwrap();
        assert_eq!(ids(&l), vec![done.clone(), running.clone()]);
        q.complete(&l[0].lease, ok(201, "saved")).await.unwrap();
        let mut keyed_inv = inv("f", "keyed");
        keyed_inv.idempotency_key = Some("k".into());
        key_id = enqueue_one(&q, keyed_inv).await;
        queued = enqueue_one(&q, keyed(inv("f", "queued"), "p")).await;
    }
    let q = SqliteQueue::open_with(&path, options()).unwrap();
    let got = q.get(&done).await.unwrap().unwrap();
    assert_eq!(got.status, Status::Succeeded);
    assert_eq!(got.result.unwrap().body, b"saved");
    assert_eq!(
        q.get(&running).await.unwrap().unwrap().status,
        Status::Running
    );
    let letter = q.dead_letter(&dead).await.unwrap().unwrap();
    assert_eq!(letter.request, request("dead"));
    assert_eq!(letter.invocation.attempts.len(), 1);
    // The idempotency key survived.
    let mut again = inv("f", "keyed");
    again.idempotency_key = Some("k".into());
    assert_eq!(
        q.enqueue(vec![again]).await.unwrap(),
        vec![Enqueued::Duplicate { id: key_id.clone() }]
    );
    // Work leased before the restart is redelivered once its lease runs out.
    clock.advance(MINUTE * 2);
    let l = lease_all(&q).await;
    // Runnable since its lease ran out, the redelivery queues behind the
    // invocations that were runnable before.
    assert_eq!(
        ids(&l),
        vec![key_id.clone(), queued.clone(), running.clone()]
    );
    assert_eq!(l[2].attempt, 2);
    assert_eq!(l[1].request, request("queued"));
    // Ids keep increasing across the reopen.
    let newest = enqueue_one(&q, inv("f", "new")).await;
    assert!(
        [&done, &running, &dead, &queued]
            .iter()
            .all(|id| newest > **id)
    );
    assert_eq!(q.depth(&name("f")).await.unwrap(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_enqueues_land_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let q = SqliteQueue::open(dir.path().join("queue.db")).unwrap();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..500 {
                let id = enqueue_one(&q, inv("f", &format!("{t}/{i}"))).await;
                ids.push((id, format!("{t}/{i}")));
            }
            ids
        }));
    }
    let mut sent = Vec::new();
    for t in tasks {
        sent.extend(t.await.unwrap());
    }
    let unique: HashSet<_> = sent.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(unique.len(), 8000);
    // Group commit: the 8000 calls shared far fewer transactions.
    let stats = q.commit_stats();
    assert_eq!(stats.calls, 8000);
    assert!(
        stats.transactions * 2 < stats.calls,
        "{stats:?}: concurrent calls were not grouped"
    );
    eprintln!("{stats:?}");
    assert_eq!(q.depth(&name("f")).await.unwrap(), 8000);
    assert_eq!(
        q.counts().await.unwrap(),
        vec![(name("f"), Status::Queued, 8000)]
    );
    // Every one is stored once, with its own body.
    let mut bodies = HashSet::new();
    loop {
        let leased = q.lease(1000, MINUTE).await.unwrap();
        if leased.is_empty() {
            break;
        }
        for l in leased {
            assert!(unique.contains(&l.invocation.id));
            assert!(bodies.insert(String::from_utf8(l.request.body).unwrap()));
        }
    }
    assert_eq!(bodies.len(), 8000);
    let sent_bodies: HashSet<_> = sent.into_iter().map(|(_, b)| b).collect();
    assert_eq!(bodies, sent_bodies);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_call_does_not_disturb_its_group() {
    let (q, _clock, _dir) = open();
    enqueue_one(&q, inv("f", "x")).await;
    let l = lease_all(&q).await;
    let stale = LeaseToken::new(l[0].lease.id.clone(), "f".repeat(32));
    let mut tasks = Vec::new();
    for i in 0..50 {
        let q = q.clone();
        let stale = stale.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                assert!(q.complete(&stale, ok(200, "")).await.is_err());
            } else {
                enqueue_one(&q, inv("g", "y")).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(q.depth(&name("g")).await.unwrap(), 25);
    q.complete(&l[0].lease, ok(200, "")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_that_fails_after_writing_is_rolled_back_alone() {
    let (q, _clock, _dir) = open();
    // Hold the writer busy so that the calls below share one group.
    let mut calls = Vec::new();
    for i in 0..20 {
        let q = q.clone();
        calls.push(tokio::spawn(async move {
            if i % 2 == 0 {
                // Writes, then fails: none of it may stay.
                q.submit((1, 0), |conn, ctx| {
                    ops::enqueue(conn, ctx, &[inv("bad", "half")])?;
                    Err::<(), _>(QueueError::Database("injected".into()))
                })
                .await
                .unwrap_err();
            } else {
                enqueue_one(&q, inv("good", "whole")).await;
            }
        }));
    }
    for c in calls {
        c.await.unwrap();
    }
    assert_eq!(q.depth(&name("bad")).await.unwrap(), 0);
    assert!(
        q.list(&name("bad"), None, 10, None)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(q.depth(&name("good")).await.unwrap(), 10);
    // A panicking call is rolled back too, and the writer carries on.
    let err = q
        .submit((1, 0), |conn, ctx| {
            ops::enqueue(conn, ctx, &[inv("bad", "half")])?;
            panic!("injected")
        })
        .await
        .map(|_: ()| ())
        .unwrap_err();
    assert!(err.to_string().contains("nothing was written"), "{err}");
    assert_eq!(q.depth(&name("bad")).await.unwrap(), 0);
    enqueue_one(&q, inv("good", "after")).await;
    assert_eq!(q.depth(&name("good")).await.unwrap(), 11);
}

#[tokio::test(flavor = "multi_thread")]
async fn finished_invocations_are_pruned_and_dead_letters_kept() {
    let (q, clock, _dir) = open_manual(QueueOptions {
        retention: Retention {
            max_age: Duration::from_secs(3600),
            max_rows: 8,
        },
        ..Default::default()
    });
    let dead = make_dead(&q, "f", "dead").await;
    let mut done = Vec::new();
    for i in 0..3 {
        done.push(enqueue_one(&q, inv("f", &i.to_string())).await);
    }
    for l in lease_all(&q).await {
        q.complete(&l.lease, ok(200, "")).await.unwrap();
    }
    let waiting = enqueue_one(&q, inv("f", "waiting")).await;
    q.prune().await.unwrap();
    assert!(q.get(&done[0]).await.unwrap().is_some(), "young enough");

    clock.advance(Duration::from_secs(3601));
    let fresh = enqueue_one(&q, inv("f", "fresh")).await;
    let l = q.lease(1, MINUTE).await.unwrap();
    q.complete(&l[0].lease, ok(200, "")).await.unwrap();
    assert_eq!(l[0].invocation.id, waiting);
    q.prune().await.unwrap();
    for id in &done {
        assert!(q.get(id).await.unwrap().is_none(), "pruned by age");
    }
    assert!(
        q.get(&waiting).await.unwrap().is_some(),
        "finished recently"
    );
    assert!(q.get(&fresh).await.unwrap().is_some(), "still queued");
    assert!(
        q.dead_letter(&dead).await.unwrap().is_some(),
        "dead letters stay"
    );

    // Past max_rows the oldest finished ones go first; queued ones and dead
    // letters never do.
    let mut more = Vec::new();
    for i in 0..10 {
        more.push(enqueue_one(&q, inv("g", &i.to_string())).await);
        clock.advance(Duration::from_secs(1));
        let l = q.lease(1, MINUTE).await.unwrap();
        q.complete(&l[0].lease, ok(200, "")).await.unwrap();
    }
    q.prune().await.unwrap();
    let counts: u64 = q.counts().await.unwrap().iter().map(|c| c.2).sum();
    assert_eq!(counts, 8);
    assert!(q.dead_letter(&dead).await.unwrap().is_some());
    assert!(q.get(more.last().unwrap()).await.unwrap().is_some());
    assert!(q.get(&more[0]).await.unwrap().is_none());
    // Every queued invocation is still there.
    let queued = q
        .list(&name("f"), Some(Status::Queued), 10, None)
        .await
        .unwrap();
    assert_eq!(queued.len() as u64, q.depth(&name("f")).await.unwrap());
}

#[test]
fn the_planner_uses_the_partial_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    drop(SqliteQueue::open(&path).unwrap());
    // Configured as the queue's connections are (plans may not depend on
    // bound values), and asked the queries as the queue asks them.
    let conn = Connection::open(&path).unwrap();
    configure(&conn).unwrap();
    let plan = |sql: &str| -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let unbound = vec![rusqlite::types::Null; stmt.parameter_count()];
        let rows = stmt
            .query_map(rusqlite::params_from_iter(unbound), |r| {
                r.get::<_, String>(3)
            })
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        rows.join("; ")
    };
    let cases = [
        (
            format!(
                "SELECT {} FROM invocations AS i LEFT JOIN requests AS r ON r.seq = i.seq
                 WHERE i.status IN ('queued', 'retrying') AND i.blocked = 0 AND i.ready_ns <= ?1
                 ORDER BY i.ready_ns, i.seq LIMIT ?2",
                *rows::COLUMNS_WITH_REQUEST
            ),
            "invocations_ready",
        ),
        (
            "SELECT seq FROM invocations WHERE status = 'running' AND lease_expires_ns < ?1
             ORDER BY lease_expires_ns LIMIT ?2"
                .into(),
            "invocations_leased",
        ),
        (
            "SELECT 1 FROM invocations WHERE function = ?1 AND partition_key = ?2
             AND (status = 'queued' OR status = 'retrying' OR status = 'running') LIMIT 1"
                .into(),
            "invocations_partitions",
        ),
        (
            "SELECT seq FROM invocations WHERE function = ?1 AND partition_key = ?2
             AND (status = 'queued' OR status = 'retrying' OR status = 'running')
             ORDER BY seq LIMIT 1"
                .into(),
            "invocations_partitions",
        ),
        (
            "SELECT seq FROM invocations
             WHERE (status = 'succeeded' OR status = 'failed' OR status = 'dead')
             AND dead_letter = 0 AND updated_ns < ?1 ORDER BY updated_ns LIMIT ?2"
                .into(),
            "invocations_finished",
        ),
        (
            "SELECT seq FROM invocations WHERE dead_letter = 1 AND function = ?1 AND id < ?2
             ORDER BY id DESC LIMIT ?3"
                .into(),
            "invocations_dead_letters",
        ),
        (
            "SELECT seq FROM invocations WHERE dead_letter = 1 AND id < ?1
             ORDER BY id DESC LIMIT ?2"
                .into(),
            "invocations_all_dead_letters",
        ),
        (
            "SELECT seq FROM invocations WHERE dead_letter = 1 AND dlq = ?1 AND id < ?2
             ORDER BY id DESC LIMIT ?3"
                .into(),
            "invocations_dead_letters_by_queue",
        ),
        (
            // Listings: the newest of a status, from the index alone.
            "SELECT id, seq FROM invocations
             WHERE function = ?1 AND status = ?2 AND status <> 'running' AND id < ?3
             ORDER BY id DESC LIMIT ?4"
                .into(),
            "COVERING INDEX invocations_by_status",
        ),
    ];
    for (sql, index) in cases {
        let p = plan(&sql);
        assert!(
            p.contains(index) && !p.contains("TEMP B-TREE"),
            "{sql}\n=> {p}"
        );
    }
    // Running invocations are listed from the leases (few; sorted after).
    let p = plan(
        "SELECT id, seq FROM invocations INDEXED BY invocations_leased
         WHERE status = 'running' AND function = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
    );
    assert!(p.contains("invocations_leased"), "{p}");
}

/// CPU time the queue's writer thread has used so far, in microseconds
/// (from `/proc`; `None` elsewhere). There is one writer per open queue,
/// so this sums them.
fn writer_cpu_us() -> Option<f64> {
    let mut total = None;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
        if comm.trim() == "wisp-queue-writ"
            && let Some(ns) = stat
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<f64>().ok())
        {
            *total.get_or_insert(0.0) += ns / 1000.0;
        }
    }
    total
}

/// `cargo test -p wisp-queue --release -- --ignored --nocapture throughput`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a throughput measurement, not a check"]
async fn throughput() {
    let dir = tempfile::tempdir().unwrap();
    let q = SqliteQueue::open_with(
        dir.path().join("queue.db"),
        QueueOptions {
            limits: QueueLimits {
                max_depth_per_function: u64::MAX,
            },
            ..Default::default()
        },
    )
    .unwrap();
    let event = |i: usize| {
        let mut r = request(&format!(
            "{{\"order\":{i},\"items\":[1,2,3],\"note\":\"a small JSON event\"}}"
        ));
        r.headers.push(("ce-source".into(), "/orders".into()));
        r.headers
            .push(("content-type".into(), "application/json".into()));
        NewInvocation::new(name(&format!("f{}", i % 4)), "latest", r)
    };
    // A reading before the writer named its thread counts as zero.
    let per_event = |cpu0: Option<f64>, n: usize| match (cpu0.or(Some(0.0)), writer_cpu_us()) {
        (Some(a), Some(b)) if n > 0 => {
            format!("{:.1} µs of writer CPU per event", (b - a) / n as f64)
        }
        _ => "writer CPU unknown".into(),
    };

    // WISP_QUEUE_BENCH_EVENTS changes the events per run (default 200,000).
    let total: usize = std::env::var("WISP_QUEUE_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    for (callers, per_call) in [(256usize, 1usize), (64, 1), (16, 1), (64, 10)] {
        let calls_per_task = total / callers / per_call;
        let cpu0 = writer_cpu_us();
        let started = std::time::Instant::now();
        let mut tasks = Vec::new();
        for t in 0..callers {
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                for c in 0..calls_per_task {
                    let batch = (0..per_call)
                        .map(|k| event(t * 1_000_000 + c * per_call + k))
                        .collect();
                    let out = q.enqueue(batch).await.unwrap();
                    assert!(matches!(out[0], Enqueued::Accepted { .. }));
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let n = callers * calls_per_task * per_call;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "enqueue: {callers} concurrent callers x {per_call} event(s) per call: {n} events in {secs:.2} s = {:.0} events/s durable, {}",
            n as f64 / secs,
            per_event(cpu0, n)
        );
    }

    // Drain: 8 executors lease in batches of 100; half the run completes
    // each invocation with its own call, the other half with one
    // `complete_many` per leased batch.
    let depth: u64 = q
        .counts()
        .await
        .unwrap()
        .iter()
        .filter(|c| c.1 == Status::Queued)
        .map(|c| c.2)
        .sum();
    for batched in [false, true] {
        let quota = if batched { depth } else { depth / 2 };
        let left = Arc::new(std::sync::atomic::AtomicU64::new(quota));
        let cpu0 = writer_cpu_us();
        let started = std::time::Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let q = q.clone();
            let left = left.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                loop {
                    let take = left
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| {
                            l.checked_sub(l.min(100))
                        })
                        .unwrap()
                        .min(100);
                    if take == 0 {
                        return n;
                    }
                    let leased = q.lease(take as usize, MINUTE).await.unwrap();
                    n += leased.len() as u64;
                    if batched {
                        let batch = leased
                            .into_iter()
                            .map(|l| (l.lease, ok(200, "{}")))
                            .collect();
                        for r in q.complete_many(batch).await.unwrap() {
                            r.unwrap();
                        }
                    } else {
                        let mut done = Vec::new();
                        for l in leased {
                            let q = q.clone();
                            done.push(tokio::spawn(async move {
                                q.complete(&l.lease, ok(200, "{}")).await.unwrap();
                            }));
                        }
                        for d in done {
                            d.await.unwrap();
                        }
                    }
                }
            }));
        }
        let mut completed = 0;
        for t in tasks {
            completed += t.await.unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "lease + complete{}: {completed} invocations in {secs:.2} s = {:.0} invocations/s durable, {}",
            if batched { "_many" } else { " (one call each)" },
            completed as f64 / secs,
            per_event(cpu0, completed as usize)
        );
    }
    assert_eq!(
        q.counts()
            .await
            .unwrap()
            .iter()
            .filter(|c| c.1 == Status::Succeeded)
            .map(|c| c.2)
            .sum::<u64>(),
        depth
    );
}

/// Enqueues an invocation of `function` whose policy names dead-letter
/// queue `queue` (`None`: the default one) and fails it for good.
async fn make_dead_in(q: &SqliteQueue, function: &str, body: &str, queue: Option<&str>) -> String {
    let policy = AsyncPolicy {
        max_retries: 0,
        dead_letter_queue: queue.map(str::to_string),
        ..Default::default()
    };
    let id = enqueue_one(q, with_policy(inv(function, body), policy)).await;
    let leased = lease_all(q).await;
    let l = leased.iter().find(|l| l.invocation.id == id).unwrap();
    let status = q
        .complete(&l.lease, failed(&format!("error {body}"), true))
        .await
        .unwrap();
    assert_eq!(status, Status::Dead);
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn named_dead_letter_queues_are_listed_apart() {
    let (q, clock, _dir) = open();
    let f_default = make_dead_in(&q, "f", "1", None).await;
    let f_pay = make_dead_in(&q, "f", "2", Some("payments")).await;
    let g_pay = make_dead_in(&q, "g", "3", Some("payments")).await;
    let g_other = make_dead_in(&q, "g", "4", Some("other")).await;
    let list = |function: Option<&'static str>, queue: Option<&'static str>| {
        let q = q.clone();
        async move {
            let function = function.map(name);
            ids_of(
                &q.dead_letters(function.as_ref(), queue, 100, None)
                    .await
                    .unwrap(),
            )
        }
    };
    assert_eq!(
        list(None, Some("payments")).await,
        vec![g_pay.clone(), f_pay.clone()]
    );
    assert_eq!(list(None, Some("default")).await, vec![f_default.clone()]);
    assert_eq!(list(None, Some("other")).await, vec![g_other.clone()]);
    assert!(list(None, Some("nothing-here")).await.is_empty());
    assert_eq!(list(Some("f"), Some("payments")).await, vec![f_pay.clone()]);
    assert!(list(Some("f"), Some("other")).await.is_empty());
    assert_eq!(list(None, None).await.len(), 4, "no filter: every queue");
    // Paged within one queue.
    let page = q
        .dead_letters(None, Some("payments"), 1, None)
        .await
        .unwrap();
    assert_eq!(ids_of(&page), vec![g_pay.clone()]);
    let page = q
        .dead_letters(None, Some("payments"), 1, Some(&g_pay))
        .await
        .unwrap();
    assert_eq!(ids_of(&page), vec![f_pay.clone()]);
    // Each dead letter says which queue holds it; so does its policy.
    let all = q.dead_letters(None, None, 100, None).await.unwrap();
    let queue_of = |id: &str| {
        all.iter()
            .find(|i| i.id == id)
            .map(|i| i.dead_letter_queue.clone())
            .unwrap()
    };
    assert_eq!(queue_of(&f_default), "default");
    assert_eq!(queue_of(&f_pay), "payments");
    assert_eq!(queue_of(&g_other), "other");
    let letter = q.dead_letter(&f_pay).await.unwrap().unwrap();
    assert_eq!(letter.policy.dead_letter_queue.as_deref(), Some("payments"));
    assert_eq!(letter.invocation.dead_letter_queue, "payments");
    // A malformed queue name is refused, naming the field.
    for bad in ["", "Payments", "a b", "1st"] {
        let e = q.dead_letters(None, Some(bad), 10, None).await.unwrap_err();
        assert!(
            matches!(&e, QueueError::Invalid(v) if v.field == "queue"),
            "{bad}: {e}"
        );
    }
    // An enqueue with a malformed queue name in its policy is refused.
    let bad = with_policy(
        inv("f", "x"),
        AsyncPolicy {
            dead_letter_queue: Some("Not Valid".into()),
            ..Default::default()
        },
    );
    let e = q.enqueue(vec![bad]).await.unwrap_err();
    assert!(
        matches!(&e, QueueError::Invalid(v) if v.field == "batch[0].policy.dead_letter_queue"),
        "{e}"
    );

    // A replay keeps the policy: when it dies again it is back in its queue.
    let new = q.replay(&f_pay, None).await.unwrap();
    assert!(!list(None, Some("payments")).await.contains(&f_pay));
    let leased = lease_all(&q).await;
    assert_eq!(ids(&leased), vec![new.clone()]);
    assert_eq!(
        leased[0].policy.dead_letter_queue.as_deref(),
        Some("payments")
    );
    q.complete(&leased[0].lease, failed("again", false))
        .await
        .unwrap();
    assert_eq!(
        list(None, Some("payments")).await,
        vec![new.clone(), g_pay.clone()]
    );
    // Expired invocations land in their named queue too.
    let aged = with_policy(
        inv("h", "old"),
        AsyncPolicy {
            max_event_age: Duration::from_secs(1),
            dead_letter_queue: Some("other".into()),
            ..Default::default()
        },
    );
    let aged = enqueue_one(&q, aged).await;
    clock.advance(Duration::from_secs(2));
    assert!(lease_all(&q).await.is_empty());
    assert_eq!(list(None, Some("other")).await, vec![aged, g_other]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_version_1_database_is_migrated_to_named_dead_letter_queues() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let id = format!("{:032x}", 7);
    {
        // The schema and a dead letter as the first release wrote them.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(schema::SCHEMA_V1).unwrap();
        conn.execute_batch("PRAGMA user_version = 1").unwrap();
        conn.execute(
            "INSERT INTO invocations (id, function, qualifier, status, dead_letter, policy,
                enqueued_ns, updated_ns, expires_ns, error)
             VALUES (?1, 'f', 'latest', 'dead', 1, ?2, 1, 2, 3, 'boom')",
            params![id, r#"{"max_retries":0,"backoff_min_ms":1000,"backoff_max_ms":300000,"max_event_age_ms":21600000,"semantics":"at_least_once","idempotency_window_ms":86400000,"retry_on_4xx":false}"#],
        )
        .unwrap();
        let seq = conn.last_insert_rowid();
        conn.execute(
            "INSERT INTO requests (seq, method, path_and_query, headers, body)
             VALUES (?1, 'POST', '/', '[]', x'6869')",
            [seq],
        )
        .unwrap();
    }
    let q = SqliteQueue::open(&path).unwrap();
    let version: i64 = Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 3);
    let listed = q
        .dead_letters(None, Some("default"), 10, None)
        .await
        .unwrap();
    assert_eq!(ids_of(&listed), vec![id.clone()]);
    assert_eq!(listed[0].dead_letter_queue, "default");
    assert!(
        q.dead_letters(None, Some("payments"), 10, None)
            .await
            .unwrap()
            .is_empty()
    );
    let letter = q.dead_letter(&id).await.unwrap().unwrap();
    assert_eq!(letter.policy.dead_letter_queue, None);
    assert_eq!(letter.request.body, b"hi");
    // Still replayable, and reopening does not migrate again.
    q.replay(&id, None).await.unwrap();
    drop(q);
    let q = SqliteQueue::open(&path).unwrap();
    assert!(
        q.dead_letters(None, None, 10, None)
            .await
            .unwrap()
            .is_empty()
    );
}

/// `status_counts` as the writer keeps it, against a count of the rows.
fn assert_counts_exact(path: &std::path::Path) {
    let conn = Connection::open(path).unwrap();
    let kept: Vec<(String, String, i64)> = conn
        .prepare("SELECT function, status, n FROM status_counts WHERE n <> 0 ORDER BY 1, 2")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let counted: Vec<(String, String, i64)> = conn
        .prepare(
            "SELECT function, status, COUNT(*) FROM invocations GROUP BY function, status
             ORDER BY 1, 2",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(kept, counted, "status_counts drifted from the rows");
}

#[tokio::test(flavor = "multi_thread")]
async fn complete_many_records_each_outcome_on_its_own() {
    let (q, clock, dir) = open();
    let retrying = AsyncPolicy {
        max_retries: 1,
        backoff_min: Duration::from_secs(10),
        backoff_max: Duration::from_secs(10),
        ..Default::default()
    };
    let lost_id = enqueue_one(&q, inv("f", "lost")).await;
    let short = q.lease(1, Duration::from_secs(5)).await.unwrap();
    let ok_id = enqueue_one(&q, inv("f", "ok")).await;
    let retry_id = enqueue_one(&q, with_policy(inv("f", "retry"), retrying.clone())).await;
    let dead_id = enqueue_one(&q, keyed(inv("g", "dead"), "k")).await;
    let behind = enqueue_one(&q, keyed(inv("g", "behind"), "k")).await;
    let mut leased = q.lease(10, MINUTE).await.unwrap();
    assert_eq!(
        ids(&leased),
        vec![ok_id.clone(), retry_id.clone(), dead_id.clone()]
    );
    leased.extend(short);
    // The lease of `lost` runs out and it is redelivered: the first lease is lost.
    clock.advance(Duration::from_secs(6));
    let redelivered = q.lease(1, MINUTE).await.unwrap();
    assert_eq!(ids(&redelivered), vec![lost_id.clone()]);
    let forged = LeaseToken::new(ok_id.clone(), "0".repeat(32));
    // A real token under another invocation's id is no lease either.
    let mismatched = LeaseToken::new(behind.clone(), leased[1].lease.token());
    let batch = vec![
        (mismatched, ok(200, "mismatched")),
        (leased[0].lease.clone(), ok(201, "fine")),
        (leased[1].lease.clone(), failed("try again", true)),
        (forged, ok(200, "forged")),
        (leased[2].lease.clone(), failed("no use", false)),
        (leased[3].lease.clone(), ok(200, "late")),
        // The same lease twice: the second finds it settled.
        (leased[0].lease.clone(), ok(200, "twice")),
    ];
    let out = q.complete_many(batch).await.unwrap();
    assert_eq!(out.len(), 7);
    assert!(matches!(&out[0], Err(QueueError::LeaseLost { id }) if *id == behind));
    let out = &out[1..];
    assert_eq!(out[0].as_ref().unwrap(), &Status::Succeeded);
    assert_eq!(out[1].as_ref().unwrap(), &Status::Retrying);
    assert!(matches!(&out[2], Err(QueueError::LeaseLost { id }) if *id == ok_id));
    assert_eq!(out[3].as_ref().unwrap(), &Status::Dead);
    assert!(matches!(&out[4], Err(QueueError::LeaseLost { id }) if *id == lost_id));
    assert!(matches!(&out[5], Err(QueueError::LeaseLost { .. })));

    // Each row is as one `complete` would have left it.
    let done = q.get(&ok_id).await.unwrap().unwrap();
    assert_eq!(done.status, Status::Succeeded);
    let result = done.result.unwrap();
    assert_eq!((result.status, result.body.as_slice()), (201, &b"fine"[..]));
    assert_eq!(done.attempts.len(), 1);
    assert_eq!(done.attempts[0].outcome, "201");
    assert_eq!(done.attempts[0].started_at, start());
    assert_eq!(
        done.attempts[0].finished_at,
        Some(start() + Duration::from_secs(6))
    );
    let r = q.get(&retry_id).await.unwrap().unwrap();
    assert_eq!(r.status, Status::Retrying);
    assert_eq!(r.error.as_deref(), Some("try again"));
    assert_eq!(
        r.next_attempt_at,
        Some(start() + Duration::from_secs(16)),
        "after its backoff"
    );
    let d = q.get(&dead_id).await.unwrap().unwrap();
    assert_eq!(d.status, Status::Dead);
    assert_eq!(d.attempts[0].error.as_deref(), Some("no use"));
    assert!(q.dead_letter(&dead_id).await.unwrap().is_some());
    // The dead one's partition moves on.
    assert_eq!(ids(&q.lease(10, MINUTE).await.unwrap()), vec![behind]);
    // The redelivered one still runs under its new lease, its lost attempt kept.
    let l = q.get(&lost_id).await.unwrap().unwrap();
    assert_eq!(l.status, Status::Running);
    assert_eq!(l.attempts.len(), 2);
    assert_eq!(l.attempts[0].outcome, ops::LEASE_EXPIRED);
    assert_eq!(l.attempts[1].outcome, "running");
    assert_eq!(
        q.complete_many(vec![(redelivered[0].lease.clone(), ok(200, "now"))])
            .await
            .unwrap()[0]
            .as_ref()
            .unwrap(),
        &Status::Succeeded
    );
    assert!(q.complete_many(Vec::new()).await.unwrap().is_empty());
    let too_many = (0..=MAX_LEASE_BATCH)
        .map(|_| (leased[0].lease.clone(), ok(200, "")))
        .collect();
    assert!(matches!(
        q.complete_many(too_many).await,
        Err(QueueError::Invalid(_))
    ));
    drop(q);
    assert_counts_exact(&dir.path().join("q/queue.db"));
}

#[tokio::test(flavor = "multi_thread")]
async fn complete_many_is_one_write_that_fails_whole() {
    let (q, _clock, _dir) = open();
    for i in 0..3 {
        enqueue_one(&q, inv("f", &i.to_string())).await;
    }
    let leased = lease_all(&q).await;
    let before = q.commit_stats();
    let batch: Vec<_> = leased
        .iter()
        .map(|l| (l.lease.clone(), ok(200, "")))
        .collect();
    let out = q.complete_many(batch).await.unwrap();
    assert!(out.iter().all(|r| matches!(r, Ok(Status::Succeeded))));
    let after = q.commit_stats();
    assert_eq!(
        (
            after.calls - before.calls,
            after.transactions - before.transactions
        ),
        (1, 1),
        "one call, one transaction"
    );
    // A storage error while recording rolls every entry back.
    let id = enqueue_one(&q, inv("f", "x")).await;
    let l = lease_all(&q).await;
    let lease = l[0].lease.clone();
    let err = q
        .submit((1, 0), move |conn, ctx| {
            let out = ops::complete_many(conn, ctx, &[(lease.clone(), ok(200, "x"))])?;
            assert!(out[0].is_ok());
            conn.execute_batch("SELECT * FROM no_such_table")?;
            Ok(())
        })
        .await
        .unwrap_err();
    assert!(!err.wrote_nothing());
    assert_eq!(q.get(&id).await.unwrap().unwrap().status, Status::Running);
    q.complete(&l[0].lease, ok(200, "")).await.unwrap();

    // An entry that fails halfway (its result cannot be stored, after its
    // row was updated) fails the whole call, and nothing of any entry stays.
    let good = enqueue_one(&q, inv("f", "good")).await;
    let bad = enqueue_one(&q, inv("f", "bad")).await;
    let l = lease_all(&q).await;
    let bad_id = bad.clone();
    q.submit((1, 0), move |conn, _| {
        conn.execute(
            "INSERT INTO results (seq, status, headers, body, truncated)
             SELECT seq, 200, '[]', x'', 0 FROM invocations WHERE id = ?1",
            [&bad_id],
        )?;
        Ok(())
    })
    .await
    .unwrap();
    let batch = l.iter().map(|l| (l.lease.clone(), ok(200, "x"))).collect();
    let err = q.complete_many(batch).await.unwrap_err();
    assert!(!err.wrote_nothing(), "{err}");
    for id in [&good, &bad] {
        let got = q.get(id).await.unwrap().unwrap();
        assert_eq!(got.status, Status::Running, "{id}");
        assert_eq!(got.attempts.len(), 1);
    }
    assert_eq!(q.depth(&name("f")).await.unwrap(), 2);
    // Completed one by one, the good one is recorded.
    assert_eq!(
        q.complete(&l[0].lease, ok(200, "")).await.unwrap(),
        Status::Succeeded
    );
}

/// Every way an invocation moves, many times over, from concurrent
/// callers: the counts the writer keeps (instead of triggers) must match
/// the rows, and depth must follow.
#[tokio::test(flavor = "multi_thread")]
async fn counts_follow_every_move() {
    let (q, clock, dir) = open_manual(QueueOptions {
        retention: Retention {
            max_age: Duration::from_secs(3600),
            max_rows: 40,
        },
        ..Default::default()
    });
    let quick = AsyncPolicy {
        max_retries: 1,
        backoff_min: Duration::from_secs(1),
        backoff_max: Duration::from_secs(1),
        max_event_age: Duration::from_secs(30),
        ..Default::default()
    };
    let amo = AsyncPolicy {
        semantics: Semantics::AtMostOnce,
        ..quick.clone()
    };
    for round in 0..4u32 {
        let mut tasks = Vec::new();
        for t in 0..8u32 {
            let q = q.clone();
            let (quick, amo) = (quick.clone(), amo.clone());
            tasks.push(tokio::spawn(async move {
                let f = ["f", "g", "h"][t as usize % 3];
                let mut i = with_policy(inv(f, &format!("{round}/{t}")), quick.clone());
                if t % 2 == 0 {
                    i = keyed(i, &format!("k{}", t % 4));
                }
                if t == 7 {
                    i = with_policy(i, amo);
                }
                enqueue_one(&q, i).await;
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let leased = q.lease(6, Duration::from_secs(5)).await.unwrap();
        let mut batch = Vec::new();
        for (n, l) in leased.iter().enumerate() {
            match n % 6 {
                0 => batch.push((l.lease.clone(), ok(200, ""))),
                1 => batch.push((l.lease.clone(), failed("again", true))),
                2 => batch.push((l.lease.clone(), failed("never", false))),
                3 => q.release(&l.lease, Duration::ZERO).await.unwrap(),
                4 => q.mark_started(&l.lease).await.unwrap(),
                // Left to run out.
                _ => {}
            }
        }
        q.complete_many(batch).await.unwrap();
        clock.advance(Duration::from_secs(6));
        for l in q.lease(3, MINUTE).await.unwrap() {
            q.complete(&l.lease, ok(200, "")).await.unwrap();
        }
        let dead = q.dead_letters(None, None, 10, None).await.unwrap();
        if let Some(d) = dead.first() {
            q.replay(&d.id, None).await.unwrap();
        }
        if let Some(d) = dead.get(1) {
            assert!(q.delete_dead(&d.id).await.unwrap());
        }
        if round == 2 {
            let held = q.lease(2, MINUTE).await.unwrap();
            assert_eq!(q.expire_leases().await.unwrap(), held.len() as u64);
            // Past their event age, whatever is queued is dead-lettered.
            clock.advance(Duration::from_secs(31));
            lease_all(&q).await;
        }
    }
    // Pruning by age and by row cap.
    clock.advance(Duration::from_secs(3601));
    q.prune().await.unwrap();
    for function in ["f", "g", "h"] {
        let active: u64 = q
            .counts()
            .await
            .unwrap()
            .iter()
            .filter(|(f, s, _)| f.as_str() == function && !s.is_final())
            .map(|c| c.2)
            .sum();
        assert_eq!(q.depth(&name(function)).await.unwrap(), active);
    }
    drop(q);
    assert_counts_exact(&dir.path().join("q/queue.db"));
}

/// The hot statements must not build temporary b-trees (SQLite does so for
/// a constant `IN` list of more than two values, on every execution) nor
/// compute `json_extract`.
#[test]
fn hot_statements_stay_simple() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    drop(SqliteQueue::open(&path).unwrap());
    let conn = Connection::open(&path).unwrap();
    let program = |sql: &str| -> Vec<String> {
        let mut stmt = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
        let n = stmt.parameter_count();
        let params: Vec<i64> = vec![1; n];
        stmt.query_map(rusqlite::params_from_iter(params), |r| {
            Ok(format!(
                "{} {}",
                r.get::<_, String>(1)?,
                r.get_ref(5)?.as_str().unwrap_or_default()
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    };
    for sql in [
        "INSERT INTO invocations (id, function, qualifier, status, blocked, partition_key,
            idempotency_key, policy, enqueued_ns, updated_ns, ready_ns, expires_ns, replayed_from)
         VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?7, ?8, ?8, ?8, ?9, ?10)",
        "UPDATE invocations SET status = 'running', updated_ns = ?2, ready_ns = NULL,
            lease_token = ?3, lease_expires_ns = ?4, started_ns = NULL
         WHERE seq = ?1",
        "UPDATE invocations SET status = 'succeeded', attempts = ?2, updated_ns = ?3,
            ready_ns = NULL, lease_token = NULL, lease_expires_ns = NULL,
            started_ns = NULL, error = NULL
         WHERE seq = ?1",
        "INSERT INTO results (seq, status, headers, body, truncated) VALUES (?1, ?2, ?3, ?4, ?5)",
    ] {
        let ops = program(sql);
        assert!(
            !ops.iter()
                .any(|o| o.starts_with("OpenEphemeral") || o.contains("json_extract")),
            "{sql}\n=> {ops:?}"
        );
    }
    // And the check on `status` still holds.
    assert!(
        conn.execute(
            "INSERT INTO invocations (id, function, qualifier, status, policy, enqueued_ns,
                updated_ns, expires_ns) VALUES ('x', 'f', 'latest', 'bogus', '{}', 1, 1, 1)",
            [],
        )
        .is_err()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_version_2_database_is_migrated_to_cheaper_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let policy = |queue: Option<&str>| {
        serde_json::to_string(&AsyncPolicy {
            dead_letter_queue: queue.map(str::to_string),
            ..Default::default()
        })
        .unwrap()
    };
    let id = |n: u32| format!("{n:032x}");
    {
        // As version 2 wrote them, its triggers counting: a queued, a
        // running (its attempt stored), a partitioned one blocked behind
        // it, a succeeded one and a dead letter in a named queue.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(schema::SCHEMA_V1).unwrap();
        conn.execute_batch(schema::SCHEMA_V2).unwrap();
        conn.execute_batch("PRAGMA user_version = 2").unwrap();
        let insert = |n: u32, status: &str, extra: &str, values: &str, queue: Option<&str>| {
            conn.execute(
                &format!(
                    "INSERT INTO invocations (id, function, qualifier, status, policy,
                        enqueued_ns, updated_ns, expires_ns {extra})
                     VALUES (?1, 'f', 'latest', ?2, ?3, 1, 2, 9223372036854775807 {values})"
                ),
                params![id(n), status, policy(queue)],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO requests (seq, method, path_and_query, headers, body)
                 VALUES (?1, 'POST', '/', '[]', x'6869')",
                [conn.last_insert_rowid()],
            )
            .unwrap();
        };
        insert(1, "queued", ", ready_ns", ", 2", None);
        insert(
            2,
            "running",
            ", partition_key, lease_token, lease_expires_ns, attempts",
            r#", 'k', 'token', 9223372036854775807,
               '[{"started_at":"1970-01-01T00:00:00.000000002Z","finished_at":null,"outcome":"running","error":null}]'"#,
            None,
        );
        insert(
            3,
            "queued",
            ", partition_key, blocked, ready_ns",
            ", 'k', 1, 2",
            None,
        );
        insert(4, "succeeded", "", "", None);
        insert(
            5,
            "dead",
            ", dead_letter, attempts",
            r#", 1, '[{"started_at":"1970-01-01T00:00:00.000000001Z","finished_at":"1970-01-01T00:00:00.000000002Z","outcome":"500","error":"boom"}]'"#,
            Some("payments"),
        );
    }
    let q = SqliteQueue::open(&path).unwrap();
    {
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 3);
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        let triggers: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_schema WHERE type = 'trigger'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(triggers, 0);
        let table: String = conn
            .query_row(
                "SELECT sql FROM sqlite_schema WHERE name = 'invocations'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            !table.contains("status IN") && table.contains("status = 'dead'"),
            "{table}"
        );
    }
    assert_counts_exact(&path);
    assert_eq!(q.depth(&name("f")).await.unwrap(), 3);
    // The running one keeps its attempt, now implied by its lease.
    let running = q.get(&id(2)).await.unwrap().unwrap();
    assert_eq!(running.attempts.len(), 1);
    assert_eq!(running.attempts[0].outcome, "running");
    assert_eq!(
        running.attempts[0].started_at,
        DateTime::from_timestamp_nanos(2)
    );
    // The dead letter stays in its named queue.
    let letters = q
        .dead_letters(None, Some("payments"), 10, None)
        .await
        .unwrap();
    assert_eq!(ids_of(&letters), vec![id(5)]);
    assert_eq!(letters[0].attempts[0].error.as_deref(), Some("boom"));
    // Its executor (of the old version) may still record it with the
    // old token, and only then does the one behind it in the partition run.
    let old_lease = LeaseToken::new(id(2), "token");
    assert!(matches!(
        q.complete(&LeaseToken::new(id(1), "token"), ok(200, ""))
            .await,
        Err(QueueError::LeaseLost { .. })
    ));
    assert_eq!(ids(&lease_all(&q).await), vec![id(1)]);
    assert_eq!(
        q.complete(&old_lease, ok(200, "")).await.unwrap(),
        Status::Succeeded
    );
    let done = q.get(&id(2)).await.unwrap().unwrap();
    assert_eq!(done.attempts.len(), 1);
    assert_eq!(done.attempts[0].outcome, "200");
    assert_eq!(
        done.attempts[0].started_at,
        DateTime::from_timestamp_nanos(2)
    );
    assert_eq!(ids(&lease_all(&q).await), vec![id(3)]);
    // A new dead letter goes to its queue too.
    let named = make_dead_in(&q, "g", "x", Some("payments")).await;
    let letters = q
        .dead_letters(None, Some("payments"), 10, None)
        .await
        .unwrap();
    assert_eq!(ids_of(&letters), vec![named, id(5)]);
    drop(q);
    assert_counts_exact(&path);
}
