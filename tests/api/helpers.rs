//! Shared harness of the API tests: a webhookd started in-process on a port-0
//! listener with its own temp data dir (`TestApp`), a scriptable webhook receiver
//! (`TestReceiver`) and a poller for conditions only the API can show (`wait_until`).
//!
//! Everything is loopback-only and per test, so the tests run in parallel.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::http::header::HeaderMap;
use actix_web::http::{Method, StatusCode};
use actix_web::web::Bytes;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::{mpsc, watch};

use webhookd::app::Running;
use webhookd::config::Config;
use webhookd::domain::Secret;
use webhookd::scheduler::{Clock, Job, ManualClock, SchedulerHandle, SystemClock};
use webhookd::store::JobRecord;

/// The admin token every `TestApp` is configured with.
pub const TOKEN: &str = "api-test-token-0123456789";

/// How long a test waits for one arrival or one API-visible condition.
pub const WAIT: Duration = Duration::from_secs(5);

/// The `user-agent` webhookd must send.
pub fn user_agent() -> String {
    format!("webhookd/{}", env!("CARGO_PKG_VERSION"))
}

// ----- the server under test ---------------------------------------------

/// A running webhookd with its data dir (removed when the `TestApp` is dropped).
pub struct TestApp {
    pub base_url: String,
    client: awc::Client,
    running: Option<Running>,
    data: TempDir,
}

/// webhookd with the test defaults (see `spawn_app_with`).
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// webhookd with the test defaults, then `overrides` (same keys replace the
/// defaults; an empty value, e.g. `WEBHOOKD_ALLOW_SUBNETS=""`, clears one).
pub async fn spawn_app_with(overrides: &[(&str, &str)]) -> TestApp {
    start_app(overrides, Arc::new(SystemClock), None).await
}

/// `spawn_app_with`, its scheduler reading time from `clock`, on `data` (a data
/// dir kept from an earlier instance, see `stop_keeping_data`) or a fresh one.
pub async fn spawn_app_clocked(
    overrides: &[(&str, &str)],
    clock: Arc<ManualClock>,
    data: Option<TempDir>,
) -> TestApp {
    start_app(overrides, clock, data).await
}

