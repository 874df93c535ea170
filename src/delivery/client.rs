//! The outbound HTTP client: the only `use awc` in the crate.
//!
//! `awc::Client` is `!Send` (it holds an `Rc`), so one is built on the worker's
//! thread and never shared. Connections go through `GuardedConnector`, which
//! resolves the host itself and refuses internal addresses at connect time.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::rc::Rc;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use actix_rt::net::TcpStream;
use actix_service::Service;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection, tcp::TcpConnector};
use actix_web::http::Uri;
use actix_web::http::header::HeaderName;
use futures_util::StreamExt as _;
use futures_util::future::LocalBoxFuture;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use sha2::{Digest as _, Sha256};

use super::netguard::NetGuard;
use crate::domain::{ClientCert, RESERVED_HEADERS};

/// Clients kept for endpoints with client certificates; past it, they are rebuilt.
const MAX_CERT_CLIENTS: usize = 256;
use super::retry::parse_retry_after;

/// Resolves, filters through the `NetGuard`, then connects to what is left.
#[derive(Clone)]
struct GuardedConnector {
    guard: Rc<NetGuard>,
}

#[derive(Debug, thiserror::Error)]
#[error("refusing to connect to {host}: {addrs} is in a blocked (internal) network")]
struct Blocked {
    host: String,
    addrs: String,
}

impl Service<ConnectInfo<Uri>> for GuardedConnector {
    type Response = Connection<Uri, TcpStream>;
    type Error = ConnectError;
    type Future = LocalBoxFuture<'static, Result<Self::Response, ConnectError>>;

    actix_service::always_ready!();

    fn call(&self, req: ConnectInfo<Uri>) -> Self::Future {
        let guard = Rc::clone(&self.guard);
        Box::pin(async move {
            let host = req
                .hostname()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = req.port();
            let resolved: Vec<SocketAddr> = match host.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, port)],
                Err(_) => tokio::net::lookup_host((host.as_str(), port))
                    .await
                    .map_err(|e| ConnectError::Resolver(Box::new(e)))?
                    .collect(),
            };
            if resolved.is_empty() {
                return Err(ConnectError::NoRecords);
            }
            let (allowed, refused): (Vec<_>, Vec<_>) =
                resolved.into_iter().partition(|a| guard.allows(a.ip()));
            if allowed.is_empty() {
                let addrs = refused
                    .iter()
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(ConnectError::Resolver(Box::new(Blocked { host, addrs })));
            }
            TcpConnector::default()
                .service()
                .call(req.set_addrs(allowed))
                .await
        })
    }
}

/// One outbound POST.
pub struct Request<'a> {
    pub url: &'a str,
    pub headers: &'a [(String, String)],
    pub body: actix_web::web::Bytes,
    /// Presented in the TLS handshake when the endpoint asks for one.
    pub client_cert: Option<&'a ClientCert>,
}

/// The certificates https endpoints are verified against: the webpki roots,
/// plus those of `delivery.extra_ca_file`.
#[derive(Clone)]
pub struct TlsRoots(Arc<RootCertStore>);

impl TlsRoots {
    pub fn load(extra_ca_file: Option<&Path>) -> Result<Self, String> {
        let mut roots = actix_tls::connect::rustls_0_23::webpki_roots_cert_store();
        if let Some(path) = extra_ca_file {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("delivery.extra_ca_file {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "delivery.extra_ca_file {}: no PEM certificate in it",
                    path.display()
                ));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("delivery.extra_ca_file {}: {e}", path.display()))?;
            }
        }
        Ok(Self(Arc::new(roots)))
    }

    /// The TLS settings of a connection, with `cert` as the client certificate.
    fn client_config(&self, cert: Option<&ClientCert>) -> Result<ClientConfig, String> {
        let builder = ClientConfig::builder().with_root_certificates(Arc::clone(&self.0));
        let mut config = match cert {
            None => builder.with_no_client_auth(),
            Some(c) => {
                let (chain, key) = ClientCert::parse(&c.cert_pem, &c.key_pem)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("client certificate: {e}"))?
            }
        };
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// Is this a client certificate and key that TLS can present? (API validation.)
pub fn check_client_cert(cert: &ClientCert) -> Result<(), String> {
    TlsRoots(Arc::new(RootCertStore::empty()))
        .client_config(Some(cert))
        .map(drop)
}

