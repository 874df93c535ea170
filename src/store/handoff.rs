//! Deliveries handed from a publish to the delivery worker in memory.
//!
//! When the worker has room, a publish does not queue its deliveries (a
//! `Q` entry that the worker would claim under a lease and remove a moment
//! later: three writes and a round trip through the writer): it hands them
//! over here, with the message and its payload (`HandedMessage`), and the
//! worker takes them from memory. Until its attempt is
//! recorded, such a delivery has no status (`D`) either, one write fewer
//! per delivery: its only durable trace is the endpoint's index entry
//! (`d`), and readers of statuses show it as waiting while it is held
//! (`held_of`, `is_held`). So that a start after a crash finds it, the
//! store keeps a mark (`keys::handoff_mark`): no message before the mark
//! has a delivery held only in memory. A start queues every delivery of a
//! message from the mark on that has an index entry and no status, and
//! every waiting status from the mark on that has nothing queued
//! (`Store::recover_handed_over`, which also lets the hand-off begin);
//! while running, the commit thread moves the mark up to the oldest
//! message still held, at most every `MARK_EVERY`.
//!
//! While the worker is full, a publish waits for room (first come, first
//! served, at most `ROOM_WAIT`) instead of queueing: under a load the worker
//! cannot keep up with, publishes slow down to its pace rather than grow a
//! queue, and every delivery stays on the cheap path. One that waited in
//! vain queues its deliveries, and until the worker takes something again
//! the next ones queue without waiting. Nothing is handed over before the
//! recovery ran (`mark` unset), nor while no worker takes deliveries.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, TryAcquireError};

use super::{Claim, MessageRecord, TaskRecord};
use crate::domain::{EndpointId, MessageId};

/// The message of deliveries handed over, with its payload, as its publish
/// stored them: the worker sends these rather than read them back.
pub struct HandedMessage {
    pub record: MessageRecord,
    pub payload: Arc<[u8]>,
}

/// A delivery handed over, with its message.
pub type Handed = (TaskRecord, Arc<HandedMessage>);

/// Longest a publish waits for room before it queues its deliveries instead.
const ROOM_WAIT: Duration = Duration::from_millis(100);
/// Least time between two writes of the mark.
const MARK_EVERY: Duration = Duration::from_millis(500);
/// With nothing held, the mark is put this far behind the clock, so that a
/// message created a moment before it and published after it can still be
/// handed over.
const MARK_LAG_MS: i64 = 1_000;

pub(super) struct Handoff {
    state: Mutex<State>,
    /// One permit per free place in `ready`: a publish takes one per
    /// delivery, in the order they asked; the worker gives them back as it
    /// takes deliveries. Closed when the worker stops.
    room: Semaphore,
}

impl Default for Handoff {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            room: Semaphore::new(0),
        }
    }
}

#[derive(Default)]
struct State {
    /// Deliveries `ready` holds at most; 0 while no worker takes them.
    capacity: usize,
    /// A publish waited `ROOM_WAIT` for room in vain, and the worker has
    /// taken nothing since: publishes do not wait.
    stalled: bool,
    /// Handed over, not taken by the worker yet.
    ready: VecDeque<Handed>,
    /// Places taken by publishes whose writes are not applied yet.
    reserved: usize,
    /// Every delivery held only in memory: from the reservation until it is
    /// recorded, dropped or queued.
    held: BTreeSet<(MessageId, EndpointId)>,
    /// The mark as last chosen (written, or about to be), and when. No
    /// message before it is handed over, and it is raised only to the
    /// oldest message held. None until the recovery at start ran: nothing
    /// is handed over and the mark is not written.
    mark: Option<(MessageId, Instant)>,
}

impl State {
    fn may_hold(&self, msg: &MessageId, deliveries: usize) -> bool {
        self.mark.as_ref().is_some_and(|(mark, _)| msg >= mark) && deliveries <= self.capacity
    }
}

