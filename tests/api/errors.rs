//! Client errors: every one is JSON, in Svix's shapes.

use actix_web::http::Method;
use actix_web::web::Bytes;
use serde_json::json;

use crate::helpers::{Resp, TOKEN, spawn_app, spawn_app_with};

/// A `{"code", "detail"}` body of `status`, served as JSON.
fn assert_http_error(res: &Resp, status: u16, code: &str) {
    let body = res.json();
    assert_eq!(res.status, status, "{body}");
    assert!(
        res.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        res.headers
    );
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
}

#[actix_web::test]
async fn malformed_json_is_400() {
    let app = spawn_app().await;
    let a = app.create_app().await;
    for (path, body) in [
        ("/app".to_owned(), &b"{\"name\": "[..]),
        (format!("/app/{a}/msg"), b"{nope}"),
        (
            format!("/app/{a}/endpoint"),
            b"{\"url\": \"https://example.com\",}",
        ),
    ] {
        let res = app.post_raw(&path, &[], body).await;
        assert_http_error(&res, 400, "bad_request");
    }
}

/// A body that is not JSON at all is a 400 even when its first values also have
/// the wrong type: the syntax error is the client's real mistake.
#[actix_web::test]
async fn truncated_json_is_400_even_when_it_starts_with_a_wrong_type() {
    let app = spawn_app().await;
    let a = app.create_app().await;
    let mut wrong = Vec::new();
    for (path, body) in [
        (format!("/app/{a}/endpoint"), &b"[1, 2"[..]),
        ("/app".to_owned(), b"{\"name\": 5, "),
        (
            format!("/app/{a}/msg"),
            b"{\"eventType\": [], \"payload\": {",
        ),
    ] {
        let res = app.post_raw(&path, &[], body).await;
        if res.status != 400 {
            wrong.push(format!(
                "{} -> {} {}",
                String::from_utf8_lossy(body),
                res.status,
                String::from_utf8_lossy(&res.body)
            ));
            continue;
        }
        assert_http_error(&res, 400, "bad_request");
    }
    assert!(wrong.is_empty(), "not 400:\n{}", wrong.join("\n"));
}

#[actix_web::test]
async fn not_found_is_404_json() {
    let app = spawn_app().await;
    let a = app.create_app().await;
    let ep = app
        .create_endpoint(&a, "https://example.com/", json!({}))
        .await;
    let ep = ep["id"].as_str().unwrap();
    for path in [
        "/app/app_01ARZ3NDEKTSV4RRFFQ69G5FAV".to_owned(),
        "/app/no-such-uid".to_owned(),
        "/app/no-such-app/endpoint".to_owned(),
        format!("/app/{a}/endpoint/ep_01ARZ3NDEKTSV4RRFFQ69G5FAV"),
        format!("/app/{a}/endpoint/nope/secret"),
        format!("/app/{a}/msg/msg_01ARZ3NDEKTSV4RRFFQ69G5FAV"),
        format!("/app/{a}/msg/no-such-event-id"),
        format!("/app/{a}/attempt/msg/msg_01ARZ3NDEKTSV4RRFFQ69G5FAV"),
        format!("/app/{a}/endpoint/{ep}/no-such-route"),
        "/no-such-route".to_owned(),
    ] {
        let res = app.request(Method::GET, &path, &[], None).await;
        assert_http_error(&res, 404, "not_found");
    }
    // Publishing to an unknown app.
    let res = app
        .post_raw(
            "/app/app_01ARZ3NDEKTSV4RRFFQ69G5FAV/msg",
            &[],
            br#"{"eventType":"a","payload":{}}"#,
        )
        .await;
    assert_http_error(&res, 404, "not_found");
}

