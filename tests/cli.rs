//! The real binary as a process: configuration errors, the startup line and the
//! token file, graceful SIGTERM, and durability across `kill -9` (issue #2).

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};

const TOKEN: &str = "cli-test-token-0123456789";
const DEADLINE: Duration = Duration::from_secs(30);
/// How long a graceful stop may take here: HTTP requests get 10 s to finish,
/// attempts in flight at most the request timeout (the unit allows 90 s).
const SHUTDOWN_BOUND: Duration = Duration::from_secs(30);

/// A webhookd process and the address it printed.
struct Daemon {
    child: Child,
    base: String,
    banner: String,
    /// Lines printed before the startup line.
    early: Vec<String>,
    /// Lines printed after the startup line.
    lines: mpsc::Receiver<String>,
}

fn command(data_dir: &Path) -> Command {
    configured(Command::new(env!("CARGO_BIN_EXE_webhookd")), data_dir)
}

/// `cmd` (webhookd, or what runs it) with the tests' settings.
fn configured(mut cmd: Command, data_dir: &Path) -> Command {
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("WEBHOOKD_LISTEN", "127.0.0.1:0")
        .env("WEBHOOKD_DATA_DIR", data_dir)
        .env("WEBHOOKD_ALLOW_SUBNETS", "127.0.0.0/8")
        .env("WEBHOOKD_RETRY_SCHEDULE", "100ms,200ms,400ms")
        .env("RUST_LOG", "warn");
    cmd
}

impl Daemon {
    /// Starts the binary and waits for its startup line.
    fn start(mut cmd: Command) -> Daemon {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting webhookd");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut early = Vec::new();
        let banner = loop {
            let line = rx
                .recv_timeout(DEADLINE)
                .expect("webhookd printed no startup line");
            if line.contains(" ready: ") {
                break line;
            }
            early.push(line);
        };
        let base = banner
            .split("API ")
            .nth(1)
            .and_then(|s| s.split("/api/v1").next())
            .expect("the startup line names the API URL")
            .to_owned();
        Daemon {
            child,
            base,
            banner,
            early,
            lines: rx,
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Waits for the process to exit, up to `limit`.
    fn wait(self, limit: Duration) -> std::process::ExitStatus {
        self.wait_with_output(limit).0
    }

    /// Waits for the process to exit, up to `limit`; also returns what it printed
    /// after the startup line.
    fn wait_with_output(mut self, limit: Duration) -> (std::process::ExitStatus, Vec<String>) {
        let until = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The reader ends at the end of the output, which has come.
                let lines = self.lines.iter().collect();
                return (status, lines);
            }
            assert!(
                Instant::now() < until,
                "webhookd did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn with_token(mut cmd: Command) -> Command {
    cmd.env("WEBHOOKD_ADMIN_TOKEN", TOKEN);
    cmd
}

async fn call(
    client: &awc::Client,
    method: &str,
    url: String,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    let req = match method {
        "POST" => client.post(url),
        "DELETE" => client.delete(url),
        _ => client.get(url),
    }
    .insert_header(("authorization", format!("Bearer {TOKEN}")));
    let mut resp = match body {
        Some(b) => req.send_json(&b).await,
        None => req.send().await,
    }
    .map_err(|e| e.to_string())?;
    let bytes = resp.body().await.map_err(|e| e.to_string())?;
    Ok((
        resp.status().as_u16(),
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

#[test]
fn invalid_configuration_exits_nonzero_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (key, value, named) in [
        ("WEBHOOKD_LISTEN", "not-an-address", "listen"),
        ("WEBHOOKD_RETRY_SCHEDULE", "5s,soon", "retry_schedule"),
        ("WEBHOOKD_ALLOW_SUBNETS", "10.0.0.0/99", "allow_subnets"),
    ] {
        let out = command(dir.path()).env(key, value).output().unwrap();
        assert!(!out.status.success(), "{key}={value} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(named),
            "{key}={value}: `{stderr}` does not name `{named}`"
        );
    }
    let missing = command(dir.path())
        .args(["--config", "/nonexistent/webhookd.toml"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/webhookd.toml"));
}

/// A database whose key file is missing (restored into a new data dir
/// without it, say) is not given a new key: that would open none of its
/// secrets and stand in the way of the right key. webhookd stops, naming
/// the key file, and writes nothing.
#[actix_web::test]
async fn a_database_without_its_key_file_is_not_given_a_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(with_token(command(dir.path())));
    // An endpoint: a secret sealed with the key.
    app_with_endpoint(&client(), &d.base, "http://127.0.0.1:9/hook").await;
    d.signal("-TERM");
    assert!(d.wait(SHUTDOWN_BOUND).success());
    let key = dir.path().join("encryption-key");
    let moved = dir.path().join("moved-key");
    std::fs::rename(&key, &moved).unwrap();
    let out = with_token(command(dir.path())).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(key.to_str().unwrap()), "{stderr}");
    assert!(!key.exists(), "a new key was written");
    // With its key back it starts.
    std::fs::rename(&moved, &key).unwrap();
    let d = Daemon::start(with_token(command(dir.path())));
    d.signal("-TERM");
    assert!(d.wait(SHUTDOWN_BOUND).success());
}

/// `check-config` reads the files `serve` would and refuses what `serve`
/// would refuse (it passed a missing CA file or a malformed key file).
#[test]
fn check_config_reads_the_ca_and_key_files() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "not a key").unwrap();
    for (name, value, named) in [
        (
            "WEBHOOKD_DELIVERY__EXTRA_CA_FILE",
            "/nonexistent/ca.pem",
            "extra_ca_file",
        ),
        (
            "WEBHOOKD_ENCRYPTION__KEY_FILE",
            key.to_str().unwrap(),
            key.to_str().unwrap(),
        ),
    ] {
        let out = command(dir.path())
            .env(name, value)
            .arg("check-config")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name}={value} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(named), "{name}: {stderr}");
    }
    let out = command(dir.path()).arg("check-config").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        !dir.path().join("encryption-key").exists(),
        "check-config wrote a key"
    );
}

