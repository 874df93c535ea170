//! The bench's HTTP client: one awc client, used alike for the `direct`
//! ceiling and for webhookd, and the few API and dashboard calls the
//! scenarios need. Everything goes through webhookd's public HTTP surface.

use std::time::Duration;

use actix_web::http::header;
use actix_web::web::Bytes;
use anyhow::{Context as _, anyhow, bail};
use awc::Client;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Largest response body the bench reads.
const BODY_LIMIT: usize = 8 * 1024 * 1024;

/// A client with room for `connections` connections and a time limit per request.
/// Redirects are not followed (the dashboard's sign-in answers 303 with the cookie).
pub fn client(connections: usize, timeout: Duration) -> Client {
    Client::builder()
        .connector(
            awc::Connector::new()
                .limit(connections)
                .timeout(Duration::from_secs(5)),
        )
        .timeout(timeout)
        .disable_redirects()
        .finish()
}

/// A webhookd, through its API.
#[derive(Clone)]
pub struct Api {
    pub client: Client,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    token: String,
    auth: String,
}

/// What the bench reads of one of webhookd's attempts.
#[derive(Deserialize, Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub url: String,
    pub timestamp: String,
    /// 0 when no answer came (refused, reset, timed out).
    pub response_status_code: u16,
    pub response_duration_ms: u64,
    /// 0 scheduled, 1 manual.
    pub trigger_type: u8,
}

#[derive(Deserialize)]
struct WithId {
    id: String,
}

/// The JSON body of a successful answer to `request` (`METHOD URL`), or
/// an error with the status and body of any other.
async fn json_answer<T: DeserializeOwned>(
    request: &str,
    mut resp: awc::ClientResponse,
) -> anyhow::Result<T> {
    let bytes = resp.body().limit(BODY_LIMIT).await?;
    if !resp.status().is_success() {
        bail!(
            "{request}: {} {}",
            resp.status(),
            String::from_utf8_lossy(&bytes)
        );
    }
    serde_json::from_slice(&bytes).with_context(|| format!("{request}: not the JSON expected"))
}

impl Api {
    pub fn new(client: Client, base: &str, token: &str) -> Api {
        Api {
            client,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            auth: format!("Bearer {token}"),
        }
    }

    async fn post_json(&self, path: &str, body: Value) -> anyhow::Result<String> {
        let url = format!("{}/api/v1{path}", self.base);
        let resp = self
            .client
            .post(&url)
            .insert_header((header::AUTHORIZATION, self.auth.as_str()))
            .send_json(&body)
            .await
            .map_err(|e| anyhow!("POST {url}: {e}"))?;
        Ok(json_answer::<WithId>(&format!("POST {url}"), resp)
            .await?
            .id)
    }

    /// Creates an application; returns its id.
    pub async fn create_app(&self, name: &str) -> anyhow::Result<String> {
        self.post_json("/app", json!({ "name": name })).await
    }

    /// Creates an endpoint of `app` that receives every event type; returns its id.
    pub async fn create_endpoint(&self, app: &str, url: &str) -> anyhow::Result<String> {
        self.post_json(&format!("/app/{app}/endpoint"), json!({ "url": url }))
            .await
    }

    /// Where messages of `app` are published.
    pub fn msg_url(&self, app: &str) -> String {
        format!("{}/api/v1/app/{app}/msg", self.base)
    }

    /// Publishes one message (the body is the whole `MessageIn` JSON); returns its id.
    pub async fn publish(&self, url: &str, body: Bytes) -> anyhow::Result<String> {
        let mut resp = self
            .client
            .post(url)
            .insert_header((header::AUTHORIZATION, self.auth.as_str()))
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .send_body(body)
            .await
            .map_err(|e| anyhow!("publish: {e}"))?;
        let bytes = resp.body().limit(BODY_LIMIT).await?;
        if resp.status().as_u16() != 202 {
            bail!(
                "publish: {} {}",
                resp.status(),
                String::from_utf8_lossy(&bytes)
            );
        }
        Ok(serde_json::from_slice::<WithId>(&bytes)
            .context("publish: no id in the answer")?
            .id)
    }

