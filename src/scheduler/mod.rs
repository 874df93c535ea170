//! The scheduler: every periodic job, each on its own cron schedule.
//!
//! Owns when jobs run and the record of each run (start, duration, what it did,
//! or its error). Each job runs in a task of its own, so a long one holds up
//! neither the others nor the schedule. A job still running when it comes due
//! again is not started twice; a job that came due while webhookd was stopped
//! runs once at start.
//! Time comes from a `Clock`, so tests drive it instead of waiting. Cron
//! expressions are parsed once, in `config`.

mod jobs;

use std::str::FromStr as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use chrono::{TimeZone, Utc};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::SchedulerConfig;
use crate::delivery::{DeliveryHandle, Operational};
use crate::domain::now_ms;
use crate::metrics::Metrics;
use crate::store::{JobOutcome, JobRecord, Store, StoreError};

/// Where time comes from.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

/// A clock that moves only when told (tests).
#[derive(Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn at(ms: i64) -> Self {
        Self(AtomicI64::new(ms))
    }
    pub fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Job {
    Reconcile,
    Retention,
    EndpointHealth,
    SilenceWatchdog,
}

impl Job {
    pub const ALL: [Job; 4] = [
        Job::Reconcile,
        Job::Retention,
        Job::EndpointHealth,
        Job::SilenceWatchdog,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Job::Reconcile => "reconcile",
            Job::Retention => "retention",
            Job::EndpointHealth => "endpoint_health",
            Job::SilenceWatchdog => "silence_watchdog",
        }
    }

    pub fn from_name(name: &str) -> Option<Job> {
        Job::ALL.into_iter().find(|j| j.name() == name)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Job::Reconcile => {
                "Re-queues expired leases and deliveries with nothing queued; repairs the dead-letter index."
            }
            Job::Retention => {
                "Removes old payloads and attempts; keeps the database under its size bound."
            }
            Job::EndpointHealth => {
                "Disables endpoints that have failed every attempt for too long."
            }
            Job::SilenceWatchdog => {
                "Alerts when an event type goes quiet for much longer than usual."
            }
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("job {0} is already running")]
    Busy(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A job as the dashboard shows it.
#[derive(Debug, Clone)]
pub struct JobStatus {
    pub job: Job,
    /// The cron expression, or `None` when disabled.
    pub schedule: Option<String>,
    pub record: JobRecord,
    pub next_run_ms: Option<i64>,
    pub running: bool,
}

/// What a job did: counts to record and operational events to send.
#[derive(Debug, Default)]
pub struct Report {
    pub counts: Vec<(String, u64)>,
    pub events: Vec<(&'static str, serde_json::Value)>,
    /// Wake the delivery worker afterwards (something was queued).
    pub wake: bool,
}

impl Report {
    fn count(&mut self, name: &str, n: impl TryInto<u64>) {
        self.counts
            .push((name.to_owned(), n.try_into().unwrap_or(u64::MAX)));
    }
}

pub struct Scheduler {
    store: Store,
    cfg: SchedulerConfig,
    ops: Operational,
    delivery: DeliveryHandle,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    running: [AtomicBool; 4],
    /// Where the next reconciliation continues its sweep of delivery statuses.
    reconcile_cursor: std::sync::Mutex<Option<Vec<u8>>>,
    /// What the disk bound deleted before (see `jobs::DiskBound`).
    disk_bound: std::sync::Mutex<jobs::DiskBound>,
    /// A job whose next run waits until told (tests: a long job).
    #[cfg(test)]
    hold: std::sync::Mutex<Option<(Job, std::sync::mpsc::Receiver<()>)>>,
}

impl Scheduler {
    pub fn new(
        store: Store,
        cfg: SchedulerConfig,
        ops: Operational,
        delivery: DeliveryHandle,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            cfg,
            ops,
            delivery,
            clock,
            metrics,
            running: Default::default(),
            reconcile_cursor: Default::default(),
            disk_bound: Default::default(),
            #[cfg(test)]
            hold: Default::default(),
        })
    }

    fn schedule(&self, job: Job) -> Option<&cron::Schedule> {
        match job {
            Job::Reconcile => self.cfg.reconcile.as_ref(),
            Job::Retention => self.cfg.retention.as_ref(),
            Job::EndpointHealth => self.cfg.endpoint_health.as_ref(),
            Job::SilenceWatchdog => self.cfg.silence_watchdog.as_ref(),
        }
    }

    /// The first time after `after_ms` that `job` is scheduled for.
    pub fn next_after(&self, job: Job, after_ms: i64) -> Option<i64> {
        let after = Utc.timestamp_millis_opt(after_ms).single()?;
        self.schedule(job)?
            .after(&after)
            .next()
            .map(|t| t.timestamp_millis())
    }

    /// When `job` should run next: after its last start, or now if it never ran.
    fn due_at(&self, job: Job) -> Result<Option<i64>, StoreError> {
        if self.schedule(job).is_none() {
            return Ok(None);
        }
        let last = self
            .store
            .job_record(job.name())?
            .and_then(|r| r.last_started_ms);
        let now = self.clock.now_ms();
        Ok(match last {
            // A last start ahead of the clock (set back since) counts as now:
            // the job is not held off until the clock gets there again.
            Some(t) => self.next_after(job, t.min(now)),
            None => Some(now),
        })
    }

    /// The jobs due now and not running.
    fn due_now(&self) -> Result<Vec<Job>, StoreError> {
        let now = self.clock.now_ms();
        let mut due = Vec::new();
        for job in Job::ALL {
            if !self.running[job.index()].load(Ordering::SeqCst)
                && self.due_at(job)?.is_some_and(|t| t <= now)
            {
                due.push(job);
            }
        }
        Ok(due)
    }

    /// Runs one job now, whatever its schedule (a disabled job too: "Run now"),
    /// unless it is already running. Records the run.
    pub async fn run(self: &Arc<Self>, job: Job) -> Result<JobRecord, SchedulerError> {
        let running = self.mark_running(job)?;
        self.run_marked(running).await
    }

    /// Marks `job` running, unless it is already.
    fn mark_running(self: &Arc<Self>, job: Job) -> Result<Running, SchedulerError> {
        if self.running[job.index()].swap(true, Ordering::SeqCst) {
            return Err(SchedulerError::Busy(job.name()));
        }
        Ok(Running {
            scheduler: Arc::clone(self),
            job,
        })
    }

    /// Runs a job marked running and records the run; the mark goes however
    /// this returns.
    async fn run_marked(&self, running: Running) -> Result<JobRecord, SchedulerError> {
        let job = running.job;
        let started = self.clock.now_ms();
        let wall = std::time::Instant::now();
        let this = Arc::clone(&running.scheduler);
        let result = tokio::task::spawn_blocking(move || this.run_sync(job, started))
            .await
            .unwrap_or_else(|e| {
                Err(StoreError::Commit(Arc::new(std::io::Error::other(
                    e.to_string(),
                ))))
            });
        let mut rec = self.store.job_record(job.name())?.unwrap_or_default();
        rec.last_started_ms = Some(started);
        rec.last_duration_ms = wall.elapsed().as_millis() as u64;
        rec.runs += 1;
        self.metrics.job_ran(job.name(), result.is_err());
        match result {
            Ok(report) => {
                tracing::info!(job = job.name(), counts = ?report.counts, duration_ms = rec.last_duration_ms, "job ran");
                rec.last_outcome = Some(JobOutcome::Done(report.counts));
                for (event, data) in report.events {
                    self.ops.emit(event, data).await;
                }
                if report.wake {
                    self.delivery.wake();
                }
            }
            Err(e) => {
                tracing::error!(job = job.name(), error = %e, "job failed");
                rec.last_outcome = Some(JobOutcome::Failed(e.to_string()));
                rec.failures += 1;
            }
        }
        self.store.put_job_record(job.name(), &rec)?;
        Ok(rec)
    }

    fn run_sync(&self, job: Job, now: i64) -> Result<Report, StoreError> {
        #[cfg(test)]
        {
            let mut hold = self.hold.lock().unwrap();
            if let Some((_, held)) = hold.take_if(|(held, _)| *held == job) {
                drop(hold);
                let _ = held.recv();
            }
        }
        match job {
            Job::Reconcile => jobs::reconcile(self, now),
            Job::Retention => jobs::retention(self, now),
            Job::EndpointHealth => jobs::endpoint_health(self, now),
            Job::SilenceWatchdog => jobs::silence_watchdog(self, now),
        }
    }

    /// Every job with its schedule, last run and next run.
    pub fn status(&self) -> Result<Vec<JobStatus>, StoreError> {
        Job::ALL
            .into_iter()
            .map(|job| {
                Ok(JobStatus {
                    job,
                    schedule: self.schedule(job).map(|s| s.source().to_owned()),
                    record: self.store.job_record(job.name())?.unwrap_or_default(),
                    next_run_ms: self.due_at(job)?,
                    running: self.running[job.index()].load(Ordering::SeqCst),
                })
            })
            .collect()
    }

    /// The earliest time any job not running now is due (one running, a
    /// "Run now" past its time, is looked at again once it is done).
    fn next_due(&self) -> Result<Option<i64>, StoreError> {
        let mut next: Option<i64> = None;
        for job in Job::ALL {
            if self.running[job.index()].load(Ordering::SeqCst) {
                continue;
            }
            if let Some(t) = self.due_at(job)? {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        Ok(next)
    }
}

/// A job marked running: cleared when dropped, a failure to read or write
/// the job's record included (else the job would never run again).
struct Running {
    scheduler: Arc<Scheduler>,
    job: Job,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.scheduler.running[self.job.index()].store(false, Ordering::SeqCst);
    }
}

/// Asks the running scheduler to run a job now ("Run now"). Cheap to clone; `Send`.
#[derive(Clone)]
pub struct SchedulerHandle {
    tx: mpsc::Sender<(Job, oneshot::Sender<Result<JobRecord, String>>)>,
    scheduler: Arc<Scheduler>,
}

impl SchedulerHandle {
    /// Runs `job` and returns its record (or why it did not run).
    pub async fn run_now(&self, job: Job) -> Result<JobRecord, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((job, tx))
            .await
            .map_err(|_| "the scheduler has stopped".to_owned())?;
        rx.await
            .map_err(|_| "the scheduler has stopped".to_owned())?
    }

    pub fn status(&self) -> Result<Vec<JobStatus>, StoreError> {
        self.scheduler.status()
    }
}

