//! The jobs themselves: synchronous passes over the store (run off the async
//! threads), each returning what it did and the operational events to send.

use std::collections::HashMap;
use std::time::Instant;

use serde_json::json;

use super::{Report, Scheduler};
use crate::delivery::operational::endpoint_data;
use crate::domain::{AppId, format_time};
use crate::store::{SilenceAlert, StoreError};

/// A queued delivery this far past its due time counts as overdue.
const OVERDUE_MS: i64 = 60_000;
/// Delivery statuses checked per reconciliation run (the sweep continues next run).
const RECONCILE_BUDGET: usize = 100_000;
/// Messages of a kind seen before the watchdog trusts its idea of their cadence.
const MIN_HISTORY: u64 = 5;

pub fn reconcile(s: &Scheduler, now: i64) -> Result<Report, StoreError> {
    let cursor = s
        .reconcile_cursor
        .lock()
        .expect("cursor lock poisoned")
        .clone();
    // The sweep rests as long as each chunk took: at most half a core, so
    // that checking 100,000 statuses (about half a second of CPU) does not
    // hold up deliveries on a small machine.
    let mut chunk_started = Instant::now();
    let rest = || {
        std::thread::sleep(chunk_started.elapsed());
        chunk_started = Instant::now();
    };
    let r = s
        .store
        .reconcile(now, OVERDUE_MS, cursor.as_deref(), RECONCILE_BUDGET, rest)?;
    *s.reconcile_cursor.lock().expect("cursor lock poisoned") = r.cursor.clone();
    let mut report = Report {
        wake: r.leases_released + r.requeued + r.overdue > 0,
        ..Report::default()
    };
    report.count("leases_released", r.leases_released);
    report.count("overdue", r.overdue);
    report.count("statuses_checked", r.statuses_checked);
    report.count("requeued", r.requeued);
    report.count("dead_letter_fixed", r.dead_letter_fixed);
    report.count("statuses_forgotten", r.forgotten);
    Ok(report)
}

pub fn retention(s: &Scheduler, now: i64) -> Result<Report, StoreError> {
    let cfg = &s.cfg.retention_cfg;
    let ms = |d: std::time::Duration| d.as_millis() as i64;
    // Per-app overrides are configured by uid or id: resolve them to ids once.
    let mut per_app: HashMap<AppId, i64> = HashMap::new();
    for (key, d) in &cfg.app_payload {
        if let Some(app) = s.store.find_app(key)? {
            per_app.insert(app.id, ms(*d));
        }
    }
    let default = ms(cfg.payload);
    let shortest = per_app.values().copied().fold(default, i64::min);
    let payloads = s.store.expire_payloads(now, shortest.min(default), |m| {
        m.payload_retention_ms
            .or_else(|| per_app.get(&m.app_id).copied())
            .unwrap_or(default)
    })?;
    let attempts = s.store.delete_old_attempts(now, ms(cfg.attempts))?;
    let idempotency = s.store.expire_idempotency(now, ms(cfg.idempotency))?;
    let mut dropped = crate::store::Retained::default();
    if cfg.max_disk_bytes > 0 {
        let target = cfg.max_disk_bytes / 100 * u64::from(cfg.disk_target_percent);
        let size = s.store.size_on_disk()?;
        let written = s.store.bytes_written();
        let mut bound = s.disk_bound.lock().unwrap_or_else(|p| p.into_inner());
        let credit = bound.credit(size, written);
        let over = size.saturating_sub(target).saturating_sub(credit);
        if over > 0 {
            dropped = s.store.drop_oldest_delivered(over)?;
            if dropped.bytes_freed < over {
                tracing::warn!(
                    size,
                    target,
                    "the database is over its bound and only undelivered messages are left to drop"
                );
            }
        }
        *bound = DiskBound {
            credit: credit + dropped.bytes_freed,
            size,
            written,
        };
    }
    let mut report = Report::default();
    report.count("payloads_expunged", payloads.payloads_expunged);
    report.count("attempts_deleted", attempts.attempts_deleted);
    report.count("messages_deleted", dropped.messages_deleted);
    report.count("idempotency_keys_expired", idempotency);
    report.count(
        "bytes_freed",
        payloads.bytes_freed + attempts.bytes_freed + dropped.bytes_freed,
    );
    Ok(report)
}

