//! What the scheduler's jobs do to the store: job records, reconciliation,
//! retention, endpoint health clocks and message cadences. Every pass reads a
//! bounded range or an index, and reports what it changed.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::writer::Overlay;
use super::{
    AttemptRecord, Counts, DestRecord, IdempotencyRecord, JOB_CHUNK, JobRecord, MessageRecord,
    PageReq, SilenceAlert, Store, StoreError, TaskRecord, change_first_attempt, decode,
    decode_dest, encode, first_attempt, keys, set_failed_index, stage_forget,
};
use crate::domain::{
    AppId, AttemptId, AttemptTrigger, EndpointId, MessageId, MessageStatus, TaskId,
};

/// What a sweep read, or `None` (with a warning) for a record that cannot
/// be read: a sweep passes it by rather than stop there for good (and, at
/// start, stop webhookd).
fn readable<T>(key: &[u8], read: Result<T, StoreError>) -> Option<T> {
    match read {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!(error = %e, key = %String::from_utf8_lossy(key), "a record that cannot be read was passed by");
            None
        }
    }
}

/// A status older than this whose message does not exist is left over from a
/// publish cut short by a crash (younger, its publish may still be applying).
const ORPHAN_AFTER_MS: i64 = 60_000;
/// Statuses a reconciliation sweep checks between two calls of its
/// `between_chunks`.
pub const RECONCILE_CHUNK: usize = 1_000;

/// The deliveries queued, leased or held in memory as a pass began, each
/// kept as a 64-bit hash of its (message, endpoint), or of its message
/// alone. Kept as ids they took 130–170 bytes each for as long as the pass
/// ran, so a queue of millions (an endpoint down for a day) held hundreds
/// of MB at every pass (BENCHMARKS.md, item 52); a hash takes 8 and its
/// place in the table. Every pass hashes with new keys, so the rare
/// collision (about one in 2^64 per look-up and queued delivery) makes a
/// delivery look waiting for one pass only: a lost one is queued again at
/// the next, a message is kept until the next.
struct Waiting {
    keys: RandomState,
    /// Hashes of messages alone, not of (message, endpoint).
    by_message: bool,
    hashes: HashSet<u64>,
}

impl Waiting {
    fn new(by_message: bool) -> Self {
        Waiting {
            keys: RandomState::new(),
            by_message,
            hashes: HashSet::new(),
        }
    }

    fn hash(&self, msg: &MessageId, ep: &EndpointId) -> u64 {
        if self.by_message {
            self.keys.hash_one(msg)
        } else {
            self.keys.hash_one((msg, ep))
        }
    }

    fn insert(&mut self, msg: &MessageId, ep: &EndpointId) {
        self.hashes.insert(self.hash(msg, ep));
    }

    /// Whether the delivery is waiting (only if not `by_message`).
    fn contains(&self, msg: &MessageId, ep: &EndpointId) -> bool {
        debug_assert!(!self.by_message);
        self.hashes.contains(&self.hash(msg, ep))
    }

    /// Whether any delivery of the message is waiting (only `by_message`).
    fn contains_message(&self, msg: &MessageId) -> bool {
        debug_assert!(self.by_message);
        self.hashes.contains(&self.keys.hash_one(msg))
    }
}

/// Messages of one (app, event type): when the last one came and the usual gap.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cadence {
    pub last_ms: i64,
    /// Exponentially weighted mean gap between messages.
    pub mean_gap_ms: f64,
    pub count: u64,
}

impl Cadence {
    /// Weight of the newest gap in the mean.
    const ALPHA: f64 = 0.2;

    fn to_bytes(self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&self.last_ms.to_le_bytes());
        b[8..16].copy_from_slice(&self.mean_gap_ms.to_le_bytes());
        b[16..].copy_from_slice(&self.count.to_le_bytes());
        b
    }

    fn from_bytes(b: &[u8]) -> Cadence {
        let word = |r: std::ops::Range<usize>| {
            b.get(r)
                .and_then(|s| <[u8; 8]>::try_from(s).ok())
                .unwrap_or([0; 8])
        };
        Cadence {
            last_ms: i64::from_le_bytes(word(0..8)),
            mean_gap_ms: f64::from_le_bytes(word(8..16)),
            count: u64::from_le_bytes(word(16..24)),
        }
    }

    /// The merge of one more message at `at_ms` (the delta is its timestamp).
    fn observe(self, at_ms: i64) -> Cadence {
        if self.count == 0 {
            return Cadence {
                last_ms: at_ms,
                mean_gap_ms: 0.0,
                count: 1,
            };
        }
        let gap = (at_ms - self.last_ms).max(0) as f64;
        let mean = if self.count == 1 {
            gap
        } else {
            Self::ALPHA * gap + (1.0 - Self::ALPHA) * self.mean_gap_ms
        };
        Cadence {
            last_ms: at_ms.max(self.last_ms),
            mean_gap_ms: mean,
            count: self.count + 1,
        }
    }
}