impl Handoff {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After the recovery at start, which wrote `mark`: messages from it on
    /// may be handed over.
    pub(super) fn recovered(&self, mark: MessageId) {
        self.lock().mark = Some((mark, Instant::now()));
    }

    /// The worker takes deliveries handed over, up to `capacity` waiting. Once.
    pub(super) fn open(&self, capacity: usize) {
        let mut s = self.lock();
        debug_assert_eq!(s.capacity, 0, "opened once");
        s.capacity = capacity;
        self.room.add_permits(capacity);
    }

    /// The worker stopped: publishes queue their deliveries, also those
    /// waiting for room. Those handed over and not taken stay held.
    pub(super) fn close(&self) {
        self.lock().capacity = 0;
        self.room.close();
    }

    /// Holds the deliveries of `msg` to `eps` for a hand-over, waiting for
    /// room if the worker is full (see the module comment). False: queue them.
    pub(super) async fn reserve(&self, msg: &MessageId, eps: &[EndpointId]) -> bool {
        let n = eps.len();
        let stalled = {
            let s = self.lock();
            if !s.may_hold(msg, n) {
                return false;
            }
            s.stalled
        };
        let places = match self.room.try_acquire_many(n as u32) {
            Ok(places) => places,
            Err(TryAcquireError::NoPermits) if !stalled => {
                match tokio::time::timeout(ROOM_WAIT, self.room.acquire_many(n as u32)).await {
                    Ok(Ok(places)) => places,
                    Ok(Err(_closed)) => return false,
                    Err(_waited) => {
                        self.lock().stalled = true;
                        return false;
                    }
                }
            }
            Err(_) => return false,
        };
        places.forget();
        let mut s = self.lock();
        // The mark may have moved past a message that waited long.
        if !s.may_hold(msg, n) {
            drop(s);
            self.room.add_permits(n);
            return false;
        }
        s.reserved += n;
        for ep in eps {
            s.held.insert((msg.clone(), ep.clone()));
        }
        true
    }

    /// The writes of a reserved publish are applied: its tasks are ready.
    pub(super) fn hand_over(&self, tasks: Vec<TaskRecord>, message: Arc<HandedMessage>) {
        let mut s = self.lock();
        s.reserved -= tasks.len();
        s.ready
            .extend(tasks.into_iter().map(|t| (t, Arc::clone(&message))));
    }

    /// A reserved publish failed: nothing of it is held.
    pub(super) fn cancel(&self, msg: &MessageId, eps: &[EndpointId]) {
        let mut s = self.lock();
        s.reserved -= eps.len();
        for ep in eps {
            s.held.remove(&(msg.clone(), ep.clone()));
        }
        drop(s);
        self.room.add_permits(eps.len());
    }

    /// Takes up to `limit` ready deliveries, in the order they were handed
    /// over, as `decide` says (see `Store::claim_due`): taken ones stay held
    /// until `release`; deferred ones are returned apart, to be queued and
    /// then released; skipped ones stay ready.
    pub(super) fn take(
        &self,
        limit: usize,
        decide: &mut impl FnMut(&TaskRecord) -> Claim,
    ) -> (Vec<Handed>, Vec<TaskRecord>) {
        let (mut taken, mut deferred) = (Vec::new(), Vec::new());
        let mut s = self.lock();
        let mut left = VecDeque::new();
        while let Some(handed) = s.ready.pop_front() {
            if taken.len() == limit {
                left.push_back(handed);
                break;
            }
            match decide(&handed.0) {
                Claim::Take => taken.push(handed),
                Claim::Skip => left.push_back(handed),
                Claim::Defer(due_ms) => deferred.push(TaskRecord { due_ms, ..handed.0 }),
            }
        }
        left.append(&mut s.ready);
        s.ready = left;
        let freed = taken.len() + deferred.len();
        if freed > 0 {
            s.stalled = false;
            self.room.add_permits(freed);
        }
        (taken, deferred)
    }

