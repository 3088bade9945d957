//! Fair shares of the CPU between functions.
//!
//! Guests run on the same worker threads that accept and answer
//! connections. A guest runs until it waits for something or reaches an
//! epoch tick (then it yields), so without more than that, a function with
//! many CPU-bound invocations in flight fills the executor's queue with
//! them, and every other function's requests wait behind all of them.
//!
//! Here an invocation that has run a whole slice (it yielded at a tick,
//! so it is CPU-bound at least for now) may go on only while it holds a
//! *lane*; there are as many lanes as worker threads. Invocations that
//! finish or wait within their slices, which is nearly all requests, never
//! touch the lanes. A gated invocation takes a lane for each poll: when the
//! poll ends because it waits (for a body, a timer), the lane is given back,
//! so none is held while waiting; when it ends because the guest yielded
//! again, the invocation goes back in line. Invocations wait in line per
//! function (a [`Tenant`]), and a lane goes to the waiting function that
//! has used the least CPU time: its *virtual time*, the time its gated
//! polls have held lanes. A function that becomes active after an idle
//! spell starts at most [`IDLE_CREDIT_NS`] behind the function served last,
//! so it brings little credit from the spell. This is the rule of Linux's
//! CFS, with functions in place of threads: short requests are never held
//! behind CPU-bound ones (at most `lanes` of those run at once, each for a
//! slice before it yields), and two CPU-bound functions split the CPU
//! evenly, however many invocations each has in flight.
//!
//! After a slice, a guest (or whoever it hands its lane to) is woken only
//! once its worker thread has polled for I/O: otherwise CPU-bound guests
//! would hand the lane on to each other for as long as they have work,
//! and tokio polls for I/O only every 61 tasks (61 slices).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::lock;

/// The most CPU time, in nanoseconds, by which a function that becomes
/// active may be behind the function served last. A function whose
/// invocations ask for a little CPU at a time (it is idle between them) is
/// served first up to this much, so it keeps its share beside functions
/// that always have invocations waiting; one that was idle for long brings
/// no more credit than this.
const IDLE_CREDIT_NS: u64 = 5_000_000;

/// The lanes of one runtime.
pub(crate) struct Lanes {
    state: Mutex<State>,
}

struct State {
    /// Lanes not held.
    free: usize,
    /// Tenants with invocations waiting, by (virtual time, arrival).
    ready: BTreeMap<(u64, u64), Arc<Tenant>>,
    /// The virtual time of the tenant given a lane last: where a tenant
    /// that was idle starts (less its credit).
    floor: u64,
    /// Breaks ties in `ready` by arrival.
    seq: u64,
}

/// One function's share: its invocations waiting for a lane and the CPU
/// time its polls have held lanes. Its fields change only under the lock
/// of the [`Lanes`] it is used with.
#[derive(Default)]
pub(crate) struct Tenant {
    state: Mutex<TenantState>,
}

#[derive(Default)]
struct TenantState {
    /// Nanoseconds of lane time used (on the scale of [`State::floor`]).
    vtime: u64,
    /// Invocations waiting, in arrival order.
    waiting: VecDeque<Arc<Ticket>>,
    /// Lanes held now.
    running: usize,
    /// Its key in [`State::ready`] while it has invocations waiting.
    key: Option<(u64, u64)>,
}

impl TenantState {
    fn active(&self) -> bool {
        self.running > 0 || !self.waiting.is_empty()
    }
}

const IDLE: u8 = 0;
const WAITING: u8 = 1;
const GRANTED: u8 = 2;
const CANCELLED: u8 = 3;

/// One invocation's place in line.
struct Ticket {
    state: AtomicU8,
    /// The task's waker, from its latest poll.
    waker: Mutex<Option<Waker>>,
}

impl Ticket {
    fn new() -> Arc<Ticket> {
        Arc::new(Ticket {
            state: AtomicU8::new(IDLE),
            waker: Mutex::new(None),
        })
    }
}

/// Set by the guest's epoch callback when it yields at a tick (see
/// [`on_tick`]); read and cleared by its [`Fair`] after each poll.
pub(crate) type Yielded = Arc<AtomicBool>;

/// What a store's epoch callback does at each tick: marks the invocation
/// as having yielded and yields so that the task is polled again only
/// after its worker has polled for I/O ([`tokio::task::yield_now`] defers
/// the wake that way).
pub(crate) fn on_tick(yielded: &AtomicBool) -> wasmtime::UpdateDeadline {
    yielded.store(true, Ordering::Release);
    wasmtime::UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))
}

