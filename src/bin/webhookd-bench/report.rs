//! What the bench measured: latency histograms, one result struct per
//! scenario (serialized as the `--json` output; field names are stable), and
//! the table of figures against their targets.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::api::Attempt;

/// Latencies in microseconds, from 1 µs to 1 h at 3 significant digits.
pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Hist(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"))
    }
}

impl Hist {
    pub fn record(&mut self, d: Duration) {
        self.0
            .saturating_record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1));
    }

    pub fn summary(&self) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        let empty = self.0.is_empty();
        let q = |q: f64| (!empty).then(|| ms(self.0.value_at_quantile(q)));
        Latency {
            count: self.0.len(),
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: (!empty).then(|| ms(self.0.max())),
            mean_ms: (!empty).then(|| self.0.mean() / 1000.0),
        }
    }
}

/// Percentiles of one latency (`null` when nothing was measured).
#[derive(Serialize, Clone, Debug)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub mean_ms: Option<f64>,
}

#[derive(Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_bytes: u64,
}

#[derive(Serialize)]
pub struct Setup {
    /// `spawned` (the bench started webhookd) or `external` (`--server`).
    pub daemon: &'static str,
    pub webhookd: Option<String>,
    pub payload_bytes: usize,
    pub request_timeout_s: f64,
    pub retry_schedule: Option<String>,
    pub daemon_log: String,
    /// Further variables given with `--daemon-env`.
    pub daemon_env: Vec<String>,
    pub receiver_workers: usize,
    pub client_connections: usize,
}

/// Cores used on average over a run (1.0 = one core busy all along).
#[derive(Serialize, Clone, Copy)]
pub struct Cpu {
    pub wall_s: f64,
    /// `null` when webhookd runs elsewhere (`--server`).
    pub webhookd_cores: Option<f64>,
    /// The bench: its client and its receiver.
    pub bench_cores: f64,
    /// Every other process on the machine: load that was not ours.
    pub other_cores: f64,
}

impl Cpu {
    /// `external`: webhookd runs elsewhere, maybe among the other processes.
    fn note(&self, external: bool) -> String {
        match (self.webhookd_cores, external) {
            (Some(w), _) => format!(
                "cores used: webhookd {w:.2}, bench {:.2}, other processes {:.2}",
                self.bench_cores, self.other_cores
            ),
            (None, true) => format!(
                "cores used: bench {:.2}, other processes (webhookd among them, if on this machine) {:.2}",
                self.bench_cores, self.other_cores
            ),
            (None, false) => format!(
                "cores used: bench {:.2}, other processes {:.2}",
                self.bench_cores, self.other_cores
            ),
        }
    }
}

#[derive(Serialize)]
pub struct Direct {
    pub concurrency: usize,
    pub duration_s: f64,
    pub requests: u64,
    pub errors: u64,
    pub requests_per_s: f64,
    pub latency: Latency,
    pub cpu: Cpu,
}

/// How a run of publishes went, and what arrived.
#[derive(Serialize, Clone)]
pub struct Deliveries {
    /// Deliveries owed to healthy endpoints: messages acknowledged × their count.
    pub expected: u64,
    /// First arrivals of those at the receiver.
    pub delivered: u64,
    /// Arrivals after the first of the same message at the same endpoint.
    pub duplicates: u64,
    /// The first few of those, with webhookd's attempts of each.
    pub duplicates_seen: Vec<Duplicate>,
    /// Every expected delivery arrived before the deadline.
    pub complete: bool,
    pub publish_to_delivery: Latency,
}

/// A message that arrived more than once at one endpoint.
#[derive(Serialize, Clone)]
pub struct Duplicate {
    pub message_id: String,
    /// The receiver's path, `/ok/{n}`.
    pub endpoint: String,
    /// webhookd's attempts of it at that endpoint, newest first (empty if
    /// they could not be read: see `error`).
    pub attempts: Vec<Attempt>,
    pub error: Option<String>,
}

