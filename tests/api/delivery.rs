//! What a delivery looks like on the wire, and who gets which message.

use std::collections::BTreeSet;

use serde_json::json;

use webhookd::signing;

use crate::helpers::{
    Gate, Reply, TestReceiver, WAIT, spawn_app, spawn_app_with, user_agent, wait_until,
};

#[actix_web::test]
async fn delivery_is_signed_and_carries_the_exact_payload() {
    let app = spawn_app().await;
    let mut rx = TestReceiver::start().await;
    let a = app.create_app().await;
    let ep = app
        .create_endpoint(
            &a,
            &rx.url(),
            json!({ "headers": { "X-Custom": "custom-value" } }),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret = app.secret(&a, &ep).await;

    // Odd whitespace, unsorted keys, escapes and non-ASCII: all must survive untouched.
    let payload = "{ \"z\" : 1,\n\t\"a\":[1, 2 ,{\"\u{fc}ber\":\"\u{65e5}\u{672c}\u{8a9e} \u{1f389}\"}],  \"m\":\"\\u00e9\\n\" , \"b\":null}";
    let body = format!("{{\"eventType\":\"user.created\",\"payload\":{payload}  }}");
    let res = app
        .post_raw(&format!("/app/{a}/msg"), &[], body.as_bytes())
        .await;
    assert_eq!(res.status, 202, "{:?}", res.body);
    let out = res.json();
    let msg = out["id"].as_str().unwrap();
    assert!(msg.starts_with("msg_"), "{out}");
    assert_eq!(out["eventType"], "user.created");
    assert_eq!(
        out["payload"],
        serde_json::from_str::<serde_json::Value>(payload).unwrap()
    );

    let got = rx.next().await;
    let now = chrono::Utc::now().timestamp();
    assert_eq!(got.method, "POST");
    assert_eq!(got.path, "/hook");
    assert_eq!(
        &got.body[..],
        payload.as_bytes(),
        "the body is the payload byte for byte"
    );
    assert_eq!(got.header("content-type"), "application/json");
    assert_eq!(got.header("user-agent"), user_agent());
    assert_eq!(got.header("webhook-id"), msg);
    let ts: i64 = got
        .header("webhook-timestamp")
        .parse()
        .expect("unix seconds");
    assert!((now - ts).abs() <= 60, "timestamp {ts} is not now ({now})");
    // The client keeps one `date` per thread current (vendor/awc).
    let date = chrono::DateTime::parse_from_rfc2822(got.header("date")).expect("an HTTP date");
    assert!(
        (now - date.timestamp()).abs() <= 60,
        "date {date} is not now"
    );
    let sig = got.header("webhook-signature");
    assert!(sig.starts_with("v1,"), "{sig}");
    assert!(
        signing::verify(&secret, msg, ts, &got.body, sig),
        "signature {sig} does not verify"
    );
    assert!(!signing::verify(&secret, msg, ts + 1, &got.body, sig));
    for h in ["id", "timestamp", "signature"] {
        assert_eq!(
            got.header_all(&format!("svix-{h}")),
            got.header_all(&format!("webhook-{h}")),
            "svix-{h} must equal webhook-{h}"
        );
    }
    assert_eq!(got.header_all("webhook-id").len(), 1);
    assert_eq!(got.header("x-custom"), "custom-value");

    let d = app.wait_status(&a, msg, &ep, 0).await;
    assert_eq!(d["statusText"], "success");
    let attempts = app.attempts_of_msg(&a, msg).await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["responseStatusCode"], 200);
    assert_eq!(attempts[0]["response"], "ok");
    assert_eq!(attempts[0]["url"], rx.url());
    assert_eq!(attempts[0]["triggerType"], 0);
    rx.assert_nothing_more();
}

