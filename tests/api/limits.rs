//! Hostile callers: throttled authentication, publish rate limits, request
//! limits (JSON depth, list sizes, header size) and slow or idle connections.

use std::time::Duration;

use actix_web::http::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::{TOKEN, TestApp, spawn_app, spawn_app_with};

fn assert_rate_limited(res: &crate::helpers::Resp) {
    assert_eq!(res.status, 429, "{:?}", res.body);
    let secs: u64 = res
        .header("retry-after")
        .expect("a 429 says when to retry")
        .parse()
        .expect("Retry-After is whole seconds");
    assert!((1..=60).contains(&secs), "Retry-After: {secs}");
    assert_eq!(res.json()["code"], "rate_limited");
}

#[actix_web::test]
async fn failed_authentication_is_throttled_per_client() {
    let app = spawn_app_with(&[("WEBHOOKD_LIMITS__AUTH_FAILURES_PER_MINUTE", "3")]).await;
    let url = app.url("/app");
    for _ in 0..3 {
        let res = app.raw(Method::GET, &url, Some("guess"), &[], None).await;
        assert_eq!(res.status, 401);
    }
    let res = app.raw(Method::GET, &url, Some("guess"), &[], None).await;
    assert_rate_limited(&res);
    // While blocked, even the right token is refused: a guesser learns nothing.
    let res = app.raw(Method::GET, &url, Some(TOKEN), &[], None).await;
    assert_rate_limited(&res);
    // The dashboard's sign-in shares the limit.
    let res = sign_in(&app, TOKEN).await;
    assert_eq!(res.0, 429);
    assert!(res.1.contains("Too many failed sign-ins"), "{}", res.1);
    // Health needs no token and is not throttled.
    let res = app
        .raw(Method::GET, &app.url("/health"), None, &[], None)
        .await;
    assert_eq!(res.status, 204);
}

#[actix_web::test]
async fn failed_dashboard_sign_ins_are_throttled() {
    let app = spawn_app_with(&[("WEBHOOKD_LIMITS__AUTH_FAILURES_PER_MINUTE", "2")]).await;
    assert_eq!(sign_in(&app, "wrong").await.0, 401);
    assert_eq!(sign_in(&app, "wrong").await.0, 401);
    let (status, page) = sign_in(&app, "wrong").await;
    assert_eq!(status, 429);
    assert!(page.contains("Try again in"), "{page}");
    let res = app
        .raw(Method::GET, &app.url("/app"), Some("x"), &[], None)
        .await;
    assert_rate_limited(&res);
}

/// Posts the sign-in form; returns the status and the page.
async fn sign_in(app: &TestApp, token: &str) -> (u16, String) {
    let form = format!("token={token}&next=%2F");
    let res = app
        .raw(
            Method::POST,
            &format!("{}/login", app.base_url),
            None,
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(form.into_bytes()),
        )
        .await;
    (res.status, String::from_utf8_lossy(&res.body).into_owned())
}

#[actix_web::test]
async fn publishing_is_rate_limited_per_token() {
    let app = spawn_app_with(&[("WEBHOOKD_LIMITS__PUBLISH_PER_SECOND", "2")]).await;
    let a = app.create_app().await;
    let (_, created) = app.post("/webhookd/token", json!({"appId": a})).await;
    let scoped = created["token"].as_str().unwrap().to_owned();
    let body = br#"{"eventType":"a.b","payload":{}}"#.to_vec();
    let path = app.url(&format!("/app/{a}/msg"));
    let mut accepted = 0;
    let mut limited = None;
    for _ in 0..50 {
        let res = app
            .raw(Method::POST, &path, Some(TOKEN), &[], Some(body.clone()))
            .await;
        match res.status {
            202 => accepted += 1,
            429 => {
                limited = Some(res);
                break;
            }
            s => panic!("unexpected {s}"),
        }
    }
    let limited = limited.expect("a burst of publishes hits the limit");
    assert_rate_limited(&limited);
    // Another token has its own allowance.
    let res = app
        .raw(Method::POST, &path, Some(&scoped), &[], Some(body))
        .await;
    assert_eq!(res.status, 202);
    // A refused publish stored nothing.
    let listed = app.get_ok(&format!("/app/{a}/msg?limit=250")).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), accepted + 1);
    // Reads are not limited.
    assert_eq!(app.get(&format!("/app/{a}/msg")).await.0, 200);
}

#[actix_web::test]
async fn deeply_nested_json_is_refused() {
    let app = spawn_app_with(&[("WEBHOOKD_LIMITS__MAX_JSON_DEPTH", "8")]).await;
    let a = app.create_app().await;
    // The payload nested `depth` objects deep, inside the body's own object.
    let nested = |depth: usize| {
        format!(
            r#"{{"eventType":"a.b","payload":{}1{}}}"#,
            r#"{"a":"#.repeat(depth),
            "}".repeat(depth)
        )
    };
    let path = format!("/app/{a}/msg");
    let res = app
        .request(Method::POST, &path, &[], Some(nested(7).into_bytes()))
        .await;
    assert_eq!(res.status, 202);
    let res = app
        .request(Method::POST, &path, &[], Some(nested(8).into_bytes()))
        .await;
    assert_eq!(res.status, 400);
    assert_eq!(res.json()["code"], "bad_request");
    assert!(
        res.json()["detail"]
            .as_str()
            .unwrap()
            .contains("nested deeper")
    );
    // Far past any parser's recursion: still a clean 400.
    let res = app
        .request(Method::POST, &path, &[], Some(nested(100_000).into_bytes()))
        .await;
    assert_eq!(res.status, 400);
    assert_eq!(res.json()["code"], "bad_request");
    assert_eq!(app.get_ok(&path).await["data"].as_array().unwrap().len(), 1);
}

