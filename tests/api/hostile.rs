//! Hostile endpoints: receivers on 127.0.0.1 that misbehave at the TCP level
//! (huge or endless bodies, too many headers, silence, trickling, redirects,
//! a certificate nobody signed) and hostnames that resolve to loopback. Each
//! attempt must end cleanly, recorded within its bounds, and webhookd must keep
//! serving afterwards.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use webhookd::delivery::client::MAX_STORED_HEADER_BYTES;
use webhookd::domain::{AttemptId, MessageId};
use webhookd::store::AttemptRecord;

use crate::helpers::{TestApp, TestReceiver, WAIT, spawn_app, spawn_app_with};

/// Response bodies are recorded up to this many bytes in these tests.
const BODY_CAP: usize = 1024;

/// A raw TCP receiver: for each connection it reads one request, reports it on
/// `requests`, then lets `behave` answer (or not). `behave` returns how many
/// bytes it wrote before it stopped, reported on `finished`.
struct RawReceiver {
    addr: SocketAddr,
    requests: mpsc::UnboundedReceiver<()>,
    finished: mpsc::UnboundedReceiver<u64>,
}

impl RawReceiver {
    async fn start<F, Fut>(behave: F) -> Self
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = u64> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a raw receiver");
        let addr = listener.local_addr().unwrap();
        let (req_tx, requests) = mpsc::unbounded_channel();
        let (fin_tx, finished) = mpsc::unbounded_channel();
        let behave = Arc::new(behave);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (behave, req_tx, fin_tx) = (behave.clone(), req_tx.clone(), fin_tx.clone());
                tokio::spawn(async move {
                    if read_request(&mut stream).await.is_none() {
                        return;
                    }
                    let _ = req_tx.send(());
                    let _ = fin_tx.send(behave(stream).await);
                });
            }
        });
        Self {
            addr,
            requests,
            finished,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// How many bytes the next connection's `behave` wrote before it stopped.
    async fn next_finished(&mut self) -> u64 {
        tokio::time::timeout(WAIT, self.finished.recv())
            .await
            .unwrap_or_else(|_| panic!("the receiver at {} never stopped writing", self.addr))
            .expect("the receiver is running")
    }
}

/// Reads a request head and its `content-length` body; `None` if the peer went away.
async fn read_request(stream: &mut TcpStream) -> Option<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(())
}

/// Writes `head`, then `chunk` until a write fails or `limit` bytes are out;
/// returns the bytes written. The limit only keeps a broken test from running forever.
async fn write_until_refused(stream: &mut TcpStream, head: &[u8], chunk: &[u8], limit: u64) -> u64 {
    if stream.write_all(head).await.is_err() {
        return 0;
    }
    let mut written = head.len() as u64;
    while written < limit {
        if stream.write_all(chunk).await.is_err() {
            break;
        }
        written += chunk.len() as u64;
    }
    written
}

/// webhookd with small limits: 1 KiB of response body, `timeout` per attempt,
/// and one connection at a time, so an attempt that left its connection (or
/// its slot in the client's pool) behind would block every later one.
async fn hostile_app(timeout: &str) -> TestApp {
    let cap = BODY_CAP.to_string();
    spawn_app_with(&[
        ("WEBHOOKD_REQUEST_TIMEOUT", timeout),
        ("WEBHOOKD_DELIVERY__MAX_RESPONSE_BODY_BYTES", cap.as_str()),
        ("WEBHOOKD_DELIVERY__MAX_IN_FLIGHT", "1"),
        ("WEBHOOKD_DELIVERY__MAX_PER_ENDPOINT", "1"),
    ])
    .await
}

