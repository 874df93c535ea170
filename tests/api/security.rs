//! Authentication, the health check and the private-network block.

use actix_web::http::Method;
use serde_json::json;

use crate::helpers::{TOKEN, TestReceiver, spawn_app, spawn_app_with};

#[actix_web::test]
async fn missing_or_wrong_token_is_401() {
    let app = spawn_app().await;
    let wrong = format!("{TOKEN}x");
    for token in [None, Some("nope"), Some(wrong.as_str()), Some("")] {
        for (method, path) in [
            (Method::GET, "/app"),
            (Method::POST, "/app"),
            (Method::GET, "/app/app_01ARZ3NDEKTSV4RRFFQ69G5FAV/msg"),
            (Method::GET, "/no-such-route"),
        ] {
            let body = (method == Method::POST).then(|| br#"{"name":"x"}"#.to_vec());
            let res = app
                .raw(method.clone(), &app.url(path), token, &[], body)
                .await;
            assert_eq!(res.status, 401, "{method} {path} with {token:?}");
            let body = res.json();
            assert_eq!(body["code"], "authentication_failed", "{body}");
            assert!(body["detail"].is_string(), "{body}");
        }
    }
    // Nothing was created by the refused POSTs.
    assert_eq!(app.get_ok("/app").await["data"], json!([]));
    // A non-Bearer scheme is refused too.
    let res = app
        .raw(
            Method::GET,
            &app.url("/app"),
            None,
            &[("authorization", &format!("Basic {TOKEN}"))],
            None,
        )
        .await;
    assert_eq!(res.status, 401);
}

#[actix_web::test]
async fn health_needs_no_token() {
    let app = spawn_app().await;
    for method in [Method::GET, Method::HEAD] {
        for path in ["/health", "/health/ping"] {
            let res = app
                .raw(method.clone(), &app.url(path), None, &[], None)
                .await;
            assert_eq!(res.status, 204, "{method} {path}");
            assert!(res.body.is_empty());
        }
    }
}

#[actix_web::test]
async fn private_networks_are_blocked_by_default() {
    let app = spawn_app_with(&[("WEBHOOKD_ALLOW_SUBNETS", "")]).await;
    let mut rx = TestReceiver::start().await;
    let a = app.create_app().await;
    let port = rx.addr.port();
    let ep_ip = app
        .create_endpoint(&a, &format!("http://127.0.0.1:{port}/"), json!({}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ep_name = app
        .create_endpoint(&a, &format!("http://localhost:{port}/"), json!({}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let msg = app.publish_simple(&a, "e.t").await;

    for ep in [&ep_ip, &ep_name] {
        app.wait_status(&a, &msg, ep, 2).await;
    }
    let attempts = app.attempts_of_msg(&a, &msg).await;
    assert_eq!(
        attempts.len(),
        6,
        "3 attempts to each endpoint: {attempts:?}"
    );
    for x in &attempts {
        assert_eq!(x["responseStatusCode"], 0, "{x}");
        assert_eq!(x["status"], 2, "{x}");
    }
    rx.assert_nothing_more();
}
