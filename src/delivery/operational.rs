//! Operational webhooks: webhookd's own events (an endpoint disabled, a message
//! exhausted, an event type gone quiet, …) sent to the operator's URL.
//!
//! They travel like any message: published to a reserved application
//! (`uid` `webhookd-operational`) whose one endpoint is the configured URL, so
//! they are signed, retried, recorded and visible in the dashboard. Nothing is
//! emitted about that application itself.

use std::sync::Arc;

use serde_json::{Value, json};

use super::DeliveryHandle;
use crate::config::OperationalConfig;
use crate::domain::{AppId, EndpointId, EndpointUrl, MessageId, Secret, format_time, now_ms};
use crate::store::{AppRecord, EndpointRecord, MessageRecord, Published, Store, StoreError};

/// The reserved application's uid.
pub const APP_UID: &str = "webhookd-operational";
const ENDPOINT_UID: &str = "operator";

/// Every event type webhookd emits.
pub const EVENT_TYPES: [&str; 7] = [
    "endpoint.disabled",
    "endpoint.enabled",
    "message.attempt.failing",
    "message.attempt.exhausted",
    "message.attempt.recovered",
    "watchdog.silence",
    "watchdog.resumed",
];

/// Emits operational events. Cheap to clone; `Send`.
#[derive(Clone)]
pub struct Operational {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    delivery: DeliveryHandle,
    /// The reserved app and its endpoint, when operational webhooks are on.
    target: Option<(AppRecord, EndpointRecord)>,
}

#[derive(Debug, thiserror::Error)]
pub enum OperationalError {
    #[error("operational.url: {0}")]
    Url(&'static str),
    #[error("operational.secret is not a whsec_ secret")]
    Secret,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Operational {
    /// Creates (or updates) the reserved application and its endpoint to match `cfg`.
    /// With no URL configured, events are not sent, and an existing endpoint is disabled.
    pub fn setup(
        store: Store,
        delivery: DeliveryHandle,
        cfg: &OperationalConfig,
    ) -> Result<Self, OperationalError> {
        let now = now_ms();
        let existing = store.find_app(APP_UID)?;
        let target = match (&cfg.url, existing) {
            (None, None) => None,
            (None, Some(app)) => {
                // Switched off: keep the history, stop sending.
                if let Some(mut ep) = store.find_endpoint(&app.id, ENDPOINT_UID)?
                    && !ep.disabled
                {
                    ep.disabled = true;
                    ep.updated_ms = now;
                    store.put_endpoint(&ep)?;
                }
                None
            }
            (Some(url), existing) => {
                let url = EndpointUrl::parse(url).map_err(OperationalError::Url)?;
                let secret = match &cfg.secret {
                    Some(s) => Some(Secret::parse(s).ok_or(OperationalError::Secret)?),
                    None => None,
                };
                let app = match existing {
                    Some(app) => app,
                    None => {
                        let app = AppRecord {
                            id: AppId::new(now),
                            uid: Some(APP_UID.to_owned()),
                            name: "webhookd operational events".to_owned(),
                            rate_limit: None,
                            metadata: Default::default(),
                            created_ms: now,
                            updated_ms: now,
                        };
                        // A concurrent start cannot race us: setup runs once, before serving.
                        let _ = store.create_app(&app)?;
                        app
                    }
                };
                let ep = match store.find_endpoint(&app.id, ENDPOINT_UID)? {
                    Some(mut ep) => {
                        let changed = ep.url != url
                            || ep.disabled
                            || secret.as_ref().is_some_and(|s| *s != ep.secret);
                        if changed {
                            ep.url = url;
                            ep.disabled = false;
                            if let Some(s) = secret {
                                ep.secret = s;
                            }
                            ep.updated_ms = now;
                            store.put_endpoint(&ep)?;
                        }
                        ep
                    }
                    None => {
                        let ep = EndpointRecord {
                            id: EndpointId::new(now),
                            app_id: app.id.clone(),
                            uid: Some(ENDPOINT_UID.to_owned()),
                            url,
                            description: "The operator's operational webhook".to_owned(),
                            version: 1,
                            rate_limit: None,
                            disabled: false,
                            event_types: Vec::new(),
                            channels: Vec::new(),
                            headers: Default::default(),
                            metadata: Default::default(),
                            secret: secret.unwrap_or_else(Secret::generate),
                            retired_secrets: Vec::new(),
                            created_ms: now,
                            updated_ms: now,
                            credentials: None,
                            client_cert: None,
                        };
                        let _ = store.create_endpoint(&ep)?;
                        ep
                    }
                };
                Some((app, ep))
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                delivery,
                target,
            }),
        })
    }

    /// Operational webhooks switched off (tests of other parts, and no URL configured).
    pub fn disabled(store: Store, delivery: DeliveryHandle) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                delivery,
                target: None,
            }),
        }
    }

    /// Is `app` the reserved application (whose own deliveries raise no events)?
    pub fn is_reserved(&self, app: &AppId) -> bool {
        self.inner
            .target
            .as_ref()
            .is_some_and(|(a, _)| &a.id == app)
    }

    /// Does `id_or_uid` (as an API path names an application) name the
    /// reserved application? Without a store lookup: its record is held.
    pub fn is_reserved_name(&self, id_or_uid: &str) -> bool {
        self.inner
            .target
            .as_ref()
            .is_some_and(|(a, _)| a.id.as_str() == id_or_uid || a.uid.as_deref() == Some(id_or_uid))
    }

    /// Publishes `{"type", "timestamp", "data"}` to the operator's endpoint, durably.
    /// A failure is logged, not returned: the event that caused it has happened anyway.
    pub async fn emit(&self, event_type: &str, data: Value) {
        let Some((app, ep)) = &self.inner.target else {
            return;
        };
        let now = now_ms();
        let body = json!({ "type": event_type, "timestamp": format_time(now), "data": data });
        let msg = MessageRecord {
            id: MessageId::new(now),
            app_id: app.id.clone(),
            event_type: event_type.to_owned(),
            event_id: None,
            channels: Vec::new(),
            tags: Vec::new(),
            created_ms: now,
            expunged: false,
            payload_retention_ms: None,
        };
        let delivery = self.inner.delivery.clone();
        let stored = self
            .inner
            .store
            .publish(&msg, body.to_string().as_bytes(), &[ep], now, move || {
                delivery.wake()
            })
            .await;
        match stored {
            Ok(Published::Created { .. }) => {}
            Ok(Published::DuplicateEventId(_)) => return,
            Err(e) => {
                tracing::error!(error = %e, event_type, "storing an operational event failed");
                return;
            }
        }
        tracing::info!(event_type, "operational event");
    }
}

impl Operational {
    /// `endpoint.disabled` or `endpoint.enabled` after a person changed it (API or dashboard).
    pub async fn endpoint_toggled(&self, app: &AppRecord, ep: &EndpointRecord) {
        if self.is_reserved(&app.id) {
            return;
        }
        let mut data = endpoint_data(app, ep);
        if ep.disabled {
            data["reason"] = "manual".into();
            self.emit("endpoint.disabled", data).await;
        } else {
            self.emit("endpoint.enabled", data).await;
        }
    }
}

/// `data` of the endpoint events.
pub fn endpoint_data(app: &AppRecord, ep: &EndpointRecord) -> Value {
    json!({
        "appId": app.id.as_str(),
        "appUid": app.uid,
        "endpointId": ep.id.as_str(),
        "endpointUid": ep.uid,
        "url": ep.url.as_str(),
    })
}
