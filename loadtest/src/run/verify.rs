//! Verification: every metric card of every tenant, over the workload's whole window, asked of
//! the query API and compared with what the ground truth says it must be. Both sides are put in
//! the same canonical JSON shape (lists that are sets sorted, times as microseconds, zero counts
//! dropped) and compared path by path; each difference is one mismatch line.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::api::{CARDS, Card, QueryApi, WindowParams};
use crate::measure::Latencies;
use crate::truth::{Bucket, GroundTruth, Metrics, MetricsQuery, Point, Ranked};

/// At most this many mismatch lines are kept (the count is always exact).
const MAX_LINES: usize = 200;

#[derive(Clone, Debug, Default)]
pub struct Verification {
    pub cards_checked: u64,
    pub mismatches: u64,
    pub lines: Vec<String>,
    /// Latency of these first, uncached answers, by route.
    pub latencies: Latencies,
    /// The first tenant's answers, for the printed dashboard.
    pub sample: Vec<(Card, Value)>,
}

impl Verification {
    /// Adds the verification of another workload of the same run (the backlog's).
    pub fn absorb(&mut self, other: Verification) {
        self.cards_checked += other.cards_checked;
        self.mismatches += other.mismatches;
        for line in other.lines {
            push(&mut self.lines, line);
        }
        self.latencies.merge(&other.latencies);
        if self.sample.is_empty() {
            self.sample = other.sample;
        }
    }
}