/// What came back, or why nothing did.
#[derive(Debug)]
pub struct Response {
    /// 0 when no response arrived.
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub duration: Duration,
    pub error: Option<String>,
    pub retry_after: Option<Duration>,
}

/// How each outbound client is built: one shared client, and one more per
/// client certificate in use (TLS settings belong to a client's connector).
struct ClientParams {
    guard: Rc<NetGuard>,
    roots: TlsRoots,
    timeout: Duration,
    max_connections: usize,
}

impl ClientParams {
    fn client(&self, cert: Option<&ClientCert>) -> Result<awc::Client, String> {
        let connector = awc::Connector::new()
            .connector(GuardedConnector {
                guard: Rc::clone(&self.guard),
            })
            .rustls_0_23(Arc::new(self.roots.client_config(cert)?))
            .timeout(self.timeout)
            .handshake_timeout(self.timeout)
            .limit(self.max_connections);
        Ok(awc::Client::builder()
            .connector(connector)
            .disable_redirects()
            .disable_timeout()
            .no_default_headers()
            .finish())
    }
}

pub struct Sender {
    client: awc::Client,
    /// Keyed by a hash of the certificate and key, so a rotated one gets a new client.
    with_cert: RefCell<HashMap<[u8; 32], awc::Client>>,
    params: ClientParams,
    timeout: Duration,
    max_body: usize,
}

impl Sender {
    /// Must be called on the thread that will use it (an actix/tokio local context).
    pub fn new(
        guard: NetGuard,
        roots: TlsRoots,
        timeout: Duration,
        max_connections: usize,
        max_body: usize,
    ) -> Self {
        let params = ClientParams {
            guard: Rc::new(guard),
            roots,
            timeout,
            max_connections,
        };
        Self {
            client: params
                .client(None)
                .expect("TLS settings without a client certificate always build"),
            with_cert: RefCell::new(HashMap::new()),
            params,
            timeout,
            max_body,
        }
    }

    /// The client that presents `cert` (built on first use).
    fn client_for(&self, cert: Option<&ClientCert>) -> Result<awc::Client, String> {
        let Some(cert) = cert else {
            return Ok(self.client.clone());
        };
        let id: [u8; 32] = Sha256::new()
            .chain_update(&cert.cert_pem)
            .chain_update([0])
            .chain_update(&cert.key_pem)
            .finalize()
            .into();
        if let Some(c) = self.with_cert.borrow().get(&id) {
            return Ok(c.clone());
        }
        let client = self.params.client(Some(cert))?;
        let mut cache = self.with_cert.borrow_mut();
        if cache.len() >= MAX_CERT_CLIENTS {
            cache.clear();
        }
        cache.insert(id, client.clone());
        Ok(client)
    }

    /// POSTs once, with the whole exchange (connect, send, read the response body
    /// up to `max_body`) bounded by the request timeout. Never fails: a failure is
    /// a `Response` with status 0 and an `error`. A response whose body is
    /// still coming when the time is up keeps its status (a 2xx is a
    /// success: the receiver took the delivery), with what came of the body
    /// and a note.
    pub async fn send(&self, req: Request<'_>) -> Response {
        let started = Instant::now();
        let client = match self.client_for(req.client_cert) {
            Ok(c) => c,
            Err(e) => return Response::failed(started.elapsed(), e),
        };
        // One timer for the whole exchange, raced by the send and then by
        // the reading of the body.
        let deadline =
            tokio::time::sleep_until(tokio::time::Instant::from_std(started) + self.timeout);
        tokio::pin!(deadline);
        let timed_out = || format!("timed out after {:?}", self.timeout);
        let exchange = async {
            let mut builder = client.post(req.url);
            for (name, value) in req.headers {
                builder = match known_header(name) {
                    Some(name) => builder.insert_header((name, value.as_str())),
                    None => builder.insert_header((name.as_str(), value.as_str())),
                };
            }
            let mut resp = tokio::select! {
                biased;
                sent = builder.send_body(req.body) => sent.map_err(|e| e.to_string())?,
                () = &mut deadline => return Err(timed_out()),
            };
            let status = resp.status().as_u16();
            let mut notes = Vec::new();
            let headers = stored_headers(resp.headers());
            if headers.len() < resp.headers().len() {
                notes.push(format!(
                    "response headers truncated at {MAX_STORED_HEADER_BYTES} bytes"
                ));
            }
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let mut body = Vec::new();
            let read_body = async {
                while let Some(chunk) = resp.next().await {
                    match chunk {
                        Ok(bytes) => {
                            let room = self.max_body - body.len();
                            if bytes.len() > room {
                                body.extend_from_slice(&bytes[..room]);
                                return Some(format!(
                                    "response body truncated at {} bytes",
                                    self.max_body
                                ));
                            }
                            body.extend_from_slice(&bytes);
                        }
                        Err(e) => return Some(format!("reading response body: {e}")),
                    }
                }
                None
            };
            let body_note = tokio::select! {
                biased;
                note = read_body => note,
                () = &mut deadline => Some(format!("reading response body: {}", timed_out())),
            };
            notes.extend(body_note);
            let note = (!notes.is_empty()).then(|| notes.join("; "));
            Ok::<_, String>((status, headers, body, retry_after, note))
        };
        let outcome = exchange.await;
        let duration = started.elapsed();
        match outcome {
            Ok((status, headers, body, retry_after, note)) => Response {
                status,
                headers,
                body,
                duration,
                error: note,
                retry_after,
            },
            Err(e) => Response::failed(duration, e),
        }
    }
}

