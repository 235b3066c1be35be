//! `POST /events/count-by/{day|time|event|resource}` (prefect/server/events/counting.py).
//!
//! - `time` (and `day`, which is `time` with `time_unit=day, time_interval=1`): buckets of
//!   `time_interval` × `time_unit` counted from Prefect's pivot, 2024-04-01T00:00:00Z; every
//!   bucket from the one holding `since` up to `until` (or the end of the current unit, when
//!   `until` is in the future) is returned, with zeros; `value` is the bucket's position, `label`
//!   its start, `start_time`/`end_time` its bounds (end = next start − 1 µs).
//! - `event`: per event name; `resource`: per resource id, labelled with the latest event's
//!   `prefect.resource.name`, else `prefect.name`, else the id; most events first, ties by
//!   label; `start_time`/`end_time` are the first and last `occurred`. At most the configured
//!   number of rows (the largest counts).
//!
//! Limits as Prefect's: `time_interval` ≥ 0.01, at most 1000 buckets over the filter's window
//! (checked for every countable, as Prefect does); and Flowhouse's own: `time_interval` at most
//! 1,000,000 units. All bucket arithmetic is checked ([`time_spans`]).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use clickhouse::Row;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::filter::EventFilter;
use super::max_search;
use crate::auth::Reader;
use crate::db::Sql;
use crate::error::ApiError;
use crate::openapi::Errors;
use crate::request::JsonBody;
use crate::window::{self, Bucket, MICROS_PER_SECOND, as_rfc3339, floor_to};
use crate::{AppState, cached_json};
use flowhouse_service::openapi::WorkspacePath;

/// Prefect's pivot: time buckets are counted from here.
pub const PIVOT_MICROS: i64 = 1_711_929_600 * MICROS_PER_SECOND; // 2024-04-01T00:00:00Z
const MAX_BUCKETS: i128 = 1000;
/// Flowhouse's bound on `time_interval`, in units (a million weeks is 19,000 years).
const MAX_INTERVAL: f64 = 1_000_000.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Countable {
    Day,
    Time,
    Event,
    Resource,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    Week,
    #[default]
    Day,
    Hour,
    Minute,
    Second,
}

impl TimeUnit {
    fn micros(self) -> i64 {
        MICROS_PER_SECOND
            * match self {
                TimeUnit::Week => 7 * 86_400,
                TimeUnit::Day => 86_400,
                TimeUnit::Hour => 3_600,
                TimeUnit::Minute => 60,
                TimeUnit::Second => 1,
            }
    }

    /// The last microsecond of the unit period holding `micros` (pendulum's `end_of`; weeks
    /// start on Monday).
    fn end_of(self, micros: i64) -> i64 {
        // 1970-01-01 was a Thursday: Mondays are 4 days after a multiple of 7 days.
        let offset = if self == TimeUnit::Week {
            4 * 86_400 * MICROS_PER_SECOND
        } else {
            0
        };
        floor_to(micros - offset, self.micros()) + offset + self.micros() - 1
    }
}

fn default_interval() -> f64 {
    1.0
}

/// `POST /events/count-by/{countable}` body. `filter` is required, as in Prefect.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct CountRequest {
    pub filter: EventFilter,
    #[serde(default, deserialize_with = "super::filter::null_as_default")]
    pub time_unit: TimeUnit,
    /// How many `time_unit`s one bucket spans (default 1).
    #[serde(default = "default_interval")]
    #[schema(minimum = 0.01, maximum = 1000000.0)]
    pub time_interval: f64,
}

/// The time buckets of a `time` count: `[start, end]` in microseconds, in order.
#[derive(Debug, PartialEq, Eq)]
pub struct Spans {
    /// Index (from the pivot) of the first bucket.
    pub first: i64,
    pub width: i64,
    pub starts: Vec<i64>,
}

/// The bucket width of `interval` × `unit`, once the interval is within bounds.
pub fn bucket_width(unit: TimeUnit, interval: f64) -> Result<i64, ApiError> {
    if !interval.is_finite() || interval < 0.01 {
        return Err(ApiError::unprocessable(
            "time_interval: the minimum interval is 0.01",
        ));
    }
    if interval > MAX_INTERVAL {
        return Err(ApiError::unprocessable(format!(
            "time_interval: at most {MAX_INTERVAL} (in time_unit)"
        )));
    }
    // At most 10^6 weeks ≈ 6·10^17 µs: within i64, and at least 1 µs (0.01 s).
    Ok(((interval * unit.micros() as f64).round() as i64).max(1))
}

/// Prefect's check, for every countable: at most 1000 buckets of `width` in `[since, until]`.
pub fn check_bucket_count(since: i64, until: i64, width: i64) -> Result<(), ApiError> {
    let span = i128::from(until) - i128::from(since);
    let width = i128::from(width);
    let buckets = if span > 0 {
        (span + width - 1) / width
    } else {
        0
    };
    if buckets > MAX_BUCKETS {
        return Err(ApiError::unprocessable(format!(
            "The given interval would create {buckets} buckets, which is too many. Please \
             increase the interval or reduce the time range to produce {MAX_BUCKETS} buckets or fewer."
        )));
    }
    Ok(())
}

