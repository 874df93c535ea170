//! Stored records. Each is a compatibility promise for data already on disk.
//! postcard is positional and has no field names: once a release has written a
//! record, changing its fields needs a new record version (a new namespace tag or
//! a version byte), never an edit in place.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::domain::{
    AppId, AttemptId, AttemptTrigger, ClientCert, Credentials, EndpointId, EndpointUrl,
    EventTypeName, MessageId, MessageStatus, Secret, TaskId,
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppRecord {
    pub id: AppId,
    pub uid: Option<String>,
    pub name: String,
    pub rate_limit: Option<u32>,
    pub metadata: BTreeMap<String, String>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventTypeRecord {
    pub name: EventTypeName,
    pub description: String,
    pub archived: bool,
    pub deprecated: bool,
    pub feature_flag: Option<String>,
    /// JSON Schemas by version, as JSON text (`{"1": {...}}`).
    pub schemas: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// A previous signing key that keeps signing until `expires_ms` (secret rotation).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RetiredSecret {
    pub secret: Secret,
    pub expires_ms: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub id: EndpointId,
    pub app_id: AppId,
    pub uid: Option<String>,
    pub url: EndpointUrl,
    pub description: String,
    pub version: i32,
    pub rate_limit: Option<u32>,
    pub disabled: bool,
    /// Empty: every event type.
    pub event_types: Vec<String>,
    /// Empty: every message, whatever its channels.
    pub channels: Vec<String>,
    pub headers: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
    pub secret: Secret,
    pub retired_secrets: Vec<RetiredSecret>,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// Presented to the endpoint in the `Authorization` header.
    pub credentials: Option<Credentials>,
    /// Presented to the endpoint in the TLS handshake.
    pub client_cert: Option<ClientCert>,
}

impl EndpointRecord {
    /// Does a message of `event_type` on `channels` go to this endpoint?
    pub fn subscribes(&self, event_type: &str, channels: &[String]) -> bool {
        !self.disabled
            && (self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type))
            && (self.channels.is_empty() || self.channels.iter().any(|c| channels.contains(c)))
    }

    /// Every key that signs at `now_ms`: the current one first, then unexpired retired ones.
    pub fn signing_secrets(&self, now_ms: i64) -> Vec<&Secret> {
        std::iter::once(&self.secret)
            .chain(
                self.retired_secrets
                    .iter()
                    .filter(|r| r.expires_ms > now_ms)
                    .map(|r| &r.secret),
            )
            .collect()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MessageRecord {
    pub id: MessageId,
    pub app_id: AppId,
    pub event_type: String,
    pub event_id: Option<String>,
    pub channels: Vec<String>,
    pub tags: Vec<String>,
    pub created_ms: i64,
    /// The payload was removed (expunge or retention); only metadata remains.
    pub expunged: bool,
    /// How long this message's payload is kept (`payloadRetentionPeriod`), if not the default.
    pub payload_retention_ms: Option<i64>,
}

/// Delivery state of one message to one endpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DestRecord {
    pub msg_id: MessageId,
    pub ep_id: EndpointId,
    pub app_id: AppId,
    pub status: MessageStatus,
    pub attempts: u32,
    pub next_attempt_ms: Option<i64>,
    pub last_attempt_ms: Option<i64>,
    pub last_status_code: Option<u16>,
    /// Failed attempts since the last success.
    pub failures_in_row: u32,
    /// The delivery's first attempt, encoded, when it was recorded together
    /// with this status instead of under its message (`keys::ns::DEST`).
    /// Stored after the record, not as part of its encoding.
    #[serde(skip)]
    pub first_attempt: Option<Arc<[u8]>>,
}

impl DestRecord {
    /// A delivery not attempted yet.
    pub fn new(
        msg_id: MessageId,
        ep_id: EndpointId,
        app_id: AppId,
        next_attempt_ms: Option<i64>,
    ) -> Self {
        Self {
            msg_id,
            ep_id,
            app_id,
            status: MessageStatus::Pending,
            attempts: 0,
            next_attempt_ms,
            last_attempt_ms: None,
            last_status_code: None,
            failures_in_row: 0,
            first_attempt: None,
        }
    }

    /// The status of `task`'s delivery, not attempted yet.
    pub fn of_task(task: &TaskRecord, next_attempt_ms: Option<i64>) -> Self {
        Self::new(
            task.msg_id.clone(),
            task.ep_id.clone(),
            task.app_id.clone(),
            next_attempt_ms,
        )
    }
}

/// One queued delivery attempt.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: TaskId,
    pub app_id: AppId,
    pub msg_id: MessageId,
    pub ep_id: EndpointId,
    /// 0 for the first attempt of a scheduled series; indexes the retry schedule after that.
    pub attempt: u32,
    pub trigger: AttemptTrigger,
    pub due_ms: i64,
}

