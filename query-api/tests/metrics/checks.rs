//! Each card's check: the route's answer against the ground truth of the generated events.

use super::*;

pub(crate) async fn check_flow_runs(
    h: &Harness,
    ti: usize,
    runs: &BTreeMap<String, truth::Run>,
    f: &Filters,
    c: &Case,
    query: &[(String, String)],
    ctx: &str,
) {
    let t = &h.tenants[ti];
    let body = h
        .get_json(&t.key, &h.url(t.tenant, "metrics/flow-runs"), query)
        .await;
    let (totals, series) = truth::by_final_state(runs, f, c.since, c.until, &c.buckets);
    let got: BTreeMap<(String, String), u64> = body["by_state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                (
                    s["state_type"].as_str().unwrap().into(),
                    s["state_name"].as_str().unwrap().into(),
                ),
                u(&s["count"]),
            )
        })
        .collect();
    assert_eq!(got, totals, "flow runs by final state, {ctx}");
    let total: u64 = totals.values().sum();
    let failures: u64 = totals
        .iter()
        .filter(|((t, _), _)| truth::is_failure(t))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(u(&body["total"]), total, "{ctx}");
    assert_eq!(u(&body["failures"]), failures, "{ctx}");
    let rate = (total > 0).then(|| failures as f64 / total as f64);
    assert!(
        same_f64(body["failure_rate"].as_f64(), rate),
        "failure rate {} != {rate:?}, {ctx}",
        body["failure_rate"]
    );
    let s = body["series"].as_array().unwrap();
    check_axis(s, c);
    for b in s {
        let got: BTreeMap<(String, String), u64> = b["by_state"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    (
                        s["state_type"].as_str().unwrap().into(),
                        s["state_name"].as_str().unwrap().into(),
                    ),
                    u(&s["count"]),
                )
            })
            .collect();
        assert_eq!(
            got,
            series
                .get(&micros(&b["start"]))
                .cloned()
                .unwrap_or_default(),
            "bucket {}, {ctx}",
            b["start"]
        );
    }
}

pub(crate) async fn check_late(
    h: &Harness,
    ti: usize,
    runs: &BTreeMap<String, truth::Run>,
    f: &Filters,
    c: &Case,
    query: &[(String, String)],
    ctx: &str,
) {
    let t = &h.tenants[ti];
    let body = h
        .get_json(&t.key, &h.url(t.tenant, "metrics/late-runs"), query)
        .await;
    let series = truth::late(runs, f, c.since, c.until, &c.buckets);
    assert_eq!(
        u(&body["late_runs"]),
        series.values().sum::<u64>(),
        "late runs, {ctx}"
    );
    let s = body["series"].as_array().unwrap();
    check_axis(s, c);
    for b in s {
        assert_eq!(
            u(&b["count"]),
            series.get(&micros(&b["start"])).copied().unwrap_or(0),
            "{ctx}"
        );
    }
    let (n, sum) = truth::lateness(runs, f, c.since, c.until);
    assert_eq!(u(&body["lateness_runs"]), n, "{ctx}");
    let mean = (n > 0).then(|| sum as f64 / n as f64 / 1e6);
    assert!(
        same_f64(body["mean_lateness_seconds"].as_f64(), mean),
        "mean lateness {} != {mean:?}, {ctx}",
        body["mean_lateness_seconds"]
    );
}

pub(crate) async fn check_durations(
    h: &Harness,
    ti: usize,
    runs: &BTreeMap<String, truth::Run>,
    f: &Filters,
    c: &Case,
    query: &[(String, String)],
    ctx: &str,
) {
    let t = &h.tenants[ti];
    let body = h
        .get_json(&t.key, &h.url(t.tenant, "metrics/durations"), query)
        .await;
    let expected = truth::durations(runs, f, c.since, c.until);
    let got: BTreeMap<String, (String, u64, i64, i64)> = body["flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["flow_id"].as_str().unwrap().into(),
                (
                    d["flow_name"].as_str().unwrap().into(),
                    u(&d["runs"]),
                    (d["p50_seconds"].as_f64().unwrap() * 1e6).round() as i64,
                    (d["p95_seconds"].as_f64().unwrap() * 1e6).round() as i64,
                ),
            )
        })
        .collect();
    assert_eq!(got, expected, "durations, {ctx}");
    assert_eq!(body["truncated"], false);
}

