//! Endpoints: CRUD, secrets and their rotation, custom headers, stats, URL validation.

use serde_json::json;

use webhookd::domain::Secret;
use webhookd::signing;

use crate::helpers::{Gate, Reply, TestReceiver, WAIT, spawn_app, wait_until};

#[actix_web::test]
async fn create_with_every_field_then_get_list_put_patch_delete() {
    let app = spawn_app().await;
    let a = app.create_app().await;
    let (status, ep) = app
        .post(
            &format!("/app/{a}/endpoint"),
            json!({
                "url": "https://example.com/hook",
                "description": "main hook",
                "uid": "main",
                "eventTypes": ["user.created", "user.deleted"],
                "channels": ["project-1"],
                "headers": { "X-Tenant": "acme" },
                "metadata": { "team": "core" },
            }),
        )
        .await;
    assert_eq!(status, 201, "{ep}");
    let id = ep["id"].as_str().unwrap();
    assert!(id.starts_with("ep_"), "{id}");
    assert_eq!(ep["url"], "https://example.com/hook");
    assert_eq!(ep["description"], "main hook");
    assert_eq!(ep["uid"], "main");
    assert_eq!(ep["eventTypes"], json!(["user.created", "user.deleted"]));
    assert_eq!(ep["channels"], json!(["project-1"]));
    assert_eq!(ep["metadata"], json!({ "team": "core" }));
    assert_eq!(ep["disabled"], false);
    assert!(
        ep.get("secret").is_none(),
        "EndpointOut carries no secret: {ep}"
    );

    // The `filterTypes` alias of older clients.
    let alias = app
        .create_endpoint(
            &a,
            "https://example.com/two",
            json!({ "filterTypes": ["a.b"] }),
        )
        .await;
    assert_eq!(alias["eventTypes"], json!(["a.b"]));

    let (status, dup) = app
        .post(
            &format!("/app/{a}/endpoint"),
            json!({ "url": "https://example.com/3", "uid": "main" }),
        )
        .await;
    assert_eq!(status, 409, "duplicate uid: {dup}");

    assert_eq!(app.get_ok(&format!("/app/{a}/endpoint/{id}")).await, ep);
    assert_eq!(app.get_ok(&format!("/app/{a}/endpoint/main")).await, ep);
    let list = app.get_ok(&format!("/app/{a}/endpoint")).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2, "{list}");
    assert_eq!(list["done"], true);

    let headers = app.get_ok(&format!("/app/{a}/endpoint/{id}/headers")).await;
    assert_eq!(headers["headers"], json!({ "X-Tenant": "acme" }));

    let (status, put) = app
        .put(
            &format!("/app/{a}/endpoint/{id}"),
            json!({ "url": "https://example.org/new", "description": "replaced" }),
        )
        .await;
    assert_eq!(status, 200, "{put}");
    assert_eq!(put["id"], ep["id"]);
    assert_eq!(put["url"], "https://example.org/new");
    assert_eq!(put["description"], "replaced");
    assert!(
        put["eventTypes"].is_null(),
        "PUT replaces the filter: {put}"
    );
    assert!(put["channels"].is_null(), "{put}");
    assert!(put["uid"].is_null(), "{put}");
    assert_eq!(put["metadata"], json!({}));

    let (status, patched) = app
        .patch(
            &format!("/app/{a}/endpoint/{id}"),
            json!({ "eventTypes": ["x.y"], "disabled": true }),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        patched["url"], "https://example.org/new",
        "PATCH keeps unnamed fields"
    );
    assert_eq!(patched["description"], "replaced");
    assert_eq!(patched["eventTypes"], json!(["x.y"]));
    assert_eq!(patched["disabled"], true);
    assert_eq!(
        app.get_ok(&format!("/app/{a}/endpoint/{id}")).await,
        patched
    );

    let (status, _) = app.delete(&format!("/app/{a}/endpoint/{id}")).await;
    assert_eq!(status, 204);
    let (status, body) = app.get(&format!("/app/{a}/endpoint/{id}")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "not_found");
    let list = app.get_ok(&format!("/app/{a}/endpoint")).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
}

#[actix_web::test]
async fn url_validation() {
    let app = spawn_app().await;
    let a = app.create_app().await;
    for url in [
        "ftp://example.com/hook",
        "http://",
        "/relative/path",
        "not a url",
    ] {
        let (status, body) = app
            .post(&format!("/app/{a}/endpoint"), json!({ "url": url }))
            .await;
        assert_eq!(status, 422, "{url}: {body}");
        assert_eq!(
            body["detail"][0]["loc"],
            json!(["body", "url"]),
            "{url}: {body}"
        );
    }
    let ep = app
        .create_endpoint(&a, "https://example.com/", json!({}))
        .await;
    let (status, body) = app
        .patch(
            &format!("/app/{a}/endpoint/{}", ep["id"].as_str().unwrap()),
            json!({ "url": "ftp://example.com" }),
        )
        .await;
    assert_eq!(status, 422, "PATCH validates too: {body}");
    assert_eq!(body["detail"][0]["loc"], json!(["body", "url"]));
}

