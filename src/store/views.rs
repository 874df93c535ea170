//! Read-side summaries for the dashboard: messages across applications, the
//! dead letters, counters over time and the state of the queue. Each reads an
//! index or a bounded range, never the whole database.

use super::{Counts, DestRecord, MessageRecord, Page, PageReq, Store, StoreError, keys};
use crate::domain::{AppId, EndpointId, MessageId};

/// What the delivery queue looks like right now.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueSummary {
    /// Deliveries waiting (up to the count limit asked for).
    pub queued: usize,
    /// Whether `queued` stopped at the limit.
    pub queued_capped: bool,
    /// Deliveries claimed by the worker.
    pub in_flight: usize,
    /// Due time of the earliest waiting delivery.
    pub oldest_due_ms: Option<i64>,
}

impl Store {
    /// Messages of every application, newest first by default, filtered by `keep`.
    /// Set `req.scan_limit` when the filter may match rarely.
    pub fn list_all_messages(
        &self,
        req: &PageReq,
        mut keep: impl FnMut(&MessageRecord) -> bool,
    ) -> Result<Page<MessageRecord>, StoreError> {
        self.page(&[keys::ns::ALL_MESSAGES], req, |k, v| {
            let (Some(msg), Some(app)) = (
                MessageId::parse(&String::from_utf8_lossy(k)),
                super::all_messages_app(v),
            ) else {
                return Ok(None);
            };
            Ok(self.get_message(&app, &msg)?.filter(|m| keep(m)))
        })
    }

    /// Deliveries that are failed (dead-lettered), newest message first.
    pub fn failed_deliveries(&self, req: &PageReq) -> Result<Page<DestRecord>, StoreError> {
        self.page(&[keys::ns::FAILED], req, |k, _| {
            let s = String::from_utf8_lossy(k);
            let split = MessageId::PREFIX.len() + 26;
            let (Some(msg), Some(ep)) = (
                s.get(..split).and_then(MessageId::parse),
                s.get(split..).and_then(EndpointId::parse),
            ) else {
                return Ok(None);
            };
            self.dest(&msg, &ep)
        })
    }

    /// Attempt counts per minute for the minutes `from..to` (minutes since the epoch).
    pub fn minute_counts(&self, from: i64, to: i64) -> Result<Vec<Counts>, StoreError> {
        self.apply_counters()?;
        let mut out = vec![Counts::default(); (to - from).max(0) as usize];
        for entry in self
            .tree
            .range(keys::minute_stats(from)..keys::minute_stats(to))
        {
            let (k, v) = entry?;
            let minute = i64::from_be_bytes(k[1..9].try_into().expect("minute keys hold 8 bytes"));
            if let Some(slot) = out.get_mut((minute - from) as usize) {
                *slot = Counts::from_bytes(&v);
            }
        }
        Ok(out)
    }

    /// Attempt counts of one endpoint over the hours `from..to` (hours since the epoch).
    pub fn endpoint_counts(
        &self,
        ep: &EndpointId,
        from: i64,
        to: i64,
    ) -> Result<Counts, StoreError> {
        self.apply_counters()?;
        let mut total = Counts::default();
        for entry in self
            .tree
            .range(keys::endpoint_hour_stats(ep, from)..keys::endpoint_hour_stats(ep, to))
        {
            total = total + Counts::from_bytes(&entry?.1);
        }
        Ok(total)
    }

    /// Messages ever published to an app (deleted ones included until the app goes).
    pub fn app_message_count(&self, app: &AppId) -> Result<u64, StoreError> {
        Ok(self.get_counts(&keys::app_message_count(app))?.success)
    }

    /// Counts the queue, looking at no more than `count_limit` entries.
    pub fn queue_summary(&self, count_limit: usize) -> Result<QueueSummary, StoreError> {
        let mut s = QueueSummary::default();
        for (i, entry) in self.queued().enumerate() {
            if i == count_limit {
                s.queued_capped = true;
                break;
            }
            let entry = entry?;
            if i == 0 {
                s.oldest_due_ms = Some(entry.due_ms());
            }
            s.queued += entry.len();
        }
        s.in_flight = self.leased().take(count_limit).count();
        // Deliveries handed over in memory: waiting for the worker, or taken.
        let (ready, taken) = self.handoff.depth();
        s.queued += ready;
        s.in_flight += taken;
        if let Some(first) = self.handoff.waiting(1).first() {
            s.oldest_due_ms = Some(
                s.oldest_due_ms
                    .map_or(first.due_ms, |d| d.min(first.due_ms)),
            );
        }
        Ok(s)
    }

    /// The earliest waiting deliveries (the next to go), up to `limit`:
    /// queued, and handed over in memory.
    pub fn next_deliveries(&self, limit: usize) -> Result<Vec<super::TaskRecord>, StoreError> {
        let mut next = self.handoff.waiting(limit);
        let handed = next.len();
        for entry in self.queued() {
            if next.len() - handed >= limit {
                break;
            }
            next.extend(entry?.tasks());
        }
        next.sort_by_key(|t| t.due_ms);
        next.truncate(limit);
        Ok(next)
    }
}

impl Store {
    /// Finds a message by ID alone, whatever its application (through the global index).
    pub fn find_message_any(&self, id: &MessageId) -> Result<Option<MessageRecord>, StoreError> {
        let Some(entry) = self.tree.get(keys::all_messages(id))? else {
            return Ok(None);
        };
        match super::all_messages_app(&entry) {
            Some(app) => self.get_message(&app, id),
            None => Ok(None),
        }
    }

    /// Every endpoint of every application (for the overview's health lists).
    pub fn all_endpoints(&self) -> Result<Vec<super::EndpointRecord>, StoreError> {
        self.tree
            .scan_prefix([keys::ns::ENDPOINT])
            .map(|e| {
                let (k, v) = e?;
                self.open_endpoint(&k, &v)
            })
            .collect()
    }
}

impl Store {
    /// How many deliveries are failed, counting at most `limit`.
    pub fn count_failed(&self, limit: usize) -> usize {
        self.tree
            .scan_prefix([keys::ns::FAILED])
            .take(limit)
            .count()
    }
}
