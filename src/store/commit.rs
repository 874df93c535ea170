//! Group commit: one thread makes writes durable for every waiter at once.
//!
//! sled 0.34's `flush()` writes with `sync_file_range`, which survives a process
//! crash but not a power loss, and concurrent `flush_async()` calls can deadlock
//! (sled issue 1308). So a single thread collects every waiting writer, runs one
//! `flush()` plus an `fdatasync` of the database file, then answers them all:
//! concurrent publishes share one sync instead of paying one each.

use std::fs::File;
use std::sync::Arc;
use std::sync::mpsc;

use tokio::sync::oneshot;

/// Called once everything written before it was sent is durable (or failed to be).
pub(super) type Waiter = Box<dyn FnOnce(Result<(), Arc<std::io::Error>>) + Send>;

/// Longest the commit thread waits, when nobody asks for a commit, before it
/// runs its `before_flush` work anyway.
const IDLE_FLUSH: std::time::Duration = std::time::Duration::from_millis(500);

/// A commit that takes longer than this is logged: every publish waiting on
/// it waited that long for its `202`.
const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_millis(100);

/// The commit thread and the way to reach it. Dropping it stops the thread and
/// waits for it, so that the thread's handle on the database is gone too.
pub struct GroupCommit {
    tx: Option<mpsc::Sender<Waiter>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The first commit that failed. sled keeps failing every write after
    /// an I/O error of its log, and after a failed `fdatasync` what reached
    /// the disk is not known: only opening the database again recovers.
    failed: tokio::sync::watch::Receiver<Option<Arc<std::io::Error>>>,
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl GroupCommit {
    /// Starts the commit thread; `db_file` is synced after each flush (none for a
    /// temporary database).
    /// `before_flush` runs before each flush, at least every `IDLE_FLUSH` while
    /// idle, and once more at the end (it merges the in-memory counters).
    pub fn start(
        db: sled::Db,
        db_file: Option<File>,
        before_flush: impl Fn() + Send + 'static,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Waiter>();
        let (fail, failed) = tokio::sync::watch::channel(None);
        let thread = std::thread::Builder::new()
            .name("webhookd-commit".into())
            .spawn(move || {
                loop {
                    let first = match rx.recv_timeout(IDLE_FLUSH) {
                        Ok(w) => w,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            before_flush();
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => {
                            before_flush();
                            if let Err(e) = db.flush() {
                                tracing::error!(error = %e, "final flush failed");
                            }
                            break;
                        }
                    };
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    before_flush();
                    let started = std::time::Instant::now();
                    let flushed = db.flush().map(|_| ()).map_err(std::io::Error::other);
                    let flush_took = started.elapsed();
                    let result = flushed
                        .and_then(|()| db_file.as_ref().map_or(Ok(()), File::sync_data))
                        .map_err(Arc::new);
                    let took = started.elapsed();
                    if took > SLOW_COMMIT {
                        // flush: sled writing and syncing its log buffers;
                        // sync: the fdatasync of the file after it.
                        tracing::warn!(
                            flush_ms = flush_took.as_millis() as u64,
                            sync_ms = (took - flush_took).as_millis() as u64,
                            waiters = batch.len(),
                            "a group commit was slow"
                        );
                    }
                    if let Err(e) = &result {
                        tracing::error!(error = %e, waiters = batch.len(), "group commit failed");
                        fail.send_if_modified(|f| {
                            f.is_none() && f.replace(Arc::clone(e)).is_none()
                        });
                    }
                    for w in batch {
                        w(result.clone());
                    }
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            failed,
        })
    }

    /// The first commit that failed, if one did.
    pub fn failure(&self) -> Option<Arc<std::io::Error>> {
        self.failed.borrow().clone()
    }

    /// Resolves with the first commit that fails.
    pub fn failed(&self) -> impl Future<Output = Arc<std::io::Error>> + use<> {
        let mut failed = self.failed.clone();
        async move {
            match failed.wait_for(Option::is_some).await {
                Ok(f) => f.clone().expect("waited for it"),
                // The commit thread is gone: the store was closed.
                Err(_) => std::future::pending().await,
            }
        }
    }

    /// Calls `w` once everything written before the call is on stable
    /// storage (at once, with an error, if the commit thread is gone).
    pub(super) fn then(&self, w: Waiter) {
        let sent = match &self.tx {
            Some(tx) => tx.send(w).map_err(|mpsc::SendError(w)| w),
            None => Err(w),
        };
        if let Err(w) = sent {
            w(Err(stopped()));
        }
    }

    /// Resolves once everything written before the call is on stable storage.
    pub async fn commit(&self) -> Result<(), Arc<std::io::Error>> {
        let (tx, rx) = oneshot::channel();
        self.then(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        rx.await.map_err(|_| stopped())?
    }

    /// Blocking form, for code that is not async (CLI commands, shutdown,
    /// an expunge).
    pub fn commit_blocking(&self) -> Result<(), Arc<std::io::Error>> {
        // A std channel: waiting on it is allowed on a runtime's thread too
        // (as the writer's `write_blocking` waits).
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.then(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        rx.recv().map_err(|_| stopped())?
    }
}

fn stopped() -> Arc<std::io::Error> {
    Arc::new(std::io::Error::other("commit thread stopped"))
}
