//! Application-scoped API tokens: `/api/v1/webhookd/token` (admin only; not part
//! of the Svix API). A token is shown once, in the answer to its creation.

use actix_web::{HttpRequest, HttpResponse, web};

use super::extract::Query;
use super::model::{ListResponse, TokenIn, TokenOut};
use super::{ApiError, State};
use crate::domain::{TokenId, now_ms};
use crate::store::TokenRecord;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/webhookd/token").get(list).post(create))
        .service(
            web::resource("/webhookd/token/{token_id}")
                .get(get)
                .delete(delete),
        );
}

fn token(state: &State, id: &str) -> Result<TokenRecord, ApiError> {
    TokenId::parse(id)
        .map(|id| state.store.get_token(&id))
        .transpose()?
        .flatten()
        .ok_or_else(|| ApiError::not_found("Token"))
}

/// `?app_id=` (an id or uid) lists one application's tokens.
async fn list(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let query = Query::from_request(&req)?;
    let app = match query.get("app_id") {
        Some(a) => Some(state.app(a)?.id),
        None => None,
    };
    let page = state.store.list_tokens(&query.page()?, app.as_ref())?;
    let data: Vec<TokenOut> = page.items.iter().map(TokenOut::from).collect();
    Ok(HttpResponse::Ok().json(ListResponse::new(data, page.done, |t| t.id.clone())))
}

async fn create(
    state: State,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body: TokenIn = state.json(&req, payload).await?;
    body.validate()?;
    let app = state.app(&body.app_id)?;
    if state.ops.is_reserved(&app.id) {
        return Err(super::auth::operational_is_configured());
    }
    let (rec, secret) = state
        .store
        .issue_token(&app.id, body.description, now_ms())?;
    let mut out = TokenOut::from(&rec);
    out.token = Some(secret);
    Ok(HttpResponse::Created().json(out))
}

async fn get(state: State, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(TokenOut::from(&token(&state, &path)?)))
}

/// Revokes at once: the next request with the token is refused.
async fn delete(state: State, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let rec = token(&state, &path)?;
    state.store.delete_token(&rec)?;
    Ok(HttpResponse::NoContent().finish())
}
