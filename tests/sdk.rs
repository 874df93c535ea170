//! The official Svix Python SDK drives webhookd unchanged (issue #2).
//!
//! Starts webhookd in-process on 127.0.0.1:0 and runs tests/sdk/svix_sdk.py with
//! the Python of `.venv` (made by tests/setup.sh) or `$WEBHOOKD_TEST_PYTHON`.

use std::path::PathBuf;
use std::process::Command;

use webhookd::config::Config;

const TOKEN: &str = "sdk-test-token-0123456789";

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("WEBHOOKD_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run tests/setup.sh first (it installs the Svix SDK into .venv)",
        venv.display()
    );
    venv
}

#[actix_web::test]
async fn official_svix_python_sdk_works_unchanged() {
    let data = tempfile::tempdir().unwrap();
    let env: Vec<(String, String)> = [
        ("WEBHOOKD_LISTEN", "127.0.0.1:0"),
        ("WEBHOOKD_DATA_DIR", data.path().to_str().unwrap()),
        ("WEBHOOKD_ADMIN_TOKEN", TOKEN),
        ("WEBHOOKD_RETRY_SCHEDULE", "50ms,50ms"),
        ("WEBHOOKD_ALLOW_SUBNETS", "127.0.0.0/8"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let running = webhookd::app::start(Config::load_from(None, &env).unwrap())
        .await
        .unwrap();
    let url = running.base_url();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/svix_sdk.py");
    let py = python();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(py)
            .arg(script)
            .env("WEBHOOKD_URL", url)
            .env("WEBHOOKD_TOKEN", TOKEN)
            .output()
    })
    .await
    .unwrap()
    .expect("running the SDK script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    running.stop().await.unwrap();
    assert!(
        out.status.success(),
        "SDK script failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("passed, 0 failed"), "{stdout}");
}