/// Prefect's spans (`TimeUnit.get_interval_spans`): from the pivot-aligned bucket holding
/// `since` to `until`, or to the end of the current unit when `until` is in the future. Call
/// after [`check_bucket_count`], which bounds how many there are.
pub fn time_spans(since: i64, until: i64, now: i64, unit: TimeUnit, width: i64) -> Spans {
    let first = (i128::from(since) - i128::from(PIVOT_MICROS)).div_euclid(i128::from(width));
    let end = if until > now { unit.end_of(now) } else { until };
    let mut starts = Vec::new();
    let mut start = i128::from(PIVOT_MICROS) + i128::from(width) * first;
    // The count check bounds the loop; the cap is a second guard, never reached.
    while start < i128::from(end) && starts.len() <= MAX_BUCKETS as usize + 1 {
        starts.push(start as i64);
        start += i128::from(width);
    }
    Spans {
        first: first as i64,
        width,
        starts,
    }
}

/// Prefect's `EventCount`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct EventCount {
    pub value: String,
    pub label: String,
    pub count: u64,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub start_time: i64,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub end_time: i64,
}

#[derive(Debug, Row, Deserialize)]
struct TimeRow {
    idx: i64,
    n: u64,
}

#[derive(Debug, Row, Deserialize)]
struct GroupRow {
    value: String,
    label: String,
    n: u64,
    first: i64,
    last: i64,
}

/// Prefect's label of a bucket: Python's `isoformat()` of a UTC datetime.
fn iso_label(micros: i64) -> String {
    let time = window::from_micros(micros);
    if micros % MICROS_PER_SECOND == 0 {
        time.format("%Y-%m-%dT%H:%M:%S+00:00").to_string()
    } else {
        time.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
    }
}

#[utoipa::path(post, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/events/count-by/{countable}",
    params(WorkspacePath,
           ("countable" = Countable, Path, description = "day, time, event or resource")),
    request_body = CountRequest,
    responses((status = 200, body = Vec<EventCount>), Errors),
    security(("bearer" = []), ("basic" = [])), tag = "events")]
