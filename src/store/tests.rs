//! Store tests on a real (temporary) sled database.

use std::collections::BTreeMap;

use super::*;
use crate::domain::{EndpointUrl, Secret};

pub(crate) fn app(uid: Option<&str>) -> AppRecord {
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

pub(crate) fn endpoint(app: &AppId, types: &[&str]) -> EndpointRecord {
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
        credentials: None,
        client_cert: None,
    }
}

pub(crate) fn message(app: &AppId, at: i64, event_id: Option<&str>) -> MessageRecord {
    MessageRecord {
        id: MessageId::new(at),
        app_id: app.clone(),
        event_type: "order.created".into(),
        event_id: event_id.map(str::to_owned),
        channels: vec![],
        tags: vec![],
        created_ms: at,
        expunged: false,
        payload_retention_ms: None,
    }
}

pub(crate) fn attempt(task: &TaskRecord, ok: bool, at: i64) -> AttemptRecord {
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

/// Apps found are kept in memory (every publish finds its app); a change or a
/// deletion is seen by the next find, by ID and by uid.
#[test]
fn an_app_found_before_a_change_is_found_as_changed() {
    let s = Store::temporary().unwrap();
    let a = app(Some("acme"));
    s.create_app(&a).unwrap().unwrap();
    assert_eq!(s.find_app("acme").unwrap().unwrap().name, a.name);
    assert_eq!(s.find_app(a.id.as_str()).unwrap().unwrap().name, a.name);
    let renamed = AppRecord {
        uid: Some("shop".into()),
        name: "renamed".into(),
        ..a.clone()
    };
    assert!(s.update_app(&a, &renamed).unwrap().unwrap());
    assert!(s.find_app("acme").unwrap().is_none());
    assert_eq!(s.find_app("shop").unwrap().unwrap().name, "renamed");
    assert_eq!(s.find_app(a.id.as_str()).unwrap().unwrap().name, "renamed");
    s.delete_app(&renamed).unwrap();
    assert!(s.find_app("shop").unwrap().is_none());
    assert!(s.find_app(a.id.as_str()).unwrap().is_none());
}

/// Claims up to ten deliveries due at 20 and records a successful attempt
/// of each at 30.
async fn deliver_all_due(s: &Store) {
    for t in s
        .claim_due(20, 100, 10, 100, |_| Claim::Take)
        .await
        .unwrap()
    {
        s.record_attempt(&t, &attempt(&t, true, 30), Next::Done)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn publish_claim_fail_retry_then_succeed() {
    let (s, a, ep) = store_with_endpoint();
    let m = message(&a.id, 1_000, None);
    let out = s
        .publish(&m, b"{\"a\":1}", &[&ep], 1_000, || {})
        .await
        .unwrap();
    assert!(matches!(out, Published::Created { endpoints: 1 }));
    s.commit().await.unwrap();
    assert_eq!(s.payload(&m.id).unwrap().unwrap(), b"{\"a\":1}");
    assert_eq!(s.next_due_ms().unwrap(), Some(1_000));

    // Nothing is due before its time.
    assert!(
        s.claim_due(999, 60_000, 10, 100, |_| Claim::Take)
            .await
            .unwrap()
            .is_empty()
    );
    let tasks = s
        .claim_due(1_000, 60_000, 10, 100, |_| Claim::Take)
        .await
        .unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(s.queue_depth(), (0, 1));

    let dest = s
        .record_attempt(
            &tasks[0],
            &attempt(&tasks[0], false, 1_010),
            Next::RetryAt(2_000),
        )
        .await
        .unwrap()
        .expect("the endpoint is there");
    assert_eq!(dest.after.status, MessageStatus::Sending);
    assert_eq!(dest.after.failures_in_row, 1);
    assert_eq!(s.queue_depth(), (1, 1), "the lease stays until released");
    s.release_lease(60_000, &tasks[0].id).await.unwrap();
    assert_eq!(s.queue_depth(), (1, 0));

    let tasks = s
        .claim_due(2_000, 70_000, 10, 100, |_| Claim::Take)
        .await
        .unwrap();
    assert_eq!(tasks[0].attempt, 1);
    let dest = s
        .record_attempt(
            &tasks[0],
            &attempt(&tasks[0], true, 2_010),
            Next::RetryAt(9_000),
        )
        .await
        .unwrap()
        .expect("the endpoint is there");
    assert_eq!(dest.after.status, MessageStatus::Success);
    assert_eq!(dest.after.failures_in_row, 0);
    assert_eq!(dest.after.attempts, 2);
    s.release_lease(70_000, &tasks[0].id).await.unwrap();
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

#[tokio::test]
async fn expired_leases_go_back_to_the_queue() {
    let s = Store::temporary().unwrap();
    let a = app(None);
    let ep = endpoint(&a.id, &[]);
    s.publish(&message(&a.id, 10, None), b"{}", &[&ep], 10, || {})
        .await
        .unwrap();
    let claimed = s
        .claim_due(10, 500, 10, 100, |_| Claim::Take)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(s.release_expired_leases(499, 499).unwrap(), 0);
    assert_eq!(s.release_expired_leases(500, 500).unwrap(), 1);
    let again = s
        .claim_due(500, 900, 10, 100, |_| Claim::Take)
        .await
        .unwrap();
    assert_eq!(again[0].id, claimed[0].id);
}

/// Leases expire by the lease clock: a wall clock stepped a day ahead (a time
/// sync, the clock set by hand) puts no delivery in flight back on the queue.
#[tokio::test]
async fn a_step_of_the_wall_clock_expires_no_lease() {
    let s = Store::temporary().unwrap();
    let a = app(None);
    let ep = endpoint(&a.id, &[]);
    let now = crate::domain::now_ms();
    s.publish(&message(&a.id, 10, None), b"{}", &[&ep], now, || {})
        .await
        .unwrap();
    let until = s.lease_clock_ms() + 60_000;
    let claimed = s
        .claim_due(now, until, 10, 100, |_| Claim::Take)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let a_day_later = now + 86_400_000;
    let r = s.reconcile(a_day_later, 60_000, None, 100, || {}).unwrap();
    assert_eq!((r.leases_released, r.requeued), (0, 0));
    assert_eq!(s.queue_depth(), (0, 1), "still in flight");
    // Once the lease clock reaches the lease's end, it expires.
    assert_eq!(s.release_expired_leases(until, a_day_later).unwrap(), 1);
    assert_eq!(s.queue_depth(), (1, 0));
}

/// The worker's sweep and reconcile may look for expired leases at the same
/// moment: each delivery goes back on the queue once, not once per caller
/// (which would deliver it twice).
#[tokio::test]
async fn two_callers_releasing_the_same_expired_leases_requeue_each_delivery_once() {
    for _round in 0..20 {
        let s = Store::temporary().unwrap();
        let a = app(None);
        let ep = endpoint(&a.id, &[]);
        for i in 0..50 {
            s.publish(&message(&a.id, 10 + i, None), b"{}", &[&ep], 10, || {})
                .await
                .unwrap();
        }
        // Fifty claims of one delivery each: fifty leases, expiring at 500.
        for _ in 0..50 {
            s.claim_due(10, 500, 1, 100, |_| Claim::Take).await.unwrap();
        }
        let start = std::sync::Barrier::new(2);
        let released: usize = std::thread::scope(|scope| {
            [1_000, 2_000]
                .map(|due| {
                    let (s, start) = (&s, &start);
                    scope.spawn(move || {
                        start.wait();
                        s.release_expired_leases(600, due).unwrap()
                    })
                })
                .into_iter()
                .map(|c| c.join().unwrap())
                .sum()
        });
        let queued: usize = s.queued().map(|e| e.unwrap().tasks().len()).sum();
        assert_eq!((released, queued), (50, 50));
    }
}

/// A store with five deliveries to one endpoint, due at 10..=14.
async fn five_queued_for_one_endpoint() -> Store {
    let s = Store::temporary().unwrap();
    let a = app(None);
    let ep = endpoint(&a.id, &[]);
    for i in 0..5 {
        s.publish(&message(&a.id, 10 + i, None), b"{}", &[&ep], 10 + i, || {})
            .await
            .unwrap();
    }
    s
}

#[tokio::test]
async fn deferred_tasks_move_back_in_the_queue() {
    let s = five_queued_for_one_endpoint().await;
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
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(s.queue_depth(), (3, 2));
    assert_eq!(s.next_due_ms().unwrap(), Some(1_000));
    assert!(
        s.claim_due(999, 500, 10, 100, |_| Claim::Take)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A throttle's line (deliveries to one endpoint moved back to times of
/// their own) comes back now, in order; the same times of another endpoint
/// and another time of the same endpoint keep their places.
#[tokio::test]
async fn a_line_is_brought_forward() {
    let s = Store::temporary().unwrap();
    let a = app(None);
    let (ep, other) = (endpoint(&a.id, &[]), endpoint(&a.id, &[]));
    let mut msgs = Vec::new();
    for i in 0..5 {
        let m = message(&a.id, 10 + i, None);
        s.publish(&m, b"{}", &[&ep, &other], 10 + i, || {})
            .await
            .unwrap();
        msgs.push(m.id);
    }
    let mut turn = HashMap::<EndpointId, i64>::new();
    let got = s
        .claim_due(100, 500, 20, 100, |t| {
            let at = turn.entry(t.ep_id.clone()).or_default();
            *at += 1_000;
            Claim::Defer(*at)
        })
        .await
        .unwrap();
    assert!(got.is_empty());
    assert_eq!(s.queue_depth(), (10, 0));
    let moved = s
        .bring_forward(&ep.id, &[1_000, 2_000, 3_000, 4_000], 200)
        .await
        .unwrap();
    assert_eq!(moved, 4);
    let taken = s
        .claim_due(200, 500, 20, 100, |_| Claim::Take)
        .await
        .unwrap();
    assert_eq!(
        taken
            .iter()
            .map(|t| (&t.ep_id, &t.msg_id))
            .collect::<Vec<_>>(),
        msgs[..4].iter().map(|m| (&ep.id, m)).collect::<Vec<_>>()
    );
    assert_eq!(s.queue_depth(), (6, 4));
    assert_eq!(s.next_due_ms().unwrap(), Some(1_000));
    assert_eq!(
        s.bring_forward(&ep.id, &[1_000, 2_000], 300).await.unwrap(),
        0,
        "nothing of the endpoint is left at those times"
    );
}

#[tokio::test]
async fn skipped_tasks_stay_in_place_and_the_limit_ends_the_scan() {
    let s = five_queued_for_one_endpoint().await;
    let mut seen = Vec::new();
    let got = s
        .claim_due(100, 500, 2, 100, |t| {
            seen.push(t.due_ms);
            match t.due_ms {
                10 | 11 => Claim::Skip,
                _ => Claim::Take,
            }
        })
        .await
        .unwrap();
    assert_eq!(seen, [10, 11, 12, 13], "the scan ends at the limit");
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].due_ms, 12);
    assert_eq!(got[1].due_ms, 13);
    assert_eq!(s.queue_depth(), (3, 2));
    assert_eq!(
        s.next_due_ms().unwrap(),
        Some(10),
        "skipped tasks keep their place"
    );
}

#[tokio::test]
async fn a_message_to_several_endpoints_is_one_queue_entry_taken_apart_by_claims() {
    let s = Store::temporary().unwrap();
    let a = app(None);
    let eps: Vec<EndpointRecord> = (0..4).map(|_| endpoint(&a.id, &[])).collect();
    let m = message(&a.id, 10, None);
    s.publish(&m, b"{}", &eps.iter().collect::<Vec<_>>(), 20, || {})
        .await
        .unwrap();
    assert_eq!(s.tree.scan_prefix([keys::ns::QUEUE]).count(), 1);
    assert_eq!(s.queue_depth(), (4, 0));
    assert_eq!(s.next_due_ms().unwrap(), Some(20));
    let next: Vec<EndpointId> = s
        .next_deliveries(10)
        .unwrap()
        .into_iter()
        .map(|t| t.ep_id)
        .collect();
    assert_eq!(next, eps.iter().map(|e| e.id.clone()).collect::<Vec<_>>());
    assert_eq!(s.queue_summary(10).unwrap().queued, 4);

    // One taken, one skipped, one deferred, one left by the limit.
    let mut seen = 0;
    let taken = s
        .claim_due(20, 100, 1, 100, |t| {
            seen += 1;
            if t.ep_id == eps[0].id {
                Claim::Skip
            } else if t.ep_id == eps[1].id {
                Claim::Defer(50)
            } else {
                Claim::Take
            }
        })
        .await
        .unwrap();
    assert_eq!(seen, 3, "the limit ends the look at the fan");
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].ep_id, eps[2].id);
    assert_eq!((taken[0].attempt, taken[0].due_ms), (0, 20));
    assert_eq!(s.queue_depth(), (3, 1));
    assert_eq!(
        s.next_due_ms().unwrap(),
        Some(20),
        "what the fan still holds keeps its place"
    );
    // Every delivery is waiting somewhere: reconcile requeues none.
    assert_eq!(
        s.reconcile(30, 60_000, None, 100, || {}).unwrap().requeued,
        0
    );

    let rest: Vec<EndpointId> = s
        .claim_due(20, 100, 10, 100, |_| Claim::Take)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.ep_id)
        .collect();
    assert_eq!(rest, [eps[0].id.clone(), eps[3].id.clone()]);
    let deferred = s
        .claim_due(50, 100, 10, 100, |_| Claim::Take)
        .await
        .unwrap();
    assert_eq!(deferred.len(), 1);
    assert_eq!(
        (deferred[0].ep_id.clone(), deferred[0].due_ms),
        (eps[1].id.clone(), 50)
    );
    assert_eq!(s.queue_depth(), (0, 4));

    // Expired, each lease puts its deliveries back one by one.
    assert_eq!(s.release_expired_leases(100, 200).unwrap(), 4);
    assert_eq!(s.tree.scan_prefix([keys::ns::QUEUE]).count(), 4);
    assert_eq!(s.queue_depth(), (4, 0));
}

#[test]
fn cadence_merges_several_observations_in_order() {
    let s = Store::temporary().unwrap();
    let a = app(None);
    for t in [1_000, 2_000, 3_000] {
        s.observe_message(&a.id, "tick", t).unwrap();
    }
    let all = s.cadences().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].2.count, 3);
    assert_eq!(all[0].2.last_ms, 3_000);
    s.observe_message(&a.id, "tick", 4_000).unwrap();
    let all = s.cadences().unwrap();
    assert_eq!(all[0].2.count, 4);
    assert_eq!(all[0].2.last_ms, 4_000);
}