async fn start_app(
    overrides: &[(&str, &str)],
    clock: Arc<dyn Clock>,
    data: Option<TempDir>,
) -> TestApp {
    let data = data.unwrap_or_else(|| tempfile::tempdir().expect("creating a temp data dir"));
    let data_dir = data.path().to_str().expect("temp dir is UTF-8").to_owned();
    let mut pairs: Vec<(String, String)> = [
        ("WEBHOOKD_LISTEN", "127.0.0.1:0"),
        ("WEBHOOKD_DATA_DIR", data_dir.as_str()),
        ("WEBHOOKD_ADMIN_TOKEN", TOKEN),
        ("WEBHOOKD_RETRY_SCHEDULE", "20ms,40ms"),
        ("WEBHOOKD_REQUEST_TIMEOUT", "2s"),
        ("WEBHOOKD_ALLOW_SUBNETS", "127.0.0.0/8"),
        // Health must not depend on how full this machine's disk is.
        ("WEBHOOKD_HEALTH__MIN_FREE_DISK_PERCENT", "0"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in overrides {
        pairs.retain(|(name, _)| name != k);
        pairs.push((k.to_string(), v.to_string()));
    }
    let config = Config::load_from(None, &pairs).expect("test configuration is valid");
    let running = webhookd::app::start_with_clock(config, clock)
        .await
        .expect("webhookd starts");
    TestApp {
        base_url: running.base_url(),
        client: awc::Client::builder()
            .timeout(Duration::from_secs(10))
            .finish(),
        running: Some(running),
        data,
    }
}

/// A full HTTP response from the API.
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// The body as JSON: `Null` when empty; panics when it is not JSON.
    pub fn json(&self) -> Value {
        if self.body.is_empty() {
            return Value::Null;
        }
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response ({}) is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl TestApp {
    /// `/api/v1` + `path`.
    /// The data directory of this instance.
    pub fn data_dir(&self) -> &std::path::Path {
        self.data.path()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v1{}", self.base_url, path)
    }

    /// One request to `url` (absolute). `token: None` sends no Authorization header.
    pub async fn raw(
        &self,
        method: Method,
        url: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Resp {
        let mut req = self.client.request(method.clone(), url);
        if let Some(t) = token {
            req = req.insert_header(("authorization", format!("Bearer {t}")));
        }
        if body.is_some() {
            req = req.insert_header(("content-type", "application/json"));
        }
        for (k, v) in headers {
            req = req.insert_header((*k, *v));
        }
        let sent = match body {
            Some(b) => req.send_body(b).await,
            None => req.send().await,
        };
        let mut res = sent.unwrap_or_else(|e| panic!("{method} {url} failed: {e}"));
        let body = res
            .body()
            .limit(16 * 1024 * 1024)
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: reading the response body: {e}"));
        Resp {
            status: res.status().as_u16(),
            headers: res.headers().clone(),
            body,
        }
    }

    /// An authenticated request to `/api/v1` + `path`.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Resp {
        self.raw(method, &self.url(path), Some(TOKEN), headers, body)
            .await
    }

    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let body = body.map(|b| serde_json::to_vec(b).expect("serializing a JSON body"));
        let r = self.request(method, path, &[], body).await;
        (r.status, r.json())
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(Method::POST, path, Some(&body)).await
    }
    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(Method::PUT, path, Some(&body)).await
    }
    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(Method::PATCH, path, Some(&body)).await
    }
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(Method::DELETE, path, None).await
    }

    /// POST with extra headers and a raw body (exact bytes).
    pub async fn post_raw(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        self.request(Method::POST, path, headers, Some(body.to_vec()))
            .await
    }

    /// GET that must answer 200; returns the body.
    pub async fn get_ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    // ----- domain shortcuts ----------------------------------------------

    /// Creates an application; returns its id.
    pub async fn create_app(&self) -> String {
        let (status, body) = self.post("/app", json!({ "name": "test app" })).await;
        assert_eq!(status, 201, "creating an app: {body}");
        body["id"].as_str().expect("app id").to_owned()
    }

    /// Creates an endpoint at `url` with the extra fields of `extra` (an object); returns its body.
    pub async fn create_endpoint(&self, app: &str, url: &str, extra: Value) -> Value {
        let mut body = json!({ "url": url });
        if let Value::Object(m) = extra {
            body.as_object_mut().unwrap().extend(m);
        }
        let (status, out) = self.post(&format!("/app/{app}/endpoint"), body).await;
        assert_eq!(status, 201, "creating an endpoint: {out}");
        out
    }

    /// Creates an endpoint that gets every message; returns its id.
    pub async fn endpoint_to(&self, app: &str, receiver: &TestReceiver) -> String {
        self.create_endpoint(app, &receiver.url(), json!({})).await["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The endpoint's current signing secret.
    pub async fn secret(&self, app: &str, ep: &str) -> Secret {
        let body = self
            .get_ok(&format!("/app/{app}/endpoint/{ep}/secret"))
            .await;
        let key = body["key"].as_str().expect("secret key");
        Secret::parse(key).unwrap_or_else(|| panic!("{key} is not a whsec_ secret"))
    }

    /// Publishes a message; returns the response body (`MessageOut`).
    pub async fn publish(&self, app: &str, body: Value) -> Value {
        let (status, out) = self.post(&format!("/app/{app}/msg"), body).await;
        assert_eq!(status, 202, "publishing: {out}");
        out
    }

    /// Publishes `{eventType, payload}`; returns the message id.
    pub async fn publish_simple(&self, app: &str, event_type: &str) -> String {
        self.publish(
            app,
            json!({ "eventType": event_type, "payload": { "type": event_type } }),
        )
        .await["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Asks for one more delivery of a message to an endpoint (a manual resend).
    pub async fn resend(&self, app: &str, msg: &str, ep: &str) {
        let (status, body) = self
            .post(
                &format!("/app/{app}/msg/{msg}/endpoint/{ep}/resend"),
                json!(null),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body, json!({}));
    }

    /// Attempts of a message, newest first.
    pub async fn attempts_of_msg(&self, app: &str, msg: &str) -> Vec<Value> {
        let body = self.get_ok(&format!("/app/{app}/attempt/msg/{msg}")).await;
        body["data"].as_array().expect("data list").clone()
    }

    /// The message's delivery status at one endpoint (`MessageEndpointOut`).
    pub async fn destination(&self, app: &str, msg: &str, ep: &str) -> Value {
        let body = self.get_ok(&format!("/app/{app}/msg/{msg}/endpoint")).await;
        body["data"]
            .as_array()
            .expect("data list")
            .iter()
            .find(|d| d["id"] == ep)
            .cloned()
            .unwrap_or_else(|| panic!("{ep} is not a destination of {msg}: {body}"))
    }

    /// Waits until the message's status at the endpoint is `status`; returns the destination.
    pub async fn wait_status(&self, app: &str, msg: &str, ep: &str, status: u64) -> Value {
        wait_until(
            WAIT,
            &format!("{msg} to reach status {status} at {ep}"),
            || async move {
                let d = self.destination(app, msg, ep).await;
                (d["status"] == status).then_some(d)
            },
        )
        .await
    }

    /// Waits until the message has `n` attempts recorded; returns them (newest first).
    pub async fn wait_attempts(&self, app: &str, msg: &str, n: usize) -> Vec<Value> {
        wait_until(WAIT, &format!("{n} attempts of {msg}"), || async move {
            let a = self.attempts_of_msg(app, msg).await;
            (a.len() >= n).then_some(a)
        })
        .await
    }

    /// The store, for what the API does not show (an attempt's error and response headers).
    pub fn store(&self) -> &webhookd::store::Store {
        &self.running.as_ref().expect("webhookd is running").store
    }

    /// Where `/metrics` is served when `metrics.listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.running
            .as_ref()
            .expect("webhookd is running")
            .metrics_addr
    }

    /// The running scheduler (to run jobs and read their records).
    pub fn scheduler(&self) -> &SchedulerHandle {
        &self
            .running
            .as_ref()
            .expect("webhookd is running")
            .scheduler
    }

    /// Runs a job now (at the scheduler clock's time) and returns its record.
    pub async fn run_job(&self, job: Job) -> JobRecord {
        self.scheduler()
            .run_now(job)
            .await
            .unwrap_or_else(|e| panic!("job {} did not run: {e}", job.name()))
    }

    /// Stops gracefully and hands over the data dir, for a restart on it.
    pub async fn stop_keeping_data(mut self) -> TempDir {
        if let Some(r) = self.running.take() {
            r.stop().await.expect("webhookd stops cleanly");
        }
        self.data
    }

    /// Stops the server and the worker gracefully.
    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.expect("webhookd stops cleanly");
        }
    }
}

