//! What the dashboard must show: the ground truth of a view, formatted as the page formats
//! numbers (`view.js`, `fmt`), compared with what the page's DOM holds.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::common::Harness;
use crate::common::truth::{self, Buckets, Filters, Run};
use crate::common::workload::Ev;

// --- numbers as the page formats them (view.js, `fmt`) ---------------------------------------

/// JavaScript's `Number.prototype.toFixed`: the exact value of the double, rounded half up.
pub fn to_fixed(x: f64, digits: usize) -> String {
    assert!((0.0..1e15).contains(&x), "{x}");
    // Exact for these magnitudes: a double below 2^50 has at most 100 fractional digits here.
    let exact = format!("{x:.100}");
    let (int, frac) = exact.split_once('.').unwrap();
    let mut kept: Vec<u8> = format!("{int}{}", &frac[..digits]).into_bytes();
    if frac.as_bytes()[digits] >= b'5' {
        let mut i = kept.len();
        loop {
            if i == 0 {
                kept.insert(0, b'1');
                break;
            }
            i -= 1;
            if kept[i] == b'9' {
                kept[i] = b'0';
            } else {
                kept[i] += 1;
                break;
            }
        }
    }
    let text = String::from_utf8(kept).unwrap();
    let (a, b) = text.split_at(text.len() - digits);
    if digits == 0 {
        a.to_string()
    } else {
        format!("{a}.{b}")
    }
}

pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn percent(rate: Option<f64>) -> String {
    rate.map_or("–".into(), |r| format!("{} %", to_fixed(r * 100.0, 1)))
}

pub fn seconds(s: Option<f64>) -> String {
    match s {
        None => "–".into(),
        Some(s) if s < 100.0 => format!("{} s", to_fixed(s, 1)),
        Some(s) if s < 6000.0 => format!("{} min", to_fixed(s / 60.0, 1)),
        Some(s) => format!("{} h", to_fixed(s / 3600.0, 1)),
    }
}

fn level_name(level: u8) -> &'static str {
    match level {
        10 => "DEBUG",
        20 => "INFO",
        30 => "WARNING",
        40 => "ERROR",
        50 => "CRITICAL",
        _ => "?",
    }
}

pub fn micros(iso: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(iso)
        .unwrap()
        .timestamp_micros()
}

// --- the expectations ---------------------------------------------------------------------------

/// A view of one tenant's data: the window, how it is bucketed, the filters.
pub struct View<'a> {
    pub h: &'a Harness,
    pub tenant: usize,
    pub since: i64,
    pub until: i64,
    pub buckets: Buckets,
    pub filters: Filters,
}