/// The sled merge operator of the whole tree: cadences under `W`, counters elsewhere.
pub fn merge(key: &[u8], old: Option<&[u8]>, delta: &[u8]) -> Option<Vec<u8>> {
    if key.first() == Some(&keys::ns::CADENCE) {
        // The delta is one or more message times, 8 bytes each, in order.
        let mut cadence = old.map(Cadence::from_bytes).unwrap_or_default();
        for at in delta.chunks_exact(8) {
            cadence = cadence.observe(i64::from_le_bytes(at.try_into().ok()?));
        }
        return Some(cadence.to_bytes().to_vec());
    }
    Counts::merge(key, old, delta)
}

/// What one reconciliation pass found and mended.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Reconciled {
    pub leases_released: usize,
    pub overdue: usize,
    pub statuses_checked: usize,
    pub requeued: usize,
    pub dead_letter_fixed: usize,
    /// Statuses of deliveries to an endpoint deleted since (see `reconcile`).
    pub forgotten: usize,
    /// Where the next pass continues (None: the sweep wrapped around).
    pub cursor: Option<Vec<u8>>,
}

/// What a retention pass removed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Retained {
    pub payloads_expunged: usize,
    pub attempts_deleted: usize,
    pub messages_deleted: usize,
    /// Bytes of keys and values removed (sled reclaims the file space as it compacts).
    pub bytes_freed: u64,
}

/// How far back of where the last pass of `delete_old_attempts` ended the
/// next one starts looking at statuses.
const SWEEP_OVERLAP_MS: i64 = 3_600_000;

fn str_of(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// An endpoint's failing clock (`keys::failing_since`): the times of the
/// first and the last of its attempts that failed with no success between.
/// Stored as the first time (8 bytes, little-endian), the app's id, then a
/// 0 and the last time (absent in a clock written before it was kept: then
/// the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailingClock {
    pub since_ms: i64,
    pub last_ms: i64,
    app: Vec<u8>,
}

impl FailingClock {
    pub(super) fn encode(since_ms: i64, last_ms: i64, app: &AppId) -> Vec<u8> {
        let mut v = since_ms.to_le_bytes().to_vec();
        v.extend_from_slice(app.as_str().as_bytes());
        v.push(0);
        v.extend_from_slice(&last_ms.to_le_bytes());
        v
    }

    /// What cannot be read reads as time 0 and no app (left out by
    /// `failing_since`).
    pub(super) fn decode(v: &[u8]) -> Self {
        let time = |b: &[u8]| <[u8; 8]>::try_from(b).map_or(0, i64::from_le_bytes);
        let (since, rest) = v.split_at(8.min(v.len()));
        let since_ms = time(since);
        let (app, last_ms) = match rest.iter().position(|b| *b == 0) {
            Some(z) => (&rest[..z], time(&rest[z + 1..])),
            None => (rest, since_ms),
        };
        Self {
            since_ms,
            last_ms,
            app: app.to_vec(),
        }
    }
}

impl Store {
    // ----- job records ---------------------------------------------------

    pub fn job_record(&self, name: &str) -> Result<Option<JobRecord>, StoreError> {
        self.get(&keys::job(name))
    }

    pub fn put_job_record(&self, name: &str, rec: &JobRecord) -> Result<(), StoreError> {
        self.tree.insert(keys::job(name), encode(rec))?;
        Ok(())
    }

    // ----- cadence (silence watchdog) ------------------------------------

    /// Notes that a message of `event_type` was published to `app` at `at_ms`.
    pub fn observe_message(
        &self,
        app: &AppId,
        event_type: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        self.counters.observe(keys::cadence(app, event_type), at_ms);
        Ok(())
    }

    /// Every (app, event type) with its cadence.
    pub fn cadences(&self) -> Result<Vec<(AppId, String, Cadence)>, StoreError> {
        self.apply_counters()?;
        let mut out = Vec::new();
        for e in self.tree.scan_prefix([keys::ns::CADENCE]) {
            let (k, v) = e?;
            let rest = &k[1..];
            let split = AppId::PREFIX.len() + 26;
            if let (Some(app), Some(et)) = (
                rest.get(..split).map(str_of).and_then(|s| AppId::parse(&s)),
                rest.get(split..),
            ) {
                out.push((app, str_of(et), Cadence::from_bytes(&v)));
            }
        }
        Ok(out)
    }

    pub fn silence_alerts(&self) -> Result<Vec<SilenceAlert>, StoreError> {
        self.tree
            .scan_prefix([keys::ns::SILENCE])
            .map(|e| {
                let (k, v) = e?;
                decode(&k, &v)
            })
            .collect()
    }

    pub fn put_silence_alert(&self, alert: &SilenceAlert) -> Result<(), StoreError> {
        self.tree.insert(
            keys::silence(&alert.app_id, &alert.event_type),
            encode(alert),
        )?;
        Ok(())
    }

