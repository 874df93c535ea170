//! Failures: retries, exhaustion, manual resend, recover, Retry-After, timeouts.

use serde_json::json;

use crate::helpers::{Reply, TestReceiver, millis, rfc3339, spawn_app, spawn_app_with};

#[actix_web::test]
async fn retries_until_success() {
    let app = spawn_app().await;
    let mut rx = TestReceiver::start().await;
    rx.script([Reply::status(500), Reply::status(500)]);
    let a = app.create_app().await;
    let ep = app.endpoint_to(&a, &rx).await;
    let msg = app.publish_simple(&a, "e.t").await;

    for _ in 0..3 {
        assert_eq!(
            rx.next().await.msg_id(),
            msg,
            "each attempt is the same message"
        );
    }
    let d = app.wait_status(&a, &msg, &ep, 0).await;
    assert_eq!(d["statusText"], "success");
    assert!(d["nextAttempt"].is_null(), "{d}");
    let attempts = app.attempts_of_msg(&a, &msg).await;
    let codes: Vec<_> = attempts
        .iter()
        .map(|x| x["responseStatusCode"].clone())
        .collect();
    assert_eq!(codes, [json!(200), json!(500), json!(500)], "newest first");
    let statuses: Vec<_> = attempts.iter().map(|x| x["status"].clone()).collect();
    assert_eq!(statuses, [json!(0), json!(2), json!(2)]);
    for x in &attempts {
        assert_eq!(x["msgId"], msg);
        assert_eq!(x["endpointId"], ep);
        assert_eq!(x["triggerType"], 0);
        assert!(x["id"].as_str().unwrap().starts_with("atmpt_"), "{x}");
    }
    rx.assert_nothing_more();
}

#[actix_web::test]
async fn exhaustion_then_manual_resend() {
    let app = spawn_app().await;
    let mut rx = TestReceiver::start().await;
    rx.set_default(Reply::status(500));
    let a = app.create_app().await;
    let ep = app.endpoint_to(&a, &rx).await;
    let msg = app.publish_simple(&a, "e.t").await;

    rx.take(3).await;
    let d = app.wait_status(&a, &msg, &ep, 2).await;
    assert_eq!(d["statusText"], "fail");
    assert!(d["nextAttempt"].is_null(), "{d}");
    let attempts = app.wait_attempts(&a, &msg, 3).await;
    assert_eq!(attempts.len(), 3, "1 attempt + 2 retries: {attempts:?}");
    assert!(attempts.iter().all(|x| x["responseStatusCode"] == 500));

    rx.set_default(Reply::status(200));
    app.resend(&a, &msg, &ep).await;
    assert_eq!(rx.next().await.msg_id(), msg);
    app.wait_status(&a, &msg, &ep, 0).await;
    let attempts = app.wait_attempts(&a, &msg, 4).await;
    assert_eq!(attempts.len(), 4);
    assert_eq!(
        attempts[0]["triggerType"], 1,
        "the resend is manual: {}",
        attempts[0]
    );
    assert_eq!(attempts[0]["status"], 0);
    assert_eq!(attempts[0]["responseStatusCode"], 200);
    rx.assert_nothing_more();
}

#[actix_web::test]
async fn resend_without_a_body_is_accepted() {
    // The SDK sends resend as an empty POST (Content-Length: 0, no content-type).
    let app = spawn_app().await;
    let mut rx = TestReceiver::start().await;
    let a = app.create_app().await;
    let ep = app.endpoint_to(&a, &rx).await;
    let msg = app.publish_simple(&a, "e.t").await;
    rx.next().await;
    app.wait_status(&a, &msg, &ep, 0).await;
    let res = app
        .request(
            actix_web::http::Method::POST,
            &format!("/app/{a}/msg/{msg}/endpoint/{ep}/resend"),
            &[],
            None,
        )
        .await;
    assert_eq!(res.status, 202);
    assert_eq!(res.json(), json!({}));
    assert_eq!(
        rx.next().await.msg_id(),
        msg,
        "resent although it had succeeded"
    );
}

