//! Attempt listings: by message, by endpoint, one attempt, an endpoint's messages.

use serde_json::{Value, json};

use crate::helpers::{Reply, TestApp, TestReceiver, spawn_app_with};

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

#[actix_web::test]
async fn attempts_by_id_by_endpoint_and_endpoint_messages_by_status() {
    // No retries: each message gets exactly one attempt.
    let app = spawn_app_with(&[("WEBHOOKD_RETRY_SCHEDULE", "")]).await;
    let mut rx = TestReceiver::start().await;
    let mut rx2 = TestReceiver::start().await;
    let a = app.create_app().await;
    let ep = app.endpoint_to(&a, &rx).await;
    let ep2 = app.endpoint_to(&a, &rx2).await;

    rx.script([Reply::status(200), Reply::status(503)]);
    let ok = app.publish_simple(&a, "e.ok").await;
    rx.next().await;
    app.wait_status(&a, &ok, &ep, 0).await;
    let bad = app.publish_simple(&a, "e.bad").await;
    rx.next().await;
    app.wait_status(&a, &bad, &ep, 2).await;
    rx2.take(2).await;
    app.wait_status(&a, &ok, &ep2, 0).await;
    app.wait_status(&a, &bad, &ep2, 0).await;

    // By message, optionally for one endpoint.
    let of_ok = app.attempts_of_msg(&a, &ok).await;
    assert_eq!(of_ok.len(), 2, "one per endpoint: {of_ok:?}");
    let only = app
        .get_ok(&format!("/app/{a}/attempt/msg/{ok}?endpoint_id={ep}"))
        .await;
    assert_eq!(only["data"].as_array().unwrap().len(), 1, "{only}");
    let attempt = only["data"][0].clone();
    assert_eq!(attempt["endpointId"], ep);
    // Filters by the message keep all of its attempts or none.
    for (query, n) in [
        ("event_types=e.ok", 2),
        ("event_types=e.bad", 0),
        ("event_types=e.bad,e.ok", 2),
        ("channel=nowhere", 0),
        ("tag=nothing", 0),
    ] {
        let page = app
            .get_ok(&format!("/app/{a}/attempt/msg/{ok}?{query}"))
            .await;
        assert_eq!(page["data"].as_array().unwrap().len(), n, "{query}: {page}");
    }
    for key in [
        "id",
        "msgId",
        "endpointId",
        "url",
        "response",
        "responseStatusCode",
        "responseDurationMs",
        "status",
        "statusText",
        "triggerType",
        "timestamp",
    ] {
        assert!(!attempt[key].is_null(), "{key} missing in {attempt}");
    }

    // One attempt by id.
    let att_id = attempt["id"].as_str().unwrap();
    let one = app
        .get_ok(&format!("/app/{a}/msg/{ok}/attempt/{att_id}"))
        .await;
    assert_eq!(one, attempt);
    let (status, body) = app
        .get(&format!("/app/{a}/msg/{bad}/attempt/{att_id}"))
        .await;
    assert_eq!(status, 404, "an attempt of another message: {body}");
    assert_eq!(
        app.get(&format!("/app/{a}/msg/{ok}/attempt/atmpt_nope"))
            .await
            .0,
        404
    );

    // By endpoint, with status and status_code_class filters.
    let by_ep = app.get_ok(&format!("/app/{a}/attempt/endpoint/{ep}")).await;
    let data = by_ep["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{by_ep}");
    assert!(data.iter().all(|x| x["endpointId"] == ep));
    assert_eq!(data[0]["msgId"], bad, "newest first");
    assert_eq!(data[0]["responseStatusCode"], 503);
    let failed = app
        .get_ok(&format!("/app/{a}/attempt/endpoint/{ep}?status=2"))
        .await;
    assert_eq!(
        failed["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["msgId"].clone())
            .collect::<Vec<_>>(),
        [json!(bad)]
    );
    let class5 = app
        .get_ok(&format!(
            "/app/{a}/attempt/endpoint/{ep}?status_code_class=500"
        ))
        .await;
    assert_eq!(class5["data"].as_array().unwrap().len(), 1, "{class5}");
    let class2 = app
        .get_ok(&format!(
            "/app/{a}/attempt/endpoint/{ep}?status_code_class=200"
        ))
        .await;
    assert_eq!(class2["data"][0]["msgId"], ok);
    let bare = app
        .get_ok(&format!(
            "/app/{a}/attempt/endpoint/{ep}?with_content=false"
        ))
        .await;
    assert!(
        bare["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["response"] == ""),
        "{bare}"
    );

    // The messages sent to an endpoint, with their status there.
    let sent = app.get_ok(&format!("/app/{a}/endpoint/{ep}/msg")).await;
    assert_eq!(ids(&sent), [bad.clone(), ok.clone()], "{sent}");
    assert_eq!(sent["data"][0]["status"], 2);
    assert_eq!(sent["data"][0]["statusText"], "fail");
    assert_eq!(sent["data"][1]["status"], 0);
    assert_eq!(sent["data"][1]["payload"], json!({ "type": "e.ok" }));
    let failed = app
        .get_ok(&format!("/app/{a}/endpoint/{ep}/msg?status=2"))
        .await;
    assert_eq!(ids(&failed), std::slice::from_ref(&bad));
    let succeeded = app
        .get_ok(&format!("/app/{a}/endpoint/{ep}/msg?status=0"))
        .await;
    assert_eq!(ids(&succeeded), std::slice::from_ref(&ok));
    let at_ep2 = app
        .get_ok(&format!("/app/{a}/endpoint/{ep2}/msg?status=2"))
        .await;
    assert_eq!(ids(&at_ep2), Vec::<String>::new(), "{at_ep2}");

    let (status, body) = app
        .get(&format!("/app/{a}/attempt/endpoint/{ep}?status=9"))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["query", "status"]));
}

