//! Event triggers, evaluated on the tenant's stored events (`events FINAL`), with the label
//! semantics of the query API's searches (`events::labels::sql_conditions`).
//!
//! - **Reactive**: per `for_each` bucket, the events matching `expect` (any event when empty),
//!   `match` and `match_related` in `(now − within, now]` (`within` of 0: the last 10 s, one
//!   evaluation period); the condition holds while there are at least `threshold`.
//! - **Proactive with `after`**: per bucket, the first `after` event in the lookback horizon
//!   starts a clock; when `within` has passed (less the ingest delay) with fewer than
//!   `threshold` matching `expect` events since it, the condition holds (the trigger fires for
//!   that bucket); it resolves when the expected events arrive later. A bucket that has left
//!   the horizon keeps its state.
//! - **Proactive without `after`**: one bucket; the condition holds while fewer than
//!   `threshold` expected events occurred in `(now − within, now]`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use clickhouse::Row;
use flowhouse_query_api::db::{Db, Sql, TENANT};
use flowhouse_query_api::error::ApiError;
use flowhouse_query_api::events::labels::{self, Which};
use flowhouse_schema::Tenant;
use serde::Deserialize;
use serde_json::json;

use super::Observation;
use crate::model::{EventTrigger, Posture};

/// The shortest window of a reactive trigger (`within: 0` in Prefect reacts to each event;
/// here, to the events of the last evaluation period).
pub const MIN_REACTIVE_WINDOW: Duration = Duration::from_secs(10);

/// `event` matches one of `names` (globs: `*` any run, e.g. `prefect.flow-run.*`); true when
/// `names` is empty.
fn names_condition(sql: &mut Sql, names: &std::collections::BTreeSet<String>) -> String {
    if names.is_empty() {
        return "1".into();
    }
    let mut alternatives = Vec::new();
    let exact: Vec<&str> = names
        .iter()
        .filter(|n| !n.contains(['*', '?']))
        .map(String::as_str)
        .collect();
    if !exact.is_empty() {
        let p = sql.bind_strings(&exact);
        alternatives.push(format!("has({p}, event)"));
    }
    for glob in names.iter().filter(|n| n.contains(['*', '?'])) {
        let mut like = String::new();
        for c in glob.chars() {
            match c {
                '\\' | '%' | '_' => {
                    like.push('\\');
                    like.push(c);
                }
                '*' => like.push('%'),
                '?' => like.push('_'),
                other => like.push(other),
            }
        }
        let p = sql.bind("String", like);
        alternatives.push(format!("like(event, {p})"));
    }
    format!("({})", alternatives.join(" OR "))
}

/// The bucket of an event: its `for_each` labels joined with U+001F (`''` without `for_each`).
fn bucket_expr(sql: &mut Sql, trigger: &EventTrigger) -> String {
    if trigger.for_each.is_empty() {
        return "''".into();
    }
    let parts: Vec<String> = trigger
        .for_each
        .iter()
        .map(|label| {
            match label
                .strip_prefix("related:")
                .and_then(|r| r.split_once(':'))
            {
                Some((role, label)) => {
                    let role = sql.bind("String", role);
                    let label = sql.bind("String", label);
                    format!(
                        "arrayFirst(r -> r['prefect.resource.role'] = {role}, related)[{label}]"
                    )
                }
                None => {
                    let label = sql.bind("String", label.as_str());
                    format!("resource[{label}]")
                }
            }
        })
        .collect();
    format!("arrayStringConcat([{}], '\\x1f')", parts.join(", "))
}

/// `match` and `match_related` as conditions on `events`.
fn match_conditions(sql: &mut Sql, trigger: &EventTrigger) -> Vec<String> {
    let mut c = labels::sql_conditions(sql, Which::Primary, &trigger.match_, false);
    for spec in &trigger.match_related {
        let inner = labels::sql_conditions(sql, Which::Related, spec, true);
        if !inner.is_empty() {
            c.push(format!(
                "arrayExists(r -> {}, related)",
                inner.join(" AND ")
            ));
        }
    }
    c
}

#[derive(Debug, Row, Deserialize)]
struct Counted {
    bucket: String,
    n: u64,
}

#[derive(Debug, Row, Deserialize)]
struct Awaited {
    bucket: String,
    #[serde(with = "clickhouse::serde::chrono::datetime64::micros")]
    after_at: DateTime<Utc>,
    in_time: u64,
    since_after: u64,
}

/// What an evaluation of an event trigger found.
pub struct Found {
    pub observations: Vec<Observation>,
    /// Whether buckets absent from `observations` no longer hold (reactive, and proactive
    /// without `after`) or keep their state (proactive with `after`).
    pub absent_resolve: bool,
}

