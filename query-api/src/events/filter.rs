//! Prefect's `EventFilter` (prefect/server/events/filters.py), its JSON shape, and its
//! translation to a ClickHouse `WHERE` clause with every value bound as a parameter.
//!
//! Semantics follow Prefect's server:
//! - `occurred`: `since <= occurred <= until` (both inclusive); defaults: since = the start of
//!   today − 180 days, until = now; `since` is clamped to `until − max window` (Prefect clamps
//!   the same way), so an old default cannot turn into a scan of the whole retention.
//! - `event`: `prefix` (any), `exclude_prefix` (none), `name` (any, exact), `exclude_name`.
//! - `resource`: `id` (any), `id_prefix` (any), `labels` (a resource specification: each label
//!   must match; values may be exact, `prefix*`, `!negated` or `!prefix*`; a negated label must
//!   be present; an empty list matches nothing). Positive values are alternatives (Prefect's
//!   in-memory `matches` does the same; its SQL path ANDs several positive prefixes, which can
//!   never match two different prefixes, so alternatives are the useful reading).
//! - `related` (one or a list, all must hold): one related resource must satisfy all of `id`,
//!   `role`, `resources_in_roles` (`[id, role]` pairs) and `labels`.
//! - `any_resource` (one or a list): the primary resource or a related one satisfies `id`,
//!   `id_prefix` and `labels`.
//! - `id`: event ids; `order`: `ASC` | `DESC` (default), by `occurred`, then event id.
//!
//! Empty lists mean "no filter" except in `labels`, as in Prefect (Python truthiness).
//! Unknown fields are refused (Prefect's filters forbid extra fields too). `text` search and
//! `resource.distinct: true` are not supported and say so (422).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::{Sql, TENANT};
use crate::error::ApiError;
use crate::window::{self, micros};

/// Longest string accepted in any filter value.
const MAX_VALUE_BYTES: usize = 10_000;
/// Most values accepted in one filter, all lists together.
const MAX_VALUES: usize = 1_000;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventFilter {
    #[serde(default, deserialize_with = "null_as_default")]
    pub occurred: OccurredFilter,
    #[serde(default)]
    pub event: Option<EventNameFilter>,
    #[serde(default)]
    pub resource: Option<ResourceFilter>,
    /// One filter or a list of filters, all of which must hold.
    #[serde(default)]
    #[schema(value_type = Option<Vec<RelatedFilter>>)]
    pub related: Option<OneOrMany<RelatedFilter>>,
    /// One filter or a list of filters, all of which must hold.
    #[serde(default)]
    #[schema(value_type = Option<Vec<AnyResourceFilter>>)]
    pub any_resource: Option<OneOrMany<AnyResourceFilter>>,
    #[serde(default)]
    pub id: Option<IdFilter>,
    /// Not supported: must be absent or null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub text: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub order: Order,
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OccurredFilter {
    /// Inclusive.
    #[serde(default)]
    pub since: Option<DateTime<Utc>>,
    /// Inclusive.
    #[serde(default)]
    pub until: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventNameFilter {
    #[serde(default)]
    pub prefix: Option<Vec<String>>,
    #[serde(default)]
    pub exclude_prefix: Option<Vec<String>>,
    #[serde(default)]
    pub name: Option<Vec<String>>,
    #[serde(default)]
    pub exclude_name: Option<Vec<String>>,
}

/// A label's expected value or values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum LabelValues {
    One(String),
    Many(Vec<String>),
}

impl LabelValues {
    fn list(&self) -> Vec<&str> {
        match self {
            LabelValues::One(v) if v.is_empty() => Vec::new(),
            LabelValues::One(v) => vec![v.as_str()],
            LabelValues::Many(vs) => vs.iter().map(String::as_str).collect(),
        }
    }
}

/// Prefect's `ResourceSpecification`: label → expected value(s).
pub type ResourceSpecification = BTreeMap<String, LabelValues>;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceFilter {
    #[serde(default)]
    pub id: Option<Vec<String>>,
    #[serde(default)]
    pub id_prefix: Option<Vec<String>>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub labels: Option<ResourceSpecification>,
    /// Only `false` is supported.
    #[serde(default, deserialize_with = "null_as_default")]
    pub distinct: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RelatedFilter {
    #[serde(default)]
    pub id: Option<Vec<String>>,
    #[serde(default)]
    pub role: Option<Vec<String>>,
    /// `[resource id, role]` pairs.
    #[serde(default)]
    pub resources_in_roles: Option<Vec<(String, String)>>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub labels: Option<ResourceSpecification>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnyResourceFilter {
    #[serde(default)]
    pub id: Option<Vec<String>>,
    #[serde(default)]
    pub id_prefix: Option<Vec<String>>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub labels: Option<ResourceSpecification>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdFilter {
    #[serde(default)]
    pub id: Option<Vec<Uuid>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum Order {
    #[serde(rename = "ASC")]
    Asc,
    #[default]
    #[serde(rename = "DESC")]
    Desc,
}

impl Order {
    pub fn sql(self) -> &'static str {
        match self {
            Order::Asc => "ASC",
            Order::Desc => "DESC",
        }
    }
}

/// A JSON object or a list of them.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        match self {
            OneOrMany::One(one) => std::slice::from_ref(one).iter(),
            OneOrMany::Many(many) => many.iter(),
        }
    }
}

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Through a Value, so that the error names the field that is wrong rather than
        // "did not match any variant".
        let value = serde_json::Value::deserialize(deserializer)?;
        let describe = |error: serde_path_to_error::Error<serde_json::Error>| {
            serde::de::Error::custom(format!("{}: {}", error.path(), error.inner()))
        };
        if value.is_array() {
            serde_path_to_error::deserialize(value)
                .map(OneOrMany::Many)
                .map_err(describe)
        } else {
            serde_path_to_error::deserialize(value)
                .map(OneOrMany::One)
                .map_err(describe)
        }
    }
}

