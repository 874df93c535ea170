//! Endpoints of an application: `/api/v1/app/{app_id}/endpoint`.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};

use super::extract::{Query, format_time, parse_time, read_body};
use super::model::{
    EndpointHeadersIn, EndpointHeadersOut, EndpointHeadersPatchIn, EndpointIn, EndpointOut,
    EndpointPatch, EndpointSecretOut, EndpointSecretRotateIn, EndpointStats, EventExampleIn,
    ListResponse, MessageOut, Problems, RecoverIn, RecoverOut, parse_secret, payload_json,
    validate_headers,
};
use super::{ApiError, State, message};
use crate::domain::{EndpointId, MessageId, MessageStatus, Secret, TaskId, now_ms, valid_uid};
use crate::store::{AppRecord, EndpointRecord, PageReq, RetiredSecret, Taken};

/// Longest grace period of a rotated secret (7 days).
const MAX_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);
const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/app/{app_id}/endpoint")
            .get(list)
            .post(create),
    )
    .service(
        web::resource("/app/{app_id}/endpoint/{endpoint_id}")
            .get(get)
            .put(update)
            .patch(patch)
            .delete(delete),
    )
    .service(web::resource("/app/{app_id}/endpoint/{endpoint_id}/secret").get(get_secret))
    .service(
        web::resource("/app/{app_id}/endpoint/{endpoint_id}/secret/rotate").post(rotate_secret),
    )
    .service(
        web::resource("/app/{app_id}/endpoint/{endpoint_id}/headers")
            .get(get_headers)
            .put(put_headers)
            .patch(patch_headers),
    )
    .service(web::resource("/app/{app_id}/endpoint/{endpoint_id}/stats").get(stats))
    .service(web::resource("/app/{app_id}/endpoint/{endpoint_id}/recover").post(recover))
    .service(web::resource("/app/{app_id}/endpoint/{endpoint_id}/send-example").post(send_example));
}

fn uid_taken(Taken(_): Taken) -> ApiError {
    ApiError::Conflict("An endpoint with this uid already exists in this application".into())
}

async fn list(
    state: State,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let page = Query::from_request(&req)?.page()?;
    let app = state.app(&path)?;
    let eps = state.store.list_endpoints(&app.id, &page)?;
    let data: Vec<EndpointOut> = eps.items.iter().map(EndpointOut::from).collect();
    Ok(HttpResponse::Ok().json(ListResponse::new(data, eps.done, |e| e.id.clone())))
}

/// The configured bounds on an endpoint's lists, checked on what would be stored
/// (so a merge by PATCH cannot grow past them either).
fn within_limits(state: &State, ep: &EndpointRecord) -> Result<(), ApiError> {
    let limits = &state.cfg.limits;
    let mut p = Problems::default();
    p.check(
        ep.event_types.len() <= limits.max_endpoint_event_types,
        &["body", "eventTypes"],
        &format!("at most {} event types", limits.max_endpoint_event_types),
    );
    p.check(
        ep.headers.len() <= limits.max_endpoint_headers,
        &["body", "headers"],
        &format!("at most {} headers", limits.max_endpoint_headers),
    );
    p.finish()
}

/// Stores `new` in place of `old` (PUT, PATCH) and answers with it; a change
/// of `disabled` stops or resumes the endpoint's deliveries.
async fn store_update(
    state: &State,
    app: &AppRecord,
    old: &EndpointRecord,
    mut new: EndpointRecord,
) -> Result<HttpResponse, ApiError> {
    new.updated_ms = now_ms();
    within_limits(state, &new)?;
    if !state.store.update_endpoint(old, &new)?.map_err(uid_taken)? {
        return Err(ApiError::not_found("Endpoint"));
    }
    if new.disabled != old.disabled {
        state.ops.endpoint_toggled(app, &new).await;
    }
    Ok(HttpResponse::Ok().json(EndpointOut::from(&new)))
}

/// Stores a change to one of the endpoint's parts (secret, headers), which
/// leaves its uid and `disabled` as they were.
fn store_changed(state: &State, ep: &EndpointRecord) -> Result<(), ApiError> {
    within_limits(state, ep)?;
    if !state.store.put_endpoint(ep)? {
        return Err(ApiError::not_found("Endpoint"));
    }
    Ok(())
}

