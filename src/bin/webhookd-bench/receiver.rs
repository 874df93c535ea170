//! The bench's own webhook receiver: an actix-web server on 127.0.0.1:0.
//!
//! What an endpoint does is chosen by its path: `/ok/{n}` answers 200 at once
//! and records the first arrival of each `webhook-id` (later ones count as
//! duplicates), `/fail/{n}` answers 500, `/slow` sleeps (past webhookd's
//! request timeout) before answering 200, and `/direct` answers 200 for the
//! `direct` scenario, which posts to it without webhookd in between.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use anyhow::Context as _;

/// What arrived, shared by the receiver's worker threads and the bench.
pub struct Recorder {
    /// First arrival of each message, one map per `/ok/{n}` endpoint. A Mutex
    /// per endpoint is enough: each request holds it for one map operation,
    /// and endpoints do not contend with each other.
    ok: Vec<Mutex<HashMap<Box<str>, Instant>>>,
    first: AtomicU64,
    duplicates: AtomicU64,
    /// The first `DUPLICATES_KEPT` duplicates: endpoint number and `webhook-id`.
    duplicates_kept: Mutex<Vec<(usize, Box<str>)>>,
    failing: AtomicU64,
    slow: AtomicU64,
    slow_sleep: Duration,
}

/// Counts are read while deliveries go on, so only each count itself is exact;
/// `Relaxed` is enough because nothing else is ordered by them.
const ORDER: Ordering = Ordering::Relaxed;

/// How many duplicates are kept by name, for their attempts to be looked up.
const DUPLICATES_KEPT: usize = 10;

impl Recorder {
    /// First arrivals on the healthy endpoints so far.
    pub fn first(&self) -> u64 {
        self.first.load(ORDER)
    }
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(ORDER)
    }
    /// The first few duplicates: endpoint number (`/ok/{n}`) and `webhook-id`.
    pub fn duplicates_kept(&self) -> Vec<(usize, Box<str>)> {
        self.duplicates_kept
            .lock()
            .expect("duplicate list lock poisoned")
            .clone()
    }
    pub fn failing(&self) -> u64 {
        self.failing.load(ORDER)
    }
    pub fn slow(&self) -> u64 {
        self.slow.load(ORDER)
    }

    /// The arrival maps, one per healthy endpoint, emptied.
    pub fn take(&self) -> Vec<HashMap<Box<str>, Instant>> {
        self.ok
            .iter()
            .map(|m| std::mem::take(&mut *m.lock().expect("arrival map lock poisoned")))
            .collect()
    }
}

pub struct Receiver {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub rec: Arc<Recorder>,
    handle: ServerHandle,
}

impl Receiver {
    /// Starts a receiver with `ok_endpoints` healthy endpoints (`/ok/0` …),
    /// each expecting about `expected` messages. Their maps are made that
    /// large up front: a map that grows rehashes everything it holds under
    /// its lock, and all endpoints reach the same size at the same moment,
    /// so the receiver's threads would stop for all of them at once and
    /// the arrivals queued behind them would be stamped late (stalls of tens
    /// of milliseconds at 500 msg/s, every time the count doubles).
    pub async fn start(
        workers: usize,
        ok_endpoints: usize,
        expected: usize,
        slow_sleep: Duration,
    ) -> anyhow::Result<Receiver> {
        let rec = Arc::new(Recorder {
            ok: (0..ok_endpoints)
                .map(|_| Mutex::new(HashMap::with_capacity(expected)))
                .collect(),
            first: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            duplicates_kept: Mutex::default(),
            failing: AtomicU64::new(0),
            slow: AtomicU64::new(0),
            slow_sleep,
        });
        let data = web::Data::from(rec.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/ok/{n}", web::post().to(ok))
                .route("/fail/{n}", web::post().to(fail))
                .route("/slow", web::post().to(slow))
                .route("/direct", web::post().to(direct))
        })
        .workers(workers.max(1))
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .context("binding the receiver to 127.0.0.1:0")?;
        let addr = *server
            .addrs()
            .first()
            .expect("a bound server has an address");
        let server = server.shutdown_timeout(0).run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Ok(Receiver {
            base: format!("http://{addr}"),
            rec,
            handle,
        })
    }

    /// Stops at once: requests still sleeping in `/slow` are dropped.
    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

// Each handler takes the body as `Bytes` so it is read in full and the
// connection stays reusable.

async fn ok(
    rec: web::Data<Recorder>,
    n: web::Path<usize>,
    req: HttpRequest,
    _body: web::Bytes,
) -> HttpResponse {
    let at = Instant::now();
    let n = n.into_inner();
    let Some(map) = rec.ok.get(n) else {
        return HttpResponse::NotFound().finish();
    };
    let Some(id) = req
        .headers()
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
    else {
        return HttpResponse::BadRequest().finish();
    };
    let mut map = map.lock().expect("arrival map lock poisoned");
    match map.entry(id.into()) {
        Entry::Occupied(_) => {
            rec.duplicates.fetch_add(1, ORDER);
            let mut kept = rec
                .duplicates_kept
                .lock()
                .expect("duplicate list lock poisoned");
            if kept.len() < DUPLICATES_KEPT {
                kept.push((n, id.into()));
            }
        }
        Entry::Vacant(v) => {
            v.insert(at);
            rec.first.fetch_add(1, ORDER);
        }
    }
    HttpResponse::Ok().finish()
}

async fn fail(rec: web::Data<Recorder>, _body: web::Bytes) -> HttpResponse {
    rec.failing.fetch_add(1, ORDER);
    HttpResponse::InternalServerError().finish()
}

async fn slow(rec: web::Data<Recorder>, _body: web::Bytes) -> HttpResponse {
    rec.slow.fetch_add(1, ORDER);
    actix_web::rt::time::sleep(rec.slow_sleep).await;
    HttpResponse::Ok().finish()
}

async fn direct(_body: web::Bytes) -> HttpResponse {
    HttpResponse::Ok().finish()
}
