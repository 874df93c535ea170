//! Messages: publish, list, get, expunge: `/api/v1/app/{app_id}/msg`.

use actix_web::{HttpRequest, HttpResponse, web};

use super::application::create_app;
use super::extract::Query;
use super::model::{ListResponse, MessageIn, MessageOut, payload_json};
use super::{ApiError, State};
use crate::domain::{MessageId, now_ms, valid_uid};
use crate::store::{AppRecord, EndpointRecord, MessageRecord, PageReq, Published};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/app/{app_id}/msg").get(list).post(create))
        .service(web::resource("/app/{app_id}/msg/{msg_id}").get(get))
        .service(web::resource("/app/{app_id}/msg/{msg_id}/content").delete(expunge));
}

/// A message about to be published.
pub(super) struct NewMessage<'a> {
    pub event_type: &'a str,
    pub payload: Vec<u8>,
    pub event_id: Option<String>,
    pub channels: Vec<String>,
    pub tags: Vec<String>,
    /// Deliver only to this endpoint (send-example) instead of every subscriber.
    pub only: Option<&'a EndpointRecord>,
    /// Deliver at this time instead of now.
    pub deliver_at: Option<i64>,
    /// Keep the payload this long instead of the default.
    pub payload_retention_ms: Option<i64>,
}

/// Stores a message with one delivery per matching endpoint, wakes the
/// delivery worker, and returns once the message is durable (a shared group
/// commit).
pub(super) async fn publish(
    state: &State,
    app: &AppRecord,
    new: NewMessage<'_>,
) -> Result<MessageRecord, ApiError> {
    let now = now_ms();
    let msg = MessageRecord {
        id: MessageId::new(now),
        app_id: app.id.clone(),
        event_type: new.event_type.to_owned(),
        event_id: new.event_id,
        channels: new.channels,
        tags: new.tags,
        created_ms: now,
        expunged: false,
        payload_retention_ms: new.payload_retention_ms,
    };
    let every_endpoint;
    let targets: Vec<&EndpointRecord> = match new.only {
        Some(ep) => vec![ep],
        None => {
            every_endpoint = state.store.endpoints_of(&app.id)?;
            every_endpoint
                .iter()
                .filter(|e| e.subscribes(&msg.event_type, &msg.channels))
                .collect()
        }
    };
    let due = new.deliver_at.unwrap_or(now).max(now);
    // The worker is woken once the writes are applied, before their sync (see
    // `Store::publish`).
    let wake = (!targets.is_empty()).then(|| state.delivery.clone());
    match state
        .store
        .publish(&msg, &new.payload, &targets, due, move || {
            if let Some(delivery) = wake {
                delivery.wake();
            }
        })
        .await?
    {
        Published::DuplicateEventId(existing) => {
            return Err(ApiError::Conflict(format!(
                "A message with this eventId already exists ({existing})"
            )));
        }
        Published::Created { .. } => {}
    }
    state.metrics.messages_published.inc();
    Ok(msg)
}

async fn create(
    state: State,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let query = Query::from_request(&req)?;
    let with_content = query.bool("with_content", true)?;
    let body: MessageIn = state.json(&req, payload).await?;
    let deliver_at = body.validate()?;
    let payload_retention_ms = body.retention_ms();
    let app = match state.store.find_app(&path)? {
        Some(app) => app,
        // Svix creates the application on the fly when the message names one.
        None => match body.application {
            Some(app_in) if valid_uid(&path) && crate::domain::AppId::parse(&path).is_none() => {
                app_in.validate()?;
                create_app(&state, app_in, Some(path.into_inner()))?
            }
            _ => return Err(ApiError::not_found("Application")),
        },
    };
    let raw = body.payload.get().as_bytes().to_vec();
    let msg = publish(
        &state,
        &app,
        NewMessage {
            event_type: &body.event_type,
            payload: raw.clone(),
            event_id: body.event_id,
            channels: body.channels.unwrap_or_default(),
            tags: body.tags.unwrap_or_default(),
            only: None,
            deliver_at,
            payload_retention_ms,
        },
    )
    .await?;
    Ok(HttpResponse::Accepted().json(MessageOut::new(&msg, payload_json(Some(raw), with_content))))
}

/// Query filters shared by the message and attempt listings.
pub(super) struct MessageFilter {
    pub event_types: Vec<String>,
    pub channel: Option<String>,
    pub tag: Option<String>,
}

impl MessageFilter {
    pub fn from_query(q: &Query) -> Self {
        Self {
            event_types: q.list("event_types"),
            channel: q.get("channel").map(str::to_owned),
            tag: q.get("tag").map(str::to_owned),
        }
    }

    pub fn keeps(&self, m: &MessageRecord) -> bool {
        (self.event_types.is_empty() || self.event_types.contains(&m.event_type))
            && self.channel.as_ref().is_none_or(|c| m.channels.contains(c))
            && self.tag.as_ref().is_none_or(|t| m.tags.contains(t))
    }

    pub fn is_empty(&self) -> bool {
        self.event_types.is_empty() && self.channel.is_none() && self.tag.is_none()
    }
}

/// `before`/`after` as bounds of IDs that sort by creation time (the
/// lowest ID of a millisecond: `lower_bound`), on every page (clients send
/// them again with the iterator).
pub(super) fn time_bounds<I: ToString>(
    q: &Query,
    page: &mut PageReq,
    lower_bound: fn(i64) -> I,
) -> Result<(), ApiError> {
    let before = q.time("before")?;
    let after = q.time("after")?;
    page.max_id = before.map(|t| lower_bound(t).to_string());
    page.min_id = after.map(|t| lower_bound(t + 1).to_string());
    Ok(())
}

async fn list(
    state: State,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query = Query::from_request(&req)?;
    let mut page = query.page()?;
    time_bounds(&query, &mut page, MessageId::lower_bound)?;
    let with_content = query.bool("with_content", true)?;
    let filter = MessageFilter::from_query(&query);
    let app = state.app(&path)?;
    let msgs = state
        .store
        .list_messages(&app.id, &page, |m| filter.keeps(m))?;
    let data = msgs
        .items
        .iter()
        .map(|m| {
            let payload = if with_content {
                state.store.payload(&m.id)?
            } else {
                None
            };
            Ok(MessageOut::new(m, payload_json(payload, with_content)))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(
        HttpResponse::Ok().json(ListResponse::new(data, msgs.done, |m: &MessageOut| {
            m.id.clone()
        })),
    )
}

pub(super) fn find_message(
    state: &State,
    app: &AppRecord,
    id: &str,
) -> Result<MessageRecord, ApiError> {
    state
        .store
        .find_message(&app.id, id)?
        .ok_or_else(|| ApiError::not_found("Message"))
}

async fn get(
    state: State,
    path: web::Path<(String, String)>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (app_id, msg_id) = path.into_inner();
    let with_content = Query::from_request(&req)?.bool("with_content", true)?;
    let app = state.app(&app_id)?;
    let msg = find_message(&state, &app, &msg_id)?;
    let payload = if with_content {
        state.store.payload(&msg.id)?
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(MessageOut::new(&msg, payload_json(payload, with_content))))
}

/// Removes the payload; the message and its attempts stay listed.
async fn expunge(
    state: State,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (app_id, msg_id) = path.into_inner();
    let app = state.app(&app_id)?;
    let msg = find_message(&state, &app, &msg_id)?;
    // It waits for the writer thread (see `Store::expunge_content`): off
    // the server's thread.
    let store = state.store.clone();
    web::block(move || store.expunge_content(&msg)).await??;
    Ok(HttpResponse::NoContent().finish())
}