pub async fn observe(
    db: &Db,
    tenant: Tenant,
    trigger: &EventTrigger,
    now: DateTime<Utc>,
    delay: Duration,
    horizon: Duration,
) -> Result<Found, ApiError> {
    let micros = |d: Duration| d.as_micros() as i64;
    let now_us = now.timestamp_micros();
    let mut sql = Sql::new(tenant);
    let bucket = bucket_expr(&mut sql, trigger);
    let matches = match_conditions(&mut sql, trigger);
    let matches = if matches.is_empty() {
        "1".to_string()
    } else {
        matches.join(" AND ")
    };
    let expect = names_condition(&mut sql, &trigger.expect);
    let threshold = trigger.threshold.max(1) as u64;
    let describe = |bucket: &str| -> serde_json::Value {
        let values: Vec<&str> = if bucket.is_empty() {
            vec![]
        } else {
            bucket.split('\u{1f}').collect()
        };
        serde_json::Value::Object(
            trigger
                .for_each
                .iter()
                .zip(values)
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect(),
        )
    };
    match (trigger.posture, trigger.after.is_empty()) {
        (Posture::Proactive, false) => {
            let after = names_condition(&mut sql, &trigger.after);
            let start = sql.bind_micros(now_us - micros(horizon) - micros(trigger.within));
            let until = sql.bind_micros(now_us);
            let within = sql.bind_i64(micros(trigger.within));
            sql.push(&format!(
                "SELECT bucket, after_at,
                        toUInt64(arrayCount(t -> t >= after_at
                            AND toUnixTimestamp64Micro(t) <= toUnixTimestamp64Micro(after_at) + {within},
                            expects)) AS in_time,
                        toUInt64(arrayCount(t -> t >= after_at, expects)) AS since_after
                 FROM (
                    SELECT {bucket} AS bucket,
                           minIf(occurred, {after}) AS after_at,
                           countIf({after}) AS afters,
                           groupArrayIf(occurred, {expect}) AS expects
                    FROM events FINAL
                    WHERE {TENANT} AND occurred > {start} AND occurred <= {until}
                      AND ({after} OR {expect}) AND {matches}
                    GROUP BY bucket)
                 WHERE afters > 0
                 ORDER BY bucket"
            ));
            let rows: Vec<Awaited> = db.fetch("automation_proactive", &sql).await?;
            let settled = now - chrono::Duration::from_std(delay).unwrap_or_default();
            let within = chrono::Duration::from_std(trigger.within).unwrap_or_default();
            let observations = rows
                .into_iter()
                .filter_map(|row| {
                    let deadline = row.after_at + within;
                    let observed = if row.since_after >= threshold {
                        false
                    } else if settled >= deadline && row.in_time < threshold {
                        true
                    } else {
                        return None;
                    };
                    let labels = describe(&row.bucket);
                    Some(Observation {
                        observed,
                        value: row.in_time as f64,
                        context: json!({
                            "after": trigger.after, "expect": trigger.expect,
                            "after_at": row.after_at, "deadline": deadline,
                            "within": trigger.within.as_secs_f64(),
                            "seen": row.since_after, "threshold": threshold,
                            "for_each": labels,
                            "summary": format!(
                                "expected {threshold} of {:?} within {} s after {} ({labels}); saw {}",
                                trigger.expect, trigger.within.as_secs(), row.after_at, row.in_time
                            ),
                        }),
                        related: related_of(&row.bucket, trigger),
                        bucket: row.bucket,
                    })
                })
                .collect();
            Ok(Found {
                observations,
                absent_resolve: false,
            })
        }
        (posture, _) => {
            let window = match posture {
                Posture::Reactive => trigger.within.max(MIN_REACTIVE_WINDOW),
                Posture::Proactive => trigger.within,
            };
            let end = now_us - micros(delay);
            let since = sql.bind_micros(end - micros(window));
            let until = sql.bind_micros(end);
            sql.push(&format!(
                "SELECT {bucket} AS bucket, count() AS n FROM events FINAL
                 WHERE {TENANT} AND occurred > {since} AND occurred <= {until}
                   AND {expect} AND {matches}
                 GROUP BY bucket ORDER BY bucket"
            ));
            let rows: Vec<Counted> = db.fetch("automation_reactive", &sql).await?;
            let observations = if posture == Posture::Reactive {
                rows.into_iter()
                    .filter(|r| r.n >= threshold)
                    .map(|r| {
                        let labels = describe(&r.bucket);
                        Observation {
                            observed: true,
                            value: r.n as f64,
                            context: json!({
                                "expect": trigger.expect, "count": r.n, "threshold": threshold,
                                "within": window.as_secs_f64(), "for_each": labels,
                                "summary": format!("{} matching events in the last {} s ({labels}), threshold {threshold}",
                                    r.n, window.as_secs()),
                            }),
                            related: related_of(&r.bucket, trigger),
                            bucket: r.bucket,
                        }
                    })
                    .collect()
            } else {
                let n: u64 = rows.iter().map(|r| r.n).sum();
                vec![Observation {
                    bucket: String::new(),
                    observed: n < threshold,
                    value: n as f64,
                    context: json!({
                        "expect": trigger.expect, "count": n, "threshold": threshold,
                        "within": window.as_secs_f64(),
                        "summary": format!("{n} of {threshold} expected events in the last {} s", window.as_secs()),
                    }),
                    related: vec![],
                }]
            };
            Ok(Found {
                observations,
                absent_resolve: true,
            })
        }
    }
}

/// The bucket's resource ids as related resources of the automation's event.
fn related_of(bucket: &str, trigger: &EventTrigger) -> Vec<serde_json::Value> {
    if bucket.is_empty() {
        return vec![];
    }
    trigger
        .for_each
        .iter()
        .zip(bucket.split('\u{1f}'))
        .filter(|(label, value)| label.ends_with("prefect.resource.id") && !value.is_empty())
        .map(|(_, value)| json!({"prefect.resource.id": value, "prefect.resource.role": "triggering"}))
        .collect()
}
