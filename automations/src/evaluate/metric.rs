//! Metric triggers, evaluated on the `flow_runs` rollup through the query API's own query
//! builders (`dashboard::queries::runs`, `lateness`), so that a trigger and the dashboard card
//! of the same window and filters see the same number.
//!
//! - `successes`: of the flow runs that ended in `[now − range, now)` in a terminal state, the
//!   share that did not fail (Failed and Crashed are failures, as in the dashboard's failure
//!   rate): `1 − failure rate`, from 0 to 1.
//! - `duration`: the mean `end − start` in seconds of the runs that ended in the range.
//! - `lateness`: the mean `max(0, start − expected start)` in seconds of the runs that started
//!   in the range (the dashboard's mean lateness).
//!
//! A range without runs has no value: the trigger's condition does not hold.
//! `match_related` scopes the runs: resources of role `flow`, `deployment`, `work-pool` or
//! `tag` with exact ids (`prefect.flow.<id>`, `prefect.tag.<name>`, ...); `match` may only
//! name flow runs (`prefect.resource.id: prefect.flow-run.*`).

use chrono::{DateTime, Utc};
use clickhouse::Row;
use flowhouse_query_api::dashboard::RunFilters;
use flowhouse_query_api::dashboard::handlers::mean_seconds;
use flowhouse_query_api::dashboard::queries::{self, FAILURE, TERMINAL};
use flowhouse_query_api::db::{Db, Sql};
use flowhouse_query_api::error::ApiError;
use flowhouse_query_api::events::labels::LabelValues;
use flowhouse_query_api::window::Window;
use flowhouse_schema::Tenant;
use serde::Deserialize;
use serde_json::json;

use super::Observation;
use crate::model::{MetricName, MetricTrigger};

const ROLES: &[(&str, &str, &str)] = &[
    ("flow", "prefect.flow.", "flow"),
    ("deployment", "prefect.deployment.", "deployment"),
    ("work-pool", "prefect.work-pool.", "work_pool"),
    ("tag", "prefect.tag.", "tag"),
];

/// The run filters a metric trigger's `match` and `match_related` mean, or why they cannot be
/// answered from the rollups.
pub fn filters_of(trigger: &MetricTrigger) -> Result<RunFilters, String> {
    for (label, values) in &trigger.match_ {
        let ok = label == "prefect.resource.id"
            && values
                .list()
                .iter()
                .all(|v| v.is_empty() || *v == "prefect.flow-run.*");
        if !ok {
            return Err(format!(
                "trigger.match: a metric trigger counts flow runs; `match` may only be \
                 {{\"prefect.resource.id\": \"prefect.flow-run.*\"}}, not {label:?}; scope \
                 it with match_related (flow, deployment, work-pool, tag)"
            ));
        }
    }
    let mut filters = RunFilters::default();
    for (i, spec) in trigger.match_related.iter().enumerate() {
        let role = match spec.get("prefect.resource.role") {
            Some(LabelValues::One(role)) => role.as_str(),
            Some(LabelValues::Many(roles)) if roles.len() == 1 => roles[0].as_str(),
            _ => {
                return Err(format!(
                    "trigger.match_related[{i}]: needs one \"prefect.resource.role\" \
                     (flow, deployment, work-pool or tag)"
                ));
            }
        };
        let Some((_, prefix, _)) = ROLES.iter().find(|(r, _, _)| *r == role) else {
            return Err(format!(
                "trigger.match_related[{i}]: role {role:?} is not one of flow, deployment, \
                 work-pool, tag"
            ));
        };
        for label in spec.keys() {
            if label != "prefect.resource.role" && label != "prefect.resource.id" {
                return Err(format!(
                    "trigger.match_related[{i}]: metric triggers match related resources by \
                     prefect.resource.id only, not {label:?}"
                ));
            }
        }
        let Some(ids) = spec.get("prefect.resource.id") else {
            return Err(format!(
                "trigger.match_related[{i}]: needs \"prefect.resource.id\""
            ));
        };
        let mut values = Vec::new();
        for id in ids.list() {
            let Some(value) = id
                .strip_prefix(prefix)
                .filter(|v| !v.is_empty() && !v.contains(['*', '?']) && !v.starts_with('!'))
            else {
                return Err(format!(
                    "trigger.match_related[{i}]: {id:?} is not an exact {prefix}<id>"
                ));
            };
            values.push(value.to_string());
        }
        let list = match role {
            "flow" => &mut filters.flow,
            "deployment" => &mut filters.deployment,
            "work-pool" => &mut filters.work_pool,
            _ => &mut filters.tag,
        };
        list.extend(values);
    }
    filters.normalize();
    Ok(filters)
}

#[derive(Debug, Row, Deserialize)]
struct Counts {
    runs: u64,
    failed: u64,
    duration_micros: i64,
}