fn rows(card: &Value, table: &str) -> BTreeMap<String, Vec<String>> {
    card["tables"][table]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["cells"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

fn ordered_ids(card: &Value, table: &str) -> Vec<String> {
    card["tables"][table]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// Checks every card the page shows against the ground truth of `view`.
pub fn check_cards(shown: &Value, view: &View, events: &[Ev], ctx: &str) {
    let h = view.h;
    let tenant = h.tenants[view.tenant].tenant;
    let runs = truth::runs(events, tenant, "flow-run");
    let (f, since, until, b) = (&view.filters, view.since, view.until, &view.buckets);
    for (name, card) in shown.as_object().unwrap() {
        assert_ne!(card["state"], "error", "{name} failed: {card}, {ctx}");
    }

    // Flow runs by state: totals, per state, and the series on its gap-filled axis.
    let card = &shown["flow-runs"];
    let (totals, series) = truth::by_final_state(&runs, f, since, until, b);
    let total: u64 = totals.values().sum();
    let failures: u64 = totals
        .iter()
        .filter(|((t, _), _)| truth::is_failure(t))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(card["k"]["total"], count(total), "flow runs, {ctx}");
    assert_eq!(card["k"]["failures"], count(failures), "{ctx}");
    let expected: BTreeMap<String, Vec<String>> = totals
        .iter()
        .map(|((t, n), c)| (format!("{t}/{n}"), vec![n.clone(), t.clone(), count(*c)]))
        .collect();
    assert_eq!(
        rows(card, "by-state"),
        expected,
        "flow runs by state, {ctx}"
    );
    let shown_series = rows(card, "series");
    assert_eq!(
        shown_series.keys().map(|k| micros(k)).collect::<Vec<_>>(),
        b.axis(since, until),
        "the chart's buckets, {ctx}"
    );
    for (start, cells) in &shown_series {
        let sum: u64 = cells[1..]
            .iter()
            .map(|c| c.replace(',', "").parse::<u64>().unwrap())
            .sum();
        let expected: u64 = series.get(&micros(start)).map_or(0, |m| m.values().sum());
        assert_eq!(sum, expected, "flow runs in bucket {start}, {ctx}");
    }

    // Failure rate, and the window before beside it.
    let rate = |t: &BTreeMap<(String, String), u64>| {
        let n: u64 = t.values().sum();
        let failed: u64 = t
            .iter()
            .filter(|((ty, _), _)| truth::is_failure(ty))
            .map(|(_, c)| c)
            .sum();
        (n > 0).then(|| failed as f64 / n as f64)
    };
    let card = &shown["failure-rate"];
    assert_eq!(card["k"]["current"], percent(rate(&totals)), "{ctx}");
    let (previous, _) = truth::by_final_state(&runs, f, since - (until - since), since, b);
    assert_eq!(card["k"]["previous"], percent(rate(&previous)), "{ctx}");

    // Late runs and mean lateness.
    let card = &shown["late-runs"];
    let late: u64 = truth::late(&runs, f, since, until, b).values().sum();
    assert_eq!(card["k"]["late"], count(late), "late runs, {ctx}");
    let (n, sum) = truth::lateness(&runs, f, since, until);
    let mean = flowhouse_query_api::dashboard::mean_seconds(sum, n);
    assert_eq!(card["k"]["mean-lateness"], seconds(mean), "{ctx}");

    // Durations per flow.
    let card = &shown["durations"];
    let expected: BTreeMap<String, Vec<String>> = truth::durations(&runs, f, since, until)
        .into_iter()
        .map(|(flow, (name, n, p50, p95))| {
            let s = |us: i64| seconds(Some(us as f64 / 1e6));
            (flow, vec![name, count(n), s(p50), s(p95), String::new()])
        })
        .collect();
    if expected.is_empty() {
        assert_eq!(card["state"], "empty", "{ctx}");
    } else {
        assert_eq!(rows(card, "durations"), expected, "durations, {ctx}");
    }

    // Top failing flows, deployments (as "flow / deployment"), work pools.
    for (by, id) in [
        ("flow", "top-flow"),
        ("deployment", "top-deployment"),
        ("work-pool", "top-work-pool"),
    ] {
        let expected = truth::top_failing(&runs, f, since, until, by, 5);
        let card = &shown[id];
        if expected.is_empty() {
            assert_eq!(card["state"], "empty", "{id}, {ctx}");
            continue;
        }
        let got: Vec<(String, Vec<String>)> = card["tables"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["id"].as_str().unwrap().to_string(),
                    r["cells"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|c| c.as_str().unwrap().to_string())
                        .collect(),
                )
            })
            .collect();
        let expected: Vec<(String, Vec<String>)> = expected
            .into_iter()
            .map(|(id, name, n)| (id, vec![name, count(n)]))
            .collect();
        assert_eq!(got, expected, "top failing by {by}, {ctx}");
    }

    // Task runs by state type.
    let card = &shown["task-runs"];
    let (totals, _) = truth::task_runs(events, tenant, f, since, until, b);
    if totals.is_empty() {
        assert_eq!(card["state"], "empty", "{ctx}");
    } else {
        let failures: u64 = totals
            .iter()
            .filter(|(t, _)| truth::is_failure(t))
            .map(|(_, n)| n)
            .sum();
        assert_eq!(card["k"]["failures"], count(failures), "task runs, {ctx}");
        let expected: BTreeMap<String, Vec<String>> = totals
            .iter()
            .map(|(t, n)| (t.clone(), vec![t.clone(), count(*n)]))
            .collect();
        assert_eq!(rows(card, "by-state-type"), expected, "task runs, {ctx}");
    }

    // Log lines by level.
    let card = &shown["logs"];
    let filtered = !(f.flow.is_empty()
        && f.deployment.is_empty()
        && f.work_pool.is_empty()
        && f.tag.is_empty());
    let (levels, _) = truth::log_levels(&h.logs, &runs, tenant, f, filtered, since, until, b);
    if levels.is_empty() {
        assert_eq!(card["state"], "empty", "{ctx}");
    } else {
        assert_eq!(
            card["k"]["total"],
            count(levels.values().sum()),
            "logs, {ctx}"
        );
        let expected: BTreeMap<String, Vec<String>> = levels
            .iter()
            .map(|(l, n)| (l.to_string(), vec![level_name(*l).into(), count(*n)]))
            .collect();
        assert_eq!(rows(card, "by-level"), expected, "logs by level, {ctx}");
    }

    // The most recent failures: each run's latest failure event in [since, until], newest first.
    let card = &shown["failed-runs"];
    let expected = recent_failures(events, tenant, &runs, f, since, until);
    if expected.is_empty() {
        assert_eq!(card["state"], "empty", "{ctx}");
    } else {
        assert_eq!(
            ordered_ids(card, "failed-runs"),
            expected,
            "recent failures, {ctx}"
        );
    }
}

fn recent_failures(
    events: &[Ev],
    tenant: flowhouse_schema::Tenant,
    runs: &BTreeMap<String, Run>,
    f: &Filters,
    since: i64,
    until: i64,
) -> Vec<String> {
    let mut latest: BTreeMap<String, i64> = BTreeMap::new();
    for ev in events.iter().filter(|e| {
        e.tenant == tenant
            && e.event.starts_with("prefect.flow-run.")
            && truth::is_failure(&truth::state_type(e))
            && e.occurred >= since
            && e.occurred <= until
    }) {
        let id = ev.label("prefect.resource.id").unwrap()["prefect.flow-run.".len()..].to_string();
        if !f.keeps(&runs[&id]) {
            continue;
        }
        let at = latest.entry(id).or_insert(ev.occurred);
        *at = (*at).max(ev.occurred);
    }
    let mut list: Vec<(i64, String)> = latest.into_iter().map(|(id, t)| (t, id)).collect();
    list.sort_by(|a, b| b.cmp(a));
    list.into_iter().take(10).map(|(_, id)| id).collect()
}
