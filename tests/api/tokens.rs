//! Application-scoped tokens: what they may do, what they may not, revocation,
//! and that only their hash is stored.

use actix_web::http::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestReceiver, files_containing, spawn_app};

/// Creates a token for `app` (id or uid); returns its id and the token.
async fn issue(app: &TestApp, app_id: &str) -> (String, String) {
    let (status, body) = app
        .post(
            "/webhookd/token",
            json!({"appId": app_id, "description": "publisher"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let token = body["token"]
        .as_str()
        .expect("the token is shown once")
        .to_owned();
    assert!(token.starts_with("whd_app_"), "{token}");
    (body["id"].as_str().unwrap().to_owned(), token)
}

async fn as_token(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|b| serde_json::to_vec(&b).unwrap());
    let res = app
        .raw(method, &app.url(path), Some(token), &[], body)
        .await;
    let json = if res.body.is_empty() {
        Value::Null
    } else {
        res.json()
    };
    (res.status, json)
}

#[actix_web::test]
async fn a_scoped_token_publishes_and_reads_its_own_application_only() {
    let app = spawn_app().await;
    let mut receiver = TestReceiver::start().await;
    let (_, a) = app
        .post("/app", json!({"name": "A", "uid": "tenant-a"}))
        .await;
    let a_id = a["id"].as_str().unwrap().to_owned();
    let b_id = app.create_app().await;
    let ep = app.endpoint_to(&a_id, &receiver).await;
    let (_, token) = issue(&app, "tenant-a").await;

    // Allowed: publish (by uid or id) and read messages and attempts.
    let (status, msg) = as_token(
        &app,
        &token,
        Method::POST,
        "/app/tenant-a/msg",
        Some(json!({"eventType": "order.created", "payload": {"n": 1}})),
    )
    .await;
    assert_eq!(status, 202, "{msg}");
    let msg_id = msg["id"].as_str().unwrap().to_owned();
    assert_eq!(receiver.next().await.msg_id(), msg_id);
    app.wait_status(&a_id, &msg_id, &ep, 0).await;
    for path in [
        format!("/app/{a_id}/msg"),
        format!("/app/tenant-a/msg/{msg_id}"),
        format!("/app/{a_id}/msg/{msg_id}/endpoint"),
        format!("/app/{a_id}/attempt/msg/{msg_id}"),
        format!("/app/{a_id}/attempt/endpoint/{ep}"),
    ] {
        let (status, body) = as_token(&app, &token, Method::GET, &path, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
    }
    let (_, listed) = as_token(&app, &token, Method::GET, &format!("/app/{a_id}/msg"), None).await;
    assert_eq!(listed["data"][0]["id"], msg_id.as_str());

    // Refused with 403 and a JSON body: everything else.
    let publish = json!({"eventType": "order.created", "payload": {}});
    let refused: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/app".into(), None),
        (Method::POST, "/app".into(), Some(json!({"name": "x"}))),
        (Method::GET, format!("/app/{a_id}"), None),
        (Method::DELETE, format!("/app/{a_id}"), None),
        (Method::GET, format!("/app/{a_id}/endpoint"), None),
        (
            Method::GET,
            format!("/app/{a_id}/endpoint/{ep}/secret"),
            None,
        ),
        (
            Method::POST,
            format!("/app/{a_id}/endpoint"),
            Some(json!({"url": "http://127.0.0.1:9/"})),
        ),
        (
            Method::DELETE,
            format!("/app/{a_id}/msg/{msg_id}/content"),
            None,
        ),
        (
            Method::POST,
            format!("/app/{a_id}/msg/{msg_id}/endpoint/{ep}/resend"),
            None,
        ),
        (
            Method::POST,
            format!("/app/{b_id}/msg"),
            Some(publish.clone()),
        ),
        (Method::GET, format!("/app/{b_id}/msg"), None),
        (
            Method::GET,
            format!("/app/{b_id}/attempt/endpoint/{ep}"),
            None,
        ),
        (Method::POST, "/app/no-such-app/msg".into(), Some(publish)),
        (Method::GET, "/event-type".into(), None),
        (Method::GET, "/webhookd/token".into(), None),
        (
            Method::POST,
            "/webhookd/token".into(),
            Some(json!({"appId": b_id})),
        ),
    ];
    for (method, path, body) in refused {
        let (status, res) = as_token(&app, &token, method.clone(), &path, body).await;
        assert_eq!(status, 403, "{method} {path}: {res}");
        assert_eq!(res["code"], "forbidden", "{method} {path}: {res}");
    }
    // Nothing was changed by the refused calls.
    assert_eq!(
        app.get_ok(&format!("/app/{b_id}/msg")).await["data"],
        json!([])
    );
    assert_eq!(
        app.get_ok("/app").await["data"].as_array().unwrap().len(),
        2
    );
    assert_eq!(
        app.get_ok(&format!("/app/{a_id}/msg/{msg_id}")).await["payload"],
        json!({"n": 1})
    );
    receiver.assert_nothing_more();
}

#[actix_web::test]
async fn tokens_are_listed_without_the_secret_and_revoked_at_once() {
    let app = spawn_app().await;
    let a = app.create_app().await;
    let b = app.create_app().await;
    let (id, token) = issue(&app, &a).await;
    issue(&app, &b).await;

    let all = app.get_ok("/webhookd/token").await;
    assert_eq!(all["data"].as_array().unwrap().len(), 2);
    assert!(all["data"].to_string().find("whd_app_").is_none(), "{all}");
    let of_a = app.get_ok(&format!("/webhookd/token?app_id={a}")).await;
    assert_eq!(of_a["data"].as_array().unwrap().len(), 1);
    assert_eq!(of_a["data"][0]["id"], id.as_str());
    assert_eq!(of_a["data"][0]["appId"], a.as_str());
    assert_eq!(of_a["data"][0]["description"], "publisher");
    let one = app.get_ok(&format!("/webhookd/token/{id}")).await;
    assert!(one.get("token").is_none(), "{one}");

    let path = format!("/app/{a}/msg");
    assert_eq!(
        as_token(&app, &token, Method::GET, &path, None).await.0,
        200
    );
    assert_eq!(app.delete(&format!("/webhookd/token/{id}")).await.0, 204);
    let (status, body) = as_token(&app, &token, Method::GET, &path, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(app.delete(&format!("/webhookd/token/{id}")).await.0, 404);
    assert_eq!(app.get(&format!("/webhookd/token/{id}")).await.0, 404);
    assert_eq!(app.get("/webhookd/token/nonsense").await.0, 404);
}

#[actix_web::test]
async fn deleting_an_application_revokes_its_tokens() {
    let app = spawn_app().await;
    let a = app.create_app().await;
    let (_, token) = issue(&app, &a).await;
    assert_eq!(app.delete(&format!("/app/{a}")).await.0, 204);
    let (status, _) = as_token(&app, &token, Method::GET, &format!("/app/{a}/msg"), None).await;
    assert_eq!(status, 401);
    assert_eq!(app.get_ok("/webhookd/token").await["data"], json!([]));
}

#[actix_web::test]
async fn token_requests_are_validated() {
    let app = spawn_app().await;
    let (status, body) = app
        .post("/webhookd/token", json!({"appId": "app_nope"}))
        .await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    let (status, body) = app
        .post("/webhookd/token", json!({"description": "x"}))
        .await;
    assert_eq!(status, 422, "{body}");
    let a = app.create_app().await;
    let (status, body) = app
        .post(
            "/webhookd/token",
            json!({"appId": a, "description": "x".repeat(300)}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["body", "description"]));
}

#[actix_web::test]
async fn only_a_hash_of_a_token_is_stored() {
    let app = spawn_app().await;
    let a = app.create_app().await;
    let (_, token) = issue(&app, &a).await;
    let data = app.stop_keeping_data().await;
    let found = files_containing(data.path(), token.as_bytes());
    assert!(
        found.is_empty(),
        "the token is stored in clear in {found:?}"
    );
}

#[actix_web::test]
async fn the_admin_token_rotates_and_ends_dashboard_sessions() {
    // A generated token (in the data dir) can be rotated; a configured one not.
    let app = crate::helpers::spawn_app_with(&[("WEBHOOKD_ADMIN_TOKEN", "")]).await;
    let file = app.data_dir().join("admin-token");
    let old = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    let get = |token: String| {
        let app = &app;
        async move {
            app.raw(Method::GET, &app.url("/app"), Some(&token), &[], None)
                .await
                .status
        }
    };
    assert_eq!(get(old.clone()).await, 200);

    // A dashboard session signed in with it (redirects are not followed).
    let browser = awc::Client::builder().disable_redirects().finish();
    let login = browser
        .post(format!("{}/login", app.base_url))
        .send_form(&[("token", old.as_str()), ("next", "/")])
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let cookie = login
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let overview = || async {
        browser
            .get(format!("{}/", app.base_url))
            .insert_header(("cookie", cookie.as_str()))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(overview().await, 200);

    let res = app
        .raw(
            Method::POST,
            &app.url("/webhookd/admin-token/rotate"),
            Some(&old),
            &[],
            None,
        )
        .await;
    assert_eq!(res.status, 204);
    assert!(res.body.is_empty(), "the new token is not sent");
    let new = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert_ne!(new, old);
    assert_eq!(get(old).await, 401);
    assert_eq!(get(new).await, 200);
    assert_eq!(overview().await, 303, "the session ended");

    let configured = crate::helpers::spawn_app().await;
    let (status, body) = configured
        .post("/webhookd/admin-token/rotate", json!({}))
        .await;
    assert_eq!(status, 409, "{body}");
}