    /// The attempts of message `msg` of `app` (up to 100, newest first).
    pub async fn attempts(&self, app: &str, msg: &str) -> anyhow::Result<Vec<Attempt>> {
        #[derive(Deserialize)]
        struct List {
            data: Vec<Attempt>,
        }
        let (request, resp) = self
            .get_with_token(&format!("/api/v1/app/{app}/attempt/msg/{msg}?limit=100"))
            .await?;
        Ok(json_answer::<List>(&request, resp).await?.data)
    }

    /// `GET` of `path` (from the base URL on) with the token: the request as
    /// errors name it (`GET URL`), and the answer.
    async fn get_with_token(&self, path: &str) -> anyhow::Result<(String, awc::ClientResponse)> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .client
            .get(&url)
            .insert_header((header::AUTHORIZATION, self.auth.as_str()))
            .send()
            .await
            .map_err(|e| anyhow!("GET {url}: {e}"))?;
        Ok((format!("GET {url}"), resp))
    }

    /// `GET /api/v1/webhookd/health`, the full report (with the token).
    pub async fn health_report(&self) -> anyhow::Result<Value> {
        let (request, mut resp) = self.get_with_token("/api/v1/webhookd/health").await?;
        if resp.status() == 401 {
            bail!(
                "{request}: 401; the health report's queue needs the admin token \
                 (or metrics.token where that is set) as --token"
            );
        }
        Ok(resp.json().limit(BODY_LIMIT).await?)
    }

    /// Finished runs of the scheduler's `job`, from `GET /metrics`.
    pub async fn job_runs(&self, job: &str) -> anyhow::Result<u64> {
        let (request, mut resp) = self.get_with_token("/metrics").await?;
        let body = resp.body().limit(BODY_LIMIT).await?;
        if resp.status().as_u16() != 200 {
            bail!("{request}: {}", resp.status());
        }
        let series = format!("webhookd_scheduler_job_runs_total{{job=\"{job}\"}} ");
        String::from_utf8_lossy(&body)
            .lines()
            .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
            .ok_or_else(|| anyhow!("{request}: no {series}series"))
    }

    /// `GET /api/v1/health`: its status, or an error when nothing answered.
    pub async fn health(&self) -> anyhow::Result<u16> {
        let url = format!("{}/api/v1/health", self.base);
        let resp = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| anyhow!("GET {url}: {e}"))?;
        Ok(resp.status().as_u16())
    }

    /// Signs in to the dashboard with the admin token; returns the `Cookie` header value.
    pub async fn dashboard_login(&self) -> anyhow::Result<String> {
        let url = format!("{}/login", self.base);
        let resp = self
            .client
            .post(&url)
            .send_form(&[("token", self.token.as_str()), ("next", "/")])
            .await
            .map_err(|e| anyhow!("POST {url}: {e}"))?;
        if resp.status().as_u16() != 303 {
            bail!("POST {url}: {} (expected 303 after sign-in)", resp.status());
        }
        resp.headers()
            .get_all(header::SET_COOKIE)
            .filter_map(|v| v.to_str().ok())
            .find(|c| c.starts_with("webhookd_session="))
            .and_then(|c| c.split(';').next())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("POST {url}: no session cookie"))
    }

    /// GETs a dashboard page; fails unless it answers 200. Returns the page size.
    pub async fn page(&self, path: &str, cookie: &str) -> anyhow::Result<usize> {
        let url = format!("{}{path}", self.base);
        let mut resp = self
            .client
            .get(&url)
            .insert_header((header::COOKIE, cookie))
            .send()
            .await
            .map_err(|e| anyhow!("GET {url}: {e}"))?;
        let body = resp.body().limit(BODY_LIMIT).await?;
        if resp.status().as_u16() != 200 {
            bail!("GET {url}: {}", resp.status());
        }
        Ok(body.len())
    }
}