#[tokio::test]
async fn duplicate_event_id_is_reported() {
    let s = Store::temporary().unwrap();
    let a = app(None);
    let first = message(&a.id, 10, Some("evt-1"));
    s.publish(&first, b"{}", &[], 10, || {}).await.unwrap();
    let again = message(&a.id, 11, Some("evt-1"));
    match s.publish(&again, b"{}", &[], 11, || {}).await.unwrap() {
        Published::DuplicateEventId(id) => assert_eq!(id, first.id),
        other => panic!("expected a duplicate, got {other:?}"),
    }
    assert_eq!(
        s.find_message(&a.id, "evt-1").unwrap().unwrap().id,
        first.id
    );
}

#[tokio::test]
async fn pages_walk_both_ways_without_gaps() {
    let s = Store::temporary().unwrap();
    let a = app(None);
    let mut ids: Vec<MessageId> = Vec::new();
    for i in 0..7 {
        let m = message(&a.id, 100 + i, None);
        s.publish(&m, b"{}", &[], 100 + i, || {}).await.unwrap();
        ids.push(m.id);
    }
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

/// A new claim of `scope` at `at` (keys live 100 ms).
fn new_claim(s: &Store, scope: [u8; 32], at: i64) -> IdemPending {
    match s.idempotency_begin(&scope, at, 100).unwrap() {
        IdemClaim::New(claim) => claim,
        _ => panic!("expected a new claim"),
    }
}

#[test]
fn idempotency_replays_and_expires() {
    let s = Store::temporary().unwrap();
    let scope = [7u8; 32];
    let claim = new_claim(&s, scope, 0);
    assert!(matches!(
        s.idempotency_begin(&scope, 1, 100).unwrap(),
        IdemClaim::InProgress
    ));
    s.idempotency_finish(
        &claim,
        2,
        Some(StoredResponse {
            status: 202,
            body: b"x".to_vec(),
        }),
    )
    .unwrap();
    // Answered, and that durable: the claim goes.
    drop(claim);
    match s.idempotency_begin(&scope, 3, 100).unwrap() {
        IdemClaim::Replay(r) => assert_eq!((r.status, r.body), (202, b"x".to_vec())),
        _ => panic!("expected a replay"),
    }
    // Past its 100 ms, the answer counts for nothing.
    new_claim(&s, scope, 500);
    // A request that ended without an answer (its future dropped) leaves
    // its key free.
    let other = [8u8; 32];
    drop(new_claim(&s, other, 0));
    new_claim(&s, other, 1);
}

/// A request under way when the process ended holds its key no longer
/// (it was refused until the key expired): nothing of it reaches the disk
/// (here flushed while it is under way), and the answer-less record a
/// store written before kept counts for nothing.
#[test]
fn a_crash_frees_the_idempotency_keys_under_way() {
    let dir = tempfile::tempdir().unwrap();
    let key = DataKey::generate();
    let scope = [9u8; 32];
    {
        let s = Store::open(dir.path(), 1 << 20, Keyring::new(key.clone())).unwrap();
        let claim = new_claim(&s, scope, 0);
        // As a crash would: the claim is never given up.
        std::mem::forget(claim);
        let older = [10u8; 32];
        s.tree
            .insert(
                keys::idempotency(&older),
                encode(&IdempotencyRecord {
                    created_ms: 0,
                    response: None,
                }),
            )
            .unwrap();
        s.commit_blocking().unwrap();
    }
    let s = Store::open(dir.path(), 1 << 20, Keyring::new(key)).unwrap();
    for scope in [[9u8; 32], [10u8; 32]] {
        new_claim(&s, scope, 1);
    }
}

/// The retention job removes answers past the key's lifetime, not others.
#[test]
fn old_idempotent_answers_are_removed() {
    let s = Store::temporary().unwrap();
    let answer = |at: i64, scope: [u8; 32]| {
        let claim = new_claim(&s, scope, at);
        let body = b"{}".to_vec();
        s.idempotency_finish(&claim, at, Some(StoredResponse { status: 202, body }))
            .unwrap();
    };
    answer(0, [1u8; 32]);
    answer(50, [2u8; 32]);
    assert_eq!(s.expire_idempotency(120, 100).unwrap(), 1);
    assert!(matches!(
        s.idempotency_begin(&[2u8; 32], 120, 100).unwrap(),
        IdemClaim::Replay(_)
    ));
    let left = s.tree.scan_prefix([keys::ns::IDEMPOTENCY]).count();
    assert_eq!(left, 1);
}

#[tokio::test]
async fn delete_app_removes_its_data() {
    let s = Store::temporary().unwrap();
    let a = app(Some("gone"));
    s.create_app(&a).unwrap().unwrap();
    let ep = endpoint(&a.id, &[]);
    s.create_endpoint(&ep).unwrap().unwrap();
    let m = message(&a.id, 10, Some("e1"));
    s.publish(&m, b"{}", &[&ep], 10, || {}).await.unwrap();
    // Another app's cadence and alert stay.
    let other = app(None);
    s.observe_message(&other.id, "tick", 10).unwrap();
    for app_id in [&a.id, &other.id] {
        s.put_silence_alert(&SilenceAlert {
            app_id: app_id.clone(),
            event_type: "tick".into(),
            last_ms: 10,
            threshold_ms: 1,
            raised_ms: 20,
        })
        .unwrap();
    }
    s.delete_app(&a).unwrap();
    // Nothing of it for the silence watchdog to raise an alert about.
    let cadences: Vec<AppId> = s.cadences().unwrap().into_iter().map(|c| c.0).collect();
    assert_eq!(cadences, vec![other.id.clone()]);
    let alerts: Vec<AppId> = s
        .silence_alerts()
        .unwrap()
        .into_iter()
        .map(|a| a.app_id)
        .collect();
    assert_eq!(alerts, vec![other.id.clone()]);
    assert!(s.find_app("gone").unwrap().is_none());
    assert!(s.find_message(&a.id, "e1").unwrap().is_none());
    assert!(s.payload(&m.id).unwrap().is_none());
    assert!(s.dest(&m.id, &ep.id).unwrap().is_none());
}

/// A status that cannot be read is passed by: reconcile goes on past it,
/// and so does the look for deliveries held in memory at start (which
/// failed, and with it the start).
#[tokio::test]
async fn an_unreadable_status_stops_neither_reconcile_nor_a_start() {
    let dir = tempfile::tempdir().unwrap();
    let key = DataKey::generate();
    let (s, a, ep) = on_disk_with_handoff(dir.path(), &key);
    let now = crate::domain::now_ms();
    let bad = message(&a.id, now, None);
    s.tree
        .insert(keys::dest(&bad.id, &ep.id), &b"\xff\xff"[..])
        .unwrap();
    // Behind it (in key order), a delivery waiting with nothing queued.
    let lost = message(&a.id, now + 1, None);
    s.publish(&lost, b"{}", &[&ep], now, || {}).await.unwrap();
    s.commit_blocking().unwrap();
    drop(s);
    let s = Store::open(dir.path(), 1 << 20, Keyring::new(key)).unwrap();
    // The one published was handed over in memory and is found again.
    assert_eq!(s.recover_handed_over(now + 10).unwrap(), 1);
    let r = s.reconcile(now + 20, 60_000, None, 100, || {}).unwrap();
    assert!(r.statuses_checked >= 2, "{r:?}");
}

/// A delivery status that cannot be read does not keep its endpoint from
/// being deleted (it goes too).
#[tokio::test]
async fn an_unreadable_status_does_not_keep_an_endpoint() {
    let (s, a, ep) = store_with_endpoint();
    let m = message(&a.id, 10, None);
    s.publish(&m, b"{}", &[&ep], 10, || {}).await.unwrap();
    s.tree
        .insert(keys::dest(&m.id, &ep.id), &b"\xff\xff"[..])
        .unwrap();
    s.delete_endpoint(&ep).unwrap();
    assert!(s.get_endpoint(&a.id, &ep.id).unwrap().is_none());
    assert!(!s.tree.contains_key(keys::dest(&m.id, &ep.id)).unwrap());
}

/// `endpoints_of`, and `get_endpoint` through it, answer from memory
/// between endpoint writes: every kind of write shows in their next answer.
#[test]
fn endpoints_of_sees_every_endpoint_write_at_once() {
    let s = Store::temporary().unwrap();
    let a = app(None);
    s.create_app(&a).unwrap().unwrap();
    let ep = endpoint(&a.id, &[]);
    let second = EndpointRecord {
        id: EndpointId::new(3),
        ..endpoint(&a.id, &[])
    };
    // Each endpoint read on its own (before the list is read again, from
    // the tree; after, from the list), then the list.
    let seen = |s: &Store| -> Vec<(EndpointId, bool)> {
        let one = |s: &Store| -> Vec<(EndpointId, bool)> {
            [&ep.id, &second.id]
                .into_iter()
                .filter_map(|id| s.get_endpoint(&a.id, id).unwrap())
                .map(|e| (e.id, e.disabled))
                .collect()
        };
        let before = one(s);
        let listed: Vec<_> = s
            .endpoints_of(&a.id)
            .unwrap()
            .iter()
            .map(|e| (e.id.clone(), e.disabled))
            .collect();
        assert_eq!(before, listed);
        assert_eq!(one(s), listed);
        listed
    };
    assert!(seen(&s).is_empty());
    s.create_endpoint(&ep).unwrap().unwrap();
    assert_eq!(seen(&s), [(ep.id.clone(), false)]);
    let disabled = EndpointRecord {
        disabled: true,
        ..ep.clone()
    };
    assert!(s.put_endpoint(&disabled).unwrap());
    assert_eq!(seen(&s), [(ep.id.clone(), true)]);
    let enabled = EndpointRecord {
        uid: Some("orders".into()),
        disabled: false,
        ..ep.clone()
    };
    assert!(s.update_endpoint(&disabled, &enabled).unwrap().unwrap());
    assert_eq!(seen(&s), [(ep.id.clone(), false)]);
    s.create_endpoint(&second).unwrap().unwrap();
    assert_eq!(
        seen(&s),
        [(ep.id.clone(), false), (second.id.clone(), false)]
    );
    s.delete_endpoint(&enabled).unwrap();
    assert_eq!(seen(&s), [(second.id.clone(), false)]);
    s.delete_app(&a).unwrap();
    assert!(seen(&s).is_empty());
}

/// A temporary store with one endpoint (no event-type filter) of an app.
fn store_with_endpoint() -> (Store, AppRecord, EndpointRecord) {
    let s = Store::temporary().unwrap();
    let a = app(None);
    let ep = endpoint(&a.id, &[]);
    s.create_app(&a).unwrap().unwrap();
    s.create_endpoint(&ep).unwrap().unwrap();
    (s, a, ep)
}

/// The IDs of the attempts listed under a message, newest first.
fn attempt_ids_of_msg(s: &Store, msg: &MessageId) -> Vec<AttemptId> {
    s.attempts_of_msg(msg, &PageReq::first(10), |_| true)
        .unwrap()
        .items
        .into_iter()
        .map(|a| a.id)
        .collect()
}

/// A store with one endpoint and one message (created at 10) published to
/// it, due at `due` and claimed with a lease until `lease_until`.
async fn one_claimed(
    due: i64,
    lease_until: i64,
) -> (Store, EndpointRecord, MessageRecord, TaskRecord) {
    let (s, a, ep) = store_with_endpoint();
    let m = message(&a.id, 10, None);
    s.publish(&m, b"{}", &[&ep], due, || {}).await.unwrap();
    let t = claim_one(&s, due, lease_until).await;
    (s, ep, m, t)
}

/// One delivery claimed (due at 10, leased until 500) and attempted once
/// (`ok`, then `next`), its lease given up.
async fn one_attempted(ok: bool, next: Next) -> (Store, EndpointRecord, MessageRecord, TaskRecord) {
    let (s, ep, m, t) = one_claimed(10, 500).await;
    s.record_attempt(&t, &attempt(&t, ok, 20), next)
        .await
        .unwrap();
    s.release_lease(500, &t.id).await.unwrap();
    (s, ep, m, t)
}

/// Claims what is due at `now` (leased until `lease_until`) and returns
/// the first task taken.
pub(crate) async fn claim_one(s: &Store, now: i64, lease_until: i64) -> TaskRecord {
    s.claim_due(now, lease_until, 10, 100, |_| Claim::Take)
        .await
        .unwrap()
        .remove(0)
}

/// A message with a retention shorter than every configured one
/// (`payloadRetentionPeriod`) loses its payload when its own ends, once
/// delivered, although the pass looks only at messages older than the
/// shortest configured retention.
#[tokio::test]
async fn a_message_retention_shorter_than_the_configured_ones_is_kept_to() {
    let (s, a, ep) = store_with_endpoint();
    let short = MessageRecord {
        payload_retention_ms: Some(1_000),
        ..message(&a.id, 10, None)
    };
    let usual = message(&a.id, 11, None);
    for m in [&short, &usual] {
        s.publish(m, b"{}", &[&ep], 10, || {}).await.unwrap();
    }
    let retention_of = |m: &MessageRecord| m.payload_retention_ms.unwrap_or(60_000);
    // Undelivered, it keeps its payload past its retention.
    let r = s.expire_payloads(5_000, 60_000, retention_of).unwrap();
    assert_eq!(r.payloads_expunged, 0);
    deliver_all_due(&s).await;
    let r = s.expire_payloads(5_000, 60_000, retention_of).unwrap();
    assert_eq!(r.payloads_expunged, 1);
    assert!(s.payload(&short.id).unwrap().is_none());
    assert!(s.payload(&usual.id).unwrap().is_some());
    // Its entry went with the payload.
    assert_eq!(s.tree.scan_prefix([keys::ns::PAYLOAD_EXPIRY]).count(), 0);
}

#[tokio::test]
async fn dead_letter_index_follows_the_status() {
    let (s, ep, m, t) = one_claimed(10, 500).await;
    s.record_attempt(&t, &attempt(&t, false, 20), Next::Done)
        .await
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
    let t = claim_one(&s, 30, 600).await;
    s.record_attempt(&t, &attempt(&t, true, 40), Next::Done)
        .await
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
    assert_eq!(s.app_message_count(&m.app_id).unwrap(), 1);
}

#[tokio::test]
async fn scan_limit_cuts_a_page_and_says_where_to_resume() {
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
        s.publish(&m, b"{}", &[], 100 + i, || {}).await.unwrap();
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

/// The namespace tag of every write to the tree while `f` runs, in the order
/// sled applied them (`-` marks a removal). Events are queued as the writes
/// happen, so once `f` is done they are all there to drain.
async fn applied_order<F: std::future::Future<Output = ()>>(s: &Store, f: F) -> String {
    let mut events = s.tree.watch_prefix(vec![]);
    f.await;
    let mut order = String::new();
    while let Ok(e) = events.next_timeout(std::time::Duration::from_millis(10)) {
        match e {
            sled::Event::Insert { key, .. } => order.push(key[0] as char),
            sled::Event::Remove { key } => {
                order.push('-');
                order.push(key[0] as char);
            }
        }
    }
    order
}

#[tokio::test]
async fn a_job_is_applied_in_an_order_whose_every_prefix_is_safe() {
    let s = Store::temporary().unwrap();
    let a = app(None);
    let (e1, e2) = (endpoint(&a.id, &[]), endpoint(&a.id, &[]));
    let m = message(&a.id, 10, None);
    // All-messages entry (with the payload), status and endpoint index per
    // endpoint, then the message, then the queue entry (one for both endpoints).
    let publish = applied_order(&s, async {
        s.publish(&m, b"{}", &[&e1, &e2], 20, || {}).await.unwrap();
    })
    .await;
    assert_eq!(publish, "GDdDdMQ");
    let mut tasks = vec![];
    let claim = applied_order(&s, async {
        tasks = s.claim_due(20, 100, 1, 100, |_| Claim::Take).await.unwrap();
    })
    .await;
    assert_eq!(claim, "lQ", "the lease before the entry keeps one endpoint");
    let claim = applied_order(&s, async {
        tasks = s.claim_due(20, 100, 1, 100, |_| Claim::Take).await.unwrap();
    })
    .await;
    assert_eq!(claim, "l-Q", "the lease before the queue entry goes");
    let t = &tasks[0];
    let record = applied_order(&s, async {
        s.record_attempt(t, &attempt(t, false, 30), Next::RetryAt(500))
            .await
            .unwrap();
    })
    .await;
    // The attempt, its endpoint index, the retry and the status; the lease
    // stays. (Counter merges of other threads may follow.)
    assert!(record.starts_with("rsQD"), "{record}");
    assert!(!record.contains("-l"), "{record}");
    let release = applied_order(&s, async {
        s.release_lease(100, &t.id).await.unwrap();
    })
    .await;
    assert!(release.starts_with("-l"), "{release}");
}

#[tokio::test]
async fn payloads_kept_under_their_own_key_by_an_earlier_release_are_read_and_expire() {
    let (s, a, ep) = store_with_endpoint();
    let (old, new) = (message(&a.id, 10, None), message(&a.id, 11, None));
    for m in [&old, &new] {
        s.publish(m, b"{\"p\":1}", &[&ep], 20, || {}).await.unwrap();
    }
    assert!(
        !s.tree.contains_key(keys::payload(&new.id)).unwrap(),
        "the payload is in the all-messages entry"
    );
    // The earlier layout: the payload under its own key, the app ID alone
    // in the all-messages entry.
    s.tree
        .insert(keys::payload(&old.id), &b"{\"p\":0}"[..])
        .unwrap();
    s.tree
        .insert(keys::all_messages(&old.id), a.id.as_str().as_bytes())
        .unwrap();
    assert_eq!(s.payload(&old.id).unwrap().unwrap(), b"{\"p\":0}");
    assert_eq!(s.payload(&new.id).unwrap().unwrap(), b"{\"p\":1}");
    assert_eq!(s.find_message_any(&old.id).unwrap().unwrap().id, old.id);
    let all = s.list_all_messages(&PageReq::first(5), |_| true).unwrap();
    assert_eq!(all.items.len(), 2);

    deliver_all_due(&s).await;
    let r = s.expire_payloads(10_000, 1_000, |_| 1_000).unwrap();
    assert_eq!(r.payloads_expunged, 2);
    assert_eq!(r.bytes_freed, 2 * (7 + 2), "payloads and response bodies");
    for m in [&old, &new] {
        assert!(s.payload(&m.id).unwrap().is_none());
        assert!(s.find_message_any(&m.id).unwrap().unwrap().expunged);
    }
    assert!(!s.tree.contains_key(keys::payload(&old.id)).unwrap());
    let again = s.expire_payloads(20_000, 1_000, |_| 1_000).unwrap();
    assert_eq!(
        again.payloads_expunged, 0,
        "an expunged payload is not looked at twice"
    );
    let all = s.list_all_messages(&PageReq::first(5), |_| true).unwrap();
    assert_eq!(all.items.len(), 2, "expunged messages stay listed");
}

#[tokio::test]
async fn attempts_kept_by_attempt_id_by_an_earlier_release_are_read_and_deleted() {
    let (s, ep, m, t) = one_claimed(20, 100).await;
    // The earlier layout: the record under its own ID, empty index entries.
    let old = attempt(&t, false, 30);
    s.tree
        .insert(keys::legacy_attempt(&old.id), encode(&old))
        .unwrap();
    s.tree
        .insert(keys::attempt_by_msg(&m.id, &old.id), &[][..])
        .unwrap();
    s.tree
        .insert(keys::attempt_by_ep(&ep.id, &old.id), &[][..])
        .unwrap();
    let new = attempt(&t, true, 40);
    s.record_attempt(&t, &new, Next::Done).await.unwrap();

    let ids = |p: Page<AttemptRecord>| p.items.into_iter().map(|a| a.id).collect::<Vec<_>>();
    let all = PageReq::first(5);
    let both = vec![new.id.clone(), old.id.clone()];
    assert_eq!(ids(s.attempts_of_msg(&m.id, &all, |_| true).unwrap()), both);
    assert_eq!(ids(s.attempts_of_ep(&ep.id, &all, |_| true).unwrap()), both);
    let got = s.get_attempt(&m.id, &old.id).unwrap().unwrap();
    assert_eq!(got.status, MessageStatus::Fail);

    // Expunging clears both response bodies, each where it is kept.
    assert_eq!(s.expunge_content(&m).unwrap(), 4);
    let bodies = s.attempts_of_msg(&m.id, &all, |_| true).unwrap().items;
    assert!(bodies.iter().all(|a| a.response_body.is_empty()));

    // Retention at 35 deletes the old one with its index entries only.
    let r = s.delete_old_attempts(1_035, 1_000).unwrap();
    assert_eq!(r.attempts_deleted, 1);
    assert!(s.tree.get(keys::legacy_attempt(&old.id)).unwrap().is_none());
    let just_new = vec![new.id.clone()];
    assert_eq!(
        ids(s.attempts_of_msg(&m.id, &all, |_| true).unwrap()),
        just_new
    );
    assert_eq!(
        ids(s.attempts_of_ep(&ep.id, &all, |_| true).unwrap()),
        just_new
    );
    assert!(s.get_attempt(&m.id, &old.id).unwrap().is_none());
}

/// A lease that outlived its claim (a crash before it was given back)
/// brings back the deliveries of the claim, but not a first attempt that
/// succeeded: it was delivered again.
#[tokio::test]
async fn a_released_lease_does_not_bring_back_a_delivered_first_attempt() {
    let (s, _ep, _m, t) = one_claimed(20, 100).await;
    s.record_attempt(&t, &attempt(&t, true, 30), Next::Done)
        .await
        .unwrap();
    assert_eq!(s.release_expired_leases(1_000, 1_000).unwrap(), 0);
    assert_eq!(s.queue_depth().0, 0);
    // One that failed comes back.
    let (s, _ep, _m, t) = one_claimed(20, 100).await;
    s.record_attempt(&t, &attempt(&t, false, 30), Next::Done)
        .await
        .unwrap();
    assert_eq!(s.release_expired_leases(1_000, 1_000).unwrap(), 1);
}

/// An attempt record that cannot be read is deleted by its key when it is
/// old enough, and the others with it: it stopped every retention pass (and
/// the idempotency expiry and the disk bound after it).
#[tokio::test]
async fn an_unreadable_old_attempt_record_does_not_stop_attempt_retention() {
    let (s, ep, m, t) = one_claimed(20, 100).await;
    // Two later attempts of the message: one readable, one not.
    let (good, bad) = (attempt(&t, false, 30), attempt(&t, false, 31));
    s.tree
        .insert(keys::attempt_by_msg(&m.id, &good.id), encode(&good))
        .unwrap();
    s.tree
        .insert(
            keys::attempt_by_ep(&ep.id, &good.id),
            m.id.as_str().as_bytes(),
        )
        .unwrap();
    s.tree
        .insert(keys::attempt_by_msg(&m.id, &bad.id), &b"\xff\xff"[..])
        .unwrap();
    let r = s.delete_old_attempts(1_035, 1_000).unwrap();
    assert_eq!(r.attempts_deleted, 2);
    for k in [
        keys::attempt_by_msg(&m.id, &good.id),
        keys::attempt_by_ep(&ep.id, &good.id),
        keys::attempt_by_msg(&m.id, &bad.id),
    ] {
        assert!(s.tree.get(k).unwrap().is_none());
    }
}

#[tokio::test]
async fn reconcile_removes_the_statuses_of_a_publish_cut_before_its_message() {
    let s = Store::temporary().unwrap();
    let a = app(None);
    let ep = endpoint(&a.id, &[]);
    s.create_endpoint(&ep).unwrap().unwrap();
    let whole = message(&a.id, 10, None);
    let cut = message(&a.id, 11, None);
    for m in [&whole, &cut] {
        s.publish(m, b"{}", &[&ep], 20, || {}).await.unwrap();
    }
    let tasks = s
        .claim_due(20, 100, 10, 100, |_| Claim::Take)
        .await
        .unwrap();
    s.release_lease(100, &tasks[0].id).await.unwrap();
    // What a crash leaves of a publish cut after its statuses: no message
    // record, no queue entry (both are written after the statuses).
    s.tree.remove(keys::message(&a.id, &cut.id)).unwrap();

    // Too young to tell from a publish still being applied: both requeued.
    let young = s.reconcile(30_000, 1_000, None, 1000, || {}).unwrap();
    assert_eq!(young.requeued, 2);
    let tasks = s
        .claim_due(30_000, 30_100, 10, 100, |_| Claim::Take)
        .await
        .unwrap();
    s.release_lease(30_100, &tasks[0].id).await.unwrap();
    let r = s.reconcile(120_000, 60_000, None, 1000, || {}).unwrap();
    assert_eq!(r.requeued, 1, "only the whole message is queued again");
    // Its payload and all-messages entry go with payload retention.
    s.expire_payloads(120_000, 60_000, |_| 60_000).unwrap();
    assert!(s.payload(&cut.id).unwrap().is_none());
    assert!(!s.tree.contains_key(keys::all_messages(&cut.id)).unwrap());
    assert!(
        s.payload(&whole.id).unwrap().is_some(),
        "still to be delivered"
    );
    assert!(s.tree.contains_key(keys::all_messages(&whole.id)).unwrap());
    assert!(s.dest(&cut.id, &ep.id).unwrap().is_none());
    assert!(s.dest(&whole.id, &ep.id).unwrap().is_some());
    assert!(
        !s.tree
            .contains_key(keys::endpoint_msg(&ep.id, &cut.id))
            .unwrap()
    );
    assert!(
        s.tree
            .contains_key(keys::endpoint_msg(&ep.id, &whole.id))
            .unwrap()
    );
}

#[tokio::test]
async fn reconcile_requeues_orphans_releases_leases_and_repairs_dead_letters() {
    let s = Store::temporary().unwrap();
    let a = app(None);
    let ep = endpoint(&a.id, &[]);
    s.create_endpoint(&ep).unwrap().unwrap();
    let orphan = message(&a.id, 10, None);
    let leased = message(&a.id, 11, None);
    let failed = message(&a.id, 12, None);
    for m in [&orphan, &leased, &failed] {
        s.publish(m, b"{}", &[&ep], 20, || {}).await.unwrap();
    }
    let tasks = s
        .claim_due(20, 100, 10, 100, |t| {
            if t.msg_id == leased.id {
                Claim::Skip
            } else {
                Claim::Take
            }
        })
        .await
        .unwrap();
    // The failed one: recorded as failed, then its dead-letter entry lost.
    let t_failed = tasks.iter().find(|t| t.msg_id == failed.id).unwrap();
    s.record_attempt(t_failed, &attempt(t_failed, false, 30), Next::Done)
        .await
        .unwrap();
    s.tree.remove(keys::failed(&failed.id, &ep.id)).unwrap();
    // The orphan: its lease given up with no attempt recorded (as after a
    // lost write), its status still pending.
    s.release_lease(100, &tasks[0].id).await.unwrap();
    // The leased one: claimed on its own, under a lease expired at once
    // (reconcile reads the lease clock, which is past 0).
    let claimed = s.claim_due(20, 0, 10, 100, |_| Claim::Take).await.unwrap();
    assert_eq!(claimed.len(), 1);
    // A stray dead-letter entry for a delivered message.
    s.tree
        .insert(keys::failed(&leased.id, &ep.id), &[])
        .unwrap();

    let r = s.reconcile(500, 100, None, 1000, || {}).unwrap();
    assert_eq!(
        r.leases_released, 1,
        "the leased task's lease (expiring at 0) expired"
    );
    assert_eq!(r.requeued, 1, "the orphan is queued again");
    assert_eq!(r.dead_letter_fixed, 2);
    assert_eq!(r.statuses_checked, 3);
    assert!(r.cursor.is_none());
    let failed_list = s.failed_deliveries(&PageReq::first(10)).unwrap().items;
    assert_eq!(failed_list.len(), 1);
    assert_eq!(failed_list[0].msg_id, failed.id);
    let due: Vec<MessageId> = s
        .claim_due(500, 900, 10, 100, |_| Claim::Take)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.msg_id)
        .collect();
    assert!(due.contains(&orphan.id) && due.contains(&leased.id));
    // A second pass finds nothing more to mend.
    let again = s.reconcile(600, 60_000, None, 1000, || {}).unwrap();
    assert_eq!((again.requeued, again.dead_letter_fixed), (0, 0));
    // A small budget sweeps in steps.
    let step = s.reconcile(600, 60_000, None, 2, || {}).unwrap();
    assert_eq!(step.statuses_checked, 2);
    let rest = s
        .reconcile(600, 60_000, step.cursor.as_deref(), 2, || {})
        .unwrap();
    assert_eq!(rest.statuses_checked, 1);
    assert!(rest.cursor.is_none());
}

#[test]
fn cadence_learns_the_usual_gap() {
    let s = Store::temporary().unwrap();
    let a = AppId::new(1);
    for t in [1_000, 2_000, 3_000, 4_000] {
        s.observe_message(&a, "tick", t).unwrap();
    }
    let c = s.cadences().unwrap();
    assert_eq!(c.len(), 1);
    let (app, et, cadence) = &c[0];
    assert_eq!((app, et.as_str()), (&a, "tick"));
    assert_eq!(cadence.count, 4);
    assert_eq!(cadence.last_ms, 4_000);
    assert!((cadence.mean_gap_ms - 1_000.0).abs() < 1e-9);
}

#[tokio::test]
async fn retention_keeps_undelivered_messages() {
    let (s, a, ep) = store_with_endpoint();
    let delivered = message(&a.id, 10, None);
    let failing = message(&a.id, 11, None);
    let orphan = message(&a.id, 12, None); // no endpoint: delivered to nobody, nothing owed
    s.publish(&delivered, b"{\"d\":1}", &[&ep], 20, || {})
        .await
        .unwrap();
    s.publish(&failing, b"{\"f\":1}", &[&ep], 20, || {})
        .await
        .unwrap();
    s.publish(&orphan, b"{}", &[], 20, || {}).await.unwrap();
    for t in s
        .claim_due(20, 100, 10, 100, |_| Claim::Take)
        .await
        .unwrap()
    {
        let ok = t.msg_id == delivered.id;
        s.record_attempt(&t, &attempt(&t, ok, 30), Next::Done)
            .await
            .unwrap();
        s.release_lease(100, &t.id).await.unwrap();
    }
    // Payload retention: the delivered and the orphan go, the failed one stays.
    let r = s.expire_payloads(10_000, 1_000, |_| 1_000).unwrap();
    assert_eq!(r.payloads_expunged, 2);
    assert!(s.payload(&delivered.id).unwrap().is_none());
    assert!(s.payload(&failing.id).unwrap().is_some());
    let atts = s
        .attempts_of_msg(&delivered.id, &PageReq::first(5), |_| true)
        .unwrap()
        .items;
    assert!(
        atts[0].response_body.is_empty(),
        "response bodies go with the payload"
    );
    // Old attempts are deleted with their indexes.
    let r = s.delete_old_attempts(10_000, 1_000).unwrap();
    assert_eq!(r.attempts_deleted, 2);
    assert!(
        s.attempts_of_ep(&ep.id, &PageReq::first(5), |_| true)
            .unwrap()
            .items
            .is_empty()
    );
    // The disk bound drops delivered messages only, oldest first.
    let r = s.drop_oldest_delivered(u64::MAX).unwrap();
    assert_eq!(r.messages_deleted, 2);
    assert!(
        s.find_message(&a.id, delivered.id.as_str())
            .unwrap()
            .is_none()
    );
    assert!(s.find_message(&a.id, orphan.id.as_str()).unwrap().is_none());
    assert!(
        s.find_message(&a.id, failing.id.as_str())
            .unwrap()
            .is_some()
    );
    assert_eq!(
        s.failed_deliveries(&PageReq::first(5)).unwrap().items.len(),
        1
    );
}

#[tokio::test]
async fn failing_clock_starts_at_the_first_failure_and_a_success_resets_it() {
    let s = Store::temporary().unwrap();
    let a = app(None);
    let ep = endpoint(&a.id, &[]);
    for (i, ok) in [(0, false), (1, false)] {
        let m = message(&a.id, 10 + i, None);
        s.publish(&m, b"{}", &[&ep], 20, || {}).await.unwrap();
        let t = s
            .claim_due(20, 100, 1, 100, |_| Claim::Take)
            .await
            .unwrap()
            .remove(0);
        s.record_attempt(&t, &attempt(&t, ok, 30 + i), Next::Done)
            .await
            .unwrap();
    }
    let clocks: Vec<_> = s
        .failing_since()
        .unwrap()
        .into_iter()
        .map(|(app, ep, c)| (app, ep, c.since_ms, c.last_ms))
        .collect();
    assert_eq!(clocks, vec![(a.id.clone(), ep.id.clone(), 30, 31)]);
    // A clock written before the last failure was kept: since then.
    let mut old = 30i64.to_le_bytes().to_vec();
    old.extend_from_slice(a.id.as_str().as_bytes());
    let clock = maintenance::FailingClock::decode(&old);
    assert_eq!((clock.since_ms, clock.last_ms), (30, 30));
    assert_eq!(
        maintenance::FailingClock::decode(&maintenance::FailingClock::encode(30, 31, &a.id)),
        s.failing_since().unwrap()[0].2
    );
    let m = message(&a.id, 50, None);
    s.publish(&m, b"{}", &[&ep], 60, || {}).await.unwrap();
    let t = s
        .claim_due(60, 100, 1, 100, |_| Claim::Take)
        .await
        .unwrap()
        .remove(0);
    s.record_attempt(&t, &attempt(&t, true, 70), Next::Done)
        .await
        .unwrap();
    assert!(s.failing_since().unwrap().is_empty());
}

#[test]
fn a_backup_restores_byte_for_byte_and_a_damaged_one_leaves_nothing() {
    let key = DataKey::generate();
    let src = tempfile::tempdir().unwrap();
    let s = Store::open(src.path(), 1 << 20, Keyring::new(key.clone())).unwrap();
    let a = app(Some("acme"));
    s.create_app(&a).unwrap().unwrap();
    let ep = endpoint(&a.id, &["order.created"]);
    s.create_endpoint(&ep).unwrap().unwrap();
    let mut file = Vec::new();
    let summary = s.backup(&mut file).unwrap();
    assert_eq!(summary.bytes, file.len() as u64);
    assert!(summary.entries >= 3);
    drop(s);

    // While it is read, no database is in place yet (an interrupted restore
    // leaves none that would open with part of the data), and what an
    // interrupted one left beside it is started afresh.
    struct Watched<'a> {
        rest: &'a [u8],
        db: std::path::PathBuf,
        db_seen: bool,
    }
    impl std::io::Read for Watched<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.db_seen |= self.db.exists();
            self.rest.read(buf)
        }
    }
    let dst = tempfile::tempdir().unwrap();
    std::fs::create_dir(dst.path().join("db.restoring")).unwrap();
    std::fs::write(dst.path().join("db.restoring/db"), b"left over").unwrap();
    let mut watched = Watched {
        rest: &file[..],
        db: dst.path().join("db"),
        db_seen: false,
    };
    let restored = Store::restore(dst.path(), &mut watched).unwrap();
    assert!(
        !watched.db_seen,
        "the database was in place before it was whole"
    );
    assert!(!dst.path().join("db.restoring").exists());
    assert_eq!(restored.entries, summary.entries);
    let r = Store::open(dst.path(), 1 << 20, Keyring::new(key)).unwrap();
    assert_eq!(r.find_app("acme").unwrap().unwrap().id, a.id);
    let back = r.get_endpoint(&a.id, &ep.id).unwrap().unwrap();
    assert_eq!(back.secret, ep.secret);
    // A second restore into the same place is refused.
    drop(r);
    assert!(matches!(
        Store::restore(dst.path(), &file[..]),
        Err(RestoreError::NotEmpty(_))
    ));

    // One flipped byte, a cut, or something else entirely: refused, nothing kept.
    let mut flipped = file.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    for (bad, what) in [
        (flipped, "flipped"),
        (file[..file.len() - 10].to_vec(), "cut"),
        (b"hello".to_vec(), "foreign"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        assert!(Store::restore(dir.path(), &bad[..]).is_err(), "{what}");
        assert!(!dir.path().join("db").exists(), "{what}");
        assert!(!dir.path().join("db.restoring").exists(), "{what}");
    }
}