#[actix_web::test]
async fn conflicts_are_409() {
    let app = spawn_app().await;
    let res = app
        .post_raw("/app", &[], br#"{"name":"a","uid":"same"}"#)
        .await;
    assert_eq!(res.status, 201);
    let res = app
        .post_raw("/app", &[], br#"{"name":"b","uid":"same"}"#)
        .await;
    assert_http_error(&res, 409, "conflict");

    let msg = br#"{"eventType":"a","eventId":"e-1","payload":{}}"#;
    assert_eq!(app.post_raw("/app/same/msg", &[], msg).await.status, 202);
    let res = app.post_raw("/app/same/msg", &[], msg).await;
    assert_http_error(&res, 409, "conflict");
}

#[actix_web::test]
async fn body_over_the_limit_is_413() {
    let app = spawn_app_with(&[("WEBHOOKD_MAX_PAYLOAD_BYTES", "512")]).await;
    let a = app.create_app().await;
    let small = br#"{"eventType":"a","payload":{"x":1}}"#;
    assert_eq!(
        app.post_raw(&format!("/app/{a}/msg"), &[], small)
            .await
            .status,
        202
    );
    let big = format!(
        r#"{{"eventType":"a","payload":{{"x":"{}"}}}}"#,
        "y".repeat(2_000)
    );
    let res = app
        .post_raw(&format!("/app/{a}/msg"), &[], big.as_bytes())
        .await;
    assert_http_error(&res, 413, "payload_too_large");

    // Without a Content-Length (chunked), the limit applies while reading.
    let chunks: Vec<Result<Bytes, std::io::Error>> = big
        .as_bytes()
        .chunks(200)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let mut res = awc::Client::new()
        .post(app.url(&format!("/app/{a}/msg")))
        .insert_header(("authorization", format!("Bearer {TOKEN}")))
        .insert_header(("content-type", "application/json"))
        .send_stream(futures_util::stream::iter(chunks))
        .await
        .expect("a response to a chunked body");
    assert_eq!(res.status().as_u16(), 413);
    let body: serde_json::Value = res.json().await.expect("a JSON body");
    assert_eq!(body["code"], "payload_too_large", "{body}");
    let list = app.get_ok(&format!("/app/{a}/msg")).await;
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        1,
        "only the small message: {list}"
    );
}

#[actix_web::test]
async fn unknown_method_is_405_json() {
    let app = spawn_app().await;
    let res = app
        .request(Method::PUT, "/app", &[], Some(b"{}".to_vec()))
        .await;
    assert_http_error(&res, 405, "method_not_allowed");
    // The health check lives outside the authenticated scope; found by the
    // `api_app` fuzz target answering a bare 405 there.
    for path in ["/health", "/health/ping"] {
        let res = app
            .raw(Method::PATCH, &app.url(path), None, &[], None)
            .await;
        assert_http_error(&res, 405, "method_not_allowed");
    }
}

/// Found by the `api_app` fuzz target: the idempotency layer remembered the
/// router's bare 404 and replayed it with an empty body.
#[actix_web::test]
async fn repeated_idempotent_request_to_no_route_is_json_both_times() {
    let app = spawn_app().await;
    for _ in 0..2 {
        let res = app
            .post_raw("/app/x/no-such-thing", &[("idempotency-key", "k1")], b"{}")
            .await;
        assert_http_error(&res, 404, "not_found");
    }
}

#[actix_web::test]
async fn validation_errors_are_422_with_locations() {
    let app = spawn_app().await;
    let a = app.create_app().await;
    let path = format!("/app/{a}/msg");
    let cases = [
        (
            json!({ "eventType": "bad name!", "payload": {} }),
            vec!["body", "eventType"],
        ),
        (json!({ "payload": {} }), vec!["body", "eventType"]),
        (json!({ "eventType": "a.b" }), vec!["body", "payload"]),
        (
            json!({ "eventType": "a.b", "payload": [1, 2] }),
            vec!["body", "payload"],
        ),
        (
            json!({ "eventType": "a.b", "payload": "text" }),
            vec!["body", "payload"],
        ),
        (
            json!({ "eventType": 5, "payload": {} }),
            vec!["body", "eventType"],
        ),
        (
            json!({ "eventType": "a.b", "payload": {}, "channels": ["ok", "not ok"] }),
            vec!["body", "channels", "[1]"],
        ),
    ];
    for (body, loc) in cases {
        let (status, out) = app.post(&path, body.clone()).await;
        assert_eq!(status, 422, "{body}: {out}");
        let detail = out["detail"]
            .as_array()
            .unwrap_or_else(|| panic!("detail is a list: {out}"));
        assert!(!detail.is_empty(), "{out}");
        assert_eq!(detail[0]["loc"], json!(loc), "{body}: {out}");
        assert!(
            detail[0]["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{out}"
        );
        assert!(detail[0]["type"].is_string(), "{out}");
    }
    // Several problems are reported together.
    let (status, out) = app
        .post(
            &format!("/app/{a}/endpoint"),
            json!({ "url": "ftp://x", "uid": "not valid!" }),
        )
        .await;
    assert_eq!(status, 422, "{out}");
    let locs: Vec<_> = out["detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["loc"].clone())
        .collect();
    assert!(locs.contains(&json!(["body", "url"])), "{out}");
    assert!(locs.contains(&json!(["body", "uid"])), "{out}");
    // An empty application name.
    let (status, out) = app.post("/app", json!({ "name": "" })).await;
    assert_eq!(status, 422, "{out}");
    assert_eq!(out["detail"][0]["loc"], json!(["body", "name"]));
    // A throttle rate beyond a uint16, however it is set.
    let ep = app
        .create_endpoint(&a, "https://example.com/", json!({}))
        .await;
    let ep_path = format!("/app/{a}/endpoint/{}", ep["id"].as_str().unwrap());
    for (status, out) in [
        app.post("/app", json!({ "name": "n", "throttleRate": 0 }))
            .await,
        app.patch(&format!("/app/{a}"), json!({ "throttleRate": 70000 }))
            .await,
        app.post(
            &format!("/app/{a}/endpoint"),
            json!({ "url": "https://example.com/", "throttleRate": 0 }),
        )
        .await,
        app.patch(&ep_path, json!({ "throttleRate": 70000 })).await,
    ] {
        assert_eq!(status, 422, "{out}");
        assert_eq!(
            out["detail"][0]["loc"],
            json!(["body", "throttleRate"]),
            "{out}"
        );
    }
}
