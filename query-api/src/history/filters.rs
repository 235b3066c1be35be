//! The filters of `POST /flow_runs/history`: Prefect's `FlowFilter`, `FlowRunFilter`,
//! `TaskRunFilter`, `DeploymentFilter`, `WorkPoolFilter` and `WorkQueueFilter`
//! (prefect/server/schemas/filters.py), every field accepted (`null` is unset, unknown fields
//! are refused as Prefect refuses them).
//!
//! What the events carry is implemented with Prefect's semantics: `operator` (`and_`/`or_`)
//! combines a filter's criteria, a criterion with nothing in it is true, `any_: []` matches
//! nothing, `not_any_: []`, `all_: []` and `like_: ""` are ignored, `like_` is a
//! case-insensitive substring (`%` and `_` act as wildcards, as in Prefect's `ILIKE`),
//! `before_`/`after_` are inclusive, and a filter object that is present restricts the runs to
//! those that have the thing it filters (`deployments: {}` keeps runs with a deployment), as
//! Prefect's `EXISTS` joins do. Prefect's state quirk is kept: a `state.type` (or `state.name`)
//! with both `any_` and `not_any_` is ignored.
//!
//! A non-null field whose data the events do not carry (work queues, flow versions, parent
//! runs, idempotency keys, creators, paused deployments, flow and deployment tags, pool types,
//! task-run criteria) is a 422 naming the field, never silently ignored.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use chrono::{DateTime, Utc};

use crate::db::Sql;
use crate::error::ApiError;
use crate::request::Operator;
use crate::window::micros;

/// A field Flowhouse accepts but cannot apply: any JSON, refused unless null.
type Unsupported = Option<serde_json::Value>;

/// How an unsupported field is documented: null only (anything else is a 422 naming it).
pub struct NullOnly;

impl utoipa::PartialSchema for NullOnly {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Null)
            .description(Some(
                "A Prefect field whose data the events do not carry: Flowhouse accepts only null.",
            ))
            .into()
    }
}