#[test]
fn writes_wait_while_a_backup_is_taken() {
    let s = Store::temporary().unwrap();
    let gate = s.tree.close_gate();
    let (tx, rx) = std::sync::mpsc::channel();
    let writer = {
        let s = s.clone();
        std::thread::spawn(move || {
            s.create_app(&app(None)).unwrap().unwrap();
            tx.send(()).unwrap();
        })
    };
    assert!(
        rx.recv_timeout(std::time::Duration::from_millis(100))
            .is_err()
    );
    drop(gate);
    rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
    writer.join().unwrap();
}

#[tokio::test]
async fn counters_bumped_in_memory_survive_a_clean_close() {
    let key = DataKey::generate();
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), 1 << 20, Keyring::new(key.clone())).unwrap();
    let a = app(None);
    s.create_app(&a).unwrap().unwrap();
    for t in [10, 20] {
        s.publish(&message(&a.id, t, None), b"{}", &[], t, || {})
            .await
            .unwrap();
    }
    // Nobody read them, so they are still in memory: closing merges them.
    drop(s);
    let s = Store::open(dir.path(), 1 << 20, Keyring::new(key)).unwrap();
    assert_eq!(s.app_message_count(&a.id).unwrap(), 2);
    assert_eq!(s.cadences().unwrap()[0].2.count, 2);
}

