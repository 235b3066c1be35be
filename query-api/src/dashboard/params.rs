//! The query parameters of the metric routes: one struct per set ([`MetricQuery`], and
//! [`TopFailingQuery`] for `top-failing`), read from the query string by [`parse`] and
//! documented in `/openapi.json` from the same definition (`IntoParams`).
//!
//! Unknown parameters are refused, so a typo never silently widens a query; filter values are
//! sorted and deduplicated, so equivalent requests share a cache key.

// utoipa's `IntoParams` derive expands with full paths.
#![allow(unused_qualifications)]

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use super::queries::Group;
use crate::error::ApiError;
use crate::request::query_pairs;
use crate::window::{self, Axis, Bucket, Window};
use crate::zone::Zone;

const MAX_FILTER_VALUES: usize = 100;
const MAX_FILTER_CHARS: usize = 1024;
const MAX_TOP_N: u64 = 100;

/// Which runs a metric counts. Sorted and deduplicated, so equivalent requests share a cache key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, ToSchema)]
pub struct RunFilters {
    pub flow: Vec<String>,
    pub deployment: Vec<String>,
    pub work_pool: Vec<String>,
    pub tag: Vec<String>,
}

impl RunFilters {
    pub fn is_empty(&self) -> bool {
        self.flow.is_empty()
            && self.deployment.is_empty()
            && self.work_pool.is_empty()
            && self.tag.is_empty()
    }

    /// Sorts and deduplicates every list: equivalent filters compare (and cache) equal.
    pub fn normalize(&mut self) {
        for list in [
            &mut self.flow,
            &mut self.deployment,
            &mut self.work_pool,
            &mut self.tag,
        ] {
            list.sort();
            list.dedup();
        }
    }

    fn list(&mut self, name: &str) -> Option<&mut Vec<String>> {
        match name {
            "flow" => Some(&mut self.flow),
            "deployment" => Some(&mut self.deployment),
            "work_pool" => Some(&mut self.work_pool),
            "tag" => Some(&mut self.tag),
            _ => None,
        }
    }
}

/// One value of a run filter, as documented: 1 to 1024 characters.
pub struct FilterValue;

impl utoipa::PartialSchema for FilterValue {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_FILTER_CHARS))
            .into()
    }
}

impl ToSchema for FilterValue {}

/// An IANA time zone name, as the IANA database spells it (backward-compatible links too).
pub struct TimeZoneName;

impl utoipa::PartialSchema for TimeZoneName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(Zone::names()))
            .description(Some("An IANA time zone name."))
            .into()
    }
}

impl ToSchema for TimeZoneName {}

/// The parameters every metric route takes.
#[derive(Clone, Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MetricQuery {
    /// Window start, inclusive (RFC 3339). Default: `until` − 7 days.
    #[param(value_type = Option<String>, format = DateTime)]
    pub since: Option<i64>,
    /// Window end, exclusive (RFC 3339). Default: the end of the current bucket.
    #[param(value_type = Option<String>, format = DateTime)]
    pub until: Option<i64>,
    /// `hour` (default) or `day`.
    pub bucket: Option<Bucket>,
    /// The time zone of day buckets, an IANA name (default `UTC`): a day bucket is a local
    /// calendar day (23 or 25 hours when clocks change). Hour buckets are hours in any zone.
    #[param(value_type = Option<TimeZoneName>)]
    pub tz: Option<String>,
    /// Flow id (without `prefect.flow.`); repeatable, at most 100.
    #[param(value_type = Option<Vec<FilterValue>>, max_items = 100)]
    pub flow: Vec<String>,
    /// Deployment id; repeatable, at most 100.
    #[param(value_type = Option<Vec<FilterValue>>, max_items = 100)]
    pub deployment: Vec<String>,
    /// Work pool id; repeatable, at most 100.
    #[param(value_type = Option<Vec<FilterValue>>, max_items = 100)]
    pub work_pool: Vec<String>,
    /// Tag (without `prefect.tag.`); repeatable, at most 100.
    #[param(value_type = Option<Vec<FilterValue>>, max_items = 100)]
    pub tag: Vec<String>,
}

impl MetricQuery {
    const NAMES: &[&str] = &[
        "since",
        "until",
        "bucket",
        "tz",
        "flow",
        "deployment",
        "work_pool",
        "tag",
    ];
}

/// The extra parameters of `top-failing`.
#[derive(Clone, Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TopFailingQuery {
    /// `flow` (default), `deployment` or `work-pool`.
    pub by: Option<Group>,
    /// How many, 1..=100 (default 5).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u64>,
}

impl TopFailingQuery {
    const NAMES: &[&str] = &["by", "limit"];
}

/// Which parameter sets a route takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Takes {
    Metric,
    MetricAndTopFailing,
}

