//! The delivery worker: claims due deliveries, signs and POSTs them, records
//! every attempt and schedules retries.
//!
//! One loop (`run`) claims due deliveries and hands them out, in turn, to the
//! delivery threads (`delivery.threads`, default 2). Each
//! thread has its own HTTP client (`awc::Client` is `!Send`) and runs its
//! attempts as local tasks. The slots are shared: attempts in flight are capped
//! overall (`max_in_flight`, until each is recorded) and requests in flight per
//! endpoint (`max_per_endpoint`, until each is answered) so a slow endpoint
//! cannot hold every slot. Must not import actix-web's server side;
//! the API wakes the worker through `DeliveryHandle`.

pub mod client;
pub mod netguard;
pub mod operational;
pub mod retry;

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::web::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};

use crate::config::DeliveryConfig;
use crate::domain::{
    AppId, AttemptId, AttemptTrigger, EndpointId, MessageId, MessageStatus, TaskId, now_ms,
};
use crate::metrics::Metrics;
use crate::signing;
use crate::store::{AttemptRecord, Claim, HandedMessage, Next, Store, StoreError, TaskRecord};
use client::{Request, Sender, TlsRoots};
use netguard::NetGuard;
pub use operational::Operational;

/// The `user-agent` of every delivery.
pub const USER_AGENT: &str = concat!("webhookd/", env!("CARGO_PKG_VERSION"));

/// What an attempt record shows for the value of an endpoint's custom header.
const REDACTED: &str = "[redacted]";

/// An attempt that was just recorded.
#[derive(Clone, Debug)]
pub struct Landed {
    pub msg_id: MessageId,
    pub ep_id: EndpointId,
    pub attempt_id: AttemptId,
}

/// Wakes the worker when new work was queued, and tells whoever listens when an
/// attempt was recorded. Cheap to clone; `Send`.
#[derive(Clone)]
pub struct DeliveryHandle {
    notify: Arc<Notify>,
    /// Set while the worker will look again within `CLAIM_GATHER` anyway
    /// (see `claim_and_hand_out`): a wake-up then is not needed.
    looking_soon: Arc<AtomicBool>,
    landed: tokio::sync::broadcast::Sender<Landed>,
}

impl Default for DeliveryHandle {
    fn default() -> Self {
        Self {
            notify: Arc::default(),
            looking_soon: Arc::default(),
            // Listeners only care about recent attempts; a lagging one just misses some.
            landed: tokio::sync::broadcast::channel(1024).0,
        }
    }
}

impl DeliveryHandle {
    pub fn wake(&self) {
        if !self.looking_soon.load(Ordering::SeqCst) {
            self.notify.notify_one();
        }
    }

    /// Attempts recorded from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Landed> {
        self.landed.subscribe()
    }
}

/// Consecutive failures after which `message.attempt.failing` is sent.
const FAILING_AFTER: u32 = 4;

/// How often expired leases are looked for while running.
const LEASE_SWEEP: Duration = Duration::from_secs(10);
/// An endpoint at its concurrency cap whose attempts take this long on average
/// is slow: its due deliveries are moved back in the queue (by about one
/// attempt's time, at most `request_timeout`, and spread over the time it
/// needs for them: `backlog_due`) instead of being looked at on every claim.
/// A fast endpoint's deliveries just wait in place for the next free slot.
const SLOW_AFTER_MS: i64 = 1_000;
/// So is an endpoint at its cap that has finished no attempt for this long and
/// for twice its mean attempt time: one that just stopped answering.
const STUCK_AFTER_MS: i64 = 100;
/// The furthest ahead a slow endpoint's backlog is moved (see `backlog_due`):
/// how long a backlog may wait once its endpoint is fast again.
const BACKLOG_HORIZON_MS: i64 = 600_000;
/// A claim leaves at most this many deliveries in place (their endpoints
/// fast, at their caps or waiting for the slow share); further ones are
/// moved back like a slow endpoint's, spread over the time their endpoints
/// need for them. So a long backlog of one busy endpoint is neither read again on
/// every wake-up nor in front of what is due behind it for other endpoints.
const SKIP_BUDGET: usize = 64;
/// With at least this many attempts in flight, a freed slot does not start a
/// claim at once: the worker looks again after `CLAIM_GATHER`, or once this
/// many deliveries (twice as many slots: each frees its endpoint's and an
/// overall one) are done.
const CLAIM_BATCH: usize = 8;
const CLAIM_GATHER: Duration = Duration::from_millis(1);
/// Longest the worker sleeps without looking at the queue (a safety net; wake-ups are explicit).
const IDLE_TICK: Duration = Duration::from_secs(1);

/// What the claiming loop and every delivery thread share.
struct Shared {
    store: Store,
    cfg: DeliveryConfig,
    lease_ms: i64,
    slots: Mutex<SlotBook>,
    /// Signalled when attempts finish and free slots (see `slot_freed`).
    freed: Notify,
    /// Slots freed since the claiming loop began to sleep while looking soon.
    frees: AtomicUsize,
    handle: DeliveryHandle,
    ops: Operational,
    metrics: Arc<Metrics>,
    /// Held while an endpoint that answered 410 is read and disabled.
    disabling: Mutex<()>,
}

/// Who holds which slots.
#[derive(Default)]
struct SlotBook {
    /// Requests in flight per endpoint.
    per_endpoint: HashMap<EndpointId, Slots>,
    /// Mean attempt duration (ms, moving average) per endpoint that had one.
    mean_ms: HashMap<EndpointId, f64>,
    /// Per endpoint whose deliveries are being moved back, the earliest due
    /// time of the next one (see `backlog_due`).
    backlogs: HashMap<EndpointId, Backlog>,
    /// Per endpoint a delivery was claimed for since app or endpoint
    /// records were last written (`throttles_at`), its throttle; those of
    /// endpoints not throttled, with no line, go when records are written,
    /// and the others' rates are read again (see `Shared::reread_throttles`).
    throttles: HashMap<EndpointId, Throttle>,
    throttles_at: u64,
    in_flight: usize,
    /// Requests in flight that count in the slow share (see `slow_share`).
    slow_in_flight: usize,
}

/// Where an endpoint's deliveries moved back at its cap go next.
struct Backlog {
    next_ms: i64,
    /// Moved back because the endpoint is slow (else: because too many of
    /// its deliveries were waiting in place). Once it is fast again, its
    /// next ones are spread from then, not behind those moved back for it
    /// while it was slow.
    slow: bool,
}

impl SlotBook {
    /// Gives back one of `ep`'s slots under its cap (its entry goes with
    /// the last), with when its request ended, if it ran.
    fn give_back(&mut self, ep: &EndpointId, ended_ms: Option<i64>) {
        if let Some(slots) = self.per_endpoint.get_mut(ep) {
            slots.in_flight -= 1;
            if slots.counted_slow > 0 {
                slots.counted_slow -= 1;
                self.slow_in_flight -= 1;
            }
            if let Some(at) = ended_ms {
                slots.progress_ms = at;
            }
            if slots.in_flight == 0 {
                self.per_endpoint.remove(ep);
            }
        }
    }
}