    pub fn clear_silence_alert(&self, app: &AppId, event_type: &str) -> Result<(), StoreError> {
        self.tree.remove(keys::silence(app, event_type))?;
        Ok(())
    }

    // ----- endpoint health clocks ----------------------------------------

    /// Endpoints whose every attempt has failed since a time: `(app,
    /// endpoint, clock)`.
    pub fn failing_since(&self) -> Result<Vec<(AppId, EndpointId, FailingClock)>, StoreError> {
        let mut out = Vec::new();
        for e in self.tree.scan_prefix([keys::ns::FAILING_SINCE]) {
            let (k, v) = e?;
            let clock = FailingClock::decode(&v);
            if let (Some(ep), Some(app)) = (
                EndpointId::parse(&str_of(&k[1..])),
                AppId::parse(&str_of(&clock.app)),
            ) {
                out.push((app, ep, clock));
            }
        }
        Ok(out)
    }

    pub fn clear_failing_since(&self, ep: &EndpointId) -> Result<(), StoreError> {
        self.tree.remove(keys::failing_since(ep))?;
        Ok(())
    }

    // ----- reconciliation --------------------------------------------------

    /// One reconciliation pass: puts expired leases back on the queue (by the
    /// lease clock, `lease_clock_ms`, not `now_ms`), counts deliveries
    /// overdue by more than `overdue_ms`, and checks up to `budget` delivery
    /// statuses from `cursor` on: a waiting one overdue by more than
    /// `overdue_ms` with nothing queued or leased is queued again, and the
    /// dead-letter index is made to agree. (A job of the writer thread, a
    /// publish or a resend, writes a waiting status before its queue entry,
    /// and may be seen in between, twice if that thread is held up: only
    /// a status long past its due time is taken for lost, when the sweep
    /// passes it, or at its next pass over the statuses if it was not yet.)
    /// `between_chunks` runs after every `RECONCILE_CHUNK` statuses checked,
    /// so that the caller can spread a long sweep out (see `jobs::reconcile`).
    pub fn reconcile(
        &self,
        now_ms: i64,
        overdue_ms: i64,
        cursor: Option<&[u8]>,
        budget: usize,
        mut between_chunks: impl FnMut(),
    ) -> Result<Reconciled, StoreError> {
        let mut r = Reconciled {
            leases_released: self.release_expired_leases(self.lease_clock_ms(), now_ms)?,
            ..Reconciled::default()
        };
        let (waiting, overdue) = self.waiting_tasks(now_ms - overdue_ms, false)?;
        r.overdue = overdue;
        // Deliveries that look lost: requeued only if still so after a second look.
        let mut suspects: Vec<(sled::IVec, sled::IVec, DestRecord)> = Vec::new();
        // Statuses whose endpoint is gone: an attempt under way as its
        // endpoint (or app) was deleted wrote its status back after the
        // deletion took it, in builds before `deleting_endpoints`.
        let mut gone: Vec<DestRecord> = Vec::new();
        let start = cursor.map_or_else(|| vec![keys::ns::DEST], <[u8]>::to_vec);
        let end = keys::prefix_end(&[keys::ns::DEST]);
        let mut last = None;
        for e in self.tree.range(start.clone()..end) {
            let (k, v) = e?;
            if cursor.is_some_and(|c| k.as_ref() == c) {
                continue;
            }
            if r.statuses_checked == budget {
                r.cursor = last;
                r.requeued = self.requeue_lost(suspects, now_ms)?;
                r.forgotten = self.forget(gone)?;
                return Ok(r);
            }
            r.statuses_checked += 1;
            last = Some(k.to_vec());
            let Some(d) = readable(&k, decode::<DestRecord>(&k, &v)) else {
                continue;
            };
            if !self
                .endpoints_of(&d.app_id)?
                .iter()
                .any(|ep| ep.id == d.ep_id)
            {
                gone.push(d);
                continue;
            }
            let queued = waiting.contains(&d.msg_id, &d.ep_id);
            // A failed one missing from the dead-letter index is indexed here;
            // an index entry whose status is not failed is removed by the
            // look at the whole index below, at the end of the sweep (most
            // statuses are not failed).
            if d.status == MessageStatus::Fail
                && !self.tree.contains_key(keys::failed(&d.msg_id, &d.ep_id))?
            {
                let mut batch = sled::Batch::default();
                set_failed_index(&mut batch, &d);
                self.tree.apply_batch(batch)?;
                r.dead_letter_fixed += 1;
            }
            let overdue = d
                .next_attempt_ms
                .is_none_or(|due| due < now_ms - overdue_ms);
            if matches!(d.status, MessageStatus::Pending | MessageStatus::Sending)
                && overdue
                && !queued
            {
                suspects.push((k, v, d));
            }
            if r.statuses_checked.is_multiple_of(RECONCILE_CHUNK) {
                between_chunks();
            }
        }
        r.requeued = self.requeue_lost(suspects, now_ms)?;
        r.forgotten = self.forget(gone)?;
        // Dead letters whose status is gone or no longer failed.
        for e in self.tree.scan_prefix([keys::ns::FAILED]).keys() {
            let k = e?;
            let mut dest_key = k.to_vec();
            dest_key[0] = keys::ns::DEST;
            let status = self.get::<DestRecord>(&dest_key)?.map(|d| d.status);
            if status != Some(MessageStatus::Fail) {
                self.tree.remove(k)?;
                r.dead_letter_fixed += 1;
            }
        }
        r.cursor = None;
        Ok(r)
    }

