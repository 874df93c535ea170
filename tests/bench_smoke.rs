//! The benchmark binary (`webhookd-bench smoke --json`) runs every scenario
//! for a few seconds against the real `webhookd` binary. Checked here: its
//! structure and its counting (every figure present, every delivery owed to a
//! healthy endpoint counted), never its speed.

use std::process::Command;

use serde_json::Value;

fn num(v: &Value, path: &str) -> f64 {
    v.pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path} is missing or not a number in {v}"))
}

fn uint(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{path} is missing or not a count in {v}"))
}

/// A latency summary that measured something.
fn measured(v: &Value, path: &str) {
    assert!(
        uint(v, &format!("{path}/count")) > 0,
        "{path}: nothing measured"
    );
    for q in ["p50_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms"] {
        num(v, &format!("{path}/{q}"));
    }
}

/// Every delivery owed to a healthy endpoint arrived, counted once.
fn all_delivered(v: &Value, healthy: u64) {
    let published = uint(v, "/published");
    assert!(published > 0, "nothing published: {v}");
    assert_eq!(uint(v, "/publish_errors"), 0, "{v}");
    assert_eq!(uint(v, "/expected"), published * healthy, "{v}");
    assert_eq!(uint(v, "/delivered"), published * healthy, "{v}");
    assert_eq!(v["complete"], true, "{v}");
    measured(v, "/publish_to_delivery");
    // Duplicates are allowed (at least once), and the first ten are named.
    let named = v["duplicates_seen"]
        .as_array()
        .expect("duplicates_seen is a list");
    assert_eq!(named.len() as u64, uint(v, "/duplicates").min(10), "{v}");
}

#[test]
fn smoke_run_reports_every_figure_and_counts_every_delivery() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_webhookd-bench"))
        .args(["smoke", "--json", "--data-parent"])
        .arg(data.path())
        .output()
        .expect("running webhookd-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "webhookd-bench failed:\n{stderr}");
    let r: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{stderr}"));

    assert_eq!(r["schema"], 1);
    assert_eq!(r["scenario"], "smoke");
    assert_eq!(r["setup"]["daemon"], "spawned");
    assert!(uint(&r, "/machine/cores") >= 1);

    // The binary it started is the one built beside it.
    let started = r["setup"]["webhookd"].as_str().unwrap();
    let built = std::path::Path::new(env!("CARGO_BIN_EXE_webhookd"));
    assert_eq!(std::path::Path::new(started).file_name(), built.file_name());

    let direct = &r["direct"];
    assert!(uint(direct, "/requests") > 0);
    assert_eq!(uint(direct, "/errors"), 0);
    measured(direct, "/latency");

    let runs = r["throughput"].as_array().expect("throughput is a list");
    let fanouts: Vec<u64> = runs.iter().map(|t| uint(t, "/fanout")).collect();
    assert_eq!(fanouts, [1, 10]);
    for t in runs {
        all_delivered(t, uint(t, "/fanout"));
        measured(t, "/ack");
        num(t, "/deliveries_per_s");
        num(t, "/drain_s");
        assert!(t["queue_grew"].is_boolean());
    }

    let latency = &r["latency"];
    assert_eq!(uint(latency, "/scheduled"), uint(latency, "/published"));
    all_delivered(latency, 1);
    measured(latency, "/ack");
    measured(latency, "/send_lag");

    let failing = &r["failing"];
    let baseline = &failing["baseline"];
    let mixed = &failing["failing"];
    // The baseline has as many endpoints as the failing run, all healthy.
    assert_eq!(uint(baseline, "/healthy_endpoints"), 11);
    assert_eq!(
        uint(mixed, "/healthy_endpoints")
            + uint(mixed, "/failing_endpoints")
            + uint(mixed, "/slow_endpoints"),
        11
    );
    assert_eq!(uint(mixed, "/failing_endpoints"), 1);
    all_delivered(baseline, 11);
    all_delivered(mixed, uint(mixed, "/healthy_endpoints"));
    assert!(uint(mixed, "/failing_arrivals") > 0, "{mixed}");
    assert!(uint(mixed, "/slow_arrivals") > 0, "{mixed}");
    num(failing, "/p99_ratio");
    for run in [baseline, mixed, latency] {
        num(run, "/drain_s");
        assert!(run["saturated"].is_boolean());
    }

    let stored = &r["stored"];
    assert_eq!(uint(stored, "/messages"), 200);
    assert_eq!(uint(stored, "/published"), 200);
    all_delivered(stored, 1);
    assert!(stored["skipped"].is_null());
    assert!(uint(stored, "/disk_bytes") > 0);
    assert!(uint(stored, "/rss_peak_preload_bytes") > 0);
    assert!(uint(stored, "/restart/rss_peak_bytes") > 0);
    assert_eq!(uint(stored, "/restart/health_status"), 204);
    num(stored, "/restart/serving_s");
    num(stored, "/restart/ready_line_s");
    let dashboard = &stored["dashboard"];
    assert_eq!(uint(dashboard, "/requests_each"), 20);
    for page in ["message_list", "message_list_filtered", "message_page"] {
        assert_eq!(uint(dashboard, &format!("/{page}/count")), 20);
        measured(dashboard, &format!("/{page}"));
    }
    for i in 0..3 {
        assert!(uint(dashboard, &format!("/page_bytes/{i}")) > 0);
    }

    let backlog = &r["backlog"];
    assert_eq!(uint(backlog, "/published"), 200);
    assert_eq!(uint(backlog, "/publish_errors"), 0);
    assert!(backlog["skipped"].is_null());
    assert!(uint(backlog, "/reconcile_passes") >= 3);
    assert!(uint(backlog, "/rss_peak_bytes") >= uint(backlog, "/rss_peak_published_bytes"));

    // Every figure of the table has a value; the targeted ones a verdict, or a
    // note saying why not.
    let figures = r["figures"].as_array().expect("figures is a list");
    let keys: Vec<&str> = figures.iter().map(|f| f["key"].as_str().unwrap()).collect();
    for key in [
        "direct_requests_per_s",
        "throughput_fanout_1_deliveries_per_s",
        "throughput_fanout_10_deliveries_per_s",
        "latency_ack_p99_ms",
        "latency_p2d_p99_ms",
        "failing_p99_ratio",
        "stored_disk_bytes_per_message",
        "stored_rss_peak_mb",
        "stored_start_to_serving_s",
        "stored_graceful_stop_s",
        "stored_dashboard_message_list_p99_ms",
        "stored_dashboard_message_page_p99_ms",
        "backlog_rss_peak_mb",
    ] {
        assert!(keys.contains(&key), "no figure {key} in {keys:?}");
    }
    for f in figures {
        assert!(f["value"].is_number(), "figure without a value: {f}");
        assert!(f["label"].is_string() && f["unit"].is_string(), "{f}");
        if f["target"].is_string() {
            assert!(
                f["meets"].is_boolean() || f["note"].is_string(),
                "targeted figure without a verdict: {f}"
            );
        }
    }
}
