//! Prefect's `EventFilter` (prefect/server/events/filters.py): its JSON shape, its defaults and
//! its bounds. Its evaluation is in [`super::filter_sql`] (ClickHouse) and [`super::matches`]
//! (memory, for the live feed); both follow Prefect's database semantics:
//!
//! - `occurred`: `since <= occurred <= until`; defaults: since = the start of today − 180 days,
//!   until = now (rounded up to the second, so that repeated requests share a cache entry).
//!   Served without clamping; a `since` more than `--max-search-days` back is a 422 naming the
//!   limit, and dates must lie within what ClickHouse's `DateTime64` holds (1900–2299).
//! - `event`: `prefix` (any), `exclude_prefix` (none), `name` (any, exact), `exclude_name`.
//! - `resource`: `id` (any), `id_prefix` (any), `labels` (see [`super::labels`]), `distinct`
//!   (one event per resource: the latest for `DESC`, the earliest for `ASC`; `total` counts
//!   resources).
//! - `related` (one or a list, all must hold): one related resource satisfies all of `id`,
//!   `role`, `resources_in_roles` (`[id, role]` pairs) and `labels`.
//! - `any_resource` (one or a list): the primary resource or a related one satisfies all of
//!   `id`, `id_prefix` and `labels`.
//! - `id`: event ids. `text`: Prefect's text search ([`crate::text_search`]) over the event
//!   name, every label name and value of the resource and the related resources, and the
//!   payload. `order`: `ASC` | `DESC` (default), by `occurred`, then event id.
//!
//! Empty lists mean "no filter" except in `labels`, as in Prefect (Python truthiness); `null`
//! means unset everywhere. Unknown fields are refused (Prefect's filters forbid them too).

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

pub use super::labels::{LabelValues, ResourceSpecification};
use crate::error::ApiError;
use crate::text_search::{TextFilter, TextQuery};
use crate::window::{self, micros};

/// Longest string accepted in any filter value.
const MAX_VALUE_BYTES: usize = 10_000;
/// Most values accepted in one filter, all lists together.
const MAX_VALUES: usize = 1_000;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct EventFilter {
    #[serde(default, deserialize_with = "null_as_default")]
    #[schema(value_type = Option<OccurredFilter>)]
    pub occurred: OccurredFilter,
    pub event: Option<EventNameFilter>,
    pub resource: Option<ResourceFilter>,
    /// One filter or a list of filters, all of which must hold.
    pub related: Option<OneOrMany<RelatedFilter>>,
    /// One filter or a list of filters, all of which must hold.
    pub any_resource: Option<OneOrMany<AnyResourceFilter>>,
    pub id: Option<EventIdFilter>,
    pub text: Option<TextFilter>,
    #[serde(default, deserialize_with = "null_as_default")]
    #[schema(value_type = Option<Order>)]
    pub order: Order,
}

