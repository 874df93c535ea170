//! The scenarios. Each one starts its own receiver and (unless `--server`) its
//! own webhookd on a fresh data dir, sets up an application and its endpoints
//! through the API, publishes, waits for every delivery owed to a healthy
//! endpoint (up to the drain timeout), and tears everything down.
//!
//! The bench runs on one thread: awc's client is `!Send`, and publishers are
//! local tasks sharing their logs through `Rc<RefCell<_>>`. Only the receiver
//! (its own worker threads) and the open-loop pacer (a thread of its own, for
//! timing finer than tokio's millisecond timer) run elsewhere.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix_web::rt::time::sleep;
use actix_web::web::Bytes;
use anyhow::Context as _;
use tempfile::TempDir;

use crate::Opts;
use crate::api::{self, Api};
use crate::daemon::{self, CpuMark, Daemon, Spawn};
use crate::receiver::{Receiver, Recorder};
use crate::report::{
    Backlog, Dashboard, Deliveries, Direct, Duplicate, Failing, Hist, OpenLoop, Restart, Stored,
    Throughput,
};

/// Size of each message's payload, the body webhookd delivers.
pub const PAYLOAD_BYTES: usize = 1024;
/// How long webhookd may take to print its startup line.
const START_LIMIT: Duration = Duration::from_secs(300);
/// How long a scenario's webhookd may take to stop before it is killed (its
/// data dir is thrown away; only `stored` needs a graceful stop, and waits longer).
const STOP_GRACE: Duration = Duration::from_secs(5);
/// A drain that takes longer than this means deliveries lagged behind publishes.
const LAG_DRAIN: Duration = Duration::from_secs(1);

/// Written to the data dir's parent and passed with `--config`: limits that
/// would cap a benchmark are pinned to "none", whatever the defaults become.
const CONFIG: &str = "\
# webhookd-bench: limits that would cap a benchmark, pinned off.
[limits]
publish_per_second = 0
";

/// What every scenario shares.
pub struct Bench {
    pub opts: Opts,
    /// The webhookd to start (`None` with `--server`).
    pub bin: Option<PathBuf>,
    /// Where data dirs are made.
    pub data_parent: PathBuf,
    /// Whole `MessageIn`s: `{"eventType":"bench.event","payload":{…1 KiB…}}`.
    pub message: Bodies,
    /// The payloads alone, what `direct` posts.
    pub payload: Bodies,
    pub connections: usize,
}

/// Request bodies handed out in turn, shared by every publisher of a scenario.
#[derive(Clone)]
pub struct Bodies {
    all: Rc<[Bytes]>,
    next: Rc<Cell<usize>>,
}

impl Bodies {
    pub fn new(all: Vec<Bytes>) -> Self {
        assert!(!all.is_empty(), "at least one body");
        Self {
            all: all.into(),
            next: Rc::default(),
        }
    }

    /// The next body (a cheap clone).
    pub fn next(&self) -> Bytes {
        let i = self.next.get();
        self.next.set((i + 1) % self.all.len());
        self.all[i].clone()
    }
}

/// The webhookd a scenario talks to.
struct Target {
    api: Api,
    daemon: Option<Daemon>,
    /// The data dir's parent (config, log, `data/`); removed when dropped.
    _dir: Option<TempDir>,
}

impl Target {
    async fn finish(self) -> anyhow::Result<()> {
        if let Some(d) = self.daemon {
            d.stop(STOP_GRACE).await?;
        }
        Ok(())
    }
}

