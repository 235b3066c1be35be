//! Report plumbing: charts render (with the embedded font) and the report round-trips as JSON.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use flowhouse_loadtest::measure::report::{summarize_samples, write_json};
use flowhouse_loadtest::measure::{Latencies, Report, plot};
use flowhouse_loadtest::workload::{Workload, WorkloadConfig};

fn is_png(path: &std::path::Path) -> bool {
    let bytes = std::fs::read(path).unwrap();
    bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000
}

#[test]
fn charts_render_to_png() {
    let dir = tempfile::tempdir().unwrap();
    let keep = std::env::var_os("LOADTEST_KEEP_PLOTS").map(std::path::PathBuf::from);
    let dir = keep.as_deref().unwrap_or(dir.path());
    std::fs::create_dir_all(dir).unwrap();

    let produced: Vec<(f64, f64)> = (0..120)
        .map(|s| (s as f64, 50_000.0 + 8_000.0 * (s as f64 / 7.0).sin()))
        .collect();
    let ingested: Vec<(f64, f64)> = (0..120)
        .map(|s| {
            (
                s as f64,
                if s < 3 {
                    0.0
                } else {
                    48_000.0 + 5_000.0 * (s as f64 / 5.0).cos()
                },
            )
        })
        .collect();
    let throughput = dir.join("throughput.png");
    plot::throughput_chart(
        &throughput,
        &[
            ("produced", &produced),
            ("visible in ClickHouse", &ingested),
        ],
    )
    .unwrap();
    assert!(is_png(&throughput));

    let freshness: Vec<(f64, f64)> = (0..60)
        .map(|i| {
            (
                i as f64 * 2.0,
                400.0 + 300.0 * ((i * 7919) % 13) as f64 / 13.0,
            )
        })
        .collect();
    let fresh = dir.join("freshness.png");
    plot::freshness_chart(&fresh, &[("visible", &freshness)]).unwrap();
    assert!(is_png(&fresh));

    let mut latencies = Latencies::default();
    for i in 1..=20_000u64 {
        let skew = (i * 2_654_435_761) % 1000;
        latencies.record(
            "GET /metrics/flow-runs",
            Duration::from_micros(800 + skew * skew / 40),
        );
        latencies.record(
            "POST /events/filter",
            Duration::from_micros(2_000 + skew * 30),
        );
    }
    let latency = dir.join("latency.png");
    plot::latency_chart(&latency, &latencies).unwrap();
    assert!(is_png(&latency));

    // An empty series still makes a chart rather than an error.
    let empty = dir.join("empty.png");
    plot::throughput_chart(&empty, &[("nothing yet", &[])]).unwrap();
    assert!(std::fs::read(&empty).unwrap().starts_with(b"\x89PNG"));
}

#[test]
fn the_report_round_trips_and_summarizes_the_workload() {
    let start = Utc.with_ymd_and_hms(2024, 5, 1, 0, 0, 0).unwrap();
    let config = WorkloadConfig {
        runs: 20,
        max_tasks: 5,
        ..WorkloadConfig::new(1, start, start + chrono::Duration::days(1))
    };
    let mut workload = Workload::new(config.clone()).unwrap();
    let count = workload.by_ref().count() as u64;
    let truth = workload.into_truth();
    let mut report = Report::new(start, config, &truth);
    report.freshness = summarize_samples(&[30.0, 10.0, 20.0, 40.0]);
    assert_eq!(report.workload.events + report.workload.logs, count);
    assert_eq!(report.workload.flow_runs, 20);
    assert_eq!(
        report.workload.events_by_name.values().sum::<u64>(),
        report.workload.events
    );
    let freshness = report.freshness.clone().unwrap();
    assert_eq!(
        (freshness.p50_ms, freshness.p99_ms, freshness.max_ms),
        (20.0, 40.0, 40.0)
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/report.json");
    write_json(&path, &report).unwrap();
    let back: Report = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(back, report);
}
