//! The `/api/v1` HTTP API, wire-compatible with Svix.
//!
//! Owns handlers, wire types (`model`), errors (`error`), authentication and
//! idempotency (`middleware`). Must not import sled or awc: it talks to the
//! `Store` and wakes the delivery worker through its `DeliveryHandle`.

mod admin;
mod application;
mod attempt;
pub mod auth;
mod endpoint;
pub mod error;
mod event_type;
pub mod extract;
pub mod health;
mod message;
pub mod metrics;
mod middleware;
pub mod model;
mod token;

use std::sync::Arc;

use actix_web::{HttpRequest, web};
use serde::de::DeserializeOwned;

use crate::admin::AdminToken;
use crate::config::ApiConfig;
use crate::delivery::{DeliveryHandle, Operational};
use crate::metrics::Metrics;
use crate::store::{AppRecord, EndpointRecord, Store};
use crate::throttle::{AuthThrottle, PublishThrottle};
pub use error::ApiError;

/// What every handler can reach. Shared read-only across the server's threads.
pub struct ApiState {
    pub store: Store,
    pub delivery: DeliveryHandle,
    pub ops: Operational,
    pub cfg: ApiConfig,
    pub admin_token: Arc<AdminToken>,
    /// Shared with the dashboard's sign-in.
    pub auth_throttle: Arc<AuthThrottle>,
    pub publish_throttle: PublishThrottle,
    pub metrics: Arc<Metrics>,
    /// The token `/metrics` takes instead of the admin token.
    pub metrics_token: Option<Arc<str>>,
    pub health: health::HealthCheck,
}

type State = web::Data<ApiState>;

impl ApiState {
    /// Reads a JSON body: at most `max_payload_bytes` (else 413), nested at most
    /// `max_json_depth` deep (else 400), of the shape of `T` (else 422).
    async fn json<T: DeserializeOwned>(
        &self,
        req: &HttpRequest,
        payload: web::Payload,
    ) -> Result<T, ApiError> {
        self.parse_json(&extract::read_body(req, payload, self.cfg.max_payload_bytes).await?)
    }

    fn parse_json<T: DeserializeOwned>(&self, body: &[u8]) -> Result<T, ApiError> {
        extract::parse_json(body, self.cfg.limits.max_json_depth)
    }

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

/// In a request's extensions: what it changed is durable already (the
/// idempotency layer committed it with the answer), so the authentication
/// layer does not commit again.
#[derive(Clone, Copy)]
pub(crate) struct Committed;

/// Mounts `/api/v1` on a service config.
pub fn configure(cfg: &mut web::ServiceConfig, state: web::Data<ApiState>) {
    health::routes(cfg, state.clone());
    cfg.service(
        web::scope("/api/v1")
            .app_data(state)
            // The last `wrap` runs first: authenticate, then idempotency, which
            // must remember the response as the client gets it, JSON body included.
            .wrap(actix_web::middleware::from_fn(middleware::json_errors))
            .wrap(actix_web::middleware::from_fn(middleware::idempotency))
            .wrap(actix_web::middleware::from_fn(auth::authenticate))
            // Resources are tried in this order, each with its own regex
            // (and once more for the request's tracing span): publishing,
            // the busiest route, first. No two patterns match the same path.
            .configure(message::routes)
            .configure(application::routes)
            .configure(event_type::routes)
            .configure(endpoint::routes)
            .configure(attempt::routes)
            .configure(token::routes)
            .configure(admin::routes),
    );
}