#[test]
fn check_config_masks_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = with_token(command(dir.path()))
        .arg("check-config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("retry_schedule = \"100ms,200ms,400ms\""),
        "{text}"
    );
    assert!(text.contains("admin_token = \"********\""), "{text}");
    assert!(!text.contains(TOKEN));
}

#[test]
fn first_start_generates_a_private_token_and_restart_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = Daemon::start(command(&data));
    let token_file = data.join("admin-token");
    assert!(
        first.banner.contains(&token_file.display().to_string()),
        "{}",
        first.banner
    );
    assert!(first.banner.contains("/api/v1") && first.banner.contains("dashboard"));
    let token = std::fs::read_to_string(&token_file).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(&data).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o077, 0, "the data dir is private");
    }
    first.signal("-TERM");
    assert!(first.wait(DEADLINE).success());
    let second = Daemon::start(command(&data));
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), token);
    // The encryption key cannot be rotated under a running daemon...
    let rotate = || {
        command(&data)
            .arg("rotate-key")
            .output()
            .expect("running webhookd rotate-key")
    };
    let out = rotate();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stop it first"), "{err}");
    second.signal("-TERM");
    assert!(second.wait(DEADLINE).success());
    // ...and can once it stopped; the key file stays private.
    let key_file = data.join("encryption-key");
    let old_key = std::fs::read_to_string(&key_file).unwrap();
    let out = rotate();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("now encrypted with key"));
    assert_ne!(std::fs::read_to_string(&key_file).unwrap(), old_key);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let third = Daemon::start(command(&data));
    third.signal("-TERM");
    assert!(third.wait(DEADLINE).success());
}