fn new_endpoint(
    app: &AppRecord,
    mut body: EndpointIn,
    uid: Option<String>,
) -> Result<EndpointRecord, ApiError> {
    let fields = body.validate()?;
    let now = now_ms();
    let mut ep = EndpointRecord {
        id: EndpointId::new(now),
        app_id: app.id.clone(),
        uid: None,
        url: fields.url.clone(),
        description: String::new(),
        version: 1,
        rate_limit: None,
        disabled: false,
        event_types: Vec::new(),
        channels: Vec::new(),
        headers: Default::default(),
        metadata: Default::default(),
        secret: fields.secret.clone().unwrap_or_else(Secret::generate),
        retired_secrets: Vec::new(),
        created_ms: now,
        updated_ms: now,
        credentials: None,
        client_cert: None,
    };
    body.apply(fields, &mut ep);
    if uid.is_some() {
        ep.uid = uid;
    }
    Ok(ep)
}

async fn create(
    state: State,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body: EndpointIn = state.json(&req, payload).await?;
    let app = state.app(&path)?;
    let ep = new_endpoint(&app, body, None)?;
    within_limits(&state, &ep)?;
    state.store.create_endpoint(&ep)?.map_err(uid_taken)?;
    Ok(HttpResponse::Created().json(EndpointOut::from(&ep)))
}

async fn get(state: State, path: web::Path<(String, String)>) -> Result<HttpResponse, ApiError> {
    let (app_id, ep_id) = path.into_inner();
    let app = state.app(&app_id)?;
    Ok(HttpResponse::Ok().json(EndpointOut::from(&state.endpoint(&app, &ep_id)?)))
}

/// PUT replaces the endpoint's settings (not its secret), or creates it when the
/// path is an unknown uid.
async fn update(
    state: State,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (app_id, ep_id) = path.into_inner();
    let mut body: EndpointIn = state.json(&req, payload).await?;
    let app = state.app(&app_id)?;
    let Some(old) = state.store.find_endpoint(&app.id, &ep_id)? else {
        if EndpointId::parse(&ep_id).is_some() || !valid_uid(&ep_id) {
            return Err(ApiError::not_found("Endpoint"));
        }
        let ep = new_endpoint(&app, body, Some(ep_id))?;
        within_limits(&state, &ep)?;
        state.store.create_endpoint(&ep)?.map_err(uid_taken)?;
        return Ok(HttpResponse::Created().json(EndpointOut::from(&ep)));
    };
    let fields = body.validate()?;
    let mut new = old.clone();
    body.apply(fields, &mut new);
    store_update(&state, &app, &old, new).await
}

async fn patch(
    state: State,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (app_id, ep_id) = path.into_inner();
    let body: EndpointPatch = state.json(&req, payload).await?;
    let app = state.app(&app_id)?;
    let old = state.endpoint(&app, &ep_id)?;
    let mut new = old.clone();
    body.apply(&mut new)?;
    store_update(&state, &app, &old, new).await
}

async fn delete(state: State, path: web::Path<(String, String)>) -> Result<HttpResponse, ApiError> {
    let (app_id, ep_id) = path.into_inner();
    let app = state.app(&app_id)?;
    let ep = state.endpoint(&app, &ep_id)?;
    let store = state.store.clone();
    web::block(move || store.delete_endpoint(&ep)).await??;
    Ok(HttpResponse::NoContent().finish())
}

async fn get_secret(
    state: State,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (app_id, ep_id) = path.into_inner();
    let app = state.app(&app_id)?;
    let ep = state.endpoint(&app, &ep_id)?;
    Ok(HttpResponse::Ok().json(EndpointSecretOut {
        key: ep.secret.expose(),
    }))
}