#[tokio::test]
async fn a_store_made_without_compression_stays_so_and_a_new_one_compresses() {
    let key = DataKey::generate();
    // sled's record of how a database was made (text, then a checksum).
    let conf = |dir: &Path| {
        String::from_utf8_lossy(&std::fs::read(dir.join("db/conf")).unwrap()).into_owned()
    };
    // What a release before compression made: sled's log as it comes.
    let old = tempfile::tempdir().unwrap();
    let db = sled::Config::new()
        .path(old.path().join("db"))
        .open()
        .unwrap();
    drop(db);
    wait_until_closed(&old.path().join("db/db").canonicalize().unwrap());
    let s = Store::open(old.path(), 1 << 20, Keyring::new(key.clone())).unwrap();
    let a = app(None);
    s.create_app(&a).unwrap().unwrap();
    let m = message(&a.id, 10, None);
    s.publish(&m, br#"{"n":1}"#, &[], 10, || {}).await.unwrap();
    drop(s);
    let s = Store::open(old.path(), 1 << 20, Keyring::new(key.clone())).unwrap();
    assert_eq!(s.payload(&m.id).unwrap().unwrap(), br#"{"n":1}"#);
    drop(s);
    assert!(conf(old.path()).contains("use_compression: false"));

    let new = tempfile::tempdir().unwrap();
    let s = Store::open(new.path(), 1 << 20, Keyring::new(key.clone())).unwrap();
    s.create_app(&a).unwrap().unwrap();
    s.publish(&m, br#"{"n":2}"#, &[], 10, || {}).await.unwrap();
    drop(s);
    assert!(conf(new.path()).contains("use_compression: true"));
    let s = Store::open(new.path(), 1 << 20, Keyring::new(key)).unwrap();
    assert_eq!(s.payload(&m.id).unwrap().unwrap(), br#"{"n":2}"#);
}

/// Payloads larger than a log message may be (a quarter of a segment) go to
/// sled's blob files, compressed like the log; they read back whole after a
/// restart, whether they compress or not.
#[tokio::test]
async fn payloads_that_sled_keeps_as_blobs_read_back_after_a_restart() {
    use rand::Rng as _;
    let key = DataKey::generate();
    let dir = tempfile::tempdir().unwrap();
    let random: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(300 * 1024)
        .map(char::from)
        .collect();
    let payloads = [
        format!(r#"{{"data":"{random}"}}"#),
        format!(r#"{{"data":"{}"}}"#, "order created ".repeat(20 * 1024)),
    ];
    let s = Store::open(dir.path(), 1 << 20, Keyring::new(key.clone())).unwrap();
    let a = app(None);
    s.create_app(&a).unwrap().unwrap();
    let mut ids = vec![];
    for (i, payload) in payloads.iter().enumerate() {
        let m = message(&a.id, 10 + i as i64, None);
        s.publish(&m, payload.as_bytes(), &[], 10, || {})
            .await
            .unwrap();
        ids.push(m.id);
    }
    s.commit().await.unwrap();
    let blobs = std::fs::read_dir(dir.path().join("db/blobs"))
        .unwrap()
        .count();
    assert!(blobs > 0, "no payload went to a blob file");
    drop(s);

    let s = Store::open(dir.path(), 1 << 20, Keyring::new(key)).unwrap();
    for (id, payload) in ids.iter().zip(&payloads) {
        assert_eq!(s.payload(id).unwrap().unwrap(), payload.as_bytes());
    }
}

/// A data dir written while sled's log was compressed with zstd (webhookd
/// before LZ4, `tests/fixtures/zstd-log`: app `fixture` with one message)
/// opens, reads, takes new writes and opens again.
#[tokio::test]
async fn a_log_written_with_zstd_is_still_read_beside_new_writes() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/zstd-log");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    std::fs::create_dir_all(db.join("blobs")).unwrap();
    for name in ["conf", "snap.0000000000000464"] {
        std::fs::copy(fixture.join(name), db.join(name)).unwrap();
    }
    let log = zstd::decode_all(&std::fs::read(fixture.join("db.zst")).unwrap()[..]).unwrap();
    std::fs::write(db.join("db"), log).unwrap();

    let key = DataKey::generate();
    let old = MessageId::parse("msg_01M93XYS7A97YB5N0F8K0CJE6W").unwrap();
    let s = Store::open(dir.path(), 1 << 20, Keyring::new(key.clone())).unwrap();
    let app = s.find_app("fixture").unwrap().expect("the fixture's app");
    let m = s.get_message(&app.id, &old).unwrap().expect("its message");
    assert_eq!(m.event_id.as_deref(), Some("evt-1"));
    let new = message(&app.id, m.created_ms + 1, None);
    s.publish(&new, br#"{"written":"with lz4"}"#, &[], 10, || {})
        .await
        .unwrap();
    s.commit().await.unwrap();
    drop(s);

    let s = Store::open(dir.path(), 1 << 20, Keyring::new(key)).unwrap();
    assert_eq!(
        s.payload(&old).unwrap().unwrap(),
        br#"{"written":"with zstd"}"#
    );
    assert_eq!(
        s.payload(&new.id).unwrap().unwrap(),
        br#"{"written":"with lz4"}"#
    );
    assert_eq!(s.app_message_count(&app.id).unwrap(), 2);
}

#[tokio::test]
async fn closing_with_a_snapshot_leaves_one_that_covers_the_whole_log() {
    let key = DataKey::generate();
    let dir = tempfile::tempdir().unwrap();
    // sled's snapshots are `snap.<position in the log, hex>`.
    let newest_snapshot = || {
        std::fs::read_dir(dir.path().join("db"))
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                u64::from_str_radix(name.strip_prefix("snap.")?, 16).ok()
            })
            .max()
            .unwrap_or(0)
    };
    let s = Store::open(dir.path(), 1 << 20, Keyring::new(key.clone())).unwrap();
    let a = app(None);
    s.create_app(&a).unwrap().unwrap();
    let m = message(&a.id, 10, None);
    s.publish(&m, br#"{"n":1}"#, &[], 10, || {}).await.unwrap();
    s.commit().await.unwrap();
    let before = newest_snapshot();
    s.close_with_snapshot().unwrap();
    assert!(newest_snapshot() > before, "no newer snapshot");
    let s = Store::open(dir.path(), 1 << 20, Keyring::new(key)).unwrap();
    assert_eq!(s.payload(&m.id).unwrap().unwrap(), br#"{"n":1}"#);
    assert_eq!(s.app_message_count(&a.id).unwrap(), 1);
}

/// sled (vendor/sled, change 9) splits a leaf where the key that found it
/// full would go, so that keys written in order fill their leaves. Written
/// in order at several places of the tree at once (like the store's
/// namespaces), in reverse, at random and between keys already written, and
/// taken away from the front like a queue, every key reads back, in order,
/// before and after a reopen.
#[test]
fn sled_keeps_every_key_whatever_order_they_are_written_in() {
    use rand::{Rng as _, SeedableRng as _};
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .unwrap()
    };
    let db = open();
    let mut model = BTreeMap::<Vec<u8>, Vec<u8>>::new();
    let mut put = |db: &sled::Db, k: Vec<u8>, v: Vec<u8>| {
        db.insert(&k, v.clone()).unwrap();
        model.insert(k, v);
    };
    let key = |ns: u8, n: u64, tail: &[u8]| [&[ns][..], &n.to_be_bytes(), tail].concat();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for n in 0..3_000u64 {
        for ns in [b'G', b'M', b'Q'] {
            put(&db, key(ns, n, b""), n.to_le_bytes().to_vec());
        }
        put(&db, key(b'D', 3_000 - n, b""), vec![1; (n % 50) as usize]);
        put(&db, key(b'R', rng.random(), b""), vec![2; 8]);
    }
    for n in (0..3_000u64).step_by(3) {
        put(&db, key(b'G', n, b"x"), vec![3]);
    }
    for n in 0..2_500u64 {
        let k = key(b'Q', n, b"");
        db.remove(&k).unwrap();
        model.remove(&k);
    }
    let check = |db: &sled::Db| {
        let stored: Vec<(Vec<u8>, Vec<u8>)> = db
            .iter()
            .map(|kv| {
                let (k, v) = kv.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect();
        let expected: Vec<(Vec<u8>, Vec<u8>)> =
            model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(stored.len(), expected.len());
        assert!(stored == expected, "keys or values differ");
        for (k, v) in model.iter().step_by(7) {
            assert_eq!(db.get(k).unwrap().as_deref(), Some(&v[..]));
        }
        let from = key(b'M', 1_000, b"");
        let to = key(b'M', 1_100, b"");
        assert_eq!(db.range(from.clone()..to.clone()).count(), 100);
        assert_eq!(
            db.range(from..to).next_back().unwrap().unwrap().0,
            key(b'M', 1_099, b"")
        );
    };
    check(&db);
    db.flush().unwrap();
    drop(db);
    wait_until_closed(&dir.path().join("db/db").canonicalize().unwrap());
    check(&open());
}

/// sled serializes and compresses each log message in buffers its thread
/// keeps from one message to the next (vendor/sled, change 10): nothing of
/// one message may leak into the next. Values of every kind (empty, tiny,
/// compressible, random, pages of several KiB) written one after the other
/// read back the same after a reopen, which reads each page from the log.
#[test]
fn sled_reads_back_every_kind_of_value_from_its_compressed_log() {
    use rand::{Rng as _, SeedableRng as _};
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        compressed(sled::Config::new().path(dir.path().join("db")))
            .open()
            .unwrap()
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut values: Vec<Vec<u8>> = Vec::new();
    for len in [0, 1, 20, 100, 200, 230, 240, 250, 260, 300, 1024, 4096] {
        values.push(vec![b'a'; len]);
        values.push((0..len).map(|_| rng.random()).collect());
        values.push(format!("{{\"n\":{len},\"pad\":\"{}\"}}", "xy".repeat(len / 2)).into_bytes());
    }
    let db = open();
    for (i, v) in values.iter().enumerate() {
        db.insert((i as u32).to_be_bytes(), v.clone()).unwrap();
    }
    // One leaf rewritten many times over: its full pages and its changes.
    for round in 0..40u32 {
        db.insert(b"hot", round.to_le_bytes().repeat(round as usize).to_vec())
            .unwrap();
    }
    db.flush().unwrap();
    drop(db);
    wait_until_closed(&dir.path().join("db/db").canonicalize().unwrap());
    let db = open();
    for (i, v) in values.iter().enumerate() {
        assert_eq!(
            db.get((i as u32).to_be_bytes()).unwrap().as_deref(),
            Some(&v[..]),
            "value {i} of {} bytes",
            v.len()
        );
    }
    assert_eq!(
        db.get(b"hot").unwrap().as_deref(),
        Some(&39u32.to_le_bytes().repeat(39)[..])
    );
}

/// A store on disk with one endpoint of an app, its hand-off recovered (as
/// at a start) and open to a worker taking 8 at a time.
fn on_disk_with_handoff(dir: &Path, key: &DataKey) -> (Store, AppRecord, EndpointRecord) {
    let s = Store::open(dir, 1 << 20, Keyring::new(key.clone())).unwrap();
    let a = app(None);
    let ep = endpoint(&a.id, &[]);
    s.create_app(&a).unwrap().unwrap();
    s.create_endpoint(&ep).unwrap().unwrap();
    assert_eq!(s.recover_handed_over(crate::domain::now_ms()).unwrap(), 0);
    s.open_handoff(8);
    (s, a, ep)
}

/// As `on_disk_with_handoff`, in a new temporary directory (returned: the
/// store lives as long as it), with a second endpoint of the app.
fn on_disk_with_two_endpoints() -> (
    tempfile::TempDir,
    Store,
    AppRecord,
    EndpointRecord,
    EndpointRecord,
) {
    let dir = tempfile::tempdir().unwrap();
    let (s, a, ep) = on_disk_with_handoff(dir.path(), &DataKey::generate());
    let ep2 = endpoint(&a.id, &[]);
    s.create_endpoint(&ep2).unwrap().unwrap();
    (dir, s, a, ep, ep2)
}

/// A publish of an `eventId` still under way (here waiting for room in the
/// hand-off) holds it: a second publish of the same `eventId` meanwhile is
/// its duplicate, not a crash's leftover to take over (two messages).
#[tokio::test]
async fn an_event_id_is_held_by_its_publish_under_way() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), 1 << 20, Keyring::new(DataKey::generate())).unwrap();
    let a = app(None);
    let ep = endpoint(&a.id, &[]);
    s.create_app(&a).unwrap().unwrap();
    s.create_endpoint(&ep).unwrap().unwrap();
    let now = crate::domain::now_ms();
    assert_eq!(s.recover_handed_over(now).unwrap(), 0);
    s.open_handoff(1);
    // The one place in the hand-off is taken: the next publish waits for it.
    let full = message(&a.id, now, None);
    s.publish(&full, b"{}", &[&ep], now, || {}).await.unwrap();
    let first = message(&a.id, now, Some("evt-1"));
    let publishing = {
        let (s, first, ep) = (s.clone(), first.clone(), ep.clone());
        tokio::spawn(async move { s.publish(&first, b"{}", &[&ep], now, || {}).await })
    };
    // On this single-threaded runtime the spawned publish runs up to its
    // wait for room.
    tokio::task::yield_now().await;
    let again = message(&a.id, now + 1, Some("evt-1"));
    match s.publish(&again, b"{}", &[&ep], now, || {}).await.unwrap() {
        Published::DuplicateEventId(id) => assert_eq!(id, first.id),
        other => panic!("expected a duplicate, got {other:?}"),
    }
    assert!(matches!(
        publishing.await.unwrap().unwrap(),
        Published::Created { .. }
    ));
    assert_eq!(
        s.find_message(&a.id, "evt-1").unwrap().unwrap().id,
        first.id
    );
    assert!(s.get_message(&a.id, &again.id).unwrap().is_none());
}

/// Takes up to `n` deliveries handed over, records a successful attempt of
/// each (at `at`, one millisecond apart) and lets them go; returns the
/// attempts.
async fn record_handed_over(s: &Store, n: usize, at: i64) -> Vec<AttemptRecord> {
    let (taken, _) = s.take_handed_over(n, &mut |_| Claim::Take);
    let mut recorded = Vec::new();
    for (i, (t, _)) in taken.iter().enumerate() {
        let a = attempt(t, true, at + i as i64);
        s.record_attempt(t, &a, Next::Done).await.unwrap();
        s.handed_over_done(t);
        recorded.push(a);
    }
    recorded
}

/// The disk bound never drops a message with a delivery held in memory (it
/// has no status yet, so the message would look delivered), nor a
/// delivered one with a resend queued; the latter goes once the resend is
/// recorded.
#[tokio::test]
async fn the_disk_bound_leaves_messages_with_deliveries_under_way() {
    let dir = tempfile::tempdir().unwrap();
    let (s, a, ep) = on_disk_with_handoff(dir.path(), &DataKey::generate());
    let now = crate::domain::now_ms();
    // Before the hand-off's mark: queued, delivered, then resent.
    let old = message(&a.id, now - 60_000, None);
    s.publish(&old, b"{}", &[&ep], now - 60_000, || {})
        .await
        .unwrap();
    let t = claim_one(&s, now, now + 60_000).await;
    s.record_attempt(&t, &attempt(&t, true, now), Next::Done)
        .await
        .unwrap();
    s.release_lease(now + 60_000, &t.id).await.unwrap();
    s.queue_manual(&a.id, &old.id, &ep.id, now).await.unwrap();
    // From the mark on: handed over, not recorded yet.
    let held = message(&a.id, now + 1, None);
    s.publish(&held, b"{}", &[&ep], now, || {}).await.unwrap();
    assert!(s.dest(&held.id, &ep.id).unwrap().is_none(), "no status yet");

    let r = s.drop_oldest_delivered(u64::MAX).unwrap();
    assert_eq!(r.messages_deleted, 0);
    for m in [&old, &held] {
        assert!(s.get_message(&a.id, &m.id).unwrap().is_some());
    }

    let resend = claim_one(&s, now, now + 60_000).await;
    s.record_attempt(&resend, &attempt(&resend, true, now + 2), Next::Done)
        .await
        .unwrap();
    s.release_lease(now + 60_000, &resend.id).await.unwrap();
    let r = s.drop_oldest_delivered(u64::MAX).unwrap();
    assert_eq!(r.messages_deleted, 1);
    assert!(s.get_message(&a.id, &old.id).unwrap().is_none());
    assert!(s.get_message(&a.id, &held.id).unwrap().is_some());
}

/// A delivery handed over in memory has no queue entry; one the process
/// did not record before it ended (taken or not) is queued at the next
/// start, one it recorded is not.
#[tokio::test]
async fn deliveries_handed_over_and_not_recorded_are_queued_at_the_next_start() {
    let key = DataKey::generate();
    let dir = tempfile::tempdir().unwrap();
    let (s, a, ep) = on_disk_with_handoff(dir.path(), &key);
    let now = crate::domain::now_ms();
    let msgs: Vec<MessageRecord> = (0..3).map(|i| message(&a.id, now + i, None)).collect();
    for m in &msgs {
        s.publish(m, b"{}", &[&ep], now, || {}).await.unwrap();
    }
    assert_eq!(s.queue_depth(), (3, 0), "waiting for the worker");
    assert_eq!(s.next_due_ms().unwrap(), None, "with no queue entry");
    let next: Vec<MessageId> = s
        .next_deliveries(10)
        .unwrap()
        .into_iter()
        .map(|t| t.msg_id)
        .collect();
    let ids: Vec<MessageId> = msgs.iter().map(|m| m.id.clone()).collect();
    assert_eq!(next, ids, "the dashboard lists them as the next to go");
    let summary = s.queue_summary(10).unwrap();
    assert_eq!((summary.queued, summary.oldest_due_ms), (3, Some(now)));
    let (taken, _) = s.take_handed_over(2, &mut |_| Claim::Take);
    let taken: Vec<TaskRecord> = taken.into_iter().map(|(t, _)| t).collect();
    assert_eq!(taken.len(), 2);
    assert_eq!(s.queue_depth(), (1, 2));
    s.record_attempt(&taken[0], &attempt(&taken[0], true, now), Next::Done)
        .await
        .unwrap();
    s.handed_over_done(&taken[0]);
    assert_eq!(s.queue_depth(), (1, 1));
    s.commit().await.unwrap();
    drop(s);

    let s = Store::open(dir.path(), 1 << 20, Keyring::new(key.clone())).unwrap();
    assert_eq!(s.queue_depth(), (0, 0), "nothing held, nothing queued");
    assert_eq!(s.recover_handed_over(crate::domain::now_ms()).unwrap(), 2);
    let mut queued: Vec<MessageId> = s
        .claim_due(crate::domain::now_ms(), 1, 10, 100, |_| Claim::Take)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.msg_id)
        .collect();
    queued.sort();
    assert_eq!(queued, [msgs[1].id.clone(), msgs[2].id.clone()]);
    // The next start has nothing more to find.
    drop(s);
    let s = Store::open(dir.path(), 1 << 20, Keyring::new(key.clone())).unwrap();
    assert_eq!(s.recover_handed_over(crate::domain::now_ms()).unwrap(), 0);
}

/// Publishes `m` to `ep`, due `due`, and takes its queue entry away with no
/// attempt (claimed, the lease given up): a waiting status with nothing
/// queued, as a write not made yet, or cut by a crash, leaves it.
async fn publish_without_queue_entry(s: &Store, m: &MessageRecord, ep: &EndpointRecord, due: i64) {
    s.publish(m, b"{}", &[ep], due, || {}).await.unwrap();
    let t = claim_one(s, due, 1).await;
    s.release_lease(1, &t.id).await.unwrap();
    assert_eq!(s.queue_depth(), (0, 0));
}

/// A waiting status with nothing queued is taken for lost only once it is
/// overdue: until then it may be a publish or a resend whose queue entry the
/// writer thread has yet to write (and queued at once, a message due later
/// would go early, and twice).
#[tokio::test]
async fn reconcile_requeues_a_waiting_status_only_once_it_is_overdue() {
    let (s, a, ep) = store_with_endpoint();
    let m = message(&a.id, 10, None);
    let due = 100_000;
    // As in the moment before the writer writes its queue entry.
    publish_without_queue_entry(&s, &m, &ep, due).await;
    for now in [20, due, due + 60_000] {
        let r = s.reconcile(now, 60_000, None, 100, || {}).unwrap();
        assert_eq!(r.requeued, 0, "at {now}");
    }
    let r = s.reconcile(due + 60_001, 60_000, None, 100, || {}).unwrap();
    assert_eq!(r.requeued, 1);
    assert_eq!(s.next_due_ms().unwrap(), Some(due + 60_001));
}

/// A resend moved back in the queue (its endpoint throttled) leaves the
/// time of the scheduled retry still to come in the status: that time, not
/// the resend's, says a retry is due (and what a failed resend means).
#[tokio::test]
async fn a_resend_moved_back_leaves_the_retry_time_in_the_status() {
    let (s, ep, m, t) = one_attempted(false, Next::RetryAt(1_000)).await;
    s.queue_manual(&t.app_id, &m.id, &ep.id, 30).await.unwrap();
    let taken = s
        .claim_due(30, 600, 10, 100, |_| Claim::Defer(700))
        .await
        .unwrap();
    assert!(taken.is_empty());
    let next = |s: &Store| s.dest(&m.id, &ep.id).unwrap().unwrap().next_attempt_ms;
    assert_eq!(next(&s), Some(1_000));
    assert_eq!(s.bring_forward(&ep.id, &[700], 40).await.unwrap(), 1);
    assert_eq!(next(&s), Some(1_000));
}

/// A retry found lost is queued again at its place in the retry schedule:
/// resends made meanwhile do not count (they are not scheduled attempts),
/// or it would have fewer retries left than it should.
#[tokio::test]
async fn a_lost_retry_keeps_its_place_in_the_schedule() {
    let (s, ep, m, t) = one_attempted(false, Next::RetryAt(1_000)).await;
    for at in [30, 40] {
        s.queue_manual(&t.app_id, &m.id, &ep.id, at).await.unwrap();
        let resend = claim_one(&s, at, 600 + at).await;
        s.record_attempt(&resend, &attempt(&resend, false, at + 1), Next::Done)
            .await
            .unwrap();
        s.release_lease(600 + at, &resend.id).await.unwrap();
    }
    assert_eq!(s.dest(&m.id, &ep.id).unwrap().unwrap().attempts, 3);
    // The retry's queue entry lost.
    let queued: Vec<_> = s.tree.scan_prefix([keys::ns::QUEUE]).keys().collect();
    assert_eq!(queued.len(), 1);
    s.tree.remove(queued[0].as_ref().unwrap()).unwrap();
    let r = s.reconcile(61_001, 60_000, None, 100, || {}).unwrap();
    assert_eq!(r.requeued, 1);
    let again = claim_one(&s, 61_001, 70_000).await;
    assert_eq!(
        (again.attempt, again.trigger),
        (1, AttemptTrigger::Scheduled),
        "the first retry"
    );
}

/// At a start, a waiting status left with nothing queued (its queue entry
/// lost to a crash) is queued for when it was due, not at once: a message
/// with `deliverAt` keeps its time.
#[tokio::test]
async fn a_delivery_queued_again_at_start_keeps_its_due_time() {
    let key = DataKey::generate();
    let dir = tempfile::tempdir().unwrap();
    let (s, a, ep) = on_disk_with_handoff(dir.path(), &key);
    let now = crate::domain::now_ms();
    let due = now + 3_600_000;
    publish_without_queue_entry(&s, &message(&a.id, now, None), &ep, due).await;
    drop(s);
    let s = Store::open(dir.path(), 1 << 20, Keyring::new(key)).unwrap();
    assert_eq!(s.recover_handed_over(now).unwrap(), 1);
    assert_eq!(s.next_due_ms().unwrap(), Some(due));
}

/// Reconcile leaves a delivery held in memory alone, however long it is
/// held; one that could not be recorded is queued again at once.
#[tokio::test]
async fn reconcile_leaves_a_handed_over_delivery_alone_until_it_is_let_go() {
    let key = DataKey::generate();
    let dir = tempfile::tempdir().unwrap();
    let (s, a, ep) = on_disk_with_handoff(dir.path(), &key);
    let now = crate::domain::now_ms();
    s.publish(&message(&a.id, now, None), b"{}", &[&ep], now, || {})
        .await
        .unwrap();
    let later = now + 3_600_000;
    for _ in 0..2 {
        assert_eq!(
            s.reconcile(later, 60_000, None, 100, || {})
                .unwrap()
                .requeued,
            0
        );
    }
    let (taken, _) = s.take_handed_over(8, &mut |_| Claim::Take);
    for _ in 0..2 {
        assert_eq!(
            s.reconcile(later, 60_000, None, 100, || {})
                .unwrap()
                .requeued,
            0
        );
    }
    assert_eq!(s.queue_depth(), (0, 1));
    // Recording it failed: it is queued, with a status, and let go.
    s.requeue_handed_over(&taken[0].0, later).unwrap();
    assert_eq!(s.queue_depth(), (1, 0));
    assert_eq!(s.next_due_ms().unwrap(), Some(later));
    let d = s.dest(&taken[0].0.msg_id, &ep.id).unwrap().unwrap();
    assert_eq!(
        (d.status, d.next_attempt_ms),
        (MessageStatus::Pending, Some(later))
    );
    assert_eq!(
        s.reconcile(later, 60_000, None, 100, || {})
            .unwrap()
            .requeued,
        0
    );
}

/// A delivery handed over has no status record until its attempt is
/// recorded (one write fewer); the listings show it waiting meanwhile, and
/// it is recorded, dropped or deferred with a status of its own.
#[tokio::test]
async fn a_handed_over_delivery_is_listed_waiting_until_it_has_a_status() {
    let (_dir, s, a, ep, ep2) = on_disk_with_two_endpoints();
    let now = crate::domain::now_ms();
    let msgs: Vec<MessageRecord> = (0..3).map(|i| message(&a.id, now + i, None)).collect();
    for m in &msgs {
        s.publish(m, b"{}", &[&ep, &ep2], now, || {}).await.unwrap();
    }
    let statuses = |m: &MessageRecord, req: &PageReq| -> Vec<(EndpointId, MessageStatus)> {
        s.dests_of(m, req)
            .unwrap()
            .items
            .into_iter()
            .map(|d| (d.ep_id, d.status))
            .collect()
    };
    let mut eps = [ep.id.clone(), ep2.id.clone()];
    eps.sort();
    let ascending = PageReq {
        order: Order::Ascending,
        ..PageReq::first(10)
    };
    assert!(s.dest(&msgs[0].id, &ep.id).unwrap().is_none(), "no record");
    assert_eq!(
        statuses(&msgs[0], &ascending),
        [
            (eps[0].clone(), MessageStatus::Pending),
            (eps[1].clone(), MessageStatus::Pending)
        ]
    );
    // Paged like the records: one at a time, from a cursor.
    let first = PageReq {
        limit: 1,
        ..ascending.clone()
    };
    let page = s.dests_of(&msgs[0], &first).unwrap();
    assert!(!page.done);
    let rest = PageReq {
        cursor: Some(page.items[0].ep_id.to_string()),
        ..ascending.clone()
    };
    assert_eq!(
        statuses(&msgs[0], &rest),
        [(eps[1].clone(), MessageStatus::Pending)]
    );
    let by_ep = s
        .endpoint_messages(&ep.id, &PageReq::first(10), |_| true)
        .unwrap();
    assert_eq!(by_ep.items.len(), 3);
    assert!(
        by_ep
            .items
            .iter()
            .all(|d| d.status == MessageStatus::Pending)
    );

    // Recorded, dropped, deferred: each with a status record.
    let (taken, _) = s.take_handed_over(2, &mut |_| Claim::Take);
    let (to_record, to_drop) = (&taken[0].0, &taken[1].0);
    s.record_attempt(to_record, &attempt(to_record, true, now), Next::Done)
        .await
        .unwrap();
    s.handed_over_done(to_record);
    s.drop_task(to_drop, MessageStatus::Fail).await.unwrap();
    s.handed_over_done(to_drop);
    assert_eq!(
        s.dest(&msgs[0].id, &to_record.ep_id)
            .unwrap()
            .unwrap()
            .status,
        MessageStatus::Success
    );
    assert_eq!(
        s.dest(&msgs[0].id, &to_drop.ep_id).unwrap().unwrap().status,
        MessageStatus::Fail
    );
    assert_eq!(
        s.failed_deliveries(&PageReq::first(10))
            .unwrap()
            .items
            .len(),
        1
    );
    let (_, deferred) = s.take_handed_over(8, &mut |_| Claim::Defer(now + 5_000));
    assert_eq!(deferred.len(), 4);
    s.queue_deferred(deferred).await.unwrap();
    for m in &msgs[1..] {
        let d = s.dest(&m.id, &ep.id).unwrap().unwrap();
        assert_eq!(d.next_attempt_ms, Some(now + 5_000));
    }
    assert_eq!(s.queue_depth(), (4, 0));
}

/// A delivery due later is queued, not handed over; one handed over whose
/// endpoint is slow at its cap is queued at the time the worker defers it to.
#[tokio::test]
async fn deliveries_due_later_or_deferred_are_queued() {
    let key = DataKey::generate();
    let dir = tempfile::tempdir().unwrap();
    let (s, a, ep) = on_disk_with_handoff(dir.path(), &key);
    let now = crate::domain::now_ms();
    s.publish(
        &message(&a.id, now, None),
        b"{}",
        &[&ep],
        now + 60_000,
        || {},
    )
    .await
    .unwrap();
    assert_eq!(s.next_due_ms().unwrap(), Some(now + 60_000), "queued");
    s.publish(&message(&a.id, now + 1, None), b"{}", &[&ep], now, || {})
        .await
        .unwrap();
    assert_eq!(s.queue_depth(), (2, 0), "one queued, one handed over");
    let (taken, deferred) = s.take_handed_over(8, &mut |_| Claim::Defer(now + 5_000));
    assert!(taken.is_empty());
    assert_eq!(
        s.queue_depth(),
        (1, 1),
        "the deferred one held until queued"
    );
    assert_eq!(
        s.reconcile(now, 60_000, None, 100, || {}).unwrap().requeued,
        0
    );
    s.queue_deferred(deferred).await.unwrap();
    let due: Vec<i64> = s.queued().map(|q| q.unwrap().due_ms()).collect();
    assert_eq!(due, [now + 5_000, now + 60_000]);
    assert_eq!(s.queue_depth(), (2, 0));
    assert_eq!(
        s.reconcile(now, 60_000, None, 100, || {}).unwrap().requeued,
        0
    );
}

#[tokio::test]
async fn a_long_reconcile_sweep_calls_back_between_chunks() {
    use super::maintenance::RECONCILE_CHUNK;
    let s = Store::temporary().unwrap();
    let a = app(None);
    let eps: Vec<EndpointRecord> = (0..2 * RECONCILE_CHUNK + 1)
        .map(|_| endpoint(&a.id, &[]))
        .collect();
    for ep in &eps {
        s.create_endpoint(ep).unwrap().unwrap();
    }
    let targets: Vec<&EndpointRecord> = eps.iter().collect();
    s.publish(&message(&a.id, 10, None), b"{}", &targets, 20, || {})
        .await
        .unwrap();
    let mut rests = 0;
    let r = s
        .reconcile(30, 60_000, None, 10 * RECONCILE_CHUNK, || rests += 1)
        .unwrap();
    assert_eq!(r.statuses_checked, 2 * RECONCILE_CHUNK + 1);
    assert_eq!(rests, 2, "once after each full chunk");
    assert_eq!(r.requeued, 0, "every delivery is queued");
    assert!(r.cursor.is_none());
}

/// The first attempt of a delivery handed over is kept in its status, not
/// under a key of its own: it is listed, read, expunged and deleted like
/// the attempts under its message, survives every rewrite of the status,
/// and moves under its message when its endpoint is deleted.
#[tokio::test]
async fn a_first_attempt_kept_in_its_status_is_read_and_deleted_like_any_other() {
    let (_dir, s, a, ep, ep2) = on_disk_with_two_endpoints();
    let now = crate::domain::now_ms();
    let m = message(&a.id, now, None);
    s.publish(&m, b"{}", &[&ep, &ep2], now, || {})
        .await
        .unwrap();
    let firsts: BTreeMap<EndpointId, AttemptRecord> = record_handed_over(&s, 2, now)
        .await
        .into_iter()
        .map(|a| (a.ep_id.clone(), a))
        .collect();
    let under_msg = |s: &Store| s.tree.scan_prefix(keys::attempts_of_msg(&m.id)).count();
    assert_eq!(under_msg(&s), 0, "no key of their own");
    let ids =
        |p: Page<AttemptRecord>| -> Vec<AttemptId> { p.items.into_iter().map(|a| a.id).collect() };
    let ascending = PageReq {
        order: Order::Ascending,
        ..PageReq::first(10)
    };
    let of_msg = |s: &Store| ids(s.attempts_of_msg(&m.id, &ascending, |_| true).unwrap());
    let (a1, a2) = (&firsts[&ep.id], &firsts[&ep2.id]);
    let mut both = vec![a1.id.clone(), a2.id.clone()];
    both.sort();
    assert_eq!(of_msg(&s), both);
    let one = PageReq {
        limit: 1,
        ..ascending.clone()
    };
    let page = s.attempts_of_msg(&m.id, &one, |_| true).unwrap();
    assert!(!page.done, "paged like the records under the message");
    let rest = PageReq {
        cursor: Some(page.items[0].id.to_string()),
        ..ascending.clone()
    };
    assert_eq!(
        ids(s.attempts_of_msg(&m.id, &rest, |_| true).unwrap()),
        both[1..]
    );
    assert_eq!(s.get_attempt(&m.id, &a1.id).unwrap().unwrap().ep_id, ep.id);
    assert_eq!(
        ids(s.attempts_of_ep(&ep.id, &ascending, |_| true).unwrap()),
        std::slice::from_ref(&a1.id)
    );

    // A resend rewrites the status and adds an attempt under the message.
    s.queue_manual(&a.id, &m.id, &ep.id, now + 10)
        .await
        .unwrap();
    let t = claim_one(&s, now + 10, 100).await;
    let a3 = attempt(&t, true, now + 20);
    s.record_attempt(&t, &a3, Next::Done).await.unwrap();
    s.release_lease(100, &t.id).await.unwrap();
    assert_eq!(under_msg(&s), 1);
    let mut all = vec![a3.id.clone()];
    all.extend(both.iter().cloned());
    all.sort();
    assert_eq!(of_msg(&s), all);
    assert_eq!(
        ids(s.attempts_of_ep(&ep.id, &ascending, |_| true).unwrap()),
        [a1.id.clone(), a3.id.clone()]
    );
    assert_eq!(s.dest(&m.id, &ep.id).unwrap().unwrap().attempts, 2);

    // Expunged: every response body goes, the statuses stay.
    let freed = s.expunge_content(&m).unwrap();
    assert_eq!(freed, 3 * b"ok".len() as u64);
    let bodies: Vec<usize> = s
        .attempts_of_msg(&m.id, &ascending, |_| true)
        .unwrap()
        .items
        .iter()
        .map(|a| a.response_body.len())
        .collect();
    assert_eq!(bodies, [0, 0, 0]);
    assert_eq!(
        s.dest(&m.id, &ep.id).unwrap().unwrap().status,
        MessageStatus::Success
    );

    // An endpoint deleted: its first attempt stays listed under the message.
    s.delete_endpoint(&ep2).unwrap();
    assert!(s.dest(&m.id, &ep2.id).unwrap().is_none());
    assert_eq!(of_msg(&s), all);
    assert_eq!(under_msg(&s), 2);

    // Retention deletes them all, with their endpoint index.
    let r = s.delete_old_attempts(now + 100_000, 1_000).unwrap();
    assert_eq!(r.attempts_deleted, 3);
    assert!(of_msg(&s).is_empty());
    assert!(
        s.tree
            .scan_prefix(keys::attempts_of_ep(&ep.id))
            .next()
            .is_none()
    );
    let d = s.dest(&m.id, &ep.id).unwrap().unwrap();
    assert_eq!((d.status, d.attempts), (MessageStatus::Success, 2));

    // A message deleted takes the first attempts in its statuses with it.
    let m2 = message(&a.id, now + 1, None);
    s.publish(&m2, b"{}", &[&ep], now, || {}).await.unwrap();
    assert_eq!(record_handed_over(&s, 1, now + 30).await.len(), 1);
    assert_eq!(
        s.attempts_of_ep(&ep.id, &ascending, |_| true)
            .unwrap()
            .items
            .len(),
        1
    );
    let r = s.drop_oldest_delivered(u64::MAX).unwrap();
    assert_eq!(r.messages_deleted, 2);
    assert!(
        s.tree
            .scan_prefix(keys::attempts_of_ep(&ep.id))
            .next()
            .is_none()
    );
    assert!(s.tree.scan_prefix(keys::dests_of(&m2.id)).next().is_none());
}

/// Each pass of attempt retention starts about where the last one ended,
/// and still deletes every first attempt kept in a status as it ages.
#[tokio::test]
async fn attempt_retention_passes_delete_first_attempts_as_they_age() {
    let key = DataKey::generate();
    let dir = tempfile::tempdir().unwrap();
    let (s, a, ep) = on_disk_with_handoff(dir.path(), &key);
    let now = crate::domain::now_ms();
    for at in [now, now + 5_000] {
        let m = message(&a.id, at, None);
        s.publish(&m, b"{}", &[&ep], now, || {}).await.unwrap();
        assert_eq!(record_handed_over(&s, 1, at).await.len(), 1);
    }
    let left = |s: &Store| {
        s.attempts_of_ep(&ep.id, &PageReq::first(10), |_| true)
            .unwrap()
            .items
            .len()
    };
    assert_eq!(left(&s), 2);
    assert_eq!(
        s.delete_old_attempts(now + 2_000, 1_000)
            .unwrap()
            .attempts_deleted,
        1
    );
    assert_eq!(left(&s), 1);
    assert_eq!(
        s.delete_old_attempts(now + 3_000, 1_000)
            .unwrap()
            .attempts_deleted,
        0
    );
    assert_eq!(
        s.delete_old_attempts(now + 10_000, 1_000)
            .unwrap()
            .attempts_deleted,
        1
    );
    assert_eq!(left(&s), 0);
}

/// A resend queued while the first attempt of a delivery handed over waits
/// to be recorded is applied after it, on the same thread: the status keeps
/// the attempt and shows the resend coming (written beside the writer, the
/// resend's status could be overwritten by the attempt's, or the other way
/// round, losing the attempt kept in it).
#[tokio::test]
async fn a_resend_and_an_attempt_change_the_status_in_turn() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    let dir = tempfile::tempdir().unwrap();
    let (s, a, ep) = on_disk_with_handoff(dir.path(), &DataKey::generate());
    let now = crate::domain::now_ms();
    let m = message(&a.id, now, None);
    s.publish(&m, b"{}", &[&ep], now, || {}).await.unwrap();
    let (mut taken, _) = s.take_handed_over(1, &mut |_| Claim::Take);
    let t = taken.remove(0).0;

    // The writer thread is held by a job until the attempt and the resend
    // are both handed to it.
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
    let held = s.writer.write(move |_| {
        started_tx.send(()).unwrap();
        gate_rx.recv().unwrap();
        Ok(())
    });
    tokio::pin!(held);
    assert!(poll_once(held.as_mut()).is_pending());
    started_rx.recv().unwrap();
    let first = attempt(&t, true, now + 1);
    let recorded = s.record_attempt(&t, &first, Next::Done);
    tokio::pin!(recorded);
    assert!(poll_once(recorded.as_mut()).is_pending());
    let resent = s.queue_manual(&a.id, &m.id, &ep.id, now + 2);
    tokio::pin!(resent);
    assert!(
        poll_once(resent.as_mut()).is_pending(),
        "waits for the writer"
    );
    gate_tx.send(()).unwrap();
    held.await.unwrap();
    recorded.await.unwrap();
    resent.await.unwrap();
    s.handed_over_done(&t);

    let d = s.dest(&m.id, &ep.id).unwrap().unwrap();
    assert_eq!(
        (d.attempts, d.status, d.next_attempt_ms),
        (1, MessageStatus::Success, Some(now + 2))
    );
    let listed = s
        .attempts_of_msg(&m.id, &PageReq::first(10), |_| true)
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].id, first.id);
    let queued = s
        .claim_due(now + 2, now + 1_000, 10, 100, |_| Claim::Take)
        .await
        .unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].trigger, AttemptTrigger::Manual);
}

