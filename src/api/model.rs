//! Wire types of the API (Svix's JSON, camelCase) and their validation.
//!
//! Kept apart from the stored records: each is its own compatibility promise.
//! Inputs are parsed (`parse_json`), then `validate` turns them into domain
//! values or a 422 listing every problem.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use super::error::{ApiError, ValidationItem};
use super::extract::format_time;
use crate::domain::{
    ClientCert, Credentials, EndpointUrl, MessageStatus, Secret, check_custom_header,
    valid_channel, valid_uid,
};
use crate::store::{
    AppRecord, AttemptRecord, DestRecord, EndpointRecord, EventTypeRecord, MessageRecord,
    TokenRecord,
};

/// `Some(None)` for an explicit `null`, `None` for an absent field (with `#[serde(default)]`).
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Collects validation problems so one 422 reports all of them.
#[derive(Default)]
pub struct Problems(Vec<ValidationItem>);

impl Problems {
    pub fn add(&mut self, loc: &[&str], msg: impl Into<String>) {
        self.0.push(ValidationItem::new(loc, msg));
    }
    pub fn check(&mut self, ok: bool, loc: &[&str], msg: &str) {
        if !ok {
            self.add(loc, msg);
        }
    }
    pub fn uid(&mut self, uid: Option<&str>, field: &str) {
        if let Some(u) = uid {
            self.check(
                valid_uid(u),
                &["body", field],
                "must be 1 to 256 characters of a-z, A-Z, 0-9, -, _ or .",
            );
        }
    }
    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.0))
        }
    }
}

pub type Metadata = BTreeMap<String, String>;

// ----- lists ---------------------------------------------------------

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListResponse<T> {
    pub data: Vec<T>,
    /// The cursor for the next page; `null` on the last page.
    pub iterator: Option<String>,
    pub done: bool,
}

impl<T> ListResponse<T> {
    /// `last_id` gives the cursor of an item (the ID the listing is ordered by).
    pub fn new(data: Vec<T>, done: bool, last_id: impl Fn(&T) -> String) -> Self {
        let last = if done { None } else { data.last().map(last_id) };
        Self::after(data, done, last)
    }

    /// A page whose items were read and then some left out: it goes on
    /// after the last item read (`last_read`), so that a page left empty
    /// still leads on.
    pub fn after(data: Vec<T>, done: bool, last_read: Option<String>) -> Self {
        Self {
            data,
            iterator: if done { None } else { last_read },
            done,
        }
    }
}

// ----- applications --------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationIn {
    pub name: String,
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default, alias = "rateLimit")]
    pub throttle_rate: Option<u32>,
    #[serde(default)]
    pub metadata: Option<Metadata>,
}