/// Polls `condition` every 20 ms until it returns `Some`, for at most `within`;
/// panics naming `what` on timeout. Only for states visible through the API
/// (never a stand-in for a channel).
pub async fn wait_until<T, F, Fut>(within: Duration, what: &str, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = condition().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Milliseconds since the epoch of an RFC 3339 timestamp.
pub fn millis(ts: &Value) -> i64 {
    let s = ts
        .as_str()
        .unwrap_or_else(|| panic!("{ts} is not a string"));
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s} is not RFC 3339: {e}"))
        .timestamp_millis()
}

/// RFC 3339 (UTC, milliseconds) of a millisecond timestamp.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("a valid timestamp")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

// ----- the webhook receiver ----------------------------------------------

/// Releases held responses. Cheap to clone.
#[derive(Clone)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Gate {
    pub fn new() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }
    pub fn release(&self) {
        self.0.send_replace(true);
    }
    async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

/// How the receiver answers one request.
#[derive(Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Answer only after this long (a slow endpoint).
    pub delay: Option<Duration>,
    /// Answer only once the gate is released (a stuck endpoint).
    pub gate: Option<Gate>,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            delay: None,
            gate: None,
        }
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = Some(d);
        self
    }
    pub fn gate(mut self, g: &Gate) -> Self {
        self.gate = Some(g.clone());
        self
    }
}

