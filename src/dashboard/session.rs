//! Dashboard sign-in: sessions, their cookie, and CSRF tokens.
//!
//! A session is created by signing in with the admin token and lives in memory
//! (a restart signs everyone out). Its cookie is HttpOnly and SameSite=Strict;
//! every state-changing form carries the session's CSRF token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use actix_web::ResponseError as _;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::cookie::{Cookie, SameSite};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, header};
use actix_web::middleware::Next;
use actix_web::{HttpMessage as _, HttpRequest, HttpResponse, web};
use subtle::ConstantTimeEq;

use super::DashboardState;
use super::error::DashboardError;
use crate::domain::{now_ms, random_token};

pub const COOKIE: &str = "webhookd_session";
/// How long a session lasts after sign-in.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// A signed-in browser: what pages need to render forms.
#[derive(Clone, Debug)]
pub struct Session {
    pub csrf: String,
    expires_ms: i64,
    /// The admin token generation it was signed in with: a rotated token ends it.
    generation: u64,
}

#[derive(Default)]
pub struct Sessions {
    // A Mutex is enough: each request holds it for one map operation.
    by_id: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Starts a session; returns its cookie value.
    pub fn create(&self, generation: u64) -> String {
        let id = random_token();
        let now = now_ms();
        let mut map = self.by_id.lock().expect("session map lock poisoned");
        map.retain(|_, s| s.expires_ms > now);
        map.insert(
            id.clone(),
            Session {
                csrf: random_token(),
                expires_ms: now + LIFETIME.as_millis() as i64,
                generation,
            },
        );
        id
    }

    pub fn get(&self, id: &str) -> Option<Session> {
        let map = self.by_id.lock().expect("session map lock poisoned");
        map.get(id).filter(|s| s.expires_ms > now_ms()).cloned()
    }

    pub fn remove(&self, id: &str) {
        self.by_id
            .lock()
            .expect("session map lock poisoned")
            .remove(id);
    }
}

/// The session cookie to set after sign-in (or to clear, with an empty
/// value) in answer to `req`: `Secure` when the browser came over https
/// (to a TLS proxy in front, which says so in `Forwarded` or
/// `X-Forwarded-Proto`), so that it is never sent in clear.
pub fn cookie(req: &HttpRequest, value: String, max_age: Duration) -> Cookie<'static> {
    let https = req.connection_info().scheme() == "https";
    Cookie::build(COOKIE, value)
        .path("/")
        .http_only(true)
        .secure(https)
        .same_site(SameSite::Strict)
        .max_age(actix_web::cookie::time::Duration::seconds(
            max_age.as_secs() as i64,
        ))
        .finish()
}

/// Does `given` equal the admin token? (constant time)
pub fn token_matches(state: &DashboardState, given: &str) -> bool {
    state.admin_token.matches(given.trim())
}

