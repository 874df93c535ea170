//! The overview: delivery rates over time, the queue, what needs attention.

use actix_web::{HttpRequest, web};
use askama::Template;

use super::view::{self, Chart};
use super::{Layout, PageResult, State, render};
use crate::domain::now_ms;
use crate::store::{Counts, QueueSummary};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(overview));
}

/// Queue entries counted at most, so the page stays fast with a deep queue.
const QUEUE_COUNT_LIMIT: usize = 100_000;
/// Dead letters counted at most.
const FAILED_COUNT_LIMIT: usize = 10_000;

pub struct NextRow {
    pub msg_id: String,
    pub ep_id: String,
    pub app_id: String,
    pub due: String,
    pub retry: bool,
}

pub struct EndpointRow {
    pub app_id: String,
    pub ep_id: String,
    pub url: String,
    pub rate: String,
    pub failures: u64,
}

pub struct AlertRow {
    pub app_id: String,
    pub app_name: String,
    pub event_type: String,
    pub quiet_for: String,
    pub usual: String,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    layout: Layout,
    alerts: Vec<AlertRow>,
    per_minute: Chart,
    per_hour: Chart,
    rate_24h: String,
    totals_24h: Counts,
    queue: QueueSummary,
    oldest_wait: String,
    next: Vec<NextRow>,
    failing: Vec<EndpointRow>,
    disabled: Vec<EndpointRow>,
    failed_count: usize,
    failed_capped: bool,
}

async fn overview(state: State, req: HttpRequest) -> PageResult {
    let layout = Layout::new(&req, "overview")?;
    let now = now_ms();
    let minute_now = now / 60_000;
    let store = &state.store;

    let minutes = store.minute_counts(minute_now - 59, minute_now + 1)?;
    let minute_labels: Vec<String> = (0..60)
        .map(|i| {
            format!(
                "{} UTC",
                &view::time((minute_now - 59 + i) * 60_000)[11..16]
            )
        })
        .collect();
    let per_minute = Chart::new(&minutes, &minute_labels, "1 hour ago");

    let hours_minutes = store.minute_counts(minute_now - 24 * 60 + 1, minute_now + 1)?;
    let hours: Vec<Counts> = hours_minutes
        .chunks(60)
        .map(|c| c.iter().fold(Counts::default(), |a, b| a + *b))
        .collect();
    let hour_labels: Vec<String> = (0..24)
        .map(|i| {
            let start = (minute_now - 24 * 60 + 1 + i * 60) * 60_000;
            let end = start + 59 * 60_000;
            format!(
                "{}–{} UTC",
                &view::time(start)[11..16],
                &view::time(end)[11..16]
            )
        })
        .collect();
    let per_hour = Chart::new(&hours, &hour_labels, "24 hours ago");
    let totals_24h = per_hour.total;

    let queue = store.queue_summary(QUEUE_COUNT_LIMIT)?;
    let oldest_wait = match queue.oldest_due_ms {
        Some(due) if due <= now => view::duration(now - due),
        Some(_) => "none due yet".to_owned(),
        None => "–".to_owned(),
    };
    let next = store
        .next_deliveries(10)?
        .into_iter()
        .map(|t| NextRow {
            msg_id: t.msg_id.to_string(),
            ep_id: t.ep_id.to_string(),
            app_id: t.app_id.to_string(),
            due: view::relative(t.due_ms, now),
            retry: t.attempt > 0,
        })
        .collect();

    let hour_now = now / 3_600_000;
    let mut failing = Vec::new();
    let mut disabled = Vec::new();
    for ep in store.all_endpoints()? {
        let c = store.endpoint_counts(&ep.id, hour_now - 23, hour_now + 1)?;
        let row = EndpointRow {
            app_id: ep.app_id.to_string(),
            ep_id: ep.id.to_string(),
            url: ep.url.as_str().to_owned(),
            rate: view::rate(c),
            failures: c.fail,
        };
        if ep.disabled {
            disabled.push(row);
        } else if c.fail > c.success {
            failing.push(row);
        }
    }
    failing.sort_by_key(|e| std::cmp::Reverse(e.failures));

    let failed_count = store.count_failed(FAILED_COUNT_LIMIT);
    let alerts = store
        .silence_alerts()?
        .into_iter()
        .map(|a| {
            let app_name = store
                .find_app(a.app_id.as_str())?
                .map_or_else(|| a.app_id.to_string(), |app| app.name);
            Ok(AlertRow {
                app_id: a.app_id.to_string(),
                app_name,
                event_type: a.event_type,
                quiet_for: view::duration(now - a.last_ms),
                usual: view::duration(a.threshold_ms),
            })
        })
        .collect::<Result<Vec<_>, crate::store::StoreError>>()?;
    render(&OverviewPage {
        layout,
        alerts,
        rate_24h: view::rate(totals_24h),
        totals_24h,
        per_minute,
        per_hour,
        queue,
        oldest_wait,
        next,
        failing,
        disabled,
        failed_count,
        failed_capped: failed_count == FAILED_COUNT_LIMIT,
    })
}
