//! `ApiError`: every way an API request can fail, rendered as Svix does.
//!
//! Client errors carry a message for the caller: `{"code": …, "detail": …}`, or
//! for 422 `{"detail": [{"loc": […], "msg": …, "type": …}]}`. `Internal` hides
//! its cause from the client (an opaque 500) and logs it once.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::store::StoreError;

/// One entry of a 422 body.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ValidationItem {
    pub loc: Vec<String>,
    pub msg: String,
    #[serde(rename = "type")]
    pub kind: String,
}

impl ValidationItem {
    /// A value error at `loc` (e.g. `["body", "url"]`).
    pub fn new(loc: &[&str], msg: impl Into<String>) -> Self {
        Self {
            loc: loc.iter().map(|s| s.to_string()).collect(),
            msg: msg.into(),
            kind: "value_error".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("validation failed")]
    Validation(Vec<ValidationItem>),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{detail}")]
    TooManyRequests {
        detail: String,
        retry_after: std::time::Duration,
    },
    #[error("internal error: {0}")]
    Internal(#[from] StoreError),
    #[error("internal error: {0}")]
    Blocking(String),
}

impl ApiError {
    pub fn invalid(loc: &[&str], msg: impl Into<String>) -> Self {
        Self::Validation(vec![ValidationItem::new(loc, msg)])
    }

    pub fn not_found(what: &str) -> Self {
        Self::NotFound(format!("{what} not found"))
    }

    fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unauthorized(_) => "authentication_failed",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::Validation(_) => "validation",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::TooManyRequests { .. } => "rate_limited",
            Self::Internal(_) | Self::Blocking(_) => "server_error",
        }
    }
}

#[derive(Serialize)]
struct HttpErrorOut<'a> {
    code: &'a str,
    detail: String,
}

#[derive(Serialize)]
struct ValidationOut<'a> {
    detail: &'a [ValidationItem],
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) | Self::Blocking(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        if let Self::TooManyRequests { retry_after, .. } = self {
            // Whole seconds, rounded up: never tell a client to retry too early.
            let secs = retry_after.as_millis().div_ceil(1000).max(1);
            res.insert_header((actix_web::http::header::RETRY_AFTER, secs.to_string()));
        }
        match self {
            Self::Validation(items) => res.json(ValidationOut { detail: items }),
            Self::Internal(_) | Self::Blocking(_) => {
                tracing::error!(error = %self, "request failed");
                res.json(HttpErrorOut {
                    code: self.code(),
                    detail: "Internal Server Error".into(),
                })
            }
            _ => res.json(HttpErrorOut {
                code: self.code(),
                detail: self.to_string(),
            }),
        }
    }
}

impl From<actix_web::error::BlockingError> for ApiError {
    fn from(e: actix_web::error::BlockingError) -> Self {
        Self::Blocking(e.to_string())
    }
}