impl Lanes {
    pub(crate) fn new(lanes: usize) -> Self {
        Lanes {
            state: Mutex::new(State {
                free: lanes.max(1),
                ready: BTreeMap::new(),
                floor: 0,
                seq: 0,
            }),
        }
    }

    /// Takes a lane for `tenant` if one is free and no one waits;
    /// otherwise puts `ticket` in line and answers false.
    fn take_or_wait(&self, tenant: &Arc<Tenant>, ticket: &Arc<Ticket>) -> bool {
        let mut state = lock(&self.state);
        let floor = state.floor;
        let mut t = lock(&tenant.state);
        if !t.active() {
            // Little credit from an idle spell; debt is kept.
            t.vtime = t.vtime.max(floor.saturating_sub(IDLE_CREDIT_NS));
        }
        if state.free > 0 && state.ready.is_empty() {
            state.free -= 1;
            t.running += 1;
            state.floor = floor.max(t.vtime);
            return true;
        }
        state.wait(tenant, &mut t, ticket);
        false
    }

    /// Gives back a lane `tenant` held for `used`; with `ticket`, that
    /// invocation goes back in line (it yielded). The lane goes to the next
    /// in line, which may be that same invocation: answers its waker, for
    /// the caller to wake.
    #[must_use]
    fn give_back(
        &self,
        tenant: &Arc<Tenant>,
        used: Duration,
        ticket: Option<&Arc<Ticket>>,
    ) -> Option<Waker> {
        let mut state = lock(&self.state);
        let mut t = lock(&tenant.state);
        t.running = t.running.saturating_sub(1);
        t.vtime = t
            .vtime
            .saturating_add(u64::try_from(used.as_nanos()).unwrap_or(u64::MAX));
        // Its place in line moves with the time it has used.
        if let Some(old) = t.key {
            state.ready.remove(&old);
            let key = (t.vtime, old.1);
            t.key = Some(key);
            state.ready.insert(key, tenant.clone());
        }
        if let Some(ticket) = ticket {
            state.wait(tenant, &mut t, ticket);
        }
        drop(t);
        state.hand_on()
    }
}

/// Wakes `waker` once this worker thread has nothing else to run and has
/// polled for I/O and timers: tokio defers the wake of a task that calls
/// [`tokio::task::yield_now`] that way, and this asks for the same for
/// the task `waker` belongs to. Outside a runtime it wakes at once.
fn wake_after_io(waker: &Waker) {
    let mut yielding = std::pin::pin!(tokio::task::yield_now());
    let _ = yielding.as_mut().poll(&mut Context::from_waker(waker));
}

impl State {
    /// Puts `ticket` at the end of its tenant's line.
    fn wait(&mut self, tenant: &Arc<Tenant>, t: &mut TenantState, ticket: &Arc<Ticket>) {
        ticket.state.store(WAITING, Ordering::Release);
        t.waiting.push_back(ticket.clone());
        if t.key.is_none() {
            let key = (t.vtime, self.seq);
            self.seq += 1;
            t.key = Some(key);
            self.ready.insert(key, tenant.clone());
        }
    }

    /// Hands a freed lane to the first live invocation of the tenant with
    /// the least virtual time, or frees it; answers the waker to wake.
    fn hand_on(&mut self) -> Option<Waker> {
        while let Some((_, tenant)) = self.ready.pop_first() {
            let mut t = lock(&tenant.state);
            t.key = None;
            let ticket = t.waiting.pop_front();
            if !t.waiting.is_empty() {
                let key = (t.vtime, self.seq);
                self.seq += 1;
                t.key = Some(key);
                self.ready.insert(key, tenant.clone());
            }
            let Some(ticket) = ticket else { continue };
            if ticket
                .state
                .compare_exchange(WAITING, GRANTED, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                // Cancelled: it went away while waiting.
                continue;
            }
            t.running += 1;
            self.floor = self.floor.max(t.vtime);
            return lock(&ticket.waker).clone();
        }
        self.free += 1;
        None
    }
}

/// A future that, once it has yielded at a tick, runs only while it holds
/// a lane of its runtime, for its tenant.
pub(crate) struct Fair<F> {
    inner: F,
    lanes: Arc<Lanes>,
    tenant: Arc<Tenant>,
    /// Its place in line, made when it is first gated (most invocations
    /// never are).
    ticket: Option<Arc<Ticket>>,
    yielded: Yielded,
    /// Whether it has yielded (and so takes a lane for each poll).
    gated: bool,
}

