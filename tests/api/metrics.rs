//! `GET /metrics`: values after real deliveries, who may read it, the
//! separate listener, and that `promtool check metrics` accepts the output.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::process::{Command, Stdio};

use actix_web::http::Method;
use serde_json::json;

use crate::helpers::{
    Reply, TOKEN, TestApp, TestReceiver, WAIT, spawn_app, spawn_app_with, wait_until,
};

/// The value of the sample `name` whose labels are exactly `labels`.
fn sample(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeSet<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, have) = match series.split_once('{') {
                Some((n, rest)) => (
                    n,
                    rest.trim_end_matches('}')
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect::<BTreeSet<_>>(),
                ),
                None => (series, BTreeSet::new()),
            };
            (n == name && have == want).then(|| value.parse().expect("a sample value is a number"))
        })
}

async fn scrape(app: &TestApp, token: Option<&str>) -> (u16, String) {
    let r = app
        .raw(
            Method::GET,
            &format!("{}/metrics", app.base_url),
            token,
            &[],
            None,
        )
        .await;
    (r.status, String::from_utf8(r.body.to_vec()).expect("UTF-8"))
}

/// Runs `promtool check metrics` on `body`; panics with its complaints.
fn promtool_check(body: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("promtool is needed to check /metrics ({e}): run tests/setup.sh to install it")
        });
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(body.as_bytes())
        .expect("writing to promtool");
    let out = child.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- the output ---\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[actix_web::test]
async fn metrics_count_publishes_and_deliveries_and_pass_promtool() {
    let app = spawn_app().await;
    let ok = TestReceiver::start().await;
    let failing = TestReceiver::start().await;
    failing.set_default(Reply::status(500));
    let app_id = app.create_app().await;
    let ok_ep = app.endpoint_to(&app_id, &ok).await;
    let failing_ep = app.endpoint_to(&app_id, &failing).await;

    let mut msgs = Vec::new();
    for _ in 0..3 {
        msgs.push(app.publish_simple(&app_id, "order.created").await);
    }
    for msg in &msgs {
        app.wait_status(&app_id, msg, &ok_ep, 0).await;
        // The test schedule has two retries: three attempts, then failed.
        app.wait_status(&app_id, msg, &failing_ep, 2).await;
    }

    // The worker counts an attempt just after recording it.
    let body = wait_until(WAIT, "every attempt to be counted", || async {
        let (status, body) = scrape(&app, Some(TOKEN)).await;
        assert_eq!(status, 200, "{body}");
        let failures = sample(
            &body,
            "webhookd_delivery_attempts_total",
            &[("outcome", "failure"), ("status_class", "5xx")],
        );
        (failures == Some(9.0)).then_some(body)
    })
    .await;
    let value = |name: &str, labels: &[(&str, &str)]| {
        sample(&body, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{body}"))
    };
    assert_eq!(value("webhookd_messages_published_total", &[]), 3.0);
    assert_eq!(
        value(
            "webhookd_delivery_attempts_total",
            &[("outcome", "success"), ("status_class", "2xx")]
        ),
        3.0
    );
    assert_eq!(
        value("webhookd_delivery_attempt_duration_seconds_count", &[]),
        12.0
    );
    assert_eq!(
        value("webhookd_delivery_first_attempt_latency_seconds_count", &[]),
        6.0
    );
    assert_eq!(value("webhookd_delivery_retries_scheduled_total", &[]), 6.0);
    assert_eq!(value("webhookd_queue_depth", &[("state", "queued")]), 0.0);
    assert_eq!(value("webhookd_queue_oldest_pending_age_seconds", &[]), 0.0);
    assert_eq!(value("webhookd_endpoints_disabled", &[]), 0.0);
    assert!(value("webhookd_database_size_bytes", &[]) > 0.0);
    for job in [
        "reconcile",
        "retention",
        "endpoint_health",
        "silence_watchdog",
    ] {
        assert_eq!(
            value("webhookd_scheduler_job_failures_total", &[("job", job)]),
            0.0
        );
    }
    assert!(value("webhookd_scheduler_job_runs_total", &[("job", "reconcile")]) >= 1.0);
    promtool_check(&body);

    // A disabled endpoint shows at the next scrape.
    let (status, out) = app
        .patch(
            &format!("/app/{app_id}/endpoint/{failing_ep}"),
            json!({"disabled": true}),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    let (_, body) = scrape(&app, Some(TOKEN)).await;
    assert_eq!(sample(&body, "webhookd_endpoints_disabled", &[]), Some(1.0));

    // Only the admin token: none, a wrong one, or an application's token get 401.
    let (status, body) = app
        .post(
            "/webhookd/token",
            json!({"appId": app_id, "description": "publisher"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let scoped = body["token"].as_str().unwrap().to_owned();
    for token in [None, Some("not-the-token-at-all"), Some(scoped.as_str())] {
        let (status, body) = scrape(&app, token).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert!(!body.contains("webhookd_"), "{body}");
    }
    app.stop().await;
}

#[actix_web::test]
async fn a_metrics_token_replaces_the_admin_token() {
    let metrics_token = "metrics-token-0123456789";
    let app = spawn_app_with(&[("WEBHOOKD_METRICS__TOKEN", metrics_token)]).await;
    let (status, body) = scrape(&app, Some(metrics_token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        sample(&body, "webhookd_messages_published_total", &[]),
        Some(0.0)
    );
    let (status, _) = scrape(&app, Some(TOKEN)).await;
    assert_eq!(status, 401, "the admin token no longer reads /metrics");
    // The metrics token is no API token.
    let r = app
        .raw(
            Method::GET,
            &app.url("/app"),
            Some(metrics_token),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 401);
    app.stop().await;
}

#[actix_web::test]
async fn metrics_listen_serves_metrics_on_its_own_address_only() {
    let app = spawn_app_with(&[("WEBHOOKD_METRICS__LISTEN", "127.0.0.1:0")]).await;
    let addr = app.metrics_addr().expect("a separate metrics listener");
    assert_ne!(format!("http://{addr}"), app.base_url);
    let r = app
        .raw(
            Method::GET,
            &format!("http://{addr}/metrics"),
            None,
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        r.headers
    );
    let body = String::from_utf8(r.body.to_vec()).unwrap();
    assert!(body.contains("# TYPE webhookd_messages_published_total counter"));
    // Nothing else is served there, and the main listener has no /metrics.
    let r = app
        .raw(
            Method::GET,
            &format!("http://{addr}/api/v1/app"),
            Some(TOKEN),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    // (The dashboard sends unknown paths to its sign-in page.)
    let (_, main) = scrape(&app, Some(TOKEN)).await;
    assert!(!main.contains("# TYPE webhookd_"), "{main}");
    promtool_check(&body);
    app.stop().await;
}