/// Replaces the signing secret. The old one keeps signing (alongside the new) for
/// `gracePeriodSeconds` (default 24 h, at most 7 days). Returns the new key.
async fn rotate_secret(
    state: State,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (app_id, ep_id) = path.into_inner();
    let raw = read_body(&req, payload, state.cfg.max_payload_bytes).await?;
    let body: EndpointSecretRotateIn = if raw.iter().all(u8::is_ascii_whitespace) {
        EndpointSecretRotateIn::default()
    } else {
        state.parse_json(&raw)?
    };
    let mut p = Problems::default();
    let key = body
        .key
        .as_deref()
        .and_then(|k| parse_secret(k, &mut p, &["body", "key"]));
    let grace = match body.grace_period_seconds {
        None => DEFAULT_GRACE,
        Some(s) if s < 0 || s as u64 > MAX_GRACE.as_secs() => {
            p.add(
                &["body", "gracePeriodSeconds"],
                "must be between 0 and 604800",
            );
            DEFAULT_GRACE
        }
        Some(s) => Duration::from_secs(s as u64),
    };
    p.finish()?;
    let app = state.app(&app_id)?;
    let mut ep = state.endpoint(&app, &ep_id)?;
    let now = now_ms();
    let new_secret = key.unwrap_or_else(Secret::generate);
    let old = std::mem::replace(&mut ep.secret, new_secret);
    ep.retired_secrets.retain(|r| r.expires_ms > now);
    if !grace.is_zero() {
        ep.retired_secrets.push(RetiredSecret {
            secret: old,
            expires_ms: now + grace.as_millis() as i64,
        });
    }
    ep.updated_ms = now;
    store_changed(&state, &ep)?;
    Ok(HttpResponse::Ok().json(EndpointSecretOut {
        key: ep.secret.expose(),
    }))
}

async fn get_headers(
    state: State,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (app_id, ep_id) = path.into_inner();
    let app = state.app(&app_id)?;
    let ep = state.endpoint(&app, &ep_id)?;
    Ok(HttpResponse::Ok().json(EndpointHeadersOut {
        headers: ep.headers,
        sensitive: Vec::new(),
    }))
}

async fn put_headers(
    state: State,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (app_id, ep_id) = path.into_inner();
    let body: EndpointHeadersIn = state.json(&req, payload).await?;
    let mut p = Problems::default();
    validate_headers(&body.headers, "headers", &mut p);
    p.finish()?;
    let app = state.app(&app_id)?;
    let mut ep = state.endpoint(&app, &ep_id)?;
    ep.headers = body.headers;
    ep.updated_ms = now_ms();
    store_changed(&state, &ep)?;
    Ok(HttpResponse::NoContent().finish())
}

/// PATCH merges headers: a `null` value or a name in `deleteHeaders` removes one.
async fn patch_headers(
    state: State,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (app_id, ep_id) = path.into_inner();
    let body: EndpointHeadersPatchIn = state.json(&req, payload).await?;
    let set: std::collections::BTreeMap<String, String> = body
        .headers
        .iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
        .collect();
    let mut p = Problems::default();
    validate_headers(&set, "headers", &mut p);
    p.finish()?;
    let app = state.app(&app_id)?;
    let mut ep = state.endpoint(&app, &ep_id)?;
    for (k, v) in &body.headers {
        if v.is_none() {
            ep.headers.remove(k);
        }
    }
    for k in &body.delete_headers {
        ep.headers.remove(k);
    }
    ep.headers.extend(set);
    ep.updated_ms = now_ms();
    store_changed(&state, &ep)?;
    Ok(HttpResponse::NoContent().finish())
}

/// The delivery statuses of the messages sent to an endpoint, optionally between
/// `since` and `until` (by message time).
async fn stats(
    state: State,
    path: web::Path<(String, String)>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (app_id, ep_id) = path.into_inner();
    let query = Query::from_request(&req)?;
    let since = query.time("since")?;
    let until = query.time("until")?;
    let app = state.app(&app_id)?;
    let ep = state.endpoint(&app, &ep_id)?;
    let store = state.store.clone();
    let stats = web::block(move || {
        let req = PageReq {
            min_id: since.map(|t| MessageId::lower_bound(t).to_string()),
            max_id: until.map(|t| MessageId::lower_bound(t).to_string()),
            ..PageReq::first(usize::MAX - 1)
        };
        let mut s = EndpointStats::default();
        store.endpoint_messages(&ep.id, &req, |d| {
            match d.status {
                MessageStatus::Success => s.success += 1,
                MessageStatus::Pending => s.pending += 1,
                MessageStatus::Fail => s.fail += 1,
                MessageStatus::Sending => s.sending += 1,
            }
            false
        })?;
        Ok::<_, crate::store::StoreError>(s)
    })
    .await??;
    Ok(HttpResponse::Ok().json(stats))
}

