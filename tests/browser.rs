//! The dashboard in a real headless Chromium (issue #3): sign in, open a failed
//! message, click Redeliver, see the successful attempt. Saves screenshots of the
//! main pages in the test's temp dir (and in `$WEBHOOKD_SCREENSHOT_DIR` if set).
//!
//! Needs Debian's `chromium` and `chromium-driver` (tests/setup.sh installs them).

#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use helpers::{Reply, TOKEN, TestReceiver, spawn_app};
use serde_json::json;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// Longest wait for an element to appear.
const WAIT: Duration = Duration::from_secs(10);

/// A chromedriver process on a free loopback port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_driver() -> Driver {
    assert!(
        Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists(),
        "Chromium and chromedriver are missing: run tests/setup.sh (it installs Debian's chromium and chromium-driver)"
    );
    // chromedriver takes a fixed port: take a free one from the OS, then hand it over.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(CHROMEDRIVER)
        .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromedriver");
    let url = format!("http://127.0.0.1:{port}");
    helpers::wait_until(
        Duration::from_secs(20),
        "chromedriver to listen",
        || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
    Driver { child, url }
}

async fn browser(driver: &Driver, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("connecting to chromedriver")
}

async fn screenshot(c: &Client, dirs: &[PathBuf], name: &str) {
    let png = c.screenshot().await.expect("taking a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "{name} is not a PNG");
    for d in dirs {
        std::fs::write(d.join(format!("{name}.png")), &png).unwrap();
    }
}

#[actix_web::test]
async fn sign_in_open_a_failed_message_and_redeliver() {
    let app = spawn_app().await;
    let mut rx = TestReceiver::start().await;
    // Every scheduled attempt fails (the first and both retries), then it recovers.
    rx.script([Reply::status(500), Reply::status(500), Reply::status(500)]);
    let app_id = app.create_app().await;
    let ep = app.endpoint_to(&app_id, &rx).await;
    let msg = app
        .publish(&app_id, json!({"eventType": "order.created", "payload": {"order": 42, "note": "<b>not bold</b>"}}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.wait_status(&app_id, &msg, &ep, 2).await;
    for _ in 0..3 {
        rx.next().await;
    }

    let tmp = tempfile::tempdir().unwrap();
    let mut shots = vec![tmp.path().to_owned()];
    if let Some(d) = std::env::var_os("WEBHOOKD_SCREENSHOT_DIR") {
        std::fs::create_dir_all(&d).unwrap();
        shots.push(d.into());
    }
    let driver = start_driver().await;
    let c = browser(&driver, &tmp.path().join("profile")).await;
    let base = &app.base_url;

    // Signing in.
    c.goto(&format!("{base}/messages/{msg}")).await.unwrap();
    let token = c
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css("input[name=token]"))
        .await
        .unwrap();
    token.send_keys(TOKEN).await.unwrap();
    c.find(Locator::Css("form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // Back on the failed message: three failed attempts, and the payload as text.
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Css("button.redeliver"))
        .await
        .unwrap();
    let page = c.source().await.unwrap();
    assert!(
        page.contains("&lt;b&gt;not bold&lt;/b&gt;"),
        "the payload is escaped"
    );
    assert_eq!(
        c.find_all(Locator::Css("li.attempt[data-status='500']"))
            .await
            .unwrap()
            .len(),
        3
    );
    screenshot(&c, &shots, "message-failed").await;

    // Redeliver: the page comes back with the successful attempt on it.
    c.find(Locator::Css("button.redeliver"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Css("li.attempt[data-status='200']"))
        .await
        .unwrap();
    let arrival = rx.next().await;
    assert_eq!(arrival.msg_id(), msg);
    let notice = c
        .find(Locator::Css("p.notice"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(notice.contains("Redelivered"), "{notice}");
    screenshot(&c, &shots, "message").await;

    // The endpoint page refreshes itself (every 10 s), but not over a
    // form with changes not saved yet.
    c.goto(&format!("{base}/apps/{app_id}/endpoints/{ep}"))
        .await
        .unwrap();
    let description = c
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css("input#description"))
        .await
        .unwrap();
    description.send_keys("typed, not saved").await.unwrap();
    // Away from the field: no longer typing, the change still unsaved.
    c.find(Locator::Css("main h1"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    helpers::wait_until(Duration::from_secs(30), "a refresh tick", || async {
        let ticks = c
            .execute(
                "return document.documentElement.dataset.refreshTicks || '0'",
                vec![],
            )
            .await
            .unwrap();
        (ticks.as_str().and_then(|t| t.parse::<u32>().ok())? >= 1).then_some(())
    })
    .await;
    let kept = c
        .find(Locator::Css("input#description"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap();
    assert_eq!(kept.as_deref(), Some("typed, not saved"));
    // Typed back to what it was, the form holds no change: refreshes go on.
    c.execute(
        "const d = document.querySelector('input#description'); d.value = d.defaultValue; \
         document.documentElement.dataset.refreshTicks = '0';",
        vec![],
    )
    .await
    .unwrap();
    c.execute(
        "document.querySelector('main h1').dataset.stale = 'yes'",
        vec![],
    )
    .await
    .unwrap();
    helpers::wait_until(Duration::from_secs(30), "a refresh", || async {
        let fresh = c
            .execute(
                "return document.documentElement.dataset.refreshTicks !== '0' \
                 && !document.querySelector('main h1').dataset.stale",
                vec![],
            )
            .await
            .unwrap();
        (fresh.as_bool() == Some(true)).then_some(())
    })
    .await;

    // The main pages render for a person.
    for (path, name) in [
        ("/".to_owned(), "overview"),
        ("/apps".to_owned(), "apps"),
        (format!("/apps/{app_id}/endpoints/{ep}"), "endpoint"),
        ("/messages".to_owned(), "messages"),
        ("/failed".to_owned(), "failed"),
        ("/event-types".to_owned(), "event-types"),
    ] {
        c.goto(&format!("{base}{path}")).await.unwrap();
        c.wait()
            .at_most(WAIT)
            .for_element(Locator::Css("main h1"))
            .await
            .unwrap();
        screenshot(&c, &shots, name).await;
    }
    c.close().await.unwrap();
    app.stop().await;
}
