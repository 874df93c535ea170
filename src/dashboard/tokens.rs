//! Application-scoped API tokens: list, create (the token is shown on the page
//! that answers the form, once, and never again), revoke.

use actix_web::{HttpRequest, web};
use askama::Template;
use serde::Deserialize;

use super::session::check_csrf;
use super::{DashboardError, Layout, PageResult, State, render, see_other, view};
use crate::domain::{TokenId, now_ms};
use crate::store::PageReq;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/tokens", web::get().to(tokens))
        .route("/tokens", web::post().to(create))
        .route("/tokens/{token_id}/revoke", web::post().to(revoke));
}

/// How many tokens and applications the page lists.
const LIST_LIMIT: usize = 500;

pub struct TokenRow {
    pub id: String,
    pub app_id: String,
    pub app_name: String,
    pub description: String,
    pub created: String,
}

pub struct AppChoice {
    pub id: String,
    pub label: String,
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage {
    layout: Layout,
    tokens: Vec<TokenRow>,
    apps: Vec<AppChoice>,
    /// A token just created: shown this once.
    created: Option<String>,
}

fn page(state: &State, req: &HttpRequest, created: Option<String>) -> PageResult {
    let layout = Layout::new(req, "tokens")?;
    let apps_page = state.store.list_apps(&PageReq::first(LIST_LIMIT))?;
    let name_of = |id: &str| {
        apps_page
            .items
            .iter()
            .find(|a| a.id.as_str() == id)
            .map(|a| a.name.clone())
    };
    let mut tokens = Vec::new();
    for t in state
        .store
        .list_tokens(&PageReq::first(LIST_LIMIT), None)?
        .items
    {
        let app_name = match name_of(t.app_id.as_str()) {
            Some(n) => n,
            None => state
                .store
                .find_app(t.app_id.as_str())?
                .map(|a| a.name)
                .unwrap_or_default(),
        };
        tokens.push(TokenRow {
            id: t.id.to_string(),
            app_id: t.app_id.to_string(),
            app_name,
            description: t.description,
            created: view::time(t.created_ms),
        });
    }
    let apps = apps_page
        .items
        .iter()
        .filter(|a| a.uid.as_deref() != Some(crate::delivery::operational::APP_UID))
        .map(|a| AppChoice {
            id: a.id.to_string(),
            label: match &a.uid {
                Some(uid) => format!("{} ({uid})", a.name),
                None => format!("{} ({})", a.name, a.id),
            },
        })
        .collect();
    render(&TokensPage {
        layout,
        tokens,
        apps,
        created,
    })
}

async fn tokens(state: State, req: HttpRequest) -> PageResult {
    page(&state, &req, None)
}

#[derive(Deserialize)]
struct CreateForm {
    #[serde(default)]
    csrf: String,
    app: String,
    #[serde(default)]
    description: String,
}

/// Answers with the page itself (not a redirect), so the token is never in a URL.
async fn create(state: State, req: HttpRequest, form: web::Form<CreateForm>) -> PageResult {
    check_csrf(&req, &form.csrf)?;
    let app = state
        .store
        .find_app(form.app.trim())?
        .ok_or(DashboardError::NotFound("no such application"))?;
    if state.ops.is_reserved(&app.id) {
        return Err(DashboardError::BadRequest(
            "The operational application is webhookd's own: it gets no tokens.".into(),
        ));
    }
    let description = form.description.trim();
    if description.chars().count() > 256 {
        return Err(DashboardError::BadRequest(
            "A description has at most 256 characters.".into(),
        ));
    }
    let (_, token) = state
        .store
        .issue_token(&app.id, description.to_owned(), now_ms())?;
    page(&state, &req, Some(token))
}

async fn revoke(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
    form: web::Form<super::CsrfForm>,
) -> PageResult {
    check_csrf(&req, &form.csrf)?;
    let token = TokenId::parse(&path)
        .map(|id| state.store.get_token(&id))
        .transpose()?
        .flatten()
        .ok_or(DashboardError::NotFound("no such token"))?;
    state.store.delete_token(&token)?;
    Ok(see_other("/tokens", Some("Token revoked.")))
}
