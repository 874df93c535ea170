//! Messages: search and filter, one message with every attempt, redelivery, and
//! the failed (dead-letter) deliveries.

use std::collections::HashMap;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use serde::Deserialize;

use super::session::check_csrf;
use super::view::{self, Badge};
use super::{DashboardError, Layout, PageResult, State, render, see_other};
use crate::domain::{AppId, EndpointId, MessageId, MessageStatus, now_ms};
use crate::store::{AppRecord, AttemptRecord, DestRecord, MessageRecord, Order, PageReq};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/messages", web::get().to(messages))
        .route("/messages/{msg}", web::get().to(message))
        .route("/messages/{msg}/raw", web::get().to(raw))
        .route("/messages/{msg}/redeliver", web::post().to(redeliver))
        .route("/failed", web::get().to(failed))
        .route("/failed/redeliver", web::post().to(redeliver_failed));
}

const PER_PAGE: usize = 50;
/// Index entries looked at per page when a filter may match rarely.
const SCAN_LIMIT: usize = 20_000;
/// How long a redeliver waits for its attempts before showing the page.
const REDELIVER_WAIT: Duration = Duration::from_secs(5);

/// A message as a row of a list.
pub struct MessageRow {
    pub id: String,
    pub app_id: String,
    pub app_name: String,
    pub event_type: String,
    pub event_id: String,
    pub when: String,
    pub delivered: usize,
    pub failed: usize,
    pub waiting: usize,
    pub badge: Badge,
}

/// Names of apps, looked up once per page.
struct AppNames<'a> {
    state: &'a State,
    names: HashMap<AppId, String>,
}

impl AppNames<'_> {
    fn get(&mut self, id: &AppId) -> Result<String, DashboardError> {
        if let Some(n) = self.names.get(id) {
            return Ok(n.clone());
        }
        let name = self
            .state
            .store
            .find_app(id.as_str())?
            .map_or_else(|| id.to_string(), |a| a.name);
        self.names.insert(id.clone(), name.clone());
        Ok(name)
    }
}

fn row(
    state: &State,
    names: &mut AppNames,
    m: &MessageRecord,
) -> Result<MessageRow, DashboardError> {
    let dests = state.store.dests_of(m, &PageReq::first(1000))?.items;
    let count = |f: fn(MessageStatus) -> bool| dests.iter().filter(|d| f(d.status)).count();
    let delivered = count(|s| s == MessageStatus::Success);
    let failed = count(|s| s == MessageStatus::Fail);
    let waiting = dests.len() - delivered - failed;
    let badge = if dests.is_empty() {
        Badge {
            text: "no endpoints",
            class: "wait",
        }
    } else if failed > 0 {
        Badge::from(MessageStatus::Fail)
    } else if waiting > 0 {
        Badge::from(MessageStatus::Pending)
    } else {
        Badge::from(MessageStatus::Success)
    };
    Ok(MessageRow {
        id: m.id.to_string(),
        app_id: m.app_id.to_string(),
        app_name: names.get(&m.app_id)?,
        event_type: m.event_type.clone(),
        event_id: m.event_id.clone().unwrap_or_default(),
        when: view::time(m.created_ms),
        delivered,
        failed,
        waiting,
        badge,
    })
}

#[derive(Deserialize, Default)]
pub struct Filters {
    #[serde(default)]
    pub app: String,
    #[serde(default)]
    pub event_type: String,
    #[serde(default)]
    pub endpoint: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
    #[serde(default)]
    pub q: String,
    #[serde(default)]
    pub cursor: String,
}

impl Filters {
    fn status(&self) -> Option<MessageStatus> {
        match self.status.as_str() {
            "delivered" => Some(MessageStatus::Success),
            "pending" => Some(MessageStatus::Pending),
            "retrying" => Some(MessageStatus::Sending),
            "failed" => Some(MessageStatus::Fail),
            _ => None,
        }
    }

