//! Health: `GET/HEAD /api/v1/health` (Svix's: `204` when healthy) and
//! `GET /api/v1/webhookd/health` (a JSON report), both without a token.
//!
//! Healthy means: the store answers, the data dir takes a new file, and its file
//! system has at least `health.min_free_disk_percent` free. Without the
//! monitoring token the report says that much and no more; with it (see
//! `ApiState::shows_details`) it also shows the data dir, the errors as
//! they came, the queue and the scheduler's jobs, which inform but never
//! degrade.

use std::path::{Path, PathBuf};

use actix_web::{HttpRequest, HttpResponse, http::Method, web};
use serde_json::{Value, json};

use super::{ApiError, State};
use crate::domain::{format_time, now_ms};
use crate::scheduler::SchedulerHandle;
use crate::store::JobOutcome;

/// The queue is counted up to this many deliveries: a health check is polled
/// often and must stay cheap however far behind the queue is.
const QUEUE_COUNT_LIMIT: usize = 100_000;

/// What the health check looks at beside the store.
#[derive(Clone)]
pub struct HealthCheck {
    pub data_dir: PathBuf,
    pub min_free_disk_percent: u8,
    pub scheduler: SchedulerHandle,
}

pub fn routes(cfg: &mut web::ServiceConfig, state: State) {
    cfg.service(
        web::resource(["/api/v1/health", "/api/v1/health/ping"])
            .app_data(state.clone())
            .route(web::get().to(svix_health))
            .route(web::head().to(svix_health))
            // Outside the authenticated scope, so it answers other methods
            // itself, with the same JSON 405 as the rest of the API.
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/v1/webhookd/health")
            .app_data(state)
            .route(web::get().to(report_health))
            .route(web::head().to(report_health))
            .default_service(web::to(method_not_allowed)),
    );
}

/// `204` and no body when healthy (what Svix clients expect); `503` with the
/// report, as `{"code": "degraded", "detail": …, …}`, when not.
async fn svix_health(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let (healthy, report) = check(state, &req).await?;
    if healthy {
        return Ok(HttpResponse::NoContent().finish());
    }
    Ok(respond(&req, HttpResponse::ServiceUnavailable(), report))
}

