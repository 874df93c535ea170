//! JSON error bodies and idempotency, as middleware of the `/api/v1` scope.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode, header};
use actix_web::middleware::Next;
use actix_web::{HttpMessage as _, HttpResponse, ResponseError, web};
use sha2::{Digest, Sha256};

use super::{ApiError, ApiState, Committed};
use crate::domain::now_ms;
use crate::store::{IdemClaim, StoredResponse};

/// Gives the framework's own bare 404/405 answers (no such resource or method) a
/// Svix-style JSON body, as every other API error has.
pub async fn json_errors(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let res = next.call(req).await?;
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let status = res.status();
    if is_json
        || !matches!(
            status,
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
        )
    {
        return Ok(res.map_into_boxed_body());
    }
    let (req, _) = res.into_parts();
    let err = if status == StatusCode::NOT_FOUND {
        ApiError::NotFound(format!("no API route for {} {}", req.method(), req.path()))
    } else {
        ApiError::MethodNotAllowed(format!("{} is not allowed on {}", req.method(), req.path()))
    };
    Ok(ServiceResponse::new(req, err.error_response()))
}

/// A POST with an `idempotency-key` header is handled once per (token, path, key)
/// within the configured time: repeats get the first response back and create
/// nothing. Server errors are not remembered, so a retry after one is handled anew.
pub async fn idempotency(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Some(key) = key.filter(|_| req.method() == Method::POST) else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let state = req
        .app_data::<web::Data<ApiState>>()
        .expect("the API scope always carries its state")
        .clone();
    let scope: [u8; 32] = Sha256::new()
        .chain_update(super::auth::bearer(req.headers()).unwrap_or_default())
        .chain_update([0])
        .chain_update(req.path())
        .chain_update([0])
        .chain_update(&key)
        .finalize()
        .into();
    let ttl_ms = state.cfg.idempotency_ttl.as_millis() as i64;
    let claim = match state.store.idempotency_begin(&scope, now_ms(), ttl_ms) {
        Ok(c) => c,
        Err(e) => return Ok(req.into_response(ApiError::from(e).error_response())),
    };
    match claim {
        IdemClaim::Replay(stored) => {
            let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
            let res = HttpResponse::build(status)
                .content_type("application/json")
                .body(stored.body);
            // Not marked committed: the answer read may be one whose own
            // commit failed, made durable by the commit after this.
            Ok(req.into_response(res))
        }
        IdemClaim::InProgress => {
            let err = ApiError::Conflict(
                "a request with this idempotency-key is still being handled".into(),
            );
            Ok(req.into_response(err.error_response()))
        }
        IdemClaim::New(claim) => {
            let res = next.call(req).await;
            let res = match res {
                Ok(r) => r,
                Err(e) => {
                    let _ = state.store.idempotency_finish(&claim, now_ms(), None);
                    return Err(e);
                }
            };
            let status = res.status();
            let (req, res) = res.into_parts();
            let (head, body) = res.into_parts();
            let bytes = match actix_web::body::to_bytes(body).await {
                Ok(b) => b,
                Err(_) => {
                    let _ = state.store.idempotency_finish(&claim, now_ms(), None);
                    let err = ApiError::BadRequest("could not buffer the response".into());
                    return Ok(ServiceResponse::new(req, err.error_response()));
                }
            };
            let remembered = (!status.is_server_error()).then(|| StoredResponse {
                status: status.as_u16(),
                body: bytes.to_vec(),
            });
            // Durable before the client sees the answer (and before a repeat
            // may find it: the claim goes after): a retry after a crash must
            // find it, or it would create a second message. With it, what the
            // request changed is durable too.
            let stored = state.store.idempotency_finish(&claim, now_ms(), remembered);
            let stored = match stored {
                Ok(()) => state.store.commit().await,
                Err(e) => Err(e),
            };
            drop(claim);
            match stored {
                Ok(()) => {
                    req.extensions_mut().insert(Committed);
                }
                Err(e) => tracing::error!(error = %e, "storing an idempotent response failed"),
            }
            Ok(ServiceResponse::new(
                req,
                head.set_body(BoxBody::new(bytes)),
            ))
        }
    }
}
