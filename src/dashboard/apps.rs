//! Applications and their endpoints: health, settings, secret, recover, test events.

use std::collections::BTreeMap;

use actix_web::{HttpRequest, web};
use askama::Template;
use serde::Deserialize;

use super::session::check_csrf;
use super::view::{self, Badge};
use super::{DashboardError, Layout, PageResult, State, render, see_other};
use crate::config::Limits;
use crate::domain::{
    EndpointId, EndpointUrl, MessageId, Secret, check_custom_header, now_ms, valid_channel,
    valid_uid,
};
use crate::store::{AppRecord, EndpointRecord, MessageRecord, PageReq, Published, RetiredSecret};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/apps", web::get().to(apps))
        .route("/apps/{app}", web::get().to(app))
        .route("/apps/{app}/endpoints/{ep}", web::get().to(endpoint))
        .route("/apps/{app}/endpoints/{ep}", web::post().to(save_endpoint))
        .route("/apps/{app}/endpoints/{ep}/toggle", web::post().to(toggle))
        .route("/apps/{app}/endpoints/{ep}/rotate", web::post().to(rotate))
        .route(
            "/apps/{app}/endpoints/{ep}/recover",
            web::post().to(recover),
        )
        .route("/apps/{app}/endpoints/{ep}/test", web::post().to(send_test));
}

/// Apps listed per page.
const APPS_PER_PAGE: usize = 100;
/// Retired secrets keep signing this long after a rotation from the dashboard.
const ROTATION_GRACE_MS: i64 = 24 * 3600 * 1000;

pub struct AppRow {
    pub id: String,
    pub name: String,
    pub uid: String,
    pub endpoints: usize,
    pub messages: u64,
    pub created: String,
}