impl ApplicationIn {
    pub fn validate(&self) -> Result<(), ApiError> {
        let mut p = Problems::default();
        p.check(
            !self.name.trim().is_empty(),
            &["body", "name"],
            "must not be empty",
        );
        p.uid(self.uid.as_deref(), "uid");
        if let Some(r) = self.throttle_rate {
            p.check(
                (1..=65535).contains(&r),
                &["body", "throttleRate"],
                "must be between 1 and 65535",
            );
        }
        p.finish()
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationPatch {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub uid: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable", alias = "rateLimit")]
    pub throttle_rate: Option<Option<u32>>,
    pub metadata: Option<Metadata>,
}

impl ApplicationPatch {
    pub fn apply(self, app: &mut AppRecord) -> Result<(), ApiError> {
        let mut p = Problems::default();
        if let Some(name) = &self.name {
            p.check(
                !name.trim().is_empty(),
                &["body", "name"],
                "must not be empty",
            );
        }
        if let Some(uid) = &self.uid {
            p.uid(uid.as_deref(), "uid");
        }
        if let Some(Some(r)) = self.throttle_rate {
            p.check(
                r <= 65535,
                &["body", "throttleRate"],
                "must be at most 65535",
            );
        }
        p.finish()?;
        if let Some(name) = self.name {
            app.name = name;
        }
        if let Some(uid) = self.uid {
            app.uid = uid;
        }
        if let Some(r) = self.throttle_rate {
            app.rate_limit = r;
        }
        if let Some(m) = self.metadata {
            app.metadata = m;
        }
        Ok(())
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationOut {
    pub id: String,
    pub name: String,
    pub uid: Option<String>,
    pub throttle_rate: Option<u32>,
    pub rate_limit: Option<u32>,
    pub metadata: Metadata,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&AppRecord> for ApplicationOut {
    fn from(a: &AppRecord) -> Self {
        Self {
            id: a.id.to_string(),
            name: a.name.clone(),
            uid: a.uid.clone(),
            throttle_rate: a.rate_limit,
            rate_limit: a.rate_limit,
            metadata: a.metadata.clone(),
            created_at: format_time(a.created_ms),
            updated_at: format_time(a.updated_ms),
        }
    }
}

// ----- event types ---------------------------------------------------

/// Create (POST, with `name`) and replace (PUT, name from the path) bodies.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventTypeIn {
    #[serde(default)]
    pub name: Option<String>,
    pub description: String,
    #[serde(default)]
    pub archived: bool,
    #[serde(default)]
    pub deprecated: bool,
    #[serde(default)]
    pub feature_flag: Option<String>,
    #[serde(default)]
    pub schemas: Option<serde_json::Map<String, serde_json::Value>>,
}

pub fn validate_schemas(
    schemas: &Option<serde_json::Map<String, serde_json::Value>>,
    p: &mut Problems,
) {
    if let Some(map) = schemas {
        for (version, schema) in map {
            p.check(
                schema.is_object(),
                &["body", "schemas", version],
                "a schema must be a JSON object",
            );
        }
    }
}

pub fn validate_feature_flag(flag: &Option<String>, p: &mut Problems) {
    p.uid(flag.as_deref(), "featureFlag");
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct EventTypePatch {
    pub description: Option<String>,
    pub archived: Option<bool>,
    pub deprecated: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    pub feature_flag: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub schemas: Option<Option<serde_json::Map<String, serde_json::Value>>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventTypeOut {
    pub name: String,
    pub description: String,
    pub archived: bool,
    pub deprecated: bool,
    pub feature_flag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schemas: Option<Box<RawValue>>,
    pub created_at: String,
    pub updated_at: String,
}

impl EventTypeOut {
    pub fn new(et: &EventTypeRecord, with_schemas: bool) -> Self {
        Self {
            name: et.name.to_string(),
            description: et.description.clone(),
            archived: et.archived,
            deprecated: et.deprecated,
            feature_flag: et.feature_flag.clone(),
            schemas: if with_schemas {
                et.schemas
                    .as_ref()
                    .and_then(|s| RawValue::from_string(s.clone()).ok())
            } else {
                None
            },
            created_at: format_time(et.created_ms),
            updated_at: format_time(et.updated_ms),
        }
    }
}

// ----- endpoints -----------------------------------------------------

pub fn validate_headers(headers: &BTreeMap<String, String>, field: &str, p: &mut Problems) {
    for (name, value) in headers {
        if let Err(e) = check_custom_header(name, value) {
            p.add(&["body", field, name], e);
        }
    }
}

fn validate_event_types(types: &Option<Vec<String>>, p: &mut Problems) {
    for (i, t) in types.iter().flatten().enumerate() {
        p.check(
            valid_uid(t),
            &["body", "eventTypes", &format!("[{i}]")],
            "not a valid event type name",
        );
    }
}

fn validate_channels(channels: &Option<Vec<String>>, max: usize, p: &mut Problems) {
    if let Some(cs) = channels {
        p.check(
            cs.len() <= max,
            &["body", "channels"],
            &format!("at most {max} channels"),
        );
        for (i, c) in cs.iter().enumerate() {
            p.check(
                valid_channel(c),
                &["body", "channels", &format!("[{i}]")],
                "not a valid channel name",
            );
        }
    }
}

/// Parses an endpoint secret given by the caller (`whsec_` prefix optional).
pub fn parse_secret(s: &str, p: &mut Problems, loc: &[&str]) -> Option<Secret> {
    let prefixed = if s.starts_with(Secret::PREFIX) {
        s.to_owned()
    } else {
        format!("{}{s}", Secret::PREFIX)
    };
    let parsed = Secret::parse(&prefixed);
    if parsed.is_none() {
        p.add(
            loc,
            "must be whsec_ followed by 32 to 100 characters of base64",
        );
    }
    parsed
}

fn dedup(v: Option<Vec<String>>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in v.into_iter().flatten() {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// Credentials to present to an endpoint (a webhookd addition to the Svix
/// endpoint body): `{"type": "basic", "username", "password"}` or
/// `{"type": "bearer", "token"}`. Never returned.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum CredentialsIn {
    Basic { username: String, password: String },
    Bearer { token: String },
}

/// What is shown of an endpoint's credentials: their kind and the username.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsOut {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

impl From<&Credentials> for CredentialsOut {
    fn from(c: &Credentials) -> Self {
        match c {
            Credentials::Basic { username, .. } => Self {
                kind: "basic",
                username: Some(username.clone()),
            },
            Credentials::Bearer { .. } => Self {
                kind: "bearer",
                username: None,
            },
        }
    }
}

/// A client certificate for mutual TLS (a webhookd addition): PEM chain, leaf
/// first, and its PEM private key. The key is never returned.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertIn {
    pub certificate: String,
    pub private_key: String,
}

#[derive(Serialize)]
pub struct ClientCertOut {
    pub certificate: String,
}

/// Validates `tlsClientCert` of a body: `Some(None)` removes it.
fn parse_client_cert(
    given: Option<Option<ClientCertIn>>,
    p: &mut Problems,
) -> Option<Option<ClientCert>> {
    let Some(c) = given? else {
        return Some(None);
    };
    let cert = ClientCert {
        cert_pem: c.certificate,
        key_pem: c.private_key,
    };
    match crate::delivery::client::check_client_cert(&cert) {
        Ok(()) => Some(Some(cert)),
        Err(e) => {
            p.add(&["body", "tlsClientCert"], e);
            None
        }
    }
}

/// Validates `credentials` of a body: `Some(None)` clears them.
fn parse_credentials(
    given: Option<Option<CredentialsIn>>,
    p: &mut Problems,
) -> Option<Option<Credentials>> {
    let given = given?;
    let Some(c) = given else {
        return Some(None);
    };
    let c = match c {
        CredentialsIn::Basic { username, password } => Credentials::Basic { username, password },
        CredentialsIn::Bearer { token } => Credentials::Bearer { token },
    };
    match c.check() {
        Ok(()) => Some(Some(c)),
        Err(e) => {
            p.add(&["body", "credentials"], e);
            None
        }
    }
}

/// Create (POST) and replace (PUT) bodies; PUT ignores `secret`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointIn {
    pub url: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default, alias = "filterTypes")]
    pub event_types: Option<Vec<String>>,
    #[serde(default)]
    pub channels: Option<Vec<String>>,
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default, alias = "rateLimit")]
    pub throttle_rate: Option<u32>,
    #[serde(default)]
    pub metadata: Option<Metadata>,
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub version: Option<i32>,
    /// Absent: unchanged (on PUT); `null`: removed.
    #[serde(default, deserialize_with = "nullable")]
    pub credentials: Option<Option<CredentialsIn>>,
    /// Absent: unchanged (on PUT); `null`: removed.
    #[serde(default, deserialize_with = "nullable")]
    pub tls_client_cert: Option<Option<ClientCertIn>>,
}

/// The validated parts of an `EndpointIn`.
pub struct EndpointFields {
    pub url: EndpointUrl,
    pub secret: Option<Secret>,
    pub credentials: Option<Option<Credentials>>,
    pub client_cert: Option<Option<ClientCert>>,
}

impl EndpointIn {
    pub fn validate(&mut self) -> Result<EndpointFields, ApiError> {
        let mut p = Problems::default();
        let url = match EndpointUrl::parse(&self.url) {
            Ok(u) => Some(u),
            Err(e) => {
                p.add(&["body", "url"], e);
                None
            }
        };
        p.uid(self.uid.as_deref(), "uid");
        validate_event_types(&self.event_types, &mut p);
        validate_channels(&self.channels, 10, &mut p);
        let secret = self
            .secret
            .as_deref()
            .and_then(|s| parse_secret(s, &mut p, &["body", "secret"]));
        if let Some(h) = &self.headers {
            validate_headers(h, "headers", &mut p);
        }
        if let Some(r) = self.throttle_rate {
            p.check(
                (1..=65535).contains(&r),
                &["body", "throttleRate"],
                "must be between 1 and 65535",
            );
        }
        let credentials = parse_credentials(self.credentials.take(), &mut p);
        let client_cert = parse_client_cert(self.tls_client_cert.take(), &mut p);
        p.finish()?;
        Ok(EndpointFields {
            url: url.expect("validated above"),
            secret,
            credentials,
            client_cert,
        })
    }

