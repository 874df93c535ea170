//! The scheduler and its jobs with a controlled clock, and operational
//! webhooks (issue #4). Jobs are run through the scheduler's handle at chosen
//! clock times: nothing waits for a schedule.

use std::sync::Arc;

use serde_json::{Value, json};
use webhookd::domain::{MessageStatus, Secret, now_ms};
use webhookd::scheduler::{Job, ManualClock};
use webhookd::signing;
use webhookd::store::JobOutcome;

use crate::helpers::{Arrival, Reply, TestApp, TestReceiver, spawn_app_clocked};

const DAY: i64 = 86_400_000;

/// Schedules off: in the tests of what jobs do, only `run_job` runs them (the
/// scheduler's own loop would otherwise run a job that the moved clock made due).
const MANUAL: [(&str, &str); 4] = [
    ("WEBHOOKD_SCHEDULER__RECONCILE", "off"),
    ("WEBHOOKD_SCHEDULER__RETENTION", "off"),
    ("WEBHOOKD_SCHEDULER__ENDPOINT_HEALTH", "off"),
    ("WEBHOOKD_SCHEDULER__SILENCE_WATCHDOG", "off"),
];

/// `overrides` plus `MANUAL`.
fn manual<'a>(overrides: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = MANUAL.to_vec();
    env.extend_from_slice(overrides);
    env
}
const OPS_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn count(rec: &webhookd::store::JobRecord, name: &str) -> u64 {
    match &rec.last_outcome {
        Some(JobOutcome::Done(c)) => c.iter().find(|(k, _)| k == name).map_or(0, |(_, v)| *v),
        other => panic!("the job did not succeed: {other:?}"),
    }
}

/// The next operational event of `kind`, checked against the operational secret
/// (events of other kinds that arrive first are skipped).
async fn ops_event(rx: &mut TestReceiver, kind: &str) -> Value {
    let secret = Secret::parse(OPS_SECRET).unwrap();
    loop {
        let a: Arrival = rx.next().await;
        let ts: i64 = a.header("webhook-timestamp").parse().unwrap();
        assert!(
            signing::verify(
                &secret,
                a.header("webhook-id"),
                ts,
                &a.body,
                a.header("webhook-signature")
            ),
            "an operational event that does not verify"
        );
        let body: Value = serde_json::from_slice(&a.body).unwrap();
        assert!(body["timestamp"].is_string());
        if body["type"] == kind {
            return body["data"].clone();
        }
    }
}

async fn with_ops(clock: &Arc<ManualClock>, ops: &TestReceiver, extra: &[(&str, &str)]) -> TestApp {
    let url = ops.url();
    let mut env = manual(&[
        ("WEBHOOKD_OPERATIONAL__URL", url.as_str()),
        ("WEBHOOKD_OPERATIONAL__SECRET", OPS_SECRET),
    ]);
    env.extend_from_slice(extra);
    spawn_app_clocked(&env, Arc::clone(clock), None).await
}

#[actix_web::test]
async fn runs_are_recorded_and_missed_runs_happen_once_at_start() {
    let t0 = now_ms();
    let clock = Arc::new(ManualClock::at(t0));
    let app = spawn_app_clocked(&[], Arc::clone(&clock), None).await;
    // Every job runs once at the first start (none ever ran).
    let status =
        crate::helpers::wait_until(crate::helpers::WAIT, "the first runs at start", || async {
            let s = app.scheduler().status().unwrap();
            s.iter().all(|j| j.record.runs == 1).then_some(s)
        })
        .await;
    for j in &status {
        assert_eq!(j.record.last_started_ms, Some(t0), "{}", j.job.name());
        assert!(j.next_run_ms.unwrap() > t0);
    }
    let rec = app.run_job(Job::Reconcile).await;
    assert_eq!(rec.runs, 2);
    assert_eq!(count(&rec, "requeued"), 0);

    // Stopped for three hours: the hourly retention came due and runs once at start.
    let data = app.stop_keeping_data().await;
    clock.set(t0 + 3 * 3_600_000);
    let app = spawn_app_clocked(&[], Arc::clone(&clock), Some(data)).await;
    let retention = crate::helpers::wait_until(
        crate::helpers::WAIT,
        "retention to run at start",
        || async {
            let s = app.scheduler().status().unwrap();
            s.into_iter()
                .find(|j| j.job == Job::Retention && j.record.runs == 2)
        },
    )
    .await;
    assert_eq!(retention.record.last_started_ms, Some(t0 + 3 * 3_600_000));
    // Not due again until the next hour.
    assert!(retention.next_run_ms.unwrap() > t0 + 3 * 3_600_000);

    // The clock set back by hours: no job waits for it to get there again.
    clock.set(t0 + 600_000);
    for j in app.scheduler().status().unwrap() {
        let next = j.next_run_ms.unwrap();
        assert!(next <= t0 + 600_000 + 3_600_000, "{}: {next}", j.job.name());
    }
    app.stop().await;
}

