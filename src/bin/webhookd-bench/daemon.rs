//! Starting and stopping the webhookd under test, as a process: the binary
//! next to the bench's own, on a fresh data dir, port 0, and what only a
//! process shows (its peak RSS, the size of its data dir, how long it takes
//! to start).

use std::fs::File;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, anyhow, bail};

/// How to start webhookd; kept so it can be started again on the same data dir.
#[derive(Clone)]
pub struct Spawn {
    pub bin: PathBuf,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub listen: String,
    pub token: String,
    /// Further `WEBHOOKD_*` variables (request timeout, retry schedule) and `RUST_LOG`.
    pub env: Vec<(String, String)>,
    /// webhookd's output goes here (appended).
    pub log: PathBuf,
}

pub struct Daemon {
    child: Child,
    pub spawn: Spawn,
    /// `http://127.0.0.1:PORT`, from the startup line.
    pub base: String,
    /// From spawn to the ` ready: ` line.
    pub ready_after: Duration,
}

/// The `webhookd` binary next to this executable.
pub fn sibling_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("finding the bench's own executable")?;
    let dir = me
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", me.display()))?;
    let bin = dir.join(format!("webhookd{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        bail!(
            "no webhookd binary at {}: build both with `cargo build --release --bins` \
             (or pass --webhookd PATH, or --server URL --token T for a running one)",
            bin.display()
        );
    }
    if let Some(newer) = newer_source(&bin) {
        eprintln!(
            "webhookd-bench: warning: {} is newer than {}; `cargo build --release --bins` \
             rebuilds it (`cargo run --bin webhookd-bench` rebuilds only the bench)",
            newer.display(),
            bin.display()
        );
    }
    Ok(bin)
}

/// A source file of webhookd (in the tree this bench was built from, when it is
/// still there) changed after `bin` was built.
fn newer_source(bin: &Path) -> Option<PathBuf> {
    fn newest(dir: &Path, skip: &Path, best: &mut Option<(SystemTime, PathBuf)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                if path != skip {
                    newest(&path, skip, best);
                }
            } else if let Ok(m) = meta.modified()
                && best.as_ref().is_none_or(|(t, _)| m > *t)
            {
                *best = Some((m, path));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let built = std::fs::metadata(bin).and_then(|m| m.modified()).ok()?;
    let mut best = None;
    for dir in ["src", "templates", "static"] {
        newest(&root.join(dir), &root.join("src/bin"), &mut best);
    }
    best.filter(|(t, _)| *t > built).map(|(_, p)| p)
}

/// The process started, with its stdout being read on a thread.
struct Started {
    child: Child,
    spawned: Instant,
    /// The startup line and when it was read; then nothing (the rest goes to the log).
    ready: mpsc::Receiver<(Instant, String)>,
}

fn start_process(spawn: &Spawn) -> anyhow::Result<Started> {
    let log = File::options()
        .create(true)
        .append(true)
        .open(&spawn.log)
        .with_context(|| format!("opening {}", spawn.log.display()))?;
    let mut cmd = Command::new(&spawn.bin);
    cmd.arg("--config")
        .arg(&spawn.config)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("WEBHOOKD_LISTEN", &spawn.listen)
        .env("WEBHOOKD_DATA_DIR", &spawn.data_dir)
        .env("WEBHOOKD_ADMIN_TOKEN", &spawn.token)
        .env("WEBHOOKD_ALLOW_SUBNETS", "127.0.0.0/8")
        .envs(spawn.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log.try_clone()?);
    let spawned = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", spawn.bin.display()))?;
    let stdout = child.stdout.take().expect("stdout was piped");
    let (tx, ready) = mpsc::channel();
    // webhookd logs to stdout; it must be read all along or webhookd would block
    // on a full pipe. The startup line goes to the bench, everything to the log.
    std::thread::spawn(move || {
        let mut log = log;
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let at = Instant::now();
            let _ = writeln!(log, "{line}");
            if line.contains(" ready: ")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send((at, line));
            }
        }
    });
    Ok(Started {
        child,
        spawned,
        ready,
    })
}