/// An attempt under way as its message is expunged records no response
/// body: the expunge did not find it to clear.
#[tokio::test]
async fn an_attempt_under_way_as_its_message_is_expunged_keeps_no_body() {
    let (s, ep, m, t) = one_claimed(10, 500).await;
    s.expunge_content(&m).unwrap();
    let a = attempt(&t, false, 20);
    assert!(!a.response_body.is_empty());
    s.record_attempt(&t, &a, Next::Done).await.unwrap();
    let kept = s.get_attempt(&m.id, &a.id).unwrap().unwrap();
    assert!(kept.response_body.is_empty());
    assert_eq!(kept.response_status_code, a.response_status_code);
    let listed = s
        .attempts_of_ep(&ep.id, &PageReq::first(10), |_| true)
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert!(listed.items[0].response_body.is_empty());
}

/// A resend that fails while a scheduled retry is still to come leaves the
/// delivery retrying, due at that retry (not failed, no dead letter); the
/// retry then decides.
#[tokio::test]
async fn a_failed_resend_leaves_a_retry_still_to_come_in_charge() {
    let (s, ep, m, resend) = a_resend_claimed(false, Next::RetryAt(1_000)).await;
    assert_eq!(resend.trigger, AttemptTrigger::Manual);
    let d = s.dest(&m.id, &ep.id).unwrap().unwrap();
    assert_eq!(d.next_attempt_ms, Some(1_000), "the retry's time is kept");
    s.record_attempt(&resend, &attempt(&resend, false, 40), Next::Done)
        .await
        .unwrap();
    s.release_lease(600, &resend.id).await.unwrap();
    let d = s.dest(&m.id, &ep.id).unwrap().unwrap();
    assert_eq!(
        (d.status, d.next_attempt_ms),
        (MessageStatus::Sending, Some(1_000))
    );
    assert!(!s.tree.contains_key(keys::failed(&m.id, &ep.id)).unwrap());

    let retry = claim_one(&s, 1_000, 2_000).await;
    s.record_attempt(&retry, &attempt(&retry, false, 1_010), Next::Done)
        .await
        .unwrap();
    let d = s.dest(&m.id, &ep.id).unwrap().unwrap();
    assert_eq!((d.status, d.next_attempt_ms), (MessageStatus::Fail, None));
    assert!(s.tree.contains_key(keys::failed(&m.id, &ep.id)).unwrap());
}

