//! The event type catalog: `/api/v1/event-type`.

use actix_web::{HttpRequest, HttpResponse, web};

use super::extract::Query;
use super::model::{
    EventTypeIn, EventTypeOut, EventTypePatch, ListResponse, Problems, validate_feature_flag,
    validate_schemas,
};
use super::{ApiError, State};
use crate::domain::{EventTypeName, now_ms};
use crate::store::EventTypeRecord;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/event-type").get(list).post(create))
        .service(
            web::resource("/event-type/{name}")
                .get(get)
                .put(update)
                .patch(patch)
                .delete(delete),
        );
}

fn schemas_text(s: Option<serde_json::Map<String, serde_json::Value>>) -> Option<String> {
    s.map(|m| serde_json::Value::Object(m).to_string())
}

fn record(name: EventTypeName, body: EventTypeIn, created_ms: i64) -> EventTypeRecord {
    EventTypeRecord {
        name,
        description: body.description,
        archived: body.archived,
        deprecated: body.deprecated,
        feature_flag: body.feature_flag,
        schemas: schemas_text(body.schemas),
        created_ms,
        updated_ms: now_ms(),
    }
}

fn validate(body: &EventTypeIn, name: Option<&str>) -> Result<Option<EventTypeName>, ApiError> {
    let mut p = Problems::default();
    let parsed = name.and_then(EventTypeName::parse);
    if name.is_some() {
        p.check(
            parsed.is_some(),
            &["body", "name"],
            "must be 1 to 256 characters of a-z, A-Z, 0-9, -, _ or .",
        );
    }
    validate_schemas(&body.schemas, &mut p);
    validate_feature_flag(&body.feature_flag, &mut p);
    p.finish()?;
    Ok(parsed)
}

fn path_name(name: &str) -> Result<EventTypeName, ApiError> {
    EventTypeName::parse(name).ok_or_else(|| ApiError::not_found("Event type"))
}

async fn list(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let query = Query::from_request(&req)?;
    let mut page = query.page()?;
    // The catalog is ordered by name; ascending unless asked otherwise.
    if query.get("order").is_none() {
        page.order = crate::store::Order::Ascending;
    }
    let with_content = query.bool("with_content", false)?;
    let types = state
        .store
        .list_event_types(&page, query.bool("include_archived", false)?)?;
    let data = types
        .items
        .iter()
        .map(|t| EventTypeOut::new(t, with_content))
        .collect();
    Ok(
        HttpResponse::Ok().json(ListResponse::new(data, types.done, |t: &EventTypeOut| {
            t.name.clone()
        })),
    )
}

async fn create(
    state: State,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body: EventTypeIn = state.json(&req, payload).await?;
    let name = validate(&body, Some(body.name.as_deref().unwrap_or("")))?
        .ok_or_else(|| ApiError::invalid(&["body", "name"], "required"))?;
    let et = record(name, body, now_ms());
    state
        .store
        .create_event_type(&et)?
        .map_err(|_| ApiError::Conflict("An event type with this name already exists".into()))?;
    Ok(HttpResponse::Created().json(EventTypeOut::new(&et, true)))
}

async fn get(state: State, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let et = state
        .store
        .get_event_type(&path)?
        .ok_or_else(|| ApiError::not_found("Event type"))?;
    Ok(HttpResponse::Ok().json(EventTypeOut::new(&et, true)))
}

/// PUT replaces an event type, creating it if it does not exist.
async fn update(
    state: State,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let name = path_name(&path)?;
    let body: EventTypeIn = state.json(&req, payload).await?;
    validate(&body, None)?;
    let existing = state.store.get_event_type(name.as_str())?;
    let created_ms = existing.as_ref().map_or(now_ms(), |e| e.created_ms);
    let et = record(name, body, created_ms);
    state.store.put_event_type(&et)?;
    let out = EventTypeOut::new(&et, true);
    Ok(match existing {
        Some(_) => HttpResponse::Ok().json(out),
        None => HttpResponse::Created().json(out),
    })
}

async fn patch(
    state: State,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body: EventTypePatch = state.json(&req, payload).await?;
    let mut et = state
        .store
        .get_event_type(&path)?
        .ok_or_else(|| ApiError::not_found("Event type"))?;
    let mut p = Problems::default();
    if let Some(s) = &body.schemas {
        validate_schemas(s, &mut p);
    }
    if let Some(f) = &body.feature_flag {
        validate_feature_flag(f, &mut p);
    }
    p.finish()?;
    if let Some(d) = body.description {
        et.description = d;
    }
    if let Some(a) = body.archived {
        et.archived = a;
    }
    if let Some(d) = body.deprecated {
        et.deprecated = d;
    }
    if let Some(f) = body.feature_flag {
        et.feature_flag = f;
    }
    if let Some(s) = body.schemas {
        et.schemas = schemas_text(s);
    }
    et.updated_ms = now_ms();
    state.store.put_event_type(&et)?;
    Ok(HttpResponse::Ok().json(EventTypeOut::new(&et, true)))
}

/// DELETE archives the event type; with `expunge=true` it is removed for good.
async fn delete(
    state: State,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let expunge = Query::from_request(&req)?.bool("expunge", false)?;
    let mut et = state
        .store
        .get_event_type(&path)?
        .ok_or_else(|| ApiError::not_found("Event type"))?;
    if expunge {
        state.store.delete_event_type(et.name.as_str())?;
    } else {
        et.archived = true;
        et.updated_ms = now_ms();
        state.store.put_event_type(&et)?;
    }
    Ok(HttpResponse::NoContent().finish())
}