    /// Takes away the statuses in `gone` (their endpoints deleted) as a job
    /// of the writer thread, as a claim of one of them would (see
    /// `Store::forget_delivery`), and what is left of those endpoints'
    /// attempt index (the later attempts that wrote it back), as deleting
    /// an endpoint takes it. Returns how many statuses.
    fn forget(&self, gone: Vec<DestRecord>) -> Result<usize, StoreError> {
        let n = gone.len();
        if n > 0 {
            self.writer.write_blocking(move |o| {
                let mut endpoints = HashSet::new();
                for d in &gone {
                    stage_forget(o, &d.app_id, &d.msg_id, &d.ep_id)?;
                    endpoints.insert(&d.ep_id);
                }
                for ep in endpoints {
                    for (k, _) in o.scan_prefix(&keys::attempts_of_ep(ep))? {
                        o.remove(k);
                    }
                }
                Ok(())
            })?;
        }
        Ok(n)
    }

    /// Every queued, leased or handed-over delivery (by message alone if
    /// `by_message`), and how many of the queued ones were due before
    /// `overdue_before_ms`. The hand-off is read first: a delivery leaves it
    /// for the queue (an endpoint at its cap) only once its queue entry is
    /// written.
    fn waiting_tasks(
        &self,
        overdue_before_ms: i64,
        by_message: bool,
    ) -> Result<(Waiting, usize), StoreError> {
        let mut waiting = Waiting::new(by_message);
        for (msg, ep) in self.handoff.held() {
            waiting.insert(&msg, &ep);
        }
        let mut overdue = 0;
        for entry in self.queued() {
            let entry = entry?;
            if entry.due_ms() < overdue_before_ms {
                overdue += entry.len();
            }
            match &entry {
                super::Queued::One(t) => waiting.insert(&t.msg_id, &t.ep_id),
                super::Queued::Fan(fan) => {
                    for ep in &fan.ep_ids {
                        waiting.insert(&fan.msg_id, ep);
                    }
                }
            }
        }
        for t in self.leased() {
            let t = t?;
            waiting.insert(&t.msg_id, &t.ep_id);
        }
        Ok((waiting, overdue))
    }

    /// Queues again the deliveries of `suspects` that are still unfinished with no
    /// queued or leased task and an unchanged status record. The queue and the
    /// leases are read one after the other, not at one instant, so a delivery
    /// moving between them (or one published meanwhile) can look lost once; it
    /// cannot look lost twice with its status unchanged in between.
    fn requeue_lost(
        &self,
        suspects: Vec<(sled::IVec, sled::IVec, DestRecord)>,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        if suspects.is_empty() {
            return Ok(0);
        }
        let (waiting, _) = self.waiting_tasks(now_ms, false)?;
        let mut requeued = 0;
        for (key, seen, d) in suspects {
            if waiting.contains(&d.msg_id, &d.ep_id) || self.tree.get(&key)?.as_ref() != Some(&seen)
            {
                continue;
            }
            if d.msg_id.created_ms() < now_ms - ORPHAN_AFTER_MS
                && !self
                    .tree
                    .contains_key(keys::message(&d.app_id, &d.msg_id))?
            {
                // A publish cut short by a crash (its writes are applied in
                // turn, the message after the statuses): it was never
                // acknowledged, so its statuses go rather than a delivery.
                self.remove_status(&d)?;
                continue;
            }
            self.queue_again(&d, now_ms)?;
            requeued += 1;
        }
        Ok(requeued)
    }

