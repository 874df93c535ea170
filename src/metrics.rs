//! Prometheus metrics: what webhookd counts, and the text exposition of `/metrics`.
//!
//! Owns one `prometheus::Registry` per running instance (tests run several
//! instances in one process, so nothing is registered globally). Counters and
//! histograms are updated where things happen (the API's publish, the delivery
//! worker, the scheduler); gauges that describe the store (queue, oldest pending
//! delivery, database size, disabled endpoints) are read from it at scrape time,
//! so they are never stale and cost nothing between scrapes. Must not know
//! about HTTP: the API serves what `render` returns.

use prometheus::{
    Encoder as _, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::store::{Store, StoreError};

/// The content type of the text exposition format `render` produces.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Buckets of one attempt's duration (the request timeout is 15 s by default).
const ATTEMPT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0,
];

/// Buckets of publish-to-first-attempt latency: from a few milliseconds when
/// the queue is empty to an hour when it is far behind.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Job names the scheduler labels its counters with (pre-registered at 0, so a
/// job that has not run yet still has series).
const JOBS: [&str; 4] = [
    "reconcile",
    "retention",
    "endpoint_health",
    "silence_watchdog",
];

/// Every metric of one running instance. Cheap to update from any thread.
pub struct Metrics {
    registry: Registry,
    /// Messages accepted by `POST /api/v1/app/{app}/msg` (and send-example).
    pub messages_published: IntCounter,
    /// Recorded attempts, by `outcome` (success, failure) and `status_class`.
    deliveries: IntCounterVec,
    /// Duration of each attempt (connect, send, response).
    attempt_duration: Histogram,
    /// From publish to the end of the first attempt of each delivery.
    first_attempt_latency: Histogram,
    /// Failed attempts after which a retry was queued.
    pub retries_scheduled: IntCounter,
    job_runs: IntCounterVec,
    job_failures: IntCounterVec,
    queue_depth: IntGaugeVec,
    oldest_pending_age: Gauge,
    endpoints_disabled: IntGauge,
    database_size: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique and valid");
    c
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let counter = |name: &str, help: &str| {
            register(
                &r,
                IntCounter::new(name, help).expect("the metric name is valid"),
            )
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("the metric is valid"),
            )
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            register(
                &r,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
                    .expect("the buckets increase"),
            )
        };
        let m = Self {
            messages_published: counter(
                "webhookd_messages_published_total",
                "Messages accepted for delivery through the API.",
            ),
            deliveries: counter_vec(
                "webhookd_delivery_attempts_total",
                "Delivery attempts recorded, by outcome (success, failure) and response status \
                 class (2xx, 3xx, 4xx, 5xx, or none when no response arrived).",
                &["outcome", "status_class"],
            ),
            attempt_duration: histogram(
                "webhookd_delivery_attempt_duration_seconds",
                "Duration of one delivery attempt: connect, send, and read the response.",
                ATTEMPT_BUCKETS,
            ),
            first_attempt_latency: histogram(
                "webhookd_delivery_first_attempt_latency_seconds",
                "Time from publish to the end of the first attempt of each delivery \
                 (message and endpoint).",
                LATENCY_BUCKETS,
            ),
            retries_scheduled: counter(
                "webhookd_delivery_retries_scheduled_total",
                "Failed attempts after which a retry was scheduled.",
            ),
            job_runs: counter_vec(
                "webhookd_scheduler_job_runs_total",
                "Runs of each scheduler job, failed ones included.",
                &["job"],
            ),
            job_failures: counter_vec(
                "webhookd_scheduler_job_failures_total",
                "Runs of each scheduler job that failed.",
                &["job"],
            ),
            queue_depth: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "webhookd_queue_depth",
                        "Deliveries waiting (queued, due now or later) or being attempted (in_flight).",
                    ),
                    &["state"],
                )
                .expect("the metric is valid"),
            ),
            oldest_pending_age: register(
                &r,
                Gauge::new(
                    "webhookd_queue_oldest_pending_age_seconds",
                    "How long the oldest queued delivery has been due (0 when none is due).",
                )
                .expect("the metric name is valid"),
            ),
            endpoints_disabled: register(
                &r,
                IntGauge::new(
                    "webhookd_endpoints_disabled",
                    "Endpoints that are disabled (by a person, by a 410 Gone, or for failing too long).",
                )
                .expect("the metric name is valid"),
            ),
            database_size: register(
                &r,
                IntGauge::new(
                    "webhookd_database_size_bytes",
                    "Size of the database on disk.",
                )
                .expect("the metric name is valid"),
            ),
            registry: r,
        };
        for job in JOBS {
            m.job_runs.with_label_values(&[job]);
            m.job_failures.with_label_values(&[job]);
        }
        m.deliveries.with_label_values(&["success", "2xx"]);
        for class in ["none", "4xx", "5xx"] {
            m.deliveries.with_label_values(&["failure", class]);
        }
        m
    }

    /// Counts one recorded attempt: its outcome, status class and duration.
    pub fn attempt(&self, success: bool, status: u16, duration: std::time::Duration) {
        let outcome = if success { "success" } else { "failure" };
        self.deliveries
            .with_label_values(&[outcome, status_class(status)])
            .inc();
        self.attempt_duration.observe(duration.as_secs_f64());
    }

    /// The first attempt of a delivery ended `ms` after its message was published.
    pub fn first_attempt_after(&self, ms: i64) {
        self.first_attempt_latency
            .observe(ms.max(0) as f64 / 1000.0);
    }

    /// A scheduler job ran (`failed`: it ended with an error).
    pub fn job_ran(&self, job: &str, failed: bool) {
        self.job_runs.with_label_values(&[job]).inc();
        if failed {
            self.job_failures.with_label_values(&[job]).inc();
        }
    }

    /// Reads the store-derived gauges, then encodes every metric in the
    /// Prometheus text format. Scans the queue and the endpoints: call it off the
    /// async threads (`web::block`).
    pub fn render(&self, store: &Store, now_ms: i64) -> Result<String, StoreError> {
        let (queued, in_flight) = store.queue_depth();
        self.queue_depth
            .with_label_values(&["queued"])
            .set(queued as i64);
        self.queue_depth
            .with_label_values(&["in_flight"])
            .set(in_flight as i64);
        let oldest = store.queue_summary(1)?.oldest_due_ms;
        self.oldest_pending_age
            .set(oldest.map_or(0, |due| (now_ms - due).max(0)) as f64 / 1000.0);
        let disabled = store.all_endpoints()?.iter().filter(|e| e.disabled).count();
        self.endpoints_disabled.set(disabled as i64);
        self.database_size
            .set(i64::try_from(store.size_on_disk()?).unwrap_or(i64::MAX));
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding metrics into memory cannot fail");
        Ok(String::from_utf8(out).expect("the text format is UTF-8"))
    }
}

/// "2xx" for 200–299 and so on; "none" when no response arrived (status 0).
fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        assert_eq!(status_class(0), "none");
        assert_eq!(status_class(204), "2xx");
        assert_eq!(status_class(302), "3xx");
        assert_eq!(status_class(410), "4xx");
        assert_eq!(status_class(503), "5xx");
    }

    #[test]
    fn instances_do_not_share_counters() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.messages_published.inc();
        a.attempt(false, 500, std::time::Duration::from_millis(3));
        assert_eq!(a.messages_published.get(), 1);
        assert_eq!(b.messages_published.get(), 0);
        assert_eq!(a.deliveries.with_label_values(&["failure", "5xx"]).get(), 1);
        assert_eq!(a.attempt_duration.get_sample_count(), 1);
    }
}
