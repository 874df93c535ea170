//! Counters bumped on the hot path (messages per app, attempts per minute and
//! per endpoint-hour, the cadence of each event type), held in memory and
//! merged into the database in one go.
//!
//! A sled merge is a read and a compare-and-swap on a key that every publish or
//! attempt touches; doing it per message costs more than the message itself.
//! So deltas add up here and are merged by the commit thread before each group
//! flush and at least twice a second, and by any reader of these keys before
//! it reads, so reads see every bump made before them. A crash loses at most
//! the deltas of the last half second: these are statistics, not deliveries.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{Counts, Tree, keys};

#[derive(Default)]
struct Pending {
    counts: HashMap<Vec<u8>, Counts>,
    /// Message times per cadence key, in the order they were seen.
    seen: HashMap<Vec<u8>, Vec<u8>>,
}

#[derive(Default)]
pub(super) struct Counters(Mutex<Pending>);

impl Counters {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn count(&self, key: Vec<u8>, delta: Counts) {
        let mut p = self.pending();
        let c = p.counts.entry(key).or_default();
        *c = *c + delta;
    }

    /// One more message at `at_ms` for a cadence key (see `Cadence`).
    pub(super) fn observe(&self, key: Vec<u8>, at_ms: i64) {
        self.pending()
            .seen
            .entry(key)
            .or_default()
            .extend_from_slice(&at_ms.to_le_bytes());
    }

    /// Merges every pending delta into `tree`. Holds the lock throughout, so a
    /// reader that calls this sees every delta made before it.
    pub(super) fn apply(&self, tree: &Tree) -> sled::Result<()> {
        let mut p = self.pending();
        for (key, delta) in p.counts.drain() {
            tree.merge(key, delta.to_bytes())?;
        }
        for (key, times) in p.seen.drain() {
            debug_assert_eq!(key.first(), Some(&keys::ns::CADENCE));
            tree.merge(key, times)?;
        }
        Ok(())
    }
}
