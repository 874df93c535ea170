//! Secrets: endpoint credentials presented to receivers but never shown or
//! stored in clear, encryption at rest, and rotation of its key.

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::json;

use webhookd::config::Config;
use webhookd::scheduler::ManualClock;

use crate::helpers::{TestReceiver, files_containing, spawn_app, spawn_app_clocked};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const PASSWORD: &str = "correct-horse-battery-staple";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[actix_web::test]
async fn credentials_and_headers_are_presented_and_never_stored_in_clear() {
    let app = spawn_app().await;
    let mut rx = TestReceiver::start().await;
    let a = app.create_app().await;
    let ep = app
        .create_endpoint(
            &a,
            &rx.url(),
            json!({
                "credentials": {"type": "basic", "username": "hooks", "password": PASSWORD},
                "headers": {"x-api-key": "header-secret-value"},
            }),
        )
        .await;
    assert_eq!(
        ep["credentials"],
        json!({"type": "basic", "username": "hooks"})
    );
    let ep = ep["id"].as_str().unwrap().to_owned();

    app.publish_simple(&a, "a.b").await;
    let basic = format!("Basic {}", b64(&format!("hooks:{PASSWORD}")));
    let first = rx.next().await;
    assert_eq!(first.header("authorization"), basic);
    assert_eq!(first.header("x-api-key"), "header-secret-value");

    // Bearer replaces Basic; PUT without credentials keeps them.
    let (status, body) = app
        .patch(
            &format!("/app/{a}/endpoint/{ep}"),
            json!({"credentials": {"type": "bearer", "token": "tok-123"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["credentials"], json!({"type": "bearer"}));
    let (status, _) = app
        .put(&format!("/app/{a}/endpoint/{ep}"), json!({"url": rx.url()}))
        .await;
    assert_eq!(status, 200);
    let msg = app.publish_simple(&a, "a.b").await;
    assert_eq!(rx.next().await.header("authorization"), "Bearer tok-123");
    app.wait_status(&a, &msg, &ep, 0).await;

    // What the API shows never holds the secret part.
    for path in [
        format!("/app/{a}/endpoint/{ep}"),
        format!("/app/{a}/endpoint"),
        format!("/app/{a}/attempt/endpoint/{ep}"),
    ] {
        let shown = app.get_ok(&path).await.to_string();
        assert!(
            !shown.contains("tok-123") && !shown.contains(PASSWORD),
            "{path}: {shown}"
        );
    }

    // null removes them.
    let (_, body) = app
        .patch(
            &format!("/app/{a}/endpoint/{ep}"),
            json!({"credentials": null}),
        )
        .await;
    assert!(body.get("credentials").is_none(), "{body}");
    app.publish_simple(&a, "a.b").await;
    assert!(rx.next().await.headers.get("authorization").is_none());

    // Invalid credentials are a 422 naming the field, and change nothing.
    for bad in [
        json!({"type": "basic", "username": "a:b", "password": "x"}),
        json!({"type": "basic", "username": "a", "password": ""}),
        json!({"type": "bearer", "token": "line\nbreak"}),
    ] {
        let (status, body) = app
            .patch(
                &format!("/app/{a}/endpoint/{ep}"),
                json!({"credentials": bad}),
            )
            .await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["detail"][0]["loc"], json!(["body", "credentials"]));
    }
    let (status, _) = app
        .patch(
            &format!("/app/{a}/endpoint/{ep}"),
            json!({"credentials": {"type": "digest"}}),
        )
        .await;
    assert_eq!(status, 422);

    // Neither the endpoint record nor the attempt records keep them (nor a
    // custom header's value) in clear.
    let data = app.stop_keeping_data().await;
    for needle in [
        PASSWORD,
        "tok-123",
        &b64(&format!("hooks:{PASSWORD}")),
        "header-secret-value",
    ] {
        let found = files_containing(data.path(), needle.as_bytes());
        assert!(found.is_empty(), "{needle} is stored in clear in {found:?}");
    }
}

fn config_for(data: &Path) -> Config {
    Config::load_from(
        None,
        &[(
            "WEBHOOKD_DATA_DIR".into(),
            data.to_str().unwrap().to_owned(),
        )],
    )
    .unwrap()
}

/// A stopped webhookd's data dir with one app and an endpoint whose secret
/// is `SECRET`: the app's and endpoint's IDs, and the data dir.
async fn stopped_with_an_endpoint_secret() -> (String, String, tempfile::TempDir) {
    let app = spawn_app().await;
    let a = app.create_app().await;
    let ep = app
        .create_endpoint(&a, "http://127.0.0.1:9/", json!({"secret": SECRET}))
        .await;
    let ep = ep["id"].as_str().unwrap().to_owned();
    (a, ep, app.stop_keeping_data().await)
}

/// Starts webhookd on `data` and returns the endpoint's secret as the API shows it.
async fn secret_after_restart(
    data: tempfile::TempDir,
    a: &str,
    ep: &str,
) -> (String, tempfile::TempDir) {
    let app = spawn_app_clocked(
        &[],
        Arc::new(ManualClock::at(webhookd::domain::now_ms())),
        Some(data),
    )
    .await;
    let key = app.get_ok(&format!("/app/{a}/endpoint/{ep}/secret")).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    (key, app.stop_keeping_data().await)
}

#[actix_web::test]
async fn secrets_are_encrypted_at_rest_and_the_key_rotates() {
    let app = spawn_app().await;
    let a = app.create_app().await;
    let ep = app
        .create_endpoint(
            &a,
            "http://127.0.0.1:9/",
            json!({"secret": SECRET, "headers": {"x-api-key": "header-secret-value"}}),
        )
        .await;
    let ep = ep["id"].as_str().unwrap().to_owned();
    let data = app.stop_keeping_data().await;

    // The database holds neither the secret (in any form) nor the header value.
    let raw = base64::engine::general_purpose::STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let db = data.path().join("db");
    assert!(files_containing(&db, &raw).is_empty());
    assert!(files_containing(&db, SECRET.as_bytes()).is_empty());
    assert!(files_containing(&db, b"header-secret-value").is_empty());
    let key_file = data.path().join("encryption-key");
    let old_key = std::fs::read_to_string(&key_file).unwrap();
    assert_eq!(
        std::fs::metadata(&key_file)
            .map(|m| {
                use std::os::unix::fs::PermissionsExt as _;
                m.permissions().mode() & 0o777
            })
            .unwrap(),
        0o600
    );

    // Rotate: a new key, the same secrets.
    let id = webhookd::app::rotate_key(&config_for(data.path())).expect("the key rotates");
    let new_key = std::fs::read_to_string(&key_file).unwrap();
    assert_ne!(old_key, new_key);
    assert_eq!(id.len(), 8);
    assert!(!data.path().join("encryption-key.next").exists());
    let (shown, data) = secret_after_restart(data, &a, &ep).await;
    assert_eq!(shown, SECRET);

    // The old key no longer opens anything: webhookd refuses to start with it,
    // saying why, and without touching the data.
    std::fs::write(&key_file, &old_key).unwrap();
    let config = config_for(data.path());
    let err = match webhookd::app::start(config).await {
        Ok(_) => panic!("webhookd started with a key that opens nothing"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("not configured"), "{err}");
    std::fs::write(&key_file, &new_key).unwrap();
    let (shown, _) = secret_after_restart(data, &a, &ep).await;
    assert_eq!(shown, SECRET);
}

/// A backup of a stopped webhookd copies the secrets sealed: it needs no
/// key, and makes none where it finds none (the key kept elsewhere, as
/// with systemd's credentials, which a command run by hand does not get).
#[actix_web::test]
async fn a_backup_needs_no_key_and_makes_none() {
    let (a, ep, data) = stopped_with_an_endpoint_secret().await;
    let key_file = data.path().join("encryption-key");
    let kept = tempfile::tempdir().unwrap();
    std::fs::rename(&key_file, kept.path().join("key")).unwrap();

    let to = kept.path().join("backup");
    let summary = webhookd::commands::backup(&config_for(data.path()), &to, None).unwrap();
    assert!(summary.entries > 0);
    assert!(!key_file.exists(), "the backup made a key");

    let restored = tempfile::tempdir().unwrap();
    webhookd::commands::restore(&to, restored.path()).unwrap();
    std::fs::rename(
        kept.path().join("key"),
        restored.path().join("encryption-key"),
    )
    .unwrap();
    let (shown, _) = secret_after_restart(restored, &a, &ep).await;
    assert_eq!(shown, SECRET);
}

/// `token rotate` with nobody answering but the database in use (webhookd
/// starting, not listening yet) refuses: written to the file, the new token
/// would not be the one the daemon uses until its next restart.
#[test]
fn token_rotate_refuses_while_the_database_is_in_use() {
    use webhookd::store::{DataKey, Keyring, Store};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 20, Keyring::new(DataKey::generate())).unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "whd_old\n").unwrap();
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = Config::load_from(
        None,
        &[
            (
                "WEBHOOKD_DATA_DIR".into(),
                dir.path().to_str().unwrap().into(),
            ),
            ("WEBHOOKD_LISTEN".into(), format!("127.0.0.1:{port}")),
        ],
    )
    .unwrap();
    let err = webhookd::commands::rotate_admin_token(&config).unwrap_err();
    assert!(format!("{err:#}").contains("does not answer"), "{err:#}");
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), "whd_old\n");
    // Stopped, it rotates in the file.
    drop(store);
    webhookd::commands::rotate_admin_token(&config).unwrap();
    assert_ne!(std::fs::read_to_string(&token_file).unwrap(), "whd_old\n");
}