/// One request the receiver got.
#[derive(Debug)]
pub struct Arrival {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the receiver got it.
    pub at: std::time::Instant,
}

impl Arrival {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("the delivery has no {name} header: {:?}", self.headers))
    }

    /// Every value of a header.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect()
    }

    pub fn msg_id(&self) -> String {
        self.header("webhook-id").to_owned()
    }
}

struct Script {
    queue: VecDeque<Reply>,
    default: Reply,
}

struct Shared {
    script: Mutex<Script>,
    tx: mpsc::UnboundedSender<Arrival>,
}

/// A port-0 HTTP server that forwards every request into `rx` and answers as
/// scripted: queued replies first, one per request, then the default (200).
pub struct TestReceiver {
    pub addr: SocketAddr,
    pub rx: mpsc::UnboundedReceiver<Arrival>,
    shared: Arc<Shared>,
    handle: ServerHandle,
}

async fn receive(req: HttpRequest, body: Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let reply = {
        let mut s = shared.script.lock().unwrap();
        s.queue.pop_front().unwrap_or_else(|| s.default.clone())
    };
    // Report the arrival first, so a test sees it while the answer is held back.
    let _ = shared.tx.send(Arrival {
        at: std::time::Instant::now(),
        method: req.method().to_string(),
        path: req.uri().to_string(),
        headers: req.headers().clone(),
        body,
    });
    if let Some(g) = &reply.gate {
        g.wait().await;
    }
    if let Some(d) = reply.delay {
        tokio::time::sleep(d).await; // simulates a slow endpoint
    }
    let mut res = HttpResponse::build(StatusCode::from_u16(reply.status).expect("a valid status"));
    for (k, v) in &reply.headers {
        res.insert_header((k.as_str(), v.as_str()));
    }
    res.body("ok")
}

impl TestReceiver {
    pub async fn start() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            script: Mutex::new(Script {
                queue: VecDeque::new(),
                default: Reply::status(200),
            }),
            tx,
        });
        let data = web::Data::from(Arc::clone(&shared));
        // `web::Bytes` reads each body in full: actix closes a keep-alive
        // connection whose request body was left unread.
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(8 * 1024 * 1024))
                .default_service(web::to(receive))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(0)
        .bind(("127.0.0.1", 0))
        .expect("binding the receiver");
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Self {
            addr,
            rx,
            shared,
            handle,
        }
    }

    /// Where webhookd should POST: `http://127.0.0.1:<port>/hook`.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Queues replies, used one per request before the default.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.script.lock().unwrap().queue.extend(replies);
    }

    /// The reply once the queue is used up.
    pub fn set_default(&self, reply: Reply) {
        self.shared.script.lock().unwrap().default = reply;
    }

    /// The next request, within 5 s.
    pub async fn next(&mut self) -> Arrival {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no delivery reached {} within {WAIT:?}", self.addr))
            .expect("the receiver is running")
    }

    /// The next `n` requests.
    pub async fn take(&mut self, n: usize) -> Vec<Arrival> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }

    /// Requests already received and not yet taken.
    pub fn pending(&mut self) -> Vec<Arrival> {
        let mut out = Vec::new();
        while let Ok(a) = self.rx.try_recv() {
            out.push(a);
        }
        out
    }

    /// Asserts nothing arrived that was not taken yet.
    pub fn assert_nothing_more(&mut self) {
        let extra = self.pending();
        assert!(
            extra.is_empty(),
            "unexpected deliveries to {}: {:?}",
            self.addr,
            extra
                .iter()
                .map(|a| a.header_all("webhook-id"))
                .collect::<Vec<_>>()
        );
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// Every file under `dir` whose bytes contain `needle`: to show a secret is not
/// stored in clear.
pub fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).expect("reading the data dir") {
            let path = entry.expect("reading a data dir entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if std::fs::read(&path)
                .expect("reading a data file")
                .windows(needle.len())
                .any(|w| w == needle)
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}
