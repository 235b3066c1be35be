//! Prefect's `LogFilter` (prefect/server/schemas/filters.py) and its two evaluations: a
//! ClickHouse condition for `/logs/filter`, and in memory for the live feed of `/logs/out`
//! (where Flowhouse applies every field; Prefect's own live matching skips `text` and
//! `operator`).
//!
//! Semantics as Prefect's SQL: `level` `ge_`/`le_` (inclusive), `timestamp` `after_`/`before_`
//! (inclusive), `flow_run_id.any_`, `task_run_id.any_` / `is_null_`, `text` (Prefect's text
//! search over `message + " " + name`). `operator` (`and_` by default, or `or_`) combines the
//! present criteria; a criterion with nothing in it is true; an empty `any_` list matches
//! nothing; the text search contributes up to three criteria (any plain term, no excluded
//! term, every required term). Unknown fields are refused, as in Prefect.

use chrono::{DateTime, Utc};
use flowhouse_schema::rows::LogRow;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::Sql;
use crate::error::ApiError;
use crate::events::filter::check_engine_range;
use crate::request::Operator;
use crate::text_search::{TextFilter, TextQuery};
use crate::window::micros;

/// The searchable text of a log line, as Prefect builds it.
const SEARCHABLE_TEXT: &str = "concat(message, ' ', name)";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LogFilter {
    /// `and_` (default) or `or_`: how the criteria below combine.
    pub operator: Option<Operator>,
    pub level: Option<LevelFilter>,
    pub timestamp: Option<TimestampFilter>,
    pub flow_run_id: Option<FlowRunIdFilter>,
    pub task_run_id: Option<TaskRunIdFilter>,
    pub text: Option<TextFilter>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LevelFilter {
    pub ge_: Option<i64>,
    pub le_: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TimestampFilter {
    /// Inclusive.
    pub before_: Option<DateTime<Utc>>,
    /// Inclusive.
    pub after_: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FlowRunIdFilter {
    pub any_: Option<Vec<Uuid>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TaskRunIdFilter {
    pub any_: Option<Vec<Uuid>>,
    pub is_null_: Option<bool>,
}

/// Most ids in one `any_` list.
const MAX_IDS: usize = 1_000;

fn uuids(list: &[Uuid]) -> serde_json::Value {
    serde_json::Value::Array(
        list.iter()
            .map(|id| serde_json::Value::String(id.to_string()))
            .collect(),
    )
}

impl LogFilter {
    /// Checks the bounds Prefect checks (the text query's length) and Flowhouse's own (dates
    /// ClickHouse can hold, list sizes). `field` names the filter in errors (`logs`).
    pub fn check(&self, field: &str) -> Result<(), ApiError> {
        if let Some(stamps) = &self.timestamp {
            for (name, time) in [("before_", stamps.before_), ("after_", stamps.after_)] {
                if let Some(time) = time {
                    check_engine_range(&format!("{field}.timestamp.{name}"), time)?;
                }
            }
        }
        let lists = [
            (
                "flow_run_id.any_",
                self.flow_run_id.as_ref().and_then(|f| f.any_.as_ref()),
            ),
            (
                "task_run_id.any_",
                self.task_run_id.as_ref().and_then(|f| f.any_.as_ref()),
            ),
        ];
        for (name, list) in lists {
            if list.is_some_and(|ids| ids.len() > MAX_IDS) {
                return Err(ApiError::unprocessable(format!(
                    "{field}.{name}: at most {MAX_IDS} ids"
                )));
            }
        }
        if let Some(text) = &self.text {
            text.parse(&format!("{field}.text"))?;
        }
        Ok(())
    }

    fn text_query(&self) -> Option<TextQuery> {
        self.text.as_ref().map(|t| TextQuery::parse(&t.query))
    }

    fn or(&self) -> bool {
        self.operator == Some(Operator::Or)
    }

    /// The condition on `logs` (without the tenant), every value bound.
    pub fn sql(&self, sql: &mut Sql) -> String {
        let mut criteria = Vec::new();
        if let Some(level) = &self.level {
            let mut c = Vec::new();
            if let Some(ge) = level.ge_ {
                let p = sql.bind_i64(ge);
                c.push(format!("level >= {p}"));
            }
            if let Some(le) = level.le_ {
                let p = sql.bind_i64(le);
                c.push(format!("level <= {p}"));
            }
            criteria.push(all(c));
        }
        if let Some(stamps) = &self.timestamp {
            let mut c = Vec::new();
            if let Some(before) = stamps.before_ {
                let p = sql.bind_micros(micros(before));
                c.push(format!("timestamp <= {p}"));
            }
            if let Some(after) = stamps.after_ {
                let p = sql.bind_micros(micros(after));
                c.push(format!("timestamp >= {p}"));
            }
            criteria.push(all(c));
        }
        if let Some(f) = &self.flow_run_id {
            let c = f.any_.as_ref().map(|ids| {
                let p = sql.bind("Array(UUID)", uuids(ids));
                format!("(isNotNull(flow_run_id) AND has({p}, assumeNotNull(flow_run_id)))")
            });
            criteria.push(all(c.into_iter().collect()));
        }
        if let Some(f) = &self.task_run_id {
            let mut c = Vec::new();
            if let Some(ids) = &f.any_ {
                let p = sql.bind("Array(UUID)", uuids(ids));
                c.push(format!(
                    "(isNotNull(task_run_id) AND has({p}, assumeNotNull(task_run_id)))"
                ));
            }
            match f.is_null_ {
                Some(true) => c.push("isNull(task_run_id)".into()),
                Some(false) => c.push("isNotNull(task_run_id)".into()),
                None => {}
            }
            criteria.push(all(c));
        }
        if let Some(query) = self.text_query() {
            criteria.extend(query.sql_parts(sql, SEARCHABLE_TEXT));
        }
        if criteria.is_empty() {
            return "1".into();
        }
        let joiner = if self.or() { " OR " } else { " AND " };
        format!("({})", criteria.join(joiner))
    }

    /// Whether `row` matches, as [`LogFilter::sql`] decides in ClickHouse.
    pub fn matches(&self, row: &LogRow) -> bool {
        let mut verdicts = Vec::new();
        if let Some(level) = &self.level {
            let level_value = i64::from(row.level);
            verdicts.push(
                level.ge_.is_none_or(|ge| level_value >= ge)
                    && level.le_.is_none_or(|le| level_value <= le),
            );
        }
        if let Some(stamps) = &self.timestamp {
            verdicts.push(
                stamps.before_.is_none_or(|b| row.timestamp <= b)
                    && stamps.after_.is_none_or(|a| row.timestamp >= a),
            );
        }
        if let Some(f) = &self.flow_run_id {
            verdicts.push(
                f.any_
                    .as_ref()
                    .is_none_or(|ids| row.flow_run_id.is_some_and(|id| ids.contains(&id))),
            );
        }
        if let Some(f) = &self.task_run_id {
            verdicts.push(
                f.any_
                    .as_ref()
                    .is_none_or(|ids| row.task_run_id.is_some_and(|id| ids.contains(&id)))
                    && f.is_null_
                        .is_none_or(|null| row.task_run_id.is_none() == null),
            );
        }
        if let Some(query) = self.text_query() {
            verdicts.extend(query.part_verdicts(&format!("{} {}", row.message, row.name)));
        }
        if verdicts.is_empty() {
            return true;
        }
        if self.or() {
            verdicts.into_iter().any(|v| v)
        } else {
            verdicts.into_iter().all(|v| v)
        }
    }
}

/// The conjunction of `conditions`; true when there are none.
fn all(conditions: Vec<String>) -> String {
    if conditions.is_empty() {
        "1".into()
    } else {
        format!("({})", conditions.join(" AND "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::parse_json;

    fn filter(json: &str) -> LogFilter {
        let filter: LogFilter = parse_json(json.as_bytes()).unwrap();
        filter.check("logs").unwrap();
        filter
    }

    fn row(level: u8, message: &str, task: bool) -> LogRow {
        LogRow {
            account_id: Uuid::nil(),
            workspace_id: Uuid::nil(),
            timestamp: "2026-01-01T00:00:00Z".parse().unwrap(),
            id: Uuid::nil(),
            received: "2026-01-01T00:00:01Z".parse().unwrap(),
            level,
            name: "prefect.flow_runs".into(),
            message: message.into(),
            flow_run_id: Some(Uuid::from_u128(1)),
            task_run_id: task.then(|| Uuid::from_u128(2)),
            worker_id: None,
        }
    }

    #[test]
    fn the_sdks_filter_with_its_nulls_is_accepted() {
        // What PrefectClient.read_logs sends: every field, most of them null.
        let f = filter(
            r#"{"operator": "and_", "level": null, "timestamp": null, "flow_run_id": {"any_": ["00000000-0000-0000-0000-000000000001"]}, "task_run_id": null, "text": null}"#,
        );
        assert!(f.matches(&row(20, "hello", false)));
        let error = parse_json::<LogFilter>(br#"{"flow_run_id": {"is_null_": true}}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("is_null_"), "{error}");
    }

    #[test]
    fn and_or_and_text_follow_prefect() {
        let and = filter(r#"{"level": {"ge_": 40}, "text": {"query": "timeout"}}"#);
        assert!(and.matches(&row(40, "Timeout after 3s", false)));
        assert!(!and.matches(&row(20, "Timeout after 3s", false)));
        let or =
            filter(r#"{"operator": "or_", "level": {"ge_": 40}, "text": {"query": "timeout"}}"#);
        assert!(or.matches(&row(20, "Timeout after 3s", false)));
        assert!(or.matches(&row(50, "crashed", false)));
        assert!(!or.matches(&row(20, "all good", false)));
        // An empty criterion is true, which makes an or_ filter match everything.
        let empty = filter(r#"{"operator": "or_", "level": {}, "text": {"query": "nothing"}}"#);
        assert!(empty.matches(&row(20, "all good", false)));
        // Text: the name is searched too.
        assert!(filter(r#"{"text": {"query": "flow_runs"}}"#).matches(&row(20, "x", false)));
        let tasks = filter(r#"{"task_run_id": {"is_null_": false}}"#);
        assert!(tasks.matches(&row(20, "x", true)) && !tasks.matches(&row(20, "x", false)));
        let none = filter(r#"{"flow_run_id": {"any_": []}}"#);
        assert!(!none.matches(&row(20, "x", false)));
    }

    #[test]
    fn bounds_are_named() {
        let f: LogFilter =
            parse_json(br#"{"timestamp": {"after_": "1800-01-01T00:00:00Z"}}"#).unwrap();
        let error = f.check("logs").unwrap_err().to_string();
        assert!(error.contains("logs.timestamp.after_"), "{error}");
    }
}