/// Messages acknowledged, with the instant each latency is measured from.
#[derive(Default)]
struct PubLog {
    sent: Vec<(String, Instant)>,
    ack: Hist,
    /// Open loop: actual send start − intended send time.
    lag: Hist,
    errors: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl PubLog {
    fn note(&mut self, from: Instant, start: Instant, end: Instant, r: anyhow::Result<String>) {
        self.first = Some(self.first.map_or(start, |f| f.min(start)));
        self.last = Some(self.last.map_or(end, |l| l.max(end)));
        match r {
            Ok(id) => {
                self.ack.record(end.saturating_duration_since(from));
                self.sent.push((id, from));
            }
            Err(e) => {
                if self.errors == 0 {
                    eprintln!(
                        "webhookd-bench: a publish failed (further ones are only counted): {e:#}"
                    );
                }
                self.errors += 1;
            }
        }
    }

    fn span(&self) -> Duration {
        match (self.first, self.last) {
            (Some(a), Some(b)) => b.saturating_duration_since(a),
            _ => Duration::ZERO,
        }
    }
}

/// When closed-loop publishers stop.
enum Stop {
    At(Instant),
    /// After this many sends in all (the cell counts those claimed).
    Count(Cell<u64>, u64),
}

impl Stop {
    fn next(&self) -> bool {
        match self {
            Stop::At(t) => Instant::now() < *t,
            Stop::Count(claimed, n) => {
                let c = claimed.get();
                claimed.set(c + 1);
                c < *n
            }
        }
    }
}

fn per_s(n: u64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

impl Bench {
    fn client(&self) -> awc::Client {
        api::client(self.connections, self.opts.client_timeout)
    }

    pub fn slow_sleep(&self) -> Duration {
        self.opts
            .slow_sleep
            .unwrap_or(self.opts.request_timeout + Duration::from_secs(1))
    }

    fn daemon_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "WEBHOOKD_REQUEST_TIMEOUT".to_owned(),
                format!("{}ms", self.opts.request_timeout.as_millis()),
            ),
            ("RUST_LOG".to_owned(), self.opts.daemon_log.clone()),
        ];
        if let Some(s) = &self.opts.retry_schedule {
            env.push(("WEBHOOKD_RETRY_SCHEDULE".to_owned(), s.clone()));
        }
        env.extend(self.opts.daemon_env.iter().cloned());
        env
    }

    async fn target(&self) -> anyhow::Result<Target> {
        self.target_with(Vec::new()).await
    }

    /// A target whose webhookd also gets `env` (before `--daemon-env`,
    /// which may override it).
    async fn target_with(&self, mut env: Vec<(String, String)>) -> anyhow::Result<Target> {
        let Some(bin) = &self.bin else {
            let (url, token) = (
                self.opts
                    .server
                    .as_deref()
                    .expect("external mode has --server"),
                self.opts
                    .token
                    .as_deref()
                    .expect("--server requires --token"),
            );
            return Ok(Target {
                api: Api::new(self.client(), url, token),
                daemon: None,
                _dir: None,
            });
        };
        let dir = tempfile::Builder::new()
            .prefix("webhookd-bench-")
            .tempdir_in(&self.data_parent)
            .with_context(|| format!("making a data dir in {}", self.data_parent.display()))?;
        let config = dir.path().join("bench.toml");
        std::fs::write(&config, CONFIG)?;
        let token = format!("bench-{:032x}", rand::random::<u128>());
        let spawn = Spawn {
            bin: bin.clone(),
            data_dir: dir.path().join("data"),
            config,
            listen: "127.0.0.1:0".into(),
            token: token.clone(),
            env: {
                env.extend(self.daemon_env());
                env
            },
            log: dir.path().join("webhookd.log"),
        };
        let daemon = Daemon::start(spawn, START_LIMIT).await?;
        eprintln!(
            "webhookd-bench: webhookd (pid {}) serves {}; its data dir is {}",
            daemon.pid(),
            daemon.base,
            daemon.spawn.data_dir.display()
        );
        Ok(Target {
            api: Api::new(self.client(), &daemon.base, &token),
            daemon: Some(daemon),
            _dir: Some(dir),
        })
    }
}

