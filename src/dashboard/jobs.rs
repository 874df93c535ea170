//! The scheduler's jobs: schedule, last run, result, next run, and "Run now".

use actix_web::{HttpRequest, web};
use askama::Template;

use super::session::check_csrf;
use super::view;
use super::{DashboardError, Layout, PageResult, State, render, see_other};
use crate::domain::now_ms;
use crate::scheduler::Job;
use crate::store::JobOutcome;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/jobs", web::get().to(jobs))
        .route("/jobs/{name}/run", web::post().to(run_now));
}

pub struct JobRow {
    pub name: &'static str,
    pub description: &'static str,
    pub schedule: String,
    pub last_run: String,
    pub duration_ms: u64,
    pub ok: Option<bool>,
    pub result: String,
    pub next_run: String,
    pub runs: u64,
    pub failures: u64,
    pub running: bool,
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    layout: Layout,
    jobs: Vec<JobRow>,
}

async fn jobs(state: State, req: HttpRequest) -> PageResult {
    let layout = Layout::new(&req, "jobs")?;
    let now = now_ms();
    let jobs = state
        .scheduler
        .status()?
        .into_iter()
        .map(|s| {
            let (ok, result) = match &s.record.last_outcome {
                None => (None, "never ran".to_owned()),
                Some(JobOutcome::Failed(e)) => (Some(false), e.clone()),
                Some(JobOutcome::Done(counts)) => (
                    Some(true),
                    counts
                        .iter()
                        .map(|(k, v)| format!("{} {v}", k.replace('_', " ")))
                        .collect::<Vec<_>>()
                        .join(" · "),
                ),
            };
            JobRow {
                name: s.job.name(),
                description: s.job.describe(),
                schedule: s.schedule.unwrap_or_else(|| "off".to_owned()),
                last_run: s
                    .record
                    .last_started_ms
                    .map_or("never".to_owned(), |t| view::relative(t, now)),
                duration_ms: s.record.last_duration_ms,
                ok,
                result,
                next_run: s
                    .next_run_ms
                    .map_or("–".to_owned(), |t| view::relative(t, now)),
                runs: s.record.runs,
                failures: s.record.failures,
                running: s.running,
            }
        })
        .collect();
    render(&JobsPage { layout, jobs })
}

async fn run_now(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
    form: web::Form<super::CsrfForm>,
) -> PageResult {
    check_csrf(&req, &form.csrf)?;
    let job = Job::from_name(&path).ok_or(DashboardError::NotFound("There is no such job."))?;
    let notice = match state.scheduler.run_now(job).await {
        Ok(rec) => match rec.last_outcome {
            Some(JobOutcome::Failed(e)) => format!("{} failed: {e}", job.name()),
            _ => format!("{} ran in {} ms.", job.name(), rec.last_duration_ms),
        },
        Err(e) => format!("{} did not run: {e}", job.name()),
    };
    Ok(see_other("/jobs", Some(&notice)))
}