    /// Writes the fields a PUT replaces into `ep` (not the secret, not the headers unless given).
    pub fn apply(self, fields: EndpointFields, ep: &mut EndpointRecord) {
        ep.url = fields.url;
        ep.description = self.description;
        ep.disabled = self.disabled;
        ep.uid = self.uid;
        ep.event_types = dedup(self.event_types);
        ep.channels = dedup(self.channels);
        ep.rate_limit = self.throttle_rate;
        ep.metadata = self.metadata.unwrap_or_default();
        if let Some(h) = self.headers {
            ep.headers = h;
        }
        if let Some(v) = self.version {
            ep.version = v;
        }
        if let Some(c) = fields.credentials {
            ep.credentials = c;
        }
        if let Some(c) = fields.client_cert {
            ep.client_cert = c;
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub description: Option<String>,
    pub disabled: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    pub uid: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable", alias = "filterTypes")]
    pub event_types: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "nullable")]
    pub channels: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "nullable", alias = "rateLimit")]
    pub throttle_rate: Option<Option<u32>>,
    pub metadata: Option<Metadata>,
    pub version: Option<i32>,
    #[serde(default, deserialize_with = "nullable")]
    pub credentials: Option<Option<CredentialsIn>>,
    #[serde(default, deserialize_with = "nullable")]
    pub tls_client_cert: Option<Option<ClientCertIn>>,
}