#[actix_web::test]
async fn secret_is_whsec_and_can_be_given() {
    let app = spawn_app().await;
    let a = app.create_app().await;
    let ep = app
        .create_endpoint(&a, "https://example.com/", json!({}))
        .await;
    let id = ep["id"].as_str().unwrap();
    let key = app.get_ok(&format!("/app/{a}/endpoint/{id}/secret")).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(key.starts_with("whsec_"), "{key}");
    assert!(Secret::parse(&key).is_some(), "{key}");

    let given = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let ep2 = app
        .create_endpoint(&a, "https://example.com/2", json!({ "secret": given }))
        .await;
    let got = app
        .get_ok(&format!(
            "/app/{a}/endpoint/{}/secret",
            ep2["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(got["key"], given);

    // Any key the Svix API accepts: unpadded base64, no prefix, up to 100
    // characters; shown back in the padded form.
    let unpadded = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYo";
    let longest = "A".repeat(100);
    for (secret, shown) in [
        (unpadded.to_owned(), format!("whsec_{unpadded}=")),
        (longest.clone(), format!("whsec_{longest}")),
    ] {
        let ep = app
            .create_endpoint(&a, "https://example.com/3", json!({ "secret": secret }))
            .await;
        let path = format!("/app/{a}/endpoint/{}/secret", ep["id"].as_str().unwrap());
        assert_eq!(app.get_ok(&path).await["key"], shown.as_str());
    }
    for bad in [
        "whsec_short",
        &"A".repeat(101),
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS!",
    ] {
        let (status, body) = app
            .post(
                &format!("/app/{a}/endpoint"),
                json!({ "url": "https://example.com/4", "secret": bad }),
            )
            .await;
        assert_eq!(status, 422, "{bad}: {body}");
        assert_eq!(
            body["detail"][0]["loc"],
            json!(["body", "secret"]),
            "{body}"
        );
    }
}

#[actix_web::test]
async fn rotated_secret_signs_alongside_the_old_one() {
    let app = spawn_app().await;
    let mut rx = TestReceiver::start().await;
    let a = app.create_app().await;
    let ep = app.endpoint_to(&a, &rx).await;
    let old = app.secret(&a, &ep).await;

    let (status, rotated) = app
        .post(&format!("/app/{a}/endpoint/{ep}/secret/rotate"), json!({}))
        .await;
    assert!((200..300).contains(&status), "{status} {rotated}");
    let new_key = rotated["key"].as_str().unwrap();
    let new = Secret::parse(new_key).unwrap_or_else(|| panic!("{new_key}"));
    assert_ne!(new, old);
    assert_eq!(
        app.secret(&a, &ep).await,
        new,
        "GET secret shows the new key"
    );

    let msg = app.publish_simple(&a, "user.created").await;
    let got = rx.next().await;
    assert_eq!(got.msg_id(), msg);
    let ts: i64 = got.header("webhook-timestamp").parse().unwrap();
    let sig = got.header("webhook-signature");
    let parts: Vec<&str> = sig.split(' ').collect();
    assert_eq!(
        parts.len(),
        2,
        "two signatures during the grace period: {sig}"
    );
    assert!(parts.iter().all(|p| p.starts_with("v1,")), "{sig}");
    for (name, secret) in [("new", &new), ("old", &old)] {
        assert!(
            signing::verify(secret, &msg, ts, &got.body, sig),
            "the {name} secret does not verify {sig}"
        );
    }
    // Each signature belongs to exactly one of the two keys.
    let verifies = |s: &Secret, p: &str| signing::verify(s, &msg, ts, &got.body, p);
    assert!(
        verifies(&new, parts[0]) != verifies(&new, parts[1]),
        "{sig}"
    );
    assert!(
        verifies(&old, parts[0]) != verifies(&old, parts[1]),
        "{sig}"
    );

    // A given key, with no grace period, replaces the old one at once.
    let given = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let (status, body) = app
        .post(
            &format!("/app/{a}/endpoint/{ep}/secret/rotate"),
            json!({ "key": given, "gracePeriodSeconds": 0 }),
        )
        .await;
    assert!((200..300).contains(&status), "{status} {body}");
    assert_eq!(body["key"], given);
    let msg = app.publish_simple(&a, "user.created").await;
    let got = rx.next().await;
    assert_eq!(got.msg_id(), msg);
    let ts: i64 = got.header("webhook-timestamp").parse().unwrap();
    let sig = got.header("webhook-signature");
    // The grace of the first rotation still covers `old`; `new` had none.
    assert!(
        signing::verify(&Secret::parse(given).unwrap(), &msg, ts, &got.body, sig),
        "{sig}"
    );
    assert!(!signing::verify(&new, &msg, ts, &got.body, sig), "{sig}");
}

#[actix_web::test]
async fn headers_get_put_patch() {
    let app = spawn_app().await;
    let mut rx = TestReceiver::start().await;
    let a = app.create_app().await;
    let ep = app.endpoint_to(&a, &rx).await;
    let path = format!("/app/{a}/endpoint/{ep}/headers");

    let h = app.get_ok(&path).await;
    assert_eq!(h["headers"], json!({}));
    assert_eq!(h["sensitive"], json!([]));

    let (status, body) = app
        .put(
            &path,
            json!({ "headers": { "X-One": "1", "X-Two": "2", "X-Three": "3" } }),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(
        app.get_ok(&path).await["headers"],
        json!({ "X-One": "1", "X-Two": "2", "X-Three": "3" })
    );

    let (status, body) = app
        .patch(
            &path,
            json!({ "headers": { "X-One": "uno", "X-Four": "4", "X-Two": null }, "deleteHeaders": ["X-Three"] }),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(
        app.get_ok(&path).await["headers"],
        json!({ "X-One": "uno", "X-Four": "4" })
    );

    // A header webhookd sets itself cannot be overridden, nor one about the
    // connection be set (HTTP/2 would refuse every request).
    for name in ["webhook-signature", "Upgrade", "te", "Keep-Alive"] {
        let (status, body) = app
            .put(&path, json!({ "headers": { name: "forged" } }))
            .await;
        assert_eq!(status, 422, "{name}: {body}");
    }

    // The custom headers go out with deliveries.
    app.publish_simple(&a, "any.event").await;
    let got = rx.next().await;
    assert_eq!(got.header("x-one"), "uno");
    assert_eq!(got.header("x-four"), "4");
    assert!(got.headers.get("x-two").is_none() && got.headers.get("x-three").is_none());
}

#[actix_web::test]
async fn stats_count_statuses() {
    let app = spawn_app_with_no_retries().await;
    let mut rx = TestReceiver::start().await;
    let a = app.create_app().await;
    let ep = app.endpoint_to(&a, &rx).await;
    let path = format!("/app/{a}/endpoint/{ep}/stats");
    assert_eq!(
        app.get_ok(&path).await,
        json!({ "success": 0, "pending": 0, "sending": 0, "fail": 0, "canceled": 0 })
    );

    rx.script([Reply::status(200), Reply::status(200), Reply::status(500)]);
    let mut msgs = Vec::new();
    for _ in 0..3 {
        let m = app.publish_simple(&a, "e.t").await;
        rx.next().await;
        msgs.push(m);
    }
    app.wait_status(&a, &msgs[0], &ep, 0).await;
    app.wait_status(&a, &msgs[1], &ep, 0).await;
    app.wait_status(&a, &msgs[2], &ep, 2).await;
    assert_eq!(
        app.get_ok(&path).await,
        json!({ "success": 2, "pending": 0, "sending": 0, "fail": 1, "canceled": 0 })
    );
}

/// A server whose first failure is final, so a status settles after one attempt.
async fn spawn_app_with_no_retries() -> crate::helpers::TestApp {
    crate::helpers::spawn_app_with(&[("WEBHOOKD_RETRY_SCHEDULE", "")]).await
}

/// An endpoint deleted while a delivery to it is under way: once the
/// request ends, the message lists no delivery to the endpoint and nothing
/// is retried, and the attempt stays listed under the message.
#[actix_web::test]
async fn deleting_an_endpoint_during_a_delivery_leaves_no_status_behind() {
    let app = spawn_app().await;
    let mut rx = TestReceiver::start().await;
    let gate = Gate::new();
    rx.set_default(Reply::status(500).gate(&gate));
    let a = app.create_app().await;
    let ep = app.endpoint_to(&a, &rx).await;
    let msg = app.publish_simple(&a, "order.created").await;
    assert_eq!(rx.next().await.msg_id(), msg, "the request is under way");

    let (status, _) = app.delete(&format!("/app/{a}/endpoint/{ep}")).await;
    assert_eq!(status, 204);
    gate.release();
    let attempts = format!("/app/{a}/attempt/msg/{msg}");
    let listed = wait_until(WAIT, "the attempt to be recorded", || async {
        let page = app.get_ok(&attempts).await;
        (page["data"].as_array().unwrap().len() == 1).then_some(page)
    })
    .await;
    assert_eq!(listed["data"][0]["responseStatusCode"], 500);
    assert_eq!(listed["data"][0]["endpointId"], ep.as_str());
    let dests = app.get_ok(&format!("/app/{a}/msg/{msg}/endpoint")).await;
    assert_eq!(dests["data"], json!([]), "{dests}");
    let health = app.get_ok("/webhookd/health").await;
    assert_eq!(health["queue"]["depth"], 0, "no retry: {health}");
    rx.stop().await;
    app.stop().await;
}