/// Most bytes of response headers (names and values) kept on an attempt. The
/// HTTP client itself refuses a header section over 128 KiB or 96 headers.
pub const MAX_STORED_HEADER_BYTES: usize = 8 * 1024;

/// The names webhookd sets on every delivery (`RESERVED_HEADERS`), as made
/// once: a name that is not one of HTTP's standard ones (`webhook-*`,
/// `svix-*`) is otherwise parsed and copied for each request.
fn known_header(name: &str) -> Option<HeaderName> {
    static KNOWN: LazyLock<[HeaderName; RESERVED_HEADERS.len()]> =
        LazyLock::new(|| RESERVED_HEADERS.map(HeaderName::from_static));
    KNOWN.iter().find(|known| known.as_str() == name).cloned()
}

/// The response headers to record: in order, as many whole headers as fit in
/// `MAX_STORED_HEADER_BYTES`.
fn stored_headers(headers: &awc::http::header::HeaderMap) -> Vec<(String, String)> {
    let mut used = 0;
    let mut out = Vec::new();
    for (k, v) in headers {
        used += k.as_str().len() + v.len();
        if used > MAX_STORED_HEADER_BYTES {
            break;
        }
        out.push((
            k.as_str().to_owned(),
            String::from_utf8_lossy(v.as_bytes()).into_owned(),
        ));
    }
    out
}

impl Response {
    fn failed(duration: Duration, error: String) -> Self {
        Self {
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
            duration,
            error: Some(error),
            retry_after: None,
        }
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

#[cfg(test)]
mod tests {
    use awc::http::header::{HeaderMap, HeaderValue};

    use super::*;

    #[test]
    fn every_reserved_header_is_made_once_and_nothing_else_is() {
        for name in RESERVED_HEADERS {
            assert_eq!(known_header(name).unwrap().as_str(), name);
        }
        assert_eq!(known_header("x-custom"), None);
    }

    #[test]
    fn stored_headers_are_capped_at_whole_headers() {
        let mut map = HeaderMap::new();
        let value = HeaderValue::from_str(&"v".repeat(1000)).unwrap();
        for i in 0..50 {
            let name = HeaderName::from_bytes(format!("x-h{i:02}").as_bytes()).unwrap();
            map.append(name, value.clone());
        }
        let kept = stored_headers(&map);
        let bytes: usize = kept.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(bytes <= MAX_STORED_HEADER_BYTES, "{bytes}");
        assert_eq!(kept.len(), MAX_STORED_HEADER_BYTES / 1005);
        assert!(kept.iter().all(|(_, v)| v.len() == 1000));

        let mut small = HeaderMap::new();
        small.append(
            HeaderName::from_static("content-type"),
            HeaderValue::from_static("text/plain"),
        );
        assert_eq!(
            stored_headers(&small),
            [("content-type".to_owned(), "text/plain".to_owned())]
        );
    }
}