/// An endpoint's throttle: at most its `throttleRate` (else its app's)
/// deliveries a second, evenly spaced. A delivery that may not go yet is
/// moved back in the queue to a time of its own, one interval after the
/// last one given, and that turn is kept for it: the line waits in the
/// queue, each comes back at its time and goes, and every other delivery
/// (fresh from a publish, a retry, a resend) joins the end of the line
/// while there is one. When the rate changes, the line is brought forward
/// in the queue and lines up again at the new rate.
struct Throttle {
    /// The endpoint's app, whose rate is the endpoint's default.
    app_id: AppId,
    /// Milliseconds between two deliveries; `None`: not throttled.
    interval_ms: Option<f64>,
    /// When the next delivery may go while nothing waits in line.
    next_ms: f64,
    /// The times given to the deliveries in line, each with how many were
    /// given it (above 1,000 a second several share a millisecond).
    line: BTreeMap<i64, u32>,
    /// The time the next one to join the line is given.
    line_end_ms: f64,
}

/// Most deliveries kept in one endpoint's line; beyond, one is moved back
/// to the end of the line without a turn of its own, and joins the line
/// when it comes back.
const LINE_MAX: usize = 100_000;

impl Throttle {
    fn new(app_id: AppId, interval_ms: Option<f64>) -> Self {
        Self {
            app_id,
            interval_ms,
            next_ms: f64::MIN,
            line: BTreeMap::new(),
            line_end_ms: f64::MIN,
        }
    }

    /// Whether a delivery due at `due` may go at `now` (`Ok`), or the time
    /// it is to come back (`Err`). `from_queue`: it was claimed from the
    /// queue (where the line waits), not handed over by its publish.
    fn admit(&mut self, interval: f64, now: i64, due: i64, from_queue: bool) -> Result<(), i64> {
        if from_queue && self.take_turn(due) {
            // Back from the line at (or after) its time: its turn was kept,
            // and the next is one interval after that time, however late
            // this claim, so that a loop that looks late keeps the pace.
            self.next_ms = self.next_ms.max(due as f64 + interval);
            return Ok(());
        }
        let now_f = now as f64;
        if self.line.is_empty() && self.line_end_ms <= now_f && now_f >= self.next_ms {
            self.next_ms = now_f + interval;
            return Ok(());
        }
        let at = self.line_end_ms.max(self.next_ms).max(now_f);
        let back = at.ceil() as i64;
        if self.line.len() < LINE_MAX {
            *self.line.entry(back).or_default() += 1;
            self.line_end_ms = at + interval;
        }
        Err(back)
    }

    /// Takes one of the turns given for `due` from the line, if there is one.
    fn take_turn(&mut self, due: i64) -> bool {
        let Some(n) = self.line.get_mut(&due) else {
            return false;
        };
        *n -= 1;
        if *n == 0 {
            self.line.remove(&due);
        }
        true
    }
}

/// One delivery thread's own part.
struct Lane {
    shared: Arc<Shared>,
    sender: Sender,
}

/// A delivery thread, as the claiming loop sees it.
struct LaneHandle {
    tx: tokio::sync::mpsc::UnboundedSender<(TaskRecord, Hold)>,
    thread: std::thread::JoinHandle<()>,
}

/// How a delivery was taken: claimed from the queue under a lease, or
/// handed over by its publish in memory (see `Store::take_handed_over`),
/// with its message and payload.
enum Hold {
    Lease(Arc<ClaimLease>),
    Handed(Arc<HandedMessage>),
}

/// The lease of one claim, shared by the deliveries it took. The last of
/// them to finish gives it up, unless one could not be recorded: then it is
/// kept, and when it expires all of them go back on the queue.
struct ClaimLease {
    until_ms: i64,
    first: TaskId,
    outstanding: AtomicUsize,
    keep: AtomicBool,
}

/// One endpoint's requests in flight.
struct Slots {
    in_flight: usize,
    /// How many of them count in the slow share.
    counted_slow: usize,
    /// When it last finished an attempt (or, before the first, began one).
    progress_ms: i64,
}

/// Puts every leased delivery back on the queue, due now: at start no worker is
/// alive, so every lease is stale. Then queues every delivery handed over in
/// memory and left unrecorded by the process before (see
/// `Store::recover_handed_over`). Call before `run`.
pub fn recover_in_flight(store: &Store) -> Result<usize, StoreError> {
    let now = now_ms();
    let recovered =
        store.release_expired_leases(i64::MAX, now)? + store.recover_handed_over(now)?;
    if recovered > 0 {
        tracing::info!(
            recovered,
            "re-queued deliveries that were in flight at the last stop"
        );
    }
    Ok(recovered)
}

/// Runs the worker until `shutdown` is cancelled, then waits (at most the request
/// timeout) for attempts in flight. Must run inside a local task set (actix runtime).
pub async fn run(
    store: Store,
    cfg: DeliveryConfig,
    handle: DeliveryHandle,
    ops: Operational,
    roots: TlsRoots,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let shared = Arc::new(Shared {
        lease_ms: (cfg.request_timeout + cfg.lease_margin).as_millis() as i64,
        store,
        cfg,
        slots: Mutex::default(),
        freed: Notify::new(),
        frees: AtomicUsize::new(0),
        handle: handle.clone(),
        ops,
        metrics,
        disabling: Mutex::default(),
    });
    let lanes = (0..shared.cfg.threads)
        .map(|i| start_lane(i, Arc::clone(&shared), roots.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(RunError::Thread)?;
    shared.store.open_handoff(shared.cfg.max_in_flight);
    claim_and_hand_out(&shared, &lanes, &handle, &shutdown).await;
    // Publishes from now on queue their deliveries; those handed over and not
    // taken are found at the next start.
    shared.store.close_handoff();
    // Let attempts in flight finish, within the request timeout.
    let deadline = tokio::time::Instant::now() + shared.cfg.request_timeout;
    while shared.in_flight() > 0 {
        if tokio::time::timeout_at(deadline, shared.freed.notified())
            .await
            .is_err()
        {
            warn!(
                in_flight = shared.in_flight(),
                "stopping with attempts in flight; they are re-queued at the next start"
            );
            break;
        }
    }
    for lane in lanes {
        drop(lane.tx);
        if lane.thread.join().is_err() {
            tracing::error!("a delivery thread panicked");
        }
    }
    Ok(())
}

/// Why the worker could not start (once running, it stops only when told:
/// a store error pauses it for a moment).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("starting a delivery thread: {0}")]
    Thread(std::io::Error),
}

/// The claiming loop: until `shutdown`, claims what is due and free to go and
/// hands it to the delivery threads in turn.
async fn claim_and_hand_out(
    shared: &Arc<Shared>,
    lanes: &[LaneHandle],
    handle: &DeliveryHandle,
    shutdown: &CancellationToken,
) {
    let mut turn = 0;
    // Whether the queue had deliveries due at the last look.
    let mut queue_due = false;
    let mut next_sweep = tokio::time::Instant::now() + LEASE_SWEEP;
    // Whether the last wake-up came with something to do (not the timer of
    // a sleep while looking soon, with no slot freed during it).
    let mut busy = true;
    while !shutdown.is_cancelled() {
        let now = now_ms();
        if tokio::time::Instant::now() >= next_sweep {
            match shared
                .store
                .release_expired_leases(shared.store.lease_clock_ms(), now)
            {
                Ok(0) => {}
                Ok(n) => warn!(
                    released = n,
                    "deliveries whose lease expired were re-queued"
                ),
                Err(e) => tracing::error!(error = %e, "re-queueing expired leases failed"),
            }
            next_sweep = tokio::time::Instant::now() + LEASE_SWEEP;
        }
        let mut hand_out = |task: TaskRecord, hold: Hold| {
            turn = (turn + 1) % lanes.len();
            if let Err(unsent) = lanes[turn].tx.send((task, hold)) {
                let (task, hold) = unsent.0;
                tracing::error!(message_id = %task.msg_id, "a delivery thread is gone; the delivery will be retried");
                // As `given_up` and then `settle`, which cannot be awaited
                // here (a lease kept is never released, so it needs no write).
                shared.given_up(&task, &hold);
                shared.endpoint_done(&task.ep_id, Duration::ZERO);
                shared.done();
            }
        };
        // A store error stops nothing for good: the loop looks again a
        // moment later (publishes are still acknowledged meanwhile).
        let looked = match shared.claim(now, queue_due, &mut hand_out).await {
            Ok(moved_back) => shared.store.next_due_ms().map(|due| (moved_back, due)),
            Err(e) => Err(e),
        };
        let (moved_back, next_due) = match looked {
            Ok(looked) => looked,
            Err(e) => {
                tracing::error!(error = %e, "claiming deliveries failed; looking again in a second");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(IDLE_TICK) => continue,
                }
            }
        };
        queue_due = next_due.is_some_and(|due| due <= now);
        let mut wait = match next_due {
            _ if shared.in_flight() >= shared.cfg.max_in_flight => IDLE_TICK,
            Some(due) if due > now => Duration::from_millis((due - now) as u64).min(IDLE_TICK),
            // A claim that moved some back made room at the head of the
            // queue: what is behind them is looked at now.
            Some(_) if moved_back > 0 => Duration::ZERO,
            // Due now but every candidate was capped or we just claimed: look again when a slot frees.
            Some(_) => IDLE_TICK,
            None => IDLE_TICK,
        };
        // Under load, slots free and publishes hand over deliveries by the
        // thousand per second: rather than be woken for each, look again
        // after `CLAIM_GATHER` (or once `CLAIM_BATCH` deliveries are done),
        // so that one claim (one pass over the queue) takes several.
        let looking_soon = busy && shared.in_flight() >= CLAIM_BATCH && wait > CLAIM_GATHER;
        if looking_soon {
            wait = CLAIM_GATHER;
            shared.frees.store(0, Ordering::SeqCst);
            handle.looking_soon.store(true, Ordering::SeqCst);
        }
        let woke = tokio::select! {
            _ = shutdown.cancelled() => None,
            _ = handle.notify.notified() => Some(true),
            _ = shared.freed.notified() => Some(true),
            _ = tokio::time::sleep(wait) => Some(!looking_soon || shared.frees.load(Ordering::SeqCst) > 0),
        };
        // Before the next look (or the wait for attempts in flight at a
        // stop): whatever comes after it wakes the loop again.
        handle.looking_soon.store(false, Ordering::SeqCst);
        let Some(woke_busy) = woke else { break };
        busy = woke_busy;
    }
}