#[actix_web::test]
async fn retention_expires_old_content_and_never_drops_undelivered_messages() {
    let clock = Arc::new(ManualClock::at(now_ms()));
    let app = spawn_app_clocked(
        &manual(&[("WEBHOOKD_RETRY_SCHEDULE", "")]),
        Arc::clone(&clock),
        None,
    )
    .await;
    let mut ok_rx = TestReceiver::start().await;
    let mut bad_rx = TestReceiver::start().await;
    bad_rx.set_default(Reply::status(500));
    let app_id = app.create_app().await;
    let ok_ep = app
        .create_endpoint(&app_id, &ok_rx.url(), json!({"eventTypes": ["good"]}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let bad_ep = app
        .create_endpoint(&app_id, &bad_rx.url(), json!({"eventTypes": ["bad"]}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let good = app.publish_simple(&app_id, "good").await;
    let bad = app.publish_simple(&app_id, "bad").await;
    ok_rx.next().await;
    bad_rx.next().await;
    app.wait_status(&app_id, &good, &ok_ep, MessageStatus::Success.code() as u64)
        .await;
    app.wait_status(&app_id, &bad, &bad_ep, MessageStatus::Fail.code() as u64)
        .await;

    // 31 days on: the delivered payload is gone, the failed one is kept.
    clock.advance(31 * DAY);
    let rec = app.run_job(Job::Retention).await;
    assert_eq!(count(&rec, "payloads_expunged"), 1);
    assert!(count(&rec, "bytes_freed") > 0);
    let (_, m) = app.get(&format!("/app/{app_id}/msg/{good}")).await;
    assert_eq!(m["payload"], json!({"expired": true}));
    let (_, m) = app.get(&format!("/app/{app_id}/msg/{bad}")).await;
    assert_eq!(m["payload"], json!({"type": "bad"}));

    // 91 days on: attempt records are deleted.
    clock.advance(60 * DAY);
    let rec = app.run_job(Job::Retention).await;
    assert_eq!(count(&rec, "attempts_deleted"), 2);
    assert!(app.attempts_of_msg(&app_id, &good).await.is_empty());
    app.stop().await;
}

#[actix_web::test]
async fn the_disk_bound_drops_delivered_messages_only() {
    let clock = Arc::new(ManualClock::at(now_ms()));
    let app = spawn_app_clocked(
        &[
            ("WEBHOOKD_RETRY_SCHEDULE", ""),
            ("WEBHOOKD_RETENTION__MAX_DISK_BYTES", "1"),
        ],
        Arc::clone(&clock),
        None,
    )
    .await;
    let mut rx = TestReceiver::start().await;
    rx.script([Reply::status(200), Reply::status(500)]);
    let app_id = app.create_app().await;
    let ep = app.endpoint_to(&app_id, &rx).await;
    let delivered = app.publish_simple(&app_id, "one").await;
    rx.next().await;
    app.wait_status(&app_id, &delivered, &ep, 0).await;
    let failed = app.publish_simple(&app_id, "two").await;
    rx.next().await;
    app.wait_status(&app_id, &failed, &ep, 2).await;
    let rec = app.run_job(Job::Retention).await;
    assert_eq!(count(&rec, "messages_deleted"), 1);
    assert_eq!(
        app.get(&format!("/app/{app_id}/msg/{delivered}")).await.0,
        404
    );
    assert_eq!(app.get(&format!("/app/{app_id}/msg/{failed}")).await.0, 200);
    app.stop().await;
}

/// The disk bound deletes what brings the database under its target once:
/// sled's file keeps its size a while after a deletion (writes use the room
/// first), and a run soon after deletes nothing more. (Each run deleted the
/// whole excess again, until the file shrank: most of the history went for
/// an excess of a few percent.)
#[actix_web::test]
async fn the_disk_bound_does_not_delete_again_what_the_file_keeps_for_a_while() {
    let clock = Arc::new(ManualClock::at(now_ms()));
    let no_retries = ("WEBHOOKD_RETRY_SCHEDULE", "");
    let app = spawn_app_clocked(&[no_retries], Arc::clone(&clock), None).await;
    let mut rx = TestReceiver::start().await;
    let app_id = app.create_app().await;
    let ep = app.endpoint_to(&app_id, &rx).await;
    let mut msgs = Vec::new();
    for i in 0..200 {
        // Random hex: sled's compression leaves it about as large.
        let pad: String = (0..256)
            .map(|_| format!("{:016x}", rand::random::<u64>()))
            .collect();
        let m = app
            .publish(
                &app_id,
                json!({"eventType": "fill", "payload": {"i": i, "pad": pad}}),
            )
            .await;
        msgs.push(m["id"].as_str().unwrap().to_owned());
    }
    rx.take(200).await;
    for m in &msgs {
        app.wait_status(&app_id, m, &ep, 0).await;
    }
    let data = app.stop_keeping_data().await;

    // Opened again, a quarter over a target of three quarters of its size.
    let probe = spawn_app_clocked(&[no_retries], Arc::clone(&clock), Some(data)).await;
    let size = probe.store().size_on_disk().unwrap();
    let data = probe.stop_keeping_data().await;
    let max = size.to_string();
    let app = spawn_app_clocked(
        &[
            no_retries,
            ("WEBHOOKD_RETENTION__MAX_DISK_BYTES", max.as_str()),
            ("WEBHOOKD_RETENTION__DISK_TARGET_PERCENT", "75"),
        ],
        Arc::clone(&clock),
        Some(data),
    )
    .await;
    let first = count(&app.run_job(Job::Retention).await, "messages_deleted");
    assert!(first > 0 && first < 200, "{first} deleted of 200");
    let again = count(&app.run_job(Job::Retention).await, "messages_deleted");
    assert_eq!(again, 0, "deleted again ({first} the first time)");
    let (status, list) = app.get(&format!("/app/{app_id}/msg?limit=250")).await;
    assert_eq!(status, 200);
    assert_eq!(list["data"].as_array().unwrap().len() as u64, 200 - first);
    app.stop().await;
}

/// An endpoint's failing clock runs from its first failure and a success
/// resets it; five days after failures that then stopped (no traffic since)
/// the endpoint is not disabled: it has not been failing for five days.
/// (When it is, it is disabled and announced: the scheduler's unit test
/// `an_endpoint_is_disabled_only_after_failing_for_the_whole_window`, with
/// attempts five days apart.)
#[actix_web::test]
async fn an_endpoint_that_failed_once_and_then_got_nothing_is_not_disabled() {
    let clock = Arc::new(ManualClock::at(now_ms()));
    let ops = TestReceiver::start().await;
    let app = with_ops(&clock, &ops, &[("WEBHOOKD_RETRY_SCHEDULE", "")]).await;
    let dead = TestReceiver::start().await;
    dead.set_default(Reply::status(503));
    let flaky = TestReceiver::start().await;
    flaky.script([Reply::status(500)]);
    let app_id = app.create_app().await;
    let dead_ep = app.endpoint_to(&app_id, &dead).await;
    let flaky_ep = app.endpoint_to(&app_id, &flaky).await;
    let m1 = app.publish_simple(&app_id, "x").await;
    app.wait_status(&app_id, &m1, &dead_ep, 2).await;
    app.wait_status(&app_id, &m1, &flaky_ep, 2).await;
    // The flaky endpoint then succeeds once: its clock is reset.
    let m2 = app.publish_simple(&app_id, "x").await;
    app.wait_status(&app_id, &m2, &flaky_ep, 0).await;
    app.wait_status(&app_id, &m2, &dead_ep, 2).await;

    clock.advance(5 * DAY + 60_000);
    let rec = app.run_job(Job::EndpointHealth).await;
    assert_eq!(count(&rec, "failing"), 1, "the dead endpoint's clock runs");
    assert_eq!(count(&rec, "disabled"), 0);
    for ep in [&dead_ep, &flaky_ep] {
        let (_, e) = app.get(&format!("/app/{app_id}/endpoint/{ep}")).await;
        assert_eq!(e["disabled"], false);
    }
    app.stop().await;
}

#[actix_web::test]
async fn the_silence_watchdog_raises_and_clears_an_alert() {
    let clock = Arc::new(ManualClock::at(now_ms()));
    let mut ops = TestReceiver::start().await;
    let app = with_ops(
        &clock,
        &ops,
        &[("WEBHOOKD_WATCHDOG__EXPECT", "watched:rare.event:1m")],
    )
    .await;
    let (status, _) = app
        .post("/app", json!({"name": "shop", "uid": "watched"}))
        .await;
    assert_eq!(status, 201);
    for _ in 0..6 {
        app.publish_simple("watched", "order.created").await;
    }
    app.publish_simple("watched", "rare.event").await;
    // Nothing is quiet yet.
    let rec = app.run_job(Job::SilenceWatchdog).await;
    assert_eq!(count(&rec, "raised"), 0);
    assert_eq!(count(&rec, "watched"), 2);

    // Eleven minutes of silence: over the 10 min minimum and the 1 min expectation.
    clock.advance(11 * 60_000);
    let rec = app.run_job(Job::SilenceWatchdog).await;
    assert_eq!(count(&rec, "raised"), 2);
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let data = ops_event(&mut ops, "watchdog.silence").await;
        assert_eq!(data["appUid"], "watched");
        assert!(data["silentForSeconds"].as_i64().unwrap() >= 600);
        kinds.push(data["eventType"].as_str().unwrap().to_owned());
    }
    kinds.sort();
    assert_eq!(kinds, ["order.created", "rare.event"]);
    // Raised once, not at every run.
    let rec = app.run_job(Job::SilenceWatchdog).await;
    assert_eq!(count(&rec, "raised"), 0);

    // Events resume: the alert clears.
    app.publish_simple("watched", "order.created").await;
    let rec = app.run_job(Job::SilenceWatchdog).await;
    assert_eq!(count(&rec, "cleared"), 1);
    let data = ops_event(&mut ops, "watchdog.resumed").await;
    assert_eq!(data["eventType"], "order.created");
    app.stop().await;
}

/// An expected event type that never had a message is silent since its
/// application was created. (Only kinds with messages were watched: an
/// expectation for one that never came could never fire.)
#[actix_web::test]
async fn an_expected_event_type_never_seen_raises_an_alert() {
    let clock = Arc::new(ManualClock::at(now_ms()));
    let mut ops = TestReceiver::start().await;
    let app = with_ops(
        &clock,
        &ops,
        &[("WEBHOOKD_WATCHDOG__EXPECT", "watched:never.sent:5m")],
    )
    .await;
    let (status, _) = app
        .post("/app", json!({"name": "shop", "uid": "watched"}))
        .await;
    assert_eq!(status, 201);
    app.publish_simple("watched", "other.event").await;
    clock.advance(4 * 60_000);
    let rec = app.run_job(Job::SilenceWatchdog).await;
    assert_eq!(count(&rec, "watched"), 1);
    assert_eq!(count(&rec, "raised"), 0, "not quiet for 5 min yet");

    clock.advance(2 * 60_000);
    let rec = app.run_job(Job::SilenceWatchdog).await;
    assert_eq!(count(&rec, "raised"), 1);
    let data = ops_event(&mut ops, "watchdog.silence").await;
    assert_eq!(data["eventType"], "never.sent");
    assert_eq!(data["lastMessageAt"], Value::Null, "{data}");
    assert_eq!(data["thresholdSeconds"], 300);
    assert!(data["silentForSeconds"].as_i64().unwrap() >= 350, "{data}");
    let rec = app.run_job(Job::SilenceWatchdog).await;
    assert_eq!(count(&rec, "raised"), 0, "raised once");

    app.publish_simple("watched", "never.sent").await;
    let rec = app.run_job(Job::SilenceWatchdog).await;
    assert_eq!(count(&rec, "cleared"), 1);
    let data = ops_event(&mut ops, "watchdog.resumed").await;
    assert_eq!(data["eventType"], "never.sent");
    app.stop().await;
}

#[actix_web::test]
async fn every_operational_event_arrives_signed() {
    let clock = Arc::new(ManualClock::at(now_ms()));
    let mut ops = TestReceiver::start().await;
    let app = with_ops(
        &clock,
        &ops,
        &[("WEBHOOKD_RETRY_SCHEDULE", "10ms,10ms,10ms,10ms")],
    )
    .await;
    let rx = TestReceiver::start().await;
    rx.set_default(Reply::status(500));
    let app_id = app.create_app().await;
    let ep = app.endpoint_to(&app_id, &rx).await;
    let msg = app.publish_simple(&app_id, "order.created").await;

    let failing = ops_event(&mut ops, "message.attempt.failing").await;
    assert_eq!(failing["msgId"], msg.as_str());
    assert_eq!(failing["endpointId"], ep.as_str());
    assert_eq!(failing["lastAttempt"]["responseStatusCode"], 500);
    let exhausted = ops_event(&mut ops, "message.attempt.exhausted").await;
    assert_eq!(exhausted["msgId"], msg.as_str());
    app.wait_status(&app_id, &msg, &ep, 2).await;

    rx.set_default(Reply::status(200));
    let (status, _) = app
        .post(
            &format!("/app/{app_id}/msg/{msg}/endpoint/{ep}/resend"),
            json!({}),
        )
        .await;
    assert_eq!(status, 202);
    let recovered = ops_event(&mut ops, "message.attempt.recovered").await;
    assert_eq!(recovered["lastAttempt"]["responseStatusCode"], 200);

    let (status, _) = app
        .patch(
            &format!("/app/{app_id}/endpoint/{ep}"),
            json!({"disabled": true}),
        )
        .await;
    assert_eq!(status, 200);
    let disabled = ops_event(&mut ops, "endpoint.disabled").await;
    assert_eq!(
        (disabled["endpointId"].as_str(), disabled["reason"].as_str()),
        (Some(ep.as_str()), Some("manual"))
    );
    let (status, _) = app
        .patch(
            &format!("/app/{app_id}/endpoint/{ep}"),
            json!({"disabled": false}),
        )
        .await;
    assert_eq!(status, 200);
    let enabled = ops_event(&mut ops, "endpoint.enabled").await;
    assert_eq!(enabled["endpointId"], ep.as_str());

    // The operational events are messages of a reserved application, on record.
    let (status, list) = app.get("/app/webhookd-operational/msg").await;
    assert_eq!(status, 200);
    assert!(list["data"].as_array().unwrap().len() >= 5);
    app.stop().await;
}

#[actix_web::test]
async fn a_message_with_deliver_at_waits_for_its_time() {
    let clock = Arc::new(ManualClock::at(now_ms()));
    let app = spawn_app_clocked(&[], clock, None).await;
    let mut rx = TestReceiver::start().await;
    let app_id = app.create_app().await;
    let ep = app.endpoint_to(&app_id, &rx).await;
    let at = now_ms() + 800;
    let msg = app
        .publish(
            &app_id,
            json!({"eventType": "later", "payload": {}, "deliverAt": crate::helpers::rfc3339(at)}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let d = app.destination(&app_id, &msg, &ep).await;
    assert_eq!(crate::helpers::millis(&d["nextAttempt"]), at);
    assert_eq!(d["status"], 1);
    assert_eq!(rx.next().await.msg_id(), msg);
    let attempts = app.wait_attempts(&app_id, &msg, 1).await;
    assert!(crate::helpers::millis(&attempts[0]["timestamp"]) >= at);
    app.stop().await;
}

/// The operational application is set from the configuration: through the
/// API it is read (its endpoint's messages recovered too), but not changed,
/// published to or given a token; what it was set to stays.
#[actix_web::test]
async fn the_operational_application_is_not_changed_through_the_api() {
    let clock = Arc::new(ManualClock::at(now_ms()));
    let ops = TestReceiver::start().await;
    let app = with_ops(&clock, &ops, &[]).await;
    let a = "webhookd-operational";
    let e = "operator";
    let (status, before) = app.get(&format!("/app/{a}/endpoint/{e}")).await;
    assert_eq!(status, 200, "{before}");
    let app_id = app.get_ok(&format!("/app/{a}")).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let refused = [
        app.patch(
            &format!("/app/{a}/endpoint/{e}"),
            json!({ "url": "https://example.com/" }),
        )
        .await,
        app.patch(
            &format!("/app/{a}/endpoint/{e}"),
            json!({ "disabled": true }),
        )
        .await,
        // Named with percent-encoding, as the router decodes it.
        app.patch(
            "/app/webhookd%2Doperational/endpoint/operator",
            json!({ "disabled": true }),
        )
        .await,
        app.delete(&format!("/app/{a}/endpoint/{e}")).await,
        app.post(&format!("/app/{a}/endpoint/{e}/secret/rotate"), json!({}))
            .await,
        app.post(
            &format!("/app/{a}/endpoint"),
            json!({ "url": "https://example.com/" }),
        )
        .await,
        app.patch(&format!("/app/{a}"), json!({ "uid": "mine" }))
            .await,
        app.delete(&format!("/app/{app_id}")).await,
        app.post(
            &format!("/app/{a}/msg"),
            json!({ "eventType": "endpoint.disabled", "payload": {} }),
        )
        .await,
        app.post("/webhookd/token", json!({ "appId": a })).await,
    ];
    for (status, body) in refused {
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["code"], "forbidden", "{body}");
    }
    let (status, body) = app
        .post(
            &format!("/app/{a}/endpoint/{e}/recover"),
            json!({ "since": "2020-01-01T00:00:00Z" }),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(app.get_ok(&format!("/app/{a}/endpoint/{e}")).await, before);
    app.stop().await;
}