/// Asks and compares every card of every tenant in `keys`.
pub async fn verify(
    api: &QueryApi,
    truth: &GroundTruth,
    keys: &[(flowhouse_schema::Tenant, String)],
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> anyhow::Result<Verification> {
    let mut query = MetricsQuery::new(since, until, Bucket::Hour);
    query.top_n = 100;
    let window = WindowParams {
        since,
        until,
        bucket: "hour",
    };
    let mut out = Verification::default();
    for (index, (tenant, key)) in keys.iter().enumerate() {
        let metrics = truth.metrics(tenant, &query)?;
        for card in CARDS {
            out.cards_checked += 1;
            let (got, latency) = match api.card(tenant, key, card, Some(window)).await {
                Ok(answer) => answer,
                Err(failure) => {
                    out.mismatches += 1;
                    push(
                        &mut out.lines,
                        format!(
                            "{tenant} {}: {} {}",
                            card.name(),
                            failure.kind,
                            failure.detail
                        ),
                    );
                    continue;
                }
            };
            out.latencies
                .record(&format!("uncached {}", card.name()), latency);
            let mut differences = Vec::new();
            diff(
                "",
                &canonical_api(card, &got),
                &expected(card, &metrics),
                &mut differences,
            );
            if !differences.is_empty() {
                out.mismatches += 1;
                for difference in differences {
                    push(
                        &mut out.lines,
                        format!("{tenant} {}: {difference}", card.name()),
                    );
                }
            }
            if index == 0 {
                out.sample.push((card, got));
            }
        }
    }
    Ok(out)
}

fn push(lines: &mut Vec<String>, line: String) {
    if lines.len() < MAX_LINES {
        lines.push(line);
    }
}

fn micros(value: &Value) -> Value {
    value
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map_or(Value::Null, |t| json!(t.timestamp_micros()))
}

fn point_start<T>(point: &Point<T>) -> Value {
    json!(point.start.timestamp_micros())
}

/// `[{k: .., count: ..}]` → `{k: count}` without zeros.
fn counts_by(list: &Value, key: &str) -> Value {
    let mut map = serde_json::Map::new();
    for item in list.as_array().into_iter().flatten() {
        let name = match &item[key] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if item["count"].as_u64() != Some(0) {
            map.insert(name, item["count"].clone());
        }
    }
    Value::Object(map)
}

fn nonzero<K: ToString, V: Into<u64> + Copy>(map: &BTreeMap<K, V>) -> Value {
    Value::Object(
        map.iter()
            .filter(|(_, v)| (**v).into() > 0)
            .map(|(k, v)| (k.to_string(), json!((*v).into())))
            .collect(),
    )
}

fn ranked(items: &[Ranked]) -> Value {
    json!(
        items
            .iter()
            .map(|r| json!([r.id, r.name, r.failures]))
            .collect::<Vec<_>>()
    )
}

/// The fields of the API's answer that the truth speaks for, in the canonical shape.
fn canonical_api(card: Card, got: &Value) -> Value {
    let series = |f: &dyn Fn(&Value) -> Value| -> Value {
        json!(
            got["series"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| json!([micros(&b["start"]), f(b)]))
                .collect::<Vec<_>>()
        )
    };
    match card.route {
        "flow-runs" => {
            let mut by_state: Vec<Value> = got["by_state"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| json!([s["state_type"], s["state_name"], s["count"]]))
                .collect();
            by_state.sort_by_key(Value::to_string);
            json!({
                "total": got["total"],
                "failure_rate": got["failure_rate"],
                "by_state": by_state,
                "series": series(&|b| counts_by(&b["by_state"], "state_name")),
            })
        }
        "late-runs" => json!({
            "late_runs": got["late_runs"],
            "mean_lateness_seconds": got["mean_lateness_seconds"],
            "series": series(&|b| b["count"].clone()),
        }),
        "durations" => {
            let mut flows: Vec<Value> = got["flows"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| {
                    json!([
                        f["flow_id"],
                        f["flow_name"],
                        f["runs"],
                        f["p50_seconds"],
                        f["p95_seconds"]
                    ])
                })
                .collect();
            flows.sort_by_key(|f| f[0].to_string());
            json!({"flows": flows, "truncated": got["truncated"]})
        }
        "top-failing" => json!({
            "items": got["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| json!([i["id"], i["name"], i["failures"]]))
                .collect::<Vec<_>>(),
        }),
        "task-runs" => json!({
            "by_state_type": counts_by(&got["by_state_type"], "state_type"),
            "failures": got["failures"],
            "series": series(&|b| counts_by(&b["by_state_type"], "state_type")),
        }),
        _ => json!({
            "total": got["total"],
            "by_level": counts_by(&got["by_level"], "level"),
            "series": series(&|b| counts_by(&b["by_level"], "level")),
        }),
    }
}

/// What the truth says the card must hold, in the canonical shape.
fn expected(card: Card, m: &Metrics) -> Value {
    match card.route {
        "flow-runs" => {
            let mut by_state: Vec<Value> = m
                .flow_runs_by_final_state
                .iter()
                .map(|s| json!([s.state_type, s.state_name, s.runs]))
                .collect();
            by_state.sort_by_key(Value::to_string);
            json!({
                "total": m.flow_runs_total,
                "failure_rate": m.failure_rate,
                "by_state": by_state,
                "series": m.flow_runs_series.iter()
                    .map(|p| json!([point_start(p), nonzero(&p.value)]))
                    .collect::<Vec<_>>(),
            })
        }
        "late-runs" => json!({
            "late_runs": m.late_runs,
            "mean_lateness_seconds": m.mean_lateness_secs,
            "series": m.late_runs_series.iter()
                .map(|p| json!([point_start(p), p.value]))
                .collect::<Vec<_>>(),
        }),
        "durations" => json!({
            "flows": m.durations.iter()
                .map(|d| json!([d.flow_id, d.flow_name, d.runs, d.p50_secs, d.p95_secs]))
                .collect::<Vec<_>>(),
            "truncated": false,
        }),
        "top-failing" => json!({
            "items": match card.by {
                Some("deployment") => ranked(&m.top_failing_deployments),
                Some("work-pool") => ranked(&m.top_failing_work_pools),
                _ => ranked(&m.top_failing_flows),
            },
        }),
        "task-runs" => json!({
            "by_state_type": nonzero(&m.task_runs_by_state_type.iter()
                .map(|(t, n)| (t.as_str(), *n)).collect::<BTreeMap<_, _>>()),
            "failures": m.task_run_failures,
            "series": m.task_runs_series.iter()
                .map(|p| json!([point_start(p), nonzero(&p.value.iter()
                    .map(|(t, n)| (t.as_str(), *n)).collect::<BTreeMap<_, _>>())]))
                .collect::<Vec<_>>(),
        }),
        _ => json!({
            "total": m.logs_by_level.values().sum::<u64>(),
            "by_level": nonzero(&m.logs_by_level),
            "series": m.logs_series.iter()
                .map(|p| json!([point_start(p), nonzero(&p.value)]))
                .collect::<Vec<_>>(),
        }),
    }
}

/// Equal numbers: integers exactly; floats within a relative 1e-9 (the API and the truth
/// compute the same quotients, but JSON parsing may land an ulp off).
fn same_number(a: &serde_json::Number, b: &serde_json::Number) -> bool {
    match (a.as_u64(), b.as_u64()) {
        (Some(x), Some(y)) => x == y,
        _ => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
            _ => false,
        },
    }
}

/// Appends `path: api X, truth Y` for every difference.
fn diff(path: &str, got: &Value, want: &Value, out: &mut Vec<String>) {
    match (got, want) {
        (Value::Number(a), Value::Number(b)) if same_number(a, b) => {}
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                diff(
                    &format!("{path}.{key}"),
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(&format!("{path}[{i}]"), x, y, out);
            }
        }
        (Value::Array(a), Value::Array(b)) => out.push(format!(
            "{path}: api has {} entries, truth {}: api {}, truth {}",
            a.len(),
            b.len(),
            clip(got),
            clip(want)
        )),
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: api {}, truth {}", clip(a), clip(b))),
    }
}

fn clip(value: &Value) -> String {
    let mut text = value.to_string();
    if text.len() > 300 {
        let mut cut = 300;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_their_path() {
        let mut out = Vec::new();
        diff(
            "",
            &json!({"total": 3, "rate": 0.1, "by": {"A": 1}, "s": [[1, 2]]}),
            &json!({"total": 4, "rate": 0.1 + 1e-17, "by": {"A": 1, "B": 2}, "s": [[1, 3]]}),
            &mut out,
        );
        assert_eq!(
            out,
            vec![
                ".by.B: api null, truth 2".to_string(),
                ".s[0][1]: api 2, truth 3".to_string(),
                ".total: api 3, truth 4".to_string(),
            ]
        );
    }

    #[test]
    fn api_lists_become_maps_without_zeros() {
        let list = json!([{"level": 20, "count": 5}, {"level": 30, "count": 0}]);
        assert_eq!(counts_by(&list, "level"), json!({"20": 5}));
    }
}
