//! The dashboard: server-rendered pages at `/` for people.
//!
//! Owns one askama page struct per `templates/*.html`, sign-in sessions, and the
//! static assets compiled into the binary. Every flow works as plain HTML forms;
//! `static/app.js` only adds auto-refresh and copy buttons. Must not build HTML
//! with `format!`, mark user data `|safe`, or import sled or awc.

mod apps;
mod catalog;
mod error;
mod jobs;
mod messages;
mod overview;
mod session;
mod tokens;
mod view;

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use serde::Deserialize;

use crate::admin::AdminToken;
use crate::config::Limits;
use crate::delivery::{DeliveryHandle, Operational};
use crate::domain::{EndpointId, MessageId, now_ms};
use crate::scheduler::SchedulerHandle;
use crate::store::Store;
use crate::throttle::AuthThrottle;
pub use error::DashboardError;
use session::{Sessions, check_csrf, cookie, safe_next, token_matches};

/// What every page can reach. Shared read-only across the server's threads.
pub struct DashboardState {
    pub store: Store,
    pub delivery: DeliveryHandle,
    pub admin_token: Arc<AdminToken>,
    pub sessions: Sessions,
    pub ops: Operational,
    pub scheduler: SchedulerHandle,
    /// Shared with the API's authentication.
    pub auth_throttle: Arc<AuthThrottle>,
    /// The API's bounds, which the endpoint form keeps as well.
    pub limits: Limits,
}

type State = web::Data<DashboardState>;
type PageResult = Result<HttpResponse, DashboardError>;

impl DashboardState {
    pub fn new(
        store: Store,
        delivery: DeliveryHandle,
        admin_token: Arc<AdminToken>,
        ops: Operational,
        scheduler: SchedulerHandle,
        auth_throttle: Arc<AuthThrottle>,
        limits: Limits,
    ) -> Self {
        Self {
            store,
            delivery,
            admin_token,
            sessions: Sessions::default(),
            ops,
            scheduler,
            auth_throttle,
            limits,
        }
    }

    /// Queues manual attempts now, then waits (up to `wait`) until each has been
    /// recorded, so the page the browser goes to next already shows them.
    async fn redeliver(
        &self,
        targets: &[(crate::store::MessageRecord, EndpointId)],
        wait: Duration,
    ) -> Result<usize, DashboardError> {
        let mut landed = self.delivery.subscribe();
        let now = now_ms();
        for (msg, ep) in targets {
            self.store
                .queue_manual(&msg.app_id, &msg.id, ep, now)
                .await?;
        }
        // Durable before the page answers: see `session::require_session`.
        self.delivery.wake();
        let mut waiting: Vec<(MessageId, EndpointId)> = targets
            .iter()
            .map(|(m, e)| (m.id.clone(), e.clone()))
            .collect();
        let deadline = tokio::time::Instant::now() + wait;
        while !waiting.is_empty() {
            match tokio::time::timeout_at(deadline, landed.recv()).await {
                Ok(Ok(l)) => waiting.retain(|(m, e)| !(m == &l.msg_id && e == &l.ep_id)),
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(_)) | Err(_) => break,
            }
        }
        Ok(targets.len())
    }
}

/// The frame around every page: navigation, the sign-out form, a notice.
pub struct Layout {
    pub csrf: String,
    pub nav: &'static str,
    pub notice: Option<String>,
    pub version: &'static str,
}

impl Layout {
    fn new(req: &HttpRequest, nav: &'static str) -> Result<Layout, DashboardError> {
        let notice = web::Query::<Notice>::from_query(req.query_string())
            .ok()
            .and_then(|q| q.into_inner().notice)
            .filter(|n| !n.is_empty());
        Ok(Layout {
            csrf: session::session(req)?.csrf,
            nav,
            notice,
            version: env!("CARGO_PKG_VERSION"),
        })
    }
}

#[derive(Deserialize)]
struct Notice {
    notice: Option<String>,
}

/// Renders a page with the dashboard's headers.
fn render(t: &impl Template) -> PageResult {
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(t.render()?))
}

/// A 303 to `path`, optionally with a notice shown at the top of the next page.
fn see_other(path: &str, notice: Option<&str>) -> HttpResponse {
    let location = match notice {
        Some(n) => {
            let sep = if path.contains('?') { '&' } else { '?' };
            format!("{path}{sep}notice={}", session::urlencode(n))
        }
        None => path.to_owned(),
    };
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .finish()
}

