//! Delivery attempts and statuses: listings by message and by endpoint, and resend.

use actix_web::{HttpRequest, HttpResponse, web};

use super::extract::Query;
use super::message::{MessageFilter, find_message, time_bounds};
use super::model::{
    EmptyResponse, EndpointMessageOut, ListResponse, MessageAttemptOut, MessageEndpointOut,
    MessageOut, payload_json,
};
use super::{ApiError, State};
use crate::domain::{AttemptId, EndpointId, MessageId, MessageStatus, now_ms};
use crate::store::AttemptRecord;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/app/{app_id}/attempt/msg/{msg_id}").get(list_by_msg))
        .service(
            web::resource("/app/{app_id}/attempt/endpoint/{endpoint_id}").get(list_by_endpoint),
        )
        .service(web::resource("/app/{app_id}/msg/{msg_id}/attempt/{attempt_id}").get(get))
        .service(
            web::resource("/app/{app_id}/msg/{msg_id}/attempt/{attempt_id}/content")
                .delete(expunge),
        )
        .service(web::resource("/app/{app_id}/msg/{msg_id}/endpoint").get(list_destinations))
        .service(
            web::resource("/app/{app_id}/endpoint/{endpoint_id}/msg").get(list_endpoint_messages),
        )
        .service(
            web::resource("/app/{app_id}/msg/{msg_id}/endpoint/{endpoint_id}/resend").post(resend),
        );
}

/// Attempt filters from the query: `status` and `status_code_class`.
struct AttemptFilter {
    status: Option<MessageStatus>,
    code_class: Option<u16>,
}

impl AttemptFilter {
    fn from_query(q: &Query) -> Result<Self, ApiError> {
        let status = q
            .int("status")?
            .map(|s| {
                MessageStatus::from_code(s)
                    .ok_or_else(|| ApiError::invalid(&["query", "status"], "must be 0, 1, 2 or 3"))
            })
            .transpose()?;
        let code_class = q
            .int("status_code_class")?
            .map(|c| match c {
                0 | 100 | 200 | 300 | 400 | 500 => Ok(c as u16),
                _ => Err(ApiError::invalid(
                    &["query", "status_code_class"],
                    "must be 0, 100, 200, 300, 400 or 500",
                )),
            })
            .transpose()?;
        Ok(Self { status, code_class })
    }

    fn keeps(&self, a: &AttemptRecord) -> bool {
        self.status.is_none_or(|s| a.status == s)
            && self.code_class.is_none_or(|c| match c {
                0 => a.response_status_code < 100,
                c => a.response_status_code / 100 * 100 == c,
            })
    }
}

fn attempts_response(page: crate::store::Page<AttemptRecord>, with_content: bool) -> HttpResponse {
    let data = page
        .items
        .iter()
        .map(|a| MessageAttemptOut::new(a, with_content))
        .collect();
    HttpResponse::Ok().json(ListResponse::new(
        data,
        page.done,
        |a: &MessageAttemptOut| a.id.clone(),
    ))
}

async fn list_by_msg(
    state: State,
    path: web::Path<(String, String)>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (app_id, msg_id) = path.into_inner();
    let query = Query::from_request(&req)?;
    let mut page = query.page()?;
    time_bounds(&query, &mut page, AttemptId::lower_bound)?;
    let filter = AttemptFilter::from_query(&query)?;
    let with_content = query.bool("with_content", true)?;
    let app = state.app(&app_id)?;
    let msg = find_message(&state, &app, &msg_id)?;
    // A deleted endpoint's attempts stay listed under the message: by its
    // ID they are still found.
    let endpoint = match query.get("endpoint_id") {
        Some(e) => match state.store.find_endpoint(&app.id, e)? {
            Some(ep) => Some(ep.id),
            None => Some(EndpointId::parse(e).ok_or_else(|| ApiError::not_found("Endpoint"))?),
        },
        None => None,
    };
    // `event_types`, `channel` and `tag` filter by the message: all of its
    // attempts, or none.
    let of_msg = MessageFilter::from_query(&query).keeps(&msg);
    let attempts = state.store.attempts_of_msg(&msg.id, &page, |a| {
        of_msg && filter.keeps(a) && endpoint.as_ref().is_none_or(|e| &a.ep_id == e)
    })?;
    Ok(attempts_response(attempts, with_content))
}

async fn list_by_endpoint(
    state: State,
    path: web::Path<(String, String)>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (app_id, ep_id) = path.into_inner();
    let query = Query::from_request(&req)?;
    let mut page = query.page()?;
    time_bounds(&query, &mut page, AttemptId::lower_bound)?;
    let filter = AttemptFilter::from_query(&query)?;
    let msg_filter = MessageFilter::from_query(&query);
    let with_content = query.bool("with_content", true)?;
    let app = state.app(&app_id)?;
    let ep = state.endpoint(&app, &ep_id)?;
    let store = &state.store;
    let attempts = store.attempts_of_ep(&ep.id, &page, |a| {
        filter.keeps(a)
            && (msg_filter.is_empty()
                || store
                    .get_message(&app.id, &a.msg_id)
                    .ok()
                    .flatten()
                    .is_some_and(|m| msg_filter.keeps(&m)))
    })?;
    Ok(attempts_response(attempts, with_content))
}