    /// At start, before the worker runs: queues (due `now_ms`) every delivery
    /// a process before left handed over in memory and unrecorded (see
    /// `handoff`): from the hand-off mark on, a waiting status with nothing
    /// queued or leased (release the leases first), and an endpoint's index
    /// entry without a status (a delivery handed over has none until its
    /// attempt is recorded). One whose message is missing is from a publish
    /// a crash cut short, never acknowledged: it is removed. Then writes a
    /// new mark, from which on messages may be handed over once the worker
    /// opens the hand-off (`open_handoff`). Returns how many were queued.
    pub fn recover_handed_over(&self, now_ms: i64) -> Result<usize, StoreError> {
        let mark = self
            .get_str(&keys::handoff_mark())?
            .and_then(|m| MessageId::parse(&m));
        let mut requeued = 0;
        if let Some(mark) = mark {
            let mut waiting = None;
            let end = keys::prefix_end(&[keys::ns::DEST]);
            for e in self.tree.range(keys::dests_of(&mark)..end) {
                let (k, v) = e?;
                let Some(d) = readable(&k, decode::<DestRecord>(&k, &v)) else {
                    continue;
                };
                if !matches!(d.status, MessageStatus::Pending | MessageStatus::Sending) {
                    continue;
                }
                let waiting = match &mut waiting {
                    Some(w) => w,
                    None => waiting.insert(self.waiting_tasks(now_ms, false)?.0),
                };
                if waiting.contains(&d.msg_id, &d.ep_id) {
                    continue;
                }
                if self
                    .tree
                    .contains_key(keys::message(&d.app_id, &d.msg_id))?
                {
                    self.queue_again(&d, now_ms)?;
                    requeued += 1;
                } else {
                    self.remove_status(&d)?;
                }
            }
            requeued += self.recover_unstatused(&mark, now_ms)?;
        }
        let new_mark = MessageId::lower_bound(now_ms);
        self.tree
            .insert(keys::handoff_mark(), new_mark.as_str().as_bytes())?;
        self.handoff.recovered(new_mark);
        Ok(requeued)
    }

    /// Queues every delivery of a message from `mark` on that has an index
    /// entry and no status: handed over and not recorded (see
    /// `recover_handed_over`). Returns how many were queued.
    fn recover_unstatused(&self, mark: &MessageId, now_ms: i64) -> Result<usize, StoreError> {
        let mut requeued = 0;
        let end = keys::prefix_end(&[keys::ns::ALL_MESSAGES]);
        for entry in self.tree.range(keys::all_messages(mark)..end) {
            let (k, v) = entry?;
            let (Some(msg), Some(app)) = (
                MessageId::parse(&String::from_utf8_lossy(&k[1..])),
                super::all_messages_app(&v),
            ) else {
                continue;
            };
            let whole = self.tree.contains_key(keys::message(&app, &msg))?;
            for ep in self.endpoints_of(&app)?.iter() {
                let index = keys::endpoint_msg(&ep.id, &msg);
                if !self.tree.contains_key(&index)?
                    || self.tree.contains_key(keys::dest(&msg, &ep.id))?
                {
                    continue;
                }
                if whole {
                    self.enqueue(&TaskRecord {
                        id: TaskId::new(now_ms),
                        app_id: app.clone(),
                        msg_id: msg.clone(),
                        ep_id: ep.id.clone(),
                        attempt: 0,
                        trigger: AttemptTrigger::Scheduled,
                        due_ms: now_ms,
                    })?;
                    requeued += 1;
                } else {
                    self.tree.remove(index)?;
                }
            }
        }
        Ok(requeued)
    }

