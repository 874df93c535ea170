//! `webhookd-bench`: measures webhookd from the outside, through its
//! Svix-compatible HTTP API and its dashboard, as any client would.
//!
//! It starts the `webhookd` binary next to its own (or talks to `--server`),
//! runs its own receiver on 127.0.0.1, and reports throughput, latency
//! percentiles, memory, disk and start time against webhookd's targets. It
//! uses no part of the webhookd library: only HTTP, and the process.
//! All traffic stays on 127.0.0.1 (or the `--server` given).

mod api;
mod daemon;
mod receiver;
mod report;
mod scenarios;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use actix_web::web::Bytes;
use clap::{Parser, ValueEnum};

use report::{Machine, Report, Setup};
use scenarios::{Bench, Bodies, PAYLOAD_BYTES};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Scenario {
    /// The loopback ceiling: the same client posting straight to the receiver.
    Direct,
    /// Closed loop: publishers send as fast as they are acknowledged.
    Throughput,
    /// Open loop at a fixed rate; latencies from the intended send time.
    Latency,
    /// Like latency, with failing endpoints and one that outlasts the request timeout.
    Failing,
    /// A large store: disk, memory, restart time, dashboard pages.
    Stored,
    /// A queue that does not drain (`deliverAt` an hour ahead): memory.
    Backlog,
    /// A few seconds of every scenario (for CI).
    Smoke,
    /// Every scenario, one table.
    All,
}

/// Benchmarks webhookd through its HTTP API. Build both binaries first:
/// `cargo build --release --bins`.
#[derive(Parser, Clone, Debug)]
#[command(version, about)]
pub struct Opts {
    #[arg(value_enum)]
    scenario: Scenario,
    /// Publishers (closed loop) or requests in flight (direct).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How long each timed run lasts: seconds, or with a unit (`90s`, `2m`).
    #[arg(long, default_value = "60", value_parser = parse_duration)]
    pub duration: Duration,
    /// Endpoints per message (throughput and latency; `all` runs 1 and 10).
    #[arg(long, default_value_t = 1)]
    pub fanout: usize,
    /// Publishes per second of the open-loop scenarios.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Messages to preload for `stored`, or to queue for `backlog`.
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    /// Endpoints of the `failing` scenario, besides the slow one.
    #[arg(long, default_value_t = 10)]
    pub failing_endpoints: usize,
    /// Share of those that answer 500.
    #[arg(long, default_value_t = 0.1)]
    pub failing_fraction: f64,
    /// webhookd's time limit of one attempt (WEBHOOKD_REQUEST_TIMEOUT).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// How long the slow endpoint sleeps [default: the request timeout + 1 s].
    #[arg(long, value_parser = parse_duration)]
    pub slow_sleep: Option<Duration>,
    /// webhookd's retry schedule (WEBHOOKD_RETRY_SCHEDULE) [default: webhookd's].
    #[arg(long)]
    pub retry_schedule: Option<String>,
    /// Sequential requests per dashboard page in `stored`.
    #[arg(long, default_value_t = 200)]
    pub dashboard_requests: usize,
    /// How long to wait for deliveries after the last publish.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Benchmark a running webhookd at this URL instead of starting one
    /// (process figures are then skipped).
    #[arg(long, requires = "token", value_name = "URL")]
    pub server: Option<String>,
    /// Its admin token (with --server).
    #[arg(long, requires = "server")]
    pub token: Option<String>,
    /// The webhookd binary to start [default: `webhookd` next to this one].
    #[arg(long, value_name = "PATH", conflicts_with = "server")]
    pub webhookd: Option<PathBuf>,
    /// Where to make the data dirs [default: the system temp dir].
    #[arg(long, value_name = "DIR")]
    pub data_parent: Option<PathBuf>,
    /// A further variable for the webhookd started, e.g.
    /// `--daemon-env WEBHOOKD_DELIVERY__MAX_PER_ENDPOINT=128` (repeatable).
    #[arg(long, value_name = "NAME=VALUE", value_parser = parse_env)]
    pub daemon_env: Vec<(String, String)>,
    /// RUST_LOG of the webhookd started.
    #[arg(long, default_value = "warn")]
    pub daemon_log: String,
    /// Worker threads of the receiver.
    #[arg(long, default_value_t = 2)]
    pub receiver_workers: usize,
    /// Connection limit of the client [default: the larger of 512 and --concurrency].
    #[arg(long)]
    pub connections: Option<usize>,
    /// Time limit of one request of the client.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub client_timeout: Duration,
    /// Print one JSON object with every figure instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write that JSON object to FILE.
    #[arg(long, value_name = "FILE")]
    pub json_file: Option<PathBuf>,
}