async fn get(
    state: State,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (app_id, msg_id, attempt_id) = path.into_inner();
    let app = state.app(&app_id)?;
    let msg = find_message(&state, &app, &msg_id)?;
    let attempt = AttemptId::parse(&attempt_id)
        .map(|id| state.store.get_attempt(&msg.id, &id))
        .transpose()?
        .flatten()
        .ok_or_else(|| ApiError::not_found("Message attempt"))?;
    Ok(HttpResponse::Ok().json(MessageAttemptOut::new(&attempt, true)))
}

/// Removes the response body of one attempt (an endpoint that answered
/// with what should not be kept); the attempt stays listed.
async fn expunge(
    state: State,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (app_id, msg_id, attempt_id) = path.into_inner();
    let app = state.app(&app_id)?;
    let msg = find_message(&state, &app, &msg_id)?;
    let id = AttemptId::parse(&attempt_id).ok_or_else(|| ApiError::not_found("Message attempt"))?;
    // It waits for the writer thread and the disk: off the server's thread.
    let store = state.store.clone();
    if !web::block(move || store.expunge_attempt_content(&msg.id, &id)).await?? {
        return Err(ApiError::not_found("Message attempt"));
    }
    Ok(HttpResponse::NoContent().finish())
}

/// The endpoints a message was sent to, with its status at each.
async fn list_destinations(
    state: State,
    path: web::Path<(String, String)>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (app_id, msg_id) = path.into_inner();
    let mut page = Query::from_request(&req)?.page()?;
    // Destinations are few and listed in the order they were created.
    page.order = crate::store::Order::Ascending;
    let app = state.app(&app_id)?;
    let msg = find_message(&state, &app, &msg_id)?;
    let dests = state.store.dests_of(&msg, &page)?;
    let mut data = Vec::with_capacity(dests.items.len());
    // An endpoint deleted while its delivery was held in memory is left out.
    for d in &dests.items {
        if let Some(ep) = state.store.get_endpoint(&app.id, &d.ep_id)? {
            data.push(MessageEndpointOut::new(&ep, d));
        }
    }
    let last_read = dests.items.last().map(|d| d.ep_id.to_string());
    Ok(HttpResponse::Ok().json(ListResponse::after(data, dests.done, last_read)))
}

/// The messages sent to an endpoint, with their status there.
async fn list_endpoint_messages(
    state: State,
    path: web::Path<(String, String)>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (app_id, ep_id) = path.into_inner();
    let query = Query::from_request(&req)?;
    let mut page = query.page()?;
    time_bounds(&query, &mut page, MessageId::lower_bound)?;
    let status = AttemptFilter::from_query(&query)?.status;
    let msg_filter = MessageFilter::from_query(&query);
    let with_content = query.bool("with_content", true)?;
    let app = state.app(&app_id)?;
    let ep = state.endpoint(&app, &ep_id)?;
    let store = &state.store;
    let mut messages = Vec::new();
    let dests = store.endpoint_messages(&ep.id, &page, |d| {
        if status.is_some_and(|s| d.status != s) {
            return false;
        }
        match store.get_message(&app.id, &d.msg_id) {
            Ok(Some(m)) if msg_filter.keeps(&m) => {
                messages.push(m);
                true
            }
            _ => false,
        }
    })?;
    let mut data = Vec::with_capacity(dests.items.len());
    for (d, m) in dests.items.iter().zip(messages) {
        let payload = if with_content {
            store.payload(&m.id)?
        } else {
            None
        };
        data.push(EndpointMessageOut::new(
            MessageOut::new(&m, payload_json(payload, with_content)),
            d,
        ));
    }
    Ok(HttpResponse::Ok().json(ListResponse::new(
        data,
        dests.done,
        |e: &EndpointMessageOut| e.message.id.clone(),
    )))
}

/// Queues one manual attempt of a message to an endpoint, now.
async fn resend(
    state: State,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (app_id, msg_id, ep_id) = path.into_inner();
    let app = state.app(&app_id)?;
    let msg = find_message(&state, &app, &msg_id)?;
    let ep = state.endpoint(&app, &ep_id)?;
    if ep.disabled {
        return Err(ApiError::BadRequest("the endpoint is disabled".into()));
    }
    if msg.expunged {
        return Err(ApiError::BadRequest(
            "the message content was expunged".into(),
        ));
    }
    state
        .store
        .queue_manual(&app.id, &msg.id, &ep.id, now_ms())
        .await?;
    // Durable before the answer: see `auth::authenticate`.
    state.delivery.wake();
    Ok(HttpResponse::Accepted().json(EmptyResponse {}))
}
