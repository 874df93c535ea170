//! Grouped writes: one thread applies the writes of many callers as one batch.
//!
//! sled 0.34 rolls its IO buffer before and after every `apply_batch`, so each
//! batch costs two log writes, each waited for with `sync_file_range` on one of
//! sled's IO threads, and a batch holds a process-wide lock that stops every
//! reader. Publishes and attempt records come by the thousand per second; with
//! a batch each, most of webhookd's CPU went into those writes and the lock.
//! So they are handed to this thread as jobs. It takes every job waiting, lets
//! each one read (seeing the writes of the jobs before it in the same group)
//! and stage its writes, applies the whole group as one batch (atomic as a
//! whole, so each job's writes are too), and then answers every caller.
//!
//! A job that fails stages nothing: its writes are kept apart until it
//! returns, and dropped if it returns an error.
//!
//! Durability stays with the commit thread: a caller that needs it calls
//! `commit()` after its job was applied.

use std::collections::BTreeMap;
use std::sync::{Arc, mpsc};

use sled::IVec;
use tokio::sync::oneshot;

use super::{StoreError, Tree};

/// Most jobs applied as one batch; beyond it the rest wait for the next one,
/// so a flood of publishes cannot make a single batch (and its lock) long.
const MAX_GROUP: usize = 1024;

/// What one job sees and writes: the database, the writes of the jobs before
/// it in this group, and its own.
pub(super) struct Overlay {
    tree: Tree,
    group: BTreeMap<Vec<u8>, Option<IVec>>,
    job: BTreeMap<Vec<u8>, Option<IVec>>,
}

impl Overlay {
    fn new(tree: Tree) -> Self {
        Self {
            tree,
            group: BTreeMap::new(),
            job: BTreeMap::new(),
        }
    }

    pub(super) fn get(&self, key: &[u8]) -> Result<Option<IVec>, StoreError> {
        match self.job.get(key).or_else(|| self.group.get(key)) {
            Some(staged) => Ok(staged.clone()),
            None => Ok(self.tree.get(key)?),
        }
    }

    pub(super) fn contains_key(&self, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.get(key)?.is_some())
    }

    pub(super) fn insert(&mut self, key: impl Into<Vec<u8>>, value: impl Into<IVec>) {
        self.job.insert(key.into(), Some(value.into()));
    }

    pub(super) fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.job.insert(key.into(), None);
    }

    /// Ends the current job: keeps its writes for the batch, or drops them.
    fn settle(&mut self, keep: bool) {
        let job = std::mem::take(&mut self.job);
        if keep {
            self.group.extend(job);
        }
    }

    fn apply(self) -> Result<(), StoreError> {
        if self.group.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (k, v) in self.group {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        Ok(self.tree.apply_batch(batch)?)
    }
}

/// Called once the group holding a job was applied (or failed to be).
type Reply = Box<dyn FnOnce(Result<(), Arc<StoreError>>) + Send>;
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
    pub(super) fn start(tree: Tree) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("webhookd-writer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut overlay = Overlay::new(tree.clone());
                    let replies: Vec<Reply> = std::iter::once(first)
                        .chain(rx.try_iter().take(MAX_GROUP - 1))
                        .filter_map(|job| run_job(job, &mut overlay))
                        .collect();
                    let applied = overlay.apply().map_err(Arc::new);
                    if let Err(e) = &applied {
                        tracing::error!(error = %e, jobs = replies.len(), "grouped write failed");
                    }
                    for reply in replies {
                        reply(applied.clone());
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
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |overlay: &mut Overlay| {
            let out = job(overlay);
            overlay.settle(out.is_ok());
            Box::new(move |applied| {
                let _ = tx.send(match (out, applied) {
                    (Ok(r), Ok(())) => Ok(r),
                    (Err(e), _) => Err(e),
                    (Ok(_), Err(e)) => Err(StoreError::Grouped(e)),
                });
            })
        });
        self.tx
            .as_ref()
            .ok_or(StoreError::WriteLost)?
            .send(job)
            .map_err(|_| StoreError::WriteLost)?;
        rx.await.map_err(|_| StoreError::WriteLost)?
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
