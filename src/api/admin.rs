//! Operator routes under `/api/v1/webhookd` (admin token only; not part of the
//! Svix API): an online backup, and replacing the admin token.

use actix_web::http::header;
use actix_web::{HttpResponse, web};

use super::{ApiError, State};
use crate::admin::RotateError;
use crate::domain::now_ms;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/webhookd/backup").get(backup))
        .service(web::resource("/webhookd/admin-token/rotate").post(rotate_admin_token));
}

/// Replaces the admin token (see `webhookd token rotate`): the new one is
/// written to the token file, never sent; the old one stops working at once,
/// and dashboard sessions end.
async fn rotate_admin_token(state: State) -> Result<HttpResponse, ApiError> {
    match state.admin_token.rotate() {
        Ok(()) => {
            tracing::info!("admin token replaced");
            Ok(HttpResponse::NoContent().finish())
        }
        Err(e @ RotateError::Configured) => Err(ApiError::Conflict(e.to_string())),
        Err(e) => {
            tracing::error!(error = %e, "replacing the admin token failed");
            Err(ApiError::BadRequest(e.to_string()))
        }
    }
}

/// A consistent copy of the database (see `webhookd backup`). Writes wait
/// while it is taken into a temporary file in the data dir, then it streams.
async fn backup(state: State) -> Result<HttpResponse, ApiError> {
    let store = state.store.clone();
    let (file, summary) = web::block(move || store.backup_to_temp_file()).await??;
    tracing::info!(
        entries = summary.entries,
        bytes = summary.bytes,
        "backup taken"
    );
    let body = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
    let name = format!(
        "webhookd-{}.backup",
        crate::domain::format_time(now_ms()).replace([':', '.'], "-")
    );
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}\""),
        ))
        .body(actix_web::body::SizedStream::new(summary.bytes, body)))
}