    /// A delivery taken (or deferred) is recorded, dropped or queued: it is
    /// no longer held only in memory.
    pub(super) fn release(&self, msg: &MessageId, ep: &EndpointId) {
        self.lock().held.remove(&(msg.clone(), ep.clone()));
    }

    /// The first `limit` deliveries waiting for the worker, in the order
    /// they were handed over.
    pub(super) fn waiting(&self, limit: usize) -> Vec<TaskRecord> {
        self.lock()
            .ready
            .iter()
            .take(limit)
            .map(|(task, _)| task.clone())
            .collect()
    }

    /// Every delivery held only in memory.
    pub(super) fn held(&self) -> Vec<(MessageId, EndpointId)> {
        self.lock().held.iter().cloned().collect()
    }

    /// The endpoints to which a delivery of `msg` is held only in memory
    /// (a range of `held`, which is ordered by message first).
    pub(super) fn held_of(&self, msg: &MessageId) -> Vec<EndpointId> {
        let s = self.lock();
        s.held
            .range((msg.clone(), EndpointId::lower_bound(0))..)
            .take_while(|(m, _)| m == msg)
            .map(|(_, ep)| ep.clone())
            .collect()
    }

    /// Whether the delivery of `msg` to `ep` is held only in memory.
    pub(super) fn is_held(&self, msg: &MessageId, ep: &EndpointId) -> bool {
        self.lock().held.contains(&(msg.clone(), ep.clone()))
    }

    /// Deliveries held waiting for the worker, and held by it.
    pub(super) fn depth(&self) -> (usize, usize) {
        let s = self.lock();
        let waiting = s.ready.len() + s.reserved;
        (waiting, s.held.len() - waiting)
    }

    /// The mark to write at `now` (`now_ms` on the wall clock), if it is
    /// time and it moved: the oldest message held, or with none held
    /// `MARK_LAG_MS` before `now_ms`; never below the mark before.
    pub(super) fn next_mark(&self, now: Instant, now_ms: i64) -> Option<MessageId> {
        let mut s = self.lock();
        let (before, at) = s.mark.clone()?;
        if now.saturating_duration_since(at) < MARK_EVERY {
            return None;
        }
        let oldest = match s.held.first() {
            Some((msg, _)) => msg.clone(),
            None => MessageId::lower_bound(now_ms - MARK_LAG_MS),
        };
        let mark = oldest.max(before.clone());
        s.mark = Some((mark.clone(), now));
        (mark != before).then_some(mark)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AppId, AttemptTrigger, TaskId};

    fn message(msg: &MessageId) -> Arc<HandedMessage> {
        Arc::new(HandedMessage {
            record: MessageRecord {
                id: msg.clone(),
                app_id: AppId::new(1),
                event_type: "test.event".into(),
                event_id: None,
                channels: Vec::new(),
                tags: Vec::new(),
                created_ms: msg.created_ms(),
                expunged: false,
                payload_retention_ms: None,
            },
            payload: Arc::from(&b"{}"[..]),
        })
    }

    fn tasks(msg: &MessageId, eps: &[EndpointId]) -> Vec<TaskRecord> {
        eps.iter()
            .map(|ep| TaskRecord {
                id: TaskId::new(msg.created_ms()),
                app_id: AppId::new(1),
                msg_id: msg.clone(),
                ep_id: ep.clone(),
                attempt: 0,
                trigger: AttemptTrigger::Scheduled,
                due_ms: msg.created_ms(),
            })
            .collect()
    }

