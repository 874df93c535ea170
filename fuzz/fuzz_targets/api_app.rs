//! The whole `/api/v1` App in-process (`actix_web::test`), on a temporary
//! store: arbitrary method, path, query, headers and body. Nothing a client
//! sends may cause a 5xx (or a panic), and every 4xx has a JSON body.
//!
//! An input is a request written out as text, so the seeds in
//! `corpus/api_app/` are readable: a request line (`POST /api/v1/app/shop/msg`),
//! header lines (`name: value`), an empty line, then the body. The admin token
//! is `fuzz-token`. The store is seeded with an application, an endpoint and a
//! message: `shop`, `ep` and `order-1`.

#![no_main]

use std::cell::Cell;
use std::sync::Arc;

use actix_http::Request;
use actix_service::boxed::{self, BoxService};
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::{CONTENT_LENGTH, HeaderName, HeaderValue};
use actix_web::test::{TestRequest, init_service};
use actix_web::{App, web};
use libfuzzer_sys::fuzz_target;
use webhookd::admin::AdminToken;
use webhookd::throttle::{AuthThrottle, PublishThrottle};
use webhookd::api::{self, ApiState};
use webhookd::config::Config;
use webhookd::delivery::{DeliveryHandle, Operational};
use webhookd::metrics::Metrics;
use webhookd::scheduler::{self, Scheduler, SystemClock};
use webhookd::store::Store;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "fuzz-token";

/// The service is built once: actix-router leaks a little on every `App` built
/// (by design, route names live forever), which LeakSanitizer would report.
struct Harness {
    system: actix_rt::SystemRunner,
    app: BoxService<Request, ServiceResponse, actix_web::Error>,
}

thread_local! {
    /// Leaked on purpose: never dropped, so nothing of the runtime is torn down
    /// while the process exits (tokio's thread-locals may already be gone).
    static HARNESS: Cell<Option<&'static Harness>> = const { Cell::new(None) };
}

fn harness() -> Harness {
    let system = actix_rt::System::new();
    let config = Config::load_from(None, &[]).expect("the built-in configuration is valid");
    let store = Store::temporary().expect("a temporary store");
    let delivery = DeliveryHandle::default();
    let ops = Operational::setup(
        store.clone(),
        delivery.clone(),
        &config.scheduler.operational,
    )
    .expect("operational webhooks are off by default");
    let metrics = Arc::new(Metrics::new());
    let app = system.block_on(async {
        let scheduler = Scheduler::new(
            store.clone(),
            config.scheduler.clone(),
            ops.clone(),
            delivery.clone(),
            Arc::new(SystemClock),
            metrics.clone(),
        );
        let (scheduler, _) = scheduler::start(scheduler, CancellationToken::new());
        let state = web::Data::new(ApiState {
            store,
            delivery,
            ops,
            cfg: config.api.clone(),
            admin_token: Arc::new(AdminToken::new(Arc::from(TOKEN), None)),
            // No throttling: every input must reach the handlers.
            auth_throttle: Arc::new(AuthThrottle::new(0)),
            publish_throttle: PublishThrottle::new(0),
            metrics,
            metrics_token: None,
            health: api::health::HealthCheck {
                data_dir: std::env::temp_dir(),
                min_free_disk_percent: 0,
                scheduler,
            },
        });
        boxed::service(init_service(App::new().configure(|c| api::configure(c, state))).await)
    });
    let h = Harness { system, app };
    // Seed through the API itself.
    for (path, body) in [
        ("/api/v1/app", r#"{"name":"Shop","uid":"shop"}"#),
        (
            "/api/v1/event-type",
            r#"{"name":"order.created","description":"d"}"#,
        ),
        (
            "/api/v1/app/shop/endpoint",
            r#"{"url":"https://example.com/hook","uid":"ep"}"#,
        ),
        (
            "/api/v1/app/shop/msg",
            r#"{"eventType":"order.created","eventId":"order-1","payload":{"id":1}}"#,
        ),
    ] {
        let req = TestRequest::post()
            .uri(path)
            .insert_header(("authorization", format!("Bearer {TOKEN}")))
            .insert_header(("content-type", "application/json"))
            .set_payload(body.as_bytes().to_vec());
        let (status, body, _) = h.call(req);
        assert!(status < 300, "seeding {path}: {status} {body:?}");
    }
    h
}

impl Harness {
    fn call(&self, req: TestRequest) -> (u16, Vec<u8>, Option<String>) {
        self.system.block_on(async move {
            let res: ServiceResponse = match self.app.call(req.to_request()).await {
                Ok(r) => r,
                // A middleware error is rendered by actix as its own response.
                Err(e) => {
                    let res = e.error_response();
                    let status = res.status().as_u16();
                    let ct = res
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let body = actix_web::body::to_bytes(res.into_body())
                        .await
                        .map(|b| b.to_vec())
                        .unwrap_or_default();
                    return (status, body, ct);
                }
            };
            let status = res.status().as_u16();
            let ct = res
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = actix_web::body::to_bytes(res.into_body())
                .await
                .map(|b| b.to_vec())
                .unwrap_or_default();
            (status, body, ct)
        })
    }
}

/// The request an input describes; `None` for what no client could send
/// (an invalid method, target or header).
fn build(input: &[u8]) -> Option<TestRequest> {
    let split = input.windows(2).position(|w| w == b"\n\n");
    let (head, body) = match split {
        Some(i) => (&input[..i], &input[i + 2..]),
        None => (input, &[][..]),
    };
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.split('\n');
    let (method, target) = lines.next()?.split_once(' ')?;
    let method = Method::from_bytes(method.as_bytes()).ok()?;
    let uri = target.parse::<actix_web::http::Uri>().ok()?;
    // Only what the API owns; other paths are the dashboard's.
    if uri.path() != "/api/v1" && !uri.path().starts_with("/api/v1/") {
        return None;
    }
    let mut req = TestRequest::default().method(method).uri(target);
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
        let value = HeaderValue::from_str(value.trim()).ok()?;
        if name == CONTENT_LENGTH {
            continue; // The test request sets it from the body.
        }
        req = req.append_header((name, value));
    }
    Some(req.set_payload(body.to_vec()))
}

fuzz_target!(
    // Built before the first input, so its one-time allocations are not taken for
    // a leak of that input.
    init: HARNESS.set(Some(Box::leak(Box::new(harness())))),
    |input: &[u8]| {
    let Some(req) = build(input) else {
        return;
    };
    let h = HARNESS.get().expect("built by init");
    let (status, body, content_type) = h.call(req);
    let shown = String::from_utf8_lossy(input);
    assert!(
        status < 500,
        "{shown:?} got {status}: {}",
        String::from_utf8_lossy(&body)
    );
    if (400..500).contains(&status) {
        assert!(
            content_type
                .as_deref()
                .is_some_and(|c| c.starts_with("application/json")),
            "{shown:?} got {status} with content-type {content_type:?}"
        );
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(&body) {
            panic!(
                "{shown:?} got {status} with a body that is not JSON ({e}): {}",
                String::from_utf8_lossy(&body)
            );
        }
    }
});