#[actix_web::test]
async fn logs_are_json_when_configured_and_never_hold_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = with_token(command(dir.path()));
    cmd.env("WEBHOOKD_LOG_FORMAT", "json")
        .env("WEBHOOKD_RETRY_SCHEDULE", "")
        .env("RUST_LOG", "info");
    let d = Daemon::start(cmd);
    // The startup line too is a JSON object (it was the one plain line).
    for line in d.early.iter().chain([&d.banner]) {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        if line == &d.banner {
            assert_eq!(v["fields"]["api"], format!("{}/api/v1", d.base), "{line}");
            assert_eq!(v["level"], "INFO", "{line}");
        }
    }
    // A delivery that fails (nothing listens at the port) is logged with
    // the id of its attempt record.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    let client = client();
    let app_id = app_with_endpoint(&client, &d.base, &hook).await;
    let (status, msg) = call(
        &client,
        "POST",
        format!("{}/api/v1/app/{app_id}/msg", d.base),
        Some(json!({"eventType": "t", "payload": {}})),
    )
    .await
    .unwrap();
    assert_eq!(status, 202);
    let attempts = format!(
        "{}/api/v1/app/{app_id}/attempt/msg/{}",
        d.base,
        msg["id"].as_str().unwrap()
    );
    let until = Instant::now() + DEADLINE;
    let attempt_id = loop {
        let (_, list) = call(&client, "GET", attempts.clone(), None).await.unwrap();
        if let Some(id) = list["data"][0]["id"].as_str() {
            break id.to_owned();
        }
        assert!(Instant::now() < until, "no attempt recorded");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    };
    d.signal("-TERM");
    let (status, lines) = d.wait_with_output(SHUTDOWN_BOUND);
    assert!(status.success());
    let logs: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    assert!(
        logs.iter()
            .any(|l| l["fields"]["message"] == "shutting down"),
        "{lines:?}"
    );
    assert!(
        logs.iter()
            .any(|l| l["fields"]["message"] == "delivery failed"
                && l["span"]["attempt_id"] == attempt_id.as_str()),
        "{lines:?}"
    );
    assert!(lines.iter().all(|l| !l.contains(TOKEN)));
}

/// A data dir made beforehand open to other users is named in a warning
/// (webhookd makes its own 0700, and leaves one it finds as it is).
#[test]
fn a_data_dir_open_to_others_is_warned_about() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let warned = |mode: u32| {
        let data = dir.path().join(format!("data-{mode:o}"));
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(mode)).unwrap();
        let d = Daemon::start(with_token(command(&data)));
        let early = d.early.clone();
        d.signal("-TERM");
        assert!(d.wait(SHUTDOWN_BOUND).success());
        // Plain text when not written to a terminal: journald keeps lines
        // with colour codes as binary data.
        assert!(early.iter().all(|l| !l.contains('\x1b')), "{early:?}");
        early.iter().any(|l| l.contains("open to other users"))
    };
    assert!(warned(0o755));
    assert!(!warned(0o700));
}

#[test]
fn sigterm_exits_zero_and_leaves_a_snapshot_for_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(with_token(command(dir.path())));
    d.signal("-TERM");
    let status = d.wait(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    // sled's snapshots are `snap.<position in its log, hex>`; the one written
    // when the database was made is at 0, the stop's covers what was written.
    let newest = std::fs::read_dir(dir.path().join("db"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            u64::from_str_radix(name.strip_prefix("snap.")?, 16).ok()
        })
        .max();
    assert!(newest.is_some_and(|lsn| lsn > 0), "{newest:?}");
}

#[test]
fn tells_systemd_it_is_ready_alive_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut cmd = with_token(command(&dir.path().join("data")));
    cmd.env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000");
    let d = Daemon::start(cmd);
    let mut buf = [0u8; 512];
    let mut next = || {
        let n = socket
            .recv(&mut buf)
            .expect("a notification within the deadline");
        String::from_utf8_lossy(&buf[..n]).trim().to_owned()
    };
    assert_eq!(next(), "READY=1");
    // Keep-alives follow, at half the watchdog interval.
    assert_eq!(next(), "WATCHDOG=1");
    assert_eq!(next(), "WATCHDOG=1");
    d.signal("-TERM");
    let stopping = loop {
        let m = next();
        if m != "WATCHDOG=1" {
            break m;
        }
    };
    assert_eq!(stopping, "STOPPING=1");
    assert!(d.wait(DEADLINE).success());
}