/// The last lines of the log, for an error message.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl Daemon {
    /// Starts webhookd and waits (up to `limit`) for its startup line.
    pub async fn start(spawn: Spawn, limit: Duration) -> anyhow::Result<Daemon> {
        let started = start_process(&spawn)?;
        Self::await_ready(started, spawn, limit).await
    }

    /// Starts webhookd on the same data dir and address again, and measures
    /// from spawn to its first answer to `GET /api/v1/health` (polled every
    /// millisecond; any HTTP answer counts) and to its startup line.
    pub async fn restart(
        spawn: Spawn,
        client: awc::Client,
        base: &str,
        limit: Duration,
    ) -> anyhow::Result<(Daemon, Duration, u16)> {
        let mut started = start_process(&spawn)?;
        let api = crate::api::Api::new(client, base, &spawn.token);
        let deadline = started.spawned + limit;
        let (serving, status) = loop {
            if let Ok(status) = api.health().await {
                break (started.spawned.elapsed(), status);
            }
            if let Some(status) = started.child.try_wait()? {
                bail!(
                    "webhookd exited ({status}) while starting:\n{}",
                    log_tail(&spawn.log)
                );
            }
            if Instant::now() > deadline {
                let _ = started.child.kill();
                bail!("webhookd did not answer within {limit:?} of its start");
            }
            actix_web::rt::time::sleep(Duration::from_millis(1)).await;
        };
        let daemon = Self::await_ready(started, spawn, limit).await?;
        Ok((daemon, serving, status))
    }

    async fn await_ready(
        mut started: Started,
        spawn: Spawn,
        limit: Duration,
    ) -> anyhow::Result<Daemon> {
        let deadline = started.spawned + limit;
        let (at, line) = loop {
            match started.ready.try_recv() {
                Ok(ready) => break ready,
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => {
                    let _ = started.child.kill();
                    let _ = started.child.wait();
                    bail!(
                        "webhookd ended without its startup line:\n{}",
                        log_tail(&spawn.log)
                    );
                }
            }
            if Instant::now() > deadline {
                let _ = started.child.kill();
                let _ = started.child.wait();
                bail!(
                    "webhookd printed no startup line within {limit:?}:\n{}",
                    log_tail(&spawn.log)
                );
            }
            actix_web::rt::time::sleep(Duration::from_millis(2)).await;
        };
        let base = line
            .split("API ")
            .nth(1)
            .and_then(|s| s.split("/api/v1").next())
            .ok_or_else(|| anyhow!("the startup line names no API URL: {line}"))?
            .to_owned();
        Ok(Daemon {
            child: started.child,
            spawn,
            base,
            ready_after: at - started.spawned,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident set size so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> anyhow::Result<u64> {
        proc_status_kib(self.pid(), "VmHWM:").map(|k| k * 1024)
    }

    /// Sends SIGTERM and waits up to `grace` for the exit, then kills it.
    /// Returns how long the stop took and whether it was graceful (exit 0 in time).
    pub async fn stop(mut self, grace: Duration) -> anyhow::Result<(Duration, bool)> {
        let t0 = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok((t0.elapsed(), status.success()));
            }
            if t0.elapsed() > grace {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Ok((t0.elapsed(), false));
            }
            actix_web::rt::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A daemon not stopped through `stop` (an error on the way) must not outlive the bench.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `kB` field of `/proc/PID/status`.
fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))
}

/// Bytes allocated on disk under `dir` (blocks, as `du` counts them).
pub fn disk_usage(dir: &Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            disk_usage(&entry.path())?
        } else {
            meta.blocks() * 512
        };
    }
    Ok(total)
}

/// Cores and memory of this machine, for the report.
pub fn machine() -> (usize, u64) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |k| k * 1024);
    (cores, mem)
}

/// CPU time of webhookd, of the bench itself (its receiver included) and of
/// the whole machine at one instant, in seconds.
#[derive(Clone, Copy)]
pub struct CpuMark {
    at: Instant,
    daemon: Option<f64>,
    bench: f64,
    machine: f64,
}

/// `/proc` counts CPU time in USER_HZ ticks, 100 a second on Linux.
const USER_HZ: f64 = 100.0;

/// utime + stime of a process, from `/proc/PID/stat`.
fn process_cpu(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the name and state.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / USER_HZ)
}

/// Busy time of all CPUs (everything but idle and iowait), from `/proc/stat`.
fn machine_cpu() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let t: Vec<f64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is within user)
    let busy = t.get(..8)?.iter().sum::<f64>() - t[3] - t[4];
    Some(busy / USER_HZ)
}

impl CpuMark {
    pub fn now(daemon: Option<u32>) -> CpuMark {
        CpuMark {
            at: Instant::now(),
            daemon: daemon.and_then(|pid| process_cpu(&pid.to_string())),
            bench: process_cpu("self").unwrap_or(0.0),
            machine: machine_cpu().unwrap_or(0.0),
        }
    }

    /// Cores used on average from `self` to `later`.
    pub fn until(&self, later: &CpuMark) -> crate::report::Cpu {
        let wall = later.at.saturating_duration_since(self.at).as_secs_f64();
        let per = |d: f64| if wall > 0.0 { d / wall } else { 0.0 };
        let daemon = match (self.daemon, later.daemon) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let bench = later.bench - self.bench;
        let machine = later.machine - self.machine;
        crate::report::Cpu {
            wall_s: wall,
            webhookd_cores: daemon.map(per),
            bench_cores: per(bench),
            other_cores: per((machine - bench - daemon.unwrap_or(0.0)).max(0.0)),
        }
    }
}