/// One application with `healthy` endpoints (`/ok/0`…), `failing` ones
/// (`/fail/0`…) and, with `slow`, `/slow`. Returns the app id and its publish URL.
async fn setup(
    api: &Api,
    rx: &Receiver,
    healthy: usize,
    failing: usize,
    slow: bool,
) -> anyhow::Result<(String, String)> {
    let app = api
        .create_app("webhookd-bench")
        .await
        .context("creating the application")?;
    let urls = (0..healthy)
        .map(|i| format!("{}/ok/{i}", rx.base))
        .chain((0..failing).map(|i| format!("{}/fail/{i}", rx.base)))
        .chain(slow.then(|| format!("{}/slow", rx.base)));
    for url in urls {
        api.create_endpoint(&app, &url)
            .await
            .context("creating an endpoint")?;
    }
    let msg = api.msg_url(&app);
    Ok((app, msg))
}

/// `concurrency` publishers, each sending its next message when the last is acknowledged.
async fn closed_loop(
    api: &Api,
    url: &str,
    bodies: &Bodies,
    concurrency: usize,
    stop: Stop,
    log: &Rc<RefCell<PubLog>>,
) {
    let stop = Rc::new(stop);
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (api, url, bodies) = (api.clone(), url.to_owned(), bodies.clone());
            let (stop, log) = (stop.clone(), log.clone());
            actix_web::rt::spawn(async move {
                while stop.next() {
                    let t0 = Instant::now();
                    let r = api.publish(&url, bodies.next()).await;
                    log.borrow_mut().note(t0, t0, Instant::now(), r);
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

/// Waits until `expected` first arrivals, or `limit`; says whether they all came.
/// Says how far it got every 10 s.
async fn wait_for(rec: &Recorder, expected: u64, limit: Duration) -> bool {
    let start = Instant::now();
    let deadline = start + limit;
    let mut told = start;
    while rec.first() < expected {
        let now = Instant::now();
        if now > deadline {
            eprintln!(
                "webhookd-bench: {} of {expected} deliveries arrived within {limit:?} of the last publish",
                rec.first()
            );
            return false;
        }
        if now.duration_since(told) >= Duration::from_secs(10) {
            told = now;
            eprintln!(
                "webhookd-bench: waiting for deliveries: {} of {expected}",
                rec.first()
            );
        }
        sleep(Duration::from_millis(2)).await;
    }
    true
}

/// Matches what was sent with what arrived: publish-to-delivery latencies,
/// deliveries matched, and the last arrival.
fn join(
    sent: &[(String, Instant)],
    arrivals: &[HashMap<Box<str>, Instant>],
) -> (Hist, u64, Option<Instant>) {
    let mut hist = Hist::default();
    let mut matched = 0;
    let mut last: Option<Instant> = None;
    for (id, from) in sent {
        for endpoint in arrivals {
            if let Some(at) = endpoint.get(id.as_str()) {
                hist.record(at.saturating_duration_since(*from));
                matched += 1;
                last = Some(last.map_or(*at, |l| l.max(*at)));
            }
        }
    }
    (hist, matched, last)
}

/// What arrived of what `log` sent to `healthy` endpoints of `app`.
async fn deliveries(
    api: &Api,
    app: &str,
    rec: &Recorder,
    log: &PubLog,
    healthy: usize,
    complete: bool,
) -> (Deliveries, Option<Instant>) {
    let arrivals = rec.take();
    let (hist, delivered, last) = join(&log.sent, &arrivals);
    let expected = log.sent.len() as u64 * healthy as u64;
    (
        Deliveries {
            expected,
            delivered,
            duplicates: rec.duplicates(),
            duplicates_seen: duplicates_seen(api, app, rec).await,
            complete: complete && delivered == expected,
            publish_to_delivery: hist.summary(),
        },
        last,
    )
}

/// The duplicates the receiver kept, each with webhookd's attempts of it at
/// its endpoint, which tell why it was sent again; each is also printed.
async fn duplicates_seen(api: &Api, app: &str, rec: &Recorder) -> Vec<Duplicate> {
    let mut seen = Vec::new();
    for (n, id) in rec.duplicates_kept() {
        let endpoint = format!("/ok/{n}");
        let (attempts, error) = match api.attempts(app, &id).await {
            Ok(all) => (
                all.into_iter()
                    .filter(|a| a.url.ends_with(&endpoint))
                    .collect::<Vec<_>>(),
                None,
            ),
            Err(e) => (Vec::new(), Some(format!("{e:#}"))),
        };
        let told = match &error {
            Some(e) => format!("its attempts could not be read: {e}"),
            None => attempts
                .iter()
                .rev()
                .map(|a| {
                    format!(
                        "{} answered {} in {} ms{}",
                        a.timestamp,
                        a.response_status_code,
                        a.response_duration_ms,
                        if a.trigger_type == 1 { " (manual)" } else { "" }
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        };
        eprintln!(
            "webhookd-bench: {id} arrived more than once at {endpoint}; webhookd's attempts: {told}"
        );
        seen.push(Duplicate {
            message_id: id.into(),
            endpoint,
            attempts,
            error,
        });
    }
    seen
}

/// The loopback ceiling: the same client posts the same payloads straight to the receiver.
pub async fn direct(b: &Bench, concurrency: usize, duration: Duration) -> anyhow::Result<Direct> {
    let rx = Receiver::start(b.opts.receiver_workers, 0, 0, b.slow_sleep()).await?;
    let client = b.client();
    let url = format!("{}/direct", rx.base);
    let cpu = CpuMark::now(None);
    let stop = Rc::new(Stop::At(Instant::now() + duration));
    // (latencies, errors, first start, last end)
    let log = Rc::new(RefCell::new((
        Hist::default(),
        0u64,
        None::<Instant>,
        None::<Instant>,
    )));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url, bodies) = (client.clone(), url.clone(), b.payload.clone());
            let (stop, log) = (stop.clone(), log.clone());
            actix_web::rt::spawn(async move {
                while stop.next() {
                    let t0 = Instant::now();
                    let ok = match client
                        .post(url.as_str())
                        .insert_header(("content-type", "application/json"))
                        .send_body(bodies.next())
                        .await
                    {
                        Ok(mut resp) => resp.body().await.is_ok() && resp.status().is_success(),
                        Err(_) => false,
                    };
                    let t1 = Instant::now();
                    let mut l = log.borrow_mut();
                    if ok {
                        l.0.record(t1 - t0);
                    } else {
                        l.1 += 1;
                    }
                    l.2 = Some(l.2.map_or(t0, |f| f.min(t0)));
                    l.3 = Some(l.3.map_or(t1, |e| e.max(t1)));
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let cpu = cpu.until(&CpuMark::now(None));
    rx.stop().await;
    let (hist, errors, first, last) = &*log.borrow();
    let span = match (first, last) {
        (Some(a), Some(b)) => b.saturating_duration_since(*a),
        _ => Duration::ZERO,
    };
    let latency = hist.summary();
    Ok(Direct {
        concurrency,
        duration_s: span.as_secs_f64(),
        requests: latency.count,
        errors: *errors,
        requests_per_s: per_s(latency.count, span),
        latency,
        cpu,
    })
}

/// Closed loop: `concurrency` publishers for `duration`, each message to `fanout` endpoints.
pub async fn throughput(
    b: &Bench,
    concurrency: usize,
    duration: Duration,
    fanout: usize,
) -> anyhow::Result<Throughput> {
    // Messages per endpoint at up to the fan-out 10 target's rate.
    let expected = (30_000.0 * duration.as_secs_f64()) as usize / fanout.max(1);
    let rx = Receiver::start(b.opts.receiver_workers, fanout, expected, b.slow_sleep()).await?;
    let target = b.target().await?;
    let (app, url) = setup(&target.api, &rx, fanout, 0, false).await?;
    let log = Rc::new(RefCell::new(PubLog::default()));
    let running = Rc::new(Cell::new(true));
    // Deliveries owed, sampled while publishing.
    let sampler = {
        let (running, log, rec) = (running.clone(), log.clone(), rx.rec.clone());
        actix_web::rt::spawn(async move {
            let mut max = 0;
            while running.get() {
                sleep(Duration::from_millis(250)).await;
                let owed =
                    (log.borrow().sent.len() as u64 * fanout as u64).saturating_sub(rec.first());
                max = max.max(owed);
            }
            max
        })
    };
    let pid = target.daemon.as_ref().map(Daemon::pid);
    let cpu = CpuMark::now(pid);
    let stop = Stop::At(Instant::now() + duration);
    closed_loop(&target.api, &url, &b.message, concurrency, stop, &log).await;
    let delivered_at_end = rx.rec.first();
    running.set(false);
    let backlog_max = sampler.await.unwrap_or(0);
    // Every publisher is done: take the log out of its cell.
    let log = log.take();
    let published = log.sent.len() as u64;
    let owed = published * fanout as u64;
    let complete = wait_for(&rx.rec, owed, b.opts.drain_timeout).await;
    let cpu = cpu.until(&CpuMark::now(pid));
    let (deliveries, last_arrival) =
        deliveries(&target.api, &app, &rx.rec, &log, fanout, complete).await;
    rx.stop().await;
    target.finish().await?;
    let (first, end) = (
        log.first.unwrap_or_else(Instant::now),
        log.last.unwrap_or_else(Instant::now),
    );
    let last_arrival = last_arrival.unwrap_or(end);
    let drain = last_arrival.saturating_duration_since(end);
    Ok(Throughput {
        concurrency,
        fanout,
        duration_s: log.span().as_secs_f64(),
        published,
        publish_errors: log.errors,
        publishes_per_s: per_s(published, log.span()),
        ack: log.ack.summary(),
        deliveries_per_s: per_s(
            deliveries.delivered,
            last_arrival.saturating_duration_since(first),
        ),
        deliveries_per_s_while_publishing: per_s(delivered_at_end, log.span()),
        backlog_at_publish_end: owed.saturating_sub(delivered_at_end),
        backlog_max: backlog_max.max(owed.saturating_sub(delivered_at_end)),
        drain_s: drain.as_secs_f64(),
        queue_grew: drain > LAG_DRAIN,
        deliveries,
        cpu,
    })
}

/// Open loop: `rate` publishes a second for `duration`, each sent at its
/// scheduled instant whether or not earlier ones were answered; every latency
/// is measured from the scheduled instant.
pub async fn open_loop(
    b: &Bench,
    rate: u32,
    duration: Duration,
    healthy: usize,
    failing: usize,
    slow: bool,
) -> anyhow::Result<OpenLoop> {
    let total = (f64::from(rate.max(1)) * duration.as_secs_f64()).round() as u64;
    let rx = Receiver::start(
        b.opts.receiver_workers,
        healthy,
        total as usize,
        b.slow_sleep(),
    )
    .await?;
    let target = b.target().await?;
    let (app, url) = setup(&target.api, &rx, healthy, failing, slow).await?;
    let pid = target.daemon.as_ref().map(Daemon::pid);
    let cpu = CpuMark::now(pid);
    let (tx, mut ticks) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let start = Instant::now() + Duration::from_millis(50);
    let rate_f = f64::from(rate.max(1));
    // A thread paces the sends: `thread::sleep` wakes within tens of
    // microseconds, where tokio's timer rounds up to the next millisecond.
    let pacer = std::thread::spawn(move || {
        for i in 0..total {
            let at = start + Duration::from_secs_f64(i as f64 / rate_f);
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if tx.send(at).is_err() {
                break;
            }
        }
    });
    let log = Rc::new(RefCell::new(PubLog::default()));
    let outstanding = Rc::new(Cell::new(0u64));
    let idle = Rc::new(tokio::sync::Notify::new());
    let mut max_outstanding = 0;
    while let Some(intended) = ticks.recv().await {
        outstanding.set(outstanding.get() + 1);
        max_outstanding = max_outstanding.max(outstanding.get());
        let (api, url, body) = (target.api.clone(), url.clone(), b.message.next());
        let (log, outstanding, idle) = (log.clone(), outstanding.clone(), idle.clone());
        actix_web::rt::spawn(async move {
            let t0 = Instant::now();
            let r = api.publish(&url, body).await;
            let mut l = log.borrow_mut();
            l.lag.record(t0.saturating_duration_since(intended));
            l.note(intended, t0, Instant::now(), r);
            outstanding.set(outstanding.get() - 1);
            if outstanding.get() == 0 {
                idle.notify_one();
            }
        });
    }
    let _ = pacer.join();
    while outstanding.get() > 0 {
        idle.notified().await;
    }
    // Every publisher is done: take the log out of its cell.
    let log = log.take();
    let published = log.sent.len() as u64;
    let complete = wait_for(&rx.rec, published * healthy as u64, b.opts.drain_timeout).await;
    let cpu = cpu.until(&CpuMark::now(pid));
    let (deliveries, last_arrival) =
        deliveries(&target.api, &app, &rx.rec, &log, healthy, complete).await;
    let drain = match (last_arrival, log.last) {
        (Some(a), Some(p)) => a.saturating_duration_since(p),
        _ => Duration::ZERO,
    };
    let (failing_arrivals, slow_arrivals) = (rx.rec.failing(), rx.rec.slow());
    // The receiver first: the slow endpoint's requests end, so webhookd stops sooner.
    rx.stop().await;
    target.finish().await?;
    Ok(OpenLoop {
        rate_per_s: rate,
        duration_s: duration.as_secs_f64(),
        healthy_endpoints: healthy,
        failing_endpoints: failing,
        slow_endpoints: usize::from(slow),
        scheduled: total,
        published,
        publish_errors: log.errors,
        max_outstanding,
        send_lag: log.lag.summary(),
        ack: log.ack.summary(),
        deliveries,
        drain_s: drain.as_secs_f64(),
        saturated: drain > LAG_DRAIN,
        failing_arrivals,
        slow_arrivals,
        cpu,
    })
}

/// The healthy endpoints' latency while some endpoints fail and one hangs,
/// against the same load to as many healthy endpoints.
pub async fn failing(
    b: &Bench,
    rate: u32,
    duration: Duration,
    endpoints: usize,
    fraction: f64,
) -> anyhow::Result<Failing> {
    let bad = ((endpoints as f64 * fraction).round() as usize).min(endpoints);
    eprintln!(
        "webhookd-bench: failing: baseline, {rate} msg/s to {} healthy endpoints",
        endpoints + 1
    );
    let baseline = open_loop(b, rate, duration, endpoints + 1, 0, false).await?;
    eprintln!(
        "webhookd-bench: failing: {rate} msg/s to {} healthy, {bad} failing, 1 slow endpoint",
        endpoints - bad
    );
    let failing = open_loop(b, rate, duration, endpoints - bad, bad, true).await?;
    let p99_ratio = match (
        failing.deliveries.publish_to_delivery.p99_ms,
        baseline.deliveries.publish_to_delivery.p99_ms,
    ) {
        (Some(f), Some(h)) if h > 0.0 => Some(f / h),
        _ => None,
    };
    Ok(Failing {
        request_timeout_s: b.opts.request_timeout.as_secs_f64(),
        slow_sleep_s: b.slow_sleep().as_secs_f64(),
        baseline,
        failing,
        p99_ratio,
    })
}

/// Waits until webhookd reports nothing queued and nothing in flight, i.e.
/// every attempt is recorded.
async fn wait_idle(api: &Api, limit: Duration) -> anyhow::Result<bool> {
    let deadline = Instant::now() + limit;
    loop {
        let report = api.health_report().await?;
        let queue = &report["queue"];
        if queue["depth"].as_u64() == Some(0) && queue["inFlight"].as_u64() == Some(0) {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        // Each report counts the queue (up to 100,000 entries): ask rarely.
        sleep(Duration::from_millis(250)).await;
    }
}

/// `requests` sequential GETs of each dashboard page.
async fn dashboard(
    api: &Api,
    app: &str,
    ids: &[String],
    requests: usize,
) -> anyhow::Result<Dashboard> {
    let cookie = api.dashboard_login().await?;
    let filtered = format!("/messages?app={app}&status=delivered");
    let mut hists = [Hist::default(), Hist::default(), Hist::default()];
    let mut page_bytes = [0; 3];
    for i in 0..requests {
        let page = match ids.get(i % ids.len().max(1)) {
            Some(id) => format!("/messages/{id}"),
            None => "/messages".to_owned(),
        };
        let paths = ["/messages", &filtered, &page];
        for ((hist, bytes), path) in hists.iter_mut().zip(&mut page_bytes).zip(paths) {
            let t0 = Instant::now();
            *bytes = api.page(path, &cookie).await?;
            hist.record(t0.elapsed());
        }
    }
    let [list, list_filtered, page] = hists;
    Ok(Dashboard {
        requests_each: requests,
        message_list: list.summary(),
        message_list_filtered: list_filtered.summary(),
        message_page: page.summary(),
        page_bytes,
    })
}

/// Preloads `messages` through the API, each delivered once; then what a large
/// store costs: disk, memory, a restart, and dashboard pages.
pub async fn stored(
    b: &Bench,
    messages: u64,
    concurrency: usize,
    requests: usize,
) -> anyhow::Result<Stored> {
    let rx = Receiver::start(
        b.opts.receiver_workers,
        1,
        messages as usize,
        b.slow_sleep(),
    )
    .await?;
    let mut target = b.target().await?;
    let (app, url) = setup(&target.api, &rx, 1, 0, false).await?;
    let pid = target.daemon.as_ref().map(Daemon::pid);
    let cpu = CpuMark::now(pid);
    let log = Rc::new(RefCell::new(PubLog::default()));
    let stop = Stop::Count(Cell::new(0), messages);
    let progress = {
        let log = log.clone();
        actix_web::rt::spawn(async move {
            loop {
                sleep(Duration::from_secs(10)).await;
                let n = log.borrow().sent.len();
                eprintln!("webhookd-bench: stored: {n} of {messages} published");
            }
        })
    };
    closed_loop(&target.api, &url, &b.message, concurrency, stop, &log).await;
    progress.abort();
    // Every publisher is done: take the log out of its cell.
    let log = log.take();
    let published = log.sent.len() as u64;
    let complete = wait_for(&rx.rec, published, b.opts.drain_timeout).await;
    // Delivered at the receiver is not yet recorded in webhookd: wait for that
    // too, unless deliveries are missing anyway.
    let idle = complete && wait_idle(&target.api, b.opts.drain_timeout).await?;
    let preload_cpu = cpu.until(&CpuMark::now(pid));
    let (deliveries, _) = deliveries(&target.api, &app, &rx.rec, &log, 1, complete && idle).await;
    rx.stop().await;
    // Pages of messages spread over the whole store, oldest to newest.
    let ids: Vec<String> = (0..requests.max(1))
        .filter_map(|i| log.sent.get(i * log.sent.len() / requests.max(1)))
        .map(|(id, _)| id.clone())
        .collect();
    let mut result = Stored {
        messages,
        published,
        publish_errors: log.errors,
        preload_s: log.span().as_secs_f64(),
        preload_publishes_per_s: per_s(published, log.span()),
        preload_cpu,
        deliveries,
        skipped: None,
        disk_bytes: None,
        disk_bytes_per_message: None,
        rss_peak_preload_bytes: None,
        stop_s: None,
        restart: None,
        dashboard: Dashboard {
            requests_each: 0,
            message_list: Hist::default().summary(),
            message_list_filtered: Hist::default().summary(),
            message_page: Hist::default().summary(),
            page_bytes: [0; 3],
        },
    };
    let Some(first) = target.daemon.take() else {
        result.skipped = Some("skipped: webhookd runs elsewhere (--server)".into());
        result.dashboard = dashboard(&target.api, &app, &ids, requests).await?;
        return Ok(result);
    };
    result.rss_peak_preload_bytes = Some(first.peak_rss()?);
    let mut spawn = first.spawn.clone();
    let base = first.base.clone();
    eprintln!("webhookd-bench: stored: stopping webhookd (SIGTERM) and starting it again");
    let (stop_took, graceful) = first.stop(Duration::from_secs(120)).await?;
    if !graceful {
        eprintln!("webhookd-bench: warning: webhookd did not stop gracefully; it was killed");
    }
    result.stop_s = Some(stop_took.as_secs_f64());
    let disk = daemon::disk_usage(&spawn.data_dir)?;
    result.disk_bytes = Some(disk);
    result.disk_bytes_per_message = Some(disk as f64 / published.max(1) as f64);
    // The same address, so the first health check can be sent at once.
    spawn.listen = base.trim_start_matches("http://").to_owned();
    let (again, serving, status) = Daemon::restart(spawn, b.client(), &base, START_LIMIT).await?;
    let api = Api::new(b.client(), &again.base, &again.spawn.token);
    result.dashboard = dashboard(&api, &app, &ids, requests).await?;
    result.restart = Some(Restart {
        serving_s: serving.as_secs_f64(),
        health_status: status,
        ready_line_s: again.ready_after.as_secs_f64(),
        rss_peak_bytes: again.peak_rss()?,
    });
    again.stop(Duration::from_secs(120)).await?;
    Ok(result)
}

/// How often the reconcile job runs in `backlog`, instead of every minute.
const BACKLOG_RECONCILE: &str = "*/2 * * * * *";

/// A queue that does not drain: `messages` published by `concurrency`
/// publishers to one endpoint with `deliverAt` an hour ahead, then passes
/// of the reconcile job (every 2 s here), which reads the whole queue:
/// webhookd's peak RSS by the end of the publishing and after three more
/// passes (the one under way, and two begun after the last publish).
/// Nothing is delivered; the data dir goes with it.
pub async fn backlog(b: &Bench, messages: u64, concurrency: usize) -> anyhow::Result<Backlog> {
    let mut result = Backlog {
        messages,
        published: 0,
        publish_errors: 0,
        publishes_per_s: 0.0,
        skipped: None,
        rss_peak_published_bytes: None,
        rss_peak_bytes: None,
        reconcile_passes: 0,
    };
    if b.bin.is_none() {
        // Its messages would stay queued for an hour on someone's server.
        result.skipped = Some("skipped: webhookd runs elsewhere (--server)".into());
        return Ok(result);
    }
    let target = b
        .target_with(vec![(
            "WEBHOOKD_SCHEDULER__RECONCILE".into(),
            BACKLOG_RECONCILE.into(),
        )])
        .await?;
    let daemon = target.daemon.as_ref().expect("spawned");
    let app = target.api.create_app("bench-backlog").await?;
    // Nothing listens there, and nothing is sent before the hour is up.
    target
        .api
        .create_endpoint(&app, "http://127.0.0.1:9/backlog")
        .await?;
    let url = target.api.msg_url(&app);
    let at =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(3600));
    let later = Bodies::new(
        (0..crate::DISTINCT_BODIES)
            .map(|_| {
                let body = b.message.next();
                let rest = body.strip_prefix(b"{").expect("a message is a JSON object");
                let mut with = format!(r#"{{"deliverAt":"{at}","#).into_bytes();
                with.extend_from_slice(rest);
                Bytes::from(with)
            })
            .collect(),
    );
    let log = Rc::new(RefCell::new(PubLog::default()));
    let stop = Stop::Count(Cell::new(0), messages);
    closed_loop(&target.api, &url, &later, concurrency, stop, &log).await;
    let log = log.take();
    result.published = log.sent.len() as u64;
    result.publish_errors = log.errors;
    result.publishes_per_s = per_s(result.published, log.span());
    result.rss_peak_published_bytes = Some(daemon.peak_rss()?);
    // A pass under way now began before the last publish: two more.
    let runs = target.api.job_runs("reconcile").await?;
    let deadline = Instant::now() + b.opts.drain_timeout;
    loop {
        let now = target.api.job_runs("reconcile").await?;
        if now >= runs + 3 {
            result.reconcile_passes = now - runs;
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "backlog: the reconcile job ran {} times in {:?}",
            now - runs,
            b.opts.drain_timeout
        );
        sleep(Duration::from_millis(100)).await;
    }
    result.rss_peak_bytes = Some(daemon.peak_rss()?);
    target.finish().await?;
    Ok(result)
}