/// `200` or `503`, with the report either way.
async fn report_health(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let (healthy, report) = check(state, &req).await?;
    let builder = if healthy {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    Ok(respond(&req, builder, report))
}

fn respond(
    req: &HttpRequest,
    mut builder: actix_web::HttpResponseBuilder,
    report: Value,
) -> HttpResponse {
    builder.insert_header(("cache-control", "no-store"));
    if req.method() == Method::HEAD {
        return builder.finish();
    }
    builder.json(report)
}

/// One reason for being degraded: `said` to anyone, `with_cause` (which
/// may name the data directory or quote an error) to the monitoring token.
struct Problem {
    said: String,
    with_cause: String,
}

impl Problem {
    fn plain(said: String) -> Self {
        Self {
            with_cause: said.clone(),
            said,
        }
    }
}

/// Runs every check (file IO and store scans: off the async threads). The
/// report in full for the monitoring token, the overall state without it.
async fn check(state: State, req: &HttpRequest) -> Result<(bool, Value), ApiError> {
    let full = state.shows_details(req);
    let report = web::block(move || {
        let now = now_ms();
        let mut problems: Vec<Problem> = Vec::new();

        let store = match state.store.ping() {
            Ok(()) => json!({"status": "ok", "sizeBytes": state.store.size_on_disk().ok()}),
            Err(e) => {
                problems.push(Problem {
                    said: "the database does not answer".into(),
                    with_cause: format!("the database does not answer: {e}"),
                });
                json!({"status": "error", "error": e.to_string()})
            }
        };

        let data_dir = &state.health.data_dir;
        let writable = probe_writable(data_dir);
        if let Err(e) = &writable {
            problems.push(Problem {
                said: "the data directory is not writable".into(),
                with_cause: format!(
                    "the data directory {} is not writable: {e}",
                    data_dir.display()
                ),
            });
        }
        let min = state.health.min_free_disk_percent;
        let disk = match disk_space(data_dir) {
            Ok(d) => {
                if let Some(pct) = d.free_percent()
                    && pct < f64::from(min)
                {
                    problems.push(Problem::plain(format!(
                        "the disk of the data directory is nearly full: {pct:.1}% free, \
                             below health.min_free_disk_percent ({min}%)"
                    )));
                }
                json!({
                    "freeBytes": d.free_bytes,
                    "totalBytes": d.total_bytes,
                    "freePercent": d.free_percent(),
                    "minFreePercent": min,
                })
            }
            Err(e) => json!({"error": e.to_string(), "minFreePercent": min}),
        };

        // Only the monitoring token is shown these.
        let details = move || {
            let queue = match state.store.queue_summary(QUEUE_COUNT_LIMIT) {
                Ok(q) => json!({
                    "depth": q.queued,
                    "depthCapped": q.queued_capped,
                    "inFlight": q.in_flight,
                    "oldestPendingAgeSeconds": q
                        .oldest_due_ms
                        .map_or(0.0, |due| (now - due).max(0) as f64 / 1000.0),
                }),
                Err(e) => json!({"error": e.to_string()}),
            };

            let scheduler = match state.health.scheduler.status() {
                Ok(jobs) => Value::Array(
                    jobs.into_iter()
                        .map(|j| {
                            json!({
                                "job": j.job.name(),
                                "schedule": j.schedule,
                                "running": j.running,
                                "lastRun": j.record.last_started_ms.map(format_time),
                                "lastError": match &j.record.last_outcome {
                                    Some(JobOutcome::Failed(e)) => Some(e.as_str()),
                                    _ => None,
                                },
                                "nextRun": j.next_run_ms.map(format_time),
                            })
                        })
                        .collect(),
                ),
                Err(e) => json!({"error": e.to_string()}),
            };
            (queue, scheduler)
        };

        let healthy = problems.is_empty();
        let status = if healthy { "ok" } else { "degraded" };
        let mut report = if full {
            let (queue, scheduler) = details();
            json!({
                "status": status,
                "store": store,
                "dataDir": {
                    "writable": writable.is_ok(),
                    "error": writable.err().map(|e| e.to_string()),
                    "disk": disk,
                },
                "queue": queue,
                "scheduler": {"jobs": scheduler},
            })
        } else {
            json!({
                "status": status,
                "store": {"status": store["status"]},
                "dataDir": {
                    "writable": writable.is_ok(),
                    "disk": {
                        "freePercent": disk["freePercent"],
                        "minFreePercent": min,
                    },
                },
            })
        };
        if !healthy {
            let detail: Vec<&str> = problems
                .iter()
                .map(|p| if full { &p.with_cause } else { &p.said }.as_str())
                .collect();
            report["code"] = "degraded".into();
            report["detail"] = detail.join("; ").into();
        }
        (healthy, report)
    })
    .await?;
    Ok(report)
}

/// Creates and removes a small file in `dir`: the one proof that writes work
/// (permissions, a read-only mount, a full disk, a vanished directory).
fn probe_writable(dir: &Path) -> std::io::Result<()> {
    use std::io::Write as _;
    // A name of its own, so that concurrent checks do not remove each other's file.
    let path = dir.join(format!(".health-probe-{:016x}", rand::random::<u64>()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut f| f.write_all(b"ok\n"));
    let removed = std::fs::remove_file(&path);
    written?;
    removed
}

struct DiskSpace {
    /// Available to unprivileged users (what the database can count on).
    free_bytes: u64,
    total_bytes: u64,
    /// In use (total less every free block, reserved ones included).
    used_bytes: u64,
}

impl DiskSpace {
    /// Free space as `df` reckons it: available / (used + available), so that
    /// blocks reserved for root count neither as free nor as usable.
    fn free_percent(&self) -> Option<f64> {
        let usable = self.used_bytes.saturating_add(self.free_bytes);
        (usable > 0).then(|| self.free_bytes as f64 * 100.0 / usable as f64)
    }
}

#[cfg(unix)]
fn disk_space(dir: &Path) -> std::io::Result<DiskSpace> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(DiskSpace {
        free_bytes: s.f_bavail.saturating_mul(s.f_frsize),
        total_bytes: s.f_blocks.saturating_mul(s.f_frsize),
        used_bytes: s
            .f_blocks
            .saturating_sub(s.f_bfree)
            .saturating_mul(s.f_frsize),
    })
}

#[cfg(not(unix))]
fn disk_space(_dir: &Path) -> std::io::Result<DiskSpace> {
    Err(std::io::Error::other("not measured on this platform"))
}

async fn method_not_allowed(req: actix_web::HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed(format!(
        "{} is not allowed on {}",
        req.method(),
        req.path()
    )))
}