/// A queue entry that cannot be read does not stop every claim after it:
/// it is removed, and the deliveries behind it are claimed.
#[tokio::test]
async fn an_unreadable_queue_entry_is_removed_not_claimed_forever() {
    let (s, a, ep) = store_with_endpoint();
    let m = message(&a.id, 10, None);
    s.publish(&m, b"{}", &[&ep], 10, || {}).await.unwrap();
    let bad = keys::queue(5, &TaskId::new(5));
    s.tree.insert(bad.clone(), &b"not a task"[..]).unwrap();
    let taken = s
        .claim_due(20, 100, 10, 100, |_| Claim::Take)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].msg_id, m.id);
    assert!(!s.tree.contains_key(bad).unwrap());
}

/// A message attempted (at 20, with `ok` and `next`), then resent: the
/// resend queued at 30 and claimed under a lease until 600.
async fn a_resend_claimed(
    ok: bool,
    next: Next,
) -> (Store, EndpointRecord, MessageRecord, TaskRecord) {
    let (s, ep, m, t) = one_attempted(ok, next).await;
    s.queue_manual(&t.app_id, &m.id, &ep.id, 30).await.unwrap();
    let resend = claim_one(&s, 30, 600).await;
    (s, ep, m, resend)
}

/// A resend of a delivered message dropped at its claim (its endpoint
/// disabled or its message expunged since the resend was asked for) leaves
/// the delivery delivered: no failure, no dead letter, nothing due.
#[tokio::test]
async fn a_resend_dropped_leaves_a_delivered_message_delivered() {
    let (s, ep, m, resend) = a_resend_claimed(true, Next::Done).await;
    s.drop_task(&resend, MessageStatus::Fail).await.unwrap();
    s.release_lease(600, &resend.id).await.unwrap();
    let d = s.dest(&m.id, &ep.id).unwrap().unwrap();
    assert_eq!(
        (d.status, d.next_attempt_ms),
        (MessageStatus::Success, None)
    );
    assert!(!s.tree.contains_key(keys::failed(&m.id, &ep.id)).unwrap());
    assert_eq!(s.queue_depth(), (0, 0));
}

