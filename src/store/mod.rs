//! The durable store: one sled database behind domain operations.
//!
//! Owns every byte on disk. Its API speaks domain operations (`publish`,
//! `claim_due`, `record_attempt`, …), never sled types, so another engine can
//! implement the same interface later. Must not know about HTTP; nothing else
//! in the crate may `use sled`.
//!
//! Writes that belong together go to one tree: the hot ones (publishes,
//! claims, attempts) through the writer thread, in an order whose every prefix
//! is safe (see `writer`), the others in one `sled::Batch` (atomic, and far
//! cheaper than a multi-tree transaction). Uniqueness (a message's
//! `eventId`, an idempotency key) is claimed first with a compare-and-swap
//! on its index key, so concurrent writers cannot both win; an app's or an
//! endpoint's `uid` is written with its record in one transaction (see
//! `write_with_uid`).
//! Durability is separate: `commit()` waits for the group committer.

mod backup;
mod commit;
mod counters;
mod handoff;
pub mod keys;
mod maintenance;
pub mod records;
mod sealed;
mod tokens;
mod views;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::domain::{
    AppId, AttemptId, AttemptTrigger, EndpointId, MessageId, MessageStatus, TaskId,
};
pub use backup::{BackupSummary, RestoreError};
pub use commit::GroupCommit;
pub use handoff::{Handed, HandedMessage};
pub use maintenance::{Cadence, FailingClock, Reconciled, Retained};
pub use records::*;
pub use sealed::{DataKey, KeyError, Keyring, SealError};
pub use tokens::{TOKEN_PREFIX, token_hash};
pub use views::QueueSummary;

/// A store error. Its message carries its cause, and it gives no `source`:
/// a report of the whole chain (`{:#}`) printed each cause twice.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sled(sled::Error),
    #[error("corrupt record under key {key:?}: {error}")]
    Decode { key: String, error: postcard::Error },
    #[error("grouped write failed: {0}")]
    Grouped(Arc<StoreError>),
    #[error("the write was not applied (its job failed, or the writer thread stopped)")]
    WriteLost,
    #[error("could not make writes durable: {0}")]
    Commit(Arc<std::io::Error>),
    #[error("opening the database: {0}")]
    Open(std::io::Error),
    #[error("encrypted record under key {key:?}: {error}")]
    Sealed { key: String, error: SealError },
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        Self::Sled(e)
    }
}

impl StoreError {
    /// Another process (a running webhookd) has the database open.
    pub fn is_locked(&self) -> bool {
        matches!(self, Self::Sled(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock"))
    }
}

/// A unique name (uid, eventId) that is already taken, and by whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken(pub String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Ascending,
    Descending,
}

/// Which page of a listing. `cursor` is the last ID of the previous page.
#[derive(Clone, Debug)]
pub struct PageReq {
    pub cursor: Option<String>,
    pub order: Order,
    pub limit: usize,
    /// Inclusive lower bound on the ID (e.g. `MessageId::lower_bound(after)`).
    pub min_id: Option<String>,
    /// Exclusive upper bound on the ID.
    pub max_id: Option<String>,
    /// Look at no more than this many entries (for filters that may match rarely).
    pub scan_limit: Option<usize>,
}

impl PageReq {
    pub fn first(limit: usize) -> Self {
        Self {
            cursor: None,
            order: Order::Descending,
            limit,
            min_id: None,
            max_id: None,
            scan_limit: None,
        }
    }
}

#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub done: bool,
    /// Set when `scan_limit` cut the page short: the cursor to continue from
    /// (the last ID looked at, which may not be among `items`).
    pub resume: Option<String>,
}

/// What publish did.
#[derive(Debug)]
pub enum Published {
    /// Stored, with one queued delivery per endpoint in `endpoints`.
    Created { endpoints: usize },
    /// The app already has a message with this `eventId`.
    DuplicateEventId(MessageId),
}

/// What the worker does with a due task it looked at.
pub enum Claim {
    Take,
    /// Not now, but soon (its endpoint is at its cap and frees slots quickly):
    /// leave it where it is, without a write.
    Skip,
    /// Not now (its endpoint is at its concurrency cap and slow): move it back in
    /// the queue to this due time, so it does not sit in front of deliveries that
    /// can go.
    Defer(i64),
}

/// After an attempt: try again at a time, or stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    RetryAt(i64),
    Done,
}

/// A delivery status before and after an attempt was recorded.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub before: Option<DestRecord>,
    pub after: DestRecord,
}

/// Records named by a uid: apps, or the endpoints of one app. An index
/// entry's key holds the uid, its value the record's ID (see
/// `Store::write_with_uid`).
enum UidIndex<'a> {
    Apps,
    Endpoints(&'a AppId),
}

impl UidIndex<'_> {
    fn entry_key(&self, uid: &str) -> Vec<u8> {
        match self {
            UidIndex::Apps => keys::app_uid(uid),
            UidIndex::Endpoints(app) => keys::endpoint_uid(app, uid),
        }
    }

    fn record_key(&self, id: &str) -> Option<Vec<u8>> {
        match self {
            UidIndex::Apps => AppId::parse(id).map(|id| keys::app(&id)),
            UidIndex::Endpoints(app) => EndpointId::parse(id).map(|id| keys::endpoint(app, &id)),
        }
    }
}

/// Endpoint records opened before, by key, with the sealed bytes they were
/// opened from: reading an endpoint (every publish, every delivery) decrypts
/// and decodes it only when its stored bytes changed.
#[derive(Default)]
struct OpenedEndpoints(std::collections::HashMap<sled::IVec, (sled::IVec, EndpointRecord)>);

impl OpenedEndpoints {
    /// Entries kept at most; when full, it starts over.
    const CAPACITY: usize = 10_000;
}

/// Records as the store last read them, kept while no app or endpoint
/// record has been written since: they were read when
/// `Store::records_written` was `written`. Every publish asks for two kinds:
/// each app's endpoints (`endpoints_of`) and the apps found by ID or uid
/// (`find_app`).
struct Kept<K, V>(std::sync::Mutex<KeptRecords<K, V>>);

struct KeptRecords<K, V> {
    written: u64,
    /// Each value with the number of records it holds.
    by_key: std::collections::HashMap<K, (V, usize)>,
    /// Records in `by_key`, all values together.
    records: usize,
}

impl<K, V> KeptRecords<K, V> {
    fn clear(&mut self) {
        self.by_key.clear();
        self.records = 0;
    }
}

impl<K, V> Default for Kept<K, V> {
    fn default() -> Self {
        Kept(std::sync::Mutex::new(KeptRecords {
            written: 0,
            by_key: std::collections::HashMap::new(),
            records: 0,
        }))
    }
}

impl<K: std::hash::Hash + Eq, V: Clone> Kept<K, V> {
    /// Records kept at most, as many as `OpenedEndpoints` keeps; when full,
    /// it starts over.
    const CAPACITY: usize = OpenedEndpoints::CAPACITY;

    fn lock(&self) -> std::sync::MutexGuard<'_, KeptRecords<K, V>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value kept for `key`, if no record was written since it was read
    /// (`written` is the count now).
    fn get<Q>(&self, key: &Q, written: u64) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let kept = self.lock();
        if kept.written != written {
            return None;
        }
        kept.by_key.get(key).map(|(value, _)| value.clone())
    }

    /// Keeps `value` (`records` records) for `key`, read from the tree after
    /// the count of writes was `written`; not if a write came since.
    fn keep(&self, key: K, value: V, records: usize, written: u64) {
        let mut kept = self.lock();
        if kept.written < written {
            kept.clear();
            kept.written = written;
        }
        if kept.written != written || records > Self::CAPACITY {
            return;
        }
        if kept.records + records > Self::CAPACITY {
            kept.clear();
        }
        kept.records += records;
        if let Some((_, old)) = kept.by_key.insert(key, (value, records)) {
            kept.records -= old;
        }
    }
}

/// How an idempotency key was claimed.
pub enum IdemClaim {
    /// First use: handle the request, then `idempotency_finish`.
    New(IdemPending),
    /// A request with this key is still being handled.
    InProgress,
    /// Seen before: answer with this.
    Replay(StoredResponse),
}

/// An idempotency scope whose request is being handled by this process.
/// Kept in memory only: a crash ends the request, so that its retry after
/// the restart is handled anew instead of refused until the key expires.
/// Given up when its request ends, answered (`idempotency_finish`) or not
/// (dropped).
pub type IdemPending = HeldKey<[u8; 32], ()>;

/// The keys held by work under way in this process, each with what holds it.
type UnderWay<K, V> = Arc<std::sync::Mutex<HashMap<K, V>>>;

/// One key of an `UnderWay` map, given up when dropped: when its work is
/// over, whatever came of it.
pub struct HeldKey<K: Eq + std::hash::Hash, V> {
    map: UnderWay<K, V>,
    key: K,
}

impl<K: Eq + std::hash::Hash, V> HeldKey<K, V> {
    /// Holds `key` for `holder`, unless it is held already: then returns
    /// who holds it.
    fn take(map: &UnderWay<K, V>, key: K, holder: V) -> Result<Self, V>
    where
        K: Clone,
        V: Clone,
    {
        let mut held = map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(by) = held.get(&key) {
            return Err(by.clone());
        }
        held.insert(key.clone(), holder);
        Ok(Self {
            map: Arc::clone(map),
            key,
        })
    }
}

impl<K: Eq + std::hash::Hash, V> Drop for HeldKey<K, V> {
    fn drop(&mut self) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    /// Every record lives in the default tree (see `keys`).
    tree: Tree,
    /// Applies the writes of publishes and attempts in groups (see `writer`).
    /// Declared before `committer` so that it stops first.
    writer: Arc<writer::Writer>,
    /// Shared by every clone; when the last goes, the commit thread is stopped and
    /// joined, which releases the database (and its lock) deterministically.
    committer: Arc<GroupCommit>,
    /// Seals the records that hold secrets (see `sealed`).
    keys: Arc<Keyring>,
    /// The data directory (none for a temporary store).
    dir: Option<Arc<Path>>,
    /// Statistics bumped per message, merged in batches (see `counters`).
    counters: Arc<counters::Counters>,
    /// Endpoint records already decrypted (see `OpenedEndpoints`).
    opened: Arc<std::sync::Mutex<OpenedEndpoints>>,
    /// Counts the writes of app and endpoint records (see `records_changed`).
    records_written: Arc<std::sync::atomic::AtomicU64>,
    /// The endpoints of the apps published to lately (see `Kept`).
    app_endpoints: Arc<Kept<AppId, Arc<Vec<EndpointRecord>>>>,
    /// The apps published to lately, by the ID or uid they were found by
    /// (see `Kept`).
    found_apps: Arc<Kept<String, AppRecord>>,
    /// Held while expired leases go back on the queue: the worker's sweep and
    /// reconcile both do it, and two at once would each queue every task of
    /// a lease they both read (a second delivery of each).
    releasing_leases: Arc<std::sync::Mutex<()>>,
    /// Where the lease clock starts (see `lease_clock_ms`).
    lease_clock: std::time::Instant,
    /// The statuses of messages before this one keep no first attempt older
    /// than the attempt retention (see `delete_old_attempts`): its next pass
    /// starts here. Unset until a pass ran in this process.
    attempts_swept: Arc<std::sync::Mutex<Option<MessageId>>>,
    /// Deliveries handed from publishes to the worker in memory (see `handoff`).
    handoff: Arc<handoff::Handoff>,
    /// What was deleted or expunged while this store is open, for the
    /// attempts under way meanwhile (see `Withdrawn`).
    withdrawn: Arc<std::sync::Mutex<Withdrawn>>,
    /// The `eventId` entries claimed by publishes of this process still
    /// under way, with their message: an entry whose message is not written
    /// yet is one of these, or left by a crash (see `publish`).
    publishing: UnderWay<Vec<u8>, MessageId>,
    /// Idempotency scopes whose request is being handled (see `IdemPending`).
    idempotent_pending: UnderWay<[u8; 32], ()>,
    /// Tests: the next `claim_due` fails once it has decided.
    #[cfg(test)]
    pub(crate) fail_next_claim: Arc<std::sync::atomic::AtomicBool>,
    /// Declared last, so it is dropped after everything above: see `Closing`.
    closing: Arc<Closing>,
}

/// An `eventId` held by a publish under way (see `Store::claim_event_id`).
type EventIdClaim = HeldKey<Vec<u8>, MessageId>;

/// The database file of an opened store. When the last `Store` is gone, its
/// drop waits until the file is really closed (see `wait_until_closed`).
struct Closing(Option<std::path::PathBuf>);

impl Drop for Closing {
    fn drop(&mut self) {
        if let Some(file) = &self.0 {
            wait_until_closed(file);
        }
    }
}