    /// The query string of these filters with another cursor.
    fn with_cursor(&self, cursor: &str) -> String {
        serde_urlencoded::to_string([
            ("app", self.app.as_str()),
            ("event_type", self.event_type.as_str()),
            ("endpoint", self.endpoint.as_str()),
            ("status", self.status.as_str()),
            ("from", self.from.as_str()),
            ("to", self.to.as_str()),
            ("cursor", cursor),
        ])
        .unwrap_or_default()
    }
}

pub struct AppOption {
    pub id: String,
    pub name: String,
}

#[derive(Template)]
#[template(path = "messages.html")]
struct MessagesPage {
    layout: Layout,
    f: Filters,
    apps: Vec<AppOption>,
    rows: Vec<MessageRow>,
    next: Option<String>,
    problem: Option<String>,
    searched: bool,
}

fn time_filter(s: &str, what: &str) -> Result<Option<i64>, String> {
    if s.trim().is_empty() {
        return Ok(None);
    }
    let s = s.trim();
    crate::domain::parse_time(s)
        .or_else(|| crate::domain::parse_time(&format!("{s}:00")))
        .map(Some)
        .ok_or_else(|| format!("“{s}” is not a date and time ({what})"))
}

async fn messages(state: State, req: HttpRequest, f: web::Query<Filters>) -> PageResult {
    let layout = Layout::new(&req, "messages")?;
    let f = f.into_inner();
    let apps = state
        .store
        .list_apps(&PageReq::first(1000))?
        .items
        .into_iter()
        .map(|a| AppOption {
            id: a.id.to_string(),
            name: a.name,
        })
        .collect();
    let mut names = AppNames {
        state: &state,
        names: HashMap::new(),
    };
    let mut page = MessagesPage {
        layout,
        apps,
        rows: Vec::new(),
        next: None,
        problem: None,
        searched: false,
        f,
    };
    let f = &page.f;

    // A search by message ID or eventId answers directly from the indexes.
    let q = f.q.trim();
    if !q.is_empty() {
        page.searched = true;
        let mut found = Vec::new();
        if let Some(id) = MessageId::parse(q) {
            found.extend(state.store.find_message_any(&id)?);
        } else {
            for app in state
                .store
                .list_apps(&PageReq::first(usize::MAX - 1))?
                .items
            {
                found.extend(
                    state
                        .store
                        .find_message(&app.id, q)?
                        .filter(|m| m.event_id.as_deref() == Some(q)),
                );
            }
        }
        for m in &found {
            page.rows.push(row(&state, &mut names, m)?);
        }
        return render(&page);
    }

    let (from, to) = match (time_filter(&f.from, "from"), time_filter(&f.to, "to")) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            page.problem = Some(e);
            return render(&page);
        }
    };
    let status = f.status();
    let req_page = PageReq {
        cursor: (!f.cursor.is_empty()).then(|| f.cursor.clone()),
        order: Order::Descending,
        limit: PER_PAGE,
        min_id: from.map(|t| MessageId::lower_bound(t).to_string()),
        max_id: to.map(|t| MessageId::lower_bound(t + 1).to_string()),
        scan_limit: Some(SCAN_LIMIT),
    };
    let event_type = f.event_type.trim().to_owned();
    let type_ok = |m: &MessageRecord| event_type.is_empty() || m.event_type == event_type;
    let app = if f.app.is_empty() {
        None
    } else {
        Some(
            state
                .store
                .find_app(&f.app)?
                .ok_or(DashboardError::NotFound("There is no such application."))?,
        )
    };

    let (msgs, done, resume): (Vec<MessageRecord>, bool, Option<String>) =
        if !f.endpoint.trim().is_empty() {
            // Through the endpoint's message index, with its status there.
            let ep = EndpointId::parse(f.endpoint.trim())
                .ok_or(DashboardError::NotFound("There is no such endpoint."))?;
            let mut msgs = Vec::new();
            let p = state.store.endpoint_messages(&ep, &req_page, |d| {
                if status.is_some_and(|s| d.status != s)
                    || app.as_ref().is_some_and(|a| a.id != d.app_id)
                {
                    return false;
                }
                match state.store.get_message(&d.app_id, &d.msg_id) {
                    Ok(Some(m)) if type_ok(&m) => {
                        msgs.push(m);
                        true
                    }
                    _ => false,
                }
            })?;
            msgs.truncate(p.items.len());
            let resume = p
                .resume
                .or_else(|| p.items.last().map(|d| d.msg_id.to_string()));
            (msgs, p.done, resume)
        } else if status == Some(MessageStatus::Fail) {
            // Through the dead-letter index.
            let p = state.store.failed_deliveries(&req_page)?;
            let mut msgs: Vec<MessageRecord> = Vec::new();
            for d in &p.items {
                if app.as_ref().is_some_and(|a| a.id != d.app_id)
                    || msgs.last().is_some_and(|m| m.id == d.msg_id)
                {
                    continue;
                }
                if let Some(m) = state
                    .store
                    .get_message(&d.app_id, &d.msg_id)?
                    .filter(|m| type_ok(m))
                {
                    msgs.push(m);
                }
            }
            let resume = p
                .resume
                .or_else(|| p.items.last().map(|d| format!("{}{}", d.msg_id, d.ep_id)));
            (msgs, p.done, resume)
        } else {
            let status_ok = |m: &MessageRecord| match status {
                None => true,
                Some(s) => state
                    .store
                    .dests_of(m, &PageReq::first(1000))
                    .map(|d| d.items.iter().any(|d| d.status == s))
                    .unwrap_or(false),
            };
            let p = match &app {
                Some(a) => state
                    .store
                    .list_messages(&a.id, &req_page, |m| type_ok(m) && status_ok(m))?,
                None => state
                    .store
                    .list_all_messages(&req_page, |m| type_ok(m) && status_ok(m))?,
            };
            let resume = p
                .resume
                .clone()
                .or_else(|| p.items.last().map(|m| m.id.to_string()));
            (p.items, p.done, resume)
        };
    for m in &msgs {
        page.rows.push(row(&state, &mut names, m)?);
    }
    if !done {
        page.next = resume.map(|c| page.f.with_cursor(&c));
    }
    render(&page)
}

