//! Every dashboard metric equals (a) the answer computed in Rust from the generated events and
//! (b) a full scan of the raw tables in SQL, for several windows (aligned and not, inside one
//! hour), both bucket sizes and each filter.

#[path = "metrics/checks.rs"]
mod checks;
mod common;
use checks::*;

use std::collections::BTreeMap;

use common::truth::{self, Buckets, Filters};
use common::workload::{DAY, HOSTILE, HOUR, SECOND, rfc3339};
use common::{Harness, raw};
use flowhouse_query_api::Settings;
use serde_json::Value;

fn micros(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .timestamp_micros()
}

/// Equal f64s. The API computes exactly what the expectation computes; serde_json's default
/// float parser (without `float_roundtrip`) may land one ulp off when reading the response.
fn same_f64(got: Option<f64>, expected: Option<f64>) -> bool {
    match (got, expected) {
        (Some(a), Some(b)) => (a - b).abs() <= 2.0 * f64::EPSILON * b.abs().max(1.0),
        (a, b) => a == b,
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap()
}

/// Checks a gap-filled axis: one entry per bucket starting in [floor(since), until).
fn check_axis(series: &[Value], c: &Case) {
    let starts: Vec<i64> = series.iter().map(|b| micros(&b["start"])).collect();
    assert_eq!(
        starts,
        c.buckets.axis(c.since, c.until),
        "gap-filled bucket axis, {:?}",
        c.tz
    );
}

struct Case {
    since: i64,
    until: i64,
    bucket: &'static str,
    buckets: Buckets,
    /// The `tz` parameter, when sent.
    tz: Option<&'static str>,
}

impl Case {
    fn utc(since: i64, until: i64, bucket: &'static str, width: i64) -> Self {
        Self {
            since,
            until,
            bucket,
            buckets: Buckets::Width(width),
            tz: None,
        }
    }

    fn query(&self) -> Vec<(String, String)> {
        let mut q = vec![
            ("since".to_string(), rfc3339(self.since)),
            ("until".to_string(), rfc3339(self.until)),
            ("bucket".to_string(), self.bucket.to_string()),
        ];
        if let Some(tz) = self.tz {
            q.push(("tz".into(), tz.into()));
        }
        q
    }
}

#[tokio::test]
async fn every_metric_equals_ground_truth_and_a_raw_scan() {
    let mut h = Harness::start("qa_metrics", 3, Settings::default()).await;
    h.load(7, 160).await;
    let events = truth::unique(&h.events);
    let base = h.base;
    let cases = [
        // Not aligned to hours at either end: rollup hours plus raw edges.
        Case::utc(
            base + DAY + 17 * 60 * SECOND + 500_000,
            base + 4 * DAY + 5 * HOUR + 43 * 60 * SECOND,
            "hour",
            HOUR,
        ),
        // Aligned, day buckets, the whole data.
        Case::utc(base, base + 6 * DAY, "day", DAY),
        // Inside one hour: raw only.
        Case::utc(
            base + 2 * DAY + 10 * HOUR + 5 * 60 * SECOND,
            base + 2 * DAY + 10 * HOUR + 55 * 60 * SECOND,
            "hour",
            HOUR,
        ),
        // Day buckets over a ragged window.
        Case::utc(base + DAY / 3, base + 5 * DAY + 7 * SECOND, "day", DAY),
    ];
    check_cases(&h, &events, &cases).await;
    h.finish().await;
}

/// Day buckets in a time zone: local days, 23 hours long on the day clocks go forward
/// (Europe/Berlin, 2027-03-28), starting at half hours (Asia/Kolkata, where hourly rollup rows
/// straddle two local days and are read raw); hour buckets stay UTC hours in any zone. The
/// data is put in the spring of 2027 so that the window holds the change of clocks.
#[tokio::test]
async fn day_buckets_follow_the_time_zone() {
    let mut h = Harness::start("qa_metrics_tz", 2, Settings::default()).await;
    h.base = micros(&Value::from("2027-03-25T00:00:00Z"));
    h.load(11, 120).await;
    let events = truth::unique(&h.events);
    let base = h.base;
    let zone = |name: &'static str| name.parse::<chrono_tz::Tz>().unwrap();
    let in_zone = |since, until, bucket, buckets, tz| Case {
        since,
        until,
        bucket,
        buckets,
        tz: Some(tz),
    };
    let cases = [
        // Local midnights around the shorter day, the window not aligned to either end.
        in_zone(
            base + 7 * HOUR + 13 * 60 * SECOND,
            base + 5 * DAY + 2 * HOUR + 30 * 60 * SECOND,
            "day",
            Buckets::Days(zone("Europe/Berlin")),
            "Europe/Berlin",
        ),
        // Half-hour local midnights, aligned to whole hours at both ends.
        in_zone(
            base,
            base + 5 * DAY,
            "day",
            Buckets::Days(zone("Asia/Kolkata")),
            "Asia/Kolkata",
        ),
        // Hours are hours in any zone.
        in_zone(
            base + DAY + 20 * 60 * SECOND,
            base + 3 * DAY + 40 * 60 * SECOND,
            "hour",
            Buckets::Width(HOUR),
            "Asia/Kolkata",
        ),
    ];
    check_cases(&h, &events, &cases).await;
    // One 23-hour bucket, as Berlin's clocks went forward.
    let t = &h.tenants[0];
    let body = h
        .get_json(&t.key, &h.url(t.tenant, "metrics/logs"), &cases[0].query())
        .await;
    let starts: Vec<i64> = body["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| micros(&b["start"]))
        .collect();
    let lengths: Vec<i64> = starts.windows(2).map(|w| (w[1] - w[0]) / HOUR).collect();
    assert!(
        lengths.contains(&23) && lengths.iter().all(|&l| l == 23 || l == 24),
        "{lengths:?}"
    );
    assert_eq!(body["window"]["tz"], "Europe/Berlin");
    // An unknown zone is refused, naming the parameter.
    let response = h
        .get(
            &t.key,
            &h.url(t.tenant, "metrics/flow-runs"),
            &common::q(&[("tz", "Europe/Atlantis")]),
        )
        .await;
    assert_eq!(response.status(), 422);
    let detail = response.json::<Value>().await.unwrap()["detail"].to_string();
    assert!(detail.contains("tz: unknown time zone"), "{detail}");
    h.finish().await;
}

/// Every metric of the first two tenants, for every case and a set of filters, against the
/// ground truth; and the unfiltered cases against raw scans.
async fn check_cases(h: &Harness, events: &[common::workload::Ev], cases: &[Case]) {
    for (ti, t) in h.tenants.iter().enumerate().take(2) {
        let runs = truth::runs(events, t.tenant, "flow-run");
        let first = runs.values().next().unwrap();
        let hostile_flow = runs
            .values()
            .find(|r| r.flow.starts_with(HOSTILE))
            .unwrap()
            .flow
            .clone();
        let filter_sets = vec![
            Filters::default(),
            Filters {
                flow: vec![first.flow.clone()],
                ..Filters::default()
            },
            Filters {
                flow: vec![hostile_flow],
                ..Filters::default()
            },
            Filters {
                tag: vec![HOSTILE.to_string()],
                ..Filters::default()
            },
            Filters {
                tag: vec!["nightly".into(), "etl".into()],
                work_pool: vec![first.work_pool.clone()],
                ..Filters::default()
            },
            Filters {
                deployment: vec![
                    runs.values()
                        .find(|r| !r.deployment.is_empty())
                        .unwrap()
                        .deployment
                        .clone(),
                ],
                ..Filters::default()
            },
        ];
        for case in cases {
            for f in &filter_sets {
                let mut query = f.query();
                query.extend(case.query());
                let ctx = format!(
                    "tenant {ti}, window {}..{} {} {:?}, filters {f:?}",
                    rfc3339(case.since),
                    rfc3339(case.until),
                    case.bucket,
                    case.tz
                );
                check_flow_runs(h, ti, &runs, f, case, &query, &ctx).await;
                check_late(h, ti, &runs, f, case, &query, &ctx).await;
                check_durations(h, ti, &runs, f, case, &query, &ctx).await;
                check_top_failing(h, ti, &runs, f, case, &query, &ctx).await;
                check_task_runs(h, ti, events, f, case, &query, &ctx).await;
                check_logs(h, ti, &runs, f, case, &query, &ctx).await;
            }
        }
        // (b) the raw scans, for the unfiltered windows.
        for case in cases {
            check_raw_scans(h, ti, &runs, events, case).await;
        }
    }
}
