//! Domain vocabulary: prefixed IDs, validated names and URLs, secrets, statuses.
//!
//! Owns parsing at the boundary: once a value is one of these types it is valid.
//! Must not import other crate modules or do IO (the clock is read only by
//! `now_ms`, which callers use to pass time in).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use ulid::Ulid;

/// Milliseconds since the Unix epoch; the one clock reading the rest of the code passes around.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Parses an RFC 3339 timestamp into milliseconds; one without an offset is taken
/// as UTC (as some SDKs send).
pub fn parse_time(s: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|n| n.and_utc().timestamp_millis())
}

/// RFC 3339 in UTC with milliseconds: `2024-01-02T03:04:05.123Z`.
pub fn format_time(ms: i64) -> String {
    use chrono::TimeZone as _;
    chrono::Utc
        .timestamp_millis_opt(ms)
        .single()
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Builds a fresh ID body: 48 bits of milliseconds then 80 random bits, Crockford base32.
/// Sorting the strings sorts by creation time; the random part makes them unguessable.
fn new_id_body(at_ms: i64) -> String {
    Ulid::from_parts(at_ms.max(0) as u64, rand::random::<u128>()).to_string()
}

/// The millisecond timestamp encoded in an ID body, if it is a well-formed ULID.
fn id_body_time(body: &str) -> Option<i64> {
    Ulid::from_string(body)
        .ok()
        .map(|u| u.timestamp_ms() as i64)
}

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;
            /// Every ID of this type has this many bytes.
            pub const LEN: usize = $prefix.len() + 26;

            pub fn new(at_ms: i64) -> Self {
                Self(format!("{}{}", $prefix, new_id_body(at_ms)))
            }

            /// Accepts only strings that look like IDs this server issued.
            pub fn parse(s: &str) -> Option<Self> {
                let body = s.strip_prefix($prefix)?;
                (body.len() == 26 && Ulid::from_string(body).is_ok()).then(|| Self(s.to_owned()))
            }

            /// The smallest ID that could have been issued at `at_ms`: a range-scan bound.
            pub fn lower_bound(at_ms: i64) -> Self {
                Self(format!("{}{}", $prefix, Ulid::from_parts(at_ms.max(0) as u64, 0)))
            }

            pub fn created_ms(&self) -> i64 {
                id_body_time(&self.0[$prefix.len()..]).unwrap_or(0)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

prefixed_id!(
    /// An application (tenant).
    AppId,
    "app_"
);
prefixed_id!(
    /// An endpoint of an application.
    EndpointId,
    "ep_"
);
prefixed_id!(
    /// A published message.
    MessageId,
    "msg_"
);
prefixed_id!(
    /// One recorded delivery attempt.
    AttemptId,
    "atmpt_"
);
prefixed_id!(
    /// One queued delivery (a message to one endpoint, one attempt).
    TaskId,
    "qtask_"
);
prefixed_id!(
    /// An application-scoped API token (its record, not the secret).
    TokenId,
    "tok_"
);

/// 32 random bytes as URL-safe base64: for tokens.
pub fn random_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// A user-chosen unique identifier (`uid`, `eventId`): `[a-zA-Z0-9\-_.]{1,256}`.
pub fn valid_uid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// An event type name: `[a-zA-Z0-9\-_.]{1,256}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventTypeName(String);

impl EventTypeName {
    pub fn parse(s: &str) -> Option<Self> {
        valid_uid(s).then(|| Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventTypeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A channel name: `[a-zA-Z0-9\-_.:]{1,128}`.
pub fn valid_channel(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Header names webhookd sets itself on every delivery; custom headers may not replace them.
pub const RESERVED_HEADERS: [&str; 12] = [
    "content-type",
    "content-length",
    "user-agent",
    "host",
    "connection",
    "transfer-encoding",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "svix-id",
    "svix-timestamp",
    "svix-signature",
];

/// Header names about the connection rather than the request: HTTP/2
/// refuses a request that carries one, and over HTTP/1.1 they would
/// change how the exchange goes.
const CONNECTION_HEADERS: [&str; 7] = [
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "trailers",
    "upgrade",
    "expect",
];

/// Checks one custom request header of an endpoint.
pub fn check_custom_header(name: &str, value: &str) -> Result<(), &'static str> {
    if actix_web::http::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err("not a valid HTTP header name");
    }
    let lower = name.to_ascii_lowercase();
    if RESERVED_HEADERS.contains(&lower.as_str()) {
        return Err("this header is set by webhookd and cannot be overridden");
    }
    if CONNECTION_HEADERS.contains(&lower.as_str()) {
        return Err("a header about the connection, not the request, cannot be set");
    }
    if actix_web::http::header::HeaderValue::from_str(value).is_err() {
        return Err("not a valid HTTP header value");
    }
    Ok(())
}

/// An endpoint URL: absolute http or https with a host, at most 65,536 bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EndpointUrl(String);

impl EndpointUrl {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if s.len() > 65_536 {
            return Err("URL is longer than 65536 characters");
        }
        let uri: http_uri::Uri = s.parse().map_err(|_| "not a valid URL")?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => return Err("URL scheme must be http or https"),
        }
        match uri.host() {
            Some(h) if !h.is_empty() => {
                // The TLS client takes the bracketed literal for a server
                // name and refuses it: every attempt would fail.
                if uri.scheme_str() == Some("https") && h.starts_with('[') {
                    return Err("an https URL needs a host name, not an IPv6 address");
                }
            }
            _ => return Err("URL must have a host"),
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err("URL must not contain credentials");
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The URI type of the HTTP stack, reached through actix-web so the crate graph has one copy.
mod http_uri {
    pub use actix_web::http::Uri;
}

/// An endpoint signing secret: the raw key bytes. `Debug` never shows them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub const PREFIX: &'static str = "whsec_";

    /// 24 random bytes, as Svix and Standard Webhooks generate.
    pub fn generate() -> Self {
        Self(rand::random::<[u8; 24]>().to_vec())
    }

    /// Parses `whsec_` + 32 to 100 characters of standard base64, padded or
    /// not (what the Svix API accepts: `^(whsec_)?[a-zA-Z0-9+/=]{32,100}$`).
    pub fn parse(s: &str) -> Option<Self> {
        use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
        const PADDED_OR_NOT: GeneralPurpose = GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
        );
        let body = s.strip_prefix(Self::PREFIX)?;
        if !(32..=100).contains(&body.len()) {
            return None;
        }
        PADDED_OR_NOT.decode(body).ok().map(Self)
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    pub fn key(&self) -> &[u8] {
        &self.0
    }

    /// The `whsec_…` form shown to the endpoint's owner.
    pub fn expose(&self) -> String {
        format!("{}{}", Self::PREFIX, B64.encode(&self.0))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Credentials webhookd presents to an endpoint, in the `Authorization` header.
/// `Debug` never shows the secret part.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Credentials {
    Basic { username: String, password: String },
    Bearer { token: String },
}

impl Credentials {
    /// The `Authorization` header value.
    pub fn header_value(&self) -> String {
        match self {
            Self::Basic { username, password } => {
                format!("Basic {}", B64.encode(format!("{username}:{password}")))
            }
            Self::Bearer { token } => format!("Bearer {token}"),
        }
    }

    /// What may be shown of them: the scheme, and the Basic username.
    pub fn describe(&self) -> String {
        match self {
            Self::Basic { username, .. } => format!("Basic, username {username}"),
            Self::Bearer { .. } => "Bearer token".to_owned(),
        }
    }

    /// What may be shown or stored of the header value.
    pub fn redacted(&self) -> &'static str {
        match self {
            Self::Basic { .. } => "Basic [redacted]",
            Self::Bearer { .. } => "Bearer [redacted]",
        }
    }

    /// Checks the parts: they go into a header, and a Basic username cannot
    /// contain ':'.
    pub fn check(&self) -> Result<(), &'static str> {
        let ok_part =
            |s: &str| !s.is_empty() && s.len() <= 4096 && !s.chars().any(char::is_control);
        match self {
            Self::Basic { username, password } => {
                if !ok_part(username) || username.contains(':') {
                    return Err(
                        "a username is 1 to 4096 characters, without ':' or control characters",
                    );
                }
                if !ok_part(password) {
                    return Err("a password is 1 to 4096 characters, without control characters");
                }
            }
            Self::Bearer { token } => {
                if !ok_part(token) {
                    return Err("a token is 1 to 4096 characters, without control characters");
                }
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.redacted())
    }
}

/// A client certificate an endpoint asks for (mutual TLS): a PEM chain, leaf
/// first, and its PEM private key. `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl ClientCert {
    /// Parses both parts; the error says which is wrong.
    pub fn parse(
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<
        (
            Vec<rustls_pki_types::CertificateDer<'static>>,
            rustls_pki_types::PrivateKeyDer<'static>,
        ),
        &'static str,
    > {
        use rustls_pki_types::pem::PemObject as _;
        let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|_| "certificate: not a PEM certificate chain")?;
        if chain.is_empty() {
            return Err("certificate: no PEM certificate found");
        }
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|_| "privateKey: not a PEM private key (PKCS#8, PKCS#1 or SEC1)")?;
        Ok((chain, key))
    }
}

impl fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientCert([key redacted])")
    }
}