#[derive(Template)]
#[template(path = "apps.html")]
struct AppsPage {
    layout: Layout,
    apps: Vec<AppRow>,
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct Cursor {
    cursor: Option<String>,
}

async fn apps(state: State, req: HttpRequest, q: web::Query<Cursor>) -> PageResult {
    let layout = Layout::new(&req, "apps")?;
    let page = state.store.list_apps(&PageReq {
        cursor: q.cursor.clone().filter(|c| !c.is_empty()),
        ..PageReq::first(APPS_PER_PAGE)
    })?;
    let mut rows = Vec::with_capacity(page.items.len());
    for a in &page.items {
        rows.push(AppRow {
            id: a.id.to_string(),
            name: a.name.clone(),
            uid: a.uid.clone().unwrap_or_default(),
            endpoints: state.store.endpoints_of(&a.id)?.len(),
            messages: state.store.app_message_count(&a.id)?,
            created: view::time(a.created_ms),
        });
    }
    let next_cursor = if page.done {
        None
    } else {
        rows.last().map(|r| r.id.clone())
    };
    render(&AppsPage {
        layout,
        apps: rows,
        next_cursor,
    })
}

/// An endpoint with how it has been doing.
pub struct EndpointHealth {
    pub id: String,
    pub url: String,
    pub description: String,
    pub disabled: bool,
    pub rate_24h: String,
    pub attempts_24h: u64,
    pub last_attempt: String,
    /// The last response: a status code, `no response`, or empty before any attempt.
    pub last_label: String,
    pub last_badge: Badge,
}

fn health(state: &State, ep: &EndpointRecord, now: i64) -> Result<EndpointHealth, DashboardError> {
    let hour = now / 3_600_000;
    let counts = state.store.endpoint_counts(&ep.id, hour - 23, hour + 1)?;
    let last = state
        .store
        .attempts_of_ep(&ep.id, &PageReq::first(1), |_| true)?
        .items
        .pop();
    Ok(EndpointHealth {
        id: ep.id.to_string(),
        url: ep.url.as_str().to_owned(),
        description: ep.description.clone(),
        disabled: ep.disabled,
        rate_24h: view::rate(counts),
        attempts_24h: counts.total(),
        last_attempt: last
            .as_ref()
            .map_or("never".into(), |a| view::relative(a.timestamp_ms, now)),
        last_label: last
            .as_ref()
            .map_or(String::new(), |a| view::code_label(a.response_status_code)),
        last_badge: last.as_ref().map_or(
            Badge {
                text: "",
                class: "wait",
            },
            |a| view::code_badge(a.response_status_code),
        ),
    })
}

#[derive(Template)]
#[template(path = "app.html")]
struct AppPage {
    layout: Layout,
    app: AppRecord,
    created: String,
    messages: u64,
    endpoints: Vec<EndpointHealth>,
}

fn find_app(state: &State, id: &str) -> Result<AppRecord, DashboardError> {
    state
        .store
        .find_app(id)?
        .ok_or(DashboardError::NotFound("There is no such application."))
}

fn find_endpoint(
    state: &State,
    app: &AppRecord,
    id: &str,
) -> Result<EndpointRecord, DashboardError> {
    EndpointId::parse(id)
        .map(|id| state.store.get_endpoint(&app.id, &id))
        .transpose()?
        .flatten()
        .ok_or(DashboardError::NotFound("There is no such endpoint."))
}

async fn app(state: State, req: HttpRequest, path: web::Path<String>) -> PageResult {
    let layout = Layout::new(&req, "apps")?;
    let app = find_app(&state, &path)?;
    let now = now_ms();
    let endpoints = state
        .store
        .endpoints_of(&app.id)?
        .iter()
        .map(|ep| health(&state, ep, now))
        .collect::<Result<Vec<_>, _>>()?;
    render(&AppPage {
        layout,
        created: view::time(app.created_ms),
        messages: state.store.app_message_count(&app.id)?,
        app,
        endpoints,
    })
}

pub struct AttemptRow {
    pub msg_id: String,
    pub when: String,
    pub code: u16,
    pub badge: Badge,
    pub duration_ms: u64,
    pub manual: bool,
    pub error: String,
}

#[derive(Template)]
#[template(path = "endpoint.html")]
struct EndpointPage {
    layout: Layout,
    app: AppRecord,
    ep: EndpointRecord,
    health: EndpointHealth,
    /// What the settings form shows: the endpoint's, or what was typed
    /// into a form that was refused.
    form: EndpointForm,
    secret: Option<String>,
    rotating: usize,
    attempts: Vec<AttemptRow>,
    recover_since: String,
    error: Option<String>,
}

#[derive(Deserialize)]
struct EndpointQuery {
    reveal: Option<String>,
}

/// Recent attempts shown on the endpoint page.
const RECENT_ATTEMPTS: usize = 25;

fn endpoint_page(
    state: &State,
    req: &HttpRequest,
    app: AppRecord,
    ep: EndpointRecord,
    reveal: bool,
    error: Option<String>,
    typed: Option<EndpointForm>,
) -> PageResult {
    let layout = Layout::new(req, "apps")?;
    let now = now_ms();
    let attempts = state
        .store
        .attempts_of_ep(&ep.id, &PageReq::first(RECENT_ATTEMPTS), |_| true)?
        .items
        .into_iter()
        .map(|a| AttemptRow {
            msg_id: a.msg_id.to_string(),
            when: view::relative(a.timestamp_ms, now),
            code: a.response_status_code,
            badge: view::code_badge(a.response_status_code),
            duration_ms: a.duration_ms,
            manual: a.trigger == crate::domain::AttemptTrigger::Manual,
            error: a.error.unwrap_or_default(),
        })
        .collect();
    let mut page = EndpointPage {
        layout,
        health: health(state, &ep, now)?,
        form: typed.unwrap_or_else(|| EndpointForm::of(&ep)),
        secret: reveal.then(|| ep.secret.expose()),
        rotating: ep
            .retired_secrets
            .iter()
            .filter(|r| r.expires_ms > now)
            .count(),
        attempts,
        recover_since: view::time(now - 24 * 3_600_000)[..16].replace(' ', "T"),
        error,
        app,
        ep,
    };
    if page.error.is_some() {
        page.layout.notice = None;
    }
    let mut res = render(&page)?;
    if page.error.is_some() {
        *res.status_mut() = actix_web::http::StatusCode::UNPROCESSABLE_ENTITY;
    }
    Ok(res)
}

async fn endpoint(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    q: web::Query<EndpointQuery>,
) -> PageResult {
    let (app_id, ep_id) = path.into_inner();
    let app = find_app(&state, &app_id)?;
    let ep = find_endpoint(&state, &app, &ep_id)?;
    endpoint_page(&state, &req, app, ep, q.reveal.is_some(), None, None)
}

#[derive(Deserialize)]
struct EndpointForm {
    #[serde(default)]
    csrf: String,
    url: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    event_types: String,
    #[serde(default)]
    channels: String,
    #[serde(default)]
    headers: String,
    #[serde(default)]
    throttle_rate: String,
}

impl EndpointForm {
    /// The form filled in with `ep`'s settings.
    fn of(ep: &EndpointRecord) -> Self {
        Self {
            csrf: String::new(),
            url: ep.url.as_str().to_owned(),
            description: ep.description.clone(),
            event_types: ep.event_types.join(", "),
            channels: ep.channels.join(", "),
            headers: ep
                .headers
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join("\n"),
            throttle_rate: ep.rate_limit.map(|r| r.to_string()).unwrap_or_default(),
        }
    }
}

fn split_list(s: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in s
        .split([',', '\n', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        if !out.iter().any(|o| o == item) {
            out.push(item.to_owned());
        }
    }
    out
}

/// Applies the edit form to `ep`, or says what is wrong with it.
fn apply_form(form: &EndpointForm, limits: &Limits, ep: &mut EndpointRecord) -> Result<(), String> {
    ep.url = EndpointUrl::parse(form.url.trim()).map_err(|e| format!("URL: {e}"))?;
    ep.description = form.description.trim().to_owned();
    let types = split_list(&form.event_types);
    if let Some(bad) = types.iter().find(|t| !valid_uid(t)) {
        return Err(format!(
            "Event types: “{bad}” is not a valid event type name"
        ));
    }
    if types.len() > limits.max_endpoint_event_types {
        return Err(format!(
            "Event types: at most {}",
            limits.max_endpoint_event_types
        ));
    }
    let channels = split_list(&form.channels);
    if let Some(bad) = channels.iter().find(|c| !valid_channel(c)) {
        return Err(format!("Channels: “{bad}” is not a valid channel name"));
    }
    if channels.len() > 10 {
        return Err("Channels: at most 10".into());
    }
    let mut headers = BTreeMap::new();
    for line in form
        .headers
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("Headers: “{line}” is not of the form Name: value"));
        };
        let (name, value) = (name.trim(), value.trim());
        check_custom_header(name, value).map_err(|e| format!("Headers: {name}: {e}"))?;
        headers.insert(name.to_owned(), value.to_owned());
    }
    if headers.len() > limits.max_endpoint_headers {
        return Err(format!("Headers: at most {}", limits.max_endpoint_headers));
    }
    let rate = form.throttle_rate.trim();
    ep.rate_limit = match rate {
        "" => None,
        r => Some(
            r.parse::<u32>()
                .ok()
                .filter(|r| *r <= 65535)
                .ok_or_else(|| {
                    format!("Throttle rate: “{r}” is not a whole number from 0 to 65535")
                })?,
        ),
    };
    ep.event_types = types;
    ep.channels = channels;
    ep.headers = headers;
    ep.updated_ms = now_ms();
    Ok(())
}