pub(crate) fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct OccurredFilter {
    /// Inclusive.
    pub since: Option<DateTime<Utc>>,
    /// Inclusive.
    pub until: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct EventNameFilter {
    pub prefix: Option<Vec<String>>,
    pub exclude_prefix: Option<Vec<String>>,
    pub name: Option<Vec<String>>,
    pub exclude_name: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ResourceFilter {
    pub id: Option<Vec<String>>,
    pub id_prefix: Option<Vec<String>>,
    #[schema(value_type = Option<std::collections::HashMap<String, LabelValues>>)]
    pub labels: Option<ResourceSpecification>,
    /// One event per resource: the latest (`DESC`) or the earliest (`ASC`).
    #[serde(default, deserialize_with = "null_as_default")]
    #[schema(value_type = Option<bool>)]
    pub distinct: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RelatedFilter {
    pub id: Option<Vec<String>>,
    pub role: Option<Vec<String>>,
    /// `[resource id, role]` pairs.
    pub resources_in_roles: Option<Vec<(String, String)>>,
    #[schema(value_type = Option<std::collections::HashMap<String, LabelValues>>)]
    pub labels: Option<ResourceSpecification>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AnyResourceFilter {
    pub id: Option<Vec<String>>,
    pub id_prefix: Option<Vec<String>>,
    #[schema(value_type = Option<std::collections::HashMap<String, LabelValues>>)]
    pub labels: Option<ResourceSpecification>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct EventIdFilter {
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
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
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

/// The first and last instants ClickHouse's `DateTime64(6)` holds.
pub fn engine_range() -> (DateTime<Utc>, DateTime<Utc>) {
    (
        Utc.with_ymd_and_hms(1900, 1, 1, 0, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(2299, 12, 31, 23, 59, 59).unwrap(),
    )
}

/// Checks that `time` is one ClickHouse can hold, naming `field` if not.
pub fn check_engine_range(field: &str, time: DateTime<Utc>) -> Result<(), ApiError> {
    let (first, last) = engine_range();
    if time < first || time > last {
        return Err(ApiError::unprocessable(format!(
            "{field}: {} is outside what Flowhouse stores (1900-01-01 to 2299-12-31)",
            time.to_rfc3339()
        )));
    }
    Ok(())
}

impl EventFilter {
    /// Fills in Prefect's default window and checks every bound; `max_search` is how far back
    /// a search may reach. `field` names the filter in errors (`filter`).
    pub fn resolve(mut self, max_search: Duration, field: &str) -> Result<Self, ApiError> {
        let now = Utc::now();
        // Until: now, rounded up to the second so that repeated requests share a cache entry.
        let until = self.occurred.until.unwrap_or_else(|| {
            window::from_micros(window::ceil_to(micros(now), window::MICROS_PER_SECOND))
        });
        let since = match self.occurred.since {
            Some(since) => since,
            None => {
                let today = now
                    .date_naive()
                    .and_hms_opt(0, 0, 0)
                    .expect("midnight exists")
                    .and_utc();
                today - Duration::days(180)
            }
        };
        check_engine_range(&format!("{field}.occurred.since"), since)?;
        check_engine_range(&format!("{field}.occurred.until"), until)?;
        if since < now - max_search {
            return Err(ApiError::unprocessable(format!(
                "{field}.occurred.since: searches reach at most {} days back \
                 (FLOWHOUSE_QUERY_MAX_SEARCH_DAYS); ask for a later since",
                max_search.num_days()
            )));
        }
        self.occurred = OccurredFilter {
            since: Some(since),
            until: Some(until),
        };
        if let Some(text) = &self.text {
            text.parse(&format!("{field}.text"))?;
        }
        self.check_sizes(field)?;
        Ok(self)
    }

    /// The parsed text query, when there is one.
    pub fn text_query(&self) -> Option<TextQuery> {
        self.text
            .as_ref()
            .map(|text| TextQuery::parse(&text.query))
            .filter(|query| !query.is_empty())
    }

    fn check_sizes(&self, field: &str) -> Result<(), ApiError> {
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
                "{field}: at most {MAX_VALUES} values in all"
            )));
        }
        if lengths.iter().any(|&n| n > MAX_VALUE_BYTES) {
            return Err(ApiError::unprocessable(format!(
                "{field}: a value is longer than {MAX_VALUE_BYTES} bytes"
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

    /// Whether only one event per resource is wanted.
    pub fn distinct(&self) -> bool {
        self.resource.as_ref().is_some_and(|r| r.distinct)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::parse_json;

    fn resolve(json: &str) -> Result<EventFilter, ApiError> {
        parse_json::<EventFilter>(json.as_bytes())?.resolve(Duration::days(366), "filter")
    }

    #[test]
    fn the_default_window_is_prefects_180_days() {
        let filter = resolve("{}").unwrap();
        let since = filter.occurred.since.unwrap();
        let today = Utc::now()
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc();
        assert_eq!(since, today - Duration::days(180));
        let until = filter.occurred.until.unwrap();
        assert!(
            until >= Utc::now() - Duration::seconds(2)
                && until <= Utc::now() + Duration::seconds(2)
        );
    }

    #[test]
    fn nulls_are_unset_and_unknown_fields_refused() {
        let filter = resolve(
            r#"{"occurred": null, "event": null, "resource": null, "related": null,
                "any_resource": null, "id": {"id": null}, "text": null, "order": null}"#,
        )
        .unwrap();
        assert_eq!(filter.order, Order::Desc);
        let error = resolve(r#"{"colour": "blue"}"#).unwrap_err().to_string();
        assert!(error.contains("colour"), "{error}");
    }

    #[test]
    fn windows_are_bounded_not_clamped() {
        let old = (Utc::now() - Duration::days(400)).to_rfc3339();
        let error = resolve(&format!(r#"{{"occurred": {{"since": "{old}"}}}}"#))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("filter.occurred.since: searches reach at most 366 days"),
            "{error}"
        );
        // The subscriber's window ends a year ahead: fine.
        let ahead = (Utc::now() + Duration::days(365)).to_rfc3339();
        let filter = resolve(&format!(r#"{{"occurred": {{"until": "{ahead}"}}}}"#)).unwrap();
        assert_eq!(filter.occurred.until.unwrap().to_rfc3339(), ahead);
        let error = resolve(r#"{"occurred": {"until": "2300-01-01T00:00:00Z"}}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("filter.occurred.until"), "{error}");
        // since after until is Prefect's empty answer, not an error.
        let later = Utc::now().to_rfc3339();
        let earlier = (Utc::now() - Duration::days(1)).to_rfc3339();
        assert!(
            resolve(&format!(
                r#"{{"occurred": {{"since": "{later}", "until": "{earlier}"}}}}"#
            ))
            .is_ok()
        );
    }

    #[test]
    fn text_queries_are_checked() {
        let long = "x".repeat(201);
        let error = resolve(&format!(r#"{{"text": {{"query": "{long}"}}}}"#))
            .unwrap_err()
            .to_string();
        assert!(error.contains("filter.text.query: at most 200"), "{error}");
        assert!(
            resolve(r#"{"text": {"query": "  "}}"#)
                .unwrap()
                .text_query()
                .is_none()
        );
    }
}