pub(crate) async fn check_top_failing(
    h: &Harness,
    ti: usize,
    runs: &BTreeMap<String, truth::Run>,
    f: &Filters,
    c: &Case,
    query: &[(String, String)],
    ctx: &str,
) {
    let t = &h.tenants[ti];
    for (by, limit) in [("flow", 5), ("deployment", 2), ("work-pool", 100)] {
        let mut q = query.to_vec();
        q.push(("by".into(), by.into()));
        q.push(("limit".into(), limit.to_string()));
        let body = h
            .get_json(&t.key, &h.url(t.tenant, "metrics/top-failing"), &q)
            .await;
        let got: Vec<(String, String, u64)> = body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let name = i["name"].as_str().unwrap();
                let name = match i["flow_name"].as_str() {
                    Some(flow) => format!("{flow} / {name}"),
                    None => name.to_string(),
                };
                assert_eq!(i.get("flow_name").is_some(), by == "deployment", "{i}");
                (i["id"].as_str().unwrap().into(), name, u(&i["failures"]))
            })
            .collect();
        assert_eq!(
            got,
            truth::top_failing(runs, f, c.since, c.until, by, limit),
            "top failing by {by}, {ctx}"
        );
    }
}

pub(crate) async fn check_task_runs(
    h: &Harness,
    ti: usize,
    events: &[common::workload::Ev],
    f: &Filters,
    c: &Case,
    query: &[(String, String)],
    ctx: &str,
) {
    let t = &h.tenants[ti];
    let body = h
        .get_json(&t.key, &h.url(t.tenant, "metrics/task-runs"), query)
        .await;
    let (totals, series) = truth::task_runs(events, t.tenant, f, c.since, c.until, &c.buckets);
    let types = |v: &Value| -> BTreeMap<String, u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| (s["state_type"].as_str().unwrap().into(), u(&s["count"])))
            .collect()
    };
    assert_eq!(types(&body["by_state_type"]), totals, "task runs, {ctx}");
    let failures: u64 = totals
        .iter()
        .filter(|(t, _)| truth::is_failure(t))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(u(&body["failures"]), failures, "{ctx}");
    assert_eq!(body["from_raw_events"], !f.tag.is_empty());
    let s = body["series"].as_array().unwrap();
    check_axis(s, c);
    for b in s {
        assert_eq!(
            types(&b["by_state_type"]),
            series
                .get(&micros(&b["start"]))
                .cloned()
                .unwrap_or_default(),
            "task runs bucket {}, {ctx}",
            b["start"]
        );
    }
}

pub(crate) async fn check_logs(
    h: &Harness,
    ti: usize,
    runs: &BTreeMap<String, truth::Run>,
    f: &Filters,
    c: &Case,
    query: &[(String, String)],
    ctx: &str,
) {
    let t = &h.tenants[ti];
    let body = h
        .get_json(&t.key, &h.url(t.tenant, "metrics/logs"), query)
        .await;
    let filtered = !f.flow.is_empty()
        || !f.deployment.is_empty()
        || !f.work_pool.is_empty()
        || !f.tag.is_empty();
    let (totals, series) = truth::log_levels(
        &h.logs, runs, t.tenant, f, filtered, c.since, c.until, &c.buckets,
    );
    let levels = |v: &Value| -> BTreeMap<u8, u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| (s["level"].as_u64().unwrap() as u8, u(&s["count"])))
            .collect()
    };
    assert_eq!(levels(&body["by_level"]), totals, "log levels, {ctx}");
    assert_eq!(u(&body["total"]), totals.values().sum::<u64>());
    let s = body["series"].as_array().unwrap();
    check_axis(s, c);
    for b in s {
        assert_eq!(
            levels(&b["by_level"]),
            series
                .get(&micros(&b["start"]))
                .cloned()
                .unwrap_or_default(),
            "{ctx}"
        );
    }
}