/// Refuses a change to webhookd's own operational application, which its
/// configuration sets at every start (as the API refuses it).
fn not_operational(state: &State, app: &AppRecord) -> Result<(), DashboardError> {
    if state.ops.is_reserved(&app.id) {
        return Err(DashboardError::BadRequest(
            "The operational application is set from webhookd's configuration \
             ([operational]): change it there."
                .into(),
        ));
    }
    Ok(())
}

async fn save_endpoint(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    form: web::Form<EndpointForm>,
) -> PageResult {
    check_csrf(&req, &form.csrf)?;
    let (app_id, ep_id) = path.into_inner();
    let app = find_app(&state, &app_id)?;
    not_operational(&state, &app)?;
    let old = find_endpoint(&state, &app, &ep_id)?;
    let mut new = old.clone();
    if let Err(problem) = apply_form(&form, &state.limits, &mut new) {
        let typed = form.into_inner();
        return endpoint_page(&state, &req, app, old, false, Some(problem), Some(typed));
    }
    if !state.store.put_endpoint(&new)? {
        return Err(DashboardError::NotFound("There is no such endpoint."));
    }
    Ok(see_other(
        &format!("/apps/{}/endpoints/{}", app.id, new.id),
        Some("Endpoint saved."),
    ))
}

#[derive(Deserialize)]
struct ToggleForm {
    #[serde(default)]
    csrf: String,
    /// The state the button asked for (`true`: disabled), so that a page
    /// older than a change made meanwhile (by the health job, a 410, another
    /// person) or a second click never turns it back.
    disabled: bool,
}

async fn toggle(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    form: web::Form<ToggleForm>,
) -> PageResult {
    check_csrf(&req, &form.csrf)?;
    let (app_id, ep_id) = path.into_inner();
    let app = find_app(&state, &app_id)?;
    not_operational(&state, &app)?;
    let old = find_endpoint(&state, &app, &ep_id)?;
    let page = format!("/apps/{}/endpoints/{}", app.id, old.id);
    if old.disabled == form.disabled {
        let notice = if old.disabled {
            "The endpoint was disabled already."
        } else {
            "The endpoint was enabled already."
        };
        return Ok(see_other(&page, Some(notice)));
    }
    let mut ep = old.clone();
    ep.disabled = form.disabled;
    ep.updated_ms = now_ms();
    // The same uid before and after: never `Taken`.
    if !state.store.update_endpoint(&old, &ep)?.unwrap_or(false) {
        return Err(DashboardError::NotFound("There is no such endpoint."));
    }
    state.ops.endpoint_toggled(&app, &ep).await;
    let notice = if ep.disabled {
        "Endpoint disabled: nothing is sent to it."
    } else {
        "Endpoint enabled."
    };
    Ok(see_other(&page, Some(notice)))
}

