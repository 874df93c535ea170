//! `GET /metrics`: the Prometheus text exposition of `crate::metrics`.
//!
//! On the main listener it needs a bearer token: `metrics.token` when set, else
//! the admin token; an application-scoped token never. With `metrics.listen`
//! set, it is served only there, without a token (`configure_open`).

use actix_web::{HttpRequest, HttpResponse, web};

use super::{ApiError, State};
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
    if !state.monitoring_token(&req)? {
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