/// Starts the scheduler loop; it runs until `shutdown` is cancelled.
pub fn start(
    scheduler: Arc<Scheduler>,
    shutdown: CancellationToken,
) -> (SchedulerHandle, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<(Job, oneshot::Sender<Result<JobRecord, String>>)>(16);
    let handle = SchedulerHandle {
        tx,
        scheduler: Arc::clone(&scheduler),
    };
    let task = tokio::spawn(async move {
        // Each job runs beside the loop, so that a long one (a retention
        // with much to remove) holds up neither the others nor the schedule.
        // One that finishes wakes the loop: its record moves its next run.
        let mut jobs = tokio::task::JoinSet::new();
        loop {
            match scheduler.due_now() {
                Ok(due) => {
                    // Marked running here, so that the next look does not
                    // take them for due again before their tasks start.
                    for running in due
                        .into_iter()
                        .filter_map(|job| scheduler.mark_running(job).ok())
                    {
                        let s = Arc::clone(&scheduler);
                        jobs.spawn(async move {
                            let job = running.job;
                            if let Err(e) = s.run_marked(running).await {
                                tracing::error!(job = job.name(), error = %e, "the scheduler could not record the job's run");
                            }
                        });
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "the scheduler could not read its job records")
                }
            }
            let wait_ms = match scheduler.next_due() {
                Ok(Some(t)) => (t - scheduler.clock.now_ms()).clamp(0, 60_000),
                _ => 60_000,
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(std::time::Duration::from_millis(wait_ms as u64)) => {}
                Some(_) = jobs.join_next(), if !jobs.is_empty() => {}
                req = rx.recv() => {
                    let Some((job, reply)) = req else { break };
                    let s = Arc::clone(&scheduler);
                    jobs.spawn(async move {
                        let _ = reply.send(s.run(job).await.map_err(|e| e.to_string()));
                    });
                }
            }
        }
        // The jobs under way hold the store: the stop waits for them.
        while jobs.join_next().await.is_some() {}
    });
    (handle, task)
}