/// A parsed, validated and normalized metric request.
#[derive(Clone, Debug, Serialize)]
pub struct MetricParams {
    pub window: Window,
    pub bucket: Bucket,
    pub tz: Zone,
    /// The buckets of `window` (derived from the fields above, so not part of the cache key).
    #[serde(skip)]
    pub axis: Axis,
    pub filters: RunFilters,
    pub by: Group,
    pub limit: u64,
}

impl MetricParams {
    /// One entry per bucket of the window, gap-filled: `make` gets each bucket's start and what
    /// `by_bucket` holds for it (keyed by the bucket key the SQL computed), if anything.
    pub fn gap_filled<T, B>(
        &self,
        by_bucket: &BTreeMap<i64, T>,
        make: impl Fn(i64, Option<&T>) -> B,
    ) -> Vec<B> {
        self.axis
            .buckets
            .iter()
            .map(|&(key, start)| make(start, by_bucket.get(&key)))
            .collect()
    }
}

/// Reads the query string into the route's parameter sets; every error names the parameter.
fn read(query: Option<&str>, takes: Takes) -> Result<(MetricQuery, TopFailingQuery), ApiError> {
    let mut metric = MetricQuery::default();
    let mut top = TopFailingQuery::default();
    let mut filters = RunFilters::default();
    for (key, value) in query_pairs(query)? {
        let known = MetricQuery::NAMES.contains(&key.as_str())
            || (takes == Takes::MetricAndTopFailing
                && TopFailingQuery::NAMES.contains(&key.as_str()));
        if !known {
            let mut names: Vec<&str> = MetricQuery::NAMES.to_vec();
            if takes == Takes::MetricAndTopFailing {
                names.extend(TopFailingQuery::NAMES);
            }
            return Err(ApiError::bad_request(format!(
                "unknown query parameter `{key}`; this route takes {}",
                names.join(", ")
            )));
        }
        match key.as_str() {
            "since" => metric.since = Some(window::parse_time("since", &value)?),
            "until" => metric.until = Some(window::parse_time("until", &value)?),
            "bucket" => metric.bucket = Some(Bucket::parse(&value)?),
            "tz" => metric.tz = Some(value),
            "by" => top.by = Some(Group::parse(&value)?),
            "limit" => {
                top.limit = Some(
                    value
                        .parse::<u64>()
                        .ok()
                        .filter(|n| (1..=MAX_TOP_N).contains(n))
                        .ok_or_else(|| {
                            ApiError::bad_request(format!(
                                "limit must be an integer from 1 to {MAX_TOP_N}"
                            ))
                        })?,
                );
            }
            name => {
                if value.is_empty() || value.chars().count() > MAX_FILTER_CHARS {
                    return Err(ApiError::bad_request(format!(
                        "{name} must be 1 to {MAX_FILTER_CHARS} characters long"
                    )));
                }
                let list = filters.list(name).expect("a filter name: checked above");
                list.push(value);
                if list.len() > MAX_FILTER_VALUES {
                    return Err(ApiError::bad_request(format!(
                        "at most {MAX_FILTER_VALUES} values of {name}"
                    )));
                }
            }
        }
    }
    metric.flow = filters.flow;
    metric.deployment = filters.deployment;
    metric.work_pool = filters.work_pool;
    metric.tag = filters.tag;
    Ok((metric, top))
}