fn find(state: &State, id: &str) -> Result<MessageRecord, DashboardError> {
    MessageId::parse(id)
        .map(|id| state.store.find_message_any(&id))
        .transpose()?
        .flatten()
        .ok_or(DashboardError::NotFound("There is no such message."))
}

pub struct AttemptView {
    pub id: String,
    pub when: String,
    pub manual: bool,
    pub code: u16,
    pub badge: Badge,
    pub duration_ms: u64,
    pub url: String,
    pub request_headers: Vec<(String, String)>,
    pub response_headers: Vec<(String, String)>,
    pub response_body: String,
    pub error: String,
}

impl From<&AttemptRecord> for AttemptView {
    fn from(a: &AttemptRecord) -> Self {
        Self {
            id: a.id.to_string(),
            when: view::time(a.timestamp_ms),
            manual: a.trigger == crate::domain::AttemptTrigger::Manual,
            code: a.response_status_code,
            badge: view::code_badge(a.response_status_code),
            duration_ms: a.duration_ms,
            url: a.url.clone(),
            request_headers: a.request_headers.clone(),
            response_headers: a.response_headers.clone(),
            response_body: String::from_utf8_lossy(&a.response_body).into_owned(),
            error: a.error.clone().unwrap_or_default(),
        }
    }
}

pub struct DestView {
    pub ep_id: String,
    pub url: String,
    pub exists: bool,
    pub disabled: bool,
    pub badge: Badge,
    pub failed: bool,
    pub next_attempt: String,
    pub attempts: Vec<AttemptView>,
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    layout: Layout,
    msg: MessageRecord,
    app: Option<AppRecord>,
    when: String,
    payload: Option<String>,
    payload_cut: bool,
    payload_bytes: usize,
    dests: Vec<DestView>,
    any_failed: bool,
}

