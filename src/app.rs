//! Wiring: opens the store, starts the delivery worker and the HTTP server, and
//! stops them in order on SIGTERM/SIGINT.
//!
//! The only reader of `Config`: each module gets its own sub-struct. Must not be
//! imported by anything but `main` and tests.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix_web::{App, HttpServer, dev::ServerHandle, web};
use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminToken;
use crate::api::{self, ApiState};
use crate::config::{Config, EncryptionConfig};
use crate::dashboard::{self, DashboardState};
use crate::delivery::{self, DeliveryHandle, Operational};
use crate::metrics::Metrics;
use crate::scheduler::{self, Clock, Scheduler, SchedulerHandle, SystemClock};
use crate::store::{DataKey, Keyring, Store};
use crate::throttle::{AuthThrottle, PublishThrottle};

/// Cache sled keeps in memory. Small on purpose: sled counts a cached page
/// by its size in the log, far below what the page takes in memory, and a
/// larger cache raised the peak memory while 1,000,000 messages were
/// published (330 MB at 64 MiB, 224 MB at 8 MiB) without making publishing
/// or the dashboard faster (BENCHMARKS.md, items 19 and 20).
pub(crate) const STORE_CACHE_BYTES: u64 = 4 * 1024 * 1024;

/// Name of the generated admin token file inside the data directory.
pub const TOKEN_FILE: &str = "admin-token";

/// Name of the file, in the data dir, that holds the URL of the running
/// webhookd (for `backup` and `token rotate`; removed at a clean stop).
pub const URL_FILE: &str = "server-url";

/// Name of the generated encryption key file (in the data dir, or in systemd's
/// credentials directory).
pub const KEY_FILE: &str = "encryption-key";

/// Where the admin token came from, for the startup line.
#[derive(Debug, Clone)]
pub enum TokenSource {
    Configured,
    File(PathBuf),
}

/// A started instance: its address, and how to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub token: Arc<AdminToken>,
    pub token_source: TokenSource,
    pub store: Store,
    server: ServerHandle,
    shutdown: CancellationToken,
    server_task: tokio::task::JoinHandle<std::io::Result<()>>,
    worker_task: tokio::task::JoinHandle<()>,
    scheduler_task: tokio::task::JoinHandle<()>,
    /// Runs jobs on demand (tests, the dashboard).
    pub scheduler: SchedulerHandle,
    url_file: PathBuf,
    /// Where `/metrics` is served when `metrics.listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    metrics_server: Option<(ServerHandle, tokio::task::JoinHandle<std::io::Result<()>>)>,
}

pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

/// The admin token as a client of the running daemon needs it: configured, or
/// from the token file (never generated here).
pub(crate) fn read_admin_token(config: &Config) -> anyhow::Result<String> {
    if let Some(t) = &config.admin_token {
        return Ok(t.clone());
    }
    let path = config.data_dir.join(TOKEN_FILE);
    let token = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the admin token in {}", path.display()))?;
    Ok(token.trim().to_owned())
}

/// The configured token, or the one in the data dir, generated (mode 0600) on first start.
fn admin_token(config: &Config) -> anyhow::Result<(Arc<str>, TokenSource)> {
    if let Some(t) = &config.admin_token {
        return Ok((t.as_str().into(), TokenSource::Configured));
    }
    let path = config.data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok((t.trim().into(), TokenSource::File(path))),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("reading the admin token at {}", path.display()));
        }
    }
    let token = crate::admin::generate();
    write_private_file(&path, &token)
        .with_context(|| format!("creating the admin token file {}", path.display()))?;
    Ok((token.into(), TokenSource::File(path)))
}

/// Writes `contents` to a new file at `path`, owner-only, durably.
pub(crate) fn write_private_file(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    writeln!(f, "{contents}")?;
    let dir = crate::admin::dir_of(path);
    crate::admin::give_to_dir_owner(&f, dir)?;
    f.sync_all()?;
    // The file's name too: a key must be on disk before anything is sealed
    // with it (a rotation's new key before the first record is resealed).
    crate::admin::sync_dir(dir)
}