/// An app with one endpoint (whose receiver answers `ok`) and a message
/// delivered to it, then resent `resends` times; returns the running
/// server, app, endpoint and message.
async fn delivered_and_resent(resends: usize) -> (TestApp, String, String, String) {
    let app = spawn_app_with(&[("WEBHOOKD_RETRY_SCHEDULE", "")]).await;
    let mut rx = TestReceiver::start().await;
    let a = app.create_app().await;
    let ep = app.endpoint_to(&a, &rx).await;
    let msg = app.publish_simple(&a, "e.ok").await;
    rx.next().await;
    app.wait_status(&a, &msg, &ep, 0).await;
    for _ in 0..resends {
        app.resend(&a, &msg, &ep).await;
        rx.next().await;
    }
    (app, a, ep, msg)
}

/// Expunging a delivered message empties the response of every attempt (a
/// delivery's first one, kept with its status, and a resend, kept under the
/// message) and leaves them listed.
#[actix_web::test]
async fn expunged_content_empties_every_attempt_response() {
    let (app, a, ep, msg) = delivered_and_resent(1).await;
    let attempts = app.wait_attempts(&a, &msg, 2).await;
    assert!(
        attempts.iter().all(|x| x["response"] == "ok"),
        "{attempts:?}"
    );

    let (status, body) = app.delete(&format!("/app/{a}/msg/{msg}/content")).await;
    assert_eq!(status, 204, "{body}");
    let attempts = app.attempts_of_msg(&a, &msg).await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert!(attempts.iter().all(|x| x["response"] == ""), "{attempts:?}");
    let by_ep = app.get_ok(&format!("/app/{a}/attempt/endpoint/{ep}")).await;
    let by_ep = by_ep["data"].as_array().unwrap();
    assert_eq!(by_ep.len(), 2, "{by_ep:?}");
    assert!(by_ep.iter().all(|x| x["response"] == ""), "{by_ep:?}");
    for x in &attempts {
        let one = app
            .get_ok(&format!(
                "/app/{a}/msg/{msg}/attempt/{}",
                x["id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(one["response"], "", "{one}");
    }
    assert_eq!(app.destination(&a, &msg, &ep).await["status"], 0);
}

/// One attempt's response body can be removed (an endpoint that answered
/// with what should not be kept): a delivery's first attempt, kept with its
/// status, and a later one, kept under the message. The others keep theirs,
/// every attempt stays listed, and an unknown attempt is a 404.
#[actix_web::test]
async fn one_attempt_content_is_expunged() {
    let (app, a, ep, msg) = delivered_and_resent(2).await;
    let attempts = app.wait_attempts(&a, &msg, 3).await;
    let ids: Vec<String> = attempts
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_owned())
        .collect();
    // Newest first: the first attempt is the last listed.
    let (first, later) = (&ids[2], &ids[0]);
    for id in [first, later] {
        let (status, body) = app
            .delete(&format!("/app/{a}/msg/{msg}/attempt/{id}/content"))
            .await;
        assert_eq!(status, 204, "{body}");
    }
    let responses = |list: &[serde_json::Value]| -> Vec<(String, String)> {
        list.iter()
            .map(|x| {
                let id = x["id"].as_str().unwrap().to_owned();
                (id, x["response"].as_str().unwrap().to_owned())
            })
            .collect()
    };
    let want = vec![
        (ids[0].clone(), String::new()),
        (ids[1].clone(), "ok".to_owned()),
        (ids[2].clone(), String::new()),
    ];
    assert_eq!(responses(&app.attempts_of_msg(&a, &msg).await), want);
    let by_ep = app.get_ok(&format!("/app/{a}/attempt/endpoint/{ep}")).await;
    assert_eq!(responses(by_ep["data"].as_array().unwrap()), want);
    assert_eq!(app.destination(&a, &msg, &ep).await["status"], 0);

    let other = app.publish_simple(&a, "e.ok").await;
    for path in [
        format!("/app/{a}/msg/{msg}/attempt/atmpt_nope/content"),
        format!("/app/{a}/msg/{other}/attempt/{first}/content"),
        format!("/app/{a}/msg/msg_nope/attempt/{first}/content"),
    ] {
        let (status, body) = app.delete(&path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["code"], "not_found", "{body}");
    }
}

/// The endpoints of a message, a page at a time: an endpoint deleted while
/// its delivery was under way (held in memory, so still listed by the
/// store) is left out, and the page it leaves empty still leads on (it
/// ended with no iterator and `done: false`, which sent clients back to the
/// first page, forever).
#[actix_web::test]
async fn a_page_of_destinations_emptied_by_a_deletion_leads_on() {
    let app = spawn_app_with(&[]).await;
    let mut held = TestReceiver::start().await;
    let gate = crate::helpers::Gate::new();
    held.set_default(Reply::status(200).gate(&gate));
    let mut other = TestReceiver::start().await;
    let a = app.create_app().await;
    let first = app.endpoint_to(&a, &held).await;
    let second = app.endpoint_to(&a, &other).await;
    let m = app.publish_simple(&a, "e.t").await;
    other.next().await;
    held.next().await;
    let (status, _) = app.delete(&format!("/app/{a}/endpoint/{first}")).await;
    assert_eq!(status, 204);
    let page = app
        .get_ok(&format!("/app/{a}/msg/{m}/endpoint?limit=1"))
        .await;
    assert_eq!(page["data"], json!([]), "{page}");
    assert_eq!(page["done"], false, "{page}");
    let next = page["iterator"].as_str().expect("an iterator");
    let page = app
        .get_ok(&format!(
            "/app/{a}/msg/{m}/endpoint?limit=1&iterator={next}"
        ))
        .await;
    assert_eq!(page["data"][0]["id"], second.as_str(), "{page}");
    gate.release();
    app.stop().await;
}

/// A deleted endpoint's attempts stay listed under their message, and its
/// ID still filters them (it was a 404); a uid no endpoint has is a 404.
#[actix_web::test]
async fn a_deleted_endpoints_attempts_are_found_by_its_id() {
    let app = spawn_app_with(&[]).await;
    let mut rx = TestReceiver::start().await;
    let a = app.create_app().await;
    let ep = app.endpoint_to(&a, &rx).await;
    let m = app.publish_simple(&a, "e.t").await;
    rx.next().await;
    app.wait_attempts(&a, &m, 1).await;
    let (status, _) = app.delete(&format!("/app/{a}/endpoint/{ep}")).await;
    assert_eq!(status, 204);
    let list = app
        .get_ok(&format!("/app/{a}/attempt/msg/{m}?endpoint_id={ep}"))
        .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["data"][0]["endpointId"], ep.as_str(), "{list}");
    let (status, _) = app
        .get(&format!("/app/{a}/attempt/msg/{m}?endpoint_id=no-such-uid"))
        .await;
    assert_eq!(status, 404);
    app.stop().await;
}