/// A resend of a delivered message, asked for as retention passes over
/// it (queued after the disk bound read the queue), keeps the message
/// whole while it is under way: payload retention does not take its
/// payload (nor, then, the body its attempt records), and the disk bound
/// does not delete it. Once it is done, both take it as before.
#[tokio::test]
async fn retention_leaves_a_message_whose_resend_is_under_way() {
    let (s, _ep, m, resend) = a_resend_claimed(true, Next::Done).await;
    // As if the disk bound had read the queue before the resend was queued.
    s.tree.remove(keys::claim_lease(600, &resend.id)).unwrap();
    assert_eq!(s.queue_depth(), (0, 0));

    let later = 1_000_000;
    let r = s.expire_payloads(later, 1_000, |_| 1_000).unwrap();
    assert_eq!(r.payloads_expunged, 0);
    // And had the pass read the status before the resend was queued:
    assert!(s.clear_content(&m, true).unwrap().is_none());
    assert_eq!(
        s.drop_oldest_delivered(u64::MAX).unwrap().messages_deleted,
        0
    );
    assert!(s.payload(&m.id).unwrap().is_some());
    let a = attempt(&resend, true, 40);
    s.record_attempt(&resend, &a, Next::Done).await.unwrap();
    assert_eq!(
        s.get_attempt(&m.id, &a.id).unwrap().unwrap().response_body,
        b"ok"
    );

    let r = s.expire_payloads(later, 1_000, |_| 1_000).unwrap();
    assert_eq!(r.payloads_expunged, 1);
    assert!(s.payload(&m.id).unwrap().is_none());
    assert!(
        s.get_attempt(&m.id, &a.id)
            .unwrap()
            .unwrap()
            .response_body
            .is_empty()
    );
    assert_eq!(
        s.drop_oldest_delivered(u64::MAX).unwrap().messages_deleted,
        1
    );
    assert!(s.find_message(&m.app_id, m.id.as_str()).unwrap().is_none());
}

