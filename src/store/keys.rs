//! Byte encodings of every key in the database.
//!
//! Everything lives in one sled tree, so that writes that belong together
//! (a publish: message, payload, one status row per endpoint and one queue
//! entry) need no multi-tree transaction. A key is a one-byte namespace tag
//! followed by fixed-width parts; IDs have a fixed length per type and
//! timestamps are big-endian, so byte order is the order we scan in.

use crate::domain::{AppId, AttemptId, EndpointId, MessageId, TaskId, TokenId};

/// Namespace tags. Each one owns the keys that start with it.
pub mod ns {
    /// app_id → AppRecord
    pub const APP: u8 = b'A';
    /// uid → app_id
    pub const APP_UID: u8 = b'a';
    /// event type name → EventTypeRecord
    pub const EVENT_TYPE: u8 = b'T';
    /// app_id ep_id → EndpointRecord
    pub const ENDPOINT: u8 = b'E';
    /// app_id uid → ep_id
    pub const ENDPOINT_UID: u8 = b'e';
    /// app_id msg_id → MessageRecord
    pub const MESSAGE: u8 = b'M';
    /// msg_id → raw payload bytes, in stores written before payloads moved
    /// to `ALL_MESSAGES`: read, expunged and deleted, never written.
    pub const PAYLOAD: u8 = b'P';
    /// app_id eventId → msg_id
    pub const EVENT_ID: u8 = b'I';
    /// msg_id ep_id → DestRecord (delivery status of a message to one
    /// endpoint), then, for most, the AttemptRecord of its first attempt
    pub const DEST: u8 = b'D';
    /// ep_id msg_id → () (the messages sent to an endpoint)
    pub const ENDPOINT_MSG: u8 = b'd';
    /// att_id → AttemptRecord, in stores written before attempts were kept
    /// under their message: read and deleted, never written.
    pub const ATTEMPT: u8 = b'R';
    /// msg_id att_id → AttemptRecord (empty: the record is under `ATTEMPT`);
    /// the first attempt of a delivery handed over is in its `DEST` value
    pub const ATTEMPT_BY_MSG: u8 = b'r';
    /// ep_id att_id → msg_id (empty: the record is under `ATTEMPT`)
    pub const ATTEMPT_BY_EP: u8 = b's';
    /// due_ms task_id → TaskRecord, or FanRecord after a 0 byte (the delivery queue)
    pub const QUEUE: u8 = b'Q';
    /// lease_expiry_ms task_id → TaskRecord (one task claimed by a worker), in
    /// stores written before claims were leased together: released at start.
    pub const LEASE: u8 = b'L';
    /// lease_expiry_ms first_task_id → Vec<TaskRecord> (the tasks of one claim)
    pub const CLAIM_LEASE: u8 = b'l';
    /// sha256(scope) → IdempotencyRecord
    pub const IDEMPOTENCY: u8 = b'K';
    /// msg_id → app_id, then the raw payload until it is expunged (every
    /// message, across applications, by time)
    pub const ALL_MESSAGES: u8 = b'G';
    /// msg_id ep_id → () (deliveries whose status is Fail: the dead letters)
    pub const FAILED: u8 = b'F';
    /// minute → Counts (attempts per minute, all endpoints)
    pub const MINUTE_STATS: u8 = b'S';
    /// ep_id hour → Counts (attempts per hour of one endpoint)
    pub const ENDPOINT_HOUR_STATS: u8 = b'H';
    /// app_id → Counts (messages published to the app, in `success`)
    pub const APP_MESSAGE_COUNT: u8 = b'C';
    /// job name → JobRecord
    pub const JOB: u8 = b'j';
    /// app_id event_type → Cadence (merged on every publish)
    pub const CADENCE: u8 = b'W';
    /// app_id event_type → SilenceAlert
    pub const SILENCE: u8 = b'w';
    /// ep_id → since_ms (8 bytes LE) app_id: every attempt since then failed
    pub const FAILING_SINCE: u8 = b'h';
    /// (one key) → msg_id: no message before it has a delivery held only in
    /// memory (see `store/handoff.rs`)
    pub const HANDOFF_MARK: u8 = b'm';
    /// token_id → TokenRecord
    pub const TOKEN: u8 = b'z';
    /// sha256(token) → token_id
    pub const TOKEN_HASH: u8 = b'y';
    /// expiry_ms msg_id → app_id: when the payload of a message with a
    /// retention of its own (`payloadRetentionPeriod`) is due to go
    pub const PAYLOAD_EXPIRY: u8 = b'X';
}