/// Parses a cron expression (for tests and configuration checks).
pub fn parse_schedule(expr: &str) -> Result<cron::Schedule, cron::error::Error> {
    cron::Schedule::from_str(expr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// Waits (at most 10 s) until `done` holds of the jobs' status.
    async fn until(s: &Scheduler, what: &str, done: impl Fn(&[JobStatus]) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let status = s.status().unwrap();
            if done(&status) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{what}: {status:?}");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    fn runs(status: &[JobStatus], job: Job) -> u64 {
        status.iter().find(|j| j.job == job).unwrap().record.runs
    }

    /// An endpoint is disabled once its attempts failed for the whole of
    /// `disable_after` (five days), none succeeding: failures at its start
    /// and at its end. One failure and then no traffic is not an endpoint
    /// that fails. (Any failure disabled it five days later.)
    #[tokio::test]
    async fn an_endpoint_is_disabled_only_after_failing_for_the_whole_window() {
        use crate::store::Next;
        use crate::store::tests::{app, attempt, claim_one, endpoint, message};
        const DAY: i64 = 86_400_000;
        let store = Store::temporary().unwrap();
        let cfg = Config::load_from(None, &[]).unwrap().scheduler;
        let delivery = DeliveryHandle::default();
        let ops = Operational::disabled(store.clone(), delivery.clone());
        let t0 = now_ms();
        let clock = Arc::new(ManualClock::at(t0));
        let s = Scheduler::new(
            store.clone(),
            cfg,
            ops,
            delivery,
            Arc::clone(&clock) as Arc<dyn Clock>,
            Arc::new(Metrics::new()),
        );
        let a = app(None);
        store.create_app(&a).unwrap().unwrap();
        let ep = endpoint(&a.id, &[]);
        store.create_endpoint(&ep).unwrap().unwrap();
        let fail_at = |at: i64| {
            let (store, a, ep) = (store.clone(), a.clone(), ep.clone());
            async move {
                let m = message(&a.id, at, None);
                store.publish(&m, b"{}", &[&ep], at, || {}).await.unwrap();
                let t = claim_one(&store, at, at + 60_000).await;
                store
                    .record_attempt(&t, &attempt(&t, false, at), Next::Done)
                    .await
                    .unwrap();
            }
        };
        let disabled = || store.get_endpoint(&a.id, &ep.id).unwrap().unwrap().disabled;

        fail_at(t0).await;
        clock.advance(5 * DAY + 60_000);
        let r = jobs::endpoint_health(&s, clock.now_ms()).unwrap();
        assert!(r.events.is_empty());
        assert!(!disabled(), "one failure, then nothing for five days");

        fail_at(t0 + 5 * DAY).await;
        let r = jobs::endpoint_health(&s, clock.now_ms()).unwrap();
        assert_eq!(r.events.len(), 1);
        assert_eq!(r.events[0].0, "endpoint.disabled");
        assert!(disabled(), "failing from the first failure to five days on");
    }

    #[tokio::test]
    async fn a_long_job_holds_up_neither_the_others_nor_the_schedule() {
        let store = Store::temporary().unwrap();
        let cfg = Config::load_from(None, &[]).unwrap().scheduler;
        let delivery = DeliveryHandle::default();
        let ops = Operational::disabled(store.clone(), delivery.clone());
        let clock = Arc::new(ManualClock::at(now_ms()));
        let s = Scheduler::new(
            store,
            cfg,
            ops,
            delivery,
            Arc::clone(&clock) as Arc<dyn Clock>,
            Arc::new(Metrics::new()),
        );
        let (release, held) = std::sync::mpsc::channel();
        *s.hold.lock().unwrap() = Some((Job::Reconcile, held));
        let shutdown = CancellationToken::new();
        let (handle, task) = start(Arc::clone(&s), shutdown.clone());
        // Every job is due at the first start: the others run (and are
        // over: a run is recorded a moment before its job counts as done)
        // while reconcile (the first of them) is held.
        until(&s, "the other jobs to run", |st| {
            st.iter().all(|j| {
                let other = j.job != Job::Reconcile;
                j.record.runs == u64::from(other) && j.running != other
            })
        })
        .await;
        // A minute later the watchdog (every minute) runs again, still
        // beside the held reconcile (a Run now's end wakes the loop, whose
        // wait is on the real clock).
        clock.advance(61_000);
        // (Unless the loop woke first and runs it itself: endpoint health is
        // due every five minutes, and the minute may have crossed one.)
        if let Err(e) = handle.run_now(Job::EndpointHealth).await {
            assert!(e.contains("already running"), "{e}");
        }
        until(&s, "the watchdog's next run", |st| {
            runs(st, Job::SilenceWatchdog) == 2 && st[0].running
        })
        .await;
        // Released, it finishes (and, a minute past its start, runs again).
        release.send(()).unwrap();
        until(&s, "reconcile to finish", |st| {
            runs(st, Job::Reconcile) >= 1
        })
        .await;
        shutdown.cancel();
        task.await.unwrap();
    }
}