/// Queues again every message that failed to this endpoint since `since` (and
/// before `until`), each with a fresh retry schedule.
async fn recover(
    state: State,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (app_id, ep_id) = path.into_inner();
    let body: RecoverIn = state.json(&req, payload).await?;
    let mut p = Problems::default();
    let since = parse_time(&body.since);
    p.check(
        since.is_some(),
        &["body", "since"],
        "not an RFC 3339 timestamp",
    );
    let until = body.until.as_deref().map(parse_time);
    p.check(
        !matches!(until, Some(None)),
        &["body", "until"],
        "not an RFC 3339 timestamp",
    );
    p.finish()?;
    let (since, until) = (since.unwrap_or(0), until.flatten());
    let app = state.app(&app_id)?;
    let ep = state.endpoint(&app, &ep_id)?;
    let store = state.store.clone();
    let now = now_ms();
    let task_id = TaskId::new(now);
    let queued = web::block(move || store.recover(&ep.id, since, until, now)).await??;
    tracing::info!(endpoint_id = %ep_id, queued, "recover queued failed messages");
    state.delivery.wake();
    Ok(HttpResponse::Accepted().json(RecoverOut {
        id: task_id.to_string(),
        status: "running",
        task: "endpoint.recover",
        updated_at: format_time(now),
    }))
}

/// Sends an example event to this one endpoint: the given `payload`, else an
/// example from the event type's schema, else a small stand-in object.
async fn send_example(
    state: State,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (app_id, ep_id) = path.into_inner();
    let body: EventExampleIn = state.json(&req, payload).await?;
    if !valid_uid(&body.event_type) {
        return Err(ApiError::invalid(
            &["body", "eventType"],
            "not a valid event type name",
        ));
    }
    let app = state.app(&app_id)?;
    let ep = state.endpoint(&app, &ep_id)?;
    if ep.disabled {
        return Err(ApiError::BadRequest("the endpoint is disabled".into()));
    }
    let example = match body.payload {
        Some(p) => p.get().to_owned(),
        None => schema_example(&state, &body.event_type, body.example_index.unwrap_or(0))?
            .unwrap_or_else(|| {
                serde_json::json!({ "eventType": body.event_type, "example": true }).to_string()
            }),
    };
    if !example.trim_start().starts_with('{') {
        return Err(ApiError::invalid(
            &["body", "payload"],
            "the payload must be a JSON object",
        ));
    }
    let msg = message::publish(
        &state,
        &app,
        message::NewMessage {
            event_type: &body.event_type,
            payload: example.into_bytes(),
            event_id: None,
            channels: Vec::new(),
            tags: Vec::new(),
            only: Some(&ep),
            deliver_at: None,
            payload_retention_ms: None,
        },
    )
    .await?;
    let out = MessageOut::new(&msg, payload_json(state.store.payload(&msg.id)?, true));
    Ok(HttpResponse::Ok().json(out))
}

/// `examples[index]` of the newest schema version of an event type, if it has one.
fn schema_example(
    state: &State,
    event_type: &str,
    index: usize,
) -> Result<Option<String>, ApiError> {
    let Some(et) = state.store.get_event_type(event_type)? else {
        return Ok(None);
    };
    let Some(schemas) = et
        .schemas
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
    else {
        return Ok(None);
    };
    let newest = schemas.as_object().and_then(|m| {
        m.iter()
            .max_by_key(|(v, _)| v.parse::<u64>().unwrap_or(0))
            .map(|(_, s)| s.clone())
    });
    Ok(newest
        .and_then(|s| s.get("examples").and_then(|e| e.get(index)).cloned())
        .filter(|e| e.is_object())
        .map(|e| e.to_string()))
}