/// The normalized request of a metric route; `max_window_micros` bounds its window.
pub fn parse(
    query: Option<&str>,
    takes: Takes,
    max_window_micros: i64,
) -> Result<MetricParams, ApiError> {
    let (metric, top) = read(query, takes)?;
    let bucket = metric.bucket.unwrap_or(Bucket::Hour);
    let mut filters = RunFilters {
        flow: metric.flow,
        deployment: metric.deployment,
        work_pool: metric.work_pool,
        tag: metric.tag,
    };
    filters.normalize();
    let tz = match &metric.tz {
        Some(name) => Zone::parse(name)?,
        None => Zone::default(),
    };
    let window = window::resolve(metric.since, metric.until, bucket, tz, max_window_micros)?;
    Ok(MetricParams {
        window,
        bucket,
        tz,
        axis: Axis::new(&window, bucket, tz),
        filters,
        by: top.by.unwrap_or(Group::Flow),
        limit: top.limit.unwrap_or(5),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEEK: i64 = 7 * 86_400 * 1_000_000;
    const MONTH: i64 = 31 * 86_400 * 1_000_000;

    fn ok(query: &str, takes: Takes) -> MetricParams {
        parse(Some(query), takes, MONTH).unwrap()
    }

    fn refused(query: &str, takes: Takes) -> String {
        parse(Some(query), takes, MONTH).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_the_week_ending_with_the_current_hour() {
        let p = ok("", Takes::Metric);
        assert_eq!(p.bucket, Bucket::Hour);
        assert_eq!(p.window.until - p.window.since, WEEK);
        assert_eq!(p.window.until % Bucket::Hour.micros(), 0);
        assert!(p.window.until > window::now_micros());
        assert_eq!((p.by, p.limit), (Group::Flow, 5));
    }

    #[test]
    fn filters_are_sorted_and_deduplicated_so_equal_requests_share_a_key() {
        let a = ok("flow=b&flow=a&tag=x&flow=b", Takes::Metric);
        let b = ok("tag=x&flow=a&flow=b", Takes::Metric);
        assert_eq!(a.filters.flow, vec!["a", "b"]);
        assert_eq!(
            serde_json::to_string(&a.filters).unwrap(),
            serde_json::to_string(&b.filters).unwrap()
        );
    }

    #[test]
    fn every_bad_parameter_is_named() {
        assert!(refused("flows=x", Takes::Metric).contains("unknown query parameter `flows`"));
        assert!(refused("by=flow", Takes::Metric).contains("unknown query parameter `by`"));
        assert!(refused("limit=0", Takes::MetricAndTopFailing).contains("limit"));
        assert!(refused("limit=101", Takes::MetricAndTopFailing).contains("from 1 to 100"));
        assert!(refused("by=team", Takes::MetricAndTopFailing).contains("by must be"));
        assert!(refused("bucket=week", Takes::Metric).contains("bucket"));
        assert!(refused("since=yesterday", Takes::Metric).contains("since"));
        assert!(refused("flow=", Takes::Metric).contains("flow must be 1 to"));
        let long = "x".repeat(MAX_FILTER_CHARS + 1);
        assert!(refused(&format!("tag={long}"), Takes::Metric).contains("tag must be"));
        let many: Vec<String> = (0..=MAX_FILTER_VALUES)
            .map(|i| format!("tag={i}"))
            .collect();
        assert!(refused(&many.join("&"), Takes::Metric).contains("at most 100 values of tag"));
    }

    #[test]
    fn day_buckets_follow_the_zone_and_hours_stay_hours() {
        let p = ok(
            "since=2027-03-27T00:00:00Z&until=2027-03-30T00:00:00Z&bucket=day&tz=Europe/Berlin",
            Takes::Metric,
        );
        let starts: Vec<String> = p
            .axis
            .buckets
            .iter()
            .map(|b| window::rfc3339(b.1))
            .collect();
        assert_eq!(
            starts,
            [
                "2027-03-26T23:00:00.000000Z",
                "2027-03-27T23:00:00.000000Z",
                "2027-03-28T22:00:00.000000Z",
                "2027-03-29T22:00:00.000000Z",
            ]
        );
        let hours = ok(
            "since=2027-03-28T00:30:00Z&until=2027-03-28T03:00:00Z&tz=Asia/Kolkata",
            Takes::Metric,
        );
        let hour = Bucket::Hour.micros();
        assert!(hours.axis.buckets.iter().all(|b| b.1 % hour == 0));
        assert_eq!(hours.axis.buckets.len(), 3);
        let error = parse(Some("tz=Moon/Base"), Takes::Metric, MONTH).unwrap_err();
        assert_eq!(error.status(), 422);
        assert!(error.to_string().starts_with("tz:"), "{error}");
        // The zone is part of the cache key.
        let a = serde_json::to_string(&ok("tz=Asia/Tokyo", Takes::Metric)).unwrap();
        let b = serde_json::to_string(&ok("tz=UTC", Takes::Metric)).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn the_default_day_window_is_seven_local_days() {
        let p = ok("bucket=day&tz=Pacific/Kiritimati", Takes::Metric);
        assert_eq!(p.axis.buckets.len(), 7);
        assert_eq!(p.axis.buckets[0].1, p.window.since);
        assert!(p.window.until > window::now_micros());
    }

    #[test]
    fn top_failing_takes_its_own_parameters() {
        let p = ok("by=work-pool&limit=7", Takes::MetricAndTopFailing);
        assert_eq!((p.by, p.limit), (Group::WorkPool, 7));
    }

    #[test]
    fn windows_are_bounded() {
        let error = refused(
            "since=2026-01-01T00:00:00Z&until=2026-03-01T00:00:00Z",
            Takes::Metric,
        );
        assert!(error.contains("at most 31.0 days"), "{error}");
        let error = refused(
            "since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
            Takes::Metric,
        );
        assert!(error.contains("since must be before until"), "{error}");
    }

    #[test]
    fn gap_filling_covers_every_bucket_once() {
        let p = ok(
            "since=2026-01-01T00:30:00Z&until=2026-01-01T04:00:00Z",
            Takes::Metric,
        );
        let hour = Bucket::Hour.micros();
        let first = p.window.since.div_euclid(hour);
        let data = BTreeMap::from([(first + 2, 7u64)]);
        let series = p.gap_filled(&data, |start, n| (start, n.copied().unwrap_or(0)));
        assert_eq!(series.len(), 4);
        assert_eq!(series[2], ((first + 2) * hour, 7));
        assert!(
            series
                .iter()
                .enumerate()
                .all(|(i, (_, n))| (*n == 7) == (i == 2))
        );
    }
}
