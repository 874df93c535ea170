//! Who is calling and what they may do: the admin token may do everything; an
//! application-scoped token may publish to its application and read that
//! application's messages and attempts, nothing else. Failed authentications are
//! throttled per client address, publishes per token.

use std::net::IpAddr;
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, header};
use actix_web::middleware::Next;
use actix_web::{HttpMessage as _, ResponseError, web};
use subtle::ConstantTimeEq as _;

use super::{ApiError, ApiState};
use crate::domain::{AppId, TokenId};
use crate::store::token_hash;

/// The authenticated caller, in the request's extensions for handlers that care.
#[derive(Clone, Debug)]
pub enum Principal {
    Admin,
    App { token: TokenId, app: AppId },
}

impl Principal {
    /// What the publish rate limit is kept under.
    fn throttle_key(&self) -> &str {
        match self {
            Self::Admin => "admin",
            Self::App { token, .. } => token.as_str(),
        }
    }
}

pub fn bearer(headers: &header::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

impl ApiState {
    /// The admin token is compared in constant time; a scoped token is found by
    /// its SHA-256, which reveals nothing about the tokens it is not.
    fn principal(&self, token: &str) -> Result<Option<Principal>, ApiError> {
        if self.admin_token.matches(token) {
            return Ok(Some(Principal::Admin));
        }
        Ok(self
            .store
            .token_by_hash(&token_hash(token))?
            .map(|t| Principal::App {
                token: t.id,
                app: t.app_id,
            }))
    }

    /// Is `token` the monitoring token (what `/metrics` and the health
    /// report's details take): `metrics.token` when set, else the admin
    /// token; an application token never.
    fn is_monitoring(&self, token: &str) -> bool {
        match &self.metrics_token {
            Some(expected) => bool::from(token.as_bytes().ct_eq(expected.as_bytes())),
            None => self.admin_token.matches(token),
        }
    }

    /// `/metrics`: did the request present the monitoring token?
    /// `Ok(false)` when it came without one; a wrong one is an
    /// authentication failure (logged, throttled like the API's) and an error.
    pub fn monitoring_token(&self, req: &actix_web::HttpRequest) -> Result<bool, ApiError> {
        let Some(token) = bearer(req.headers()) else {
            return Ok(false);
        };
        let client = req.peer_addr().map(|a| a.ip());
        let too_many = |wait| too_many("Too many failed authentications; try again later.", wait);
        self.auth_throttle.check(client).map_err(too_many)?;
        if !self.is_monitoring(token) {
            tracing::warn!(client = ?client, path = req.path(), "monitoring authentication failed");
            self.auth_throttle.failed(client).map_err(too_many)?;
            return Err(ApiError::Unauthorized(
                "Incorrect authentication credentials.".into(),
            ));
        }
        Ok(true)
    }

    /// The health checks: does the request see the report in full (it
    /// presented the monitoring token)? Never refused: a client sends its
    /// own token with every call, health checks included (the Svix SDKs
    /// do), so another token the API knows gets the overall state, as no
    /// token does. A token nobody has counts as a failed authentication
    /// (throttled per address like the API's), and while its address is
    /// throttled no token is looked at, so the report is no oracle for
    /// guessing.
    pub fn shows_details(&self, req: &actix_web::HttpRequest) -> bool {
        let Some(token) = bearer(req.headers()) else {
            return false;
        };
        let client = req.peer_addr().map(|a| a.ip());
        if self.auth_throttle.check(client).is_err() {
            return false;
        }
        if self.is_monitoring(token) {
            return true;
        }
        if !matches!(self.principal(token), Ok(Some(_))) {
            tracing::warn!(client = ?client, path = req.path(), "health check with an unknown token");
            let _ = self.auth_throttle.failed(client);
        }
        false
    }

    /// May a token of `app` make this request (`segs`: its path's segments
    /// under `/api/v1`)? Only `POST /app/{app}/msg` and `GET` under
    /// `/app/{app}/msg` and `/app/{app}/attempt`, where `{app}` (an id or a
    /// uid) is its own application.
    fn scoped_may(&self, app: &AppId, method: &Method, segs: &[&str]) -> Result<bool, ApiError> {
        let allowed = matches!(
            (method, segs),
            (&Method::POST, ["app", _, "msg"]) | (&Method::GET, ["app", _, "msg" | "attempt", ..])
        );
        if !allowed {
            return Ok(false);
        }
        Ok(self.store.find_app(segs[1])?.is_some_and(|a| &a.id == app))
    }

    /// Would this request change webhookd's own operational application
    /// (its record or endpoint) or publish into it? That application is
    /// set from the configuration (`[operational]`) at every start: through
    /// the API it is read, and its messages resent, recovered or expunged,
    /// but a change would only misdirect or silence its events (or forge
    /// them) until the next start.
    fn changes_operational(&self, method: &Method, segs: &[&str]) -> bool {
        if matches!(*method, Method::GET | Method::HEAD) {
            return false;
        }
        let changes = match segs {
            ["app", _] | ["app", _, "msg"] | ["app", _, "endpoint"] => true,
            ["app", _, "endpoint", _, tail @ ..] => tail != ["recover"],
            _ => false,
        };
        changes && self.ops.is_reserved_name(&path_decoded(segs[1]))
    }
}

/// A path's segments under `/api/v1/` (none outside it), without a
/// trailing slash.
fn api_segments(path: &str) -> Vec<&str> {
    let rest = path.strip_prefix("/api/v1/").unwrap_or_default();
    rest.trim_end_matches('/').split('/').collect()
}

fn is_publish(method: &Method, segs: &[&str]) -> bool {
    *method == Method::POST && matches!(segs, ["app", _, "msg"])
}

/// A path segment as the router hands it to a handler (percent-decoded),
/// so that an encoded name is recognised too.
fn path_decoded(segment: &str) -> std::borrow::Cow<'_, str> {
    if !segment.contains('%') {
        return segment.into();
    }
    serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("s={segment}"))
        .ok()
        .and_then(|pairs| pairs.into_iter().next())
        .map_or(segment.into(), |(_, decoded)| decoded.into())
}

