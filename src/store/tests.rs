//! Store tests on a real (temporary) sled database.

use std::collections::BTreeMap;

use super::*;
use crate::domain::{EndpointUrl, Secret};

fn app(uid: Option<&str>) -> AppRecord {
    AppRecord {
        id: AppId::new(1),
        uid: uid.map(str::to_owned),
        name: "shop".into(),
        rate_limit: None,
        metadata: BTreeMap::new(),
        created_ms: 1,
        updated_ms: 1,
    }
}

fn endpoint(app: &AppId, types: &[&str]) -> EndpointRecord {
    EndpointRecord {
        id: EndpointId::new(2),
        app_id: app.clone(),
        uid: None,
        url: EndpointUrl::parse("http://127.0.0.1:9/hook").unwrap(),
        description: String::new(),
        version: 1,
        rate_limit: None,
        disabled: false,
        event_types: types.iter().map(|s| s.to_string()).collect(),
        channels: vec![],
        headers: BTreeMap::new(),
        metadata: BTreeMap::new(),
        secret: Secret::generate(),
        retired_secrets: vec![],
        created_ms: 2,
        updated_ms: 2,
    }
}

fn message(app: &AppId, at: i64, event_id: Option<&str>) -> MessageRecord {
    MessageRecord {
        id: MessageId::new(at),
        app_id: app.clone(),
        event_type: "order.created".into(),
        event_id: event_id.map(str::to_owned),
        channels: vec![],
        tags: vec![],
        created_ms: at,
        expunged: false,
    }
}

fn attempt(task: &TaskRecord, ok: bool, at: i64) -> AttemptRecord {
    AttemptRecord {
        id: AttemptId::new(at),
        app_id: task.app_id.clone(),
        msg_id: task.msg_id.clone(),
        ep_id: task.ep_id.clone(),
        url: "http://127.0.0.1:9/hook".into(),
        timestamp_ms: at,
        trigger: task.trigger,
        status: if ok {
            MessageStatus::Success
        } else {
            MessageStatus::Fail
        },
        response_status_code: if ok { 200 } else { 500 },
        response_headers: vec![],
        response_body: b"ok".to_vec(),
        request_headers: vec![],
        duration_ms: 1,
        error: None,
    }
}

#[test]
fn app_uid_is_unique_and_findable() {
    let s = Store::temporary().unwrap();
    let a = app(Some("acme"));
    s.create_app(&a).unwrap().unwrap();
    let mut b = app(Some("acme"));
    b.id = AppId::new(5);
    assert_eq!(s.create_app(&b).unwrap(), Err(Taken(a.id.to_string())));
    assert_eq!(s.find_app("acme").unwrap().unwrap().id, a.id);
    assert_eq!(s.find_app(a.id.as_str()).unwrap().unwrap().id, a.id);
    assert!(s.find_app("nobody").unwrap().is_none());
}

#[tokio::test]
async fn publish_claim_fail_retry_then_succeed() {
    let s = Store::temporary().unwrap();
    let a = app(None);
    s.create_app(&a).unwrap().unwrap();
    let ep = endpoint(&a.id, &[]);
    s.create_endpoint(&ep).unwrap().unwrap();
    let m = message(&a.id, 1_000, None);
    let out = s.publish(&m, b"{\"a\":1}", &[&ep], 1_000).unwrap();
    assert!(matches!(out, Published::Created { endpoints: 1 }));
    s.commit().await.unwrap();
    assert_eq!(s.payload(&m.id).unwrap().unwrap(), b"{\"a\":1}");
    assert_eq!(s.next_due_ms().unwrap(), Some(1_000));

    // Nothing is due before its time.
    assert!(
        s.claim_due(999, 60_000, 10, 100, |_| Claim::Take)
            .unwrap()
            .is_empty()
    );
    let tasks = s
        .claim_due(1_000, 60_000, 10, 100, |_| Claim::Take)
        .unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(s.queue_depth(), (0, 1));

    let dest = s
        .record_attempt(
            &tasks[0],
            60_000,
            &attempt(&tasks[0], false, 1_010),
            Next::RetryAt(2_000),
        )
        .unwrap();
    assert_eq!(dest.status, MessageStatus::Sending);
    assert_eq!(s.queue_depth(), (1, 0));

    let tasks = s
        .claim_due(2_000, 70_000, 10, 100, |_| Claim::Take)
        .unwrap();
    assert_eq!(tasks[0].attempt, 1);
    let dest = s
        .record_attempt(
            &tasks[0],
            70_000,
            &attempt(&tasks[0], true, 2_010),
            Next::RetryAt(9_000),
        )
        .unwrap();
    assert_eq!(dest.status, MessageStatus::Success);
    assert_eq!(dest.attempts, 2);
    assert_eq!(s.queue_depth(), (0, 0));

    let atts = s
        .attempts_of_msg(&m.id, &PageReq::first(10), |_| true)
        .unwrap();
    assert_eq!(atts.items.len(), 2);
    assert!(
        atts.items[0].timestamp_ms > atts.items[1].timestamp_ms,
        "newest first"
    );
    let by_ep = s
        .endpoint_messages(&ep.id, &PageReq::first(10), |_| true)
        .unwrap();
    assert_eq!(by_ep.items[0].status, MessageStatus::Success);
}