impl<F> Fair<F> {
    pub(crate) fn new(inner: F, lanes: Arc<Lanes>, tenant: Arc<Tenant>, yielded: Yielded) -> Self {
        yielded.store(false, Ordering::Release);
        Fair {
            inner,
            lanes,
            tenant,
            ticket: None,
            yielded,
            gated: false,
        }
    }
}

/// A lane held through one poll: given back if the poll panics.
struct Held<'a> {
    lanes: &'a Lanes,
    tenant: &'a Arc<Tenant>,
    since: Instant,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(next) = self
                .lanes
                .give_back(self.tenant, self.since.elapsed(), None)
        {
            next.wake();
        }
    }
}

impl<F: Future + Unpin> Future for Fair<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        if !this.gated {
            let polled = Pin::new(&mut this.inner).poll(cx);
            if polled.is_pending() && this.yielded.swap(false, Ordering::AcqRel) {
                // A whole slice: from now on it runs in a lane. The
                // guest's yield has it polled again after I/O, and that
                // poll takes a lane or waits for one.
                this.gated = true;
            }
            return polled;
        }
        let ticket = this.ticket.get_or_insert_with(Ticket::new);
        {
            let mut waker = lock(&ticket.waker);
            match waker.as_mut() {
                Some(w) => w.clone_from(cx.waker()),
                None => *waker = Some(cx.waker().clone()),
            }
        }
        let granted = ticket
            .state
            .compare_exchange(GRANTED, IDLE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        // Waiting, unless handed a lane since (the waker is up to date
        // before the state is read, so a lane handed on later wakes it).
        if !granted
            && (ticket.state.load(Ordering::Acquire) == WAITING
                || !this.lanes.take_or_wait(&this.tenant, ticket))
        {
            return Poll::Pending;
        }
        let held = Held {
            lanes: &this.lanes,
            tenant: &this.tenant,
            since: Instant::now(),
        };
        let polled = Pin::new(&mut this.inner).poll(cx);
        let used = held.since.elapsed();
        drop(held);
        let yielded = polled.is_pending() && this.yielded.swap(false, Ordering::AcqRel);
        let next = this
            .lanes
            .give_back(&this.tenant, used, yielded.then_some(ticket));
        if let Some(next) = next {
            if yielded {
                wake_after_io(&next);
            } else {
                next.wake();
            }
        }
        polled
    }
}