/// The refusal of a change to the operational application (see
/// `changes_operational`) or of a token for it.
pub fn operational_is_configured() -> ApiError {
    ApiError::Forbidden(
        "The operational application is set from webhookd's configuration ([operational]); \
         it cannot be changed, published to or given tokens through the API."
            .into(),
    )
}

fn refuse(req: ServiceRequest, err: ApiError) -> ServiceResponse<BoxBody> {
    req.into_response(err.error_response())
}

fn too_many(what: &str, wait: Duration) -> ApiError {
    ApiError::TooManyRequests {
        detail: what.to_owned(),
        retry_after: wait,
    }
}

/// Every route of the scope needs `Authorization: Bearer <token>`.
pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let state = req
        .app_data::<web::Data<ApiState>>()
        .expect("the API scope always carries its state")
        .clone();
    let client: Option<IpAddr> = req.peer_addr().map(|a| a.ip());
    if let Err(wait) = state.auth_throttle.check(client) {
        let err = too_many("Too many failed authentications; try again later.", wait);
        return Ok(refuse(req, err));
    }
    let principal = match bearer(req.headers()) {
        Some(token) => match state.principal(token) {
            Ok(p) => p,
            Err(e) => return Ok(refuse(req, e)),
        },
        None => None,
    };
    let Some(principal) = principal else {
        tracing::warn!(
            client = ?client,
            method = %req.method(),
            path = req.path(),
            "API authentication failed"
        );
        let err = match state.auth_throttle.failed(client) {
            Ok(()) => ApiError::Unauthorized("Incorrect authentication credentials.".into()),
            Err(wait) => too_many("Too many failed authentications; try again later.", wait),
        };
        return Ok(refuse(req, err));
    };
    let segs = api_segments(req.path());
    if let Principal::App { app, .. } = &principal {
        match state.scoped_may(app, req.method(), &segs) {
            Ok(true) => {}
            Ok(false) => {
                let err = ApiError::Forbidden(
                    "This token is limited to one application's messages and attempts.".into(),
                );
                return Ok(refuse(req, err));
            }
            Err(e) => return Ok(refuse(req, e)),
        }
    }
    if state.changes_operational(req.method(), &segs) {
        return Ok(refuse(req, operational_is_configured()));
    }
    let publish = is_publish(req.method(), &segs);
    if publish && let Err(wait) = state.publish_throttle.check(principal.throttle_key()) {
        let err = too_many("Publish rate limit exceeded for this token.", wait);
        return Ok(refuse(req, err));
    }
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD);
    req.extensions_mut().insert(principal);
    let res = next.call(req).await?.map_into_boxed_body();
    // A change is durable before it is answered (a publish is made durable
    // by the writer thread itself: `Writer::write_durable`).
    if changes
        && !publish
        && res.status().is_success()
        && res
            .request()
            .extensions()
            .get::<super::Committed>()
            .is_none()
        && let Err(e) = state.store.commit().await
    {
        let (req, _) = res.into_parts();
        return Ok(ServiceResponse::new(
            req,
            ApiError::from(e).error_response(),
        ));
    }
    Ok(res)
}