/// Creates an app with one endpoint at `url`, publishes one message and waits for
/// its delivery to reach `status` (0 success, 2 failed); returns the attempts' records.
async fn deliver_once(app: &TestApp, url: &str, status: u64) -> Vec<AttemptRecord> {
    let a = app.create_app().await;
    let ep = app.create_endpoint(&a, url, json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let msg = app.publish_simple(&a, "hostile.test").await;
    app.wait_status(&a, &msg, &ep, status).await;
    app.attempts_of_msg(&a, &msg)
        .await
        .iter()
        .map(|x| record(app, x))
        .collect()
}

fn record(app: &TestApp, attempt: &Value) -> AttemptRecord {
    let id = AttemptId::parse(attempt["id"].as_str().expect("an attempt id")).expect("an ID");
    let msg = MessageId::parse(attempt["msgId"].as_str().expect("a message id")).expect("an ID");
    let rec = app
        .store()
        .get_attempt(&msg, &id)
        .expect("reading the store")
        .expect("the attempt is stored");
    assert!(rec.response_body.len() <= BODY_CAP, "{rec:?}");
    let header_bytes: usize = rec
        .response_headers
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    assert!(header_bytes <= MAX_STORED_HEADER_BYTES, "{header_bytes}");
    rec
}

/// The API still answers and a well-behaved endpoint still gets its delivery.
async fn still_serves(app: &TestApp) {
    let res = app
        .raw(
            actix_web::http::Method::GET,
            &app.url("/health"),
            None,
            &[],
            None,
        )
        .await;
    assert_eq!(res.status, 204);
    let mut rx = TestReceiver::start().await;
    let a = app.create_app().await;
    app.endpoint_to(&a, &rx).await;
    let msg = app.publish_simple(&a, "after.hostile").await;
    assert_eq!(rx.next().await.msg_id(), msg);
}

#[actix_web::test]
async fn huge_response_body_is_recorded_up_to_the_cap() {
    let app = hostile_app("2s").await;
    let mut rx = RawReceiver::start(|mut s| async move {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 67108864\r\n\r\n";
        write_until_refused(&mut s, head, &[b'a'; 64 * 1024], 64 << 20).await
    })
    .await;
    let attempts = deliver_once(&app, &rx.url(), 0).await;
    assert_eq!(attempts.len(), 1);
    let a = &attempts[0];
    assert_eq!(a.response_status_code, 200);
    assert_eq!(a.response_body, vec![b'a'; BODY_CAP]);
    assert!(
        a.error.as_deref().is_some_and(|e| e.contains("truncated")),
        "{a:?}"
    );
    // webhookd hung up instead of reading the 64 MiB.
    let written = rx.next_finished().await;
    assert!(written < 64 << 20, "the receiver wrote {written} bytes");
    still_serves(&app).await;
}

#[actix_web::test]
async fn endless_chunked_body_is_cut_at_the_cap() {
    let app = hostile_app("2s").await;
    let mut rx = RawReceiver::start(|mut s| async move {
        let head = b"HTTP/1.1 500 Internal Server Error\r\ntransfer-encoding: chunked\r\n\r\n";
        let mut chunk = b"4000\r\n".to_vec();
        chunk.extend_from_slice(&[b'x'; 0x4000]);
        chunk.extend_from_slice(b"\r\n");
        // "Endless": 1 GiB, far more than any buffer between the two.
        write_until_refused(&mut s, head, &chunk, 1 << 30).await
    })
    .await;
    let attempts = deliver_once(&app, &rx.url(), 2).await;
    assert_eq!(attempts.len(), 3, "a failure is retried");
    for a in &attempts {
        assert_eq!(a.response_status_code, 500);
        assert_eq!(a.response_body.len(), BODY_CAP);
    }
    for _ in 0..3 {
        let written = rx.next_finished().await;
        assert!(written < 256 << 20, "the receiver wrote {written} bytes");
    }
    still_serves(&app).await;
}

/// A response whose status came in time but whose body is still coming at
/// the timeout is cut there and keeps its status: a 200 is a delivery (the
/// receiver took it; a retry would deliver it twice), a 500 a failure.
#[actix_web::test]
async fn endless_trickling_body_is_cut_at_the_timeout() {
    let app = hostile_app("300ms").await;
    let mut rx = RawReceiver::start(|mut s| async move {
        let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        if s.write_all(head).await.is_err() {
            return 0;
        }
        let mut written = head.len() as u64;
        // Small chunks forever (bounded at 10 s so a broken test ends).
        for _ in 0..200 {
            if s.write_all(b"1\r\nx\r\n").await.is_err() {
                break;
            }
            written += 6;
            tokio::time::sleep(Duration::from_millis(50)).await; // the misbehaviour itself
        }
        written
    })
    .await;
    let attempts = deliver_once(&app, &rx.url(), 0).await;
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    let a = &attempts[0];
    assert_eq!(a.response_status_code, 200, "{a:?}");
    assert!(!a.response_body.is_empty(), "{a:?}");
    assert!(
        a.error
            .as_deref()
            .is_some_and(|e| e.contains("reading response body: timed out")),
        "{a:?}"
    );
    assert!(a.duration_ms < 5_000, "{a:?}");
    rx.next_finished().await;
    still_serves(&app).await;
}

#[actix_web::test]
async fn silent_and_one_byte_per_second_receivers_are_cut_at_the_timeout() {
    let app = hostile_app("300ms").await;
    let silent = RawReceiver::start(|s| async move {
        // Holds the connection open and never answers (bounded for the test's sake).
        let _open = s;
        tokio::time::sleep(Duration::from_secs(10)).await;
        0
    })
    .await;
    let trickle = RawReceiver::start(|mut s| async move {
        let mut written = 0;
        for b in b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok" {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            written += 1;
            tokio::time::sleep(Duration::from_secs(1)).await; // the misbehaviour itself
        }
        written
    })
    .await;
    for rx in [&silent, &trickle] {
        let attempts = deliver_once(&app, &rx.url(), 2).await;
        assert_eq!(attempts.len(), 3);
        for a in &attempts {
            assert_eq!(a.response_status_code, 0, "{a:?}");
            assert!(
                a.error.as_deref().is_some_and(|e| e.contains("timed out")),
                "{a:?}"
            );
            // Generous: proves the attempt was cut, not how fast.
            assert!(a.duration_ms < 5_000, "{a:?}");
        }
    }
    still_serves(&app).await;
}