#[actix_web::test]
async fn recover_resends_failed_messages_since_a_time() {
    let app = spawn_app().await;
    let mut rx = TestReceiver::start().await;
    rx.set_default(Reply::status(500));
    let a = app.create_app().await;
    let ep = app.endpoint_to(&a, &rx).await;

    let before = app
        .publish(&a, json!({ "eventType": "e.old", "payload": {} }))
        .await;
    let old = before["id"].as_str().unwrap().to_owned();
    rx.take(3).await;
    app.wait_status(&a, &old, &ep, 2).await;
    // `since` is after the first message (IDs have millisecond precision).
    let since = rfc3339(millis(&before["timestamp"]) + 1);

    let new = app.publish_simple(&a, "e.new").await;
    rx.take(3).await;
    app.wait_status(&a, &new, &ep, 2).await;

    rx.set_default(Reply::status(200));
    let (status, task) = app
        .post(
            &format!("/app/{a}/endpoint/{ep}/recover"),
            json!({ "since": since }),
        )
        .await;
    assert_eq!(status, 202, "{task}");
    assert!(task["id"].as_str().unwrap().starts_with("qtask_"), "{task}");
    assert_eq!(task["status"], "running");
    assert_eq!(task["task"], "endpoint.recover");
    millis(&task["updatedAt"]);

    // Recover queued the new message only: the old one is still failed, with no next attempt.
    let d_old = app.destination(&a, &old, &ep).await;
    assert_eq!(d_old["status"], 2, "{d_old}");
    assert!(d_old["nextAttempt"].is_null(), "{d_old}");

    assert_eq!(rx.next().await.msg_id(), new);
    app.wait_status(&a, &new, &ep, 0).await;
    assert_eq!(app.attempts_of_msg(&a, &new).await.len(), 4);
    assert_eq!(app.attempts_of_msg(&a, &old).await.len(), 3);
    assert_eq!(app.destination(&a, &old, &ep).await["status"], 2);
    rx.assert_nothing_more();
}

#[actix_web::test]
async fn retry_after_on_429_pushes_the_next_attempt_back() {
    let app = spawn_app().await;
    let mut rx = TestReceiver::start().await;
    rx.script([Reply::status(429).header("Retry-After", "2")]);
    let a = app.create_app().await;
    let ep = app.endpoint_to(&a, &rx).await;
    let msg = app.publish_simple(&a, "e.t").await;
    rx.next().await;

    let d = app.wait_status(&a, &msg, &ep, 3).await;
    assert_eq!(d["statusText"], "sending");
    let attempts = app.attempts_of_msg(&a, &msg).await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["responseStatusCode"], 429);
    let attempted = millis(&attempts[0]["timestamp"]);
    let next = millis(&d["nextAttempt"]);
    // The schedule says 20 ms; Retry-After says 2 s, and wins.
    assert!(
        next - attempted >= 1_900,
        "next attempt {} is only {} ms after the 429",
        d["nextAttempt"],
        next - attempted
    );
    assert!(next - attempted < 10_000, "{}", next - attempted);
}

#[actix_web::test]
async fn a_receiver_slower_than_the_timeout_counts_as_no_response() {
    let app = spawn_app_with(&[
        ("WEBHOOKD_REQUEST_TIMEOUT", "300ms"),
        ("WEBHOOKD_RETRY_SCHEDULE", ""),
    ])
    .await;
    let mut rx = TestReceiver::start().await;
    rx.set_default(Reply::status(200).delay(std::time::Duration::from_millis(1_500)));
    let a = app.create_app().await;
    let ep = app.endpoint_to(&a, &rx).await;
    let msg = app.publish_simple(&a, "e.t").await;
    rx.next().await;

    app.wait_status(&a, &msg, &ep, 2).await;
    let attempts = app.attempts_of_msg(&a, &msg).await;
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0]["responseStatusCode"], 0);
    assert_eq!(attempts[0]["status"], 2);
    let took = attempts[0]["responseDurationMs"].as_u64().unwrap();
    assert!((250..1_400).contains(&took), "the attempt took {took} ms");
}
