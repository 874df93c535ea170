//! Operator routes under `/api/v1/webhookd` (admin token only; not part of the
//! Svix API): an online backup, and replacing the admin token.

use actix_web::http::header;
use actix_web::{HttpResponse, web};

use super::{ApiError, State};
use crate::domain::now_ms;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/webhookd/backup").get(backup));
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
