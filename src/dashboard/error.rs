//! `DashboardError`: failures rendered as a readable HTML page.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use askama::Template;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    TooLarge(String),
    #[error("internal error: {0}")]
    Internal(#[from] StoreError),
    #[error("internal error: {0}")]
    Render(#[from] askama::Error),
    #[error("internal error: {0}")]
    Blocking(String),
}

impl From<actix_web::error::BlockingError> for DashboardError {
    fn from(e: actix_web::error::BlockingError) -> Self {
        Self::Blocking(e.to_string())
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    title: &'a str,
    message: String,
}

impl ResponseError for DashboardError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Internal(_) | Self::Render(_) | Self::Blocking(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let message = match self {
            Self::Internal(_) | Self::Render(_) | Self::Blocking(_) => {
                tracing::error!(error = %self, "dashboard request failed");
                "Something went wrong on the server; the details are in its log.".to_owned()
            }
            other => other.to_string(),
        };
        let page = ErrorPage {
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("Error"),
            message,
        };
        let body = page
            .render()
            .unwrap_or_else(|_| "<!doctype html><title>Error</title><p>Error</p>".to_owned());
        HttpResponse::build(status)
            .content_type("text/html; charset=utf-8")
            .body(body)
    }
}

/// A form the dashboard cannot read (too large, a field missing or
/// malformed, as no form of its pages sends): a page that says so rather
/// than actix-web's plain text.
pub fn unreadable_form(
    e: actix_web::error::UrlencodedError,
    _: &actix_web::HttpRequest,
) -> actix_web::Error {
    use actix_web::error::UrlencodedError;
    match e {
        UrlencodedError::Overflow { limit, .. } => DashboardError::TooLarge(format!(
            "The form is larger than the dashboard accepts ({} KiB).",
            limit / 1024
        )),
        e => DashboardError::BadRequest(format!("The form could not be read: {e}")),
    }
    .into()
}

/// A query string the dashboard cannot read: a page that says so.
pub fn unreadable_query(
    e: actix_web::error::QueryPayloadError,
    _: &actix_web::HttpRequest,
) -> actix_web::Error {
    DashboardError::BadRequest(format!("The address could not be read: {e}")).into()
}