impl EndpointPatch {
    pub fn apply(mut self, ep: &mut EndpointRecord) -> Result<(), ApiError> {
        let mut p = Problems::default();
        let url = match self.url.as_deref().map(EndpointUrl::parse) {
            Some(Ok(u)) => Some(u),
            Some(Err(e)) => {
                p.add(&["body", "url"], e);
                None
            }
            None => None,
        };
        if let Some(uid) = &self.uid {
            p.uid(uid.as_deref(), "uid");
        }
        if let Some(t) = &self.event_types {
            validate_event_types(t, &mut p);
        }
        if let Some(c) = &self.channels {
            validate_channels(c, 10, &mut p);
        }
        // 0 (as the spec allows here, and for an application): not throttled.
        if let Some(Some(r)) = self.throttle_rate {
            p.check(
                r <= 65535,
                &["body", "throttleRate"],
                "must be at most 65535",
            );
        }
        let credentials = parse_credentials(self.credentials.take(), &mut p);
        let client_cert = parse_client_cert(self.tls_client_cert.take(), &mut p);
        p.finish()?;
        if let Some(c) = credentials {
            ep.credentials = c;
        }
        if let Some(c) = client_cert {
            ep.client_cert = c;
        }
        if let Some(u) = url {
            ep.url = u;
        }
        if let Some(d) = self.description {
            ep.description = d;
        }
        if let Some(d) = self.disabled {
            ep.disabled = d;
        }
        if let Some(u) = self.uid {
            ep.uid = u;
        }
        if let Some(t) = self.event_types {
            ep.event_types = dedup(t);
        }
        if let Some(c) = self.channels {
            ep.channels = dedup(c);
        }
        if let Some(r) = self.throttle_rate {
            ep.rate_limit = r;
        }
        if let Some(m) = self.metadata {
            ep.metadata = m;
        }
        if let Some(v) = self.version {
            ep.version = v;
        }
        Ok(())
    }
}