#[test]
fn the_unit_file_verifies_and_is_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/webhookd.service"))
        .unwrap()
        .replace("/usr/local/bin/webhookd", env!("CARGO_BIN_EXE_webhookd"));
    let path = dir.path().join("webhookd.service");
    std::fs::write(&path, unit).unwrap();
    let analyze = |args: &[&str]| {
        Command::new("systemd-analyze")
            .args(args)
            .arg(&path)
            .output()
            .expect("systemd-analyze runs (tests/setup.sh installs it)")
    };
    let verify = analyze(&["verify"]);
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "{complaints}");
    assert!(complaints.trim().is_empty(), "{complaints}");
    let security = analyze(&["security", "--offline=yes"]);
    let report = String::from_utf8_lossy(&security.stdout);
    let score: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for webhookd.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in: {report}"));
    println!("systemd-analyze security exposure: {score}");
    assert!(score < 2.0, "exposure {score}:\n{report}");
}

/// Receives webhooks and remembers every `webhook-id` it saw.
/// Answers after `delay` (attempts stay in flight that long).
async fn start_receiver(delay: Duration) -> (String, Arc<Mutex<HashSet<String>>>) {
    let (_, open) = tokio::sync::watch::channel(true);
    start_gated_receiver(delay, open).await
}

/// Like `start_receiver`, holding every request until `gate` is true; only
/// answered requests are remembered.
async fn start_gated_receiver(
    delay: Duration,
    gate: tokio::sync::watch::Receiver<bool>,
) -> (String, Arc<Mutex<HashSet<String>>>) {
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let s = seen.clone();
    let url = serve_hooks(move |id| {
        let (s, mut gate) = (s.clone(), gate.clone());
        async move {
            let _ = gate.wait_for(|open| *open).await;
            if let Some(id) = id {
                s.lock().unwrap().insert(id);
            }
            actix_rt::time::sleep(delay).await;
        }
    });
    (url, seen)
}

/// Serves every request on 127.0.0.1 with `answer`, which gets its
/// `webhook-id`, and then a 200; returns the hook's URL.
fn serve_hooks<F, Fut>(answer: F) -> String
where
    F: Fn(Option<String>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = HttpServer::new(move || {
        let answer = answer.clone();
        App::new().default_service(web::to(move |req: HttpRequest, _body: web::Bytes| {
            let id = req
                .headers()
                .get("webhook-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let answered = answer(id);
            async move {
                answered.await;
                HttpResponse::Ok().finish()
            }
        }))
    })
    .workers(2)
    .listen(listener)
    .unwrap()
    .run();
    actix_rt::spawn(server);
    format!("http://127.0.0.1:{port}/hook")
}

fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish()
}

/// Creates an application with one endpoint at `hook`; returns the app's id.
async fn app_with_endpoint(client: &awc::Client, base: &str, hook: &str) -> String {
    let (status, app) = call(
        client,
        "POST",
        format!("{base}/api/v1/app"),
        Some(json!({"name": "load"})),
    )
    .await
    .unwrap();
    assert_eq!(status, 201);
    let app_id = app["id"].as_str().unwrap().to_owned();
    let (status, _) = call(
        client,
        "POST",
        format!("{base}/api/v1/app/{app_id}/endpoint"),
        Some(json!({"url": hook})),
    )
    .await
    .unwrap();
    assert_eq!(status, 201);
    app_id
}

/// Eight publishers that publish until the daemon stops answering, pushing the
/// id of every acknowledged (202) message to `acked`.
fn publish_until_gone(
    client: &awc::Client,
    base: &str,
    app_id: &str,
    acked: &Arc<Mutex<Vec<String>>>,
) -> Vec<actix_rt::task::JoinHandle<()>> {
    let url = format!("{base}/api/v1/app/{app_id}/msg");
    (0..8)
        .map(|p| {
            let (acked, url, client) = (acked.clone(), url.clone(), client.clone());
            actix_rt::spawn(async move {
                for i in 0.. {
                    let body = json!({"eventType": "load.test", "payload": {"publisher": p, "i": i, "pad": "x".repeat(512)}});
                    match call(&client, "POST", url.clone(), Some(body)).await {
                        Ok((202, v)) => acked.lock().unwrap().push(v["id"].as_str().unwrap().to_owned()),
                        Ok((status, v)) => panic!("publish answered {status}: {v}"),
                        Err(_) => break, // the daemon is gone
                    }
                }
            })
        })
        .collect()
}

