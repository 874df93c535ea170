//! The `/api/v1` HTTP API, wire-compatible with Svix.
//!
//! Owns handlers, wire types (`model`), errors (`error`), authentication and
//! idempotency (`middleware`). Must not import sled or awc: it talks to the
//! `Store` and wakes the delivery worker through its `DeliveryHandle`.

mod application;
mod attempt;
mod endpoint;
pub mod error;
mod event_type;
pub mod extract;
mod message;
mod middleware;
pub mod model;

use std::sync::Arc;

use actix_web::{HttpResponse, web};

use crate::config::ApiConfig;
use crate::delivery::{DeliveryHandle, Operational};
use crate::store::{AppRecord, EndpointRecord, Store};
pub use error::ApiError;

/// What every handler can reach. Shared read-only across the server's threads.
pub struct ApiState {
    pub store: Store,
    pub delivery: DeliveryHandle,
    pub ops: Operational,
    pub cfg: ApiConfig,
    pub admin_token: Arc<str>,
}

type State = web::Data<ApiState>;

impl ApiState {
    fn app(&self, id_or_uid: &str) -> Result<AppRecord, ApiError> {
        self.store
            .find_app(id_or_uid)?
            .ok_or_else(|| ApiError::not_found("Application"))
    }

    fn endpoint(&self, app: &AppRecord, id_or_uid: &str) -> Result<EndpointRecord, ApiError> {
        self.store
            .find_endpoint(&app.id, id_or_uid)?
            .ok_or_else(|| ApiError::not_found("Endpoint"))
    }
}

/// Mounts `/api/v1` on a service config.
pub fn configure(cfg: &mut web::ServiceConfig, state: web::Data<ApiState>) {
    // Outside the authenticated scope, so it answers other methods itself, with
    // the same JSON 405 as the rest of the API.
    let health = web::resource(["/api/v1/health", "/api/v1/health/ping"])
        .route(web::get().to(health))
        .route(web::head().to(health))
        .default_service(web::to(health_method_not_allowed));
    cfg.service(health).service(
        web::scope("/api/v1")
            .app_data(state)
            // The last `wrap` runs first: authenticate, then idempotency, which
            // must remember the response as the client gets it, JSON body included.
            .wrap(actix_web::middleware::from_fn(middleware::json_errors))
            .wrap(actix_web::middleware::from_fn(middleware::idempotency))
            .wrap(actix_web::middleware::from_fn(middleware::authenticate))
            .configure(application::routes)
            .configure(event_type::routes)
            .configure(endpoint::routes)
            .configure(message::routes)
            .configure(attempt::routes),
    );
}

async fn health() -> HttpResponse {
    HttpResponse::NoContent().finish()
}

async fn health_method_not_allowed(req: actix_web::HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed(format!(
        "{} is not allowed on {}",
        req.method(),
        req.path()
    )))
}