#[actix_web::test]
async fn endpoint_lists_are_bounded() {
    let app = spawn_app_with(&[
        ("WEBHOOKD_LIMITS__MAX_ENDPOINT_EVENT_TYPES", "3"),
        ("WEBHOOKD_LIMITS__MAX_ENDPOINT_HEADERS", "2"),
    ])
    .await;
    let a = app.create_app().await;
    let url = "http://127.0.0.1:9/";
    let path = format!("/app/{a}/endpoint");
    let (status, body) = app
        .post(
            &path,
            json!({"url": url, "filterTypes": ["a", "b", "c", "d"]}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["body", "eventTypes"]));
    let channels: Vec<String> = (0..11).map(|i| format!("c{i}")).collect();
    let (status, body) = app
        .post(&path, json!({"url": url, "channels": channels}))
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = app
        .post(
            &path,
            json!({"url": url, "headers": {"x-a": "1", "x-b": "2", "x-c": "3"}}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["body", "headers"]));

    // Within the bounds, then a merge that would grow past them.
    let ep = app
        .create_endpoint(
            &a,
            url,
            json!({"filterTypes": ["a", "b", "c"], "headers": {"x-a": "1", "x-b": "2"}}),
        )
        .await;
    let ep = ep["id"].as_str().unwrap();
    let (status, _) = app
        .patch(
            &format!("/app/{a}/endpoint/{ep}/headers"),
            json!({"headers": {"x-c": "3"}}),
        )
        .await;
    assert_eq!(status, 422);
    let (status, _) = app
        .patch(
            &format!("/app/{a}/endpoint/{ep}"),
            json!({"filterTypes": ["a", "b", "c", "d"]}),
        )
        .await;
    assert_eq!(status, 422);
    let stored = app.get_ok(&format!("/app/{a}/endpoint/{ep}/headers")).await;
    assert_eq!(stored["headers"], json!({"x-a": "1", "x-b": "2"}));
    let stored = app.get_ok(&format!("/app/{a}/endpoint/{ep}")).await;
    assert_eq!(stored["filterTypes"], json!(["a", "b", "c"]));
}

/// Sends a raw request head; returns what came back before the server closed.
async fn raw_head(app: &TestApp, head: &str) -> String {
    let mut stream = TcpStream::connect(app.base_url.trim_start_matches("http://"))
        .await
        .unwrap();
    // The server may close while we are still writing: that is a refusal too.
    let _ = stream.write_all(head.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[actix_web::test]
async fn oversized_request_heads_are_refused_and_the_server_lives_on() {
    let app = spawn_app().await;
    // One header past the 128 KiB a request head may take.
    let huge = "x".repeat(200 * 1024);
    let answer = raw_head(
        &app,
        &format!("GET /api/v1/app HTTP/1.1\r\nHost: x\r\nX-Big: {huge}\r\n\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // More headers than a request may have.
    let many: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = raw_head(
        &app,
        &format!("GET /api/v1/app HTTP/1.1\r\nHost: x\r\n{many}\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
    assert_eq!(app.get("/app").await.0, 200);
}

/// Reads until the server closes the connection; panics after `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection")
        .ok();
    String::from_utf8_lossy(&answer).into_owned()
}

#[actix_web::test]
async fn slow_and_idle_connections_are_closed() {
    // Not shorter: the server measures these against a clock it updates
    // every 500 ms.
    let app = spawn_app_with(&[
        ("WEBHOOKD_LIMITS__CLIENT_REQUEST_TIMEOUT", "1s"),
        ("WEBHOOKD_LIMITS__KEEP_ALIVE", "1s"),
    ])
    .await;
    let addr = app.base_url.trim_start_matches("http://").to_owned();

    // Slow-loris: headers started and never finished.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-A: ")
        .await
        .unwrap();
    let answer = closed_within(&mut slow, Duration::from_secs(10)).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );

    // Idle keep-alive: one request, then silence.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = closed_within(&mut idle, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");

    // Meanwhile the server answers everyone else.
    assert_eq!(app.get("/app").await.0, 200);
}

#[actix_web::test]
async fn limits_are_validated_at_startup() {
    let cfg = webhookd::config::Config::load_from(
        None,
        &[("WEBHOOKD_LIMITS__MAX_JSON_DEPTH".into(), "1".into())],
    );
    let err = cfg
        .expect_err("a depth of 1 cannot hold a message")
        .to_string();
    assert!(err.contains("limits.max_json_depth"), "{err}");
    // The defaults accept a normal request.
    let app = spawn_app().await;
    assert_eq!(app.get("/app").await.0, 200);
}
