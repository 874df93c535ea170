//! The event type catalog.

use actix_web::{HttpRequest, web};
use askama::Template;

use super::view;
use super::{Layout, PageResult, State, render};
use crate::store::{Order, PageReq};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/event-types", web::get().to(event_types));
}

pub struct EventTypeRow {
    pub name: String,
    pub description: String,
    pub archived: bool,
    pub deprecated: bool,
    pub feature_flag: String,
    pub schemas: Option<String>,
    pub updated: String,
}

#[derive(Template)]
#[template(path = "event_types.html")]
struct EventTypesPage {
    layout: Layout,
    types: Vec<EventTypeRow>,
}

async fn event_types(state: State, req: HttpRequest) -> PageResult {
    let layout = Layout::new(&req, "event-types")?;
    let all = PageReq {
        order: Order::Ascending,
        ..PageReq::first(10_000)
    };
    let types = state
        .store
        .list_event_types(&all, true)?
        .items
        .into_iter()
        .map(|t| EventTypeRow {
            name: t.name.to_string(),
            description: t.description,
            archived: t.archived,
            deprecated: t.deprecated,
            feature_flag: t.feature_flag.unwrap_or_default(),
            schemas: t
                .schemas
                .map(|s| view::pretty_json(s.as_bytes(), view::PAYLOAD_PREVIEW_BYTES).0),
            updated: view::time(t.updated_ms),
        })
        .collect();
    render(&EventTypesPage { layout, types })
}