/// The metric over `[now − range, now)`.
pub async fn value(
    db: &Db,
    tenant: Tenant,
    trigger: &MetricTrigger,
    now: DateTime<Utc>,
) -> Result<(Option<f64>, u64, Window), ApiError> {
    let filters = filters_of(trigger).map_err(ApiError::Unprocessable)?;
    let until = now.timestamp_micros();
    let since = until - trigger.metric.range.as_micros() as i64;
    let window = Window { since, until };
    match trigger.metric.name {
        MetricName::Lateness => {
            let row = queries::lateness(db, tenant, &window, &filters).await?;
            Ok((
                mean_seconds(row.lateness_micros, row.runs),
                row.runs,
                window,
            ))
        }
        name => {
            let mut sql = Sql::new(tenant);
            let runs = queries::runs(&mut sql, &filters, &["started", "ended", "final_type"]);
            let s = sql.bind_micros(since);
            let u = sql.bind_micros(until);
            let (condition, measured) = match name {
                MetricName::Successes => (format!("final_type IN {TERMINAL}"), "1"),
                _ => (
                    "started IS NOT NULL".to_string(),
                    "toUnixTimestamp64Micro(assumeNotNull(ended)) \
                     - toUnixTimestamp64Micro(assumeNotNull(started))",
                ),
            };
            sql.push(&format!(
                "SELECT count() AS runs, countIf(final_type IN {FAILURE}) AS failed,
                        toInt64(sum({measured})) AS duration_micros
                 FROM ({runs}) WHERE ended >= {s} AND ended < {u} AND {condition}"
            ));
            let rows: Vec<Counts> = db.fetch("automation_metric", &sql).await?;
            let c = rows.into_iter().next().unwrap_or(Counts {
                runs: 0,
                failed: 0,
                duration_micros: 0,
            });
            let value = match name {
                MetricName::Successes => {
                    (c.runs > 0).then(|| (c.runs - c.failed) as f64 / c.runs as f64)
                }
                _ => mean_seconds(c.duration_micros, c.runs),
            };
            Ok((value, c.runs, window))
        }
    }
}

/// One observation: whether the condition holds now, with the context of the firing.
pub async fn observe(
    db: &Db,
    tenant: Tenant,
    trigger: &MetricTrigger,
    now: DateTime<Utc>,
) -> Result<Observation, ApiError> {
    let (value, runs, window) = value(db, tenant, trigger, now).await?;
    let m = &trigger.metric;
    let holds = value.is_some_and(|v| m.operator.holds(v, m.threshold));
    let filters = filters_of(trigger).unwrap_or_default();
    let since = DateTime::<Utc>::from_timestamp_micros(window.since).unwrap_or(now);
    let summary = match value {
        Some(v) => format!(
            "{} = {} over {} runs in the last {} s ({} {} {})",
            serde_json::to_value(m.name)
                .unwrap_or_default()
                .as_str()
                .unwrap_or(""),
            round(v),
            runs,
            m.range.as_secs(),
            round(v),
            m.operator.symbol(),
            m.threshold
        ),
        None => format!("no runs in the last {} s", m.range.as_secs()),
    };
    Ok(Observation {
        bucket: String::new(),
        observed: holds,
        value: value.unwrap_or(f64::NAN),
        context: json!({
            "metric": m.name,
            "value": value,
            "runs": runs,
            "threshold": m.threshold,
            "operator": m.operator,
            "window": {"since": since, "until": now},
            "flows": filters.flow,
            "deployments": filters.deployment,
            "work_pools": filters.work_pool,
            "tags": filters.tag,
            "summary": summary,
        }),
        related: filters
            .flow
            .iter()
            .map(|id| json!({"prefect.resource.id": format!("prefect.flow.{id}"), "prefect.resource.role": "flow"}))
            .collect(),
    })
}

fn round(v: f64) -> f64 {
    (v * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MetricQuery, Operator, spec};

    fn trigger(
        match_related: Vec<flowhouse_query_api::events::labels::ResourceSpecification>,
    ) -> MetricTrigger {
        MetricTrigger {
            id: uuid::Uuid::nil(),
            match_: Default::default(),
            match_related,
            posture: "Metric".into(),
            metric: MetricQuery {
                name: MetricName::Successes,
                threshold: 0.8,
                operator: Operator::Lt,
                range: std::time::Duration::from_secs(300),
                firing_for: std::time::Duration::from_secs(300),
            },
        }
    }

    #[test]
    fn match_related_becomes_the_dashboards_run_filters() {
        let f = filters_of(&trigger(vec![
            spec(&[
                ("prefect.resource.role", "flow"),
                ("prefect.resource.id", "prefect.flow.abc"),
            ]),
            spec(&[
                ("prefect.resource.role", "tag"),
                ("prefect.resource.id", "prefect.tag.nightly"),
            ]),
        ]))
        .unwrap();
        assert_eq!(f.flow, vec!["abc"]);
        assert_eq!(f.tag, vec!["nightly"]);
        let err = filters_of(&trigger(vec![spec(&[
            ("prefect.resource.role", "flow"),
            ("prefect.resource.id", "prefect.flow.*"),
        ])]))
        .unwrap_err();
        assert!(err.contains("exact"), "{err}");
        let err =
            filters_of(&trigger(vec![spec(&[("prefect.resource.role", "worker")])])).unwrap_err();
        assert!(err.contains("worker"), "{err}");
    }
}
