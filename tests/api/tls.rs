//! https endpoints: certificates verified against the configured roots, and a
//! per-endpoint client certificate (mutual TLS).

use std::sync::Arc;

use rcgen::{BasicConstraints, Certificate, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};

use crate::helpers::{TestApp, spawn_app_with};

struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { ca }
    }

    /// A certificate for `name` (a DNS name or an IP address) signed by the CA.
    fn issue(&self, name: &str) -> (Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &self.ca)
            .unwrap();
        (cert, key)
    }
}

/// An https receiver on 127.0.0.1 that requires a client certificate from the
/// CA: reports, per connection, the client certificate it saw (or the
/// handshake error), and answers 200 to every request.
async fn mtls_receiver(pki: &Pki) -> (String, mpsc::UnboundedReceiver<Result<Vec<u8>, String>>) {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let (cert, key) = pki.issue("127.0.0.1");
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.der().clone()).unwrap();
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    let config = ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let mut tls = match acceptor.accept(tcp).await {
                    Ok(t) => t,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let seen = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c: &CertificateDer| c.to_vec())
                    .unwrap_or_default();
                // Read the request head and its body, then answer.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = tls.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                let _ = tls.shutdown().await;
                let _ = tx.send(Ok(seen));
            });
        }
    });
    (url, rx)
}

async fn last_attempt(app: &TestApp, a: &str, msg: &str) -> Value {
    app.wait_attempts(a, msg, 1).await.remove(0)
}

#[actix_web::test]
async fn endpoints_get_the_client_certificate_they_ask_for() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, pki.ca.pem()).unwrap();
    let app = spawn_app_with(&[(
        "WEBHOOKD_DELIVERY__EXTRA_CA_FILE",
        ca_file.to_str().unwrap(),
    )])
    .await;
    let (url, mut seen) = mtls_receiver(&pki).await;
    let a = app.create_app().await;

    // Without a client certificate the receiver refuses the handshake.
    let ep = app.create_endpoint(&a, &url, json!({})).await;
    let ep = ep["id"].as_str().unwrap().to_owned();
    let msg = app.publish_simple(&a, "a.b").await;
    let attempt = last_attempt(&app, &a, &msg).await;
    assert_ne!(attempt["responseStatusCode"], 200, "{attempt}");
    assert!(seen.recv().await.unwrap().is_err());

    // With one, the server's certificate is verified against the extra CA and
    // the client's is presented.
    let (client, client_key) = pki.issue("client.example");
    let (status, body) = app
        .patch(
            &format!("/app/{a}/endpoint/{ep}"),
            json!({"tlsClientCert": {"certificate": client.pem(), "privateKey": client_key.serialize_pem()}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tlsClientCert"]["certificate"], client.pem());
    assert!(!body.to_string().contains("PRIVATE KEY"), "{body}");
    let msg = app.publish_simple(&a, "a.b").await;
    app.wait_status(&a, &msg, &ep, 0).await;
    let presented = loop {
        if let Ok(der) = seen.recv().await.unwrap() {
            break der;
        }
    };
    assert_eq!(presented, client.der().to_vec());

    // The private key is encrypted at rest like every endpoint secret.
    let key_pem = client_key.serialize_pem();
    let key_line = key_pem.lines().nth(1).unwrap().to_owned();
    let data = app.stop_keeping_data().await;
    assert!(
        crate::helpers::files_containing(&data.path().join("db"), key_line.as_bytes()).is_empty()
    );
}

#[actix_web::test]
async fn client_certificates_are_validated() {
    let pki = Pki::new();
    let app = spawn_app_with(&[]).await;
    let a = app.create_app().await;
    let (cert, key) = pki.issue("client.example");
    let (_, other_key) = pki.issue("other.example");
    for (bad, why) in [
        (
            json!({"certificate": "nope", "privateKey": key.serialize_pem()}),
            "certificate",
        ),
        (
            json!({"certificate": cert.pem(), "privateKey": "nope"}),
            "privateKey",
        ),
        (
            json!({"certificate": cert.pem(), "privateKey": other_key.serialize_pem()}),
            "mismatched key",
        ),
    ] {
        let (status, body) = app
            .post(
                &format!("/app/{a}/endpoint"),
                json!({"url": "https://127.0.0.1:9/", "tlsClientCert": bad}),
            )
            .await;
        assert_eq!(status, 422, "{why}: {body}");
        assert_eq!(
            body["detail"][0]["loc"],
            json!(["body", "tlsClientCert"]),
            "{why}"
        );
    }
    assert_eq!(
        app.get_ok(&format!("/app/{a}/endpoint")).await["data"],
        json!([])
    );
}

#[actix_web::test]
async fn an_unreadable_extra_ca_file_stops_startup() {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, "not a certificate").unwrap();
    let config = webhookd::config::Config::load_from(
        None,
        &[
            (
                "WEBHOOKD_DATA_DIR".into(),
                dir.path().join("data").to_str().unwrap().into(),
            ),
            ("WEBHOOKD_LISTEN".into(), "127.0.0.1:0".into()),
            (
                "WEBHOOKD_DELIVERY__EXTRA_CA_FILE".into(),
                ca_file.to_str().unwrap().into(),
            ),
        ],
    )
    .unwrap();
    let err = match webhookd::app::start(config).await {
        Ok(_) => panic!("started with a CA file that holds no certificate"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("delivery.extra_ca_file"), "{err}");
}