/// The disk bound stops at about the bytes it was asked to free, and
/// takes away an all-messages entry left without its message (a deletion
/// cut short by a crash), which nothing else would find.
#[tokio::test]
async fn the_disk_bound_frees_what_it_is_asked_and_what_a_crash_left() {
    let (s, a, ep) = store_with_endpoint();
    let msgs: Vec<MessageRecord> = (0..3).map(|i| message(&a.id, 10 + i, None)).collect();
    for m in &msgs {
        s.publish(m, b"{\"n\":1}", &[&ep], 20, || {}).await.unwrap();
    }
    for t in s
        .claim_due(20, 100, 10, 100, |_| Claim::Take)
        .await
        .unwrap()
    {
        s.record_attempt(&t, &attempt(&t, true, 30), Next::Done)
            .await
            .unwrap();
        s.release_lease(100, &t.id).await.unwrap();
    }
    let r = s.drop_oldest_delivered(1).unwrap();
    assert_eq!(r.messages_deleted, 1);
    assert!(
        s.find_message(&a.id, msgs[0].id.as_str())
            .unwrap()
            .is_none()
    );
    assert!(
        s.find_message(&a.id, msgs[1].id.as_str())
            .unwrap()
            .is_some()
    );

    s.tree.remove(keys::message(&a.id, &msgs[1].id)).unwrap();
    let r = s.drop_oldest_delivered(1).unwrap();
    assert_eq!(r.messages_deleted, 0);
    assert!(r.bytes_freed > 0);
    assert!(
        !s.tree
            .contains_key(keys::all_messages(&msgs[1].id))
            .unwrap()
    );
    assert!(
        s.find_message(&a.id, msgs[2].id.as_str())
            .unwrap()
            .is_some()
    );
}

/// An expunge of a message the disk bound deleted after the expunge read
/// it writes nothing back: the message stays deleted.
#[tokio::test]
async fn an_expunge_writes_nothing_back_for_a_message_deleted_meanwhile() {
    let (s, _ep, m, _) = one_attempted(true, Next::Done).await;
    assert_eq!(
        s.drop_oldest_delivered(u64::MAX).unwrap().messages_deleted,
        1
    );
    assert_eq!(s.expunge_content(&m).unwrap(), 0);
    assert!(s.find_message(&m.app_id, m.id.as_str()).unwrap().is_none());
    for prefix in [
        keys::message(&m.app_id, &m.id),
        keys::all_messages(&m.id),
        keys::dests_of(&m.id),
        keys::attempts_of_msg(&m.id),
    ] {
        assert!(s.tree.scan_prefix(prefix).next().is_none());
    }
}

/// An attempt recorded after its endpoint was deleted (under way as the
/// deletion ran) writes no status back and queues no retry: nothing is
/// left waiting for an endpoint that is no more, and the attempt stays
/// listed under its message, as the deletion leaves first attempts.
#[tokio::test]
async fn an_attempt_to_an_endpoint_deleted_meanwhile_writes_no_status_back() {
    let (s, ep, m, t) = one_claimed(10, 500).await;
    s.delete_endpoint(&ep).unwrap();
    let a = attempt(&t, false, 20);
    let recorded = s.record_attempt(&t, &a, Next::RetryAt(30)).await.unwrap();
    assert!(recorded.is_none());
    s.release_lease(500, &t.id).await.unwrap();
    assert!(s.dest(&m.id, &ep.id).unwrap().is_none());
    for gone in [
        keys::endpoint_msg(&ep.id, &m.id),
        keys::attempt_by_ep(&ep.id, &a.id),
        keys::failed(&m.id, &ep.id),
    ] {
        assert!(!s.tree.contains_key(gone).unwrap());
    }
    assert_eq!(s.queue_depth(), (0, 0), "no retry");
    assert_eq!(attempt_ids_of_msg(&s, &m.id), std::slice::from_ref(&a.id));
    let r = s.reconcile(100_000, 60_000, None, 100, || {}).unwrap();
    assert_eq!((r.requeued, r.forgotten), (0, 0));
}

/// A retry queued before its endpoint was deleted, claimed after, finds the
/// endpoint gone and is dropped with what is left of its delivery.
#[tokio::test]
async fn a_retry_to_an_endpoint_deleted_since_is_forgotten() {
    let (s, ep, m, t) = one_claimed(10, 500).await;
    let a = attempt(&t, false, 20);
    s.record_attempt(&t, &a, Next::RetryAt(30)).await.unwrap();
    s.release_lease(500, &t.id).await.unwrap();
    s.delete_endpoint(&ep).unwrap();
    let retry = claim_one(&s, 30, 600).await;
    s.forget_delivery(&retry).await.unwrap();
    s.release_lease(600, &retry.id).await.unwrap();
    assert!(s.dest(&m.id, &ep.id).unwrap().is_none());
    assert_eq!(s.queue_depth(), (0, 0));
    assert_eq!(attempt_ids_of_msg(&s, &m.id), std::slice::from_ref(&a.id));
}

/// A status left for an endpoint that is gone (an attempt recorded as its
/// endpoint was deleted wrote it back, before `deleting_endpoints`): with
/// nothing queued to take it away, reconcile does, with its dead-letter
/// entry, and the attempt stays listed under the message.
#[tokio::test]
async fn reconcile_forgets_a_status_left_for_a_deleted_endpoint() {
    let (s, ep, m, t) = one_claimed(10, 500).await;
    let a = attempt(&t, false, 20);
    s.record_attempt(&t, &a, Next::RetryAt(30)).await.unwrap();
    s.release_lease(500, &t.id).await.unwrap();
    let retry = claim_one(&s, 30, 600).await;
    let b = attempt(&retry, false, 40);
    s.record_attempt(&retry, &b, Next::Done).await.unwrap();
    s.release_lease(600, &retry.id).await.unwrap();
    // What such a store holds: the endpoint gone, its failed status not.
    s.tree.remove(keys::endpoint(&ep.app_id, &ep.id)).unwrap();
    s.records_changed();
    assert!(s.tree.contains_key(keys::failed(&m.id, &ep.id)).unwrap());

    let r = s.reconcile(100_000, 60_000, None, 100, || {}).unwrap();
    assert_eq!((r.forgotten, r.requeued), (1, 0));
    assert!(s.dest(&m.id, &ep.id).unwrap().is_none());
    for gone in [
        keys::endpoint_msg(&ep.id, &m.id),
        keys::failed(&m.id, &ep.id),
    ] {
        assert!(!s.tree.contains_key(gone).unwrap());
    }
    assert!(
        s.failed_deliveries(&PageReq::first(10))
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        s.tree
            .scan_prefix(keys::attempts_of_ep(&ep.id))
            .next()
            .is_none(),
        "the endpoint's attempt index goes with it, as a deletion takes it"
    );
    assert_eq!(attempt_ids_of_msg(&s, &m.id), [b.id.clone(), a.id.clone()]);
    let again = s.reconcile(100_000, 60_000, None, 100, || {}).unwrap();
    assert_eq!((again.forgotten, again.dead_letter_fixed), (0, 0));
}

/// A change to an endpoint read before the endpoint was deleted (a 410
/// that disables it, an edit, the health job) writes nothing: the endpoint
/// stays deleted, and the uid the change named stays free.
#[test]
fn a_change_read_before_a_deletion_does_not_bring_the_endpoint_back() {
    let (s, a, ep) = store_with_endpoint();
    let read = s.get_endpoint(&a.id, &ep.id).unwrap().unwrap();
    s.delete_endpoint(&read).unwrap();
    let disabled = EndpointRecord {
        disabled: true,
        ..read.clone()
    };
    assert!(!s.put_endpoint(&disabled).unwrap());
    let renamed = EndpointRecord {
        uid: Some("orders".into()),
        ..read.clone()
    };
    assert!(!s.update_endpoint(&read, &renamed).unwrap().unwrap());
    assert!(s.get_endpoint(&a.id, &ep.id).unwrap().is_none());
    assert!(s.find_endpoint(&a.id, "orders").unwrap().is_none());
    let other = EndpointRecord {
        id: EndpointId::new(3),
        uid: Some("orders".into()),
        ..read
    };
    s.create_endpoint(&other).unwrap().unwrap();
}

/// The same for an application: a change read before its deletion writes
/// nothing, and the uid the change named stays free.
#[test]
fn a_change_read_before_a_deletion_does_not_bring_the_app_back() {
    let s = Store::temporary().unwrap();
    let a = app(None);
    s.create_app(&a).unwrap().unwrap();
    let read = s.find_app(a.id.as_str()).unwrap().unwrap();
    s.delete_app(&read).unwrap();
    let renamed = AppRecord {
        uid: Some("shop".into()),
        ..read.clone()
    };
    assert!(!s.update_app(&read, &renamed).unwrap().unwrap());
    assert!(s.find_app(a.id.as_str()).unwrap().is_none());
    assert!(s.find_app("shop").unwrap().is_none());
    let other = AppRecord {
        id: AppId::new(5),
        uid: Some("shop".into()),
        ..read
    };
    s.create_app(&other).unwrap().unwrap();
    let kept = AppRecord {
        name: "renamed".into(),
        ..other.clone()
    };
    assert!(s.update_app(&other, &kept).unwrap().unwrap());
    assert_eq!(s.find_app("shop").unwrap().unwrap().name, "renamed");
}

/// A uid entry left naming a record that is gone, or that carries another
/// uid, is no claim: a deletion that read an endpoint before a rename
/// leaves the new uid's entry behind; finding by it finds nothing and a new
/// endpoint may take it. A uid its record still carries stays taken.
#[test]
fn a_uid_entry_left_by_a_deletion_racing_a_rename_is_taken_over() {
    let (s, a, ep) = store_with_endpoint();
    let named = EndpointRecord {
        uid: Some("orders".into()),
        ..ep.clone()
    };
    assert!(s.update_endpoint(&ep, &named).unwrap().unwrap());
    let read_by_delete = s.find_endpoint(&a.id, "orders").unwrap().unwrap();
    let renamed = EndpointRecord {
        uid: Some("billing".into()),
        ..named.clone()
    };
    assert!(s.update_endpoint(&named, &renamed).unwrap().unwrap());
    s.delete_endpoint(&read_by_delete).unwrap();
    assert!(s.find_endpoint(&a.id, "billing").unwrap().is_none());

    let other = EndpointRecord {
        id: EndpointId::new(3),
        uid: Some("billing".into()),
        ..renamed
    };
    s.create_endpoint(&other).unwrap().unwrap();
    assert_eq!(
        s.find_endpoint(&a.id, "billing").unwrap().unwrap().id,
        other.id
    );
    let third = EndpointRecord {
        id: EndpointId::new(4),
        ..other.clone()
    };
    assert_eq!(
        s.create_endpoint(&third).unwrap(),
        Err(Taken(other.id.to_string()))
    );

    // An app's entry left by a crash between the two writes of a store
    // written before: the uid is free.
    s.tree
        .insert(keys::app_uid("ghost"), AppId::new(9).as_str().as_bytes())
        .unwrap();
    assert!(s.find_app("ghost").unwrap().is_none());
    let ghost = app(Some("ghost"));
    s.create_app(&ghost).unwrap().unwrap();
    assert_eq!(s.find_app("ghost").unwrap().unwrap().id, ghost.id);
}

#[test]
fn a_tree_grown_by_many_splits_reads_back_whole_after_restarts() {
    // Enough keys that index nodes split too (above 64 children, vendored
    // sled, change 15), with removals among them: after a restart every
    // node is rebuilt from what its log holds.
    let key = DataKey::generate();
    let dir = tempfile::tempdir().unwrap();
    let mut expected = BTreeMap::new();
    // Written through the raw tree under a tag that no record uses
    // (`keys::ns`), so nothing the store reads at open sees these keys.
    let tag = b'~';
    let n: u32 = 12_000;
    for round in 0..2u32 {
        let s = Store::open(dir.path(), 1 << 20, Keyring::new(key.clone())).unwrap();
        let mut write = |k: Vec<u8>, v: Option<Vec<u8>>| match v {
            Some(v) => {
                s.tree.insert(&k, v.as_slice()).unwrap();
                expected.insert(k, v);
            }
            None => {
                s.tree.remove(&k).unwrap();
                expected.remove(&k);
            }
        };
        for i in 0..n {
            // In time order, as most keys are written, and scattered.
            let seq = round * n + i;
            write(
                [&[tag, 0][..], &seq.to_be_bytes()].concat(),
                Some(vec![b'v'; 40 + (seq % 60) as usize]),
            );
            let scattered = (i * 7_919) % n;
            write(
                [
                    &[tag, 1][..],
                    &scattered.to_be_bytes(),
                    &round.to_be_bytes(),
                ]
                .concat(),
                Some(seq.to_be_bytes().to_vec()),
            );
            if i % 3 == 0 {
                write([&[tag, 0][..], &(seq / 2).to_be_bytes()].concat(), None);
            }
        }
        drop(s);
        let s = Store::open(dir.path(), 1 << 20, Keyring::new(key.clone())).unwrap();
        let read: BTreeMap<Vec<u8>, Vec<u8>> = s
            .tree
            .scan_prefix([tag])
            .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
            .collect();
        assert_eq!(read.len(), expected.len(), "round {round}");
        assert!(read == expected, "round {round}: the keys read back differ");
        let probe = [&[tag, 1][..], &(n / 3).to_be_bytes(), &round.to_be_bytes()].concat();
        assert_eq!(
            s.tree.get(&probe).unwrap().map(|v| v.to_vec()),
            expected.get(&probe).cloned()
        );
    }
}

/// A mark of a deleted endpoint or an expunged message is kept as long as an
/// attempt begun before it may be under way, then forgotten.
#[test]
fn withdrawn_marks_are_forgotten_once_no_attempt_can_need_them() {
    let mut w = super::Withdrawn::default();
    let at = std::time::Instant::now();
    let ep = EndpointId::new(1);
    w.endpoints.insert(ep.clone(), at);
    w.prune(at + super::Withdrawn::KEPT - std::time::Duration::from_secs(1));
    assert!(w.endpoints.contains_key(&ep));
    w.prune(at + super::Withdrawn::KEPT);
    assert!(w.endpoints.is_empty());
}