#[derive(Serialize)]
pub struct Throughput {
    pub concurrency: usize,
    pub fanout: usize,
    pub duration_s: f64,
    pub published: u64,
    pub publish_errors: u64,
    pub publishes_per_s: f64,
    pub ack: Latency,
    #[serde(flatten)]
    pub deliveries: Deliveries,
    /// Deliveries over the time from the first publish to the last delivery.
    pub deliveries_per_s: f64,
    /// Deliveries that arrived while publishing went on, per second of it.
    pub deliveries_per_s_while_publishing: f64,
    /// Deliveries owed when the last publish was acknowledged.
    pub backlog_at_publish_end: u64,
    /// Largest number of deliveries owed, sampled every 250 ms.
    pub backlog_max: u64,
    /// From the last acknowledged publish to the last delivery.
    pub drain_s: f64,
    /// The backlog took more than a second to drain: deliveries lagged behind publishes.
    pub queue_grew: bool,
    /// From the first publish to the last delivery.
    pub cpu: Cpu,
}

#[derive(Serialize, Clone)]
pub struct OpenLoop {
    pub rate_per_s: u32,
    pub duration_s: f64,
    pub healthy_endpoints: usize,
    pub failing_endpoints: usize,
    pub slow_endpoints: usize,
    pub scheduled: u64,
    pub published: u64,
    pub publish_errors: u64,
    pub max_outstanding: u64,
    /// How late the bench itself sent, against the schedule (its own noise).
    pub send_lag: Latency,
    /// From the intended send time to the 202.
    pub ack: Latency,
    /// Latencies are from the intended send time (coordinated omission avoided).
    #[serde(flatten)]
    pub deliveries: Deliveries,
    /// From the last acknowledged publish to the last healthy delivery.
    pub drain_s: f64,
    /// The drain took more than a second: webhookd did not keep up with the
    /// rate, so latencies measure a growing queue.
    pub saturated: bool,
    /// Requests that reached the failing (500) endpoints and the slow one.
    pub failing_arrivals: u64,
    pub slow_arrivals: u64,
    /// From the first publish until the healthy deliveries were in.
    pub cpu: Cpu,
}

#[derive(Serialize)]
pub struct Failing {
    pub request_timeout_s: f64,
    pub slow_sleep_s: f64,
    /// The same rate and endpoint count, all healthy.
    pub baseline: OpenLoop,
    pub failing: OpenLoop,
    /// Healthy endpoints' publish-to-delivery p99: with failures ÷ all healthy.
    pub p99_ratio: Option<f64>,
}

#[derive(Serialize)]
pub struct Restart {
    /// Spawn to the first answer of `GET /api/v1/health`.
    pub serving_s: f64,
    pub health_status: u16,
    /// Spawn to the ` ready: ` line on stdout.
    pub ready_line_s: f64,
    pub rss_peak_bytes: u64,
}

#[derive(Serialize)]
pub struct Dashboard {
    pub requests_each: usize,
    /// `GET /messages`, the first page.
    pub message_list: Latency,
    /// `GET /messages?app=…&status=delivered`.
    pub message_list_filtered: Latency,
    /// `GET /messages/{id}` of messages spread over the store.
    pub message_page: Latency,
    /// Size of the last page of each kind, in bytes (list, filtered list, message).
    pub page_bytes: [usize; 3],
}

#[derive(Serialize)]
pub struct Stored {
    pub messages: u64,
    pub published: u64,
    pub publish_errors: u64,
    pub preload_s: f64,
    pub preload_publishes_per_s: f64,
    /// While preloading and delivering.
    pub preload_cpu: Cpu,
    #[serde(flatten)]
    pub deliveries: Deliveries,
    /// Why the process figures below are null, if they are.
    pub skipped: Option<String>,
    /// Allocated bytes of the data dir after a graceful stop.
    pub disk_bytes: Option<u64>,
    pub disk_bytes_per_message: Option<f64>,
    /// VmHWM while preloading and delivering.
    pub rss_peak_preload_bytes: Option<u64>,
    pub stop_s: Option<f64>,
    pub restart: Option<Restart>,
    pub dashboard: Dashboard,
}