impl EventFilter {
    /// Fills in the default window and clamps it; refuses what Flowhouse does not support.
    pub fn resolve(mut self, max_window: Duration) -> Result<Self, ApiError> {
        if self.text.as_ref().is_some_and(|t| !t.is_null()) {
            return Err(ApiError::unprocessable(
                "filter.text: text search is not supported by Flowhouse; filter by event name, resource or labels",
            ));
        }
        self.text = None;
        if self.resource.as_ref().is_some_and(|r| r.distinct) {
            return Err(ApiError::unprocessable(
                "filter.resource.distinct: only false is supported by Flowhouse",
            ));
        }
        // Until: now, rounded up to the second so that repeated requests share a cache entry.
        let now = Utc::now();
        let until = self.occurred.until.unwrap_or_else(|| {
            window::from_micros(window::ceil_to(micros(now), window::MICROS_PER_SECOND))
        });
        let default_since = now
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc() - Duration::days(180));
        let since = self
            .occurred
            .since
            .or(default_since)
            .unwrap_or(until - max_window)
            .max(until - max_window)
            .max(flowhouse_schema::event::earliest_timestamp());
        if since > until {
            return Err(ApiError::unprocessable(
                "filter.occurred: since must not be after until",
            ));
        }
        self.occurred = OccurredFilter {
            since: Some(since),
            until: Some(until),
        };
        self.check_sizes()?;
        Ok(self)
    }

    fn check_sizes(&self) -> Result<(), ApiError> {
        fn list(out: &mut Vec<usize>, values: &Option<Vec<String>>) {
            out.extend(values.iter().flatten().map(String::len));
        }
        fn spec(out: &mut Vec<usize>, spec: &Option<ResourceSpecification>) {
            for (label, values) in spec.iter().flatten() {
                out.push(label.len());
                out.extend(values.list().iter().map(|v| v.len()));
            }
        }
        // The length of every string in the filter.
        let mut lengths: Vec<usize> = Vec::new();
        if let Some(e) = &self.event {
            for values in [&e.prefix, &e.exclude_prefix, &e.name, &e.exclude_name] {
                list(&mut lengths, values);
            }
        }
        if let Some(r) = &self.resource {
            list(&mut lengths, &r.id);
            list(&mut lengths, &r.id_prefix);
            spec(&mut lengths, &r.labels);
        }
        for r in self.related.iter().flat_map(OneOrMany::iter) {
            list(&mut lengths, &r.id);
            list(&mut lengths, &r.role);
            spec(&mut lengths, &r.labels);
            for (id, role) in r.resources_in_roles.iter().flatten() {
                lengths.push(id.len());
                lengths.push(role.len());
            }
        }
        for r in self.any_resource.iter().flat_map(OneOrMany::iter) {
            list(&mut lengths, &r.id);
            list(&mut lengths, &r.id_prefix);
            spec(&mut lengths, &r.labels);
        }
        let ids = self
            .id
            .as_ref()
            .and_then(|f| f.id.as_ref())
            .map_or(0, Vec::len);
        if lengths.len() + ids > MAX_VALUES {
            return Err(ApiError::unprocessable(format!(
                "filter: at most {MAX_VALUES} values in all"
            )));
        }
        if lengths.iter().any(|&n| n > MAX_VALUE_BYTES) {
            return Err(ApiError::unprocessable(format!(
                "filter: a value is longer than {MAX_VALUE_BYTES} bytes"
            )));
        }
        Ok(())
    }

    pub fn since_micros(&self) -> i64 {
        self.occurred.since.map(micros).unwrap_or_default()
    }

    pub fn until_micros(&self) -> i64 {
        self.occurred.until.map(micros).unwrap_or_default()
    }

    /// The `WHERE` clause (tenant first) of a resolved filter.
    pub fn where_clause(&self, sql: &mut Sql) -> String {
        let mut c = vec![TENANT.to_string()];
        let since = sql.bind_micros(self.since_micros());
        let until = sql.bind_micros(self.until_micros());
        c.push(format!("occurred >= {since} AND occurred <= {until}"));
        if let Some(e) = &self.event {
            if let Some(v) = non_empty(&e.prefix) {
                let p = sql.bind_strings(v);
                c.push(format!("arrayExists(x -> startsWith(event, x), {p})"));
            }
            if let Some(v) = non_empty(&e.exclude_prefix) {
                let p = sql.bind_strings(v);
                c.push(format!("NOT arrayExists(x -> startsWith(event, x), {p})"));
            }
            if let Some(v) = non_empty(&e.name) {
                let p = sql.bind_strings(v);
                c.push(format!("has({p}, event)"));
            }
            if let Some(v) = non_empty(&e.exclude_name) {
                let p = sql.bind_strings(v);
                c.push(format!("NOT has({p}, event)"));
            }
        }
        if let Some(r) = &self.resource {
            if let Some(v) = non_empty(&r.id) {
                let p = sql.bind_strings(v);
                c.push(format!("has({p}, resource_id)"));
            }
            if let Some(v) = non_empty(&r.id_prefix) {
                let p = sql.bind_strings(v);
                c.push(format!("arrayExists(x -> startsWith(resource_id, x), {p})"));
            }
            if let Some(labels) = &r.labels {
                c.extend(label_conditions(sql, Resource::Primary, labels));
            }
        }
        for r in self.related.iter().flat_map(OneOrMany::iter) {
            let mut rc = Vec::new();
            if let Some(v) = non_empty(&r.id) {
                let p = sql.bind_strings(v);
                rc.push(format!("has({p}, r['prefect.resource.id'])"));
            }
            if let Some(v) = non_empty(&r.role) {
                let p = sql.bind_strings(v);
                rc.push(format!("has({p}, r['prefect.resource.role'])"));
            }
            if let Some(pairs) = r.resources_in_roles.as_ref().filter(|p| !p.is_empty()) {
                let ids: Vec<&str> = pairs.iter().map(|(id, _)| id.as_str()).collect();
                let roles: Vec<&str> = pairs.iter().map(|(_, role)| role.as_str()).collect();
                let (ids, roles) = (sql.bind_strings(&ids), sql.bind_strings(&roles));
                rc.push(format!(
                    "arrayExists((i, o) -> i = r['prefect.resource.id'] AND o = r['prefect.resource.role'], {ids}, {roles})"
                ));
            }
            if let Some(labels) = &r.labels {
                rc.extend(label_conditions(sql, Resource::Related, labels));
            }
            if !rc.is_empty() {
                c.push(format!("arrayExists(r -> ({}), related)", rc.join(" AND ")));
            }
        }
        for r in self.any_resource.iter().flat_map(OneOrMany::iter) {
            let on = |sql: &mut Sql, which: Resource| -> Vec<String> {
                let id = which.id_expr();
                let mut rc = Vec::new();
                if let Some(v) = non_empty(&r.id) {
                    let p = sql.bind_strings(v);
                    rc.push(format!("has({p}, {id})"));
                }
                if let Some(v) = non_empty(&r.id_prefix) {
                    let p = sql.bind_strings(v);
                    rc.push(format!("arrayExists(x -> startsWith({id}, x), {p})"));
                }
                if let Some(labels) = &r.labels {
                    rc.extend(label_conditions(sql, which, labels));
                }
                rc
            };
            let primary = on(sql, Resource::Primary);
            if primary.is_empty() {
                continue;
            }
            let related = on(sql, Resource::Related);
            c.push(format!(
                "(({}) OR arrayExists(r -> ({}), related))",
                primary.join(" AND "),
                related.join(" AND ")
            ));
        }
        if let Some(ids) = self
            .id
            .as_ref()
            .and_then(|f| f.id.as_ref())
            .filter(|v| !v.is_empty())
        {
            let ids = ids
                .iter()
                .map(|id| serde_json::Value::String(id.to_string()))
                .collect();
            let p = sql.bind("Array(UUID)", serde_json::Value::Array(ids));
            c.push(format!("has({p}, id)"));
        }
        c.join(" AND ")
    }
}