pub async fn count_by(
    Reader(tenant): Reader,
    State(state): State<AppState>,
    Path(params): Path<std::collections::HashMap<String, String>>,
    method: Method,
    headers: HeaderMap,
    JsonBody(request): JsonBody<CountRequest>,
) -> Result<Response, ApiError> {
    let countable = match params.get("countable").map(String::as_str) {
        Some("day") => Countable::Day,
        Some("time") => Countable::Time,
        Some("event") => Countable::Event,
        Some("resource") => Countable::Resource,
        other => {
            return Err(ApiError::unprocessable(format!(
                "countable must be day, time, event or resource, not `{}`",
                other.unwrap_or_default()
            )));
        }
    };
    let filter = request.filter.resolve(max_search(&state), "filter")?;
    let (unit, interval) = match countable {
        Countable::Day => (TimeUnit::Day, 1.0),
        _ => (request.time_unit, request.time_interval),
    };
    let width = bucket_width(unit, interval)?;
    let (since, until) = (filter.since_micros(), filter.until_micros());
    check_bucket_count(since, until, width)?;
    let key = serde_json::to_string(&(&filter, countable, unit, width))
        .map_err(|_| ApiError::Internal)?;
    let ttl = state.cache.ttl_for(until, Bucket::Hour);
    let st = state.clone();
    cached_json(&state, tenant, "events_count_by", key, ttl, &method, &headers, async move {
        let mut sql = Sql::new(tenant);
        let condition = filter.where_clause(&mut sql);
        match countable {
            Countable::Day | Countable::Time => {
                let pivot = sql.bind_i64(PIVOT_MICROS);
                let w = sql.bind_i64(width);
                // Floor division, also before the pivot (intDiv truncates toward zero).
                sql.push(&format!(
                    "SELECT intDiv(x - if(x < 0, {w} - 1, 0), {w}) AS idx, count() AS n
                     FROM (SELECT toUnixTimestamp64Micro(occurred) - {pivot} AS x
                           FROM events FINAL WHERE {condition})
                     GROUP BY idx"
                ));
                let rows: Vec<TimeRow> = st.db.fetch("events_count_time", &sql).await?;
                let spans = time_spans(since, until, window::now_micros(), unit, width);
                let mut counts: Vec<EventCount> = spans
                    .starts
                    .iter()
                    .enumerate()
                    .map(|(i, &start)| EventCount {
                        value: i.to_string(),
                        label: iso_label(start),
                        count: 0,
                        start_time: start,
                        end_time: start.saturating_add(width - 1),
                    })
                    .collect();
                for row in rows {
                    if let Some(slot) = row
                        .idx
                        .checked_sub(spans.first)
                        .and_then(|i| usize::try_from(i).ok())
                        .and_then(|i| counts.get_mut(i))
                    {
                        slot.count = row.n;
                    }
                }
                Ok(counts)
            }
            Countable::Event | Countable::Resource => {
                let (value, label) = match countable {
                    Countable::Event => ("CAST(event AS String)", "any(CAST(event AS String))"),
                    _ => (
                        "resource_id",
                        "argMax(if(mapContains(resource, 'prefect.resource.name'), resource['prefect.resource.name'],
                                if(mapContains(resource, 'prefect.name'), resource['prefect.name'], resource_id)),
                                occurred)",
                    ),
                };
                let limit = sql.bind("UInt64", st.settings.max_result_rows);
                sql.push(&format!(
                    "SELECT {value} AS value, {label} AS label, count() AS n,
                            toUnixTimestamp64Micro(min(occurred)) AS first,
                            toUnixTimestamp64Micro(max(occurred)) AS last
                     FROM events FINAL WHERE {condition}
                     GROUP BY value ORDER BY n DESC, label ASC LIMIT {limit}"
                ));
                let rows: Vec<GroupRow> = st.db.fetch("events_count_group", &sql).await?;
                Ok(rows
                    .into_iter()
                    .map(|r| EventCount {
                        value: r.value,
                        label: r.label,
                        count: r.n,
                        start_time: r.first,
                        end_time: r.last,
                    })
                    .collect::<Vec<_>>())
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_bounded_and_checked() {
        assert!(bucket_width(TimeUnit::Day, 0.001).is_err());
        assert!(bucket_width(TimeUnit::Day, f64::NAN).is_err());
        assert!(bucket_width(TimeUnit::Day, f64::INFINITY).is_err());
        let error = bucket_width(TimeUnit::Week, 1e300).unwrap_err().to_string();
        assert!(error.contains("time_interval: at most"), "{error}");
        assert_eq!(
            bucket_width(TimeUnit::Week, MAX_INTERVAL).unwrap(),
            1_000_000 * 7 * 86_400 * MICROS_PER_SECOND
        );
        assert_eq!(bucket_width(TimeUnit::Second, 0.01).unwrap(), 10_000);
    }

    #[test]
    fn bucket_counts_never_overflow() {
        let week = bucket_width(TimeUnit::Week, MAX_INTERVAL).unwrap();
        assert!(check_bucket_count(i64::MIN, i64::MAX, week).is_ok());
        let second = bucket_width(TimeUnit::Second, 1.0).unwrap();
        let error = check_bucket_count(0, 1001 * second, second)
            .unwrap_err()
            .to_string();
        assert!(error.contains("would create 1001 buckets"), "{error}");
        assert!(check_bucket_count(0, 1000 * second, second).is_ok());
        // since after until: no buckets, as in Prefect.
        assert!(check_bucket_count(10, 0, 1).is_ok());
        assert!(
            time_spans(10, 0, 100, TimeUnit::Second, 1)
                .starts
                .is_empty()
        );
    }

    #[test]
    fn spans_start_at_the_pivot_grid_and_stop_at_the_current_unit() {
        let hour = TimeUnit::Hour.micros();
        let since = PIVOT_MICROS + 10 * hour + 5;
        let now = PIVOT_MICROS + 13 * hour + 7;
        let spans = time_spans(since, now + 365 * 24 * hour, now, TimeUnit::Hour, hour);
        assert_eq!(spans.first, 10);
        assert_eq!(
            spans.starts,
            vec![
                PIVOT_MICROS + 10 * hour,
                PIVOT_MICROS + 11 * hour,
                PIVOT_MICROS + 12 * hour,
                PIVOT_MICROS + 13 * hour
            ]
        );
        let before_pivot = time_spans(
            PIVOT_MICROS - 1,
            PIVOT_MICROS + 1,
            now,
            TimeUnit::Hour,
            hour,
        );
        assert_eq!(before_pivot.first, -1);
        assert_eq!(before_pivot.starts, vec![PIVOT_MICROS - hour, PIVOT_MICROS]);
    }

    #[test]
    fn pivot_and_labels_match_prefect() {
        assert_eq!(window::rfc3339(PIVOT_MICROS), "2024-04-01T00:00:00.000000Z");
        assert_eq!(iso_label(PIVOT_MICROS), "2024-04-01T00:00:00+00:00");
        assert_eq!(
            iso_label(PIVOT_MICROS + 5),
            "2024-04-01T00:00:00.000005+00:00"
        );
        // 2024-04-01 is a Monday: the week ending there ends on Sunday 2024-04-07.
        assert_eq!(
            TimeUnit::Week.end_of(PIVOT_MICROS + 1),
            PIVOT_MICROS + 7 * 86_400 * MICROS_PER_SECOND - 1
        );
        assert_eq!(
            TimeUnit::Day.end_of(PIVOT_MICROS + 1),
            PIVOT_MICROS + 86_400 * MICROS_PER_SECOND - 1
        );
    }
}