/// The first scheduled attempts of one message to several endpoints, queued
/// as one entry. Stored after a 0 byte ([`FanRecord::TAG`]), which no
/// `TaskRecord` starts with (its ID is never empty), so a queue entry is one
/// or the other.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FanRecord {
    pub app_id: AppId,
    pub msg_id: MessageId,
    pub ep_ids: Vec<EndpointId>,
    pub due_ms: i64,
}

impl FanRecord {
    pub const TAG: u8 = 0;

    /// One task per endpoint, each with an ID of its own.
    pub fn tasks(&self) -> Vec<TaskRecord> {
        self.ep_ids
            .iter()
            .map(|ep| TaskRecord {
                id: TaskId::new(self.due_ms),
                app_id: self.app_id.clone(),
                msg_id: self.msg_id.clone(),
                ep_id: ep.clone(),
                attempt: 0,
                trigger: AttemptTrigger::Scheduled,
                due_ms: self.due_ms,
            })
            .collect()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub id: AttemptId,
    pub app_id: AppId,
    pub msg_id: MessageId,
    pub ep_id: EndpointId,
    pub url: String,
    pub timestamp_ms: i64,
    pub trigger: AttemptTrigger,
    pub status: MessageStatus,
    /// 0 when no response arrived (timeout, refused, blocked).
    pub response_status_code: u16,
    pub response_headers: Vec<(String, String)>,
    pub response_body: Vec<u8>,
    pub request_headers: Vec<(String, String)>,
    pub duration_ms: u64,
    /// Why no response arrived, or why the body was cut.
    pub error: Option<String>,
}

/// A remembered response to a request that carried an `idempotency-key`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub created_ms: i64,
    /// `None` while the first request is still being handled.
    pub response: Option<StoredResponse>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

/// A pair of counters (attempt outcomes over a time bucket; messages of an app in
/// `success`). Stored as 16 little-endian bytes and updated with sled merges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub success: u64,
    pub fail: u64,
}

impl Counts {
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.success.to_le_bytes());
        b[8..].copy_from_slice(&self.fail.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Self {
        let word = |r: std::ops::Range<usize>| {
            b.get(r)
                .and_then(|s| <[u8; 8]>::try_from(s).ok())
                .map_or(0, u64::from_le_bytes)
        };
        Self {
            success: word(0..8),
            fail: word(8..16),
        }
    }

    pub fn total(self) -> u64 {
        self.success + self.fail
    }

    /// The sled merge operator: adds a delta to the stored counters.
    pub fn merge(_key: &[u8], old: Option<&[u8]>, delta: &[u8]) -> Option<Vec<u8>> {
        let old = old.map(Counts::from_bytes).unwrap_or_default();
        Some((old + Counts::from_bytes(delta)).to_bytes().to_vec())
    }
}

impl std::ops::Add for Counts {
    type Output = Counts;

    fn add(self, other: Counts) -> Counts {
        Counts {
            success: self.success + other.success,
            fail: self.fail + other.fail,
        }
    }
}

/// The last run of a scheduled job.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct JobRecord {
    pub last_started_ms: Option<i64>,
    pub last_duration_ms: u64,
    pub last_outcome: Option<JobOutcome>,
    pub runs: u64,
    pub failures: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JobOutcome {
    /// What the run did, as `name = count` pairs.
    Done(Vec<(String, u64)>),
    Failed(String),
}

/// An alert the silence watchdog raised and has not cleared.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SilenceAlert {
    pub app_id: AppId,
    pub event_type: String,
    /// When the last message of this kind was published (of a kind
    /// expected and never seen: when its application was created).
    pub last_ms: i64,
    /// The longest gap that was still considered normal.
    pub threshold_ms: i64,
    pub raised_ms: i64,
}

/// An application-scoped API token. Only a hash of the token is kept.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: crate::domain::TokenId,
    pub app_id: AppId,
    pub description: String,
    pub hash: [u8; 32],
    pub created_ms: i64,
}