/// Where the encryption key is kept, when it is kept in a file.
fn key_path(config: &Config) -> Option<PathBuf> {
    match &config.encryption {
        EncryptionConfig::Key(_) => None,
        EncryptionConfig::KeyFile(p) => Some(p.clone()),
        EncryptionConfig::Default => Some(
            std::env::var_os("CREDENTIALS_DIRECTORY")
                .map(|d| Path::new(&d).join(KEY_FILE))
                .filter(|p| p.exists())
                .unwrap_or_else(|| config.data_dir.join(KEY_FILE)),
        ),
    }
}

/// The file a key rotation writes the new key to before it re-encrypts.
fn next_key_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".next");
    PathBuf::from(name)
}

fn read_key(path: &Path) -> anyhow::Result<Option<DataKey>> {
    match std::fs::read_to_string(path) {
        Ok(text) => DataKey::parse(&text)
            .map(Some)
            .with_context(|| format!("reading the encryption key in {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => {
            Err(e).with_context(|| format!("reading the encryption key in {}", path.display()))
        }
    }
}

/// The keys the store seals and opens secrets with: the configured one (a key
/// file is generated on first start), plus the key of a rotation that was
/// interrupted, so that every record opens.
pub(crate) fn data_keys(config: &Config) -> anyhow::Result<Keyring> {
    keys(config, true)
}

/// `data_keys`; with `write` false a key file that would be generated is
/// not written (for `check-config`).
fn keys(config: &Config, write: bool) -> anyhow::Result<Keyring> {
    let Some(path) = key_path(config) else {
        let EncryptionConfig::Key(text) = &config.encryption else {
            unreachable!("key_path is None only for a configured key");
        };
        return Ok(Keyring::new(
            DataKey::parse(text).context("configuration key encryption.key")?,
        ));
    };
    let key = match read_key(&path)? {
        Some(k) => k,
        None => {
            // A database made with another key (restored from a backup, a
            // key file moved away): a new key would open none of its
            // secrets, and be left in the way of the right one.
            anyhow::ensure!(
                !config.data_dir.join("db").exists(),
                "the database in {} exists but its encryption key is not at {}: put the key \
                 file it was made with there (or set encryption.key_file); nothing was changed",
                config.data_dir.display(),
                path.display()
            );
            let key = DataKey::generate();
            if write {
                write_private_file(&path, &key.encode()).with_context(|| {
                    format!("creating the encryption key file {}", path.display())
                })?;
                if path.starts_with(&config.data_dir) {
                    tracing::warn!(
                        path = %path.display(),
                        "generated the encryption key inside the data dir; move it elsewhere \
                         (encryption.key_file) so that the data alone reveals no secret"
                    );
                }
            }
            key
        }
    };
    let mut ring = Keyring::new(key);
    if let Some(next) = read_key(&next_key_path(&path))? {
        ring = ring.with_older(next);
    }
    Ok(ring)
}

/// What `serve` reads besides the configuration, read without writing
/// anything (for `check-config`): the extra CA file and the encryption key
/// (a missing key file is only an error where `serve` would refuse it).
pub fn check_files(config: &Config) -> anyhow::Result<()> {
    delivery::client::TlsRoots::load(config.delivery.extra_ca_file.as_deref())
        .map_err(anyhow::Error::msg)?;
    keys(config, false)?;
    Ok(())
}

/// Replaces the encryption key kept in a file and re-encrypts every secret with
/// it. webhookd must be stopped. Crash-safe: the new key is written beside the
/// old one first, and whichever key a record is sealed with stays readable until
/// the new key takes the old one's place. Returns the new key's id.
pub fn rotate_key(config: &Config) -> anyhow::Result<String> {
    let Some(path) = key_path(config) else {
        anyhow::bail!(
            "the encryption key is given in the configuration (encryption.key); \
             to rotate it, set a new key there: keep the old one readable by moving it to a \
             key file first"
        );
    };
    // Else the store would be created empty, the rotation would succeed on
    // it, and the real data dir's key would be replaced by one that opens
    // nothing there.
    let db = config.data_dir.join("db");
    anyhow::ensure!(
        db.exists(),
        "there is no database in {} (is this the data dir of the service? set it with \
         WEBHOOKD_DATA_DIR or data_dir in the configuration); nothing was changed",
        config.data_dir.display()
    );
    let old = read_key(&path)?
        .with_context(|| format!("there is no encryption key at {}", path.display()))?;
    let next_path = next_key_path(&path);
    let new = match read_key(&next_path)? {
        // An interrupted rotation: finish it with the key it had chosen.
        Some(k) => k,
        None => {
            let k = DataKey::generate();
            write_private_file(&next_path, &k.encode())
                .with_context(|| format!("writing the new key to {}", next_path.display()))?;
            k
        }
    };
    let id = new.id_hex();
    let store = Store::open(
        &config.data_dir,
        STORE_CACHE_BYTES,
        Keyring::new(new).with_older(old),
    )
    .with_context(|| {
        format!(
            "opening the database in {} (is webhookd still running? stop it first)",
            config.data_dir.display()
        )
    })?;
    drop(store);
    std::fs::rename(&next_path, &path)
        .with_context(|| format!("moving the new key into {}", path.display()))?;
    crate::admin::sync_dir(crate::admin::dir_of(&path))?;
    Ok(id)
}

/// Opens everything and starts serving. Must run inside an actix system (the
/// delivery worker is a local task: its HTTP client is `!Send`).
pub async fn start(config: Config) -> anyhow::Result<Running> {
    start_with_clock(config, Arc::new(SystemClock)).await
}

/// `start`, with the scheduler reading time from `clock` (tests drive it).
pub async fn start_with_clock(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Running> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    create_private_dir(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    #[cfg(unix)]
    {
        // Made beforehand, it keeps its mode, and the database's files are
        // made with the process's umask.
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&config.data_dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                data_dir = %config.data_dir.display(),
                mode = format!("{:o}", mode & 0o777),
                "the data directory is open to other users (payloads, the admin token): chmod 700 it"
            );
        }
    }
    let (token, token_source) = admin_token(&config)?;
    let token = Arc::new(AdminToken::new(
        token,
        match &token_source {
            TokenSource::File(p) => Some(p.clone()),
            TokenSource::Configured => None,
        },
    ));
    let keys = data_keys(&config)?;
    let store = Store::open(&config.data_dir, STORE_CACHE_BYTES, keys)
        .with_context(|| format!("opening the database in {}", config.data_dir.display()))?;

    delivery::recover_in_flight(&store).context("re-queueing deliveries left in flight")?;

    let shutdown = CancellationToken::new();
    // One registry per instance: counters live as long as this `Running`.
    let metrics = Arc::new(Metrics::new());
    let delivery_handle = DeliveryHandle::default();
    let ops = Operational::setup(
        store.clone(),
        delivery_handle.clone(),
        &config.scheduler.operational,
    )
    .context("setting up operational webhooks")?;
    let roots = delivery::client::TlsRoots::load(config.delivery.extra_ca_file.as_deref())
        .map_err(anyhow::Error::msg)?;
    let worker_task = {
        let (store, cfg, handle, ops, metrics, shutdown) = (
            store.clone(),
            config.delivery.clone(),
            delivery_handle.clone(),
            ops.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        actix_rt::spawn(async move {
            if let Err(e) = delivery::run(store, cfg, handle, ops, roots, metrics, shutdown).await {
                tracing::error!(error = %e, "the delivery worker stopped");
            }
        })
    };
    let scheduler = Scheduler::new(
        store.clone(),
        config.scheduler.clone(),
        ops.clone(),
        delivery_handle.clone(),
        clock,
        metrics.clone(),
    );
    let (scheduler, scheduler_task) = scheduler::start(scheduler, shutdown.clone());

    let auth_throttle = Arc::new(AuthThrottle::new(
        config.api.limits.auth_failures_per_minute,
    ));
    let state = web::Data::new(ApiState {
        store: store.clone(),
        delivery: delivery_handle.clone(),
        ops: ops.clone(),
        cfg: config.api.clone(),
        admin_token: token.clone(),
        auth_throttle: auth_throttle.clone(),
        publish_throttle: PublishThrottle::new(config.api.limits.publish_per_second),
        metrics,
        metrics_token: config.metrics.token.as_deref().map(Arc::from),
        health: api::health::HealthCheck {
            data_dir: config.data_dir.clone(),
            min_free_disk_percent: config.health.min_free_disk_percent,
            scheduler: scheduler.clone(),
        },
    });
    let dashboard_state = web::Data::new(DashboardState::new(
        store.clone(),
        delivery_handle.clone(),
        token.clone(),
        ops.clone(),
        scheduler.clone(),
        auth_throttle,
        config.api.limits.clone(),
    ));
    let listener = TcpListener::bind(config.listen)
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let url_file = config.data_dir.join(URL_FILE);
    std::fs::write(&url_file, format!("http://{}\n", local_addr(addr)))
        .with_context(|| format!("writing {}", url_file.display()))?;
    // `/metrics` is on a listener of its own (no token) or on the main one (token).
    let metrics_server = match config.metrics.listen {
        Some(at) => {
            let listener = TcpListener::bind(at)
                .with_context(|| format!("listening on {at} (metrics.listen)"))?;
            let bound = listener.local_addr()?;
            let state = state.clone();
            let server = HttpServer::new(move || {
                App::new().configure(|c| api::metrics::configure_open(c, state.clone()))
            })
            .workers(1)
            .client_request_timeout(config.api.limits.client_request_timeout)
            .keep_alive(config.api.limits.keep_alive)
            .disable_signals()
            .shutdown_timeout(5)
            .listen(listener)?
            .run();
            Some((bound, server.handle(), actix_rt::spawn(server)))
        }
        None => None,
    };
    let metrics_protected = metrics_server.is_none();
    let server = HttpServer::new(move || {
        App::new()
            .wrap(actix_web::middleware::from_fn(
                crate::telemetry::request_span,
            ))
            .configure(|c| {
                if metrics_protected {
                    api::metrics::configure_protected(c, state.clone());
                }
            })
            .configure(|c| api::configure(c, state.clone()))
            .configure(|c| dashboard::configure(c, dashboard_state.clone()))
    })
    .client_request_timeout(config.api.limits.client_request_timeout)
    .keep_alive(config.api.limits.keep_alive)
    .disable_signals()
    .shutdown_timeout(10)
    .listen(listener)?
    .run();
    let handle = server.handle();
    let server_task = actix_rt::spawn(server);
    Ok(Running {
        addr,
        token,
        token_source,
        store,
        server: handle,
        shutdown,
        server_task,
        worker_task,
        scheduler_task,
        scheduler,
        url_file,
        metrics_addr: metrics_server.as_ref().map(|(a, _, _)| *a),
        metrics_server: metrics_server.map(|(_, h, t)| (h, t)),
    })
}

/// Where a client on this machine reaches a server listening on `addr`.
pub(crate) fn local_addr(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

impl Running {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The one line printed at startup: where the API, the dashboard and the token are.
    pub fn banner(&self) -> String {
        let token = match &self.token_source {
            TokenSource::Configured => {
                "admin token: as configured (WEBHOOKD_ADMIN_TOKEN or admin_token)".to_owned()
            }
            TokenSource::File(p) => format!("admin token: in {}", p.display()),
        };
        format!(
            "webhookd {} ready: API {}/api/v1, dashboard {}/, {token}",
            env!("CARGO_PKG_VERSION"),
            self.base_url(),
            self.base_url()
        )
    }

    /// Stops accepting requests, finishes the ones under way, lets the worker finish
    /// its attempts in flight, then makes everything durable.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.server.stop(true).await;
        let _ = self.server_task.await;
        if let Some((handle, task)) = self.metrics_server {
            handle.stop(true).await;
            let _ = task.await;
        }
        self.shutdown.cancel();
        let _ = self.worker_task.await;
        let _ = self.scheduler_task.await;
        drop(self.scheduler);
        let _ = std::fs::remove_file(&self.url_file);
        self.store.commit().await.context("flushing the database")?;
        // The HTTP workers drop their state (and its store handles) on their own
        // threads as they stop; wait for that, so the data dir is released when
        // this returns (a restart or an offline command may open it at once).
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.store.handles() > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        if self.store.handles() > 1 {
            tracing::warn!("stopped with the database still in use elsewhere");
            return Ok(());
        }
        // Everything is durable already; this only shortens the next start.
        let store = self.store;
        match actix_rt::task::spawn_blocking(move || store.close_with_snapshot()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not snapshot the database"),
            Err(e) => tracing::warn!(error = %e, "could not snapshot the database"),
        }
        Ok(())
    }
}

/// Tells systemd (when it started us with `Type=notify`) how we are doing; a
/// no-op without `NOTIFY_SOCKET`.
fn systemd_notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

/// Runs until SIGTERM or SIGINT, then stops gracefully.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // Handlers first: a SIGTERM that arrives as soon as the banner is out must
    // stop webhookd gracefully, not kill it.
    #[cfg(unix)]
    let (mut term, mut interrupt) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        )
    };
    let log_json = config.log_json;
    let running = start(config).await?;
    // Printed whatever `RUST_LOG` lets through: it says where the API and
    // the dashboard are.
    if log_json {
        // Shaped like the log's other lines, so that a reader of the log
        // can take every line as JSON.
        let line = serde_json::json!({
            "timestamp": crate::domain::format_time(crate::domain::now_ms()),
            "level": "INFO",
            "fields": {
                "message": running.banner(),
                "api": format!("{}/api/v1", running.base_url()),
                "dashboard": format!("{}/", running.base_url()),
            },
        });
        println!("{line}");
    } else {
        println!("{}", running.banner());
    }
    // Listening, leases recovered, worker and scheduler started: ready.
    systemd_notify(&[sd_notify::NotifyState::Ready]);
    let watchdog = sd_notify::watchdog_enabled().map(|every| {
        actix_rt::spawn(async move {
            // Twice per interval, as systemd recommends.
            let mut tick = tokio::time::interval(every / 2);
            loop {
                tick.tick().await;
                systemd_notify(&[sd_notify::NotifyState::Watchdog]);
            }
        })
    });
    let failed = running.store.failed();
    #[cfg(unix)]
    let failure = tokio::select! {
        _ = term.recv() => None,
        _ = interrupt.recv() => None,
        e = failed => Some(e),
    };
    #[cfg(not(unix))]
    let failure = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        e = failed => Some(e),
    };
    if let Some(e) = &failure {
        // Every write from now on would fail (or not be durable): stop, and
        // let the service manager start webhookd again, which opens the
        // database anew (once the cause, a full disk say, is gone).
        tracing::error!(error = %e, "making writes durable failed; webhookd stops");
    } else {
        tracing::info!("shutting down");
    }
    systemd_notify(&[sd_notify::NotifyState::Stopping]);
    let stopped = running.stop().await;
    if let Some(w) = watchdog {
        w.abort();
    }
    if let Some(e) = failure {
        anyhow::bail!(
            "making writes durable failed: {e}; restart webhookd once the cause is fixed"
        );
    }
    stopped?;
    tracing::info!("stopped");
    Ok(())
}
