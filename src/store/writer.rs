//! Grouped writes: one thread applies the writes of many callers, in turn.
//!
//! Publishes, claims and attempt records come by the thousand per second.
//! Applied by their callers, each as a sled batch, most of webhookd's CPU went
//! into the batches: sled 0.34 rolls its IO buffer before and after every
//! `apply_batch` (two log writes, each handed to its IO threads) and stops
//! every reader while it applies one. So they are handed to this thread as
//! jobs. It takes every job waiting, lets each one read (seeing the writes of
//! the jobs before it in the same group) and stage its writes, applies the
//! group's writes one by one in the order they were staged, and then answers
//! every caller.
//!
//! Without a batch a job's writes are not atomic: readers may see a job half
//! applied, and after a crash sled recovers a prefix of its log, so a job may
//! be cut anywhere. Every job therefore stages its writes in an order whose
//! every prefix is a state the rest of webhookd handles (see the callers in
//! `store/mod.rs`): what is created comes before what points to it, and what
//! is given up (a queue entry, a lease) goes last, so a crash can lead to a
//! second delivery but never to none. Writes are held at the gate for the
//! whole group, so a backup never sees one half applied.
//!
//! A job that fails stages nothing: its writes are kept apart until it
//! returns, and dropped if it returns an error.
//!
//! Durability stays with the commit thread: a caller that needs it calls
//! `commit()` after its job was applied, or sends its job with
//! `write_durable`, whose answer this thread passes on to the commit thread
//! once the group is applied (one group, one request): the caller is woken
//! once, after the sync, instead of once for each.

use std::collections::BTreeMap;
use std::sync::{Arc, mpsc};

use sled::IVec;
use tokio::sync::oneshot;

use super::commit::{GroupCommit, Waiter};
use super::{StoreError, Tree};

/// Most jobs in one group; beyond it the rest wait for the next one, so a
/// flood of publishes cannot keep the first callers of a group waiting long.
const MAX_GROUP: usize = 1024;

/// A group that takes longer than this to run and apply is logged: every
/// publish and attempt record in it waited that long.
const SLOW_GROUP: std::time::Duration = std::time::Duration::from_millis(100);

/// What one job sees and writes: the database, the writes of the jobs before
/// it in this group, and its own.
pub(super) struct Overlay {
    tree: Tree,
    /// The latest value the jobs before this one staged for each key.
    group: BTreeMap<Vec<u8>, Option<IVec>>,
    /// Every write of those jobs, in the order staged (what is applied).
    group_writes: Vec<(Vec<u8>, Option<IVec>)>,
    /// The current job's writes, in order (few: read back newest first).
    job_writes: Vec<(Vec<u8>, Option<IVec>)>,
}

impl Overlay {
    fn new(tree: Tree) -> Self {
        Self {
            tree,
            group: BTreeMap::new(),
            group_writes: Vec::new(),
            job_writes: Vec::new(),
        }
    }

    pub(super) fn get(&self, key: &[u8]) -> Result<Option<IVec>, StoreError> {
        let own = self.job_writes.iter().rev().find(|(k, _)| k == key);
        match own.map(|(_, v)| v).or_else(|| self.group.get(key)) {
            Some(staged) => Ok(staged.clone()),
            None => Ok(self.tree.get(key)?),
        }
    }