/// Waits (at most two seconds) until this process no longer has `db_file`
/// open. sled's I/O threads can still hold it for a moment after the last
/// handle is gone, and with it the lock that opening the same directory
/// again needs.
fn wait_until_closed(db_file: &Path) {
    let held = || {
        std::fs::read_dir("/proc/self/fd").is_ok_and(|fds| {
            fds.flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == db_file))
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while held() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The database tree. Every write passes a gate, which a backup closes to copy
/// one consistent state; reads go straight through (`Deref`). The write
/// methods here shadow sled's, so no write can bypass the gate.
#[derive(Clone)]
struct Tree {
    inner: sled::Tree,
    gate: Arc<std::sync::RwLock<()>>,
    /// Bytes (keys and values) the writer thread has inserted since the
    /// store was opened (see `Store::bytes_written`).
    written: Arc<std::sync::atomic::AtomicU64>,
}

impl std::ops::Deref for Tree {
    type Target = sled::Tree;
    fn deref(&self) -> &sled::Tree {
        &self.inner
    }
}

impl Tree {
    fn open_gate(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds every write until the guard is dropped.
    fn close_gate(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.gate.write().unwrap_or_else(|p| p.into_inner())
    }

    fn insert<K: AsRef<[u8]>, V: Into<sled::IVec>>(
        &self,
        key: K,
        value: V,
    ) -> sled::Result<Option<sled::IVec>> {
        let _open = self.open_gate();
        self.inner.insert(key, value)
    }

    fn remove<K: AsRef<[u8]>>(&self, key: K) -> sled::Result<Option<sled::IVec>> {
        let _open = self.open_gate();
        self.inner.remove(key)
    }

    fn apply_batch(&self, batch: sled::Batch) -> sled::Result<()> {
        let _open = self.open_gate();
        self.inner.apply_batch(batch)
    }

    fn merge<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        key: K,
        value: V,
    ) -> sled::Result<Option<sled::IVec>> {
        let _open = self.open_gate();
        self.inner.merge(key, value)
    }

    fn compare_and_swap<K: AsRef<[u8]>, OV: AsRef<[u8]>, NV: Into<sled::IVec>>(
        &self,
        key: K,
        old: Option<OV>,
        new: Option<NV>,
    ) -> sled::Result<Result<(), sled::CompareAndSwapError>> {
        let _open = self.open_gate();
        self.inner.compare_and_swap(key, old, new)
    }
}

/// sled's settings for the database at `path`. A new database compresses its
/// log. sled cannot change that later, so a database made without (by a
/// release before compression) is opened as it was made; a backup restored
/// into a new data dir is compressed.
fn sled_config(path: &Path) -> sled::Config {
    // sled's own record of how the database was made: lines of text, then a
    // checksum. Unreadable (or absent: a new database) means compressed, and
    // sled reports any real problem.
    let made_without = std::fs::read(path.join("conf")).is_ok_and(|conf| {
        conf.split(|&b| b == b'\n')
            .any(|line| line == b"use_compression: false")
    });
    let config = sled::Config::new().path(path);
    if made_without {
        config
    } else {
        compressed(config)
    }
}

/// Compressed with LZ4 (the copy of sled in vendor/ is patched for that;
/// its log messages written with zstd before are still read): no entropy
/// stage, so it finds the repeats sled's log is made of (keys, record
/// layouts, pages written again) for less CPU than zstd's fastest levels
/// (BENCHMARKS.md, item 21). sled's snapshots stay zstd, at sled's default
/// level.
fn compressed(config: sled::Config) -> sled::Config {
    config.use_compression(true)
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    encode_with_room(value, 0)
}

/// `value` encoded into a vector sized for it and `extra` bytes more: sizing
/// first is cheaper than growing the vector as postcard writes (a
/// reallocation and a copy each time it doubles).
fn encode_with_room<T: Serialize>(value: &T, extra: usize) -> Vec<u8> {
    const ENCODABLE: &str = "records contain only postcard-encodable types";
    let size = postcard::experimental::serialized_size(value).expect(ENCODABLE);
    postcard::to_extend(value, Vec::with_capacity(size + extra)).expect(ENCODABLE)
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|error| StoreError::Decode {
        key: String::from_utf8_lossy(key).into_owned(),
        error,
    })
}

/// A delivery status as stored under `keys::dest`: the record, followed by
/// the delivery's first attempt when it was recorded with the status (see
/// `stage_attempt`).
fn dest_value(dest: &DestRecord) -> Vec<u8> {
    let attempt = dest.first_attempt.as_deref().unwrap_or_default();
    let mut v = encode_with_room(dest, attempt.len());
    v.extend_from_slice(attempt);
    v
}

fn decode_dest(key: &[u8], bytes: &[u8]) -> Result<DestRecord, StoreError> {
    let (mut dest, rest): (DestRecord, _) =
        postcard::take_from_bytes(bytes).map_err(|error| StoreError::Decode {
            key: String::from_utf8_lossy(key).into_owned(),
            error,
        })?;
    dest.first_attempt = (!rest.is_empty()).then(|| Arc::from(rest));
    Ok(dest)
}

/// Most items a maintenance job hands the writer thread at once (recover,
/// attempt retention), so that the attempts it records are not held up long.
const JOB_CHUNK: usize = 1_000;

/// Whether a status says its delivery waits for the queue entry due at
/// `due_ms`, so that moving the entry moves the status's time too. A resend
/// (or another entry) moved while a scheduled attempt is still to come at
/// another time leaves that time in the status: it decides what a failure
/// of the resend means.
fn dest_waits_for(dest: &DestRecord, due_ms: i64) -> bool {
    dest.next_attempt_ms == Some(due_ms)
}

/// The status at `key` as a writer job sees it (see `writer::Overlay`).
fn staged_dest(o: &writer::Overlay, key: &[u8]) -> Result<Option<DestRecord>, StoreError> {
    match o.get(key)? {
        Some(v) => decode_dest(key, &v).map(Some),
        None => Ok(None),
    }
}

/// The attempt of an entry under a message's attempts (`key`, `value`), as
/// a writer job sees it, with the key its record is under (the entry's, or
/// the one a store written before attempts moved there keeps it under).
fn staged_attempt_at(
    o: &writer::Overlay,
    key: Vec<u8>,
    value: &[u8],
) -> Result<(Vec<u8>, Option<AttemptRecord>), StoreError> {
    match legacy_attempt_key(&key, value) {
        Some(legacy) => {
            let attempt = match o.get(&legacy)? {
                Some(record) => Some(decode(&legacy, &record)?),
                None => None,
            };
            Ok((legacy, attempt))
        }
        None => {
            let attempt = decode(&key, value)?;
            Ok((key, Some(attempt)))
        }
    }
}

/// Changes the first attempt kept in the status at `key` with `change`,
/// which returns the bytes it freed (0: nothing to change, nothing written).
/// On the writer thread, so that no attempt recorded meanwhile writes back
/// the status as it was. Returns the bytes freed.
fn change_first_attempt(
    o: &mut writer::Overlay,
    key: &[u8],
    change: impl FnOnce(&mut Option<AttemptRecord>) -> u64,
) -> Result<u64, StoreError> {
    let Some(mut dest) = staged_dest(o, key)? else {
        return Ok(0);
    };
    let mut attempt = first_attempt(&dest)?;
    let freed = change(&mut attempt);
    if freed > 0 {
        dest.first_attempt = attempt.map(|a| Arc::from(encode(&a)));
        o.insert(key.to_vec(), dest_value(&dest));
    }
    Ok(freed)
}

/// Whether a delivery succeeded and is not due again (no resend queued or
/// under way): what lets retention take its message's payload, or the
/// disk bound the message.
fn delivered_and_not_due(d: &DestRecord) -> bool {
    d.status == MessageStatus::Success && d.next_attempt_ms.is_none()
}

/// The first attempt a status holds, if any.
fn first_attempt(dest: &DestRecord) -> Result<Option<AttemptRecord>, StoreError> {
    match &dest.first_attempt {
        Some(bytes) => decode(&keys::dest(&dest.msg_id, &dest.ep_id), bytes).map(Some),
        None => Ok(None),
    }
}

impl Store {
    /// Opens (or creates) the database under `dir`.
    /// Records sealed with an older key of `keys` are sealed again with its
    /// current key before this returns (which is how a key rotation completes).
    pub fn open(dir: &Path, cache_bytes: u64, keys: Keyring) -> Result<Store, StoreError> {
        let path = dir.join("db");
        let config = sled_config(&path);
        // sled counts a cached page by its size in the log, which compressed
        // is about half of what the page takes in memory.
        let cache_bytes = if config.use_compression {
            cache_bytes / 2
        } else {
            cache_bytes
        };
        let db = config.cache_capacity(cache_bytes).open()?;
        let db_file = path.join("db").canonicalize().map_err(StoreError::Open)?;
        let file = std::fs::File::open(&db_file).map_err(StoreError::Open)?;
        let mut store = Self::with_db(db, Some(file), keys)?;
        store.dir = Some(dir.into());
        store.closing = Arc::new(Closing(Some(db_file)));
        store.reseal_stale()?;
        Ok(store)
    }

    /// Closes the store, then opens its database once more and closes it
    /// again, which is when sled writes a snapshot of its page table: the
    /// next start reads that snapshot instead of replaying the log written
    /// since the last start (sled 0.34 writes one only when it opens a
    /// database). This takes about as long as that replay; a start after a
    /// crash still replays. Does nothing for a temporary store, and fails
    /// if another handle still holds the database.
    pub fn close_with_snapshot(self) -> Result<(), StoreError> {
        let Some(dir) = self.dir.clone() else {
            return Ok(());
        };
        drop(self);
        let path = dir.join("db");
        // Nothing is read, so no cache to speak of.
        let db = sled_config(&path).cache_capacity(1 << 20).open()?;
        drop(db);
        if let Ok(db_file) = path.join("db").canonicalize() {
            wait_until_closed(&db_file);
        }
        Ok(())
    }

    /// A throw-away database for tests.
    pub fn temporary() -> Result<Store, StoreError> {
        let db = compressed(sled::Config::new().temporary(true)).open()?;
        Self::with_db(db, None, Keyring::new(DataKey::generate()))
    }

    fn with_db(
        db: sled::Db,
        file: Option<std::fs::File>,
        keys: Keyring,
    ) -> Result<Store, StoreError> {
        let tree = Tree {
            inner: (*db).clone(),
            gate: Arc::default(),
            written: Arc::default(),
        };
        tree.set_merge_operator(maintenance::merge);
        let counters = Arc::new(counters::Counters::default());
        let handoff = Arc::new(handoff::Handoff::default());
        let before_flush = {
            let (counters, handoff, tree) =
                (Arc::clone(&counters), Arc::clone(&handoff), tree.clone());
            move || {
                if let Err(e) = counters.apply(&tree) {
                    tracing::error!(error = %e, "merging counters failed");
                }
                if let Some(mark) =
                    handoff.next_mark(std::time::Instant::now(), crate::domain::now_ms())
                    && let Err(e) = tree.insert(keys::handoff_mark(), mark.as_str().as_bytes())
                {
                    tracing::error!(error = %e, "moving the hand-off mark failed");
                }
            }
        };
        let committer =
            Arc::new(GroupCommit::start(db.clone(), file, before_flush).map_err(StoreError::Open)?);
        let writer = Arc::new(
            writer::Writer::start(tree.clone(), Arc::clone(&committer))
                .map_err(StoreError::Open)?,
        );
        Ok(Store {
            db,
            tree,
            writer,
            committer,
            keys: Arc::new(keys),
            dir: None,
            counters,
            opened: Arc::default(),
            records_written: Arc::default(),
            app_endpoints: Arc::default(),
            found_apps: Arc::default(),
            releasing_leases: Arc::default(),
            attempts_swept: Arc::default(),
            lease_clock: std::time::Instant::now(),
            handoff,
            withdrawn: Arc::default(),
            publishing: Arc::default(),
            idempotent_pending: Arc::default(),
            #[cfg(test)]
            fail_next_claim: Arc::default(),
            closing: Arc::new(Closing(None)),
        })
    }

    /// Waits until every write made before the call is durable (shared group commit).
    pub async fn commit(&self) -> Result<(), StoreError> {
        self.committer.commit().await.map_err(StoreError::Commit)
    }

    pub fn commit_blocking(&self) -> Result<(), StoreError> {
        self.committer.commit_blocking().map_err(StoreError::Commit)
    }

    /// How many handles to this database are alive (clones of this `Store`);
    /// the database closes, and releases its directory, when the last goes
    /// (its drop returns once the file is closed).
    pub fn handles(&self) -> usize {
        // Only clones of this `Store` hold `closing` (the writer thread holds
        // the committer too).
        Arc::strong_count(&self.closing)
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    /// Bytes (keys and values) of what the writer thread inserted since the
    /// store was opened: publishes, attempts, every record. The room that
    /// deletions free on disk is used by these first.
    pub fn bytes_written(&self) -> u64 {
        self.tree.written.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Can the store write? Used by the health check: not once a commit
    /// failed (see `failed`).
    pub fn ping(&self) -> Result<(), StoreError> {
        if let Some(e) = self.committer.failure() {
            return Err(StoreError::Commit(e));
        }
        self.tree.get(b"\0health")?;
        Ok(())
    }

    /// Resolves with the first commit that fails: nothing written after it
    /// can be made durable until the database is opened again.
    pub fn failed(&self) -> impl Future<Output = Arc<std::io::Error>> + use<> {
        self.committer.failed()
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.tree.get(key)? {
            Some(v) => Ok(Some(decode(key, &v)?)),
            None => Ok(None),
        }
    }

    /// Atomically takes `key` for `value` if it is free; returns the current owner if not.
    fn claim_unique(&self, key: &[u8], value: &str) -> Result<Result<(), Taken>, StoreError> {
        match self
            .tree
            .compare_and_swap(key, None as Option<&[u8]>, Some(value.as_bytes()))?
        {
            Ok(()) => Ok(Ok(())),
            Err(e) => Ok(Err(Taken(
                e.current
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
                    .unwrap_or_default(),
            ))),
        }
    }

    /// Adds `delta` to the counters under `key`.
    fn count(&self, key: Vec<u8>, delta: Counts) {
        self.counters.count(key, delta);
    }

    /// Merges the counters bumped so far into the database (readers of counters call it first).
    fn apply_counters(&self) -> Result<(), StoreError> {
        self.counters.apply(&self.tree)?;
        Ok(())
    }

    fn get_counts(&self, key: &[u8]) -> Result<Counts, StoreError> {
        self.apply_counters()?;
        Ok(self
            .tree
            .get(key)?
            .map(|v| Counts::from_bytes(&v))
            .unwrap_or_default())
    }

    fn get_str(&self, key: &[u8]) -> Result<Option<String>, StoreError> {
        Ok(self
            .tree
            .get(key)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// One page of the keys under `prefix`, whose remainder is an ID, mapped by `f`
    /// (which may drop an entry by returning `None`).
    fn page<T>(
        &self,
        prefix: &[u8],
        req: &PageReq,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<Option<T>, StoreError>,
    ) -> Result<Page<T>, StoreError> {
        let (lo, hi) = page_bounds(prefix, req);
        if range_is_empty(&lo, &hi) {
            return Ok(Page {
                items: Vec::new(),
                done: true,
                resume: None,
            });
        }
        let range = self.tree.range::<Vec<u8>, _>((lo, hi));
        let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = match req.order
        {
            Order::Ascending => Box::new(range),
            Order::Descending => Box::new(range.rev()),
        };
        fill_page(
            prefix.len(),
            iter.map(|e| e.map_err(StoreError::from)),
            req,
            |k, v| f(k, &v),
        )
    }

    // ----- applications -------------------------------------------------

    pub fn create_app(&self, app: &AppRecord) -> Result<Result<(), Taken>, StoreError> {
        let written = self.write_with_uid(
            &UidIndex::Apps,
            (keys::app(&app.id), encode(app)),
            app.id.as_str(),
            (None, app.uid.as_deref()),
            false,
        )?;
        self.records_changed();
        Ok(written.map(|_| ()))
    }

    /// Finds an app by ID or by `uid`; kept in memory until an app or
    /// endpoint record is written (see `Kept`).
    pub fn find_app(&self, id_or_uid: &str) -> Result<Option<AppRecord>, StoreError> {
        let written = self.records_written();
        if let Some(app) = self.found_apps.get(id_or_uid, written) {
            return Ok(Some(app));
        }
        let app = self.read_app(id_or_uid)?;
        if let Some(app) = &app {
            self.found_apps
                .keep(id_or_uid.to_owned(), app.clone(), 1, written);
        }
        Ok(app)
    }

    fn read_app(&self, id_or_uid: &str) -> Result<Option<AppRecord>, StoreError> {
        if let Some(id) = AppId::parse(id_or_uid)
            && let Some(app) = self.get(&keys::app(&id))?
        {
            return Ok(Some(app));
        }
        match self
            .get_str(&keys::app_uid(id_or_uid))?
            .and_then(|s| AppId::parse(&s))
        {
            // An entry left by a change or a deletion cut short names an
            // app that no longer carries that uid.
            Some(id) => Ok(self
                .get::<AppRecord>(&keys::app(&id))?
                .filter(|app| app.uid.as_deref() == Some(id_or_uid))),
            None => Ok(None),
        }
    }

    pub fn list_apps(&self, req: &PageReq) -> Result<Page<AppRecord>, StoreError> {
        self.page(&[keys::ns::APP], req, |k, v| Ok(Some(decode(k, v)?)))
    }

    /// Replaces an app's record (`old` as read, `new` with the change), its
    /// uid index with it (see `write_with_uid`). `Ok(Ok(false))` if the app
    /// was deleted since it was read: nothing is written then, so a change
    /// read before a deletion does not bring it back.
    pub fn update_app(
        &self,
        old: &AppRecord,
        new: &AppRecord,
    ) -> Result<Result<bool, Taken>, StoreError> {
        let written = self.write_with_uid(
            &UidIndex::Apps,
            (keys::app(&new.id), encode(new)),
            new.id.as_str(),
            (old.uid.as_deref(), new.uid.as_deref()),
            true,
        )?;
        self.records_changed();
        Ok(written)
    }

    /// Deletes an app with its endpoints, messages, statuses and attempts.
    /// Queued deliveries of a deleted app are dropped by the worker when they come due.
    pub fn delete_app(&self, app: &AppRecord) -> Result<(), StoreError> {
        self.apply_counters()?;
        let eps = self.endpoints_of(&app.id)?;
        self.deleting_endpoints(eps.iter().map(|ep| ep.id.clone()))?;
        let deleted = self.delete_app_marked(app, &eps);
        self.deleted_endpoints(deleted, eps.iter().map(|ep| &ep.id))
    }

    /// `delete_app` once its endpoints are marked deleted.
    fn delete_app_marked(&self, app: &AppRecord, eps: &[EndpointRecord]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        batch.remove(keys::app(&app.id));
        batch.remove(keys::app_message_count(&app.id));
        if let Some(uid) = &app.uid {
            batch.remove(keys::app_uid(uid));
        }
        for ep in eps {
            self.delete_endpoint_into(&mut batch, ep, false)?;
        }
        self.delete_tokens_into(&mut batch, &app.id)?;
        // The silence watchdog's cadences and alerts (after `apply_counters`,
        // so no cadence of its messages is merged back in after this).
        for prefix in [keys::ns::CADENCE, keys::ns::SILENCE] {
            let of_app = [&[prefix][..], app.id.as_str().as_bytes()].concat();
            for k in self.tree.scan_prefix(of_app).keys() {
                batch.remove(k?);
            }
        }
        let msgs_prefix = keys::messages_of(&app.id);
        for entry in self.tree.scan_prefix(&msgs_prefix) {
            let (k, v) = entry?;
            let msg: MessageRecord = decode(&k, &v)?;
            batch.remove(k);
            batch.remove(keys::payload(&msg.id));
            batch.remove(keys::all_messages(&msg.id));
            if let Some(eid) = &msg.event_id {
                batch.remove(keys::event_id(&app.id, eid));
            }
            for k in self.tree.scan_prefix(keys::dests_of(&msg.id)).keys() {
                let k = k?;
                batch.remove(keys::failed_from_dest_key(&k));
                batch.remove(k);
            }
            for entry in self.tree.scan_prefix(keys::attempts_of_msg(&msg.id)) {
                let (k, v) = entry?;
                if let Some(legacy) = legacy_attempt_key(&k, &v) {
                    batch.remove(legacy);
                }
                batch.remove(k);
            }
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    // ----- event types --------------------------------------------------

    pub fn get_event_type(&self, name: &str) -> Result<Option<EventTypeRecord>, StoreError> {
        self.get(&keys::event_type(name))
    }

    /// Creates an event type; an existing (not archived) one is `Taken`.
    pub fn create_event_type(&self, et: &EventTypeRecord) -> Result<Result<(), Taken>, StoreError> {
        let key = keys::event_type(et.name.as_str());
        let current = self.tree.get(&key)?;
        if let Some(cur) = &current {
            let cur: EventTypeRecord = decode(&key, cur)?;
            if !cur.archived {
                return Ok(Err(Taken(cur.name.to_string())));
            }
        }
        match self
            .tree
            .compare_and_swap(&key, current, Some(encode(et)))?
        {
            Ok(()) => Ok(Ok(())),
            Err(_) => Ok(Err(Taken(et.name.to_string()))),
        }
    }

    pub fn put_event_type(&self, et: &EventTypeRecord) -> Result<(), StoreError> {
        self.tree
            .insert(keys::event_type(et.name.as_str()), encode(et))?;
        Ok(())
    }

    pub fn delete_event_type(&self, name: &str) -> Result<(), StoreError> {
        self.tree.remove(keys::event_type(name))?;
        Ok(())
    }

    /// Event types by name; archived ones only when asked for.
    pub fn list_event_types(
        &self,
        req: &PageReq,
        include_archived: bool,
    ) -> Result<Page<EventTypeRecord>, StoreError> {
        self.page(&[keys::ns::EVENT_TYPE], req, |k, v| {
            let et: EventTypeRecord = decode(k, v)?;
            Ok((include_archived || !et.archived).then_some(et))
        })
    }

    // ----- endpoints ----------------------------------------------------

    pub fn create_endpoint(&self, ep: &EndpointRecord) -> Result<Result<(), Taken>, StoreError> {
        let written = self.write_with_uid(
            &UidIndex::Endpoints(&ep.app_id),
            self.seal_endpoint(ep),
            ep.id.as_str(),
            (None, ep.uid.as_deref()),
            false,
        )?;
        if written.is_ok() {
            self.records_changed();
        }
        Ok(written.map(|_| ()))
    }

    /// Finds an endpoint of `app` by ID or `uid`.
    pub fn find_endpoint(
        &self,
        app: &AppId,
        id_or_uid: &str,
    ) -> Result<Option<EndpointRecord>, StoreError> {
        if let Some(id) = EndpointId::parse(id_or_uid)
            && let Some(ep) = self.get_endpoint(app, &id)?
        {
            return Ok(Some(ep));
        }
        match self
            .get_str(&keys::endpoint_uid(app, id_or_uid))?
            .and_then(|s| EndpointId::parse(&s))
        {
            // See `find_app`.
            Some(id) => Ok(self
                .get_endpoint(app, &id)?
                .filter(|ep| ep.uid.as_deref() == Some(id_or_uid))),
            None => Ok(None),
        }
    }

    /// One endpoint of `app`: from its app's endpoints in memory while they
    /// are current (see `endpoints_of`; every delivery asks), else from the
    /// tree.
    pub fn get_endpoint(
        &self,
        app: &AppId,
        id: &EndpointId,
    ) -> Result<Option<EndpointRecord>, StoreError> {
        if let Some(eps) = self.app_endpoints.get(app, self.records_written()) {
            return Ok(eps
                .binary_search_by(|ep| ep.id.cmp(id))
                .ok()
                .map(|i| eps[i].clone()));
        }
        let key = keys::endpoint(app, id);
        match self.tree.get(&key)? {
            Some(v) => Ok(Some(self.open_endpoint(&key, &v)?)),
            None => Ok(None),
        }
    }

    /// Every endpoint of `app`, in ID order. Read from the tree only when an
    /// app or endpoint record was written since the last read (see `Kept`).
    pub fn endpoints_of(&self, app: &AppId) -> Result<Arc<Vec<EndpointRecord>>, StoreError> {
        let written = self.records_written();
        if let Some(eps) = self.app_endpoints.get(app, written) {
            return Ok(eps);
        }
        let eps: Arc<Vec<EndpointRecord>> = Arc::new(
            self.tree
                .scan_prefix(keys::endpoints_of(app))
                .map(|e| {
                    let (k, v) = e?;
                    self.open_endpoint(&k, &v)
                })
                .collect::<Result<_, _>>()?,
        );
        self.app_endpoints
            .keep(app.clone(), Arc::clone(&eps), eps.len(), written);
        Ok(eps)
    }

    /// The count of app and endpoint record writes (see `Kept`), read before
    /// the tree: a record read after this call is kept only if no write
    /// lands during that read (it moves the count on).
    pub fn records_written(&self) -> u64 {
        self.records_written
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Call after every write of an app or endpoint record, once it is in the
    /// tree: `find_app` and `endpoints_of` read the tree again from then on.
    fn records_changed(&self) {
        self.records_written
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    pub fn list_endpoints(
        &self,
        app: &AppId,
        req: &PageReq,
    ) -> Result<Page<EndpointRecord>, StoreError> {
        let prefix = keys::endpoints_of(app);
        self.page(&prefix, req, |id, v| {
            Ok(Some(self.open_endpoint(&[&prefix[..], id].concat(), v)?))
        })
    }

    /// Replaces an endpoint's record (`old` as read, `new` with the change),
    /// its uid index with it (see `write_with_uid`). `Ok(Ok(false))` if the
    /// endpoint was deleted since it was read: nothing is written then, so a
    /// change read before a deletion (a 410 that disables it, an edit) does
    /// not bring it back.
    pub fn update_endpoint(
        &self,
        old: &EndpointRecord,
        new: &EndpointRecord,
    ) -> Result<Result<bool, Taken>, StoreError> {
        let replaced = self.write_with_uid(
            &UidIndex::Endpoints(&new.app_id),
            self.seal_endpoint(new),
            new.id.as_str(),
            (old.uid.as_deref(), new.uid.as_deref()),
            true,
        )?;
        if replaced == Ok(true) {
            self.records_changed();
            // Enabled again: its failures before count no more towards
            // disabling it (`endpoint_health`).
            if old.disabled && !new.disabled {
                self.clear_failing_since(&new.id)?;
            }
        }
        Ok(replaced)
    }

    /// Writes an endpoint whose uid did not change (disable, rotate, headers);
    /// `false` if it was deleted since it was read (see `update_endpoint`).
    pub fn put_endpoint(&self, ep: &EndpointRecord) -> Result<bool, StoreError> {
        // The same uid before and after: nothing to claim, never `Taken`.
        Ok(self.update_endpoint(ep, ep)?.unwrap_or(false))
    }

    /// Writes a record (key, value) of `id` with its uid index: when the uid
    /// changes, the entry of `new_uid` names `id` and `old_uid`'s is removed
    /// if it still does. All in one sled transaction, which sled
    /// 0.34 runs with every other write held, so a record and its entry are
    /// written together and nothing comes between the looks and the writes.
    /// With `replace`, only over a record still there: `Ok(Ok(false))` if
    /// it was deleted since it was read, and nothing is written (a change
    /// read before a deletion does not bring it back). `Taken` if the new
    /// uid names another record that carries it; an entry naming a record
    /// that is gone or carries another uid (left by a deletion racing a
    /// rename, or by a crash before these were one transaction) is taken
    /// over.
    fn write_with_uid(
        &self,
        index: &UidIndex<'_>,
        (key, value): (Vec<u8>, Vec<u8>),
        id: &str,
        (old_uid, new_uid): (Option<&str>, Option<&str>),
        replace: bool,
    ) -> Result<Result<bool, Taken>, StoreError> {
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        let (old_uid, new_uid) = if old_uid == new_uid {
            (None, None)
        } else {
            (old_uid, new_uid)
        };
        let abort = |e: StoreError| ConflictableTransactionError::Abort(e);
        let written = {
            let _open = self.tree.open_gate();
            self.tree.inner.transaction(|t| {
                if replace && t.get(&key)?.is_none() {
                    return Ok(Ok(false));
                }
                if let Some(uid) = new_uid {
                    let entry = index.entry_key(uid);
                    if let Some(owner) = t.get(&entry)?
                        && owner != id.as_bytes()
                    {
                        let owner = String::from_utf8_lossy(&owner).into_owned();
                        let holds = match index.record_key(&owner) {
                            Some(k) => match t.get(&k)? {
                                Some(v) => {
                                    self.uid_of(index, &k, &v).map_err(abort)?.as_deref()
                                        == Some(uid)
                                }
                                None => false,
                            },
                            None => false,
                        };
                        if holds {
                            return Ok(Err(Taken(owner)));
                        }
                    }
                    t.insert(entry, id.as_bytes())?;
                }
                t.insert(key.as_slice(), value.as_slice())?;
                if let Some(uid) = old_uid {
                    let entry = index.entry_key(uid);
                    if t.get(&entry)?.is_some_and(|owner| owner == id.as_bytes()) {
                        t.remove(entry)?;
                    }
                }
                Ok(Ok(true))
            })
        };
        written.map_err(|e| match e {
            TransactionError::Storage(e) => StoreError::from(e),
            TransactionError::Abort(e) => e,
        })
    }

    /// The uid of a record of `index` as stored (`key`, `value`).
    fn uid_of(
        &self,
        index: &UidIndex<'_>,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<String>, StoreError> {
        Ok(match index {
            UidIndex::Apps => decode::<AppRecord>(key, value)?.uid,
            UidIndex::Endpoints(_) => self.open_endpoint(key, value)?.uid,
        })
    }

    /// An endpoint's key and its sealed record.
    fn seal_endpoint(&self, ep: &EndpointRecord) -> (Vec<u8>, Vec<u8>) {
        let key = keys::endpoint(&ep.app_id, &ep.id);
        let value = self.keys.seal(&key, &encode(ep));
        (key, value)
    }

    fn open_endpoint(&self, key: &[u8], value: &[u8]) -> Result<EndpointRecord, StoreError> {
        let opened = || self.opened.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((sealed, ep)) = opened().0.get(key)
            && sealed.as_ref() == value
        {
            return Ok(ep.clone());
        }
        let plain = self
            .keys
            .open(key, value)
            .map_err(|error| StoreError::Sealed {
                key: String::from_utf8_lossy(key).into_owned(),
                error,
            })?;
        let ep: EndpointRecord = decode(key, &plain)?;
        let mut cache = opened();
        if cache.0.len() >= OpenedEndpoints::CAPACITY {
            cache.0.clear();
        }
        cache.0.insert(key.into(), (value.into(), ep.clone()));
        Ok(ep)
    }

    /// Seals again, with the current key, every record sealed with an older one;
    /// fails on a record no configured key opens. Durable when it returns.
    fn reseal_stale(&self) -> Result<usize, StoreError> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for entry in self.tree.scan_prefix([keys::ns::ENDPOINT]) {
            let (k, v) = entry?;
            if self.keys.is_stale(&v) {
                let ep = self.open_endpoint(&k, &v)?;
                let sealed = self.keys.seal(&k, &encode(&ep));
                batch.insert(k, sealed);
                n += 1;
            }
        }
        if n > 0 {
            self.tree.apply_batch(batch)?;
            self.records_changed();
            self.db.flush()?;
        }
        Ok(n)
    }

    /// Before endpoints are deleted: an attempt to one of them records no
    /// status from now on (see `Withdrawn`).
    fn deleting_endpoints(
        &self,
        eps: impl IntoIterator<Item = EndpointId>,
    ) -> Result<(), StoreError> {
        self.withdraw(|w, now| w.endpoints.extend(eps.into_iter().map(|ep| (ep, now))))
    }

    /// After endpoints marked by `deleting_endpoints` were deleted, or not:
    /// if not, the marks go, so that their attempts record statuses again.
    fn deleted_endpoints<'a>(
        &self,
        deleted: Result<(), StoreError>,
        eps: impl IntoIterator<Item = &'a EndpointId>,
    ) -> Result<(), StoreError> {
        match deleted {
            Ok(()) => {
                self.records_changed();
                Ok(())
            }
            Err(e) => {
                let mut withdrawn = self.withdrawn.lock().expect("withdrawn lock poisoned");
                for ep in eps {
                    withdrawn.endpoints.remove(ep);
                }
                Err(e)
            }
        }
    }

    /// Records what is being deleted or expunged (see `Withdrawn`), then
    /// waits until the writer's group under way is applied.
    fn withdraw(&self, change: impl FnOnce(&mut Withdrawn, Instant)) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut withdrawn = self.withdrawn.lock().expect("withdrawn lock poisoned");
        withdrawn.prune(now);
        change(&mut withdrawn, now);
        drop(withdrawn);
        self.writer.write_blocking(|_| Ok(()))
    }

    /// Stages the removal of an endpoint with its statuses; the first
    /// attempts kept in them move under their messages if `keep_attempts`.
    fn delete_endpoint_into(
        &self,
        batch: &mut sled::Batch,
        ep: &EndpointRecord,
        keep_attempts: bool,
    ) -> Result<(), StoreError> {
        batch.remove(keys::endpoint(&ep.app_id, &ep.id));
        if let Some(uid) = &ep.uid {
            batch.remove(keys::endpoint_uid(&ep.app_id, uid));
        }
        for k in self.tree.scan_prefix(keys::endpoint_msgs_of(&ep.id)).keys() {
            let k = k?;
            if let Some(msg) =
                MessageId::parse(&String::from_utf8_lossy(&k[1 + ep.id.as_str().len()..]))
            {
                let dest_key = keys::dest(&msg, &ep.id);
                if keep_attempts {
                    // A status that cannot be read goes without its attempt
                    // rather than keep the endpoint from being deleted.
                    match self.dest(&msg, &ep.id).and_then(|d| match d {
                        Some(d) => first_attempt(&d),
                        None => Ok(None),
                    }) {
                        Ok(Some(a)) => {
                            batch.insert(keys::attempt_by_msg(&msg, &a.id), encode(&a));
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!(
                            error = %e,
                            message_id = %msg,
                            endpoint_id = %ep.id,
                            "deleting an endpoint: a delivery status that cannot be read is removed with its first attempt"
                        ),
                    }
                }
                batch.remove(dest_key);
            }
            batch.remove(k);
        }
        for k in self.tree.scan_prefix(keys::attempts_of_ep(&ep.id)).keys() {
            batch.remove(k?);
        }
        Ok(())
    }

    /// Deletes an endpoint and its delivery statuses. Its attempts stay listed under
    /// their messages; queued deliveries to it are dropped when they come due.
    pub fn delete_endpoint(&self, ep: &EndpointRecord) -> Result<(), StoreError> {
        self.deleting_endpoints([ep.id.clone()])?;
        let deleted = (|| -> Result<(), StoreError> {
            let mut batch = sled::Batch::default();
            self.delete_endpoint_into(&mut batch, ep, true)?;
            Ok(self.tree.apply_batch(batch)?)
        })();
        self.deleted_endpoints(deleted, [&ep.id])
    }

    // ----- messages -----------------------------------------------------

    /// Stores a message and queues one delivery per endpoint in `endpoints`, due at
    /// `due_ms`, or hands them to the worker in memory (see `handoff`), in a
    /// group with other writes, in a crash-safe order (see `writer`), and
    /// returns once that is durable (a shared group commit). `applied` runs
    /// on the writer thread as soon as the writes are applied, before the
    /// sync: the caller wakes the delivery worker there, so that the sync is
    /// not in every delivery's latency (a message whose sync then fails is
    /// one its client is told to publish again: at least once still holds).
    pub async fn publish(
        &self,
        msg: &MessageRecord,
        payload: &[u8],
        endpoints: &[&EndpointRecord],
        due_ms: i64,
        applied: impl FnOnce() + Send + 'static,
    ) -> Result<Published, StoreError> {
        // Held until the writes are applied (the message is there), or
        // given up with them when they never are.
        let claim = match &msg.event_id {
            Some(eid) => match self.claim_event_id(msg, eid)? {
                Ok(claim) => Some(claim),
                Err(owner) => return Ok(Published::DuplicateEventId(owner)),
            },
            None => None,
        };
        // Handed to the worker in memory if due now and it has room (see
        // `handoff`), else queued.
        let ep_ids: Vec<EndpointId> = endpoints.iter().map(|ep| ep.id.clone()).collect();
        let handed = !ep_ids.is_empty()
            && due_ms <= crate::domain::now_ms()
            && self.handoff.reserve(&msg.id, &ep_ids).await;
        // In this order (the writer applies them one by one, and a crash may
        // keep any prefix): the all-messages entry (with the payload), every
        // status and its index first; then the message, whose presence says
        // the publish was whole (an `eventId` retry after a crash returns it,
        // and reconcile requeues a status left without its queue entry); then
        // the queue entry, which the worker may claim at once and which needs
        // the message. A delivery handed over has neither a queue entry nor a
        // status until its attempt is recorded: its index entry is what a
        // start after a crash finds it by (see `handoff`).
        let mut writes: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(3 + 2 * endpoints.len());
        writes.push((
            keys::all_messages(&msg.id),
            all_messages_value(&msg.app_id, payload),
        ));
        for ep in endpoints {
            if !handed {
                let dest = DestRecord::new(
                    msg.id.clone(),
                    ep.id.clone(),
                    msg.app_id.clone(),
                    Some(due_ms),
                );
                writes.push((keys::dest(&msg.id, &ep.id), dest_value(&dest)));
            }
            writes.push((keys::endpoint_msg(&ep.id, &msg.id), Vec::new()));
        }
        if let Some(ms) = msg.payload_retention_ms {
            writes.push((
                keys::payload_expiry(msg.created_ms.saturating_add(ms), &msg.id),
                msg.app_id.as_str().as_bytes().to_vec(),
            ));
        }
        writes.push((keys::message(&msg.app_id, &msg.id), encode(msg)));
        // One queue entry for all the endpoints: a task for one, a fan for more.
        let fan = FanRecord {
            app_id: msg.app_id.clone(),
            msg_id: msg.id.clone(),
            ep_ids,
            due_ms,
        };
        match fan.ep_ids.len() {
            _ if handed => {}
            0 => {}
            1 => {
                let task = &fan.tasks()[0];
                writes.push((keys::queue(due_ms, &task.id), encode(task)));
            }
            _ => writes.push((keys::queue(due_ms, &TaskId::new(due_ms)), encode_fan(&fan))),
        }
        let handoff = Arc::clone(&self.handoff);
        let held = handed.then(|| {
            let message = HandedMessage {
                record: msg.clone(),
                payload: Arc::from(payload),
            };
            (fan.tasks(), Arc::new(message))
        });
        let written = self
            .writer
            .write_durable(insert_each(writes), move || {
                if let Some((tasks, message)) = held {
                    handoff.hand_over(tasks, message);
                }
                drop(claim);
                applied();
            })
            .await;
        match written {
            Ok(()) => {}
            // Applied (and handed over): only the sync failed.
            Err(e @ StoreError::Commit(_)) => return Err(e),
            Err(e) => {
                if handed {
                    self.handoff.cancel(&msg.id, &fan.ep_ids);
                }
                return Err(e);
            }
        }
        self.count(
            keys::app_message_count(&msg.app_id),
            Counts {
                success: 1,
                fail: 0,
            },
        );
        self.observe_message(&msg.app_id, &msg.event_type, msg.created_ms)?;
        Ok(Published::Created {
            endpoints: endpoints.len(),
        })
    }

    /// Claims `msg`'s `eventId` for its publish, or says which message has
    /// it. A publish holds it in memory first, so that an entry whose message
    /// is missing is taken over only if no publish of this process holds it
    /// (then a crash left it), never from a publish still under way.
    fn claim_event_id(
        &self,
        msg: &MessageRecord,
        eid: &str,
    ) -> Result<Result<EventIdClaim, MessageId>, StoreError> {
        let key = keys::event_id(&msg.app_id, eid);
        let claim = match EventIdClaim::take(&self.publishing, key.clone(), msg.id.clone()) {
            Ok(claim) => claim,
            Err(owner) => return Ok(Err(owner)),
        };
        if let Err(Taken(owner)) = self.claim_unique(&key, msg.id.as_str())? {
            // A crash between claiming the eventId and writing the message leaves an
            // index entry without a message: take it over rather than refuse forever.
            let owner_id = MessageId::parse(&owner);
            let owner_exists = match &owner_id {
                Some(id) => self.tree.contains_key(keys::message(&msg.app_id, id))?,
                None => false,
            };
            match owner_id {
                Some(id) if owner_exists => return Ok(Err(id)),
                _ => {
                    if self
                        .tree
                        .compare_and_swap(
                            &key,
                            Some(owner.as_bytes()),
                            Some(msg.id.as_str().as_bytes()),
                        )?
                        .is_err()
                    {
                        let winner = self.get_str(&key)?.and_then(|s| MessageId::parse(&s));
                        return Ok(Err(winner.unwrap_or(msg.id.clone())));
                    }
                }
            }
        }
        Ok(Ok(claim))
    }

    /// Finds a message of `app` by ID or by `eventId`.
    pub fn find_message(
        &self,
        app: &AppId,
        id_or_event_id: &str,
    ) -> Result<Option<MessageRecord>, StoreError> {
        if let Some(id) = MessageId::parse(id_or_event_id)
            && let Some(m) = self.get(&keys::message(app, &id))?
        {
            return Ok(Some(m));
        }
        match self
            .get_str(&keys::event_id(app, id_or_event_id))?
            .and_then(|s| MessageId::parse(&s))
        {
            Some(id) => self.get(&keys::message(app, &id)),
            None => Ok(None),
        }
    }

    pub fn get_message(
        &self,
        app: &AppId,
        id: &MessageId,
    ) -> Result<Option<MessageRecord>, StoreError> {
        self.get(&keys::message(app, id))
    }

    /// Messages of an app, filtered by `keep`.
    pub fn list_messages(
        &self,
        app: &AppId,
        req: &PageReq,
        mut keep: impl FnMut(&MessageRecord) -> bool,
    ) -> Result<Page<MessageRecord>, StoreError> {
        self.page(&keys::messages_of(app), req, |k, v| {
            let m: MessageRecord = decode(k, v)?;
            Ok(keep(&m).then_some(m))
        })
    }

    /// The raw payload bytes, unless expunged.
    pub fn payload(&self, msg: &MessageId) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(entry) = self.tree.get(keys::all_messages(msg))?
            && let Some(payload) = all_messages_payload(&entry)
        {
            return Ok(Some(payload.to_vec()));
        }
        // Kept under its own key by an earlier release.
        Ok(self.tree.get(keys::payload(msg))?.map(|v| v.to_vec()))
    }

    /// Removes a message's payload and the response bodies its attempts recorded;
    /// keeps the metadata. Returns the bytes removed from the attempts.
    pub fn expunge_content(&self, msg: &MessageRecord) -> Result<u64, StoreError> {
        // An attempt under way records no response body from now on, and
        // those recorded before are in the tree for the job below.
        self.withdraw(|w, now| {
            w.messages.insert(msg.id.clone(), now);
        })?;
        let freed = self.clear_content(msg, false)?.unwrap_or(0);
        // Asked for to remove what should not be kept: not to come back
        // after a crash.
        self.commit_blocking()?;
        Ok(freed)
    }

    /// Removes the response body one attempt of `msg` recorded, made durable
    /// before this returns. `false` if the message has no such attempt.
    /// On the writer thread, in turn with the attempts it records: a first
    /// attempt kept in its status is carried through every rewrite of it.
    pub fn expunge_attempt_content(
        &self,
        msg: &MessageId,
        id: &AttemptId,
    ) -> Result<bool, StoreError> {
        let (msg, id) = (msg.clone(), id.clone());
        let found = self.writer.write_blocking(move |o| {
            let key = keys::attempt_by_msg(&msg, &id);
            if let Some(v) = o.get(&key)? {
                let (at, attempt) = staged_attempt_at(o, key, &v)?;
                let Some(mut a) = attempt else {
                    return Ok(false);
                };
                if !a.response_body.is_empty() {
                    a.response_body = Vec::new();
                    o.insert(at, encode(&a));
                }
                return Ok(true);
            }
            for (k, _) in o.scan_prefix(&keys::dests_of(&msg))? {
                let mut found = false;
                change_first_attempt(o, &k, |first| match first {
                    Some(a) if a.id == id => {
                        found = true;
                        std::mem::take(&mut a.response_body).len() as u64
                    }
                    _ => 0,
                })?;
                if found {
                    return Ok(true);
                }
            }
            Ok(false)
        })?;
        if found {
            self.commit_blocking()?;
        }
        Ok(found)
    }

    /// Expunges a message in one job on the writer thread, in turn with the
    /// attempts it records and the resends it queues: an attempt recorded
    /// before is seen (its body taken out of its status or its record), and
    /// a resend claimed after finds the message expunged and is dropped
    /// (`drop_task`). Nothing is written back for a message deleted
    /// meanwhile. With `delivered_only` (payload retention, which takes
    /// messages delivered long ago and does not mark them for the attempts
    /// under way), a message with a delivery not delivered, or queued again
    /// (a resend asked for meanwhile, perhaps under way), is left as it is.
    /// `None` if nothing was expunged, else the bytes removed from the
    /// attempts.
    fn clear_content(
        &self,
        msg: &MessageRecord,
        delivered_only: bool,
    ) -> Result<Option<u64>, StoreError> {
        let (app, id) = (msg.app_id.clone(), msg.id.clone());
        self.writer.write_blocking(move |o| {
            let message_key = keys::message(&app, &id);
            let Some(raw) = o.get(&message_key)? else {
                return Ok(None);
            };
            let mut record: MessageRecord = decode(&message_key, &raw)?;
            let statuses = o.scan_prefix(&keys::dests_of(&id))?;
            if delivered_only {
                for (k, v) in &statuses {
                    if !delivered_and_not_due(&decode_dest(k, v)?) {
                        return Ok(None);
                    }
                }
            }
            // Marked first, so that a resend claimed from here on is dropped,
            // and the payload taken last: an expunge cut short by a crash
            // leaves the payload, by which payload retention finds the
            // message again (see `writer` on the order of a job's writes).
            record.expunged = true;
            o.insert(message_key, encode(&record));
            let mut freed = 0;
            for (key, _) in &statuses {
                freed += change_first_attempt(o, key, |a| match a {
                    Some(a) => std::mem::take(&mut a.response_body).len() as u64,
                    None => 0,
                })?;
            }
            for (k, v) in o.scan_prefix(&keys::attempts_of_msg(&id))? {
                let (at, attempt) = staged_attempt_at(o, k, &v)?;
                if let Some(mut a) = attempt.filter(|a| !a.response_body.is_empty()) {
                    freed += a.response_body.len() as u64;
                    a.response_body = Vec::new();
                    o.insert(at, encode(&a));
                }
            }
            if o.contains_key(&keys::all_messages(&id))? {
                o.insert(keys::all_messages(&id), all_messages_value(&app, &[]));
            }
            o.remove(keys::payload(&id));
            Ok(Some(freed))
        })
    }

    // ----- delivery statuses ------------------------------------------

    pub fn dest(&self, msg: &MessageId, ep: &EndpointId) -> Result<Option<DestRecord>, StoreError> {
        let key = keys::dest(msg, ep);
        match self.tree.get(&key)? {
            Some(v) => decode_dest(&key, &v).map(Some),
            None => Ok(None),
        }
    }

    /// The endpoints a message was sent to, with its status at each. A
    /// delivery handed over and not attempted yet has no status record: it
    /// is shown waiting (see `handoff`).
    pub fn dests_of(
        &self,
        msg: &MessageRecord,
        req: &PageReq,
    ) -> Result<Page<DestRecord>, StoreError> {
        let prefix = keys::dests_of(&msg.id);
        // Held first: one recorded since has its status by the scan below.
        let held = self.handoff.held_of(&msg.id);
        if held.is_empty() {
            return self.page(&prefix, req, |k, v| Ok(Some(decode_dest(k, v)?)));
        }
        let mut all = BTreeMap::new();
        for ep in held {
            let status = handed_over_status(&msg.id, msg.app_id.clone(), ep.clone());
            all.insert(keys::dest(&msg.id, &ep), status);
        }
        for entry in self.tree.scan_prefix(&prefix) {
            let (k, v) = entry?;
            all.insert(k.to_vec(), decode_dest(&k, &v)?);
        }
        page_of(&prefix, all, req, |_| true)
    }

    /// Messages sent to an endpoint (newest first by default), with their
    /// status there (waiting for one handed over and not attempted yet, as
    /// in `dests_of`).
    pub fn endpoint_messages(
        &self,
        ep: &EndpointId,
        req: &PageReq,
        mut keep: impl FnMut(&DestRecord) -> bool,
    ) -> Result<Page<DestRecord>, StoreError> {
        self.page(&keys::endpoint_msgs_of(ep), req, |k, _| {
            let Some(msg) = MessageId::parse(&String::from_utf8_lossy(k)) else {
                return Ok(None);
            };
            // Held first: one recorded since has its status by now.
            let held = self.handoff.is_held(&msg, ep);
            let dest = match self.dest(&msg, ep)? {
                Some(d) => d,
                None if held => {
                    let app = self
                        .tree
                        .get(keys::all_messages(&msg))?
                        .and_then(|v| all_messages_app(&v));
                    match app {
                        Some(app) => handed_over_status(&msg, app, ep.clone()),
                        None => return Ok(None),
                    }
                }
                None => return Ok(None),
            };
            Ok(Some(dest).filter(|d| keep(d)))
        })
    }

    // ----- attempts -----------------------------------------------------

    pub fn get_attempt(
        &self,
        msg: &MessageId,
        id: &AttemptId,
    ) -> Result<Option<AttemptRecord>, StoreError> {
        let key = keys::attempt_by_msg(msg, id);
        match self.tree.get(&key)? {
            Some(v) => self.attempt_at(&key, &v),
            None => Ok(self
                .first_attempts_of(msg)?
                .into_iter()
                .find(|a| &a.id == id)),
        }
    }

    /// An attempt of a message to an endpoint: under the message, or the
    /// first one, in its status.
    fn attempt_to(
        &self,
        msg: &MessageId,
        ep: &EndpointId,
        id: &AttemptId,
    ) -> Result<Option<AttemptRecord>, StoreError> {
        let key = keys::attempt_by_msg(msg, id);
        if let Some(v) = self.tree.get(&key)? {
            return self.attempt_at(&key, &v);
        }
        Ok(match self.dest(msg, ep)? {
            Some(d) => first_attempt(&d)?.filter(|a| &a.id == id),
            None => None,
        })
    }

    /// The first attempts of a message's deliveries kept in their statuses.
    fn first_attempts_of(&self, msg: &MessageId) -> Result<Vec<AttemptRecord>, StoreError> {
        let mut out = Vec::new();
        for entry in self.tree.scan_prefix(keys::dests_of(msg)) {
            let (k, v) = entry?;
            if let Some(a) = first_attempt(&decode_dest(&k, &v)?)? {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// The attempt of an entry under a message's attempts (`key`, `value`).
    fn attempt_at(&self, key: &[u8], value: &[u8]) -> Result<Option<AttemptRecord>, StoreError> {
        match legacy_attempt_key(key, value) {
            Some(legacy) => self.get(&legacy),
            None => decode(key, value).map(Some),
        }
    }

    pub fn attempts_of_msg(
        &self,
        msg: &MessageId,
        req: &PageReq,
        mut keep: impl FnMut(&AttemptRecord) -> bool,
    ) -> Result<Page<AttemptRecord>, StoreError> {
        let prefix = keys::attempts_of_msg(msg);
        let firsts = self.first_attempts_of(msg)?;
        if firsts.is_empty() {
            return self.page(&prefix, req, |id, v| {
                let key = [&prefix[..], id].concat();
                Ok(self.attempt_at(&key, v)?.filter(|a| keep(a)))
            });
        }
        let mut all = BTreeMap::new();
        for a in firsts {
            all.insert(keys::attempt_by_msg(msg, &a.id), a);
        }
        for entry in self.tree.scan_prefix(&prefix) {
            let (k, v) = entry?;
            if let Some(a) = self.attempt_at(&k, &v)? {
                all.insert(k.to_vec(), a);
            }
        }
        page_of(&prefix, all, req, keep)
    }

    pub fn attempts_of_ep(
        &self,
        ep: &EndpointId,
        req: &PageReq,
        mut keep: impl FnMut(&AttemptRecord) -> bool,
    ) -> Result<Page<AttemptRecord>, StoreError> {
        self.page(&keys::attempts_of_ep(ep), req, |id, msg| {
            let Some(id) = AttemptId::parse(&String::from_utf8_lossy(id)) else {
                return Ok(None);
            };
            let attempt = if msg.is_empty() {
                self.get(&keys::legacy_attempt(&id))?
            } else {
                match MessageId::parse(&String::from_utf8_lossy(msg)) {
                    Some(msg) => self.attempt_to(&msg, ep, &id)?,
                    None => None,
                }
            };
            Ok(attempt.filter(|a| keep(a)))
        })
    }

    // ----- the delivery queue -------------------------------------------

    /// Queues one more delivery (recover, a delivery handed over and given
    /// up) and marks its status as waiting. A job of the writer thread, like
    /// every change of a status (see `stage_enqueue`); blocks until applied.
    pub fn enqueue(&self, task: &TaskRecord) -> Result<(), StoreError> {
        let task = task.clone();
        self.writer.write_blocking(move |o| stage_enqueue(o, &task))
    }

    /// Queues one manual attempt of a message to an endpoint, due now (resend, redeliver).
    pub async fn queue_manual(
        &self,
        app: &AppId,
        msg: &MessageId,
        ep: &EndpointId,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let task = TaskRecord {
            id: TaskId::new(now_ms),
            app_id: app.clone(),
            msg_id: msg.clone(),
            ep_id: ep.clone(),
            attempt: 0,
            trigger: AttemptTrigger::Manual,
            due_ms: now_ms,
        };
        self.writer.write(move |o| stage_enqueue(o, &task)).await
    }

    /// Queues again, with a fresh retry schedule, every message that failed to `ep`
    /// among those created in `since_ms..until_ms` (and has not been
    /// delivered since, by a resend). Returns how many.
    pub fn recover(
        &self,
        ep: &EndpointId,
        since_ms: i64,
        until_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let req = PageReq {
            min_id: Some(MessageId::lower_bound(since_ms).to_string()),
            max_id: until_ms.map(|t| MessageId::lower_bound(t).to_string()),
            ..PageReq::first(usize::MAX - 1)
        };
        let failed = self.endpoint_messages(ep, &req, |d| d.status == MessageStatus::Fail)?;
        let tasks: Vec<TaskRecord> = failed
            .items
            .iter()
            .map(|d| TaskRecord {
                id: TaskId::new(now_ms),
                app_id: d.app_id.clone(),
                msg_id: d.msg_id.clone(),
                ep_id: d.ep_id.clone(),
                attempt: 0,
                trigger: AttemptTrigger::Scheduled,
                due_ms: now_ms,
            })
            .collect();
        let mut queued = 0;
        for chunk in tasks.chunks(JOB_CHUNK) {
            let chunk = chunk.to_vec();
            queued += self.writer.write_blocking(move |o| {
                let mut queued = 0;
                for task in &chunk {
                    let key = keys::dest(&task.msg_id, &task.ep_id);
                    if let Some(dest) = staged_dest(o, &key)?
                        && dest.status == MessageStatus::Fail
                    {
                        stage_enqueue_over(o, task, Some(dest));
                        queued += 1;
                    }
                }
                Ok(queued)
            })?;
        }
        Ok(queued)
    }

    /// Due time of the earliest queued delivery.
    pub fn next_due_ms(&self) -> Result<Option<i64>, StoreError> {
        let first = self
            .tree
            .scan_prefix([keys::ns::QUEUE])
            .keys()
            .next()
            .transpose()?;
        Ok(first.as_deref().and_then(keys::queue_due))
    }

    /// Milliseconds on the lease clock, which lease expiries are read on:
    /// monotonic, counted from when this store was opened. Not the wall
    /// clock, so that a step of it (a time sync, the clock set by hand) neither
    /// expires every lease in flight (a second delivery of each) nor holds
    /// leases back. A lease never outlives its process (at start every one
    /// is released), so a clock that starts at zero each time is enough.
    pub fn lease_clock_ms(&self) -> i64 {
        self.lease_clock.elapsed().as_millis() as i64
    }

    /// Takes up to `limit` due deliveries under one lease expiring at
    /// `lease_until_ms` on the lease clock (see `lease_clock_ms` and
    /// `release_lease`); due times, and `now_ms`, are on the wall clock.
    /// `decide` sees each due task in due order and may defer it. At most
    /// `scan_limit` queue entries are looked at, so a long run of deferred
    /// tasks cannot make one call expensive. A fan entry (see `FanRecord`) is
    /// looked at task by task: what it still holds stays in its place. A
    /// deferred delivery's status gets its new due time. The queue is read
    /// here; the moves are written by the writer thread (see `writer`), so
    /// there must be only one caller at a time (the delivery worker).
    pub async fn claim_due(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
        scan_limit: usize,
        mut decide: impl FnMut(&TaskRecord) -> Claim,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let mut taken = Vec::new();
        // Deferred tasks and fans left smaller, then the entries that go.
        let mut inserts: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut removals: Vec<sled::IVec> = Vec::new();
        // The statuses of the deferred, and their new due times.
        let mut moved: Vec<(Vec<u8>, i64, i64)> = Vec::new();
        let range = self
            .tree
            .range(vec![keys::ns::QUEUE]..keys::queue_due_end(now_ms))
            .take(scan_limit);
        for entry in range {
            if taken.len() == limit {
                break;
            }
            let (k, v) = entry?;
            let queued = match Queued::decode(&k, &v) {
                Ok(q) => q,
                Err(e) => {
                    // Else it would stop every claim from here on. Its
                    // deliveries' statuses are left waiting with nothing
                    // queued, which reconcile queues again.
                    tracing::error!(error = %e, "a queue entry could not be read; it is removed");
                    removals.push(k);
                    continue;
                }
            };
            let mut left = Vec::new();
            for task in queued.tasks() {
                if taken.len() == limit {
                    left.push(task.ep_id);
                    continue;
                }
                match decide(&task) {
                    Claim::Take => taken.push(task),
                    Claim::Skip => left.push(task.ep_id),
                    Claim::Defer(due_ms) => {
                        let key = keys::queue(due_ms, &task.id);
                        if key.as_slice() == k.as_ref() {
                            left.push(task.ep_id);
                        } else {
                            moved.push((
                                keys::dest(&task.msg_id, &task.ep_id),
                                task.due_ms,
                                due_ms,
                            ));
                            inserts.push((key, encode(&TaskRecord { due_ms, ..task })));
                        }
                    }
                }
            }
            match queued {
                _ if left.is_empty() => removals.push(k),
                Queued::Fan(fan) if left.len() < fan.ep_ids.len() => inserts.push((
                    k.to_vec(),
                    encode_fan(&FanRecord {
                        ep_ids: left,
                        ..fan
                    }),
                )),
                _ => {}
            }
        }
        if taken.is_empty() && inserts.is_empty() && removals.is_empty() {
            return Ok(taken);
        }
        let lease = taken
            .first()
            .map(|first| (keys::claim_lease(lease_until_ms, &first.id), encode(&taken)));
        #[cfg(test)]
        if self
            .fail_next_claim
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(StoreError::WriteLost);
        }
        self.writer
            .write(move |o| {
                // The new keys first: cut in between by a crash, a delivery
                // is there twice rather than not at all.
                if let Some((key, tasks)) = lease {
                    o.insert(key, tasks);
                }
                for (k, v) in inserts {
                    o.insert(k, v);
                }
                for k in removals {
                    o.remove(k.to_vec());
                }
                // A waiting status says when its delivery is due now (one
                // that cannot be read does not hold the claim up).
                for (key, was_due, due_ms) in moved {
                    if let Ok(Some(mut dest)) = staged_dest(o, &key)
                        && dest_waits_for(&dest, was_due)
                    {
                        dest.next_attempt_ms = Some(due_ms);
                        o.insert(key, dest_value(&dest));
                    }
                }
                Ok(())
            })
            .await?;
        Ok(taken)
    }

    /// Brings the deliveries to `ep_id` that wait in the queue due at one of
    /// `times` (in order: a throttle's line, see the delivery worker) forward
    /// to `now_ms`, in their order (the queue orders by due time, then by
    /// task ID, which starts with its message's time). One claimed or moved
    /// meanwhile is left alone. Returns how many were moved.
    pub async fn bring_forward(
        &self,
        ep_id: &EndpointId,
        times: &[i64],
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        /// Moves per writer job, so that a long line does not hold up the
        /// writes of publishes and attempts.
        const CHUNK: usize = 1_000;
        let mut found = Vec::new();
        // Only the entries due at those times (a slow line may span a day
        // of other endpoints' entries).
        for &due in times {
            for entry in self
                .tree
                .range(keys::queue_due_end(due - 1)..keys::queue_due_end(due))
            {
                let (k, v) = entry?;
                if let Ok(Queued::One(task)) = Queued::decode(&k, &v)
                    && task.ep_id == *ep_id
                {
                    found.push((k, v, task));
                }
            }
        }
        let mut moved = 0;
        while !found.is_empty() {
            let rest = found.split_off(found.len().min(CHUNK));
            let chunk = std::mem::replace(&mut found, rest);
            moved += self
                .writer
                .write(move |o| {
                    let mut moved = 0;
                    for (k, v, task) in chunk {
                        let new_key = keys::queue(now_ms, &task.id);
                        if new_key.as_slice() == k.as_ref()
                            || o.get(&k)?.as_deref() != Some(v.as_ref())
                        {
                            continue;
                        }
                        // The new key first, as in `claim_due`.
                        let key = keys::dest(&task.msg_id, &task.ep_id);
                        o.insert(
                            new_key,
                            encode(&TaskRecord {
                                due_ms: now_ms,
                                ..task
                            }),
                        );
                        o.remove(k.to_vec());
                        if let Ok(Some(mut dest)) = staged_dest(o, &key)
                            && dest_waits_for(&dest, task.due_ms)
                        {
                            dest.next_attempt_ms = Some(now_ms);
                            o.insert(key, dest_value(&dest));
                        }
                        moved += 1;
                    }
                    Ok(moved)
                })
                .await?;
        }
        Ok(moved)
    }

    /// Gives up the lease of a claim (`claim_due` with `lease_until_ms`,
    /// whose first task was `first`). Call it once every delivery of the claim
    /// is recorded or dropped: until then, a crash or the lease's expiry puts
    /// all of them back on the queue.
    pub async fn release_lease(
        &self,
        lease_until_ms: i64,
        first: &TaskId,
    ) -> Result<(), StoreError> {
        let key = keys::claim_lease(lease_until_ms, first);
        self.writer
            .write(move |o| {
                o.remove(key);
                Ok(())
            })
            .await
    }

    /// The worker runs: publishes may hand it their deliveries (see
    /// `handoff`), up to `capacity` waiting to be taken; once it is full, they
    /// wait for room. Nothing is handed over before `recover_handed_over`
    /// ran. Call once.
    pub fn open_handoff(&self, capacity: usize) {
        self.handoff.open(capacity);
    }

    /// The worker stopped: publishes queue their deliveries again.
    pub fn close_handoff(&self) {
        self.handoff.close();
    }

    /// Takes up to `limit` deliveries handed over by publishes, as `decide`
    /// says (as in `claim_due`). Returns those taken, each with its message
    /// and held in memory, with no queue entry and no lease, until
    /// `handed_over_done`; and those deferred, which the caller queues with
    /// `queue_deferred` (until then they are held too).
    pub fn take_handed_over(
        &self,
        limit: usize,
        decide: &mut impl FnMut(&TaskRecord) -> Claim,
    ) -> (Vec<Handed>, Vec<TaskRecord>) {
        self.handoff.take(limit, decide)
    }

    /// Queues the deliveries `take_handed_over` deferred, each at its new
    /// due time, with the status they did not have yet (written first: a
    /// crash between the two leaves a waiting status, which reconcile
    /// queues), and lets them go. If the write fails they stay held, and
    /// the next start queues them.
    pub async fn queue_deferred(&self, deferred: Vec<TaskRecord>) -> Result<(), StoreError> {
        if deferred.is_empty() {
            return Ok(());
        }
        let mut entries = Vec::with_capacity(2 * deferred.len());
        for t in &deferred {
            let dest = DestRecord::of_task(t, Some(t.due_ms));
            entries.push((keys::dest(&t.msg_id, &t.ep_id), dest_value(&dest)));
            entries.push((keys::queue(t.due_ms, &t.id), encode(t)));
        }
        self.writer.write(insert_each(entries)).await?;
        for t in &deferred {
            self.handoff.release(&t.msg_id, &t.ep_id);
        }
        Ok(())
    }

    /// A delivery taken by `take_handed_over` is recorded or dropped.
    pub fn handed_over_done(&self, task: &TaskRecord) {
        self.handoff.release(&task.msg_id, &task.ep_id);
    }

    /// A delivery taken by `take_handed_over` could not be recorded: it is
    /// queued, due `now_ms`, with a status if it has none yet, and let go.
    /// If that fails it stays held (the next start queues it).
    pub fn requeue_handed_over(&self, task: &TaskRecord, now_ms: i64) -> Result<(), StoreError> {
        self.enqueue(&TaskRecord {
            id: TaskId::new(now_ms),
            due_ms: now_ms,
            ..task.clone()
        })?;
        self.handoff.release(&task.msg_id, &task.ep_id);
        Ok(())
    }

    /// Puts the tasks of leases that expired at or before `lease_now_ms` (on
    /// the lease clock: see `lease_clock_ms`) back on the queue, due `due_ms`.
    /// At startup (no worker alive) pass `i64::MAX` to release every lease.
    pub fn release_expired_leases(
        &self,
        lease_now_ms: i64,
        due_ms: i64,
    ) -> Result<usize, StoreError> {
        let _one_at_a_time = self
            .releasing_leases
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for tag in [keys::ns::LEASE, keys::ns::CLAIM_LEASE] {
            for entry in self
                .tree
                .range(vec![tag]..keys::lease_expired_end(tag, lease_now_ms))
            {
                let (k, v) = entry?;
                for mut task in leased_tasks(&k, &v)? {
                    // A claim's lease is kept whole until all its attempts
                    // are over: a first attempt that succeeded before the
                    // crash (or the error that kept the lease) is not
                    // made again. (Retries look at their status when they
                    // go.)
                    if task.attempt == 0
                        && task.trigger == AttemptTrigger::Scheduled
                        && self
                            .dest(&task.msg_id, &task.ep_id)?
                            .is_some_and(|d| d.status == MessageStatus::Success)
                    {
                        continue;
                    }
                    task.due_ms = due_ms;
                    batch.insert(keys::queue(due_ms, &task.id), encode(&task));
                    n += 1;
                }
                batch.remove(k);
            }
        }
        if n > 0 {
            self.tree.apply_batch(batch)?;
        }
        Ok(n)
    }

    /// Every queue entry, in due order.
    fn queued(&self) -> impl Iterator<Item = Result<Queued, StoreError>> + '_ {
        self.tree.scan_prefix([keys::ns::QUEUE]).map(|entry| {
            let (k, v) = entry?;
            Queued::decode(&k, &v)
        })
    }

    /// Every leased task.
    fn leased(&self) -> impl Iterator<Item = Result<TaskRecord, StoreError>> + '_ {
        [keys::ns::LEASE, keys::ns::CLAIM_LEASE]
            .into_iter()
            .flat_map(|tag| self.tree.scan_prefix([tag]))
            .flat_map(|entry| {
                let tasks = entry
                    .map_err(StoreError::from)
                    .and_then(|(k, v)| leased_tasks(&k, &v));
                match tasks {
                    Ok(tasks) => tasks.into_iter().map(Ok).collect::<Vec<_>>(),
                    Err(e) => vec![Err(e)],
                }
            })
    }

    /// Deliveries waiting (queued, or handed over and not taken yet) and in
    /// flight (leased, or taken from the hand-off).
    pub fn queue_depth(&self) -> (usize, usize) {
        let (ready, taken) = self.handoff.depth();
        let queued: usize = self.queued().map(|q| q.map_or(1, |q| q.len())).sum();
        let leased = self.leased().count();
        (queued + ready, leased + taken)
    }

    /// Finishes a claimed task without an attempt (its endpoint is disabled,
    /// its message expunged): `status` becomes the delivery status (made
    /// for a delivery handed over, which has none yet), unless the delivery
    /// succeeded before (a resend dropped leaves it delivered). The claim's
    /// lease stays until `release_lease`.
    pub async fn drop_task(
        &self,
        task: &TaskRecord,
        status: MessageStatus,
    ) -> Result<(), StoreError> {
        let task = task.clone();
        self.writer
            .write(move |o| {
                let dest_key = keys::dest(&task.msg_id, &task.ep_id);
                // A delivery handed over by its publish has no status yet.
                let mut dest =
                    staged_dest(o, &dest_key)?.unwrap_or_else(|| DestRecord::of_task(&task, None));
                if dest.status != MessageStatus::Success {
                    dest.status = status;
                }
                dest.next_attempt_ms = None;
                o.insert(dest_key, dest_value(&dest));
                set_failed_index(o, &dest);
                Ok(())
            })
            .await
    }

    /// Finishes a claimed task whose endpoint, app or message is gone, without
    /// an attempt: a status that an attempt recorded as they were deleted
    /// wrote back (a retry, a dead letter, a delivery to nowhere listed
    /// under the message) goes with its indexes (see `stage_forget`). The
    /// claim's lease stays until `release_lease`.
    pub async fn forget_delivery(&self, task: &TaskRecord) -> Result<(), StoreError> {
        let (app, msg, ep) = (task.app_id.clone(), task.msg_id.clone(), task.ep_id.clone());
        self.writer
            .write(move |o| stage_forget(o, &app, &msg, &ep))
            .await
    }

    /// Records an attempt of a claimed task and what follows it (grouped with
    /// other writes: see `writer`): the attempt and its index are written, a
    /// retry (if any) is queued and the delivery status is updated. The
    /// claim's lease stays until `release_lease`. Then the per-minute and
    /// per-endpoint-hour counters are bumped (in memory, merged in batches:
    /// see `counters`). `None` if the endpoint was deleted meanwhile: the
    /// attempt is then only listed under its message, with no status.
    pub async fn record_attempt(
        &self,
        task: &TaskRecord,
        attempt: &AttemptRecord,
        next: Next,
    ) -> Result<Option<Recorded>, StoreError> {
        // Encoded here rather than on the writer thread, which gets only
        // what it writes and the few fields it reads, not a copy of the
        // record (with its header lists) to free there.
        let staged = StagedAttempt {
            id: attempt.id.clone(),
            status: attempt.status,
            timestamp_ms: attempt.timestamp_ms,
            response_status_code: attempt.response_status_code,
            encoded: Arc::from(encode(attempt)),
        };
        let task_c = task.clone();
        let withdrawn = Arc::clone(&self.withdrawn);
        let recorded = self
            .writer
            .write(move |o| {
                let (deleted, expunged) = withdrawn
                    .lock()
                    .expect("withdrawn lock poisoned")
                    .of(&task_c);
                let staged = if expunged {
                    staged.without_response_body()?
                } else {
                    staged
                };
                if deleted {
                    stage_attempt_of_deleted(o, &task_c, &staged)?;
                    return Ok(None);
                }
                stage_attempt(o, &task_c, &staged, next).map(Some)
            })
            .await?;
        let delta = if attempt.status == MessageStatus::Success {
            Counts {
                success: 1,
                fail: 0,
            }
        } else {
            Counts {
                success: 0,
                fail: 1,
            }
        };
        self.count(keys::minute_stats(attempt.timestamp_ms / 60_000), delta);
        self.count(
            keys::endpoint_hour_stats(&task.ep_id, attempt.timestamp_ms / 3_600_000),
            delta,
        );
        Ok(recorded)
    }

    // ----- idempotency --------------------------------------------------

    /// Claims an idempotency scope (token, path, key) for a new request, or reports
    /// what happened to the first one. Answers older than `ttl_ms` count as
    /// gone. A request under way is known by this process only (see
    /// `IdemPending`).
    pub fn idempotency_begin(
        &self,
        scope: &[u8; 32],
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<IdemClaim, StoreError> {
        // Held first, then read: a request answered in between is found
        // answered, never handled twice.
        let Ok(claim) = IdemPending::take(&self.idempotent_pending, *scope, ()) else {
            return Ok(IdemClaim::InProgress);
        };
        let key = keys::idempotency(scope);
        if let Some(cur) = self.tree.get(&key)? {
            let rec: IdempotencyRecord = decode(&key, &cur)?;
            // An answer-less record is a request under way in a store
            // written before those were kept in memory: a crash ended it.
            if let Some(r) = rec.response
                && rec.created_ms + ttl_ms > now_ms
            {
                return Ok(IdemClaim::Replay(r));
            }
        }
        Ok(IdemClaim::New(claim))
    }

    /// Stores the response for a claimed idempotency scope (`None`: forget
    /// it, e.g. after a server error, so that a retry is handled anew). The
    /// claim is the caller's to drop, once that is durable.
    pub fn idempotency_finish(
        &self,
        claim: &IdemPending,
        now_ms: i64,
        response: Option<StoredResponse>,
    ) -> Result<(), StoreError> {
        let key = keys::idempotency(&claim.key);
        match response {
            Some(r) => {
                self.tree.insert(
                    key,
                    encode(&IdempotencyRecord {
                        created_ms: now_ms,
                        response: Some(r),
                    }),
                )?;
            }
            None => {
                self.tree.remove(key)?;
            }
        }
        Ok(())
    }
}

/// Endpoints deleted and messages expunged while the store is open. An
/// attempt under way as its endpoint was deleted records no status for it
/// (without this it wrote its status back after the deletion, or between
/// the deletion's read of the statuses and its batch, which then took the
/// status with the first attempt in it); one under way as its message was
/// expunged records no response body (which the expunge had missed). Each
/// is marked before the change reads what it changes, and the writer's
/// group under way is let finish (`Store::withdraw`), so that an attempt
/// staged before is in the tree by then and one staged after sees the
/// mark. A mark is needed only while an attempt begun before it may be
/// under way: at most `request_timeout`, itself at most an hour
/// (`config::MAX_REQUEST_TIMEOUT`); marks are kept twice that.
#[derive(Default)]
struct Withdrawn {
    endpoints: HashMap<EndpointId, Instant>,
    messages: HashMap<MessageId, Instant>,
}

// A mark outlasts any attempt begun before it.
const _: () =
    assert!(Withdrawn::KEPT.as_secs() >= 2 * crate::config::MAX_REQUEST_TIMEOUT.as_secs());

impl Withdrawn {
    const KEPT: Duration = Duration::from_secs(2 * 3600);

    /// Whether `task`'s endpoint was deleted, and its message expunged (an
    /// empty map answers without hashing the ID).
    fn of(&self, task: &TaskRecord) -> (bool, bool) {
        (
            self.endpoints.contains_key(&task.ep_id),
            self.messages.contains_key(&task.msg_id),
        )
    }

    /// Forgets the marks no attempt under way can need any more.
    fn prune(&mut self, now: Instant) {
        let fresh = |at: &mut Instant| now.saturating_duration_since(*at) < Self::KEPT;
        self.endpoints.retain(|_, at| fresh(at));
        self.messages.retain(|_, at| fresh(at));
    }
}

/// What `stage_attempt` needs of an attempt record: the record encoded,
/// and the fields it reads.
struct StagedAttempt {
    id: AttemptId,
    status: MessageStatus,
    timestamp_ms: i64,
    response_status_code: u16,
    encoded: Arc<[u8]>,
}

impl StagedAttempt {
    /// The same attempt without the response body (its message expunged).
    fn without_response_body(self) -> Result<Self, StoreError> {
        let mut a: AttemptRecord = decode(self.id.as_str().as_bytes(), &self.encoded)?;
        if a.response_body.is_empty() {
            return Ok(self);
        }
        a.response_body = Vec::new();
        Ok(Self {
            encoded: Arc::from(encode(&a)),
            ..self
        })
    }
}

/// Takes away the status of a delivery whose endpoint, app or message is
/// gone, with its indexes; its first attempt stays listed under the message
/// if that is still there, as deleting an endpoint leaves it.
fn stage_forget(
    o: &mut writer::Overlay,
    app: &AppId,
    msg: &MessageId,
    ep: &EndpointId,
) -> Result<(), StoreError> {
    let first = match staged_dest(o, &keys::dest(msg, ep))? {
        Some(d) => first_attempt(&d)?,
        None => None,
    };
    // Off the endpoint's index, as a deletion takes all of an endpoint's or
    // a message's entries there.
    if let Some(a) = first {
        list_under_message(o, app, msg, &a.id, &encode(&a))?;
        o.remove(keys::attempt_by_ep(ep, &a.id));
    }
    // The indexes too when there is no status: a delivery handed over has
    // only its endpoint's index entry.
    for k in keys::dest_and_indexes(msg, ep) {
        o.remove(k);
    }
    Ok(())
}

/// An attempt whose endpoint was deleted while it was under way: listed
/// under its message, as the deletion leaves first attempts, with no
/// status, index entry or retry.
fn stage_attempt_of_deleted(
    o: &mut writer::Overlay,
    task: &TaskRecord,
    attempt: &StagedAttempt,
) -> Result<(), StoreError> {
    list_under_message(o, &task.app_id, &task.msg_id, &attempt.id, &attempt.encoded)
}

/// Keeps an attempt whose endpoint is gone listed under its message, if the
/// message is still there.
fn list_under_message(
    o: &mut writer::Overlay,
    app: &AppId,
    msg: &MessageId,
    attempt: &AttemptId,
    encoded: &[u8],
) -> Result<(), StoreError> {
    if o.contains_key(&keys::message(app, msg))? {
        o.insert(keys::attempt_by_msg(msg, attempt), encoded);
    }
    Ok(())
}

/// The writes of `Store::record_attempt`, staged on the writer thread (reads
/// first, so that a failed read stages nothing).
fn stage_attempt(
    o: &mut writer::Overlay,
    task: &TaskRecord,
    attempt: &StagedAttempt,
    next: Next,
) -> Result<Recorded, StoreError> {
    let dest_key = keys::dest(&task.msg_id, &task.ep_id);
    let before = staged_dest(o, &dest_key)?;
    let clock = keys::failing_since(&task.ep_id);
    let failing_since = o
        .get(&clock)?
        .map(|v| maintenance::FailingClock::decode(&v).since_ms);

    // Without a status before, the delivery was handed over by its publish,
    // which wrote its index entry; its first attempt is kept in the status
    // it gets now (one key fewer for most deliveries), later ones under
    // the message.
    let mut dest = match &before {
        Some(before) => {
            o.insert(
                keys::attempt_by_msg(&task.msg_id, &attempt.id),
                &attempt.encoded[..],
            );
            before.clone()
        }
        None => DestRecord {
            first_attempt: Some(Arc::clone(&attempt.encoded)),
            ..DestRecord::of_task(task, None)
        },
    };
    o.insert(
        keys::attempt_by_ep(&task.ep_id, &attempt.id),
        task.msg_id.as_str().as_bytes(),
    );
    dest.attempts += 1;
    if attempt.status == MessageStatus::Success {
        dest.failures_in_row = 0;
    } else {
        dest.failures_in_row += 1;
    }
    dest.last_attempt_ms = Some(attempt.timestamp_ms);
    dest.last_status_code = Some(attempt.response_status_code);
    match next {
        _ if attempt.status == MessageStatus::Success => {
            dest.status = MessageStatus::Success;
            dest.next_attempt_ms = None;
        }
        Next::RetryAt(due_ms) => {
            let retry = TaskRecord {
                id: TaskId::new(attempt.timestamp_ms),
                attempt: task.attempt + 1,
                trigger: AttemptTrigger::Scheduled,
                due_ms,
                ..task.clone()
            };
            o.insert(keys::queue(due_ms, &retry.id), encode(&retry));
            dest.status = MessageStatus::Sending;
            dest.next_attempt_ms = Some(due_ms);
        }
        // A failed resend of a delivery with a scheduled attempt still to
        // come (left in its status by `stage_enqueue_over`): that attempt
        // decides, the delivery is not failed yet.
        Next::Done
            if task.trigger == AttemptTrigger::Manual
                && matches!(dest.status, MessageStatus::Pending | MessageStatus::Sending)
                && dest.next_attempt_ms.is_some_and(|t| t != task.due_ms) => {}
        Next::Done => {
            dest.status = MessageStatus::Fail;
            dest.next_attempt_ms = None;
        }
    }
    o.insert(dest_key, dest_value(&dest));
    // Index writes only where something changed: most attempts succeed first time.
    let was_failed = before.as_ref().map(|b| b.status) == Some(MessageStatus::Fail);
    if was_failed != (dest.status == MessageStatus::Fail) {
        set_failed_index(o, &dest);
    }
    if attempt.status == MessageStatus::Success {
        if failing_since.is_some() {
            o.remove(clock);
        }
    } else {
        let at = attempt.timestamp_ms;
        o.insert(
            clock,
            maintenance::FailingClock::encode(failing_since.unwrap_or(at), at, &task.app_id),
        );
    }
    Ok(Recorded {
        before,
        after: dest,
    })
}

/// The writes of `Store::enqueue`, staged on the writer thread: the queue
/// entry of `task` and its status marked waiting (made, with the endpoint's
/// index entry, if it has none). Every change of a status is a job of that
/// thread, so that none is lost between the read and the write of another
/// (an attempt recorded meanwhile, with its first attempt in the status).
/// The queue entry goes last: a status left waiting without it by a crash
/// is queued by reconcile.
fn stage_enqueue(o: &mut writer::Overlay, task: &TaskRecord) -> Result<(), StoreError> {
    let before = staged_dest(o, &keys::dest(&task.msg_id, &task.ep_id))?;
    stage_enqueue_over(o, task, before);
    Ok(())
}

/// `stage_enqueue` over the status `before` that its job has read already.
fn stage_enqueue_over(o: &mut writer::Overlay, task: &TaskRecord, before: Option<DestRecord>) {
    let dest = match before {
        Some(mut dest) => {
            if dest.status != MessageStatus::Success {
                dest.status = if dest.attempts == 0 {
                    MessageStatus::Pending
                } else {
                    MessageStatus::Sending
                };
            }
            // A resend leaves the time of a scheduled attempt still to come
            // (a retry, a first attempt due later): it tells the resend's
            // attempt that the delivery goes on after it (`stage_attempt`).
            let scheduled_later = task.trigger == AttemptTrigger::Manual
                && matches!(dest.status, MessageStatus::Pending | MessageStatus::Sending)
                && dest.next_attempt_ms.is_some_and(|t| t > task.due_ms);
            if !scheduled_later {
                dest.next_attempt_ms = Some(task.due_ms);
            }
            dest
        }
        None => {
            o.insert(keys::endpoint_msg(&task.ep_id, &task.msg_id), Vec::new());
            DestRecord::of_task(task, Some(task.due_ms))
        }
    };
    o.insert(keys::dest(&task.msg_id, &task.ep_id), dest_value(&dest));
    o.remove(keys::failed(&task.msg_id, &task.ep_id));
    o.insert(keys::queue(task.due_ms, &task.id), encode(task));
}

/// The status of a delivery of `msg` handed over and not attempted yet,
/// which has no record (see `handoff`): waiting, due when it was published.
fn handed_over_status(msg: &MessageId, app: AppId, ep: EndpointId) -> DestRecord {
    DestRecord::new(msg.clone(), ep, app, Some(msg.created_ms()))
}

/// A writer job that inserts `writes` in this order (see `writer`).
fn insert_each(
    writes: Vec<(Vec<u8>, Vec<u8>)>,
) -> impl FnOnce(&mut writer::Overlay) -> Result<(), StoreError> + Send + 'static {
    move |o| {
        for (k, v) in writes {
            o.insert(k, v);
        }
        Ok(())
    }
}

/// An all-messages entry's value: the message's app ID, then its payload
/// until that is expunged. (Stores written before kept payloads under
/// `PAYLOAD`, and only the app ID here.) A payload is never empty: it is JSON.
fn all_messages_value(app: &AppId, payload: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(AppId::LEN + payload.len());
    value.extend_from_slice(app.as_str().as_bytes());
    value.extend_from_slice(payload);
    value
}

/// The app ID of an all-messages entry.
fn all_messages_app(value: &[u8]) -> Option<AppId> {
    AppId::parse(std::str::from_utf8(value.get(..AppId::LEN)?).ok()?)
}

/// The payload an all-messages entry holds, if it holds one.
fn all_messages_payload(value: &[u8]) -> Option<&[u8]> {
    value.get(AppId::LEN..).filter(|p| !p.is_empty())
}

/// A queue entry: one task, or the first attempts of a message to several
/// endpoints (a `FanRecord`, after its tag byte).
enum Queued {
    One(TaskRecord),
    Fan(FanRecord),
}

impl Queued {
    fn decode(key: &[u8], value: &[u8]) -> Result<Self, StoreError> {
        match value.split_first() {
            Some((&FanRecord::TAG, fan)) => Ok(Queued::Fan(decode(key, fan)?)),
            _ => Ok(Queued::One(decode(key, value)?)),
        }
    }

    fn due_ms(&self) -> i64 {
        match self {
            Queued::One(task) => task.due_ms,
            Queued::Fan(fan) => fan.due_ms,
        }
    }

    /// How many deliveries it holds.
    fn len(&self) -> usize {
        match self {
            Queued::One(_) => 1,
            Queued::Fan(fan) => fan.ep_ids.len(),
        }
    }

    fn tasks(&self) -> Vec<TaskRecord> {
        match self {
            Queued::One(task) => vec![task.clone()],
            Queued::Fan(fan) => fan.tasks(),
        }
    }
}

fn encode_fan(fan: &FanRecord) -> Vec<u8> {
    let mut bytes = vec![FanRecord::TAG];
    bytes.extend(encode(fan));
    bytes
}

/// The tasks a lease holds: one (`LEASE`) or a claim's (`CLAIM_LEASE`).
fn leased_tasks(key: &[u8], value: &[u8]) -> Result<Vec<TaskRecord>, StoreError> {
    if key.first() == Some(&keys::ns::LEASE) {
        Ok(vec![decode(key, value)?])
    } else {
        decode(key, value)
    }
}

/// For an entry under a message's attempts written before attempts moved
/// there (its value is empty), the key of the record itself.
fn legacy_attempt_key(key: &[u8], value: &[u8]) -> Option<Vec<u8>> {
    if !value.is_empty() {
        return None;
    }
    keys::attempt_in_msg_key(key).map(|id| keys::legacy_attempt(&id))
}

/// Where writes are staged: a sled batch, or the writer's overlay.
trait Stage {
    fn put(&mut self, key: Vec<u8>, value: &[u8]);
    fn del(&mut self, key: Vec<u8>);
}

impl Stage for sled::Batch {
    fn put(&mut self, key: Vec<u8>, value: &[u8]) {
        self.insert(key, value);
    }
    fn del(&mut self, key: Vec<u8>) {
        self.remove(key);
    }
}

impl Stage for writer::Overlay {
    fn put(&mut self, key: Vec<u8>, value: &[u8]) {
        self.insert(key, value);
    }
    fn del(&mut self, key: Vec<u8>) {
        self.remove(key);
    }
}

/// Keeps the dead-letter index in step with a delivery status.
fn set_failed_index(batch: &mut impl Stage, dest: &DestRecord) {
    let key = keys::failed(&dest.msg_id, &dest.ep_id);
    if dest.status == MessageStatus::Fail {
        batch.put(key, &[]);
    } else {
        batch.del(key);
    }
}

/// A page of `all` (whole keys under `prefix`, with their items), read as
/// `Store::page` reads one from the tree.
fn page_of<T>(
    prefix: &[u8],
    all: BTreeMap<Vec<u8>, T>,
    req: &PageReq,
    mut keep: impl FnMut(&T) -> bool,
) -> Result<Page<T>, StoreError> {
    let bounds = page_bounds(prefix, req);
    let mut entries: Vec<(Vec<u8>, T)> = all
        .into_iter()
        .filter(|(k, _)| std::ops::RangeBounds::contains(&bounds, k))
        .collect();
    if req.order == Order::Descending {
        entries.reverse();
    }
    fill_page(prefix.len(), entries.into_iter().map(Ok), req, |_, item| {
        Ok(keep(&item).then_some(item))
    })
}

/// The page `req` asks for from `entries` (whole keys under a prefix of
/// `prefix_len` bytes, in the order asked for), with what `f` makes of each
/// (from the key after the prefix; `None` leaves it out): at most
/// `req.limit` items, and no more than `req.scan_limit` entries looked at
/// (then where to resume).
fn fill_page<K: AsRef<[u8]>, V, T>(
    prefix_len: usize,
    entries: impl Iterator<Item = Result<(K, V), StoreError>>,
    req: &PageReq,
    mut f: impl FnMut(&[u8], V) -> Result<Option<T>, StoreError>,
) -> Result<Page<T>, StoreError> {
    let mut items = Vec::with_capacity(req.limit.min(256));
    for (scanned, entry) in entries.enumerate() {
        let (k, v) = entry?;
        let rest = &k.as_ref()[prefix_len..];
        if req.scan_limit.is_some_and(|n| scanned >= n) {
            return Ok(Page {
                items,
                done: false,
                resume: Some(String::from_utf8_lossy(rest).into_owned()),
            });
        }
        if let Some(item) = f(rest, v)? {
            if items.len() == req.limit {
                return Ok(Page {
                    items,
                    done: false,
                    resume: None,
                });
            }
            items.push(item);
        }
    }
    Ok(Page {
        items,
        done: true,
        resume: None,
    })
}

/// The keys under `prefix` that a page asked for by `req` may hold (see `Store::page`).
fn page_bounds(prefix: &[u8], req: &PageReq) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let with = |id: &str| {
        let mut k = prefix.to_vec();
        k.extend_from_slice(id.as_bytes());
        k
    };
    let mut lo = Bound::Included(prefix.to_vec());
    let mut hi = Bound::Excluded(keys::prefix_end(prefix));
    if let Some(min) = &req.min_id {
        lo = Bound::Included(with(min));
    }
    if let Some(max) = &req.max_id {
        hi = Bound::Excluded(with(max));
    }
    if let Some(cursor) = &req.cursor {
        match req.order {
            Order::Descending => hi = tighter_hi(hi, with(cursor)),
            Order::Ascending => lo = tighter_lo(lo, with(cursor)),
        }
    }
    (lo, hi)
}

fn tighter_hi(current: Bound<Vec<u8>>, candidate: Vec<u8>) -> Bound<Vec<u8>> {
    match current {
        Bound::Excluded(c) if c <= candidate => Bound::Excluded(c),
        Bound::Included(c) if c < candidate => Bound::Included(c),
        _ => Bound::Excluded(candidate),
    }
}

fn tighter_lo(current: Bound<Vec<u8>>, candidate: Vec<u8>) -> Bound<Vec<u8>> {
    match current {
        Bound::Included(c) if c > candidate => Bound::Included(c),
        Bound::Excluded(c) if c >= candidate => Bound::Excluded(c),
        _ => Bound::Excluded(candidate),
    }
}

fn range_is_empty(lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>) -> bool {
    let (l, l_incl) = match lo {
        Bound::Included(l) => (l, true),
        Bound::Excluded(l) => (l, false),
        Bound::Unbounded => return false,
    };
    match hi {
        Bound::Included(h) => l > h || (l == h && !l_incl),
        Bound::Excluded(h) => l >= h,
        Bound::Unbounded => false,
    }
}

#[cfg(test)]
pub(crate) mod tests;