/// What the disk bound deleted that the database's size does not show
/// yet. sled's file keeps its size for a while after a deletion (the room is
/// reused by writes before the file shrinks), so the size alone called for
/// the same deletion again at every run until the file shrank: most of the
/// history went for an excess of a few percent.
#[derive(Default)]
pub struct DiskBound {
    /// Bytes deleted and not yet used up (by the file shrinking or by writes).
    credit: u64,
    /// The database's size and `Store::bytes_written` at the last run.
    size: u64,
    written: u64,
}

impl DiskBound {
    /// What is left of the credit with the database at `size` after
    /// `written` bytes were written since it was opened.
    fn credit(&self, size: u64, written: u64) -> u64 {
        self.credit
            .saturating_sub(self.size.saturating_sub(size))
            .saturating_sub(written.saturating_sub(self.written))
    }
}

pub fn endpoint_health(s: &Scheduler, now: i64) -> Result<Report, StoreError> {
    let window = s.cfg.disable_after.as_millis() as i64;
    let mut report = Report::default();
    let failing = s.store.failing_since()?;
    let mut disabled = 0;
    for (app_id, ep_id, clock) in &failing {
        // Failing for the whole window: attempts failed at its start and at
        // its end, none succeeded between. (One failure and then no
        // traffic, a quiet weekend, is not an endpoint that fails.)
        if now - clock.since_ms < window || clock.last_ms - clock.since_ms < window {
            continue;
        }
        // An error with one endpoint is logged and the others go on: the
        // events of those disabled before it are still sent (their clocks
        // are cleared: nothing would announce them again).
        let disable = || -> Result<Option<serde_json::Value>, StoreError> {
            let (Some(app), Some(mut ep)) = (
                s.store.find_app(app_id.as_str())?,
                s.store.get_endpoint(app_id, ep_id)?,
            ) else {
                s.store.clear_failing_since(ep_id)?;
                return Ok(None);
            };
            // Not the operator's receiver of operational events: disabled, it
            // would lose every event until the next start, which enables it.
            if ep.disabled || s.ops.is_reserved(&app.id) {
                s.store.clear_failing_since(ep_id)?;
                return Ok(None);
            }
            ep.disabled = true;
            ep.updated_ms = now;
            if !s.store.put_endpoint(&ep)? {
                return Ok(None); // deleted meanwhile
            }
            s.store.clear_failing_since(ep_id)?;
            let since = format_time(clock.since_ms);
            tracing::warn!(endpoint_id = %ep.id, failing_since = %since, "endpoint disabled after failing every attempt");
            let mut data = endpoint_data(&app, &ep);
            data["reason"] = "failing".into();
            data["failSince"] = since.into();
            Ok(Some(data))
        };
        match disable() {
            Ok(Some(data)) => {
                disabled += 1;
                report.events.push(("endpoint.disabled", data));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, endpoint_id = %ep_id, "disabling a failing endpoint failed; tried again at the next run");
            }
        }
    }
    report.count("failing", failing.len());
    report.count("disabled", disabled);
    Ok(report)
}

/// An event type of an application that the silence watchdog watches.
struct Watched {
    app: AppId,
    event_type: String,
    /// Its last message; `None`: never seen (an explicit expectation).
    last_ms: Option<i64>,
    /// Since when it is silent: its last message, else its app's creation.
    since_ms: i64,
    /// The longest gap that is still normal for it.
    threshold_ms: i64,
}