/// Starts delivery thread `i`: it makes its own HTTP client and runs every
/// delivery it is handed as a local task, until its channel closes.
fn start_lane(i: usize, shared: Arc<Shared>, roots: TlsRoots) -> std::io::Result<LaneHandle> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(TaskRecord, Hold)>();
    let thread = std::thread::Builder::new()
        .name(format!("webhookd-deliver-{i}"))
        .spawn(move || {
            actix_rt::System::new().block_on(async move {
                let cfg = &shared.cfg;
                let sender = Sender::new(
                    NetGuard::new(cfg.allow_subnets.clone()),
                    roots,
                    cfg.request_timeout,
                    cfg.max_in_flight,
                    cfg.max_response_body_bytes,
                );
                let lane = Rc::new(Lane { shared, sender });
                while let Some((task, hold)) = rx.recv().await {
                    let lane = Rc::clone(&lane);
                    actix_rt::spawn(async move {
                        let span = info_span!(
                            "deliver",
                            app_id = %task.app_id,
                            message_id = %task.msg_id,
                            endpoint_id = %task.ep_id,
                            attempt = task.attempt,
                            attempt_id = tracing::field::Empty,
                        );
                        let slot = EndpointSlot::new(&lane.shared, &task.ep_id);
                        // Boxed: the request's future is kilobytes, and the
                        // task holding it inline was copied whole as it was
                        // spawned and as it finished.
                        let deliver = Box::pin(lane.deliver(&task, &hold, &slot).instrument(span));
                        let recorded = match deliver.await {
                            Ok(()) => true,
                            Err(e) => {
                                tracing::error!(error = %e, message_id = %task.msg_id, "recording a delivery failed; it will be retried");
                                lane.shared.given_up(&task, &hold);
                                false
                            }
                        };
                        drop(slot);
                        // Before the overall slot is freed: stopping waits
                        // for those, and a lease left behind means
                        // deliveries made again at the next start.
                        lane.shared.settle(&task, &hold, recorded).await;
                        lane.shared.done();
                    });
                }
            })
        })?;
    Ok(LaneHandle { tx, thread })
}

