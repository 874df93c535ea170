//! Messages: idempotent publish, eventId, listing filters, content expunge.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::helpers::{TestReceiver, spawn_app};

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

#[actix_web::test]
async fn idempotency_key_publishes_once() {
    let app = spawn_app().await;
    let mut rx = TestReceiver::start().await;
    let a = app.create_app().await;
    let ep = app.endpoint_to(&a, &rx).await;
    let path = format!("/app/{a}/msg");
    let body = br#"{"eventType":"order.paid","payload":{"order":42}}"#;
    let key = [("idempotency-key", "order-42-paid")];

    let first = app.post_raw(&path, &key, body).await;
    assert_eq!(first.status, 202, "{:?}", first.body);
    let second = app.post_raw(&path, &key, body).await;
    assert_eq!(second.status, 202, "{:?}", second.body);
    assert_eq!(second.json(), first.json(), "the same response comes back");
    assert_eq!(second.body, first.body);
    let msg = first.json()["id"].as_str().unwrap().to_owned();

    // Another key is another message.
    let other = app
        .post_raw(&path, &[("idempotency-key", "something-else")], body)
        .await;
    assert_eq!(other.status, 202);
    let other = other.json()["id"].as_str().unwrap().to_owned();
    assert_ne!(other, msg);

    let listed: BTreeSet<String> = ids(&app.get_ok(&path).await).into_iter().collect();
    assert_eq!(listed, BTreeSet::from([msg.clone(), other.clone()]));

    let got: BTreeSet<String> = rx.take(2).await.iter().map(|x| x.msg_id()).collect();
    assert_eq!(got, BTreeSet::from([msg.clone(), other]));
    let sentinel = app.publish_simple(&a, "sentinel").await;
    assert_eq!(
        rx.next().await.msg_id(),
        sentinel,
        "no second delivery of {msg}"
    );
    assert_eq!(app.wait_attempts(&a, &msg, 1).await.len(), 1);
    app.wait_status(&a, &msg, &ep, 0).await;
    rx.assert_nothing_more();
}

#[actix_web::test]
async fn duplicate_event_id_is_409_and_event_id_finds_the_message() {
    let app = spawn_app().await;
    let a = app.create_app().await;
    let m = app
        .publish(
            &a,
            json!({ "eventType": "e.t", "eventId": "evt-1", "payload": { "n": 1 } }),
        )
        .await;
    assert_eq!(m["eventId"], "evt-1");
    let (status, body) = app
        .post(
            &format!("/app/{a}/msg"),
            json!({ "eventType": "e.t", "eventId": "evt-1", "payload": { "n": 2 } }),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "conflict");
    assert!(body["detail"].is_string());

    let by_event = app.get_ok(&format!("/app/{a}/msg/evt-1")).await;
    assert_eq!(by_event["id"], m["id"]);
    assert_eq!(by_event["payload"], json!({ "n": 1 }));
    let by_id = app
        .get_ok(&format!("/app/{a}/msg/{}", m["id"].as_str().unwrap()))
        .await;
    assert_eq!(by_id, by_event);
    assert_eq!(ids(&app.get_ok(&format!("/app/{a}/msg")).await).len(), 1);
}

#[actix_web::test]
async fn list_with_content_and_event_type_filters() {
    let app = spawn_app().await;
    let a = app.create_app().await;
    let signup = app
        .publish(
            &a,
            json!({ "eventType": "user.signup", "payload": { "u": 1 } }),
        )
        .await;
    let paid = app
        .publish(
            &a,
            json!({ "eventType": "invoice.paid", "payload": { "i": 2 } }),
        )
        .await;
    let other = app
        .publish(
            &a,
            json!({ "eventType": "other.thing", "payload": { "o": 3 } }),
        )
        .await;
    let path = format!("/app/{a}/msg");

    let full = app.get_ok(&path).await;
    assert_eq!(full["data"].as_array().unwrap().len(), 3);
    let by_id = |list: &Value, id: &Value| -> Value {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == *id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not in {list}"))
    };
    assert_eq!(by_id(&full, &signup["id"])["payload"], json!({ "u": 1 }));

    let bare = app.get_ok(&format!("{path}?with_content=false")).await;
    for m in bare["data"].as_array().unwrap() {
        assert_eq!(m["payload"], json!({}), "{m}");
        assert!(
            m["eventType"].is_string() && m["timestamp"].is_string(),
            "{m}"
        );
    }
    let (status, created) = app
        .post(
            &format!("{path}?with_content=false"),
            json!({ "eventType": "x.y", "payload": { "big": true } }),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(created["payload"], json!({}));
    let single = app
        .get_ok(&format!(
            "{path}/{}?with_content=false",
            signup["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(single["payload"], json!({}));

    // Comma-joined (as the SDK sends) and repeated keys.
    let want: BTreeSet<String> = [&signup, &paid]
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    for q in [
        "event_types=user.signup,invoice.paid",
        "event_types=user.signup%2Cinvoice.paid",
        "event_types=user.signup&event_types=invoice.paid",
    ] {
        let got: BTreeSet<String> = ids(&app.get_ok(&format!("{path}?{q}")).await)
            .into_iter()
            .collect();
        assert_eq!(got, want, "{q}");
    }
    let got = ids(&app.get_ok(&format!("{path}?event_types=other.thing")).await);
    assert_eq!(got, [other["id"].as_str().unwrap()]);
}

#[actix_web::test]
async fn expunged_content_reads_as_expired() {
    let app = spawn_app().await;
    let a = app.create_app().await;
    let m = app
        .publish(
            &a,
            json!({ "eventType": "e.t", "payload": { "secret": "pii" } }),
        )
        .await;
    let id = m["id"].as_str().unwrap();
    let (status, body) = app.delete(&format!("/app/{a}/msg/{id}/content")).await;
    assert_eq!(status, 204, "{body}");
    assert!(body.is_null());
    let after = app.get_ok(&format!("/app/{a}/msg/{id}")).await;
    assert_eq!(after["payload"], json!({ "expired": true }));
    assert_eq!(after["eventType"], "e.t", "the message itself stays");
    let list = app.get_ok(&format!("/app/{a}/msg")).await;
    assert_eq!(list["data"][0]["payload"], json!({ "expired": true }));
    assert_eq!(
        app.delete(&format!(
            "/app/{a}/msg/msg_01ARZ3NDEKTSV4RRFFQ69G5FAV/content"
        ))
        .await
        .0,
        404
    );
}