/// A queue that does not drain (`backlog`).
#[derive(Serialize)]
pub struct Backlog {
    pub messages: u64,
    pub published: u64,
    pub publish_errors: u64,
    pub publishes_per_s: f64,
    /// Why the process figures below are null, if they are.
    pub skipped: Option<String>,
    /// VmHWM by the end of the publishing.
    pub rss_peak_published_bytes: Option<u64>,
    /// VmHWM after the reconcile passes below.
    pub rss_peak_bytes: Option<u64>,
    /// Passes of the reconcile job that ended after the last publish.
    pub reconcile_passes: u64,
}

#[derive(Serialize)]
pub struct Report {
    pub schema: u32,
    pub scenario: String,
    pub machine: Machine,
    pub setup: Setup,
    pub direct: Option<Direct>,
    pub throughput: Vec<Throughput>,
    pub latency: Option<OpenLoop>,
    pub failing: Option<Failing>,
    pub stored: Option<Stored>,
    pub backlog: Option<Backlog>,
    pub figures: Vec<Figure>,
}

/// One line of the table.
#[derive(Serialize)]
pub struct Figure {
    pub key: String,
    pub label: String,
    pub value: Option<f64>,
    pub unit: &'static str,
    /// The target, e.g. `>= 15000` or `< 5`, in `unit`.
    pub target: Option<String>,
    pub meets: Option<bool>,
    /// A rate as a fraction of the `direct` ceiling.
    pub ratio_to_direct: Option<f64>,
    pub note: Option<String>,
}

enum Goal {
    AtLeast(f64),
    Below(f64),
}

struct Rows {
    figures: Vec<Figure>,
    /// The `direct` POSTs/s, when it ran.
    ceiling: Option<f64>,
}

impl Rows {
    fn push(
        &mut self,
        key: impl Into<String>,
        label: impl Into<String>,
        value: Option<f64>,
        unit: &'static str,
        goal: Option<Goal>,
    ) -> &mut Figure {
        let (target, meets) = match goal {
            Some(Goal::AtLeast(t)) => (Some(format!(">= {t}")), value.map(|v| v >= t)),
            Some(Goal::Below(t)) => (Some(format!("< {t}")), value.map(|v| v < t)),
            None => (None, None),
        };
        let ratio_to_direct = match (unit, value, self.ceiling) {
            ("/s", Some(v), Some(c)) if c > 0.0 => Some(v / c),
            _ => None,
        };
        self.figures.push(Figure {
            key: key.into(),
            label: label.into(),
            value,
            unit,
            target,
            meets,
            ratio_to_direct,
            note: None,
        });
        self.figures.last_mut().expect("just pushed")
    }
}

fn with_cpu(note: Option<String>, cpu: &Cpu, external: bool) -> Option<String> {
    Some(match note {
        Some(n) => format!("{n}; {}", cpu.note(external)),
        None => cpu.note(external),
    })
}

fn saturated(o: &OpenLoop) -> Option<String> {
    o.saturated.then(|| {
        format!(
            "saturated: deliveries finished {:.1} s after the last publish",
            o.drain_s
        )
    })
}

/// Notes joined with "; ".
fn join(notes: impl IntoIterator<Item = Option<String>>) -> Option<String> {
    let v: Vec<String> = notes.into_iter().flatten().collect();
    (!v.is_empty()).then(|| v.join("; "))
}

/// Deliveries missing at the deadline, and duplicates.
fn incomplete(d: &Deliveries) -> Option<String> {
    join([
        (!d.complete).then(|| {
            format!(
                "incomplete: {} of {} delivered by the deadline",
                d.delivered, d.expected
            )
        }),
        (d.duplicates > 0).then(|| format!("{} duplicate deliveries", d.duplicates)),
    ])
}

