//! Applications (tenants): `/api/v1/app`.

use actix_web::{HttpRequest, HttpResponse, web};

use super::extract::Query;
use super::model::{ApplicationIn, ApplicationOut, ApplicationPatch, ListResponse};
use super::{ApiError, State};
use crate::domain::{AppId, now_ms, valid_uid};
use crate::store::{AppRecord, Taken};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/app").get(list).post(create))
        .service(
            web::resource("/app/{app_id}")
                .get(get)
                .put(update)
                .patch(patch)
                .delete(delete),
        );
}

fn uid_taken(Taken(_): Taken) -> ApiError {
    ApiError::Conflict("An application with this uid already exists".into())
}

async fn list(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let page = Query::from_request(&req)?.page()?;
    let apps = state.store.list_apps(&page)?;
    let data: Vec<ApplicationOut> = apps.items.iter().map(ApplicationOut::from).collect();
    Ok(HttpResponse::Ok().json(ListResponse::new(data, apps.done, |a| a.id.clone())))
}

/// Stores a new application from a validated body.
pub(super) fn create_app(
    state: &State,
    body: ApplicationIn,
    uid: Option<String>,
) -> Result<AppRecord, ApiError> {
    let now = now_ms();
    let app = AppRecord {
        id: AppId::new(now),
        uid: uid.or(body.uid),
        name: body.name,
        rate_limit: body.throttle_rate,
        metadata: body.metadata.unwrap_or_default(),
        created_ms: now,
        updated_ms: now,
    };
    state.store.create_app(&app)?.map_err(uid_taken)?;
    Ok(app)
}

async fn create(
    state: State,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let query = Query::from_request(&req)?;
    let body: ApplicationIn = state.json(&req, payload).await?;
    body.validate()?;
    if query.bool("get_if_exists", false)?
        && let Some(uid) = &body.uid
        && let Some(existing) = state.store.find_app(uid)?
    {
        return Ok(HttpResponse::Ok().json(ApplicationOut::from(&existing)));
    }
    let app = create_app(&state, body, None)?;
    Ok(HttpResponse::Created().json(ApplicationOut::from(&app)))
}

async fn get(state: State, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let app = state.app(&path)?;
    Ok(HttpResponse::Ok().json(ApplicationOut::from(&app)))
}

/// PUT replaces the application, or creates it when the path is an unknown uid.
async fn update(
    state: State,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body: ApplicationIn = state.json(&req, payload).await?;
    body.validate()?;
    let Some(old) = state.store.find_app(&path)? else {
        // Neither an ID nor a uid one could be created with: nothing to find.
        if AppId::parse(&path).is_some() || !valid_uid(&path) {
            return Err(ApiError::not_found("Application"));
        }
        let app = create_app(&state, body, Some(path.into_inner()))?;
        return Ok(HttpResponse::Created().json(ApplicationOut::from(&app)));
    };
    let new = AppRecord {
        uid: body.uid,
        name: body.name,
        rate_limit: body.throttle_rate,
        metadata: body.metadata.unwrap_or_default(),
        updated_ms: now_ms(),
        ..old.clone()
    };
    if !state.store.update_app(&old, &new)?.map_err(uid_taken)? {
        return Err(ApiError::not_found("Application"));
    }
    Ok(HttpResponse::Ok().json(ApplicationOut::from(&new)))
}

async fn patch(
    state: State,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body: ApplicationPatch = state.json(&req, payload).await?;
    let old = state.app(&path)?;
    let mut new = old.clone();
    body.apply(&mut new)?;
    new.updated_ms = now_ms();
    if !state.store.update_app(&old, &new)?.map_err(uid_taken)? {
        return Err(ApiError::not_found("Application"));
    }
    Ok(HttpResponse::Ok().json(ApplicationOut::from(&new)))
}

async fn delete(state: State, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let app = state.app(&path)?;
    let store = state.store.clone();
    web::block(move || store.delete_app(&app)).await??;
    Ok(HttpResponse::NoContent().finish())
}