    /// The mark never passes a delivery held in memory, and nothing before
    /// the mark (as written or about to be) is handed over afterwards.
    #[tokio::test]
    async fn the_mark_stays_at_the_oldest_delivery_held() {
        let h = Handoff::default();
        let ep = vec![EndpointId::new(1)];
        let (m1, m2) = (MessageId::new(100_000), MessageId::new(200_000));
        assert!(!h.reserve(&m1, &ep).await, "not before the recovery");
        h.recovered(MessageId::lower_bound(50_000));
        assert!(!h.reserve(&m1, &ep).await, "not while no worker takes them");
        h.open(8);
        assert!(h.reserve(&m1, &ep).await);
        h.hand_over(tasks(&m1, &ep), message(&m1));
        assert!(h.reserve(&m2, &ep).await);
        h.hand_over(tasks(&m2, &ep), message(&m2));
        assert_eq!(h.depth(), (2, 0));

        let t1 = h.lock().mark.as_ref().unwrap().1 + MARK_EVERY;
        assert_eq!(h.next_mark(t1 - MARK_EVERY / 2, 300_000), None, "too soon");
        assert_eq!(h.next_mark(t1, 300_000), Some(m1.clone()));
        let (taken, _) = h.take(8, &mut |_| Claim::Take);
        assert_eq!(taken.len(), 2);
        assert_eq!(h.depth(), (0, 2));
        h.release(&m1, &ep[0]);
        let t2 = t1 + MARK_EVERY;
        assert_eq!(h.next_mark(t2, 300_000), Some(m2.clone()));
        h.release(&m2, &ep[0]);
        let t3 = t2 + MARK_EVERY;
        let past = MessageId::lower_bound(300_000 - MARK_LAG_MS);
        assert_eq!(h.next_mark(t3, 300_000), Some(past.clone()));
        assert_eq!(h.next_mark(t3 + MARK_EVERY, 300_000), None, "unmoved");
        // A message created before the mark is queued, not handed over.
        let late = MessageId::new(250_000);
        assert!(late < past);
        assert!(!h.reserve(&late, &ep).await);
        let recent = MessageId::new(299_500);
        assert!(h.reserve(&recent, &ep).await);
        // The wall clock stepped back: the mark stays.
        h.cancel(&recent, &ep);
        assert_eq!(h.next_mark(t3 + 2 * MARK_EVERY, 10_000), None);
    }

    /// A publish waits for room while the worker is full, and gets the place
    /// it frees; it queues (false) after `ROOM_WAIT`, and so do the next ones
    /// at once until the worker takes something; and at once when the worker
    /// stops.
    #[tokio::test(start_paused = true)]
    async fn a_publish_waits_for_room_until_the_worker_stalls() {
        let h = Arc::new(Handoff::default());
        h.recovered(MessageId::lower_bound(0));
        h.open(1);
        let ep = vec![EndpointId::new(1)];
        let reserve = |at: i64| {
            let (h, ep) = (h.clone(), ep.clone());
            tokio::spawn(async move {
                let msg = MessageId::new(at);
                let held = h.reserve(&msg, &ep).await;
                if held {
                    h.hand_over(tasks(&msg, &ep), message(&msg));
                }
                held
            })
        };
        let start = tokio::time::Instant::now();
        assert!(reserve(1_000).await.unwrap());
        let waiting = reserve(1_001);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(h.take(1, &mut |_| Claim::Take).0.len(), 1);
        assert!(waiting.await.unwrap());
        assert_eq!(start.elapsed(), Duration::ZERO);
        // Full, and nobody takes.
        assert!(!reserve(1_002).await.unwrap());
        assert_eq!(start.elapsed(), ROOM_WAIT);
        assert!(!reserve(1_003).await.unwrap());
        assert_eq!(start.elapsed(), ROOM_WAIT, "no second wait");
        h.take(1, &mut |_| Claim::Take);
        assert!(reserve(1_004).await.unwrap());
        // More endpoints than it ever holds waiting: queued at once.
        let two = [EndpointId::new(1), EndpointId::new(2)];
        assert!(!h.reserve(&MessageId::new(1_005), &two).await);
        // A publish waiting when the worker stops queues at once.
        let waiting = reserve(1_006);
        tokio::task::yield_now().await;
        h.close();
        assert!(!waiting.await.unwrap());
        assert_eq!(start.elapsed(), ROOM_WAIT, "no more time passed");
        assert_eq!(h.depth(), (1, 2), "1_004 waiting, two taken");
    }
}