impl Shared {
    fn book(&self) -> std::sync::MutexGuard<'_, SlotBook> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn in_flight(&self) -> usize {
        self.book().in_flight
    }

    /// Takes as many deliveries as there are free slots, honouring the
    /// per-endpoint cap, and passes each to `hand_out` with how it is held:
    /// first those handed over by publishes (before anything is written, so
    /// that they never wait for the writer here), then due ones from the
    /// queue under one lease. While the queue has deliveries due
    /// (`queue_due`), each gets half the free slots first, so that neither
    /// waits for the other to run dry. Returns how many it moved back in
    /// the queue (their endpoint slow at its cap, or throttled).
    async fn claim(
        &self,
        now: i64,
        queue_due: bool,
        hand_out: &mut impl FnMut(TaskRecord, Hold),
    ) -> Result<usize, StoreError> {
        let free = self.cfg.max_in_flight.saturating_sub(self.in_flight());
        if free == 0 {
            return Ok(0);
        }
        let cap = self.cfg.max_per_endpoint;
        let lease = self.store.lease_clock_ms() + self.lease_ms;
        let longest_defer = self.cfg.request_timeout.as_millis() as i64;
        let slow_share = slow_share(self.cfg.max_in_flight);
        let slow_ceiling = slow_ceiling(self.cfg.max_in_flight);
        let mut skipped = 0;
        // Whether `decide` is asked about deliveries from the queue (else
        // handed over by their publishes).
        let from_queue = std::cell::Cell::new(false);
        // The endpoints of the deliveries taken from the queue, whose slots
        // go back if the claim then fails.
        let queue_taken = std::cell::RefCell::new(Vec::new());
        self.reread_throttles(now).await;
        let mut moved_back = 0;
        let mut decide = |t: &TaskRecord| {
            let mut guard = self.book();
            let book = &mut *guard;
            let slots = book.per_endpoint.entry(t.ep_id.clone()).or_insert(Slots {
                in_flight: 0,
                counted_slow: 0,
                progress_ms: now,
            });
            let known_mean = book.mean_ms.get(&t.ep_id).map(|m| *m as i64);
            let mean = known_mean.unwrap_or(0);
            let slow_by = slow_endpoint_deferral(mean, now - slots.progress_ms, longest_defer);
            // Slow, stopped answering, or not known yet (none of its
            // attempts finished): beyond its first request, it shares
            // `slow_share` with the others such, and its first request
            // waits too once they hold `slow_ceiling`.
            let counts_slow = slow_by.is_some() || known_mean.is_none();
            if slow_by.is_some() && slots.counted_slow < slots.in_flight {
                // It stopped answering: what it has under way counts too.
                book.slow_in_flight += slots.in_flight - slots.counted_slow;
                slots.counted_slow = slots.in_flight;
            }
            let room = slots.in_flight < cap
                && (!counts_slow
                    || book.slow_in_flight < slow_share
                    || slots.in_flight == 0 && book.slow_in_flight < slow_ceiling);
            if room {
                if let Err(due) = self.throttle(&mut book.throttles, t, now, from_queue.get()) {
                    if slots.in_flight == 0 {
                        book.per_endpoint.remove(&t.ep_id);
                    }
                    moved_back += 1;
                    return Claim::Defer(due);
                }
                slots.in_flight += 1;
                book.in_flight += 1;
                if counts_slow {
                    slots.counted_slow += 1;
                    book.slow_in_flight += 1;
                }
                if from_queue.get() {
                    queue_taken.borrow_mut().push(t.ep_id.clone());
                }
                // A backlog it moves back later starts afresh once those
                // moved back are due, or once it is fast again.
                if !book.backlogs.is_empty()
                    && book
                        .backlogs
                        .get(&t.ep_id)
                        .is_some_and(|b| b.next_ms <= now || b.slow && mean < SLOW_AFTER_MS)
                {
                    book.backlogs.remove(&t.ep_id);
                }
                return Claim::Take;
            }
            let (by, slow) = match slow_by {
                Some(by) => (by, true),
                None if skipped < SKIP_BUDGET => {
                    skipped += 1;
                    if book.backlogs.get(&t.ep_id).is_some_and(|b| b.slow) {
                        book.backlogs.remove(&t.ep_id);
                    }
                    return Claim::Skip;
                }
                // Fast, but more is waiting in place than a claim
                // looks through: moved back by about one attempt's time.
                None => (mean.max(1), false),
            };
            let backlog = book
                .backlogs
                .entry(t.ep_id.clone())
                .or_insert(Backlog { next_ms: 0, slow });
            if backlog.slow && !slow {
                backlog.next_ms = 0;
            }
            backlog.slow = slow;
            let due;
            (due, backlog.next_ms) = backlog_due(now, by, backlog.next_ms, mean, cap);
            // Its turn in a throttle's line, if it had one, is given up: it
            // lines up again when it comes back. (Left, it would never be
            // taken, and the line would never end.)
            if from_queue.get()
                && let Some(th) = book.throttles.get_mut(&t.ep_id)
            {
                th.take_turn(t.due_ms);
            }
            moved_back += 1;
            Claim::Defer(due)
        };
        let share = if queue_due { free.div_ceil(2) } else { free };
        let mut left = free;
        left -= self.take_handed(share, &mut decide, hand_out).await?;
        if left == 0 {
            return Ok(moved_back);
        }
        from_queue.set(true);
        let claimed = self
            .store
            .claim_due(now, lease, left, left * 4 + 64, &mut decide)
            .await;
        from_queue.set(false);
        let tasks = match claimed {
            Ok(tasks) => tasks,
            Err(e) => {
                // Nothing was taken: the slots counted for it are free. (The
                // turns a throttle gave them stay given: the next claim
                // defers them by a turn, a delay only.)
                self.unclaimed(&queue_taken.take());
                return Err(e);
            }
        };
        left -= tasks.len();
        if let Some(first) = tasks.first() {
            let shared_lease = Arc::new(ClaimLease {
                until_ms: lease,
                first: first.id.clone(),
                outstanding: AtomicUsize::new(tasks.len()),
                keep: AtomicBool::new(false),
            });
            for task in tasks {
                hand_out(task, Hold::Lease(Arc::clone(&shared_lease)));
            }
        }
        // What the queue left of its share.
        if queue_due && left > 0 {
            self.take_handed(left, &mut decide, hand_out).await?;
        }
        Ok(moved_back)
    }

    /// Once app or endpoint records were written since the throttles'
    /// rates were read, drops the throttles of endpoints with neither rate
    /// nor line and reads the others' rates again. The line of an endpoint
    /// whose rate changed is brought forward in the queue: its deliveries
    /// come back now and line up again at the new rate (or go, with none).
    async fn reread_throttles(&self, now: i64) {
        let written = self.store.records_written();
        let lines: Vec<(EndpointId, Vec<i64>)> = {
            let mut guard = self.book();
            let book = &mut *guard;
            if book.throttles_at == written {
                return;
            }
            book.throttles_at = written;
            book.throttles
                .retain(|_, th| th.interval_ms.is_some() || !th.line.is_empty());
            let mut lines = Vec::new();
            for (ep_id, th) in &mut book.throttles {
                let interval = self.interval_of(&th.app_id, ep_id, th.interval_ms);
                if interval != th.interval_ms {
                    let line = std::mem::take(&mut th.line);
                    *th = Throttle::new(th.app_id.clone(), interval);
                    if !line.is_empty() {
                        lines.push((ep_id.clone(), line.into_keys().collect()));
                    }
                }
            }
            lines
        };
        for (ep_id, times) in lines {
            if let Err(e) = self.store.bring_forward(&ep_id, &times, now).await {
                tracing::error!(error = %e, endpoint_id = %ep_id, "bringing a throttled line forward failed; it keeps its times");
            }
        }
    }

    /// Whether the throttle of `t`'s endpoint lets it go at `now` (see
    /// `Throttle`; its rate is read when it is first needed).
    fn throttle(
        &self,
        throttles: &mut HashMap<EndpointId, Throttle>,
        t: &TaskRecord,
        now: i64,
        from_queue: bool,
    ) -> Result<(), i64> {
        if !throttles.contains_key(&t.ep_id) {
            let interval = self.interval_of(&t.app_id, &t.ep_id, None);
            throttles.insert(t.ep_id.clone(), Throttle::new(t.app_id.clone(), interval));
        }
        let th = throttles.get_mut(&t.ep_id).expect("just inserted");
        match th.interval_ms {
            Some(interval) => th.admit(interval, now, t.due_ms, from_queue),
            None => Ok(()),
        }
    }

    /// Milliseconds between two deliveries to the endpoint: from its
    /// `throttleRate`, else its app's; `None` if neither has one. If they
    /// cannot be read, `known` (what was read before).
    fn interval_of(&self, app_id: &AppId, ep_id: &EndpointId, known: Option<f64>) -> Option<f64> {
        match self.rate_of(app_id, ep_id) {
            Ok(rate) => rate.filter(|r| *r > 0).map(|r| 1_000.0 / f64::from(r)),
            Err(e) => {
                tracing::error!(error = %e, endpoint_id = %ep_id, "reading the throttle rate failed");
                known
            }
        }
    }

    /// The `throttleRate` of an endpoint, else of its app.
    fn rate_of(&self, app_id: &AppId, ep_id: &EndpointId) -> Result<Option<u32>, StoreError> {
        let Some(ep) = self.store.get_endpoint(app_id, ep_id)? else {
            return Ok(None);
        };
        if ep.rate_limit.is_some() {
            return Ok(ep.rate_limit);
        }
        Ok(self
            .store
            .find_app(app_id.as_str())?
            .and_then(|a| a.rate_limit))
    }

    /// Takes up to `limit` deliveries handed over, passes them to
    /// `hand_out`, then queues those deferred. Returns how many it took.
    async fn take_handed(
        &self,
        limit: usize,
        decide: &mut impl FnMut(&TaskRecord) -> Claim,
        hand_out: &mut impl FnMut(TaskRecord, Hold),
    ) -> Result<usize, StoreError> {
        let (taken, deferred) = self.store.take_handed_over(limit, decide);
        let n = taken.len();
        for (task, message) in taken {
            hand_out(task, Hold::Handed(message));
        }
        self.store.queue_deferred(deferred).await?;
        Ok(n)
    }

    /// A delivery could not be recorded (call `settle` after). Claimed under
    /// a lease, it keeps the lease, which puts the claim back on the queue
    /// when it expires; handed over, it has no status yet that reconcile
    /// would find, so it is queued now (if that fails too, it stays held
    /// and the next start queues it).
    fn given_up(&self, task: &TaskRecord, hold: &Hold) {
        match hold {
            Hold::Lease(lease) => lease.keep.store(true, Ordering::Relaxed),
            Hold::Handed(_) => {
                if let Err(e) = self.store.requeue_handed_over(task, now_ms()) {
                    tracing::error!(error = %e, message_id = %task.msg_id, "queueing a delivery again failed; it will be queued at the next start");
                }
            }
        }
    }

    /// One delivery is done (`recorded`, or given up): the last one of a
    /// claim gives up its lease; one handed over and recorded is no longer
    /// held (one given up was let go by `given_up`, or stays held).
    async fn settle(&self, task: &TaskRecord, hold: &Hold, recorded: bool) {
        match hold {
            Hold::Lease(lease) => {
                if lease.outstanding.fetch_sub(1, Ordering::AcqRel) == 1
                    && !lease.keep.load(Ordering::Acquire)
                    && let Err(e) = self.store.release_lease(lease.until_ms, &lease.first).await
                {
                    tracing::error!(error = %e, "giving up a lease failed; its deliveries will be made again when it expires");
                }
            }
            Hold::Handed(_) if recorded => self.store.handed_over_done(task),
            Hold::Handed(_) => {}
        }
    }

    /// An attempt's request is over (or was never made): its endpoint's
    /// slot is free, and `took` goes into the endpoint's mean attempt time.
    fn endpoint_done(&self, ep: &EndpointId, took: Duration) {
        let took = took.as_millis() as f64;
        {
            let mut book = self.book();
            book.mean_ms
                .entry(ep.clone())
                .and_modify(|m| *m = 0.8 * *m + 0.2 * took)
                .or_insert(took);
            book.give_back(ep, Some(now_ms()));
        }
        self.slot_freed();
    }

    /// Gives back the slots of deliveries counted in but not claimed after
    /// all (the claim failed), one per endpoint in `eps`.
    fn unclaimed(&self, eps: &[EndpointId]) {
        let mut book = self.book();
        for ep in eps {
            book.give_back(ep, None);
            book.in_flight -= 1;
        }
    }

    /// A claimed delivery is finished (recorded, or given up): its slot in
    /// the overall cap is free.
    fn done(&self) {
        self.book().in_flight -= 1;
        self.slot_freed();
    }

    /// Wakes the claiming loop for a freed slot, unless it looks again soon
    /// anyway and fewer than `CLAIM_BATCH` deliveries were done since it
    /// began to sleep (see `claim_and_hand_out`).
    fn slot_freed(&self) {
        if !self.handle.looking_soon.load(Ordering::SeqCst)
            || self.frees.fetch_add(1, Ordering::SeqCst) + 1 >= 2 * CLAIM_BATCH
        {
            self.freed.notify_one();
        }
    }
}