#[actix_web::test]
async fn event_type_and_channel_filters_route_messages() {
    let app = spawn_app().await;
    let a = app.create_app().await;
    let mut by_type = TestReceiver::start().await;
    let mut other_type = TestReceiver::start().await;
    let mut by_channel = TestReceiver::start().await;
    let mut both = TestReceiver::start().await;
    let mut all = TestReceiver::start().await;
    // Each endpoint also takes the `sentinel` type (or channel), published last.
    let ep_type = app
        .create_endpoint(
            &a,
            &by_type.url(),
            json!({ "eventTypes": ["user.created", "sentinel"] }),
        )
        .await;
    let ep_other = app
        .create_endpoint(
            &a,
            &other_type.url(),
            json!({ "eventTypes": ["invoice.paid", "sentinel"] }),
        )
        .await;
    let ep_channel = app
        .create_endpoint(
            &a,
            &by_channel.url(),
            json!({ "channels": ["project-1", "sentinel"] }),
        )
        .await;
    let ep_both = app
        .create_endpoint(
            &a,
            &both.url(),
            json!({ "eventTypes": ["user.created", "sentinel"], "channels": ["project-1", "sentinel"] }),
        )
        .await;
    let ep_all = app.create_endpoint(&a, &all.url(), json!({})).await;

    let publish = |event_type: &'static str, channels: Vec<&'static str>| {
        let app = &app;
        let a = &a;
        async move {
            let mut body = json!({ "eventType": event_type, "payload": {} });
            if !channels.is_empty() {
                body["channels"] = json!(channels);
            }
            app.publish(a, body).await["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let m_user = publish("user.created", vec![]).await;
    let m_user_p1 = publish("user.created", vec!["project-1"]).await;
    let m_invoice_p2 = publish("invoice.paid", vec!["project-2"]).await;
    let m_other_p1 = publish("other.thing", vec!["project-1", "project-3"]).await;

    let expect = [
        (&mut by_type, &ep_type, vec![&m_user, &m_user_p1]),
        (&mut other_type, &ep_other, vec![&m_invoice_p2]),
        (&mut by_channel, &ep_channel, vec![&m_user_p1, &m_other_p1]),
        (&mut both, &ep_both, vec![&m_user_p1]),
        (
            &mut all,
            &ep_all,
            vec![&m_user, &m_user_p1, &m_invoice_p2, &m_other_p1],
        ),
    ];
    let mut receivers = Vec::new();
    for (rx, ep, want) in expect {
        let got: BTreeSet<String> = rx
            .take(want.len())
            .await
            .iter()
            .map(|x| x.msg_id())
            .collect();
        let want: BTreeSet<String> = want.into_iter().cloned().collect();
        assert_eq!(got, want, "deliveries to {}", ep["url"]);
        receivers.push(rx);
    }
    // A message all of them take, published after the rest: the next (and only
    // further) arrival at each must be this one.
    let sentinel = publish("sentinel", vec!["sentinel"]).await;
    for rx in receivers {
        assert_eq!(rx.next().await.msg_id(), sentinel);
        rx.assert_nothing_more();
    }
    // The fan-out the API reports matches.
    let dests = |m: String| {
        let app = &app;
        let a = &a;
        async move {
            let body = app.get_ok(&format!("/app/{a}/msg/{m}/endpoint")).await;
            body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["id"].as_str().unwrap().to_owned())
                .collect::<BTreeSet<_>>()
        }
    };
    let ids = |eps: &[&serde_json::Value]| -> BTreeSet<String> {
        eps.iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(dests(m_invoice_p2).await, ids(&[&ep_other, &ep_all]));
    assert_eq!(dests(m_user).await, ids(&[&ep_type, &ep_all]));
}

#[actix_web::test]
async fn disabled_endpoints_get_nothing() {
    let app = spawn_app().await;
    let a = app.create_app().await;
    let mut off = TestReceiver::start().await;
    let mut on = TestReceiver::start().await;
    let ep_off = app
        .create_endpoint(&a, &off.url(), json!({ "disabled": true }))
        .await;
    assert_eq!(ep_off["disabled"], true);
    let ep_on = app.endpoint_to(&a, &on).await;

    let m1 = app.publish_simple(&a, "e.one").await;
    let m2 = app.publish_simple(&a, "e.two").await;
    let got: BTreeSet<String> = on.take(2).await.iter().map(|x| x.msg_id()).collect();
    assert_eq!(got, BTreeSet::from([m1.clone(), m2]));
    let dests = app.get_ok(&format!("/app/{a}/msg/{m1}/endpoint")).await;
    let ids: Vec<&str> = dests["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [ep_on.as_str()],
        "only the enabled endpoint is a destination"
    );
    off.assert_nothing_more();
}

#[actix_web::test]
async fn gone_410_disables_the_endpoint() {
    let app = spawn_app().await;
    let mut rx = TestReceiver::start().await;
    rx.set_default(Reply::status(410));
    let a = app.create_app().await;
    let ep = app.endpoint_to(&a, &rx).await;
    let msg = app.publish_simple(&a, "e.t").await;
    assert_eq!(rx.next().await.msg_id(), msg);

    let d = app.wait_status(&a, &msg, &ep, 2).await;
    assert!(d["nextAttempt"].is_null(), "no retry after 410: {d}");
    let attempts = app.attempts_of_msg(&a, &msg).await;
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0]["responseStatusCode"], 410);
    // The endpoint is disabled right after the attempt is recorded.
    wait_until(WAIT, "the endpoint to be disabled", || async {
        let endpoint = app.get_ok(&format!("/app/{a}/endpoint/{ep}")).await;
        (endpoint["disabled"] == true).then_some(())
    })
    .await;

    // And being disabled, it gets nothing more.
    let later = app.publish_simple(&a, "e.t").await;
    let dests = app.get_ok(&format!("/app/{a}/msg/{later}/endpoint")).await;
    assert_eq!(dests["data"], json!([]), "{dests}");
    rx.assert_nothing_more();
}

#[actix_web::test]
async fn a_held_endpoint_does_not_delay_others() {
    held_endpoint_does_not_delay_others("1").await;
}

/// With several delivery threads the caps are still shared: the held endpoint
/// never has more than its two slots, and every message arrives once.
#[actix_web::test]
async fn several_delivery_threads_share_the_caps() {
    held_endpoint_does_not_delay_others("3").await;
}

#[actix_web::test]
async fn a_held_endpoints_backlog_is_spread_out_when_moved_back() {
    // The held request must not time out while the test looks.
    let app = spawn_app_with(&[
        ("WEBHOOKD_DELIVERY__MAX_PER_ENDPOINT", "1"),
        ("WEBHOOKD_REQUEST_TIMEOUT", "30s"),
    ])
    .await;
    let mut slow = TestReceiver::start().await;
    let gate = Gate::new();
    slow.set_default(Reply::status(200).gate(&gate));
    let a = app.create_app().await;
    let ep = app.endpoint_to(&a, &slow).await;
    let mut msgs = BTreeSet::new();
    for i in 0..5 {
        msgs.insert(app.publish_simple(&a, &format!("e.n{i}")).await);
    }
    let dues = || async {
        let mut dues = Vec::new();
        for m in &msgs {
            let d = app.destination(&a, m, &ep).await;
            dues.push(
                d["nextAttempt"]
                    .as_str()
                    .expect("a pending delivery's next attempt")
                    .to_owned(),
            );
        }
        dues
    };
    // Pending since its publish: due then.
    let published = dues().await.into_iter().max().unwrap();
    // One request is held. Once the endpoint has finished nothing for a
    // while, the four waiting are moved back in the queue, each to a time of
    // its own (one after the other, as the endpoint could take them), not
    // all to the same moment, when all would come due and be moved again.
    let moved = wait_until(WAIT, "the waiting deliveries to be moved back", || async {
        let moved: Vec<String> = dues()
            .await
            .into_iter()
            .filter(|d| *d > published)
            .collect();
        (moved.len() == 4).then_some(moved)
    })
    .await;
    let distinct: BTreeSet<&String> = moved.iter().collect();
    assert_eq!(distinct.len(), 4, "{moved:?}");
    // Due again while the request is still held, they are moved again, and
    // their statuses say when they are due now.
    let first = moved.iter().max().unwrap();
    wait_until(
        WAIT,
        "the waiting deliveries to be moved back again",
        || async {
            let again = dues().await.iter().filter(|d| *d > first).count();
            (again == 4).then_some(())
        },
    )
    .await;

    gate.release();
    let got: BTreeSet<String> = slow.take(5).await.iter().map(|x| x.msg_id()).collect();
    assert_eq!(got, msgs);
    slow.assert_nothing_more();
    slow.stop().await;
    app.stop().await;
}

async fn held_endpoint_does_not_delay_others(threads: &str) {
    let app = spawn_app_with(&[
        ("WEBHOOKD_DELIVERY__MAX_PER_ENDPOINT", "2"),
        ("WEBHOOKD_DELIVERY__THREADS", threads),
    ])
    .await;
    let mut slow = TestReceiver::start().await;
    let mut fast = TestReceiver::start().await;
    let gate = Gate::new();
    slow.set_default(Reply::status(200).gate(&gate));
    let a = app.create_app().await;
    let ep_slow = app.endpoint_to(&a, &slow).await;
    let ep_fast = app.endpoint_to(&a, &fast).await;

    let mut msgs = BTreeSet::new();
    for i in 0..6 {
        msgs.insert(app.publish_simple(&a, &format!("e.n{i}")).await);
    }
    let got: BTreeSet<String> = fast.take(6).await.iter().map(|x| x.msg_id()).collect();
    assert_eq!(got, msgs, "the fast endpoint got every message");
    let held = slow.take(2).await;
    for m in &msgs {
        app.wait_status(&a, m, &ep_fast, 0).await;
    }
    // At most max_per_endpoint attempts are in flight to the held endpoint.
    slow.assert_nothing_more();
    // In flight or waiting for a slot, not attempted yet: listed as pending
    // (1), though handed over in memory it has no status record yet.
    for m in &msgs {
        let d = app.destination(&a, m, &ep_slow).await;
        assert_eq!(d["status"], 1, "a held delivery is pending: {d}");
    }

    gate.release();
    let mut slow_got: BTreeSet<String> = held.iter().map(|x| x.msg_id()).collect();
    slow_got.extend(slow.take(4).await.iter().map(|x| x.msg_id()));
    assert_eq!(slow_got, msgs);
    for m in &msgs {
        app.wait_status(&a, m, &ep_slow, 0).await;
    }
    slow.assert_nothing_more();
    slow.stop().await;
    fast.stop().await;
    app.stop().await;
}

/// Endpoints that take a request and never answer hold at most half the
/// slots (beyond one request each): another application's endpoint still
/// gets its message at once, not after the request timeout. (Before, two
/// such endpoints at their caps held all eight slots for 30 s.)
#[actix_web::test]
async fn endpoints_that_never_answer_do_not_take_every_slot() {
    let app = spawn_app_with(&[
        ("WEBHOOKD_DELIVERY__MAX_IN_FLIGHT", "8"),
        ("WEBHOOKD_DELIVERY__MAX_PER_ENDPOINT", "4"),
        ("WEBHOOKD_REQUEST_TIMEOUT", "30s"),
    ])
    .await;
    let gate = Gate::new();
    let mut hung = [TestReceiver::start().await, TestReceiver::start().await];
    let a = app.create_app().await;
    for rx in &hung {
        rx.set_default(Reply::status(200).gate(&gate));
        app.endpoint_to(&a, rx).await;
    }
    let mut msgs = BTreeSet::new();
    for i in 0..6 {
        msgs.insert(app.publish_simple(&a, &format!("e.n{i}")).await);
    }
    // Wait for what the hung endpoints may hold: their share (4) at least.
    let [h0, h1] = &mut hung;
    let mut got: [Vec<String>; 2] = Default::default();
    while got[0].len() + got[1].len() < 4 {
        let arrived = tokio::time::timeout(WAIT, async {
            tokio::select! {
                a = h0.rx.recv() => (0, a),
                a = h1.rx.recv() => (1, a),
            }
        })
        .await
        .expect("the hung endpoints get requests");
        got[arrived.0].push(arrived.1.expect("the receiver runs").msg_id());
    }

    let b = app.create_app().await;
    let mut healthy = TestReceiver::start().await;
    app.endpoint_to(&b, &healthy).await;
    let m = app.publish_simple(&b, "e.t").await;
    assert_eq!(healthy.next().await.msg_id(), m, "delivered at once");
    for (i, rx) in hung.iter_mut().enumerate() {
        got[i].extend(rx.pending().iter().map(|x| x.msg_id()));
    }
    assert!(
        got[0].len() + got[1].len() <= 5,
        "the hung endpoints hold half the slots and one more: {got:?}"
    );

    // Answering again, they get every message once.
    gate.release();
    for (i, rx) in hung.iter_mut().enumerate() {
        let rest = 6 - got[i].len();
        got[i].extend(rx.take(rest).await.iter().map(|x| x.msg_id()));
        assert_eq!(got[i].iter().cloned().collect::<BTreeSet<_>>(), msgs);
    }
    for rx in &mut hung {
        rx.assert_nothing_more();
    }
    let [h0, h1] = hung;
    for rx in [h0, h1, healthy] {
        rx.stop().await;
    }
    app.stop().await;
}

/// Many endpoints that never answer, each with its first request under
/// way, hold at most three quarters of the slots: an endpoint known to
/// answer in time still gets its message at once. (Before, eight such
/// endpoints took all eight slots with one request each until the timeout.)
#[actix_web::test]
async fn many_endpoints_that_never_answer_leave_a_quarter_of_the_slots() {
    let app = spawn_app_with(&[
        ("WEBHOOKD_DELIVERY__MAX_IN_FLIGHT", "8"),
        ("WEBHOOKD_DELIVERY__MAX_PER_ENDPOINT", "4"),
        ("WEBHOOKD_REQUEST_TIMEOUT", "30s"),
    ])
    .await;
    // Known to answer in time: one delivery made.
    let b = app.create_app().await;
    let mut healthy = TestReceiver::start().await;
    let ep = app.endpoint_to(&b, &healthy).await;
    let first = app.publish_simple(&b, "e.t").await;
    assert_eq!(healthy.next().await.msg_id(), first);
    app.wait_status(&b, &first, &ep, 0).await;

    let gate = Gate::new();
    let mut hung = TestReceiver::start().await;
    hung.set_default(Reply::status(200).gate(&gate));
    let a = app.create_app().await;
    for i in 0..8 {
        app.create_endpoint(&a, &format!("{}/{i}", hung.url()), json!({}))
            .await;
    }
    let m = app.publish_simple(&a, "e.n").await;
    let mut got = hung.take(6).await;
    let second = app.publish_simple(&b, "e.t").await;
    assert_eq!(healthy.next().await.msg_id(), second, "delivered at once");
    assert!(
        hung.pending().is_empty(),
        "the first requests of two of them wait for a slot"
    );

    // Answering again, every one of them gets the message once.
    gate.release();
    got.extend(hung.take(2).await);
    assert!(got.iter().all(|x| x.msg_id() == m));
    let paths: BTreeSet<_> = got.iter().map(|x| x.path.clone()).collect();
    assert_eq!(paths.len(), 8, "{paths:?}");
    hung.assert_nothing_more();
    healthy.assert_nothing_more();
    hung.stop().await;
    healthy.stop().await;
    app.stop().await;
}

/// An endpoint's `throttleRate`, else its app's, spaces its deliveries: at
/// most that many a second, evenly (here 10/s: 100 ms apart). A rate set
/// after deliveries were made applies from then on; an endpoint's own rate
/// overrides its app's (0, set by a `PATCH`: not throttled at all); another
/// endpoint of the app is not held up.
#[actix_web::test]
async fn throttle_rate_spaces_deliveries() {
    use std::time::Duration;
    let app = spawn_app().await;
    let mut own = TestReceiver::start().await;
    let mut inherited = TestReceiver::start().await;
    let mut overriding = TestReceiver::start().await;
    let mut free = TestReceiver::start().await;
    let a = app.create_app().await;
    let own_ep = app.endpoint_to(&a, &own).await;
    app.endpoint_to(&a, &free).await;
    let (status, body) = app
        .post("/app", json!({ "name": "throttled", "throttleRate": 10 }))
        .await;
    assert_eq!(status, 201, "{body}");
    let b = body["id"].as_str().unwrap().to_owned();
    app.endpoint_to(&b, &inherited).await;
    app.create_endpoint(&b, &overriding.url(), json!({ "throttleRate": 1000 }))
        .await;
    let mut zero = TestReceiver::start().await;
    let zero_ep = app.endpoint_to(&b, &zero).await;
    let (status, body) = app
        .patch(
            &format!("/app/{b}/endpoint/{zero_ep}"),
            json!({ "throttleRate": 0 }),
        )
        .await;
    assert_eq!((status, &body["throttleRate"]), (200, &json!(0)), "{body}");
    // Delivered before the endpoint had a rate; then it gets one.
    app.publish_simple(&a, "e.t").await;
    own.next().await;
    free.next().await;
    let (status, body) = app
        .patch(
            &format!("/app/{a}/endpoint/{own_ep}"),
            json!({ "throttleRate": 10 }),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Published together, so that all but the first of each wait their turn.
    let publishes =
        (0..5).flat_map(|_| [app.publish_simple(&a, "e.t"), app.publish_simple(&b, "e.t")]);
    futures_util::future::join_all(publishes).await;
    let unthrottled = free.take(5).await;
    let fast = overriding.take(5).await;
    assert!(
        fast[4].at - fast[0].at < Duration::from_secs(1),
        "the endpoint's 1000/s, not its app's 10/s"
    );
    let unlimited = zero.take(5).await;
    assert!(
        unlimited[4].at - unlimited[0].at < Duration::from_secs(1),
        "the endpoint's 0, not its app's 10/s"
    );
    let mut last = Vec::new();
    for rx in [&mut own, &mut inherited] {
        let got = rx.take(5).await;
        for pair in got.windows(2) {
            let gap = pair[1].at - pair[0].at;
            assert!(gap >= Duration::from_millis(50), "deliveries {gap:?} apart");
        }
        let span = got[4].at - got[0].at;
        assert!(
            span >= Duration::from_millis(350),
            "five deliveries in {span:?}"
        );
        last.push(got[4].at);
    }
    assert!(
        unthrottled[4].at < last[0],
        "the unthrottled endpoint had all five before the throttled one's last"
    );
    app.stop().await;
}

/// A rate changed while deliveries wait their turn applies to them: taken
/// away, those in line go at once instead of one a second.
#[actix_web::test]
async fn a_changed_throttle_rate_applies_to_the_deliveries_in_line() {
    use std::time::Duration;
    let app = spawn_app().await;
    let mut rx = TestReceiver::start().await;
    let a = app.create_app().await;
    let ep = app
        .create_endpoint(&a, &rx.url(), json!({ "throttleRate": 1 }))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    futures_util::future::join_all((0..30).map(|_| app.publish_simple(&a, "e.t"))).await;
    // The second comes a second after the first: the rest are in line,
    // the last of them 29 seconds after the first.
    rx.take(2).await;
    let (status, body) = app
        .patch(
            &format!("/app/{a}/endpoint/{ep}"),
            json!({ "throttleRate": null }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let rest = tokio::time::timeout(Duration::from_secs(10), rx.take(28)).await;
    assert!(
        rest.is_ok(),
        "the deliveries in line kept their one-a-second turns"
    );
    app.stop().await;
}