const MB: f64 = 1_000_000.0;
const KIB: f64 = 1024.0;

impl Report {
    /// The figures of whatever ran, with the targets webhookd aims at.
    pub fn figures(&self) -> Vec<Figure> {
        let external = self.setup.daemon == "external";
        let mut r = Rows {
            figures: Vec::new(),
            ceiling: self.direct.as_ref().map(|d| d.requests_per_s),
        };
        if let Some(d) = &self.direct {
            r.push(
                "direct_requests_per_s",
                format!(
                    "direct POSTs/s (loopback ceiling), {} in flight",
                    d.concurrency
                ),
                Some(d.requests_per_s),
                "/s",
                None,
            );
            r.figures.last_mut().expect("just pushed").note = Some(d.cpu.note(false));
            r.push(
                "direct_latency_p99_ms",
                "direct POST latency p99",
                d.latency.p99_ms,
                "ms",
                None,
            );
        }
        for t in &self.throughput {
            let k = format!("throughput_fanout_{}", t.fanout);
            let cond = format!(
                "fan-out {}, {} publishers, {:.0} s",
                t.fanout, t.concurrency, t.duration_s
            );
            let goal = match t.fanout {
                1 => Some(Goal::AtLeast(15_000.0)),
                10 => Some(Goal::AtLeast(30_000.0)),
                _ => None,
            };
            let note = incomplete(&t.deliveries);
            r.push(
                format!("{k}_deliveries_per_s"),
                format!("deliveries/s, {cond}"),
                Some(t.deliveries_per_s),
                "/s",
                goal,
            )
            .note = with_cpu(note, &t.cpu, external);
            r.push(
                format!("{k}_publishes_per_s"),
                format!("publishes acked/s, {cond}"),
                Some(t.publishes_per_s),
                "/s",
                None,
            );
            r.push(
                format!("{k}_ack_p99_ms"),
                format!("publish ack p99, {cond}"),
                t.ack.p99_ms,
                "ms",
                None,
            );
            r.push(
                format!("{k}_p2d_p99_ms"),
                format!("publish-to-delivery p99, {cond}"),
                t.deliveries.publish_to_delivery.p99_ms,
                "ms",
                None,
            );
            r.push(
                format!("{k}_drain_s"),
                format!("drain after the last publish, {cond}"),
                Some(t.drain_s),
                "s",
                None,
            )
            .note = Some(if t.queue_grew {
                format!(
                    "queue grew: {} deliveries owed at the end",
                    t.backlog_at_publish_end
                )
            } else {
                "deliveries kept up".into()
            });
        }
        if let Some(l) = &self.latency {
            let cond = format!(
                "{} msg/s open loop, fan-out {}",
                l.rate_per_s, l.healthy_endpoints
            );
            let note = join([incomplete(&l.deliveries), saturated(l)]);
            r.push(
                "latency_ack_p50_ms",
                format!("publish ack p50, {cond}"),
                l.ack.p50_ms,
                "ms",
                None,
            );
            r.push(
                "latency_ack_p99_ms",
                format!("publish ack p99, {cond}"),
                l.ack.p99_ms,
                "ms",
                Some(Goal::Below(5.0)),
            );
            r.push(
                "latency_ack_p999_ms",
                format!("publish ack p99.9, {cond}"),
                l.ack.p999_ms,
                "ms",
                None,
            );
            r.push(
                "latency_p2d_p50_ms",
                format!("publish-to-delivery p50, {cond}"),
                l.deliveries.publish_to_delivery.p50_ms,
                "ms",
                None,
            );
            r.push(
                "latency_p2d_p99_ms",
                format!("publish-to-delivery p99, {cond}"),
                l.deliveries.publish_to_delivery.p99_ms,
                "ms",
                Some(Goal::Below(10.0)),
            )
            .note = with_cpu(note, &l.cpu, external);
            r.push(
                "latency_p2d_p999_ms",
                format!("publish-to-delivery p99.9, {cond}"),
                l.deliveries.publish_to_delivery.p999_ms,
                "ms",
                None,
            );
            r.push(
                "latency_send_lag_p99_ms",
                "the bench's own send lag p99 (included in the latencies above)",
                l.send_lag.p99_ms,
                "ms",
                None,
            );
        }
        if let Some(f) = &self.failing {
            let b = &f.baseline;
            let x = &f.failing;
            r.push(
                "failing_baseline_p2d_p99_ms",
                format!(
                    "p2d p99, {} msg/s to {} healthy endpoints",
                    b.rate_per_s, b.healthy_endpoints
                ),
                b.deliveries.publish_to_delivery.p99_ms,
                "ms",
                None,
            )
            .note = with_cpu(
                join([incomplete(&b.deliveries), saturated(b)]),
                &b.cpu,
                external,
            );
            r.push(
                "failing_healthy_p2d_p99_ms",
                format!(
                    "healthy p2d p99, {} ok + {} failing (500) + {} slow ({:.0} s)",
                    x.healthy_endpoints, x.failing_endpoints, x.slow_endpoints, f.slow_sleep_s
                ),
                x.deliveries.publish_to_delivery.p99_ms,
                "ms",
                None,
            )
            .note = with_cpu(
                join([incomplete(&x.deliveries), saturated(x)]),
                &x.cpu,
                external,
            );
            let ratio = r.push(
                "failing_p99_ratio",
                "healthy p2d p99 with failures ÷ all healthy",
                f.p99_ratio,
                "×",
                Some(Goal::Below(2.0)),
            );
            if b.saturated || x.saturated {
                // Two growing queues compared: the ratio says nothing about isolation.
                ratio.meets = None;
                ratio.note = Some(format!(
                    "not judged: webhookd did not keep up (drain {:.1} s all healthy, {:.1} s \
                     with failures); try a lower --rate",
                    b.drain_s, x.drain_s
                ));
            }
        }
        if let Some(s) = &self.stored {
            let n = s.messages;
            let skipped = s.skipped.clone();
            r.push(
                "stored_disk_bytes_per_message",
                format!("disk per 1 KiB message incl. one attempt, {n} stored"),
                s.disk_bytes_per_message.map(|b| b / KIB),
                "KiB",
                Some(Goal::Below(3.0)),
            )
            .note = skipped.clone();
            let peak = match (s.rss_peak_preload_bytes, &s.restart) {
                (Some(a), Some(b)) => Some(a.max(b.rss_peak_bytes)),
                (a, b) => a.or(b.as_ref().map(|b| b.rss_peak_bytes)),
            };
            r.push(
                "stored_rss_peak_mb",
                format!("peak RSS (larger of preload and restart), {n} stored"),
                peak.map(|b| b as f64 / MB),
                "MB",
                Some(Goal::Below(200.0)),
            )
            .note = skipped.clone().or_else(|| {
                s.restart.as_ref().map(|rs| {
                    format!(
                        "preload {:.0} MB, after restart {:.0} MB",
                        s.rss_peak_preload_bytes.unwrap_or(0) as f64 / MB,
                        rs.rss_peak_bytes as f64 / MB
                    )
                })
            });
            r.push(
                "stored_start_to_serving_s",
                format!("start to serving (first health answer), {n} stored"),
                s.restart.as_ref().map(|x| x.serving_s),
                "s",
                Some(Goal::Below(1.0)),
            )
            .note = skipped.or_else(|| {
                s.restart
                    .as_ref()
                    .map(|x| format!("ready line after {:.3} s", x.ready_line_s))
            });
            // What a restart costs before its start: webhookd's graceful stop
            // ends by writing sled's snapshot (`Store::close_with_snapshot`).
            r.push(
                "stored_graceful_stop_s",
                format!("graceful stop (SIGTERM to exit), {n} stored"),
                s.stop_s,
                "s",
                None,
            );
            let d = &s.dashboard;
            for (key, label, lat) in [
                (
                    "message_list",
                    "dashboard message list p99",
                    &d.message_list,
                ),
                (
                    "message_list_filtered",
                    "dashboard message list, filtered, p99",
                    &d.message_list_filtered,
                ),
                (
                    "message_page",
                    "dashboard message page p99",
                    &d.message_page,
                ),
            ] {
                r.push(
                    format!("stored_dashboard_{key}_p99_ms"),
                    format!("{label}, {n} stored"),
                    lat.p99_ms,
                    "ms",
                    Some(Goal::Below(100.0)),
                );
            }
            r.push(
                "stored_preload_publishes_per_s",
                format!("preload publishes/s, {n} messages"),
                Some(s.preload_publishes_per_s),
                "/s",
                None,
            )
            .note = with_cpu(incomplete(&s.deliveries), &s.preload_cpu, external);
        }
        if let Some(q) = &self.backlog {
            let n = q.published;
            r.push(
                "backlog_rss_peak_mb",
                format!("peak RSS, {n} deliveries queued, reconcile passes included"),
                q.rss_peak_bytes.map(|b| b as f64 / MB),
                "MB",
                None,
            )
            .note = q.skipped.clone().or_else(|| {
                q.rss_peak_published_bytes.map(|p| {
                    format!(
                        "{:.0} MB by the last publish, then {} passes",
                        p as f64 / MB,
                        q.reconcile_passes
                    )
                })
            });
        }
        r.figures
    }
}

fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v);
    let (sign, digits) = s.split_at(if s.starts_with('-') { 1 } else { 0 });
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

fn show(v: Option<f64>, unit: &str) -> String {
    let Some(v) = v else {
        return "—".into();
    };
    match unit {
        "/s" => format!("{}/s", thousands(v)),
        "ms" => format!("{v:.2} ms"),
        "s" => format!("{v:.3} s"),
        "×" => format!("{v:.2}×"),
        u => format!("{v:.2} {u}"),
    }
}

/// The figures as a plain-text table.
pub fn table(figures: &[Figure]) -> String {
    let rows: Vec<[String; 5]> = figures
        .iter()
        .map(|f| {
            [
                f.label.clone(),
                show(f.value, f.unit),
                f.target
                    .as_deref()
                    .map(|t| {
                        let (op, n) = t.split_once(' ').unwrap_or(("", t));
                        let op = if op == ">=" { "≥" } else { op };
                        let n: f64 = n.parse().unwrap_or(0.0);
                        let n = match f.unit {
                            "/s" => format!("{}/s", thousands(n)),
                            "×" => format!("{n}×"),
                            u => format!("{n} {u}"),
                        };
                        format!("{op} {n}")
                    })
                    .unwrap_or_default(),
                match f.meets {
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                    None => String::new(),
                },
                f.ratio_to_direct
                    .map(|r| format!("{r:.2}"))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    let head = ["figure", "measured", "target", "meets", "÷ direct"];
    let mut width = head.map(|h| h.chars().count());
    for row in &rows {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String; 5]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            let pad = w - c.chars().count();
            if i == 1 || i == 4 {
                let _ = write!(s, "{}{c}  ", " ".repeat(pad));
            } else {
                let _ = write!(s, "{c}{}  ", " ".repeat(pad));
            }
        }
        s.trim_end().to_owned()
    };
    let mut out = line(&head.map(str::to_owned));
    out.push('\n');
    out.push_str(&"-".repeat(width.iter().sum::<usize>() + 2 * (width.len() - 1)));
    out.push('\n');
    for (row, f) in rows.iter().zip(figures) {
        out.push_str(&line(row));
        out.push('\n');
        if let Some(note) = &f.note {
            let _ = writeln!(out, "    ({note})");
        }
    }
    out
}