/// A delivery's place under its endpoint's cap. It is given back as soon as
/// the request is over, before the attempt is recorded: the cap limits the
/// requests an endpoint sees at once, and recording (a write shared with
/// every other delivery) would otherwise hold it too.
struct EndpointSlot {
    shared: Arc<Shared>,
    ep: EndpointId,
    started: tokio::time::Instant,
    held: std::cell::Cell<bool>,
}

impl EndpointSlot {
    fn new(shared: &Arc<Shared>, ep: &EndpointId) -> Self {
        Self {
            shared: Arc::clone(shared),
            ep: ep.clone(),
            started: tokio::time::Instant::now(),
            held: std::cell::Cell::new(true),
        }
    }

    fn release(&self) {
        if self.held.replace(false) {
            self.shared.endpoint_done(&self.ep, self.started.elapsed());
        }
    }
}

impl Drop for EndpointSlot {
    fn drop(&mut self) {
        self.release();
    }
}

/// How many requests in flight endpoints that are slow, stopped answering
/// or not known yet may hold together, beyond one each: half the overall
/// cap. The rest is kept for endpoints known to answer in time, so that a
/// few endpoints that take connections and never answer cannot hold every
/// slot until the request timeout, again and again.
fn slow_share(max_in_flight: usize) -> usize {
    (max_in_flight / 2).max(1)
}

/// How many requests in flight those endpoints may hold together with the
/// first request each may have beyond `slow_share`: three quarters of the
/// overall cap. Hundreds of endpoints that never answer, each with its
/// first request, would otherwise hold every slot; a quarter stays for
/// endpoints known to answer in time.
fn slow_ceiling(max_in_flight: usize) -> usize {
    (max_in_flight - max_in_flight / 4).max(slow_share(max_in_flight))
}

/// How far to move back a due delivery of an endpoint at its cap, whose
/// attempts take `mean_ms` on average and which has finished none for
/// `idle_ms`: `None` while it counts as fast (see `SLOW_AFTER_MS` and
/// `STUCK_AFTER_MS`), else about one attempt's time, at most `longest_ms`.
fn slow_endpoint_deferral(mean_ms: i64, idle_ms: i64, longest_ms: i64) -> Option<i64> {
    let slow = mean_ms >= SLOW_AFTER_MS || idle_ms >= STUCK_AFTER_MS.max(2 * mean_ms);
    slow.then(|| idle_ms.max(mean_ms).min(longest_ms))
}

/// When a delivery of a slow endpoint at its cap, moved back at `now`, comes
/// due again, and the earliest the next one it moves back may. It goes at
/// least `by` ahead (see `slow_endpoint_deferral`), no sooner than `after`
/// (the one moved back before it plus the endpoint's time per delivery,
/// `mean_ms / cap` with `cap` requests in flight), and at most
/// `BACKLOG_HORIZON_MS` ahead. So a backlog is spread over the time the
/// endpoint needs for it, each delivery looked at again about when a slot
/// could be free for it. Moved back by `by` alone, all of a hung endpoint's
/// backlog came due again at every request timeout and was written again:
/// writes that grew with the backlog for as long as the endpoint hung.
fn backlog_due(now: i64, by: i64, after: i64, mean_ms: i64, cap: usize) -> (i64, i64) {
    let due = (now + by).max(after).min(now + BACKLOG_HORIZON_MS);
    let per_delivery = (mean_ms / cap.max(1) as i64).max(1);
    (due, due + per_delivery)
}

