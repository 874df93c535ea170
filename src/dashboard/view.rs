//! Values shaped for templates: times, statuses, payloads, chart geometry.

use chrono::{TimeZone, Utc};

use crate::domain::MessageStatus;
use crate::store::Counts;

/// `2026-11-28 13:05:02 UTC`.
pub fn time(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

/// A short duration: `45 s`, `12 min`, `3 h`, `2 d`.
pub fn duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

/// `3 min ago` / `in 3 min`.
pub fn relative(ms: i64, now_ms: i64) -> String {
    if ms <= now_ms {
        format!("{} ago", duration(now_ms - ms))
    } else {
        format!("in {}", duration(ms - now_ms))
    }
}

/// A status as text plus the CSS class that colours it.
#[derive(Clone, Copy, Debug)]
pub struct Badge {
    pub text: &'static str,
    pub class: &'static str,
}

impl From<MessageStatus> for Badge {
    fn from(s: MessageStatus) -> Self {
        match s {
            MessageStatus::Success => Badge {
                text: "delivered",
                class: "ok",
            },
            MessageStatus::Pending => Badge {
                text: "pending",
                class: "wait",
            },
            MessageStatus::Sending => Badge {
                text: "retrying",
                class: "warn",
            },
            MessageStatus::Fail => Badge {
                text: "failed",
                class: "bad",
            },
        }
    }
}

/// A badge for an HTTP status code of an attempt (0: no response).
pub fn code_badge(code: u16) -> Badge {
    match code {
        200..=299 => Badge {
            text: "",
            class: "ok",
        },
        0 => Badge {
            text: "no response",
            class: "bad",
        },
        _ => Badge {
            text: "",
            class: "bad",
        },
    }
}

/// An attempt's response status as text.
pub fn code_label(code: u16) -> String {
    match code {
        0 => "no response".to_owned(),
        c => c.to_string(),
    }
}

/// Largest payload shown inline; bigger ones are cut, with a download link.
pub const PAYLOAD_PREVIEW_BYTES: usize = 64 * 1024;

/// Pretty-printed JSON (or the raw text if it is not JSON), cut at `limit` bytes.
/// Returns the text and whether it was cut.
pub fn pretty_json(raw: &[u8], limit: usize) -> (String, bool) {
    let text = match serde_json::from_slice::<serde_json::Value>(raw) {
        Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
        Err(_) => String::from_utf8_lossy(raw).into_owned(),
    };
    if text.len() <= limit {
        return (text, false);
    }
    let mut cut = limit;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    (text[..cut].to_owned(), true)
}

/// Success rate as a percentage string, or a dash without attempts.
pub fn rate(c: Counts) -> String {
    if c.total() == 0 {
        "–".to_owned()
    } else {
        format!("{:.1} %", c.success as f64 * 100.0 / c.total() as f64)
    }
}

/// One bar of a stacked success/failure chart, in SVG units.
#[derive(Debug, Clone)]
pub struct Bar {
    pub x: f64,
    pub width: f64,
    pub ok_y: f64,
    pub ok_h: f64,
    pub fail_y: f64,
    pub fail_h: f64,
    pub title: String,
}

/// A bar chart of attempt counts, drawn on the server as SVG.
#[derive(Debug, Clone)]
pub struct Chart {
    pub width: f64,
    pub height: f64,
    pub bars: Vec<Bar>,
    pub max: u64,
    pub first_label: String,
    pub last_label: String,
    pub total: Counts,
}

impl Chart {
    pub const WIDTH: f64 = 720.0;
    pub const HEIGHT: f64 = 90.0;

    /// `labels[i]` names bucket i (shown on hover); `span` is what the axis's left
    /// end says (e.g. "1 hour ago"); its right end is "now".
    pub fn new(counts: &[Counts], labels: &[String], span: &str) -> Chart {
        let max = counts.iter().map(|c| c.total()).max().unwrap_or(0).max(1);
        let n = counts.len().max(1) as f64;
        let slot = Self::WIDTH / n;
        let width = (slot * 0.8).max(1.0);
        let scale = Self::HEIGHT / max as f64;
        let bars = counts
            .iter()
            .zip(labels)
            .enumerate()
            .map(|(i, (c, label))| {
                let ok_h = c.success as f64 * scale;
                let fail_h = c.fail as f64 * scale;
                Bar {
                    x: i as f64 * slot + (slot - width) / 2.0,
                    width,
                    ok_y: Self::HEIGHT - ok_h,
                    ok_h,
                    fail_y: Self::HEIGHT - ok_h - fail_h,
                    fail_h,
                    title: format!("{label}: {} delivered, {} failed", c.success, c.fail),
                }
            })
            .collect();
        Chart {
            width: Self::WIDTH,
            height: Self::HEIGHT,
            bars,
            max,
            first_label: span.to_owned(),
            last_label: "now".to_owned(),
            total: counts.iter().fold(Counts::default(), |a, c| a + *c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(duration(59_000), "59 s");
        assert_eq!(duration(3_600_000), "1 h");
        assert_eq!(relative(0, 120_000), "2 min ago");
        assert_eq!(relative(120_000, 0), "in 2 min");
        assert_eq!(
            rate(Counts {
                success: 1,
                fail: 3
            }),
            "25.0 %"
        );
        assert_eq!(rate(Counts::default()), "–");
    }

    #[test]
    fn pretty_json_cuts_on_a_char_boundary() {
        let (t, cut) = pretty_json(br#"{"a":"\u00e9\u00e9\u00e9"}"#, 1000);
        assert!(t.contains("\"a\": \"ééé\"") && !cut);
        let (t, cut) = pretty_json("{\"a\":\"ééééé\"}".as_bytes(), 12);
        assert!(cut && t.len() <= 12);
        let (t, _) = pretty_json(b"not json <b>", 100);
        assert_eq!(t, "not json <b>");
    }

    #[test]
    fn chart_bars_fit_the_box() {
        let counts = [
            Counts {
                success: 4,
                fail: 1,
            },
            Counts::default(),
            Counts {
                success: 0,
                fail: 2,
            },
        ];
        let labels: Vec<String> = (0..3).map(|i| i.to_string()).collect();
        let c = Chart::new(&counts, &labels, "3 min ago");
        assert_eq!(c.bars.len(), 3);
        assert_eq!(c.max, 5);
        for b in &c.bars {
            assert!(b.fail_y >= 0.0 && b.ok_y + b.ok_h <= Chart::HEIGHT + 1e-9);
            assert!(b.x >= 0.0 && b.x + b.width <= Chart::WIDTH + 1e-9);
        }
        assert!((c.bars[0].ok_h + c.bars[0].fail_h - Chart::HEIGHT).abs() < 1e-9);
        assert_eq!(
            c.total,
            Counts {
                success: 4,
                fail: 3
            }
        );
    }
}