#[actix_web::test]
async fn too_many_or_too_large_headers_fail_cleanly() {
    let app = hostile_app("2s").await;
    // 200 headers: more than the client parses.
    let many = RawReceiver::start(|mut s| async move {
        let mut head = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..200 {
            head.push_str(&format!("x-h{i}: v\r\n"));
        }
        head.push_str("content-length: 0\r\n\r\n");
        write_until_refused(&mut s, head.as_bytes(), b"", 0).await
    })
    .await;
    // One 1 MiB header: more than the client buffers.
    let huge = RawReceiver::start(|mut s| async move {
        let head = b"HTTP/1.1 200 OK\r\nx-huge: ";
        write_until_refused(&mut s, head, &[b'h'; 64 * 1024], 1 << 20).await
    })
    .await;
    for rx in [&many, &huge] {
        let attempts = deliver_once(&app, &rx.url(), 2).await;
        for a in &attempts {
            assert_eq!(a.response_status_code, 0, "{a:?}");
            assert!(a.response_headers.is_empty(), "{a:?}");
            assert!(a.error.is_some(), "{a:?}");
        }
    }
    // 60 headers of 1 KiB: accepted, but only 8 KiB of them are kept.
    let large = RawReceiver::start(|mut s| async move {
        let mut head = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..60 {
            head.push_str(&format!("x-h{i:02}: {}\r\n", "v".repeat(1024)));
        }
        head.push_str("content-length: 2\r\n\r\nok");
        write_until_refused(&mut s, head.as_bytes(), b"", 0).await
    })
    .await;
    let attempts = deliver_once(&app, &large.url(), 0).await;
    let a = &attempts[0];
    assert_eq!(a.response_status_code, 200);
    assert!(!a.response_headers.is_empty());
    assert!(
        a.response_headers.len() < 60,
        "{}",
        a.response_headers.len()
    );
    assert!(
        a.error
            .as_deref()
            .is_some_and(|e| e.contains("headers truncated")),
        "{a:?}"
    );
    still_serves(&app).await;
}

#[actix_web::test]
async fn redirects_are_not_followed() {
    let app = hostile_app("2s").await;
    let mut target = TestReceiver::start().await;
    let location = target.url();
    let mut redirect = RawReceiver::start(move |mut s| {
        let head =
            format!("HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n");
        async move { write_until_refused(&mut s, head.as_bytes(), b"", 0).await }
    })
    .await;
    let attempts = deliver_once(&app, &redirect.url(), 2).await;
    assert_eq!(attempts.len(), 3);
    for a in &attempts {
        assert_eq!(a.response_status_code, 302, "{a:?}");
    }
    for _ in 0..3 {
        redirect
            .requests
            .recv()
            .await
            .expect("the receiver is running");
    }
    target.assert_nothing_more();
    still_serves(&app).await;
}

#[actix_web::test]
async fn a_name_resolving_to_loopback_is_blocked_unless_allowed() {
    let mut rx = TestReceiver::start().await;
    let port = rx.addr.port();
    let blocked = spawn_app_with(&[("WEBHOOKD_ALLOW_SUBNETS", "")]).await;
    for url in [
        format!("http://localhost:{port}/hook"),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
    ] {
        let attempts = deliver_once(&blocked, &url, 2).await;
        assert_eq!(attempts.len(), 3);
        for a in &attempts {
            assert_eq!(a.response_status_code, 0, "{a:?}");
            assert!(
                a.error.as_deref().is_some_and(|e| e.contains("blocked")),
                "{a:?}"
            );
        }
    }
    rx.assert_nothing_more();
    still_serves_blocked(&blocked).await;

    // Allowed by CIDR, the same name is delivered to.
    let allowed = spawn_app().await; // WEBHOOKD_ALLOW_SUBNETS=127.0.0.0/8
    let attempts = deliver_once(&allowed, &format!("http://localhost:{port}/hook"), 0).await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].response_status_code, 200);
    rx.next().await;
}

/// With loopback blocked, webhookd still answers its API.
async fn still_serves_blocked(app: &TestApp) {
    let (status, _) = app.get("/app").await;
    assert_eq!(status, 200);
}

#[actix_web::test]
async fn a_self_signed_certificate_is_refused() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("generating a certificate");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .expect("a server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut handshakes) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let _ = tx.send(acceptor.accept(stream).await.is_ok());
            });
        }
    });

    let app = spawn_app().await;
    let attempts = deliver_once(&app, &format!("https://127.0.0.1:{port}/hook"), 2).await;
    assert_eq!(attempts.len(), 3);
    for a in &attempts {
        assert_eq!(a.response_status_code, 0, "{a:?}");
        let error = a.error.as_deref().unwrap_or_default().to_ascii_lowercase();
        assert!(error.contains("certificate"), "{a:?}");
    }
    for _ in 0..3 {
        let ok = tokio::time::timeout(WAIT, handshakes.recv())
            .await
            .expect("a handshake")
            .unwrap();
        assert!(!ok, "no TLS session was established");
    }
    still_serves(&app).await;
}