fn non_empty(v: &[String]) -> Option<Vec<String>> {
    (!v.is_empty()).then(|| v.to_vec())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointOut {
    pub id: String,
    pub url: String,
    pub description: String,
    pub version: i32,
    pub disabled: bool,
    pub uid: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub filter_types: Option<Vec<String>>,
    pub channels: Option<Vec<String>>,
    pub throttle_rate: Option<u32>,
    pub rate_limit: Option<u32>,
    pub metadata: Metadata,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_cert: Option<ClientCertOut>,
}

impl From<&EndpointRecord> for EndpointOut {
    fn from(e: &EndpointRecord) -> Self {
        Self {
            id: e.id.to_string(),
            url: e.url.as_str().to_owned(),
            description: e.description.clone(),
            version: e.version,
            disabled: e.disabled,
            uid: e.uid.clone(),
            event_types: non_empty(&e.event_types),
            filter_types: non_empty(&e.event_types),
            channels: non_empty(&e.channels),
            throttle_rate: e.rate_limit,
            rate_limit: e.rate_limit,
            metadata: e.metadata.clone(),
            created_at: format_time(e.created_ms),
            updated_at: format_time(e.updated_ms),
            credentials: e.credentials.as_ref().map(CredentialsOut::from),
            tls_client_cert: e.client_cert.as_ref().map(|c| ClientCertOut {
                certificate: c.cert_pem.clone(),
            }),
        }
    }
}

#[derive(Serialize)]
pub struct EndpointSecretOut {
    pub key: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSecretRotateIn {
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub grace_period_seconds: Option<i64>,
}

#[derive(Deserialize)]
pub struct EndpointHeadersIn {
    pub headers: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointHeadersPatchIn {
    #[serde(default)]
    pub headers: BTreeMap<String, Option<String>>,
    #[serde(default)]
    pub delete_headers: Vec<String>,
}

#[derive(Serialize)]
pub struct EndpointHeadersOut {
    pub headers: BTreeMap<String, String>,
    pub sensitive: Vec<String>,
}

#[derive(Serialize, Default)]
pub struct EndpointStats {
    pub success: u64,
    pub pending: u64,
    pub sending: u64,
    pub fail: u64,
    pub canceled: u64,
}

#[derive(Deserialize)]
pub struct RecoverIn {
    pub since: String,
    #[serde(default)]
    pub until: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoverOut {
    pub id: String,
    pub status: &'static str,
    pub task: &'static str,
    pub updated_at: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventExampleIn {
    pub event_type: String,
    #[serde(default)]
    pub example_index: Option<usize>,
    #[serde(default)]
    pub payload: Option<Box<RawValue>>,
}

// ----- messages ------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageIn {
    pub event_type: String,
    /// Kept as the exact bytes the caller sent: they are what gets signed and delivered.
    pub payload: Box<RawValue>,
    #[serde(default)]
    pub event_id: Option<String>,
    #[serde(default)]
    pub channels: Option<Vec<String>>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub application: Option<ApplicationIn>,
    #[serde(default)]
    pub deliver_at: Option<String>,
    #[serde(default)]
    pub payload_retention_period: Option<i64>,
    #[serde(default)]
    pub payload_retention_hours: Option<i64>,
}

impl MessageIn {
    /// `payloadRetentionHours` or `payloadRetentionPeriod` (days), in milliseconds.
    /// Saturating: `validate` bounds both, but this must not overflow on any input.
    pub fn retention_ms(&self) -> Option<i64> {
        self.payload_retention_hours
            .map(|h| h.saturating_mul(3_600_000))
            .or(self
                .payload_retention_period
                .map(|d| d.saturating_mul(86_400_000)))
    }

    /// Checks the fields; returns the delivery time if `deliverAt` was given.
    pub fn validate(&self) -> Result<Option<i64>, ApiError> {
        let mut p = Problems::default();
        p.check(
            valid_uid(&self.event_type),
            &["body", "eventType"],
            "not a valid event type name",
        );
        p.check(
            self.payload.get().trim_start().starts_with('{'),
            &["body", "payload"],
            "the payload must be a JSON object",
        );
        p.uid(self.event_id.as_deref(), "eventId");
        validate_channels(&self.channels, 5, &mut p);
        if let Some(tags) = &self.tags {
            for (i, t) in tags.iter().enumerate() {
                p.check(
                    valid_channel(t),
                    &["body", "tags", &format!("[{i}]")],
                    "not a valid tag",
                );
            }
        }
        if let Some(days) = self.payload_retention_period {
            p.check(
                (1..=3650).contains(&days),
                &["body", "payloadRetentionPeriod"],
                "must be between 1 and 3650 days",
            );
        }
        if let Some(hours) = self.payload_retention_hours {
            p.check(
                (1..=87_600).contains(&hours),
                &["body", "payloadRetentionHours"],
                "must be between 1 and 87600 hours",
            );
        }
        let deliver_at = match &self.deliver_at {
            Some(s) => {
                let t = super::extract::parse_time(s);
                p.check(
                    t.is_some(),
                    &["body", "deliverAt"],
                    "not an RFC 3339 timestamp",
                );
                t
            }
            None => None,
        };
        p.finish()?;
        Ok(deliver_at)
    }
}

/// A payload to put in a response: the stored bytes, `{}` without content, or a marker once expunged.
pub fn payload_json(payload: Option<Vec<u8>>, with_content: bool) -> Box<RawValue> {
    let text = match payload {
        _ if !with_content => "{}".to_owned(),
        Some(bytes) => String::from_utf8(bytes).unwrap_or_else(|_| "{}".to_owned()),
        None => r#"{"expired":true}"#.to_owned(),
    };
    RawValue::from_string(text)
        .unwrap_or_else(|_| RawValue::from_string("{}".into()).expect("valid JSON"))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageOut {
    pub id: String,
    pub event_type: String,
    pub payload: Box<RawValue>,
    pub event_id: Option<String>,
    pub channels: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    pub timestamp: String,
}

impl MessageOut {
    pub fn new(m: &MessageRecord, payload: Box<RawValue>) -> Self {
        Self {
            id: m.id.to_string(),
            event_type: m.event_type.clone(),
            payload,
            event_id: m.event_id.clone(),
            channels: non_empty(&m.channels),
            tags: non_empty(&m.tags),
            timestamp: format_time(m.created_ms),
        }
    }
}

fn status_text(s: MessageStatus) -> &'static str {
    match s {
        MessageStatus::Success => "success",
        MessageStatus::Pending => "pending",
        MessageStatus::Fail => "fail",
        MessageStatus::Sending => "sending",
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointMessageOut {
    #[serde(flatten)]
    pub message: MessageOut,
    pub status: u8,
    pub status_text: &'static str,
    pub next_attempt: Option<String>,
}

impl EndpointMessageOut {
    pub fn new(message: MessageOut, dest: &DestRecord) -> Self {
        Self {
            message,
            status: dest.status.code(),
            status_text: status_text(dest.status),
            next_attempt: dest.next_attempt_ms.map(format_time),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageEndpointOut {
    #[serde(flatten)]
    pub endpoint: EndpointOut,
    pub status: u8,
    pub status_text: &'static str,
    pub next_attempt: Option<String>,
}

impl MessageEndpointOut {
    pub fn new(ep: &EndpointRecord, dest: &DestRecord) -> Self {
        Self {
            endpoint: EndpointOut::from(ep),
            status: dest.status.code(),
            status_text: status_text(dest.status),
            next_attempt: dest.next_attempt_ms.map(format_time),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageAttemptOut {
    pub id: String,
    pub msg_id: String,
    pub endpoint_id: String,
    pub url: String,
    pub response: String,
    pub response_status_code: u16,
    pub response_duration_ms: u64,
    pub status: u8,
    pub status_text: &'static str,
    pub trigger_type: u8,
    pub timestamp: String,
}

impl MessageAttemptOut {
    pub fn new(a: &AttemptRecord, with_content: bool) -> Self {
        Self {
            id: a.id.to_string(),
            msg_id: a.msg_id.to_string(),
            endpoint_id: a.ep_id.to_string(),
            url: a.url.clone(),
            response: if with_content {
                String::from_utf8_lossy(&a.response_body).into_owned()
            } else {
                String::new()
            },
            response_status_code: a.response_status_code,
            response_duration_ms: a.duration_ms,
            status: a.status.code(),
            status_text: status_text(a.status),
            trigger_type: a.trigger.code(),
            timestamp: format_time(a.timestamp_ms),
        }
    }
}

#[derive(Serialize)]
pub struct EmptyResponse {}

// ----- application-scoped tokens (webhookd's own) ---------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenIn {
    /// The application's id or uid.
    pub app_id: String,
    #[serde(default)]
    pub description: String,
}

impl TokenIn {
    pub fn validate(&self) -> Result<(), ApiError> {
        let mut p = Problems::default();
        p.check(
            self.description.chars().count() <= 256,
            &["body", "description"],
            "at most 256 characters",
        );
        p.finish()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenOut {
    pub id: String,
    pub app_id: String,
    pub description: String,
    pub created_at: String,
    /// Only in the answer to its creation: the token is not kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl From<&TokenRecord> for TokenOut {
    fn from(t: &TokenRecord) -> Self {
        Self {
            id: t.id.to_string(),
            app_id: t.app_id.to_string(),
            description: t.description.clone(),
            created_at: format_time(t.created_ms),
            token: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::extract::parse_json;

    /// Found by the `api_json` fuzz target: `payloadRetentionHours` was multiplied
    /// unchecked, overflowing (a panic in debug builds, a negative retention in release).
    #[test]
    fn huge_retention_is_a_422_not_an_overflow() {
        let m: MessageIn = parse_json(
            br#"{"eventType":"a","payload":{},"payloadRetentionHours":9000000000000000}"#,
            64,
        )
        .unwrap();
        assert_eq!(m.retention_ms(), Some(i64::MAX));
        match m.validate() {
            Err(ApiError::Validation(items)) => {
                assert_eq!(items[0].loc, ["body", "payloadRetentionHours"])
            }
            other => panic!("{other:?}"),
        }
        let m: MessageIn = parse_json(
            br#"{"eventType":"a","payload":{},"payloadRetentionPeriod":-9000000000000000}"#,
            64,
        )
        .unwrap();
        assert_eq!(m.retention_ms(), Some(i64::MIN));
        assert!(m.validate().is_err());
    }
}