async fn message(state: State, req: HttpRequest, path: web::Path<String>) -> PageResult {
    let layout = Layout::new(&req, "messages")?;
    let msg = find(&state, &path)?;
    let app = state.store.find_app(msg.app_id.as_str())?;
    let raw = state.store.payload(&msg.id)?;
    let (payload, payload_cut) = match &raw {
        Some(bytes) => {
            let (t, cut) = view::pretty_json(bytes, view::PAYLOAD_PREVIEW_BYTES);
            (Some(t), cut)
        }
        None => (None, false),
    };
    let all = PageReq {
        order: Order::Ascending,
        ..PageReq::first(10_000)
    };
    let attempts = state.store.attempts_of_msg(&msg.id, &all, |_| true)?.items;
    let now = now_ms();
    let dests: Vec<DestView> = state
        .store
        .dests_of(&msg, &all)?
        .items
        .iter()
        .map(|d: &DestRecord| {
            let ep = state.store.get_endpoint(&msg.app_id, &d.ep_id)?;
            Ok(DestView {
                ep_id: d.ep_id.to_string(),
                url: ep.as_ref().map_or_else(
                    || "(deleted endpoint)".to_owned(),
                    |e| e.url.as_str().to_owned(),
                ),
                exists: ep.is_some(),
                disabled: ep.as_ref().is_some_and(|e| e.disabled),
                badge: Badge::from(d.status),
                failed: d.status == MessageStatus::Fail,
                next_attempt: d
                    .next_attempt_ms
                    .map(|t| view::relative(t, now))
                    .unwrap_or_default(),
                attempts: attempts
                    .iter()
                    .filter(|a| a.ep_id == d.ep_id)
                    .map(AttemptView::from)
                    .collect(),
            })
        })
        .collect::<Result<_, DashboardError>>()?;
    render(&MessagePage {
        layout,
        when: view::time(msg.created_ms),
        payload_bytes: raw.as_ref().map_or(0, Vec::len),
        payload,
        payload_cut,
        any_failed: dests.iter().any(|d| d.failed && d.exists && !d.disabled),
        dests,
        app,
        msg,
    })
}

/// The payload exactly as published, as a download.
async fn raw(state: State, path: web::Path<String>) -> PageResult {
    let msg = find(&state, &path)?;
    let body = state
        .store
        .payload(&msg.id)?
        .ok_or(DashboardError::NotFound(
            "This message's content was expunged.",
        ))?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{}.json\"", msg.id),
        ))
        .body(body))
}

#[derive(Deserialize)]
struct RedeliverForm {
    #[serde(default)]
    csrf: String,
    /// An endpoint ID, or `failed` for every failed one.
    endpoint: String,
}

async fn redeliver(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
    form: web::Form<RedeliverForm>,
) -> PageResult {
    check_csrf(&req, &form.csrf)?;
    let msg = find(&state, &path)?;
    if msg.expunged || state.store.payload(&msg.id)?.is_none() {
        return Err(DashboardError::BadRequest(
            "This message's content was expunged; it cannot be sent again.".into(),
        ));
    }
    let mut targets = Vec::new();
    if form.endpoint == "failed" {
        for d in state.store.dests_of(&msg, &PageReq::first(1000))?.items {
            let usable = state
                .store
                .get_endpoint(&msg.app_id, &d.ep_id)?
                .is_some_and(|e| !e.disabled);
            if d.status == MessageStatus::Fail && usable {
                targets.push((msg.clone(), d.ep_id));
            }
        }
    } else {
        let ep = EndpointId::parse(&form.endpoint)
            .map(|id| state.store.get_endpoint(&msg.app_id, &id))
            .transpose()?
            .flatten()
            .ok_or(DashboardError::NotFound("There is no such endpoint."))?;
        if ep.disabled {
            return Err(DashboardError::BadRequest(
                "That endpoint is disabled; enable it before redelivering.".into(),
            ));
        }
        targets.push((msg.clone(), ep.id));
    }
    let n = state.redeliver(&targets, REDELIVER_WAIT).await?;
    Ok(see_other(
        &format!("/messages/{}", msg.id),
        Some(&format!("Redelivered to {n} endpoint(s).")),
    ))
}

pub struct FailedRow {
    pub key: String,
    pub msg_id: String,
    pub ep_id: String,
    pub app_id: String,
    pub app_name: String,
    pub event_type: String,
    pub url: String,
    /// Its endpoint is disabled: redelivering waits until it is enabled.
    pub disabled: bool,
    pub when: String,
    pub attempts: u32,
    pub last_code: String,
}