fn non_empty(list: &Option<Vec<String>>) -> Option<&Vec<String>> {
    list.as_ref().filter(|v| !v.is_empty())
}

/// Which resource a label condition reads: the event's own, or `r`, a related one in a lambda.
#[derive(Clone, Copy)]
enum Resource {
    Primary,
    Related,
}

impl Resource {
    fn map(self) -> &'static str {
        match self {
            Resource::Primary => "resource",
            Resource::Related => "r",
        }
    }

    fn id_expr(self) -> &'static str {
        match self {
            // The materialized column, which has a bloom filter index.
            Resource::Primary => "resource_id",
            Resource::Related => "r['prefect.resource.id']",
        }
    }
}

/// One condition per label of a resource specification.
fn label_conditions(sql: &mut Sql, which: Resource, spec: &ResourceSpecification) -> Vec<String> {
    let map = which.map();
    let mut conditions = Vec::new();
    for (label, values) in spec {
        let values = values.list();
        if values.is_empty() {
            conditions.push("0".to_string());
            continue;
        }
        let (value, exists) = if label == "prefect.resource.id" {
            (which.id_expr().to_string(), "1".to_string())
        } else {
            let k = sql.bind("String", label.as_str());
            (format!("{map}[{k}]"), format!("mapContains({map}, {k})"))
        };
        let (mut exact, mut prefixes, mut not_exact, mut not_prefixes) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for v in values {
            let (negated, v) = match v.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, v),
            };
            let (prefix, v) = match v.strip_suffix('*') {
                Some(_) => (true, v.trim_end_matches('*')),
                None => (false, v),
            };
            match (negated, prefix) {
                (false, false) => exact.push(v),
                (false, true) => prefixes.push(v),
                (true, false) => not_exact.push(v),
                (true, true) => not_prefixes.push(v),
            }
        }
        let mut c = vec![exists];
        let mut positive = Vec::new();
        if !exact.is_empty() {
            let p = sql.bind_strings(&exact);
            positive.push(format!("has({p}, {value})"));
        }
        if !prefixes.is_empty() {
            let p = sql.bind_strings(&prefixes);
            positive.push(format!("arrayExists(x -> startsWith({value}, x), {p})"));
        }
        if !positive.is_empty() {
            c.push(format!("({})", positive.join(" OR ")));
        }
        if !not_exact.is_empty() {
            let p = sql.bind_strings(&not_exact);
            c.push(format!("NOT has({p}, {value})"));
        }
        if !not_prefixes.is_empty() {
            let p = sql.bind_strings(&not_prefixes);
            c.push(format!("NOT arrayExists(x -> startsWith({value}, x), {p})"));
        }
        conditions.push(format!("({})", c.join(" AND ")));
    }
    conditions
}