#[test]
fn expired_leases_go_back_to_the_queue() {
    let s = Store::temporary().unwrap();
    let a = app(None);
    let ep = endpoint(&a.id, &[]);
    s.publish(&message(&a.id, 10, None), b"{}", &[&ep], 10)
        .unwrap();
    let claimed = s.claim_due(10, 500, 10, 100, |_| Claim::Take).unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(s.release_expired_leases(499, 499).unwrap(), 0);
    assert_eq!(s.release_expired_leases(500, 500).unwrap(), 1);
    let again = s.claim_due(500, 900, 10, 100, |_| Claim::Take).unwrap();
    assert_eq!(again[0].id, claimed[0].id);
}

#[test]
fn deferred_tasks_move_back_in_the_queue() {
    let s = Store::temporary().unwrap();
    let a = app(None);
    let ep = endpoint(&a.id, &[]);
    for i in 0..5 {
        s.publish(&message(&a.id, 10 + i, None), b"{}", &[&ep], 10 + i)
            .unwrap();
    }
    let mut n = 0;
    let got = s
        .claim_due(100, 500, 10, 100, |_| {
            n += 1;
            if n % 2 == 0 {
                Claim::Take
            } else {
                Claim::Defer(1_000)
            }
        })
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(s.queue_depth(), (3, 2));
    assert_eq!(s.next_due_ms().unwrap(), Some(1_000));
    assert!(
        s.claim_due(999, 500, 10, 100, |_| Claim::Take)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn duplicate_event_id_is_reported() {
    let s = Store::temporary().unwrap();
    let a = app(None);
    let first = message(&a.id, 10, Some("evt-1"));
    s.publish(&first, b"{}", &[], 10).unwrap();
    let again = message(&a.id, 11, Some("evt-1"));
    match s.publish(&again, b"{}", &[], 11).unwrap() {
        Published::DuplicateEventId(id) => assert_eq!(id, first.id),
        other => panic!("expected a duplicate, got {other:?}"),
    }
    assert_eq!(
        s.find_message(&a.id, "evt-1").unwrap().unwrap().id,
        first.id
    );
}

#[test]
fn pages_walk_both_ways_without_gaps() {
    let s = Store::temporary().unwrap();
    let a = app(None);
    let ids: Vec<MessageId> = (0..7)
        .map(|i| {
            let m = message(&a.id, 100 + i, None);
            s.publish(&m, b"{}", &[], 100 + i).unwrap();
            m.id
        })
        .collect();
    for order in [Order::Descending, Order::Ascending] {
        let mut req = PageReq {
            order,
            ..PageReq::first(3)
        };
        let mut seen = vec![];
        loop {
            let page = s.list_messages(&a.id, &req, |_| true).unwrap();
            seen.extend(page.items.iter().map(|m| m.id.clone()));
            if page.done {
                break;
            }
            req.cursor = Some(page.items.last().unwrap().id.to_string());
        }
        let mut want = ids.clone();
        if order == Order::Descending {
            want.reverse();
        }
        assert_eq!(seen, want);
    }
    // Time bounds.
    let req = PageReq {
        min_id: Some(MessageId::lower_bound(102).to_string()),
        max_id: Some(MessageId::lower_bound(104).to_string()),
        ..PageReq::first(10)
    };
    assert_eq!(
        s.list_messages(&a.id, &req, |_| true).unwrap().items.len(),
        2
    );
}

#[test]
fn idempotency_replays_and_expires() {
    let s = Store::temporary().unwrap();
    let scope = [7u8; 32];
    assert!(matches!(
        s.idempotency_begin(&scope, 0, 100).unwrap(),
        IdemClaim::New
    ));
    assert!(matches!(
        s.idempotency_begin(&scope, 1, 100).unwrap(),
        IdemClaim::InProgress
    ));
    s.idempotency_finish(
        &scope,
        2,
        Some(StoredResponse {
            status: 202,
            body: b"x".to_vec(),
        }),
    )
    .unwrap();
    match s.idempotency_begin(&scope, 3, 100).unwrap() {
        IdemClaim::Replay(r) => assert_eq!((r.status, r.body), (202, b"x".to_vec())),
        _ => panic!("expected a replay"),
    }
    assert!(matches!(
        s.idempotency_begin(&scope, 500, 100).unwrap(),
        IdemClaim::New
    ));
}

#[test]
fn delete_app_removes_its_data() {
    let s = Store::temporary().unwrap();
    let a = app(Some("gone"));
    s.create_app(&a).unwrap().unwrap();
    let ep = endpoint(&a.id, &[]);
    s.create_endpoint(&ep).unwrap().unwrap();
    let m = message(&a.id, 10, Some("e1"));
    s.publish(&m, b"{}", &[&ep], 10).unwrap();
    s.delete_app(&a).unwrap();
    assert!(s.find_app("gone").unwrap().is_none());
    assert!(s.find_message(&a.id, "e1").unwrap().is_none());
    assert!(s.payload(&m.id).unwrap().is_none());
    assert!(s.dest(&m.id, &ep.id).unwrap().is_none());
}

#[test]
fn dead_letter_index_follows_the_status() {
    let s = Store::temporary().unwrap();
    let a = app(None);
    let ep = endpoint(&a.id, &[]);
    s.create_endpoint(&ep).unwrap().unwrap();
    let m = message(&a.id, 10, None);
    s.publish(&m, b"{}", &[&ep], 10).unwrap();
    let t = s
        .claim_due(10, 500, 10, 100, |_| Claim::Take)
        .unwrap()
        .remove(0);
    s.record_attempt(&t, 500, &attempt(&t, false, 20), Next::Done)
        .unwrap();
    let failed = s.failed_deliveries(&PageReq::first(10)).unwrap();
    assert_eq!(failed.items.len(), 1);
    assert_eq!(
        (
            failed.items[0].msg_id.clone(),
            failed.items[0].ep_id.clone()
        ),
        (m.id.clone(), ep.id.clone())
    );

    // Resending takes it out of the dead letters; success keeps it out.
    let resend = TaskRecord {
        id: TaskId::new(30),
        trigger: AttemptTrigger::Manual,
        due_ms: 30,
        ..t.clone()
    };
    s.enqueue(&resend).unwrap();
    assert!(
        s.failed_deliveries(&PageReq::first(10))
            .unwrap()
            .items
            .is_empty()
    );
    let t = s
        .claim_due(30, 600, 10, 100, |_| Claim::Take)
        .unwrap()
        .remove(0);
    s.record_attempt(&t, 600, &attempt(&t, true, 40), Next::Done)
        .unwrap();
    assert!(
        s.failed_deliveries(&PageReq::first(10))
            .unwrap()
            .items
            .is_empty()
    );

    // Counters: one failure and one success in minute 0, for the endpoint in hour 0.
    let minutes = s.minute_counts(0, 2).unwrap();
    assert_eq!(
        minutes[0],
        Counts {
            success: 1,
            fail: 1
        }
    );
    assert_eq!(minutes[1], Counts::default());
    assert_eq!(
        s.endpoint_counts(&ep.id, 0, 1).unwrap(),
        Counts {
            success: 1,
            fail: 1
        }
    );
    assert_eq!(s.app_message_count(&a.id).unwrap(), 1);
}

#[test]
fn scan_limit_cuts_a_page_and_says_where_to_resume() {
    let s = Store::temporary().unwrap();
    let a = app(None);
    let b = AppRecord {
        id: AppId::new(2),
        ..app(None)
    };
    let mut ids = vec![];
    for i in 0..10 {
        let owner = if i == 2 { &b } else { &a };
        let m = message(&owner.id, 100 + i, None);
        s.publish(&m, b"{}", &[], 100 + i).unwrap();
        ids.push(m.id);
    }
    let all = s.list_all_messages(&PageReq::first(50), |_| true).unwrap();
    assert_eq!(all.items.len(), 10);
    // Only app b's message, looking at 4 entries at a time: the first page finds nothing.
    let req = PageReq {
        scan_limit: Some(4),
        ..PageReq::first(5)
    };
    let first = s.list_all_messages(&req, |m| m.app_id == b.id).unwrap();
    assert!(first.items.is_empty() && !first.done);
    let next = PageReq {
        cursor: first.resume.clone(),
        ..req.clone()
    };
    let second = s.list_all_messages(&next, |m| m.app_id == b.id).unwrap();
    assert_eq!(second.items.len(), 1);
    assert_eq!(second.items[0].id, ids[2]);
}