/// Mounts the dashboard at `/`.
pub fn configure(cfg: &mut web::ServiceConfig, state: web::Data<DashboardState>) {
    cfg.service(
        web::scope("")
            .app_data(state)
            .app_data(
                web::FormConfig::default()
                    .limit(256 * 1024)
                    .error_handler(error::unreadable_form),
            )
            .app_data(web::QueryConfig::default().error_handler(error::unreadable_query))
            .wrap(actix_web::middleware::from_fn(session::require_session))
            .wrap(
                actix_web::middleware::DefaultHeaders::new()
                    .add((
                        header::CONTENT_SECURITY_POLICY,
                        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
                    ))
                    .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                    .add((header::X_FRAME_OPTIONS, "DENY"))
                    .add((header::REFERRER_POLICY, "no-referrer")),
            )
            .route("/login", web::get().to(login_page))
            .route("/login", web::post().to(login))
            .route("/logout", web::post().to(logout))
            .route("/static/{file}", web::get().to(asset))
            .configure(overview::routes)
            .configure(apps::routes)
            .configure(messages::routes)
            .configure(catalog::routes)
            .configure(jobs::routes)
            .configure(tokens::routes)
            .default_service(web::to(not_found)),
    );
}

async fn not_found() -> PageResult {
    Err(DashboardError::NotFound("There is no such page."))
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    next: String,
    error: Option<String>,
    version: &'static str,
}

#[derive(Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

async fn login_page(query: web::Query<LoginQuery>) -> PageResult {
    render(&LoginPage {
        next: safe_next(query.next.as_deref()),
        error: None,
        version: env!("CARGO_PKG_VERSION"),
    })
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

/// The sign-in page again, with an error and a status.
fn login_refused(next: String, error: String, status: StatusCode) -> PageResult {
    let mut res = render(&LoginPage {
        next,
        error: Some(error),
        version: env!("CARGO_PKG_VERSION"),
    })?;
    *res.status_mut() = status;
    Ok(res)
}

fn too_many_sign_ins(next: String, wait: Duration) -> PageResult {
    let secs = wait.as_millis().div_ceil(1000).max(1);
    let mut res = login_refused(
        next,
        format!("Too many failed sign-ins from your address. Try again in {secs} s."),
        StatusCode::TOO_MANY_REQUESTS,
    )?;
    res.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(secs as u64));
    Ok(res)
}

/// Failed sign-ins are throttled per client address together with the API's
/// failed authentications, and logged without what was typed.
async fn login(state: State, req: HttpRequest, form: web::Form<LoginForm>) -> PageResult {
    let next = safe_next(form.next.as_deref());
    let client = req.peer_addr().map(|a| a.ip());
    if let Err(wait) = state.auth_throttle.check(client) {
        return too_many_sign_ins(next, wait);
    }
    if !token_matches(&state, &form.token) {
        tracing::warn!(client = ?client, "dashboard sign-in with a wrong token");
        if let Err(wait) = state.auth_throttle.failed(client) {
            return too_many_sign_ins(next, wait);
        }
        return login_refused(
            next,
            "That token is not the admin token.".into(),
            StatusCode::UNAUTHORIZED,
        );
    }
    let id = state.sessions.create(state.admin_token.generation());
    let mut res = see_other(&next, None);
    res.add_cookie(&cookie(&req, id, session::LIFETIME))
        .map_err(|e| DashboardError::BadRequest(e.to_string()))?;
    Ok(res)
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(state: State, req: HttpRequest, form: web::Form<CsrfForm>) -> PageResult {
    check_csrf(&req, &form.csrf)?;
    if let Some(c) = req.cookie(session::COOKIE) {
        state.sessions.remove(c.value());
    }
    let mut res = see_other("/login", None);
    res.add_cookie(&cookie(&req, String::new(), Duration::ZERO))
        .map_err(|e| DashboardError::BadRequest(e.to_string()))?;
    Ok(res)
}

/// Static assets, compiled in.
async fn asset(path: web::Path<String>) -> PageResult {
    let (body, kind): (&'static [u8], &str) = match path.as_str() {
        "style.css" => (
            include_bytes!("../../static/style.css"),
            "text/css; charset=utf-8",
        ),
        "app.js" => (
            include_bytes!("../../static/app.js"),
            "text/javascript; charset=utf-8",
        ),
        "favicon.svg" => (include_bytes!("../../static/favicon.svg"), "image/svg+xml"),
        _ => return Err(DashboardError::NotFound("There is no such file.")),
    };
    Ok(HttpResponse::Ok()
        .content_type(kind)
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(body))
}