/// Pointed at a directory without a database (the service's data dir not
/// given), a rotation changes nothing: it would have replaced the key that
/// opens the real one.
#[test]
fn a_rotation_without_a_database_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key = webhookd::store::DataKey::generate().encode();
    let key_file = dir.path().join("encryption-key");
    std::fs::write(&key_file, &key).unwrap();
    let err = webhookd::app::rotate_key(&config_for(dir.path())).unwrap_err();
    assert!(
        format!("{err:#}").contains("there is no database"),
        "{err:#}"
    );
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), key);
    assert!(!dir.path().join("db").exists());
    assert!(!dir.path().join("encryption-key.next").exists());
}

#[actix_web::test]
async fn an_interrupted_rotation_is_finished_by_the_next_one() {
    let (a, ep, data) = stopped_with_an_endpoint_secret().await;
    // A crash right after the new key was written: the next start still opens
    // everything, and the next rotation uses the key it had chosen.
    let next = webhookd::store::DataKey::generate();
    std::fs::write(data.path().join("encryption-key.next"), next.encode()).unwrap();
    let (shown, data) = secret_after_restart(data, &a, &ep).await;
    assert_eq!(shown, SECRET);
    let id = webhookd::app::rotate_key(&config_for(data.path())).unwrap();
    assert_eq!(id, next.id_hex());
    let (shown, _) = secret_after_restart(data, &a, &ep).await;
    assert_eq!(shown, SECRET);
}

#[actix_web::test]
async fn a_configured_key_is_used_and_checked() {
    let key = webhookd::store::DataKey::generate().encode();
    let data = tempfile::tempdir().unwrap();
    let path = data.path().to_str().unwrap().to_owned();
    let with = |k: &str| {
        Config::load_from(
            None,
            &[
                ("WEBHOOKD_DATA_DIR".into(), path.clone()),
                ("WEBHOOKD_LISTEN".into(), "127.0.0.1:0".into()),
                ("WEBHOOKD_ENCRYPTION__KEY".into(), k.to_owned()),
            ],
        )
    };
    let running = webhookd::app::start(with(&key).unwrap()).await.unwrap();
    running.stop().await.unwrap();
    assert!(!data.path().join("encryption-key").exists());
    let err = with("c2hvcnQ=")
        .expect_err("a malformed key is refused")
        .to_string();
    assert!(err.contains("encryption.key"), "{err}");
    let err = webhookd::app::rotate_key(&with(&key).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("encryption.key"), "{err}");
}