impl<F> Drop for Fair<F> {
    fn drop(&mut self) {
        let Some(ticket) = &self.ticket else { return };
        match ticket
            .state
            .compare_exchange(WAITING, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
        {
            // Left in its tenant's line, skipped when its turn comes.
            Ok(_) => {}
            Err(GRANTED) => {
                if let Some(next) = self.lanes.give_back(&self.tenant, Duration::ZERO, None) {
                    next.wake();
                }
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A future that counts its polls and is ready after `polls_to_end`;
    /// `spin` is how long each poll takes. Until then each poll yields as a
    /// guest does at a tick (sets the flag, wakes itself) or, with `waits`,
    /// waits to be woken (as a guest waiting for I/O does).
    struct Work {
        polls: Arc<AtomicUsize>,
        polls_to_end: usize,
        spin: Duration,
        waits: bool,
        yielded: Yielded,
    }

    impl Future for Work {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let n = self.polls.fetch_add(1, Ordering::SeqCst) + 1;
            let until = Instant::now() + self.spin;
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            if n >= self.polls_to_end {
                Poll::Ready(())
            } else {
                if !self.waits {
                    self.yielded.store(true, Ordering::SeqCst);
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
        }
    }

    /// An invocation of `tenant` that is ready after `polls_to_end` polls
    /// of `spin` each, and the count of its polls.
    fn work(
        lanes: &Arc<Lanes>,
        tenant: &Arc<Tenant>,
        polls_to_end: usize,
        spin: Duration,
    ) -> (Fair<Work>, Arc<AtomicUsize>) {
        let polls = Arc::new(AtomicUsize::new(0));
        let yielded = Yielded::default();
        let w = Work {
            polls: polls.clone(),
            polls_to_end,
            spin,
            waits: false,
            yielded: yielded.clone(),
        };
        (Fair::new(w, lanes.clone(), tenant.clone(), yielded), polls)
    }

    fn poll<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
    }

    fn free(lanes: &Lanes) -> usize {
        lock(&lanes.state).free
    }

    fn state(f: &Fair<Work>) -> u8 {
        f.ticket
            .as_ref()
            .map_or(IDLE, |t| t.state.load(Ordering::SeqCst))
    }

    /// Holds the only lane from outside a poll, as a poll in progress
    /// would, so that whoever polls next must queue.
    fn hold(lanes: &Arc<Lanes>, tenant: &Arc<Tenant>) {
        assert!(lanes.take_or_wait(tenant, &Ticket::new()));
    }

    /// Polls every one of `all` once: a first slice, after which each is
    /// gated.
    fn first_slices(all: &mut [&mut Fair<Work>]) {
        for f in all.iter_mut() {
            assert!(poll(&mut **f).is_pending());
            assert!(f.gated);
        }
    }

    /// Drives `all` as an executor would once every lane is contended:
    /// whoever was handed the lane runs a poll (and goes back in line).
    /// Answers false when no one was handed the lane.
    fn step(all: &mut [&mut Fair<Work>]) -> bool {
        let Some(granted) = all.iter_mut().find(|f| state(f) == GRANTED) else {
            return false;
        };
        let _ = poll(&mut **granted);
        true
    }

    /// Gates all of `all`, then queues them behind a lane held from
    /// outside, then frees it.
    fn contend(lanes: &Arc<Lanes>, all: &mut [&mut Fair<Work>]) {
        first_slices(all);
        let outside = Arc::new(Tenant::default());
        hold(lanes, &outside);
        for f in all.iter_mut() {
            assert!(poll(&mut **f).is_pending());
            assert_eq!(state(f), WAITING);
        }
        let _ = lanes.give_back(&outside, Duration::ZERO, None);
    }

    #[test]
    fn invocations_that_never_yield_never_touch_the_lanes() {
        let lanes = Arc::new(Lanes::new(1));
        let tenant = Arc::new(Tenant::default());
        // Even with the only lane held by someone else.
        hold(&lanes, &Arc::new(Tenant::default()));
        let (mut f, polls) = work(&lanes, &tenant, 3, Duration::ZERO);
        f.inner.waits = true;
        assert!(poll(&mut f).is_pending());
        assert!(poll(&mut f).is_pending());
        assert!(poll(&mut f).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 3);
        assert!(!f.gated);
        assert_eq!(state(&f), IDLE);
        let t = lock(&tenant.state);
        assert!(!t.active() && t.vtime == 0, "nothing was charged");
    }

    #[test]
    fn after_a_whole_slice_each_poll_takes_a_lane_and_a_wait_gives_it_back() {
        let lanes = Arc::new(Lanes::new(1));
        let tenant = Arc::new(Tenant::default());
        let (mut f, polls) = work(&lanes, &tenant, 4, Duration::ZERO);
        assert!(poll(&mut f).is_pending(), "the first slice yields");
        assert!(f.gated);
        assert_eq!(free(&lanes), 1, "the first slice took no lane");
        // Yields again: back in line, and alone there, handed the lane.
        assert!(poll(&mut f).is_pending());
        assert_eq!((state(&f), free(&lanes)), (GRANTED, 0));
        // This time it waits for I/O: the lane is given back.
        f.inner.waits = true;
        assert!(poll(&mut f).is_pending());
        assert_eq!((state(&f), free(&lanes)), (IDLE, 1));
        assert!(poll(&mut f).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 4);
        assert_eq!(free(&lanes), 1);
        assert!(!lock(&tenant.state).active());
    }

    #[test]
    fn a_gated_invocation_runs_only_when_handed_a_lane() {
        let lanes = Arc::new(Lanes::new(1));
        let hog = Arc::new(Tenant::default());
        let (mut f, polls) = work(&lanes, &Arc::new(Tenant::default()), 2, Duration::ZERO);
        assert!(poll(&mut f).is_pending());
        hold(&lanes, &hog);
        assert!(poll(&mut f).is_pending());
        assert!(poll(&mut f).is_pending(), "still no lane");
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "it never ran without a lane"
        );
        let next = lanes.give_back(&hog, Duration::from_millis(1), None);
        assert!(next.is_some(), "the lane went straight to the waiter");
        assert_eq!(free(&lanes), 0);
        assert!(poll(&mut f).is_ready());
        assert_eq!(free(&lanes), 1);
    }

    #[test]
    fn a_function_that_used_less_cpu_goes_before_the_queue_of_a_busier_one() {
        let lanes = Arc::new(Lanes::new(1));
        let hog = Arc::new(Tenant::default());
        // Ten invocations of a CPU-bound function take 1 ms slices.
        let mut hogs: Vec<_> = (0..10)
            .map(|_| work(&lanes, &hog, usize::MAX, Duration::from_millis(1)).0)
            .collect();
        let mut refs: Vec<&mut Fair<Work>> = hogs.iter_mut().collect();
        contend(&lanes, &mut refs);
        for _ in 0..20 {
            assert!(step(&mut refs));
        }
        // A short request of another function runs at once, lanes or not.
        let (mut short, _) = work(&lanes, &Arc::new(Tenant::default()), 1, Duration::ZERO);
        assert!(poll(&mut short).is_ready());
        // A long one of a light function is gated after its first slice
        // and waits behind the ten...
        let light = Arc::new(Tenant::default());
        let (mut l, light_polls) = work(&lanes, &light, 3, Duration::ZERO);
        assert!(poll(&mut l).is_pending());
        assert!(poll(&mut l).is_pending(), "the lane is held");
        assert_eq!(state(&l), WAITING);
        // ...until the hog's slice in progress ends: it goes first.
        assert!(step(&mut refs));
        assert_eq!(
            state(&l),
            GRANTED,
            "the light function went before the hogs queued ahead of it"
        );
        assert!(poll(&mut l).is_pending());
        assert_eq!(light_polls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn two_busy_functions_share_the_lanes_by_time_not_by_count() {
        let lanes = Arc::new(Lanes::new(1));
        let a = Arc::new(Tenant::default());
        let b = Arc::new(Tenant::default());
        // `a` has 8 invocations in flight, `b` 1; each poll of `a` takes
        // 3 times as long as one of `b`.
        let mut fa: Vec<_> = (0..8)
            .map(|_| work(&lanes, &a, usize::MAX, Duration::from_micros(300)).0)
            .collect();
        let (mut fb, b_polls) = work(&lanes, &b, usize::MAX, Duration::from_micros(100));
        let mut all: Vec<&mut Fair<Work>> = fa.iter_mut().collect();
        all.push(&mut fb);
        contend(&lanes, &mut all);
        for _ in 0..400 {
            assert!(step(&mut all));
        }
        drop(all);
        let a_polls: usize = fa
            .iter()
            .map(|f| f.inner.polls.load(Ordering::SeqCst))
            .sum();
        let (ta, tb) = (a_polls * 300, b_polls.load(Ordering::SeqCst) * 100);
        // By count of polls `a` would have 8/9 of them and 96 % of the
        // time; by time, half.
        let share = ta as f64 / (ta + tb) as f64;
        assert!(
            (0.35..0.65).contains(&share),
            "a's share of lane time was {share:.2} ({ta} µs against {tb} µs)"
        );
    }

    #[test]
    fn a_cancelled_waiter_is_skipped_and_a_granted_one_gives_its_lane_back() {
        let lanes = Arc::new(Lanes::new(1));
        let tenant = Arc::new(Tenant::default());
        let (mut gone, _) = work(&lanes, &tenant, 2, Duration::ZERO);
        let (mut next, polls) = work(&lanes, &tenant, 2, Duration::ZERO);
        first_slices(&mut [&mut gone, &mut next]);
        hold(&lanes, &tenant);
        assert!(poll(&mut gone).is_pending());
        assert!(poll(&mut next).is_pending());
        drop(gone);
        let _ = lanes.give_back(&tenant, Duration::ZERO, None);
        assert!(
            poll(&mut next).is_ready(),
            "the lane skipped the cancelled one"
        );
        assert_eq!(polls.load(Ordering::SeqCst), 2);

        // Handed a lane, then dropped before it ran: the lane comes back.
        let (mut late, _) = work(&lanes, &tenant, 2, Duration::ZERO);
        first_slices(&mut [&mut late]);
        hold(&lanes, &tenant);
        assert!(poll(&mut late).is_pending());
        let _ = lanes.give_back(&tenant, Duration::ZERO, None);
        assert_eq!((state(&late), free(&lanes)), (GRANTED, 0));
        drop(late);
        assert_eq!(free(&lanes), 1);
        assert!(!lock(&tenant.state).active());
    }
}