    /// Removes a status (with its indexes) left by a publish cut short.
    fn remove_status(&self, d: &DestRecord) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for k in keys::dest_and_indexes(&d.msg_id, &d.ep_id) {
            batch.remove(k);
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Queues the next attempt of a delivery found with nothing queued, due
    /// when its status says (a message's `deliverAt`, a retry's time) or
    /// `now_ms` if that has passed.
    fn queue_again(&self, d: &DestRecord, now_ms: i64) -> Result<(), StoreError> {
        let due_ms = d.next_attempt_ms.map_or(now_ms, |due| due.max(now_ms));
        // Its place in the retry schedule: resends are not scheduled
        // attempts. (Attempt records that cannot be read do not keep it off
        // the queue: then every attempt counts, as the status says.)
        let scheduled = match d.attempts {
            0 => 0,
            n => self
                .attempts_of_msg(&d.msg_id, &PageReq::first(n as usize), |a| {
                    a.ep_id == d.ep_id && a.trigger == AttemptTrigger::Scheduled
                })
                .map_or_else(
                    |e| {
                        tracing::warn!(error = %e, message_id = %d.msg_id, "counting a lost delivery's attempts failed");
                        n
                    },
                    |page| page.items.len() as u32,
                ),
        };
        let task = TaskRecord {
            id: TaskId::new(now_ms),
            app_id: d.app_id.clone(),
            msg_id: d.msg_id.clone(),
            ep_id: d.ep_id.clone(),
            attempt: scheduled,
            trigger: AttemptTrigger::Scheduled,
            due_ms,
        };
        self.tree
            .insert(keys::queue(due_ms, &task.id), encode(&task))?;
        Ok(())
    }

    // ----- retention -------------------------------------------------------

    /// Removes the remembered answers of idempotent requests older than
    /// `ttl_ms` (a retry after that is handled anew anyway), and any record
    /// that cannot be read. Returns how many.
    pub fn expire_idempotency(&self, now_ms: i64, ttl_ms: i64) -> Result<u64, StoreError> {
        let mut removed = 0;
        for e in self.tree.scan_prefix([keys::ns::IDEMPOTENCY]) {
            let (k, v) = e?;
            let old = decode::<IdempotencyRecord>(&k, &v)
                .map_or(true, |r| r.created_ms.saturating_add(ttl_ms) <= now_ms);
            // Unless a request with the same key was answered meanwhile.
            if old
                && self
                    .tree
                    .compare_and_swap(&k, Some(&v), None as Option<&[u8]>)?
                    .is_ok()
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes payloads (and the response bodies recorded for them) of delivered
    /// messages older than their retention: `retention_of(message)` in
    /// milliseconds. Looks at messages created before `now_ms - shortest_ms`
    /// only, through the all-messages index, which holds the payloads (and,
    /// in stores written before, through the payloads under their own key).
    /// A message with a delivery still waiting, retrying or failed keeps its
    /// payload. A payload without a message is removed.
    pub fn expire_payloads(
        &self,
        now_ms: i64,
        shortest_ms: i64,
        mut retention_of: impl FnMut(&MessageRecord) -> i64,
    ) -> Result<Retained, StoreError> {
        let mut r = Retained::default();
        let before = MessageId::lower_bound(now_ms - shortest_ms);
        // Each with the length of the payload it holds.
        let held = self
            .tree
            .range(vec![keys::ns::ALL_MESSAGES]..keys::all_messages(&before))
            .filter_map(|e| match e {
                Ok((k, v)) => super::all_messages_payload(&v).map(|p| Ok((k, p.len()))),
                Err(e) => Some(Err(e)),
            });
        let legacy = self
            .tree
            .range(vec![keys::ns::PAYLOAD]..keys::payload(&before))
            .map(|e| e.map(|(k, v)| (k, v.len())));
        for entry in held.chain(legacy) {
            let (k, payload_len) = entry?;
            let Some(id) = MessageId::parse(&str_of(&k[1..])) else {
                continue;
            };
            let Some(msg) = self.find_message_any(&id)? else {
                // Left by a publish cut short before its message was written
                // (never acknowledged): its payload and all-messages entry go.
                let mut batch = sled::Batch::default();
                batch.remove(keys::all_messages(&id));
                batch.remove(keys::payload(&id));
                self.tree.apply_batch(batch)?;
                continue;
            };
            if self.may_expire(&msg, retention_of(&msg), now_ms)?
                && let Some(freed) = self.clear_content(&msg, true)?
            {
                r.bytes_freed += payload_len as u64 + freed;
                r.payloads_expunged += 1;
            }
        }
        // Messages with a retention of their own may be younger than
        // `shortest_ms`: found by when theirs ends. An entry stays until its
        // payload went (or the message did). (Those of a store written
        // before this index have none: the pass above finds them.)
        let end = keys::payload_expiry_end(now_ms);
        for entry in self.tree.range(vec![keys::ns::PAYLOAD_EXPIRY]..end) {
            let (k, v) = entry?;
            let msg = match (keys::payload_expiry_msg(&k), AppId::parse(&str_of(&v))) {
                (Some(id), Some(app)) => self.get_message(&app, &id)?,
                _ => None,
            };
            let gone = match msg {
                Some(msg) if !msg.expunged => {
                    if !self.may_expire(&msg, retention_of(&msg), now_ms)? {
                        continue;
                    }
                    let payload_len = self.payload(&msg.id)?.map_or(0, |p| p.len());
                    // None: kept after all (a resend came meanwhile).
                    let cleared = self.clear_content(&msg, true)?;
                    if let Some(freed) = cleared {
                        r.bytes_freed += payload_len as u64 + freed;
                        r.payloads_expunged += 1;
                    }
                    cleared.is_some()
                }
                _ => true,
            };
            if gone {
                self.tree.remove(k)?;
            }
        }
        Ok(r)
    }

    /// May `msg`'s payload go: `retention_ms` has passed since it was
    /// created and every delivery of it is over? An undelivered message
    /// keeps its payload: it is still to be sent or redelivered (one held
    /// in memory by the worker has no status yet). Looked at here first, so
    /// that a message kept costs no writer job; the job that expunges looks
    /// again, in turn with the resends asked for meanwhile (see
    /// `clear_content`).
    fn may_expire(
        &self,
        msg: &MessageRecord,
        retention_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        if msg.created_ms.saturating_add(retention_ms) > now_ms
            || !self.handoff.held_of(&msg.id).is_empty()
        {
            return Ok(false);
        }
        for e in self.tree.scan_prefix(keys::dests_of(&msg.id)) {
            let (k, v) = e?;
            // One that cannot be read keeps the payload.
            if !readable(&k, decode_dest(&k, &v)).is_some_and(|d| super::delivered_and_not_due(&d))
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Deletes attempt records older than `max_age_ms`. They are kept under
    /// their messages (the first attempt of most deliveries in its status),
    /// and no attempt is older than its message, so only the attempts of
    /// messages older than that are looked at (and the records a store
    /// written before attempts moved there keeps by attempt ID).
    pub fn delete_old_attempts(
        &self,
        now_ms: i64,
        max_age_ms: i64,
    ) -> Result<Retained, StoreError> {
        let cutoff = now_ms - max_age_ms;
        let mut r = Retained::default();
        // Deleted a thousand at a time as they are found: the records hold
        // response bodies, and a first pass (a retention made shorter, or
        // none for long) finds many. One that cannot be read goes by its
        // key alone (its endpoint's index entry cannot be known), rather
        // than stopping every pass at it.
        let mut batch = sled::Batch::default();
        let mut staged = 0;
        let mut stage = |k: sled::IVec,
                         v: sled::IVec,
                         r: &mut Retained|
         -> Result<(), StoreError> {
            r.bytes_freed += (k.len() + v.len()) as u64;
            r.attempts_deleted += 1;
            match decode::<AttemptRecord>(&k, &v) {
                Ok(a) => {
                    batch.remove(keys::attempt_by_msg(&a.msg_id, &a.id));
                    batch.remove(keys::attempt_by_ep(&a.ep_id, &a.id));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "an attempt record that cannot be read is deleted")
                }
            }
            batch.remove(k);
            staged += 1;
            if staged == 1_000 {
                self.tree.apply_batch(std::mem::take(&mut batch))?;
                staged = 0;
            }
            Ok(())
        };
        let legacy_end = keys::legacy_attempt(&AttemptId::lower_bound(cutoff));
        for e in self.tree.range(vec![keys::ns::ATTEMPT]..legacy_end) {
            let (k, v) = e?;
            stage(k, v, &mut r)?;
        }
        let end = keys::attempts_of_msg(&MessageId::lower_bound(cutoff));
        for e in self.tree.range(vec![keys::ns::ATTEMPT_BY_MSG]..end) {
            let (k, v) = e?;
            let id = keys::attempt_in_msg_key(&k);
            // An empty value is a legacy entry: deleted with its record above.
            if v.is_empty() || id.is_none_or(|id| id.created_ms() >= cutoff) {
                continue;
            }
            stage(k, v, &mut r)?;
        }
        self.tree.apply_batch(batch)?;
        // First attempts kept in the statuses of those messages, removed on
        // the writer thread (see `change_first_attempt`). Statuses stay after
        // their attempts go, so a pass starts about where the last one ended
        // (an hour before, for a step of the wall clock): a first attempt is
        // recorded moments after its message is created, not once the
        // message is older than the retention.
        let start = match self.attempts_swept.lock().expect("not poisoned").as_ref() {
            Some(from) => keys::dests_of(from),
            None => vec![keys::ns::DEST],
        };
        // Never before `start` (the retention was made longer since).
        let end = keys::dests_of(&MessageId::lower_bound(cutoff)).max(start.clone());
        let remove_first = |chunk: Vec<(Vec<u8>, AttemptRecord)>, r: &mut Retained| {
            let (deleted, freed) = self.writer.write_blocking(move |o| {
                let (mut deleted, mut freed) = (0, 0);
                for (key, a) in chunk {
                    let n = change_first_attempt(o, &key, |first| match first {
                        Some(f) if f.id == a.id => {
                            *first = None;
                            encode(&a).len() as u64
                        }
                        _ => 0,
                    })?;
                    if n > 0 {
                        o.remove(keys::attempt_by_ep(&a.ep_id, &a.id));
                        deleted += 1;
                        freed += n;
                    }
                }
                Ok((deleted, freed))
            })?;
            r.attempts_deleted += deleted;
            r.bytes_freed += freed;
            Ok::<_, StoreError>(())
        };
        let mut kept = Vec::new();
        for e in self.tree.range(start..end) {
            let (k, v) = e?;
            if let Some(a) =
                readable(&k, decode_dest(&k, &v).and_then(|d| first_attempt(&d))).flatten()
                && a.id.created_ms() < cutoff
            {
                kept.push((k.to_vec(), a));
                if kept.len() == JOB_CHUNK {
                    remove_first(std::mem::take(&mut kept), &mut r)?;
                }
            }
        }
        if !kept.is_empty() {
            remove_first(kept, &mut r)?;
        }
        let swept = MessageId::lower_bound(cutoff - SWEEP_OVERLAP_MS);
        let mut mark = self.attempts_swept.lock().expect("not poisoned");
        if mark.as_ref().is_none_or(|m| *m < swept) {
            *mark = Some(swept);
        }
        Ok(r)
    }

    /// Deletes the oldest messages whose every delivery succeeded (or that had no
    /// endpoint) until about `bytes` have been freed. Never a message with a
    /// delivery that is waiting, retrying or failed, nor one with a delivery
    /// queued, leased or held in memory (a resend of a delivered one).
    pub fn drop_oldest_delivered(&self, bytes: u64) -> Result<Retained, StoreError> {
        let mut r = Retained::default();
        // Queued or leased as the pass begins; a resend queued after this
        // is seen in its status by `stage_delete_delivered`.
        let (waiting, _) = self.waiting_tasks(i64::MIN, true)?;
        // Counted by the jobs, which run one after the other: the last one
        // needed stops the rest of its chunk.
        let freed = Arc::new(AtomicU64::new(0));
        let mut iter = self.tree.scan_prefix([keys::ns::ALL_MESSAGES]);
        while freed.load(Ordering::Relaxed) < bytes {
            // The oldest candidates, a chunk at a time.
            let mut chunk = Vec::new();
            for e in iter.by_ref() {
                let (k, v) = e?;
                let (Some(id), Some(app)) = (
                    MessageId::parse(&str_of(&k[1..])),
                    super::all_messages_app(&v),
                ) else {
                    continue;
                };
                // A delivery held in memory has no status until its attempt
                // is recorded (see `handoff`), so its message would look
                // delivered. It is let go only after its status is written:
                // asked before the statuses are read, the hand-off misses none.
                if waiting.contains_message(&id) || !self.handoff.held_of(&id).is_empty() {
                    continue;
                }
                chunk.push((app, id));
                if chunk.len() == DELETE_CHUNK {
                    break;
                }
            }
            if chunk.is_empty() {
                break;
            }
            let jobs = chunk.into_iter().map(|(app, id)| {
                let freed = Arc::clone(&freed);
                move |o: &mut Overlay| {
                    if freed.load(Ordering::Relaxed) >= bytes {
                        return Ok(false);
                    }
                    let (deleted, n) = stage_delete_delivered(o, &app, &id)?;
                    freed.fetch_add(n, Ordering::Relaxed);
                    Ok(deleted)
                }
            });
            let deleted = self.writer.write_each_blocking(jobs)?;
            r.messages_deleted += deleted.into_iter().filter(|d| *d).count();
        }
        r.bytes_freed = freed.load(Ordering::Relaxed);
        Ok(r)
    }
}

/// Messages the disk bound hands the writer thread at once, one job each:
/// the publishes behind them wait for at most this many.
const DELETE_CHUNK: usize = 100;

/// Deletes a message with everything recorded about it, if every delivery
/// of it succeeded and none is due again (a resend queued): on the writer
/// thread, so that no status an attempt or a resend writes meanwhile is
/// missed or left behind. Returns whether it was deleted, and the bytes
/// removed (also those of an all-messages entry left without its message
/// by a crash).
fn stage_delete_delivered(
    o: &mut Overlay,
    app: &AppId,
    id: &MessageId,
) -> Result<(bool, u64), StoreError> {
    let mut freed = 0u64;
    let mut remove = |o: &mut Overlay, k: Vec<u8>| -> Result<(), StoreError> {
        if let Some(v) = o.get(&k)? {
            freed += (k.len() + v.len()) as u64;
            o.remove(k);
        }
        Ok(())
    };
    let message_key = keys::message(app, id);
    let Some(raw) = o.get(&message_key)? else {
        // A deletion (or a publish) cut short by a crash: the message went
        // before its all-messages entry, which only this pass finds.
        remove(o, keys::all_messages(id))?;
        remove(o, keys::payload(id))?;
        return Ok((false, freed));
    };
    let msg: MessageRecord = decode(&message_key, &raw)?;
    let mut dests = Vec::new();
    for (k, v) in o.scan_prefix(&keys::dests_of(id))? {
        // One that cannot be read keeps the message.
        let Some(d) = readable(&k, decode_dest(&k, &v)) else {
            return Ok((false, 0));
        };
        if !super::delivered_and_not_due(&d) {
            return Ok((false, 0));
        }
        dests.push(d);
    }
    // What points to the message goes first, the message and its payload
    // last: a pass cut short by a crash leaves a message with less recorded
    // about it, which the next pass takes (see `writer`). Its eventId entry
    // only while it names this message: after such a crash, a publish with
    // that eventId may have taken it over.
    if let Some(eid) = &msg.event_id {
        let key = keys::event_id(app, eid);
        if o.get(&key)?
            .is_some_and(|v| v.as_ref() == id.as_str().as_bytes())
        {
            remove(o, key)?;
        }
    }
    for (k, v) in o.scan_prefix(&keys::attempts_of_msg(id))? {
        let (at, attempt) = super::staged_attempt_at(o, k.clone(), &v)?;
        if let Some(a) = attempt {
            remove(o, keys::attempt_by_ep(&a.ep_id, &a.id))?;
        }
        if at != k {
            remove(o, at)?;
        }
        remove(o, k)?;
    }
    for d in &dests {
        if let Some(a) = first_attempt(d)? {
            remove(o, keys::attempt_by_ep(&a.ep_id, &a.id))?;
        }
        for k in keys::dest_and_indexes(id, &d.ep_id).into_iter().rev() {
            remove(o, k)?;
        }
    }
    remove(o, message_key)?;
    remove(o, keys::all_messages(id))?;
    remove(o, keys::payload(id))?;
    Ok((true, freed))
}