/// Seconds (`20`, `0.5`) or a duration with a unit (`1500ms`, `2m`).
fn parse_duration(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs >= 0.0 && secs.is_finite() => Ok(Duration::from_secs_f64(secs)),
        Ok(_) => Err(format!("{s}: not a duration")),
        Err(_) => humantime::parse_duration(s).map_err(|e| format!("{s}: {e}")),
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s}: expected NAME=VALUE"))
}

/// How many distinct messages the publishers take turns with.
const DISTINCT_BODIES: usize = 1024;

/// 1 KiB JSON payloads, each with its own random data (letters and digits,
/// about six bits of entropy a byte, so they compress less than most JSON),
/// and the messages that carry them: nothing that stores or compresses them
/// gains from one message repeating another.
fn bodies() -> (Bodies, Bodies) {
    use rand::Rng as _;
    use rand::distr::Alphanumeric;
    let shell = r#"{"data":""}"#.len();
    let mut rng = rand::rng();
    let (payloads, messages): (Vec<_>, Vec<_>) = (0..DISTINCT_BODIES)
        .map(|_| {
            let data: String = (&mut rng)
                .sample_iter(Alphanumeric)
                .take(PAYLOAD_BYTES - shell)
                .map(char::from)
                .collect();
            let payload = format!(r#"{{"data":"{data}"}}"#);
            debug_assert_eq!(payload.len(), PAYLOAD_BYTES);
            let message = format!(r#"{{"eventType":"bench.event","payload":{payload}}}"#);
            (Bytes::from(payload), Bytes::from(message))
        })
        .unzip();
    (Bodies::new(payloads), Bodies::new(messages))
}

/// The tiny settings of `smoke`.
fn smoke(opts: &mut Opts) {
    opts.concurrency = 4;
    opts.duration = Duration::from_secs(2);
    opts.rate = 50;
    opts.messages = 200;
    opts.failing_endpoints = 10;
    opts.failing_fraction = 0.1;
    opts.request_timeout = Duration::from_secs(1);
    opts.slow_sleep = Some(Duration::from_millis(1500));
    opts.dashboard_requests = 20;
    // Generous: a debug build on a busy CI machine delivers slowly, and only
    // the counts matter here.
    opts.drain_timeout = Duration::from_secs(120);
}

fn say(what: String) {
    eprintln!("webhookd-bench: {what}");
}

async fn run(mut opts: Opts) -> anyhow::Result<Report> {
    let scenario = opts.scenario;
    if scenario == Scenario::Smoke {
        smoke(&mut opts);
    }
    let bin = match (&opts.server, &opts.webhookd) {
        (Some(_), _) => None,
        (None, Some(path)) => Some(path.clone()),
        (None, None) => Some(daemon::sibling_binary()?),
    };
    let (payload, message) = bodies();
    let connections = opts.connections.unwrap_or(opts.concurrency.max(512));
    let (cores, memory_bytes) = daemon::machine();
    let b = Bench {
        data_parent: opts.data_parent.clone().unwrap_or_else(std::env::temp_dir),
        bin,
        message,
        payload,
        connections,
        opts,
    };
    let o = &b.opts;
    let mut report = Report {
        schema: 1,
        scenario: format!("{scenario:?}").to_lowercase(),
        machine: Machine {
            cores,
            memory_bytes,
        },
        setup: Setup {
            daemon: if b.bin.is_some() {
                "spawned"
            } else {
                "external"
            },
            webhookd: b
                .bin
                .as_ref()
                .map(|p| p.display().to_string())
                .or_else(|| o.server.clone()),
            payload_bytes: PAYLOAD_BYTES,
            request_timeout_s: o.request_timeout.as_secs_f64(),
            retry_schedule: o.retry_schedule.clone(),
            daemon_log: o.daemon_log.clone(),
            daemon_env: o
                .daemon_env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            receiver_workers: o.receiver_workers,
            client_connections: connections,
        },
        direct: None,
        throughput: Vec::new(),
        latency: None,
        failing: None,
        stored: None,
        backlog: None,
        figures: Vec::new(),
    };
    let every = matches!(scenario, Scenario::All | Scenario::Smoke);
    let secs = o.duration.as_secs_f64();
    if every || scenario == Scenario::Direct {
        say(format!("direct: {} in flight for {secs} s", o.concurrency));
        report.direct = Some(scenarios::direct(&b, o.concurrency, o.duration).await?);
    }
    let fanouts = if every { vec![1, 10] } else { vec![o.fanout] };
    if every || scenario == Scenario::Throughput {
        for f in fanouts {
            say(format!(
                "throughput: {} publishers for {secs} s, fan-out {f}",
                o.concurrency
            ));
            report
                .throughput
                .push(scenarios::throughput(&b, o.concurrency, o.duration, f).await?);
        }
    }
    if every || scenario == Scenario::Latency {
        let f = if every { 1 } else { o.fanout };
        say(format!(
            "latency: {} msg/s for {secs} s, fan-out {f}",
            o.rate
        ));
        report.latency = Some(scenarios::open_loop(&b, o.rate, o.duration, f, 0, false).await?);
    }
    if every || scenario == Scenario::Failing {
        report.failing = Some(
            scenarios::failing(
                &b,
                o.rate,
                o.duration,
                o.failing_endpoints,
                o.failing_fraction,
            )
            .await?,
        );
    }
    if every || scenario == Scenario::Stored {
        say(format!("stored: preloading {} messages", o.messages));
        report.stored =
            Some(scenarios::stored(&b, o.messages, o.concurrency, o.dashboard_requests).await?);
    }
    // Not part of `all`: it measures memory only, and waits for the
    // scheduler.
    if matches!(scenario, Scenario::Backlog | Scenario::Smoke) {
        say(format!("backlog: queueing {} messages", o.messages));
        report.backlog = Some(scenarios::backlog(&b, o.messages, o.concurrency).await?);
    }
    report.figures = report.figures();
    Ok(report)
}

fn main() -> ExitCode {
    let opts = Opts::parse();
    let (json, json_file) = (opts.json, opts.json_file.clone());
    let report = match actix_web::rt::System::new().block_on(run(opts)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("webhookd-bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let text = serde_json::to_string_pretty(&report).expect("the report serializes");
    if let Some(path) = json_file
        && let Err(e) = std::fs::write(&path, format!("{text}\n"))
    {
        eprintln!("webhookd-bench: writing {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    if json {
        println!("{text}");
    } else {
        println!(
            "webhookd-bench {}: {}; {} cores, {:.1} GiB; webhookd {} ({}); {} B payloads",
            env!("CARGO_PKG_VERSION"),
            report.scenario,
            report.machine.cores,
            report.machine.memory_bytes as f64 / (1u64 << 30) as f64,
            report.setup.webhookd.as_deref().unwrap_or("?"),
            report.setup.daemon,
            report.setup.payload_bytes,
        );
        if !report.setup.daemon_env.is_empty() {
            println!(
                "webhookd environment: {}",
                report.setup.daemon_env.join(" ")
            );
        }
        println!();
        print!("{}", report::table(&report.figures));
    }
    ExitCode::SUCCESS
}