impl ToSchema for NullOnly {}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct IdFilter {
    pub any_: Option<Vec<Uuid>>,
    pub not_any_: Option<Vec<Uuid>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AnyIdFilter {
    pub any_: Option<Vec<Uuid>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct NameFilter {
    pub any_: Option<Vec<String>>,
    pub like_: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AnyNameFilter {
    pub any_: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LikeFilter {
    pub like_: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TagsFilter {
    pub operator: Option<Operator>,
    pub all_: Option<Vec<String>>,
    pub any_: Option<Vec<String>>,
    pub is_null_: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DeploymentIdFilter {
    pub operator: Option<Operator>,
    pub any_: Option<Vec<Uuid>>,
    pub is_null_: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AnyOrNotFilter {
    pub any_: Option<Vec<String>>,
    pub not_any_: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct StateFilter {
    pub operator: Option<Operator>,
    pub r#type: Option<AnyOrNotFilter>,
    pub name: Option<AnyOrNotFilter>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TimeFilter {
    pub before_: Option<DateTime<Utc>>,
    pub after_: Option<DateTime<Utc>>,
    pub is_null_: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TimeRangeFilter {
    pub before_: Option<DateTime<Utc>>,
    pub after_: Option<DateTime<Utc>>,
}

/// Prefect's `FlowFilter`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FlowFilter {
    pub operator: Option<Operator>,
    pub id: Option<IdFilter>,
    pub name: Option<NameFilter>,
    #[schema(value_type = Option<NullOnly>)]
    pub deployment: Unsupported,
    #[schema(value_type = Option<NullOnly>)]
    pub tags: Unsupported,
}

/// Prefect's `FlowRunFilter`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FlowRunFilter {
    pub operator: Option<Operator>,
    pub id: Option<IdFilter>,
    pub name: Option<NameFilter>,
    pub tags: Option<TagsFilter>,
    pub deployment_id: Option<DeploymentIdFilter>,
    pub state: Option<StateFilter>,
    pub start_time: Option<TimeFilter>,
    pub end_time: Option<TimeFilter>,
    pub expected_start_time: Option<TimeRangeFilter>,
    #[schema(value_type = Option<NullOnly>)]
    pub work_queue_name: Unsupported,
    #[schema(value_type = Option<NullOnly>)]
    pub flow_version: Unsupported,
    #[schema(value_type = Option<NullOnly>)]
    pub next_scheduled_start_time: Unsupported,
    #[schema(value_type = Option<NullOnly>)]
    pub parent_flow_run_id: Unsupported,
    #[schema(value_type = Option<NullOnly>)]
    pub parent_task_run_id: Unsupported,
    #[schema(value_type = Option<NullOnly>)]
    pub idempotency_key: Unsupported,
    #[schema(value_type = Option<NullOnly>)]
    pub created_by: Unsupported,
}

/// Prefect's `DeploymentFilter`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DeploymentFilter {
    pub operator: Option<Operator>,
    pub id: Option<IdFilter>,
    pub name: Option<NameFilter>,
    pub flow_or_deployment_name: Option<LikeFilter>,
    #[schema(value_type = Option<NullOnly>)]
    pub paused: Unsupported,
    #[schema(value_type = Option<NullOnly>)]
    pub tags: Unsupported,
    #[schema(value_type = Option<NullOnly>)]
    pub work_queue_name: Unsupported,
    /// Deprecated in Prefect, which accepts and ignores it; so does Flowhouse.
    #[schema(value_type = Option<Object>)]
    pub concurrency_limit: Option<serde_json::Value>,
}

/// Prefect's `WorkPoolFilter`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct WorkPoolFilter {
    pub operator: Option<Operator>,
    pub id: Option<AnyIdFilter>,
    pub name: Option<AnyNameFilter>,
    #[schema(value_type = Option<NullOnly>)]
    pub r#type: Unsupported,
}

/// The filters of a history request.
pub struct HistoryFilters<'a> {
    pub flows: Option<&'a FlowFilter>,
    pub flow_runs: Option<&'a FlowRunFilter>,
    pub deployments: Option<&'a DeploymentFilter>,
    pub work_pools: Option<&'a WorkPoolFilter>,
    /// `TaskRunFilter` and `WorkQueueFilter`: Flowhouse has no such data per flow run.
    pub task_runs: &'a Unsupported,
    pub work_queues: &'a Unsupported,
}

fn unsupported(field: &str) -> ApiError {
    ApiError::unprocessable(format!(
        "{field}: Flowhouse does not have this data for flow runs (the events do not carry \
         it); leave it null"
    ))
}

fn refuse_set(fields: &[(&str, &Unsupported)]) -> Result<(), ApiError> {
    match fields
        .iter()
        .find(|(_, value)| value.as_ref().is_some_and(|v| !v.is_null()))
    {
        Some((field, _)) => Err(unsupported(field)),
        None => Ok(()),
    }
}

impl HistoryFilters<'_> {
    /// A 422 naming the first non-null field Flowhouse cannot apply.
    pub fn check(&self) -> Result<(), ApiError> {
        refuse_set(&[
            ("task_runs", self.task_runs),
            ("work_queues", self.work_queues),
        ])?;
        if let Some(f) = self.flows {
            refuse_set(&[("flows.deployment", &f.deployment), ("flows.tags", &f.tags)])?;
        }
        if let Some(f) = self.flow_runs {
            refuse_set(&[
                ("flow_runs.work_queue_name", &f.work_queue_name),
                ("flow_runs.flow_version", &f.flow_version),
                (
                    "flow_runs.next_scheduled_start_time",
                    &f.next_scheduled_start_time,
                ),
                ("flow_runs.parent_flow_run_id", &f.parent_flow_run_id),
                ("flow_runs.parent_task_run_id", &f.parent_task_run_id),
                ("flow_runs.idempotency_key", &f.idempotency_key),
                ("flow_runs.created_by", &f.created_by),
            ])?;
        }
        if let Some(f) = self.deployments {
            refuse_set(&[
                ("deployments.paused", &f.paused),
                ("deployments.tags", &f.tags),
                ("deployments.work_queue_name", &f.work_queue_name),
            ])?;
        }
        if let Some(f) = self.work_pools {
            refuse_set(&[("work_pools.type", &f.r#type)])?;
        }
        Ok(())
    }

    /// The conditions on the runs subquery's columns (`flow_run_id`, `run_name`, `flow`,
    /// `flow_label`, `deployment`, `deployment_label`, `work_pool`, `work_pool_label`,
    /// `run_tags`, `anchor`, `started`, `ended`, `state_type`, `state_name`).
    pub fn conditions(&self, sql: &mut Sql) -> Vec<String> {
        let mut c = Vec::new();
        if let Some(f) = self.flows {
            let mut own = Vec::new();
            id_filter(sql, &mut own, f.id.as_ref(), "flow");
            name_filter(sql, &mut own, f.name.as_ref(), "flow_label");
            c.push(combine(own, f.operator));
        }
        if let Some(f) = self.flow_runs {
            c.push(flow_run_filter(sql, f));
        }
        if let Some(f) = self.deployments {
            let mut own = Vec::new();
            id_filter(sql, &mut own, f.id.as_ref(), "deployment");
            name_filter(sql, &mut own, f.name.as_ref(), "deployment_label");
            if let Some(like) = f
                .flow_or_deployment_name
                .as_ref()
                .and_then(|l| like_value(l.like_.as_ref()))
            {
                let p = sql.bind("String", like);
                own.push(format!(
                    "(ilike(deployment_label, concat('%', {p}, '%')) OR ilike(flow_label, concat('%', {p}, '%')))"
                ));
            }
            // Present: only runs of a deployment (Prefect's EXISTS join).
            c.push(format!(
                "(deployment != '' AND {})",
                combine(own, f.operator)
            ));
        }
        if let Some(f) = self.work_pools {
            let mut own = Vec::new();
            if let Some(ids) = f.id.as_ref().and_then(|i| i.any_.as_ref()) {
                let p = sql.bind_strings(&strings(ids));
                own.push(format!("has({p}, work_pool)"));
            }
            if let Some(names) = f.name.as_ref().and_then(|n| n.any_.as_ref()) {
                let p = sql.bind_strings(names);
                own.push(format!("has({p}, work_pool_label)"));
            }
            c.push(format!(
                "(work_pool != '' AND {})",
                combine(own, f.operator)
            ));
        }
        c
    }
}

fn strings(ids: &[Uuid]) -> Vec<String> {
    ids.iter().map(Uuid::to_string).collect()
}

fn like_value(like: Option<&String>) -> Option<&str> {
    like.map(String::as_str).filter(|l| !l.is_empty())
}

/// `criteria` combined by `operator`; true when there are none.
fn combine(criteria: Vec<String>, operator: Option<Operator>) -> String {
    if criteria.is_empty() {
        return "1".into();
    }
    let joiner = match operator {
        Some(Operator::Or) => " OR ",
        _ => " AND ",
    };
    format!("({})", criteria.join(joiner))
}

fn id_filter(sql: &mut Sql, c: &mut Vec<String>, f: Option<&IdFilter>, column: &str) {
    let Some(f) = f else { return };
    if let Some(ids) = &f.any_ {
        let p = sql.bind_strings(&strings(ids));
        c.push(format!("has({p}, {column})"));
    }
    if let Some(ids) = f.not_any_.as_ref().filter(|ids| !ids.is_empty()) {
        let p = sql.bind_strings(&strings(ids));
        c.push(format!("NOT has({p}, {column})"));
    }
}

fn name_filter(sql: &mut Sql, c: &mut Vec<String>, f: Option<&NameFilter>, column: &str) {
    let Some(f) = f else { return };
    if let Some(names) = &f.any_ {
        let p = sql.bind_strings(names);
        c.push(format!("has({p}, {column})"));
    }
    if let Some(like) = like_value(f.like_.as_ref()) {
        let p = sql.bind("String", like);
        c.push(format!("ilike({column}, concat('%', {p}, '%'))"));
    }
}

fn time_bounds(
    sql: &mut Sql,
    c: &mut Vec<String>,
    before: Option<DateTime<Utc>>,
    after: Option<DateTime<Utc>>,
    column: &str,
) {
    if let Some(before) = before {
        let p = sql.bind_micros(micros(before));
        c.push(format!("{column} <= {p}"));
    }
    if let Some(after) = after {
        let p = sql.bind_micros(micros(after));
        c.push(format!("{column} >= {p}"));
    }
}

fn is_null(c: &mut Vec<String>, is_null: Option<bool>, column: &str) {
    match is_null {
        Some(true) => c.push(format!("isNull({column})")),
        Some(false) => c.push(format!("isNotNull({column})")),
        None => {}
    }
}

fn flow_run_filter(sql: &mut Sql, f: &FlowRunFilter) -> String {
    let mut own = Vec::new();
    id_filter(sql, &mut own, f.id.as_ref(), "flow_run_id");
    name_filter(sql, &mut own, f.name.as_ref(), "run_name");
    if let Some(tags) = &f.tags {
        let mut t = Vec::new();
        if let Some(all) = tags.all_.as_ref().filter(|a| !a.is_empty()) {
            let p = sql.bind_strings(all);
            t.push(format!("hasAll(run_tags, {p})"));
        }
        if let Some(any) = &tags.any_ {
            let p = sql.bind_strings(any);
            t.push(format!("hasAny(run_tags, {p})"));
        }
        match tags.is_null_ {
            Some(true) => t.push("empty(run_tags)".into()),
            Some(false) => t.push("notEmpty(run_tags)".into()),
            None => {}
        }
        own.push(combine(t, tags.operator));
    }
    if let Some(d) = &f.deployment_id {
        let mut t = Vec::new();
        if let Some(ids) = &d.any_ {
            let p = sql.bind_strings(&strings(ids));
            t.push(format!("has({p}, deployment)"));
        }
        match d.is_null_ {
            Some(true) => t.push("deployment = ''".into()),
            Some(false) => t.push("deployment != ''".into()),
            None => {}
        }
        own.push(combine(t, d.operator));
    }
    if let Some(state) = &f.state {
        let mut t = Vec::new();
        for (part, column) in [(&state.r#type, "state_type"), (&state.name, "state_name")] {
            let Some(part) = part else { continue };
            let not_any = part.not_any_.as_ref().filter(|n| !n.is_empty());
            // Prefect keeps a part only when it is a single comparison.
            match (&part.any_, not_any) {
                (Some(any), None) => {
                    let p = sql.bind_strings(any);
                    t.push(format!("has({p}, {column})"));
                }
                (None, Some(not_any)) => {
                    let p = sql.bind_strings(not_any);
                    t.push(format!("NOT has({p}, {column})"));
                }
                _ => {}
            }
        }
        own.push(combine(t, state.operator));
    }
    if let Some(t) = &f.start_time {
        let mut s = Vec::new();
        time_bounds(
            sql,
            &mut s,
            t.before_,
            t.after_,
            "coalesce(started, anchor)",
        );
        is_null(&mut s, t.is_null_, "started");
        own.push(combine(s, None));
    }
    if let Some(t) = &f.end_time {
        let mut s = Vec::new();
        time_bounds(sql, &mut s, t.before_, t.after_, "ended");
        is_null(&mut s, t.is_null_, "ended");
        own.push(combine(s, None));
    }
    if let Some(t) = &f.expected_start_time {
        let mut s = Vec::new();
        time_bounds(sql, &mut s, t.before_, t.after_, "anchor");
        own.push(combine(s, None));
    }
    combine(own, f.operator)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::parse_json;

    fn check(json: &str) -> Result<(), ApiError> {
        #[derive(Deserialize)]
        struct Body {
            #[serde(default)]
            flows: Option<FlowFilter>,
            #[serde(default)]
            flow_runs: Option<FlowRunFilter>,
            #[serde(default)]
            deployments: Option<DeploymentFilter>,
            #[serde(default)]
            work_pools: Option<WorkPoolFilter>,
            #[serde(default)]
            task_runs: Unsupported,
            #[serde(default)]
            work_queues: Unsupported,
        }
        let body: Body = parse_json(json.as_bytes())?;
        HistoryFilters {
            flows: body.flows.as_ref(),
            flow_runs: body.flow_runs.as_ref(),
            deployments: body.deployments.as_ref(),
            work_pools: body.work_pools.as_ref(),
            task_runs: &body.task_runs,
            work_queues: &body.work_queues,
        }
        .check()
    }

    #[test]
    fn every_prefect_field_parses_and_null_is_unset() {
        check(
            r#"{"flows": {"operator": "and_", "id": null, "name": null, "deployment": null, "tags": null},
                "flow_runs": {"operator": "or_", "id": {"any_": null, "not_any_": null}, "name": null,
                  "tags": null, "deployment_id": null, "work_queue_name": null, "state": null,
                  "flow_version": null, "start_time": null, "end_time": null,
                  "expected_start_time": null, "next_scheduled_start_time": null,
                  "parent_flow_run_id": null, "parent_task_run_id": null,
                  "idempotency_key": null, "created_by": null},
                "task_runs": null, "deployments": {"concurrency_limit": {"ge_": 1}},
                "work_pools": null, "work_queues": null}"#,
        )
        .unwrap();
    }

    #[test]
    fn what_the_events_do_not_carry_is_named() {
        for (json, field) in [
            (
                r#"{"flow_runs": {"work_queue_name": {"any_": ["q"]}}}"#,
                "flow_runs.work_queue_name",
            ),
            (r#"{"work_queues": {}}"#, "work_queues"),
            (r#"{"task_runs": {"name": {"any_": ["t"]}}}"#, "task_runs"),
            (
                r#"{"deployments": {"paused": {"eq_": true}}}"#,
                "deployments.paused",
            ),
            (
                r#"{"work_pools": {"type": {"any_": ["process"]}}}"#,
                "work_pools.type",
            ),
        ] {
            let error = check(json).unwrap_err().to_string();
            assert!(error.starts_with(&format!("{field}:")), "{json}: {error}");
        }
        let error = check(r#"{"flow_runs": {"colour": 1}}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("colour"), "{error}");
    }
}