/// Waits until every id in `expected` was delivered.
async fn all_delivered(expected: &HashSet<String>, seen: &Mutex<HashSet<String>>) {
    let until = Instant::now() + DEADLINE;
    loop {
        let missing = expected.difference(&seen.lock().unwrap()).count();
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < until,
            "{missing} of {} acknowledged messages were never delivered",
            expected.len()
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every message that got a 202 is delivered, even when the daemon is killed
/// with SIGKILL while publishes and deliveries are under way.
#[actix_web::test]
async fn every_acknowledged_publish_survives_kill_9() {
    acknowledged_publishes_survive("-KILL", Duration::ZERO).await;
}

/// A change the API or the dashboard answered survives `kill -9` right
/// after the answer: a rotated secret does not come back as it was (nor a
/// deleted endpoint), nor an endpoint disabled in the dashboard. Each
/// layer's change is the last before a kill of its own: a sync covers
/// every write before it.
#[actix_web::test]
async fn acknowledged_changes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(with_token(command(dir.path())));
    let client = client();
    let base = daemon.base.clone();
    let app_id = app_with_endpoint(&client, &base, "http://127.0.0.1:9/kept").await;
    let eps = |base: &str| format!("{base}/api/v1/app/{app_id}/endpoint");
    let (status, gone) = call(
        &client,
        "POST",
        eps(&base),
        Some(json!({"url": "http://127.0.0.1:9/gone"})),
    )
    .await
    .unwrap();
    assert_eq!(status, 201);
    let (_, list) = call(&client, "GET", eps(&base), None).await.unwrap();
    let kept = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["url"] == "http://127.0.0.1:9/kept")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let gone_id = gone["id"].as_str().unwrap();
    let (status, _) = call(&client, "DELETE", format!("{}/{gone_id}", eps(&base)), None)
        .await
        .unwrap();
    assert_eq!(status, 204);
    let (status, rotated) = call(
        &client,
        "POST",
        format!("{}/{kept}/secret/rotate", eps(&base)),
        Some(json!({})),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    daemon.signal("-KILL");
    daemon.wait(DEADLINE);

    let daemon = Daemon::start(with_token(command(dir.path())));
    let base = daemon.base.clone();
    let secret_url = format!("{}/{kept}/secret", eps(&base));
    let (_, after) = call(&client, "GET", secret_url, None).await.unwrap();
    assert_eq!(after["key"], rotated["key"], "the rotation was lost");
    let (status, _) = call(&client, "GET", format!("{}/{gone_id}", eps(&base)), None)
        .await
        .unwrap();
    assert_eq!(status, 404, "the deleted endpoint came back");

    // The dashboard: sign in, take the form's token, disable the endpoint.
    let browser = awc::Client::builder().disable_redirects().finish();
    let resp = browser
        .post(format!("{base}/login"))
        .send_form(&[("token", TOKEN), ("next", "/")])
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let cookie = resp.headers().get("set-cookie").unwrap().to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let mut page = browser
        .get(format!("{base}/"))
        .insert_header(("cookie", cookie.as_str()))
        .send()
        .await
        .unwrap();
    let html = String::from_utf8(page.body().await.unwrap().to_vec()).unwrap();
    let start = html.find("name=\"csrf\" value=\"").unwrap() + 19;
    let csrf = &html[start..start + html[start..].find('"').unwrap()];
    let resp = browser
        .post(format!("{base}/apps/{app_id}/endpoints/{kept}/toggle"))
        .insert_header(("cookie", cookie.as_str()))
        .send_form(&[("csrf", csrf), ("disabled", "true")])
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    daemon.signal("-KILL");
    daemon.wait(DEADLINE);

    let restarted = Daemon::start(with_token(command(dir.path())));
    let (_, endpoint) = call(
        &client,
        "GET",
        format!("{}/{kept}", eps(&restarted.base)),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        endpoint["disabled"], true,
        "the dashboard's change was lost"
    );
    restarted.signal("-TERM");
    assert!(restarted.wait(DEADLINE).success());
}

/// SIGTERM under load: webhookd stops accepting, finishes or re-queues the
/// attempts in flight (the receiver is slow), exits 0 within the bound, and
/// loses nothing that was acknowledged.
#[actix_web::test]
async fn sigterm_under_load_exits_zero_and_loses_nothing() {
    acknowledged_publishes_survive("-TERM", Duration::from_millis(300)).await;
}

/// Publishes from eight clients until 400 are acknowledged, sends `signal`,
/// restarts on the same data dir, and checks every acknowledged message arrives.
async fn acknowledged_publishes_survive(signal: &str, receiver_delay: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let (hook, seen) = start_receiver(receiver_delay).await;
    let daemon = Daemon::start(with_token(command(dir.path())));
    let client = client();
    let app_id = app_with_endpoint(&client, &daemon.base, &hook).await;

    // Eight publishers until 400 acknowledgements, then the signal mid-stream.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let target = 400;
    let publishers = publish_until_gone(&client, &daemon.base, &app_id, &acked);
    let until = Instant::now() + DEADLINE;
    while acked.lock().unwrap().len() < target {
        assert!(Instant::now() < until, "publishing stalled");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    daemon.signal(signal);
    let status = daemon.wait(SHUTDOWN_BOUND);
    if signal == "-TERM" {
        assert!(status.success(), "{status:?}");
    }
    for p in publishers {
        p.await.unwrap();
    }
    let acked: HashSet<String> = acked.lock().unwrap().iter().cloned().collect();
    assert!(acked.len() >= target);

    // Restart on the same data dir: everything acknowledged arrives.
    let seen_before = seen.lock().unwrap().len();
    println!(
        "{signal}: {} acknowledged, {seen_before} delivered before the stop",
        acked.len()
    );
    let restarted = Daemon::start(with_token(command(dir.path())));
    all_delivered(&acked, &seen).await;
    // And the API lists them all.
    let (status, list) = call(
        &client,
        "GET",
        format!("{}/api/v1/app/{app_id}/msg?limit=1", restarted.base),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    restarted.signal("-TERM");
    assert!(restarted.wait(DEADLINE).success());
}

/// A write that cannot reach the disk (here: past the file size limit, as
/// on a full disk) stops webhookd with an error, so that its service manager
/// starts it again: sled fails every write after one that failed, until
/// the database is opened again. Nothing acknowledged before is lost. (It
/// went on answering 500 to every write, its health check still fine.)
#[actix_web::test]
async fn a_write_that_cannot_reach_the_disk_stops_webhookd_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (hook, seen) = start_receiver(Duration::ZERO).await;
    // SIGXFSZ ignored, so that a write past the limit fails instead of
    // killing the process; the limit in 512-byte blocks (8 MiB).
    let mut limited = Command::new("sh");
    limited.args([
        "-c",
        "trap '' XFSZ; ulimit -f 16384; exec \"$0\"",
        env!("CARGO_BIN_EXE_webhookd"),
    ]);
    let daemon = Daemon::start(with_token(configured(limited, dir.path())));
    let client = client();
    let app_id = app_with_endpoint(&client, &daemon.base, &hook).await;
    let url = format!("{}/api/v1/app/{app_id}/msg", daemon.base);
    let mut acked = HashSet::new();
    let refused = loop {
        assert!(acked.len() < 1_000, "8 MiB took 1,000 publishes of 64 KiB");
        // Random hex: sled's compression leaves it about as large.
        let pad: String = (0..4_096)
            .map(|_| format!("{:016x}", rand::random::<u64>()))
            .collect();
        let body = json!({"eventType": "fill", "payload": {"pad": pad}});
        match call(&client, "POST", url.clone(), Some(body)).await {
            Ok((202, v)) => acked.insert(v["id"].as_str().unwrap().to_owned()),
            refused => break refused,
        };
    };
    assert!(
        matches!(refused, Ok((500, _)) | Err(_)),
        "a publish past the limit: {refused:?}"
    );
    let status = daemon.wait(SHUTDOWN_BOUND);
    assert_eq!(status.code(), Some(1), "{status:?}");

    let restarted = Daemon::start(with_token(command(dir.path())));
    all_delivered(&acked, &seen).await;
    let (status, health) = call(
        &client,
        "GET",
        format!("{}/api/v1/health", restarted.base),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 204, "{health}");
    restarted.signal("-TERM");
    assert!(restarted.wait(DEADLINE).success());
}

/// Deliveries the worker holds only in memory (handed over by their publish,
/// never queued) when the daemon is killed are made after the restart. The
/// receiver leaves every request unanswered until the kill, so none of them
/// was recorded: some were in flight, the rest waiting for a slot. Reconcile
/// is off, so what finds them is the start.
#[actix_web::test]
async fn deliveries_held_in_memory_at_kill_9_are_made_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let answering = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (hook, seen) = start_receiver_answering_when(answering.clone());
    let without_reconcile = || {
        let mut cmd = with_token(command(dir.path()));
        cmd.env("WEBHOOKD_SCHEDULER__RECONCILE", "off");
        cmd
    };
    let daemon = Daemon::start(without_reconcile());
    let client = client();
    let app_id = app_with_endpoint(&client, &daemon.base, &hook).await;
    // More than the endpoint takes at once (64), fewer than the worker holds.
    let mut acked = HashSet::new();
    for i in 0..100 {
        let body = json!({"eventType": "held", "payload": {"i": i}});
        let url = format!("{}/api/v1/app/{app_id}/msg", daemon.base);
        let (status, v) = call(&client, "POST", url, Some(body)).await.unwrap();
        assert_eq!(status, 202, "{v}");
        acked.insert(v["id"].as_str().unwrap().to_owned());
    }
    daemon.signal("-KILL");
    daemon.wait(SHUTDOWN_BOUND);
    answering.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(seen.lock().unwrap().is_empty(), "nothing answered before");
    let _restarted = Daemon::start(without_reconcile());
    all_delivered(&acked, &seen).await;
}

/// A receiver that leaves every request unanswered until `answering` is set,
/// and from then on answers at once, remembering each `webhook-id`.
fn start_receiver_answering_when(
    answering: Arc<std::sync::atomic::AtomicBool>,
) -> (String, Arc<Mutex<HashSet<String>>>) {
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let s = seen.clone();
    let url = serve_hooks(move |id| {
        let (s, answering) = (s.clone(), answering.clone());
        async move {
            if !answering.load(std::sync::atomic::Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            if let Some(id) = id {
                s.lock().unwrap().insert(id);
            }
        }
    });
    (url, seen)
}

/// An online backup taken while publishes go on restores into a new data dir
/// whose webhookd delivers every message acknowledged before the backup,
/// including those the original had in flight; an offline backup works too.
#[actix_web::test]
async fn backup_under_load_restores_and_delivers_the_pending_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (original, restored) = (dir.path().join("a"), dir.path().join("b"));
    // The receiver holds every request until the restored instance runs.
    let (open, gate) = tokio::sync::watch::channel(false);
    let (hook, seen) = start_gated_receiver(Duration::ZERO, gate).await;
    let daemon = Daemon::start(with_token(command(&original)));
    let client = client();
    let app_id = app_with_endpoint(&client, &daemon.base, &hook).await;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let publishers = publish_until_gone(&client, &daemon.base, &app_id, &acked);
    let until = Instant::now() + DEADLINE;
    while acked.lock().unwrap().len() < 200 {
        assert!(Instant::now() < until, "publishing stalled");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    let before: HashSet<String> = acked.lock().unwrap().iter().cloned().collect();

    // Online: the daemon holds the database, so the command asks it.
    let file = dir.path().join("webhookd.backup");
    let mut backup = with_token(command(&original));
    backup.arg("backup").arg("--to").arg(&file);
    let out = actix_rt::task::spawn_blocking(move || backup.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("backup of"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the backup is private");
    }
    daemon.signal("-KILL");
    let _ = daemon.wait(DEADLINE);
    for p in publishers {
        p.await.unwrap();
    }
    assert!(seen.lock().unwrap().is_empty());

    // Restore into a new data dir, with the original's encryption key.
    let restore = |to: &Path| {
        command(to)
            .args(["restore", "--from"])
            .arg(&file)
            .arg("--data-dir")
            .arg(to)
            .output()
            .unwrap()
    };
    let out = restore(&restored);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::copy(
        original.join("encryption-key"),
        restored.join("encryption-key"),
    )
    .unwrap();
    // Restoring over a database is refused.
    let out = restore(&restored);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));

    let second = Daemon::start(with_token(command(&restored)));
    open.send(true).unwrap();
    all_delivered(&before, &seen).await;
    second.signal("-TERM");
    assert!(second.wait(SHUTDOWN_BOUND).success());

    // Offline: with webhookd stopped the command reads the data dir itself.
    let offline = dir.path().join("offline.backup");
    let out = command(&restored)
        .args(["backup", "--to"])
        .arg(&offline)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = restore(&dir.path().join("c"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A damaged backup is refused and leaves nothing behind.
    let mut bytes = std::fs::read(&offline).unwrap();
    let n = bytes.len();
    bytes.truncate(n - 40);
    std::fs::write(&offline, bytes).unwrap();
    let out = command(dir.path())
        .args(["restore", "--from"])
        .arg(&offline)
        .arg("--data-dir")
        .arg(dir.path().join("d"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!dir.path().join("d").join("db").exists());
}

/// A second webhookd on a data dir in use stops at once, saying why, once.
/// (Each cause of the error was printed twice: its message carries its
/// cause, and the cause was printed again after it.)
#[test]
fn a_second_instance_on_the_same_data_dir_says_why_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = Daemon::start(command(&data));
    let out = command(&data).output().unwrap();
    daemon.signal("-TERM");
    assert!(daemon.wait(SHUTDOWN_BOUND).success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("opening the database in"), "{stderr}");
    assert_eq!(
        stderr.matches("could not acquire lock").count(),
        1,
        "{stderr}"
    );
}

/// A one-shot command logs on stderr (here sled's debug lines, asked for
/// with `RUST_LOG`), apart from its result on stdout. (Commands other than
/// `serve` installed no logger: their warnings were dropped.)
#[test]
fn commands_log_on_stderr_apart_from_their_result() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = Daemon::start(command(&data));
    daemon.signal("-TERM");
    assert!(daemon.wait(SHUTDOWN_BOUND).success());
    let out = command(&data)
        .env("RUST_LOG", "debug")
        .args(["backup", "--to"])
        .arg(dir.path().join("backup"))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with("webhookd: backup of "), "{stdout}");
    assert!(stderr.contains("DEBUG"), "{stderr}");
}

/// `webhookd token rotate` replaces the generated admin token: through the
/// running daemon (which uses it at once), or in a stopped data dir; a
/// configured token is refused.
#[actix_web::test]
async fn token_rotate_works_online_and_offline() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token_file = data.join("admin-token");
    let daemon = Daemon::start(command(&data));
    let first = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    let rotate = |cmd: Command| {
        let mut cmd = cmd;
        cmd.args(["token", "rotate"]);
        actix_rt::task::spawn_blocking(move || cmd.output().unwrap())
    };
    let out = rotate(command(&data)).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("new admin token in"));
    let second = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    assert_ne!(first, second);
    let status = |token: String| {
        let url = format!("{}/api/v1/app", daemon.base);
        async move {
            client()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status(first).await, 401);
    assert_eq!(status(second.clone()).await, 200);
    daemon.signal("-TERM");
    assert!(daemon.wait(SHUTDOWN_BOUND).success());

    let out = rotate(command(&data)).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let third = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    assert_ne!(third, second);
    let restarted = Daemon::start(command(&data));
    let url = format!("{}/api/v1/app", restarted.base);
    let ok = client().get(url).bearer_auth(&third).send().await.unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    restarted.signal("-TERM");
    assert!(restarted.wait(SHUTDOWN_BOUND).success());

    let out = rotate(with_token(command(&data))).await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("configured"));
}