    pub(super) fn contains_key(&self, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.get(key)?.is_some())
    }

    /// Every entry whose key starts with `prefix`, in key order, as this
    /// job sees them (the database, then what the jobs before it and the
    /// job itself staged). For the few entries of one message: it reads
    /// them all.
    pub(super) fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, IVec)>, StoreError> {
        let mut seen = BTreeMap::new();
        for entry in self.tree.scan_prefix(prefix) {
            let (k, v) = entry?;
            seen.insert(k.to_vec(), Some(v));
        }
        let staged = self
            .group
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix));
        let own = self
            .job_writes
            .iter()
            .filter(|(k, _)| k.starts_with(prefix));
        for (k, v) in staged.chain(own.map(|(k, v)| (k, v))) {
            seen.insert(k.clone(), v.clone());
        }
        Ok(seen
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }

    /// Stages a write. Writes are applied in the order they were staged, and
    /// a crash may keep any prefix of them (see the module comment).
    pub(super) fn insert(&mut self, key: impl Into<Vec<u8>>, value: impl Into<IVec>) {
        self.stage(key.into(), Some(value.into()));
    }

    pub(super) fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.stage(key.into(), None);
    }

    fn stage(&mut self, key: Vec<u8>, value: Option<IVec>) {
        self.job_writes.push((key, value));
    }

    /// Ends the current job: keeps its writes for the group, or drops them.
    fn settle(&mut self, keep: bool) {
        let writes = std::mem::take(&mut self.job_writes);
        if keep {
            for (k, v) in &writes {
                self.group.insert(k.clone(), v.clone());
            }
            self.group_writes.extend(writes);
        }
    }

    fn apply(self) -> Result<(), StoreError> {
        let _open = self.tree.open_gate();
        let mut written = 0;
        for (k, v) in self.group_writes {
            match v {
                Some(v) => {
                    written += (k.len() + v.len()) as u64;
                    self.tree.inner.insert(k, v)?
                }
                None => self.tree.inner.remove(k)?,
            };
        }
        self.tree
            .written
            .fetch_add(written, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// Called once the group holding a job was applied (or failed to be);
/// returns what to call once that is durable, for a `write_durable` job.
type Reply = Box<dyn FnOnce(Result<(), Arc<StoreError>>) -> Option<Waiter> + Send>;
type Job = Box<dyn FnOnce(&mut Overlay) -> Reply + Send>;

/// The writer thread and the way to reach it. Dropping it stops the thread
/// and waits for it (every job sent before has been answered by then).
pub(super) struct Writer {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs one job. A job that panics stages nothing and gets no reply (its
/// caller sees `StoreError::WriteLost`); the thread and the group go on.
fn run_job(job: Job, overlay: &mut Overlay) -> Option<Reply> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(overlay))) {
        Ok(reply) => Some(reply),
        Err(_) => {
            overlay.settle(false);
            tracing::error!("a grouped write panicked; its writes were dropped");
            None
        }
    }
}

impl Writer {
    pub(super) fn start(tree: Tree, committer: Arc<GroupCommit>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("webhookd-writer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let started = std::time::Instant::now();
                    let mut overlay = Overlay::new(tree.clone());
                    let replies: Vec<Reply> = std::iter::once(first)
                        .chain(rx.try_iter().take(MAX_GROUP - 1))
                        .filter_map(|job| run_job(job, &mut overlay))
                        .collect();
                    let (ran, writes) = (started.elapsed(), overlay.group_writes.len());
                    let applied = overlay.apply().map_err(Arc::new);
                    let took = started.elapsed();
                    if took > SLOW_GROUP {
                        tracing::warn!(
                            jobs = replies.len(),
                            writes,
                            run_ms = ran.as_millis() as u64,
                            apply_ms = (took - ran).as_millis() as u64,
                            "a group of writes was slow"
                        );
                    }
                    if let Err(e) = &applied {
                        tracing::error!(error = %e, jobs = replies.len(), "grouped write failed");
                    }
                    let durable: Vec<Waiter> = replies
                        .into_iter()
                        .filter_map(|reply| reply(applied.clone()))
                        .collect();
                    if !durable.is_empty() {
                        committer.then(Box::new(move |synced| {
                            for w in durable {
                                w(synced.clone());
                            }
                        }));
                    }
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Runs `job` on the writer thread, in a group with whatever else is
    /// waiting, and returns its result once its writes are applied (not yet
    /// durable: see `Store::commit`).
    pub(super) async fn write<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Overlay) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.submit(job, None).await
    }

    /// Like `write`, but returns once the writes are durable (a
    /// `StoreError::Commit` if only that failed). `applied` runs on this
    /// thread once they are applied, before the sync, if the job succeeded.
    pub(super) async fn write_durable<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Overlay) -> Result<R, StoreError> + Send + 'static,
        applied: impl FnOnce() + Send + 'static,
    ) -> Result<R, StoreError> {
        self.submit(job, Some(Box::new(applied))).await
    }

    /// Like `write`, for callers that are not async (maintenance, and what
    /// must be ordered with attempt records: see `Store::expunge_content`):
    /// blocks the calling thread until the job's writes are applied.
    pub(super) fn write_blocking<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Overlay) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send_job(job, None, move |out| {
            let _ = tx.send(out);
        })?;
        rx.recv().map_err(|_| StoreError::WriteLost)?
    }

    /// Like `write_blocking` for several jobs sent at once: each stays a job
    /// of its own (what it reads and stages stays small), they are applied
    /// in the order given, in as few groups as the writer makes of them,
    /// and their results come back in that order. For maintenance that
    /// changes many messages, one job each.
    pub(super) fn write_each_blocking<R, J>(
        &self,
        jobs: impl IntoIterator<Item = J>,
    ) -> Result<Vec<R>, StoreError>
    where
        R: Send + 'static,
        J: FnOnce(&mut Overlay) -> Result<R, StoreError> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let mut sent = 0;
        for job in jobs {
            let tx = tx.clone();
            self.send_job(job, None, move |out| {
                let _ = tx.send(out);
            })?;
            sent += 1;
        }
        drop(tx);
        // Answered in the order sent; a job that panicked is never answered,
        // and the channel closes once every other one was.
        (0..sent)
            .map(|_| rx.recv().map_err(|_| StoreError::WriteLost)?)
            .collect()
    }

    async fn submit<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Overlay) -> Result<R, StoreError> + Send + 'static,
        durable: Option<Box<dyn FnOnce() + Send>>,
    ) -> Result<R, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send_job(job, durable, move |out| {
            let _ = tx.send(out);
        })?;
        rx.await.map_err(|_| StoreError::WriteLost)?
    }

    /// Hands `job` to the writer thread; `answer` gets its result once its
    /// writes are applied (durable, with `durable`).
    fn send_job<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Overlay) -> Result<R, StoreError> + Send + 'static,
        durable: Option<Box<dyn FnOnce() + Send>>,
        answer: impl FnOnce(Result<R, StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        let job: Job = Box::new(move |overlay: &mut Overlay| {
            let out = job(overlay);
            overlay.settle(out.is_ok());
            Box::new(move |applied| {
                let out = match (out, applied) {
                    (Ok(r), Ok(())) => Ok(r),
                    (Err(e), _) => Err(e),
                    (Ok(_), Err(e)) => Err(StoreError::Grouped(e)),
                };
                match (out, durable) {
                    (Ok(r), Some(applied)) => {
                        // Like a job, it may not take the thread down.
                        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(applied)).is_err()
                        {
                            tracing::error!("the step after a grouped write panicked");
                        }
                        Some(Box::new(move |synced: Result<(), Arc<std::io::Error>>| {
                            answer(synced.map(|()| r).map_err(StoreError::Commit));
                        }))
                    }
                    (out, _) => {
                        answer(out);
                        None
                    }
                }
            })
        });
        self.tx
            .as_ref()
            .ok_or(StoreError::WriteLost)?
            .send(job)
            .map_err(|_| StoreError::WriteLost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[tokio::test]
    async fn a_job_sees_its_own_writes_and_a_failed_one_stages_nothing() {
        let store = Store::temporary().unwrap();
        let seen = store
            .writer
            .write(|o| {
                o.insert(b"k1".to_vec(), &b"one"[..]);
                o.get(b"k1")
            })
            .await
            .unwrap();
        assert_eq!(seen.as_deref(), Some(&b"one"[..]));
        let failed = store
            .writer
            .write(|o| -> Result<(), StoreError> {
                o.insert(b"k2".to_vec(), &b"two"[..]);
                o.remove(b"k1".to_vec());
                Err(StoreError::WriteLost)
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(store.tree.get(b"k1").unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(store.tree.get(b"k2").unwrap(), None);
    }

    #[test]
    fn a_scan_sees_the_database_with_the_group_and_the_job_over_it() {
        let store = Store::temporary().unwrap();
        for k in [&b"pa"[..], b"pb", b"pc", b"q"] {
            store.tree.inner.insert(k, k).unwrap();
        }
        let mut o = Overlay::new(store.tree.clone());
        o.remove(b"pa".to_vec());
        o.insert(b"pd".to_vec(), &b"group"[..]);
        o.insert(b"p".to_vec(), &b"group"[..]);
        o.settle(true);
        o.insert(b"pb".to_vec(), &b"job"[..]);
        o.remove(b"pd".to_vec());
        o.insert(b"qq".to_vec(), &b"job"[..]);
        let seen: Vec<(Vec<u8>, Vec<u8>)> = o
            .scan_prefix(b"p")
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.to_vec()))
            .collect();
        let want = [("p", "group"), ("pb", "job"), ("pc", "pc")];
        let want: Vec<(Vec<u8>, Vec<u8>)> = want
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(seen, want);
    }

    #[tokio::test]
    async fn a_durable_write_runs_applied_once_applied_and_a_failed_one_does_not() {
        let store = Store::temporary().unwrap();
        let (seen, applied) = std::sync::mpsc::channel();
        let tree = store.tree.clone();
        let got = store
            .writer
            .write_durable(
                |o| {
                    o.insert(b"k".to_vec(), &b"v"[..]);
                    Ok(7)
                },
                move || seen.send(tree.get(b"k").unwrap()).unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(got, 7);
        let value = applied.try_recv().expect("applied ran before the answer");
        assert_eq!(value.as_deref(), Some(&b"v"[..]), "and saw the write");

        let (seen, applied) = std::sync::mpsc::channel::<()>();
        let failed = store
            .writer
            .write_durable(
                |o| -> Result<(), StoreError> {
                    o.insert(b"k".to_vec(), &b"lost"[..]);
                    Err(StoreError::WriteLost)
                },
                move || seen.send(()).unwrap(),
            )
            .await;
        assert!(matches!(failed, Err(StoreError::WriteLost)), "{failed:?}");
        assert!(applied.try_recv().is_err(), "no applied for a failed job");
        assert_eq!(store.tree.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    }

    #[tokio::test]
    async fn a_panicking_job_is_answered_and_the_writer_goes_on() {
        let store = Store::temporary().unwrap();
        let lost = store
            .writer
            .write(|o| -> Result<(), StoreError> {
                o.insert(b"k".to_vec(), &b"lost"[..]);
                panic!("a job that panics");
            })
            .await;
        assert!(matches!(lost, Err(StoreError::WriteLost)), "{lost:?}");
        store
            .writer
            .write(|o| {
                o.insert(b"k".to_vec(), &b"kept"[..]);
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(store.tree.get(b"k").unwrap().as_deref(), Some(&b"kept"[..]));
    }
}