/// Pages other than sign-in need a session: without one, a browser is sent to the
/// sign-in page (and back afterwards). The session is put in the request extensions.
pub async fn require_session(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let path = req.path();
    if path == "/login" || path.starts_with("/static/") {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    let state = req
        .app_data::<web::Data<DashboardState>>()
        .expect("the dashboard always carries its state")
        .clone();
    let session = req
        .cookie(COOKIE)
        .and_then(|c| state.sessions.get(c.value()))
        .filter(|s| s.generation == state.admin_token.generation());
    match session {
        Some(s) => {
            req.extensions_mut().insert(s);
            let changes = req.method() == Method::POST;
            let res = next.call(req).await?.map_into_boxed_body();
            // What a form changed is durable before its answer.
            let done = res.status().is_success() || res.status().is_redirection();
            if changes
                && done
                && let Err(e) = state.store.commit().await
            {
                let (req, _) = res.into_parts();
                let err = DashboardError::from(e);
                return Ok(ServiceResponse::new(req, err.error_response()));
            }
            Ok(res)
        }
        None => {
            let target = match (req.method(), req.query_string()) {
                (&Method::GET | &Method::HEAD, "") => req.path().to_owned(),
                (&Method::GET | &Method::HEAD, q) => format!("{}?{q}", req.path()),
                // A form sent once the session had ended: its page, since
                // the form's own route has nothing to show.
                _ => form_page(req.path()),
            };
            let location = format!("/login?next={}", urlencode(&target));
            let res = HttpResponse::SeeOther()
                .insert_header((header::LOCATION, location))
                .finish();
            Ok(req.into_response(res))
        }
    }
}

/// The session of a request that passed `require_session`.
pub fn session(req: &HttpRequest) -> Result<Session, DashboardError> {
    req.extensions()
        .get::<Session>()
        .cloned()
        .ok_or(DashboardError::Forbidden("not signed in"))
}

/// Checks a submitted form's CSRF token against the session's.
pub fn check_csrf(req: &HttpRequest, submitted: &str) -> Result<Session, DashboardError> {
    let s = session(req)?;
    if bool::from(submitted.as_bytes().ct_eq(s.csrf.as_bytes())) && !submitted.is_empty() {
        Ok(s)
    } else {
        Err(DashboardError::Forbidden(
            "the form's security token is missing or stale; reload the page and try again",
        ))
    }
}

pub fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|e| e.trim_start_matches('=').to_owned())
        .unwrap_or_default()
}

/// Only same-site paths are followed after sign-in (no open redirects).
/// Browsers drop tabs and line breaks from a URL before reading it (so
/// `/<tab>/evil.example` is `//evil.example`) and read `\\` as `/`: a path
/// with any of those, or any other control character or space, is refused.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n
                    .chars()
                    .any(|c| c == '\\' || c.is_control() || c.is_whitespace()) =>
        {
            n.to_owned()
        }
        _ => "/".to_owned(),
    }
}

/// The page a dashboard form at `path` is on: an endpoint's or a message's
/// for their actions, else the section's (`/failed`, `/jobs`, `/tokens`).
fn form_page(path: &str) -> String {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["apps", app, "endpoints", ep, ..] => format!("/apps/{app}/endpoints/{ep}"),
        ["messages", msg, ..] => format!("/messages/{msg}"),
        ["logout", ..] | [""] => "/".to_owned(),
        [section, ..] => format!("/{section}"),
        [] => "/".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_site() {
        assert_eq!(safe_next(Some("/messages?x=1")), "/messages?x=1");
        assert_eq!(safe_next(Some("//evil.example")), "/");
        assert_eq!(safe_next(Some("https://evil.example")), "/");
        assert_eq!(safe_next(Some("/\\evil")), "/");
        assert_eq!(safe_next(None), "/");
        for sneaky in [
            "/\t/evil.example",
            "/\n/evil.example",
            "/\r\n",
            "/ /x",
            "/\u{0}",
        ] {
            assert_eq!(safe_next(Some(sneaky)), "/", "{sneaky:?}");
        }
    }

    #[test]
    fn a_form_returns_to_its_page() {
        for (form, page) in [
            ("/apps/a/endpoints/e", "/apps/a/endpoints/e"),
            ("/apps/a/endpoints/e/toggle", "/apps/a/endpoints/e"),
            ("/messages/m/redeliver", "/messages/m"),
            ("/failed/redeliver", "/failed"),
            ("/jobs/reconcile/run", "/jobs"),
            ("/tokens", "/tokens"),
            ("/tokens/t/revoke", "/tokens"),
            ("/logout", "/"),
        ] {
            assert_eq!(form_page(form), page, "{form}");
        }
    }

    #[test]
    fn sessions_expire_and_end() {
        let s = Sessions::default();
        let id = s.create(0);
        assert!(s.get(&id).is_some());
        s.remove(&id);
        assert!(s.get(&id).is_none());
        assert!(s.get("made-up").is_none());
    }
}