pub fn silence_watchdog(s: &Scheduler, now: i64) -> Result<Report, StoreError> {
    let w = &s.cfg.watchdog;
    // Explicit expectations, by app id, with when the app was created.
    let mut expected: HashMap<(AppId, String), (i64, i64)> = HashMap::new();
    for e in &w.expect {
        if let Some(app) = s.store.find_app(&e.app)?
            && !s.ops.is_reserved(&app.id)
        {
            let every = e.every.as_millis() as i64;
            expected.insert((app.id, e.event_type.clone()), (every, app.created_ms));
        }
    }
    let alerts: HashMap<(AppId, String), SilenceAlert> = s
        .store
        .silence_alerts()?
        .into_iter()
        .map(|a| ((a.app_id.clone(), a.event_type.clone()), a))
        .collect();
    let mut watch = Vec::new();
    for (app, event_type, cadence) in s.store.cadences()? {
        if s.ops.is_reserved(&app) {
            continue;
        }
        let key = (app, event_type);
        let threshold_ms = match expected.remove(&key) {
            Some((every, _)) => every,
            None if cadence.count >= MIN_HISTORY => {
                ((cadence.mean_gap_ms * w.factor) as i64).max(w.min_silence.as_millis() as i64)
            }
            None => continue,
        };
        let (app, event_type) = key;
        watch.push(Watched {
            app,
            event_type,
            last_ms: Some(cadence.last_ms),
            since_ms: cadence.last_ms,
            threshold_ms,
        });
    }
    // An expected kind never seen is silent since its app was created.
    for ((app, event_type), (every, created_ms)) in expected {
        watch.push(Watched {
            app,
            event_type,
            last_ms: None,
            since_ms: created_ms,
            threshold_ms: every,
        });
    }
    let mut report = Report::default();
    report.count("watched", watch.len());
    for kind in &watch {
        // An error with one kind is logged and the others go on: the
        // events of alerts raised or cleared before it are still sent
        // (their records are written: nothing would announce them again).
        match watch_one(
            s,
            kind,
            alerts.get(&(kind.app.clone(), kind.event_type.clone())),
            now,
        ) {
            Ok(Some(event)) => report.events.push(event),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, app_id = %kind.app, event_type = kind.event_type, "watching an event type failed; tried again at the next run");
            }
        }
    }
    let sent = |name| report.events.iter().filter(|(e, _)| *e == name).count();
    let (raised, cleared) = (sent("watchdog.silence"), sent("watchdog.resumed"));
    report.count("raised", raised);
    report.count("cleared", cleared);
    Ok(report)
}

/// Raises an alert for `kind` if it went quiet, or clears its `alert` if
/// it has messages again: the event to send.
fn watch_one(
    s: &Scheduler,
    kind: &Watched,
    alert: Option<&SilenceAlert>,
    now: i64,
) -> Result<Option<(&'static str, serde_json::Value)>, StoreError> {
    let Watched {
        app,
        event_type,
        last_ms,
        since_ms,
        threshold_ms,
    } = kind;
    let silent = now - since_ms;
    let resumed = alert.filter(|a| last_ms.is_some_and(|last| last > a.last_ms));
    let went_quiet = alert.is_none() && silent > *threshold_ms;
    if resumed.is_none() && !went_quiet {
        return Ok(None);
    }
    // Read before the alert is written: once written, nothing would
    // announce it again.
    let app_uid = s.store.find_app(app.as_str())?.and_then(|a| a.uid);
    if let Some(alert) = resumed {
        s.store.clear_silence_alert(app, event_type)?;
        tracing::info!(app_id = %app, event_type, "event type resumed");
        return Ok(Some((
            "watchdog.resumed",
            json!({
                "appId": app.as_str(),
                "appUid": app_uid,
                "eventType": event_type,
                "resumedAt": format_time(*since_ms),
                "silentForSeconds": (since_ms - alert.last_ms) / 1000,
            }),
        )));
    }
    s.store.put_silence_alert(&SilenceAlert {
        app_id: app.clone(),
        event_type: event_type.clone(),
        last_ms: *since_ms,
        threshold_ms: *threshold_ms,
        raised_ms: now,
    })?;
    tracing::warn!(app_id = %app, event_type, silent_s = silent / 1000, "event type went quiet");
    Ok(Some((
        "watchdog.silence",
        json!({
            "appId": app.as_str(),
            "appUid": app_uid,
            "eventType": event_type,
            "lastMessageAt": last_ms.map(format_time),
            "silentForSeconds": silent / 1000,
            "thresholdSeconds": threshold_ms / 1000,
        }),
    )))
}