fn key(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut k = Vec::with_capacity(len);
    k.push(tag);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

pub fn app(id: &AppId) -> Vec<u8> {
    key(ns::APP, &[id.as_str().as_bytes()])
}
pub fn app_uid(uid: &str) -> Vec<u8> {
    key(ns::APP_UID, &[uid.as_bytes()])
}
pub fn event_type(name: &str) -> Vec<u8> {
    key(ns::EVENT_TYPE, &[name.as_bytes()])
}
pub fn endpoint(app: &AppId, ep: &EndpointId) -> Vec<u8> {
    key(
        ns::ENDPOINT,
        &[app.as_str().as_bytes(), ep.as_str().as_bytes()],
    )
}
pub fn endpoints_of(app: &AppId) -> Vec<u8> {
    key(ns::ENDPOINT, &[app.as_str().as_bytes()])
}
pub fn endpoint_uid(app: &AppId, uid: &str) -> Vec<u8> {
    key(ns::ENDPOINT_UID, &[app.as_str().as_bytes(), uid.as_bytes()])
}
pub fn message(app: &AppId, msg: &MessageId) -> Vec<u8> {
    key(
        ns::MESSAGE,
        &[app.as_str().as_bytes(), msg.as_str().as_bytes()],
    )
}
pub fn messages_of(app: &AppId) -> Vec<u8> {
    key(ns::MESSAGE, &[app.as_str().as_bytes()])
}
pub fn payload(msg: &MessageId) -> Vec<u8> {
    key(ns::PAYLOAD, &[msg.as_str().as_bytes()])
}
pub fn event_id(app: &AppId, event_id: &str) -> Vec<u8> {
    key(
        ns::EVENT_ID,
        &[app.as_str().as_bytes(), event_id.as_bytes()],
    )
}
pub fn dest(msg: &MessageId, ep: &EndpointId) -> Vec<u8> {
    key(ns::DEST, &[msg.as_str().as_bytes(), ep.as_str().as_bytes()])
}
pub fn dests_of(msg: &MessageId) -> Vec<u8> {
    key(ns::DEST, &[msg.as_str().as_bytes()])
}
pub fn endpoint_msg(ep: &EndpointId, msg: &MessageId) -> Vec<u8> {
    key(
        ns::ENDPOINT_MSG,
        &[ep.as_str().as_bytes(), msg.as_str().as_bytes()],
    )
}
pub fn endpoint_msgs_of(ep: &EndpointId) -> Vec<u8> {
    key(ns::ENDPOINT_MSG, &[ep.as_str().as_bytes()])
}
/// Where an attempt was kept before attempts moved under their message.
pub fn legacy_attempt(att: &AttemptId) -> Vec<u8> {
    key(ns::ATTEMPT, &[att.as_str().as_bytes()])
}
pub fn attempt_by_msg(msg: &MessageId, att: &AttemptId) -> Vec<u8> {
    key(
        ns::ATTEMPT_BY_MSG,
        &[msg.as_str().as_bytes(), att.as_str().as_bytes()],
    )
}
/// The attempt ID of an `attempt_by_msg` key.
pub fn attempt_in_msg_key(key: &[u8]) -> Option<AttemptId> {
    let id = std::str::from_utf8(key.get(1 + MessageId::LEN..)?).ok()?;
    AttemptId::parse(id)
}
pub fn attempts_of_msg(msg: &MessageId) -> Vec<u8> {
    key(ns::ATTEMPT_BY_MSG, &[msg.as_str().as_bytes()])
}
pub fn attempt_by_ep(ep: &EndpointId, att: &AttemptId) -> Vec<u8> {
    key(
        ns::ATTEMPT_BY_EP,
        &[ep.as_str().as_bytes(), att.as_str().as_bytes()],
    )
}
pub fn attempts_of_ep(ep: &EndpointId) -> Vec<u8> {
    key(ns::ATTEMPT_BY_EP, &[ep.as_str().as_bytes()])
}
/// Timestamps are clamped at zero and stored big-endian so byte order is time order.
fn time(ms: i64) -> [u8; 8] {
    (ms.max(0) as u64).to_be_bytes()
}
pub fn queue(due_ms: i64, task: &TaskId) -> Vec<u8> {
    key(ns::QUEUE, &[&time(due_ms), task.as_str().as_bytes()])
}
/// The due time a queue entry's key holds.
pub fn queue_due(key: &[u8]) -> Option<i64> {
    let due: [u8; 8] = key.get(1..9)?.try_into().ok()?;
    Some(u64::from_be_bytes(due) as i64)
}
/// Upper bound (exclusive) of the queue entries due at or before `now_ms`.
pub fn queue_due_end(now_ms: i64) -> Vec<u8> {
    key(ns::QUEUE, &[&time(now_ms.saturating_add(1))])
}
/// The lease of a claim: named by its expiry and the first task it took.
pub fn claim_lease(expiry_ms: i64, first: &TaskId) -> Vec<u8> {
    key(
        ns::CLAIM_LEASE,
        &[&time(expiry_ms), first.as_str().as_bytes()],
    )
}
/// Upper bound (exclusive) of the leases under `tag` (`LEASE` or
/// `CLAIM_LEASE`) that expired at or before `now_ms`.
pub fn lease_expired_end(tag: u8, now_ms: i64) -> Vec<u8> {
    key(tag, &[&time(now_ms.saturating_add(1))])
}
pub fn handoff_mark() -> Vec<u8> {
    vec![ns::HANDOFF_MARK]
}

pub fn idempotency(scope_hash: &[u8; 32]) -> Vec<u8> {
    key(ns::IDEMPOTENCY, &[scope_hash])
}

pub fn all_messages(msg: &MessageId) -> Vec<u8> {
    key(ns::ALL_MESSAGES, &[msg.as_str().as_bytes()])
}
pub fn failed(msg: &MessageId, ep: &EndpointId) -> Vec<u8> {
    key(
        ns::FAILED,
        &[msg.as_str().as_bytes(), ep.as_str().as_bytes()],
    )
}
pub fn job(name: &str) -> Vec<u8> {
    key(ns::JOB, &[name.as_bytes()])
}
pub fn payload_expiry(expiry_ms: i64, msg: &MessageId) -> Vec<u8> {
    key(
        ns::PAYLOAD_EXPIRY,
        &[&time(expiry_ms), msg.as_str().as_bytes()],
    )
}
/// Upper bound (exclusive) of the payload expiry entries due at or before `now_ms`.
pub fn payload_expiry_end(now_ms: i64) -> Vec<u8> {
    key(ns::PAYLOAD_EXPIRY, &[&time(now_ms.saturating_add(1))])
}
/// The message of a payload expiry entry.
pub fn payload_expiry_msg(key: &[u8]) -> Option<MessageId> {
    MessageId::parse(std::str::from_utf8(key.get(9..)?).ok()?)
}
pub fn cadence(app: &AppId, event_type: &str) -> Vec<u8> {
    key(
        ns::CADENCE,
        &[app.as_str().as_bytes(), event_type.as_bytes()],
    )
}
pub fn silence(app: &AppId, event_type: &str) -> Vec<u8> {
    key(
        ns::SILENCE,
        &[app.as_str().as_bytes(), event_type.as_bytes()],
    )
}
pub fn failing_since(ep: &EndpointId) -> Vec<u8> {
    key(ns::FAILING_SINCE, &[ep.as_str().as_bytes()])
}

pub fn token(id: &TokenId) -> Vec<u8> {
    key(ns::TOKEN, &[id.as_str().as_bytes()])
}
pub fn token_hash(hash: &[u8; 32]) -> Vec<u8> {
    key(ns::TOKEN_HASH, &[hash])
}

/// A delivery status and the indexes that follow it (endpoint → message, dead
/// letters): what removing a status removes.
pub fn dest_and_indexes(msg: &MessageId, ep: &EndpointId) -> [Vec<u8>; 3] {
    [dest(msg, ep), endpoint_msg(ep, msg), failed(msg, ep)]
}

/// The dead-letter key of a delivery-status key (`D` msg ep → `F` msg ep).
pub fn failed_from_dest_key(dest_key: &[u8]) -> Vec<u8> {
    let mut k = dest_key.to_vec();
    k[0] = ns::FAILED;
    k
}
pub fn app_message_count(app: &AppId) -> Vec<u8> {
    key(ns::APP_MESSAGE_COUNT, &[app.as_str().as_bytes()])
}
/// Minutes since the epoch, big-endian.
pub fn minute_stats(minute: i64) -> Vec<u8> {
    key(ns::MINUTE_STATS, &[&time(minute)])
}
pub fn endpoint_hour_stats(ep: &EndpointId, hour: i64) -> Vec<u8> {
    key(
        ns::ENDPOINT_HOUR_STATS,
        &[ep.as_str().as_bytes(), &time(hour)],
    )
}

/// The smallest key greater than every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn queue_keys_sort_by_due_time(a in 0i64..i64::MAX / 2, b in 0i64..i64::MAX / 2) {
            let t = TaskId::new(0);
            prop_assert_eq!(a.cmp(&b), queue(a, &t).cmp(&queue(b, &t)));
            prop_assert!(queue(a, &t) < queue_due_end(a));
            prop_assert!((queue(a, &t) < queue_due_end(b)) == (a <= b));
        }

        #[test]
        fn prefix_end_bounds_every_extension(p in proptest::collection::vec(any::<u8>(), 1..8),
                                            tail in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut k = p.clone();
            k.extend(tail);
            prop_assert!(k.as_slice() < prefix_end(&p).as_slice());
        }
    }

    #[test]
    fn ids_in_keys_sort_by_time() {
        let app = AppId::new(0);
        let m1 = MessageId::new(1);
        let m2 = MessageId::new(2);
        assert!(message(&app, &m1) < message(&app, &m2));
        assert!(message(&app, &m2).starts_with(&messages_of(&app)));
    }
}
