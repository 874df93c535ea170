//! `GET /metrics`: the Prometheus text exposition of `crate::metrics`.
//!
//! On the main listener it needs a bearer token: `metrics.token` when set, else
//! the admin token; an application-scoped token never. With `metrics.listen`
//! set, it is served only there, without a token (`configure_open`).

use actix_web::{HttpRequest, HttpResponse, web};
use subtle::ConstantTimeEq as _;

use super::{ApiError, State, auth::bearer};
use crate::domain::now_ms;

/// Mounts `/metrics`, protected by a token, on the main listener.
pub fn configure_protected(cfg: &mut web::ServiceConfig, state: State) {
    cfg.service(
        web::resource("/metrics")
            .app_data(state)
            .route(web::get().to(protected)),
    );
}

/// Mounts `/metrics` without a token (a listener of its own).
pub fn configure_open(cfg: &mut web::ServiceConfig, state: State) {
    cfg.service(
        web::resource("/metrics")
            .app_data(state)
            .route(web::get().to(open)),
    );
}

async fn protected(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let client = req.peer_addr().map(|a| a.ip());
    let too_many = |wait| ApiError::TooManyRequests {
        detail: "Too many failed authentications; try again later.".into(),
        retry_after: wait,
    };
    state.auth_throttle.check(client).map_err(too_many)?;
    let ok = bearer(req.headers()).is_some_and(|t| match &state.metrics_token {
        Some(expected) => bool::from(t.as_bytes().ct_eq(expected.as_bytes())),
        None => state.admin_token.matches(t),
    });
    if !ok {
        tracing::warn!(client = ?client, "metrics authentication failed");
        state.auth_throttle.failed(client).map_err(too_many)?;
        return Err(ApiError::Unauthorized(
            "Incorrect authentication credentials.".into(),
        ));
    }
    open(state).await
}

async fn open(state: State) -> Result<HttpResponse, ApiError> {
    let body = web::block(move || state.metrics.render(&state.store, now_ms())).await??;
    Ok(HttpResponse::Ok()
        .content_type(crate::metrics::CONTENT_TYPE)
        .insert_header(("cache-control", "no-store"))
        .body(body))
}