#[derive(Template)]
#[template(path = "failed.html")]
struct FailedPage {
    layout: Layout,
    rows: Vec<FailedRow>,
    next: Option<String>,
}

#[derive(Deserialize)]
struct FailedQuery {
    #[serde(default)]
    cursor: String,
}

async fn failed(state: State, req: HttpRequest, q: web::Query<FailedQuery>) -> PageResult {
    let layout = Layout::new(&req, "failed")?;
    let page = state.store.failed_deliveries(&PageReq {
        cursor: (!q.cursor.is_empty()).then(|| q.cursor.clone()),
        ..PageReq::first(PER_PAGE)
    })?;
    let mut names = AppNames {
        state: &state,
        names: HashMap::new(),
    };
    let mut rows = Vec::with_capacity(page.items.len());
    for d in &page.items {
        let Some(m) = state.store.get_message(&d.app_id, &d.msg_id)? else {
            continue;
        };
        let ep = state.store.get_endpoint(&d.app_id, &d.ep_id)?;
        let url = ep.as_ref().map_or_else(
            || "(deleted endpoint)".to_owned(),
            |e| e.url.as_str().to_owned(),
        );
        rows.push(FailedRow {
            key: format!("{}:{}", d.msg_id, d.ep_id),
            msg_id: d.msg_id.to_string(),
            ep_id: d.ep_id.to_string(),
            app_id: d.app_id.to_string(),
            app_name: names.get(&d.app_id)?,
            event_type: m.event_type,
            url,
            disabled: ep.is_some_and(|e| e.disabled),
            when: d.last_attempt_ms.map(view::time).unwrap_or_default(),
            attempts: d.attempts,
            last_code: match d.last_status_code {
                Some(0) | None => "no response".into(),
                Some(c) => c.to_string(),
            },
        });
    }
    let next = (!page.done)
        .then(|| {
            page.items
                .last()
                .map(|d| format!("{}{}", d.msg_id, d.ep_id))
        })
        .flatten();
    render(&FailedPage { layout, rows, next })
}

/// Redelivers the checked failed deliveries (`pick` = `msg_id:ep_id`), or every
/// one shown on the page (`shown`) when `all` is set.
async fn redeliver_failed(
    state: State,
    req: HttpRequest,
    form: web::Form<Vec<(String, String)>>,
) -> PageResult {
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    check_csrf(&req, get("csrf").unwrap_or_default())?;
    let field = if get("all").is_some() {
        "shown"
    } else {
        "pick"
    };
    let mut targets = Vec::new();
    // Why some were not redelivered: (disabled, deleted, payload removed).
    let mut left = (0, 0, 0);
    for (_, v) in form.iter().filter(|(n, _)| n == field) {
        let Some((m, e)) = v.split_once(':') else {
            continue;
        };
        let (Some(msg_id), Some(ep_id)) = (MessageId::parse(m), EndpointId::parse(e)) else {
            continue;
        };
        let Some(msg) = state.store.find_message_any(&msg_id)? else {
            left.1 += 1;
            continue;
        };
        match state.store.get_endpoint(&msg.app_id, &ep_id)? {
            None => left.1 += 1,
            Some(ep) if ep.disabled => left.0 += 1,
            Some(_) if msg.expunged => left.2 += 1,
            Some(_) => targets.push((msg, ep_id)),
        }
    }
    let n = if targets.is_empty() {
        0
    } else {
        state.redeliver(&targets, REDELIVER_WAIT).await?
    };
    let mut notice = match n {
        0 if left == (0, 0, 0) => "Nothing selected to redeliver.".to_owned(),
        0 => "Nothing redelivered.".to_owned(),
        n => format!("Redelivered {n} deliveries."),
    };
    for (count, why) in [
        (left.0, "to a disabled endpoint (enable it first)"),
        (left.1, "whose message or endpoint was deleted"),
        (left.2, "whose payload was removed"),
    ] {
        if count > 0 {
            notice.push_str(&format!(" Left {count} {why}."));
        }
    }
    Ok(see_other("/failed", Some(&notice)))
}