impl Lane {
    /// One attempt of one task, recorded with what follows it.
    /// `slot` is given back once the request is over. A delivery handed over
    /// by its publish sends the message and payload the publish stored (an
    /// expunge that lands in the moment between does not stop it, as it does
    /// not stop a request under way); others read them back.
    async fn deliver(
        &self,
        task: &TaskRecord,
        hold: &Hold,
        slot: &EndpointSlot,
    ) -> Result<(), StoreError> {
        let store = &self.shared.store;
        let Some(ep) = store.get_endpoint(&task.app_id, &task.ep_id)? else {
            return store.forget_delivery(task).await; // endpoint or app deleted
        };
        let handed = match hold {
            Hold::Handed(message) => Some(message),
            Hold::Lease(_) => None,
        };
        let read;
        let msg = match handed {
            Some(message) => &message.record,
            None => match store.get_message(&task.app_id, &task.msg_id)? {
                Some(m) => {
                    read = m;
                    &read
                }
                None => return store.forget_delivery(task).await,
            },
        };
        if task.trigger == AttemptTrigger::Scheduled && task.attempt > 0 {
            // A manual resend may have delivered it since this retry was scheduled.
            if store
                .dest(&task.msg_id, &task.ep_id)?
                .is_some_and(|d| d.status == MessageStatus::Success)
            {
                return Ok(());
            }
        }
        if ep.disabled || msg.expunged {
            return store.drop_task(task, MessageStatus::Fail).await;
        }
        let payload = match handed {
            Some(message) => Bytes::from_owner(Arc::clone(&message.payload)),
            None => match store.payload(&msg.id)? {
                Some(p) => Bytes::from(p),
                None => return store.drop_task(task, MessageStatus::Fail).await,
            },
        };

        let now = now_ms();
        let ts = now / 1000;
        let signature =
            signing::signature_header(ep.signing_secrets(now), msg.id.as_str(), ts, &payload);
        let mut headers: Vec<(String, String)> = ep
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let ts = ts.to_string();
        for (k, v) in [
            ("content-type", "application/json"),
            ("user-agent", USER_AGENT),
            ("webhook-id", msg.id.as_str()),
            ("webhook-timestamp", &ts),
            ("webhook-signature", &signature),
            ("svix-id", msg.id.as_str()),
            ("svix-timestamp", &ts),
            ("svix-signature", &signature),
        ] {
            headers.retain(|(name, _)| !name.eq_ignore_ascii_case(k));
            headers.push((k.to_owned(), v.to_owned()));
        }
        // The attempt record keeps what was sent but the values of custom
        // headers and the credentials: those are kept encrypted with the
        // endpoint, and go only on the wire.
        let wire = (!ep.headers.is_empty() || ep.credentials.is_some()).then(|| {
            let mut wire = headers.clone();
            for (name, value) in &mut headers {
                if ep.headers.contains_key(name) {
                    *value = REDACTED.to_owned();
                }
            }
            if let Some(c) = &ep.credentials {
                let set = |list: &mut Vec<(String, String)>, value: String| {
                    list.retain(|(name, _)| !name.eq_ignore_ascii_case("authorization"));
                    list.push(("authorization".to_owned(), value));
                };
                set(&mut wire, c.header_value());
                set(&mut headers, c.redacted().to_owned());
            }
            wire
        });
        let resp = self
            .sender
            .send(Request {
                url: ep.url.as_str(),
                headers: wire.as_ref().unwrap_or(&headers),
                body: payload,
                client_cert: ep.client_cert.as_ref(),
            })
            .await;
        slot.release();

        let success = resp.is_success();
        let gone = resp.status == 410;
        let (status, duration) = (resp.status, resp.duration);
        let next = if success || gone || task.trigger == AttemptTrigger::Manual {
            Next::Done
        } else {
            match retry::next_delay(
                &self.shared.cfg.retry_schedule,
                task.attempt,
                self.shared.cfg.retry_jitter,
                rand::random::<f64>(),
                resp.retry_after
                    .filter(|_| matches!(resp.status, 429 | 503)),
                self.shared.cfg.retry_after_max,
            ) {
                Some(d) => Next::RetryAt(now_ms() + d.as_millis() as i64),
                None => Next::Done,
            }
        };
        let attempt_id = AttemptId::new(now);
        tracing::Span::current().record("attempt_id", attempt_id.as_str());
        if success {
            tracing::debug!(
                status = resp.status,
                latency_ms = resp.duration.as_millis() as u64,
                "delivered"
            );
        } else {
            warn!(
                status = resp.status,
                latency_ms = resp.duration.as_millis() as u64,
                error = resp.error.as_deref().unwrap_or(""),
                "delivery failed"
            );
        }
        let attempt = AttemptRecord {
            id: attempt_id,
            app_id: task.app_id.clone(),
            msg_id: task.msg_id.clone(),
            ep_id: task.ep_id.clone(),
            url: ep.url.as_str().to_owned(),
            timestamp_ms: now,
            trigger: task.trigger,
            status: if success {
                MessageStatus::Success
            } else {
                MessageStatus::Fail
            },
            response_status_code: resp.status,
            response_headers: resp.headers,
            response_body: resp.body,
            request_headers: headers,
            duration_ms: resp.duration.as_millis() as u64,
            error: resp.error,
        };
        let recorded = store.record_attempt(task, &attempt, next).await?;
        self.shared.metrics.attempt(success, status, duration);
        if task.attempt == 0 && task.trigger == AttemptTrigger::Scheduled {
            self.shared
                .metrics
                .first_attempt_after(now_ms() - task.msg_id.created_ms());
        }
        if matches!(next, Next::RetryAt(_)) {
            self.shared.metrics.retries_scheduled.inc();
        }
        let _ = self.shared.handle.landed.send(Landed {
            msg_id: attempt.msg_id.clone(),
            ep_id: attempt.ep_id.clone(),
            attempt_id: attempt.id.clone(),
        });
        // Recorded: what follows failing must not count as not recorded
        // (that would queue the delivery again, beside its retry).
        if let Err(e) = self
            .after_recorded(task, msg, &attempt, recorded, gone)
            .await
        {
            tracing::error!(error = %e, "the attempt is recorded, but disabling a gone endpoint or sending its operational events failed");
        }
        Ok(())
    }

    /// What follows a recorded attempt: an endpoint that answered 410 is
    /// disabled, and the operational events are sent.
    async fn after_recorded(
        &self,
        task: &TaskRecord,
        msg: &crate::store::MessageRecord,
        attempt: &AttemptRecord,
        recorded: Option<crate::store::Recorded>,
        gone: bool,
    ) -> Result<(), StoreError> {
        let store = &self.shared.store;
        // Not the operator's receiver of operational events (see
        // `endpoint_health`), nor one disabled already (by another attempt
        // that got a 410, or by hand): one event per disabling.
        if gone && !self.shared.ops.is_reserved(&task.app_id) {
            let disabled = {
                // One delivery thread at a time reads and disables.
                let _one = self
                    .shared
                    .disabling
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                match store.get_endpoint(&task.app_id, &task.ep_id)? {
                    Some(mut current) if !current.disabled => {
                        let before = current.clone();
                        current.disabled = true;
                        current.updated_ms = now_ms();
                        // Not if it was deleted meanwhile.
                        store
                            .update_endpoint(&before, &current)?
                            .unwrap_or(false)
                            .then_some(current)
                    }
                    _ => None,
                }
            };
            if let Some(current) = disabled {
                warn!("endpoint answered 410 Gone and was disabled");
                if let Some(app) = store.find_app(task.app_id.as_str())? {
                    let mut data = operational::endpoint_data(&app, &current);
                    data["reason"] = "gone".into();
                    self.shared.ops.emit("endpoint.disabled", data).await;
                }
            }
        }
        // None: the endpoint was deleted while this attempt was under way.
        if let Some(recorded) = &recorded
            && !self.shared.ops.is_reserved(&task.app_id)
        {
            self.attempt_events(msg, attempt, recorded, gone).await?;
        }
        Ok(())
    }