/// (b): the same numbers from full scans of `events` (FINAL) and `logs`, no rollup involved.
pub(crate) async fn check_raw_scans(
    h: &Harness,
    ti: usize,
    runs: &BTreeMap<String, truth::Run>,
    events: &[common::workload::Ev],
    c: &Case,
) {
    let t = &h.tenants[ti];
    let f = Filters::default();
    let q = c.query();
    let ctx = format!(
        "raw scan, tenant {ti}, {}..{}",
        rfc3339(c.since),
        rfc3339(c.until)
    );
    let (client, tenant, since, until) = (&h.client, t.tenant, c.since, c.until);
    let rows = |sql: String| async move { raw::rows(client, &sql, tenant, since, until).await };

    let api = h
        .get_json(&t.key, &h.url(t.tenant, "metrics/flow-runs"), &q)
        .await;
    let scan: BTreeMap<(String, String), u64> = rows(raw::flow_runs_by_state())
        .await
        .iter()
        .map(|r| {
            (
                (
                    r["final_type"].as_str().unwrap().into(),
                    r["final_name"].as_str().unwrap().into(),
                ),
                u(&r["n"]),
            )
        })
        .collect();
    let got: BTreeMap<(String, String), u64> = api["by_state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                (
                    s["state_type"].as_str().unwrap().into(),
                    s["state_name"].as_str().unwrap().into(),
                ),
                u(&s["count"]),
            )
        })
        .collect();
    assert_eq!(got, scan, "{ctx}");

    let api = h
        .get_json(&t.key, &h.url(t.tenant, "metrics/late-runs"), &q)
        .await;
    let late = rows(raw::late_runs()).await;
    assert_eq!(u(&api["late_runs"]), u(&late[0]["n"]), "{ctx}");
    let lateness = rows(raw::lateness()).await;
    let (n, sum) = (
        u(&lateness[0]["n"]),
        lateness[0]["sum_us"].as_i64().unwrap(),
    );
    assert_eq!(u(&api["lateness_runs"]), n, "{ctx}");
    assert!(
        same_f64(
            api["mean_lateness_seconds"].as_f64(),
            (n > 0).then(|| sum as f64 / n as f64 / 1e6)
        ),
        "{ctx}"
    );

    let api = h
        .get_json(&t.key, &h.url(t.tenant, "metrics/durations"), &q)
        .await;
    let scan: Vec<(String, u64, i64, i64)> = rows(raw::durations())
        .await
        .iter()
        .map(|r| {
            (
                r["flow"].as_str().unwrap().into(),
                u(&r["n"]),
                r["p50"].as_i64().unwrap(),
                r["p95"].as_i64().unwrap(),
            )
        })
        .collect();
    let got: Vec<(String, u64, i64, i64)> = api["flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["flow_id"].as_str().unwrap().into(),
                u(&d["runs"]),
                (d["p50_seconds"].as_f64().unwrap() * 1e6).round() as i64,
                (d["p95_seconds"].as_f64().unwrap() * 1e6).round() as i64,
            )
        })
        .collect();
    assert_eq!(got, scan, "durations, {ctx}");

    let mut tq = q.clone();
    tq.push(("by".into(), "flow".into()));
    let api = h
        .get_json(&t.key, &h.url(t.tenant, "metrics/top-failing"), &tq)
        .await;
    let scan: Vec<(String, u64)> = rows(raw::top_failing_flows())
        .await
        .iter()
        .map(|r| (r["id"].as_str().unwrap().into(), u(&r["n"])))
        .collect();
    let got: Vec<(String, u64)> = api["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["id"].as_str().unwrap().into(), u(&i["failures"])))
        .collect();
    assert_eq!(got, scan, "top failing, {ctx}");

    let api = h
        .get_json(&t.key, &h.url(t.tenant, "metrics/task-runs"), &q)
        .await;
    let scan: BTreeMap<String, u64> = rows(raw::task_runs())
        .await
        .iter()
        .map(|r| (r["state_type"].as_str().unwrap().into(), u(&r["n"])))
        .collect();
    let got: BTreeMap<String, u64> = api["by_state_type"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["state_type"].as_str().unwrap().into(), u(&s["count"])))
        .collect();
    assert_eq!(got, scan, "task runs, {ctx}");
    assert_eq!(
        scan,
        truth::task_runs(events, t.tenant, &f, c.since, c.until, &c.buckets).0,
        "{ctx}"
    );

    let api = h
        .get_json(&t.key, &h.url(t.tenant, "metrics/logs"), &q)
        .await;
    let scan: BTreeMap<u64, u64> = rows(raw::log_levels())
        .await
        .iter()
        .map(|r| (u(&r["level"]), u(&r["n"])))
        .collect();
    let got: BTreeMap<u64, u64> = api["by_level"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (u(&s["level"]), u(&s["count"])))
        .collect();
    assert_eq!(got, scan, "log levels, {ctx}");
    let _ = runs;
}