/// Delivery status of a message to one endpoint, with Svix's numeric codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageStatus {
    /// Delivered: some attempt got a 2xx.
    Success,
    /// Waiting for its first attempt.
    Pending,
    /// Every scheduled attempt failed: dead-lettered until redelivered.
    Fail,
    /// An attempt failed and a retry is scheduled.
    Sending,
}

impl MessageStatus {
    pub fn code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::Pending => 1,
            Self::Fail => 2,
            Self::Sending => 3,
        }
    }
    pub fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            0 => Self::Success,
            1 => Self::Pending,
            2 => Self::Fail,
            3 => Self::Sending,
            _ => return None,
        })
    }
}

/// Why an attempt was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttemptTrigger {
    Scheduled,
    Manual,
}

impl AttemptTrigger {
    pub fn code(self) -> u8 {
        match self {
            Self::Scheduled => 0,
            Self::Manual => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_round_trip() {
        let a = MessageId::new(1_000);
        let b = MessageId::new(2_000);
        assert!(a < b);
        assert_eq!(a.created_ms(), 1_000);
        assert_eq!(MessageId::parse(a.as_str()), Some(a.clone()));
        assert!(MessageId::lower_bound(1_000) <= a);
        assert!(MessageId::lower_bound(1_001) > a);
        assert_eq!(MessageId::parse("msg_short"), None);
        assert_eq!(MessageId::parse(&a.as_str().replace("msg_", "ep_")), None);
        assert_eq!(a.as_str().len(), 4 + 26);
    }

    #[test]
    fn endpoint_urls() {
        assert!(EndpointUrl::parse("https://example.com/hook").is_ok());
        assert!(EndpointUrl::parse("http://127.0.0.1:8080/x?y=1").is_ok());
        assert!(EndpointUrl::parse("ftp://example.com").is_err());
        assert!(EndpointUrl::parse("example.com/hook").is_err());
        assert!(EndpointUrl::parse("https://").is_err());
        assert!(EndpointUrl::parse("https://user:pw@example.com/").is_err());
        assert!(EndpointUrl::parse("not a url").is_err());
        assert!(EndpointUrl::parse("http://[2606:4700::1111]/hook").is_ok());
        assert!(EndpointUrl::parse("https://[2606:4700::1111]/hook").is_err());
    }

    #[test]
    fn names() {
        assert!(EventTypeName::parse("user.signup-v2_x").is_some());
        assert!(EventTypeName::parse("").is_none());
        assert!(EventTypeName::parse("bad name").is_none());
        assert!(EventTypeName::parse(&"a".repeat(257)).is_none());
        assert!(valid_channel("project:123"));
        assert!(!valid_channel("a b"));
    }

    #[test]
    fn secrets() {
        let s = Secret::generate();
        assert_eq!(s.key().len(), 24);
        assert_eq!(Secret::parse(&s.expose()), Some(s.clone()));
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
        assert!(Secret::parse("whsec_").is_none());
        assert!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_none());
        assert!(Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_some());
        // 32 bytes unpadded (43 characters), 75 bytes (100), but not 101
        // characters, 31, or what is not base64.
        let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode([7u8; 32]);
        assert_eq!(unpadded.len(), 43);
        let s = Secret::parse(&format!("whsec_{unpadded}")).unwrap();
        assert_eq!(s.key(), [7u8; 32]);
        let longest = B64.encode([7u8; 75]);
        assert_eq!(longest.len(), 100);
        assert_eq!(
            Secret::parse(&format!("whsec_{longest}")).unwrap().key(),
            [7u8; 75]
        );
        assert!(Secret::parse(&format!("whsec_{longest}A")).is_none());
        assert!(Secret::parse(&format!("whsec_{}", &unpadded[..31])).is_none());
        assert!(Secret::parse(&format!("whsec_{}-", &unpadded[..39])).is_none());
    }

    #[test]
    fn status_codes_round_trip() {
        for s in [
            MessageStatus::Success,
            MessageStatus::Pending,
            MessageStatus::Fail,
            MessageStatus::Sending,
        ] {
            assert_eq!(MessageStatus::from_code(s.code() as i64), Some(s));
        }
    }
}