async fn rotate(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    form: web::Form<super::CsrfForm>,
) -> PageResult {
    check_csrf(&req, &form.csrf)?;
    let (app_id, ep_id) = path.into_inner();
    let app = find_app(&state, &app_id)?;
    not_operational(&state, &app)?;
    let mut ep = find_endpoint(&state, &app, &ep_id)?;
    let now = now_ms();
    let old = std::mem::replace(&mut ep.secret, Secret::generate());
    ep.retired_secrets.retain(|r| r.expires_ms > now);
    ep.retired_secrets.push(RetiredSecret {
        secret: old,
        expires_ms: now + ROTATION_GRACE_MS,
    });
    ep.updated_ms = now;
    if !state.store.put_endpoint(&ep)? {
        return Err(DashboardError::NotFound("There is no such endpoint."));
    }
    Ok(see_other(
        &format!("/apps/{}/endpoints/{}?reveal=1", app.id, ep.id),
        Some("Secret rotated. The old secret keeps signing for 24 hours."),
    ))
}

#[derive(Deserialize)]
struct RecoverForm {
    #[serde(default)]
    csrf: String,
    since: String,
}

/// `YYYY-MM-DDTHH:MM` (a datetime-local input, taken as UTC) or RFC 3339.
fn parse_form_time(s: &str) -> Option<i64> {
    let s = s.trim();
    crate::domain::parse_time(s).or_else(|| crate::domain::parse_time(&format!("{s}:00")))
}

async fn recover(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    form: web::Form<RecoverForm>,
) -> PageResult {
    check_csrf(&req, &form.csrf)?;
    let (app_id, ep_id) = path.into_inner();
    let app = find_app(&state, &app_id)?;
    let ep = find_endpoint(&state, &app, &ep_id)?;
    let Some(since) = parse_form_time(&form.since) else {
        return endpoint_page(
            &state,
            &req,
            app,
            ep,
            false,
            Some(format!("Recover: “{}” is not a date and time", form.since)),
            None,
        );
    };
    let store = state.store.clone();
    let ep_id = ep.id.clone();
    let n = web::block(move || store.recover(&ep_id, since, None, now_ms())).await??;
    state.delivery.wake();
    Ok(see_other(
        &format!("/apps/{}/endpoints/{}", app.id, ep.id),
        Some(&format!(
            "{n} failed message(s) since {} queued again.",
            view::time(since)
        )),
    ))
}

#[derive(Deserialize)]
struct TestForm {
    #[serde(default)]
    csrf: String,
    event_type: String,
}

async fn send_test(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    form: web::Form<TestForm>,
) -> PageResult {
    check_csrf(&req, &form.csrf)?;
    let (app_id, ep_id) = path.into_inner();
    let app = find_app(&state, &app_id)?;
    let ep = find_endpoint(&state, &app, &ep_id)?;
    let event_type = form.event_type.trim();
    if !valid_uid(event_type) {
        return endpoint_page(
            &state,
            &req,
            app,
            ep,
            false,
            Some(format!(
                "Test event: “{event_type}” is not a valid event type name"
            )),
            None,
        );
    }
    if ep.disabled {
        return endpoint_page(
            &state,
            &req,
            app,
            ep,
            false,
            Some("Test event: the endpoint is disabled; enable it first.".into()),
            None,
        );
    }
    let now = now_ms();
    let msg = MessageRecord {
        id: MessageId::new(now),
        app_id: app.id.clone(),
        event_type: event_type.to_owned(),
        event_id: None,
        channels: Vec::new(),
        tags: Vec::new(),
        created_ms: now,
        expunged: false,
        payload_retention_ms: None,
    };
    let payload = serde_json::json!({ "eventType": event_type, "example": true, "sentFrom": "webhookd dashboard" });
    let mut landed = state.delivery.subscribe();
    let delivery = state.delivery.clone();
    if let Published::DuplicateEventId(_) = state
        .store
        .publish(
            &msg,
            payload.to_string().as_bytes(),
            &[&ep],
            now,
            move || delivery.wake(),
        )
        .await?
    {
        return Err(DashboardError::BadRequest("duplicate message".into()));
    }
    // Show the outcome on the endpoint page: wait briefly for the attempt to be recorded.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while let Ok(Ok(l)) = tokio::time::timeout_at(deadline, landed.recv()).await {
        if l.msg_id == msg.id {
            break;
        }
    }
    let outcome = state
        .store
        .attempts_of_msg(&msg.id, &PageReq::first(1), |_| true)?
        .items
        .pop()
        .map_or("Test event queued.".to_owned(), |a| {
            match a.response_status_code {
                0 => format!(
                    "Test event sent: no response ({}).",
                    a.error.unwrap_or_default()
                ),
                code => format!("Test event sent: the endpoint answered {code}."),
            }
        });
    Ok(see_other(
        &format!("/apps/{}/endpoints/{}", app.id, ep.id),
        Some(&outcome),
    ))
}