    /// `message.attempt.failing` (4th failure in a row), `.exhausted` (no retry
    /// left) and `.recovered` (a success after those).
    async fn attempt_events(
        &self,
        msg: &crate::store::MessageRecord,
        attempt: &AttemptRecord,
        recorded: &crate::store::Recorded,
        gone: bool,
    ) -> Result<(), StoreError> {
        let success = attempt.status == MessageStatus::Success;
        let after = &recorded.after;
        let was_failing = recorded
            .before
            .as_ref()
            .is_some_and(|b| b.failures_in_row >= FAILING_AFTER || b.status == MessageStatus::Fail);
        let event = if success && was_failing {
            "message.attempt.recovered"
        } else if !success
            && after.status == MessageStatus::Fail
            && !gone
            && attempt.trigger == AttemptTrigger::Scheduled
        {
            // The last scheduled attempt, not a resend that failed again.
            "message.attempt.exhausted"
        } else if !success && after.failures_in_row == FAILING_AFTER {
            "message.attempt.failing"
        } else {
            return Ok(());
        };
        let app_uid = self
            .shared
            .store
            .find_app(msg.app_id.as_str())?
            .and_then(|a| a.uid);
        let data = serde_json::json!({
            "appId": msg.app_id.as_str(),
            "appUid": app_uid,
            "msgId": msg.id.as_str(),
            "msgEventId": msg.event_id,
            "endpointId": attempt.ep_id.as_str(),
            "lastAttempt": {
                "id": attempt.id.as_str(),
                "timestamp": crate::domain::format_time(attempt.timestamp_ms),
                "responseStatusCode": attempt.response_status_code,
            },
        });
        self.shared.ops.emit(event, data).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Throttle;
    use super::slow_endpoint_deferral as deferral;
    use crate::domain::AppId;

    /// What the claiming loop shares, with the default configuration.
    fn shared_with(store: &super::Store) -> super::Shared {
        use super::*;
        let handle = DeliveryHandle::default();
        Shared {
            lease_ms: 60_000,
            store: store.clone(),
            cfg: crate::config::Config::load_from(None, &[])
                .unwrap()
                .delivery,
            slots: Mutex::default(),
            freed: Notify::new(),
            frees: AtomicUsize::new(0),
            handle: handle.clone(),
            ops: Operational::disabled(store.clone(), handle),
            metrics: Arc::new(Metrics::new()),
            disabling: Mutex::default(),
        }
    }

    /// A first attempt to `ep`, queued due at `due_ms` (`i` tells messages apart).
    fn queue_task(store: &super::Store, ep: &super::EndpointId, i: i64, due_ms: i64) {
        use crate::domain::{AttemptTrigger, MessageId, TaskId};
        store
            .enqueue(&super::TaskRecord {
                id: TaskId::new(due_ms),
                app_id: AppId::new(0),
                msg_id: MessageId::new(due_ms + i),
                ep_id: ep.clone(),
                attempt: 0,
                trigger: AttemptTrigger::Scheduled,
                due_ms,
            })
            .unwrap();
    }

    /// `ep` has `in_flight` attempts under way, the last one finished at
    /// `progress_ms`, and takes `mean_ms` an attempt.
    fn busy(
        shared: &super::Shared,
        ep: &super::EndpointId,
        in_flight: usize,
        progress_ms: i64,
        mean_ms: f64,
    ) {
        let mut book = shared.book();
        book.per_endpoint.insert(
            ep.clone(),
            super::Slots {
                in_flight,
                counted_slow: 0,
                progress_ms,
            },
        );
        book.in_flight += in_flight;
        book.mean_ms.insert(ep.clone(), mean_ms);
    }

    /// A claim that fails after deciding gives back the slots it counted:
    /// else each failure kept them taken, until the worker had none left
    /// and delivered nothing more until a restart.
    #[tokio::test]
    async fn a_failed_claim_frees_the_slots_it_counted() {
        use super::*;
        let store = Store::temporary().unwrap();
        let shared = shared_with(&store);
        let now = now_ms();
        for i in 0..3 {
            queue_task(&store, &EndpointId::new(now), i, now);
        }
        store
            .fail_next_claim
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut handed = Vec::new();
        let mut hand_out = |t: TaskRecord, _: Hold| handed.push(t);
        assert!(shared.claim(now, true, &mut hand_out).await.is_err());
        assert_eq!(shared.in_flight(), 0);
        assert!(shared.book().per_endpoint.is_empty());
        // The next claim takes them.
        shared.claim(now, true, &mut hand_out).await.unwrap();
        assert_eq!(handed.len(), 3);
        assert_eq!(shared.in_flight(), 3);
    }

    /// An endpoint at its cap that keeps finishing attempts (fast, not
    /// moved back for being slow) with a long backlog does not hold up what
    /// is due behind it for other endpoints: past what a claim leaves in
    /// place, its backlog is moved back, spread over the time it needs.
    /// (A claim stopped there, and a delivery to another endpoint waited
    /// until the backlog in front of it was shorter than that.)
    #[tokio::test]
    async fn a_busy_endpoints_backlog_does_not_hold_up_the_others() {
        use super::*;
        let store = Store::temporary().unwrap();
        let shared = shared_with(&store);
        let cap = shared.cfg.max_per_endpoint;
        let now = now_ms();
        let (full, other) = (EndpointId::new(now), EndpointId::new(now + 1));
        // 640 ms an attempt, 64 at once: one slot frees every 10 ms.
        assert_eq!(cap, 64);
        busy(&shared, &full, cap, now, 640.0);
        for i in 0..200 {
            queue_task(&store, &full, i, now - 1_000);
        }
        queue_task(&store, &other, 0, now - 500);
        let mut handed = Vec::new();
        let moved = shared
            .claim(now, true, &mut |t, _| handed.push(t))
            .await
            .unwrap();
        assert_eq!(
            handed.iter().map(|t| &t.ep_id).collect::<Vec<_>>(),
            [&other]
        );
        assert_eq!(moved, 200 - SKIP_BUDGET);
        let dues: Vec<i64> = store
            .next_deliveries(1_000)
            .unwrap()
            .iter()
            .map(|t| t.due_ms)
            .collect();
        assert_eq!(
            dues[..SKIP_BUDGET],
            [now - 1_000; SKIP_BUDGET],
            "left in place"
        );
        let spread: Vec<i64> = (0..200 - SKIP_BUDGET as i64)
            .map(|i| now + 640 + 10 * i)
            .collect();
        assert_eq!(dues[SKIP_BUDGET..], spread);
    }

    /// A delivery with a turn in its throttle's line, moved back at its
    /// endpoint's cap instead of going, gives its turn up: left, the turn
    /// was never taken, and a line that never ended stopped giving turns
    /// once 100,000 were left.
    #[tokio::test]
    async fn a_throttled_delivery_moved_back_at_the_cap_gives_up_its_turn() {
        use super::*;
        let store = Store::temporary().unwrap();
        let shared = shared_with(&store);
        let cap = shared.cfg.max_per_endpoint;
        let now = now_ms();
        let ep = EndpointId::new(now);
        let mut th = Throttle::new(AppId::new(0), Some(100.0));
        assert_eq!(th.admit(100.0, now - 100, now - 100, false), Ok(()));
        assert_eq!(th.admit(100.0, now - 99, now - 99, false), Err(now));
        queue_task(&store, &ep, 0, now);
        // At its cap and slow (2 s an attempt) when its turn comes.
        busy(&shared, &ep, cap, now, 2_000.0);
        {
            let mut book = shared.book();
            book.throttles.insert(ep.clone(), th);
            book.throttles_at = store.records_written();
        }
        let moved = shared
            .claim(now, true, &mut |_, _| unreachable!())
            .await
            .unwrap();
        assert_eq!(moved, 1);
        assert!(shared.book().throttles[&ep].line.is_empty());
    }

    /// Endpoints that stopped answering, and ones not known yet, share
    /// half the slots beyond one request each; endpoints known to answer in
    /// time are not held back by them. Here four fast endpoints stopped
    /// answering with 64 requests each under way: half the slots, so an
    /// endpoint with no attempt finished yet gets its first request only,
    /// and a known one all it has. (Before, the four held their slots as
    /// fast ones, and a few more such took every slot until the timeout.)
    #[tokio::test]
    async fn endpoints_that_stopped_answering_share_half_the_slots() {
        use super::*;
        let store = Store::temporary().unwrap();
        let shared = shared_with(&store);
        let cap = shared.cfg.max_per_endpoint;
        assert_eq!(shared.cfg.max_in_flight, 4 * cap * 2);
        let now = now_ms();
        let hung: Vec<EndpointId> = (0..4).map(|i| EndpointId::new(now + i)).collect();
        let (new, known) = (EndpointId::new(now + 10), EndpointId::new(now + 11));
        for ep in &hung {
            // 5 ms an attempt, and nothing finished for a second.
            busy(&shared, ep, cap, now - 1_000, 5.0);
            queue_task(&store, ep, 0, now - 2);
        }
        shared.book().mean_ms.insert(known.clone(), 5.0);
        for i in 0..3 {
            queue_task(&store, &new, i, now - 1);
            queue_task(&store, &known, i + 10, now);
        }
        let mut handed = Vec::new();
        shared
            .claim(now, true, &mut |t, _| handed.push(t.ep_id))
            .await
            .unwrap();
        assert_eq!(handed, [new.clone(), known.clone(), known.clone(), known]);
        assert_eq!(shared.book().slow_in_flight, 4 * cap + 1);
        // As they finish, what they held no longer counts.
        shared.endpoint_done(&hung[0], Duration::from_secs(15));
        shared.endpoint_done(&new, Duration::from_millis(5));
        assert_eq!(shared.book().slow_in_flight, 4 * cap - 1);
    }

    #[test]
    fn an_endpoint_that_stops_answering_is_passed_over_soon() {
        // No attempt time known yet (its first attempts hang), or a fast one.
        assert_eq!(deferral(0, 50, 30_000), None);
        assert_eq!(deferral(0, 150, 30_000), Some(150));
        assert_eq!(deferral(20, 150, 30_000), Some(150));
        // Stuck for long: moved back by at most the request timeout.
        assert_eq!(deferral(20, 90_000, 30_000), Some(30_000));
    }

    #[test]
    fn a_steady_endpoint_waits_in_place_between_its_finishes() {
        // 150 ms attempts, one slot: 150 ms without a finish is normal for it,
        // and moving its backlog back on every claim would rewrite all of it.
        assert_eq!(deferral(150, 150, 30_000), None);
        assert_eq!(deferral(150, 299, 30_000), None);
        assert_eq!(deferral(150, 300, 30_000), Some(300));
    }

    #[test]
    fn a_throttle_spaces_deliveries_and_keeps_its_line_in_order() {
        let mut th = Throttle::new(AppId::new(0), None);
        // (now, due, from the queue): a fresh delivery is due when it is claimed.
        let mut admit = |now, due, from_queue| th.admit(100.0, now, due, from_queue);
        assert_eq!(admit(0, 0, false), Ok(()));
        // Those that come meanwhile get a time each, one interval apart,
        // whether fresh from a publish or from the queue (a retry).
        assert_eq!(admit(1, 1, false), Err(100));
        assert_eq!(admit(2, 2, true), Err(200));
        // Back from the queue at its time (a little late), it goes.
        assert_eq!(admit(104, 100, true), Ok(()));
        // A fresh one joins the end of the line.
        assert_eq!(admit(150, 150, false), Err(300));
        assert_eq!(admit(200, 200, true), Ok(()));
        assert_eq!(admit(300, 300, true), Ok(()));
        // The line is gone, but its last turn was just taken.
        assert_eq!(admit(350, 350, false), Err(400));
        assert_eq!(admit(400, 400, true), Ok(()));
        // Nothing in line: one goes at once, the next a whole interval after
        // it, even after a gap shorter than two intervals.
        assert_eq!(admit(550, 550, false), Ok(()));
        assert_eq!(admit(560, 560, false), Err(650));
        // In line, claimed 30 ms late: the turn after it keeps the pace.
        assert_eq!(admit(680, 650, true), Ok(()));
        assert_eq!(admit(750, 750, false), Ok(()));
    }

    #[test]
    fn a_fast_throttle_gives_several_deliveries_one_millisecond() {
        let mut th = Throttle::new(AppId::new(0), None);
        let mut admit = |now, due, from_queue| th.admit(0.5, now, due, from_queue);
        assert_eq!(admit(0, 0, false), Ok(()));
        assert_eq!(admit(0, 0, false), Err(1));
        assert_eq!(admit(0, 0, false), Err(1));
        assert_eq!(admit(0, 0, false), Err(2));
        assert_eq!(admit(1, 1, true), Ok(()));
        assert_eq!(admit(1, 1, true), Ok(()));
        assert_eq!(admit(2, 2, true), Ok(()));
        // Not one more than was given that millisecond.
        assert_eq!(admit(2, 1, true), Err(3));
    }

    #[test]
    fn a_slow_endpoints_backlog_is_spread_over_the_time_it_needs() {
        use super::{BACKLOG_HORIZON_MS, backlog_due};
        // A hung endpoint: 64 requests in flight, 30 s each (the timeout).
        let (now, mut next) = (1_000_000, 0);
        let mut dues = Vec::new();
        for _ in 0..3_000 {
            let due;
            (due, next) = backlog_due(now, 30_000, next, 30_000, 64);
            dues.push(due);
        }
        assert_eq!(dues[0], now + 30_000);
        assert_eq!(
            dues[1],
            now + 30_000 + 468,
            "one slot's share of 30 s later"
        );
        assert!(dues.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*dues.last().unwrap(), now + BACKLOG_HORIZON_MS);
        // A moment later the horizon has moved with the clock, and a
        // delivery that came due again goes at its end, not before.
        let (due, _) = backlog_due(now + 5, 30_000, next, 30_000, 64);
        assert_eq!(due, now + 5 + BACKLOG_HORIZON_MS);
        // Slow but working: 1.2 s per request, 64 at once, so 18.75 ms per
        // delivery: a burst of 1,000 is spread over about 18 s.
        let mut next = 0;
        let mut last = 0;
        for _ in 0..1_000 {
            (last, next) = backlog_due(now, 1_200, next, 1_200, 64);
        }
        assert_eq!(last, now + 1_200 + 999 * 18);
        // Before anything is known of its attempts, one ms apart.
        assert_eq!(backlog_due(now, 150, 0, 0, 64), (now + 150, now + 151));
    }

    #[test]
    fn an_endpoint_slow_on_average_is_always_moved_back() {
        assert_eq!(deferral(1_200, 0, 30_000), Some(1_200));
        assert_eq!(deferral(45_000, 10, 30_000), Some(30_000));
    }
}
