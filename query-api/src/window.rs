//! Time windows and buckets of the dashboard metrics (docs/metrics.md, "Vocabulary").

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::db::Sql;
use crate::error::ApiError;
use crate::zone::{Segments, Zone};

pub const MICROS_PER_SECOND: i64 = 1_000_000;

/// Bucket width of a time series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    Hour,
    Day,
}

impl Bucket {
    pub fn micros(self) -> i64 {
        match self {
            Bucket::Hour => 3_600 * MICROS_PER_SECOND,
            Bucket::Day => 86_400 * MICROS_PER_SECOND,
        }
    }

    pub fn parse(text: &str) -> Result<Self, ApiError> {
        match text {
            "hour" => Ok(Bucket::Hour),
            "day" => Ok(Bucket::Day),
            other => Err(ApiError::bad_request(format!(
                "bucket must be `hour` or `day`, not `{other}`"
            ))),
        }
    }
}

/// `[since, until)` in microseconds since the epoch, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Window {
    pub since: i64,
    pub until: i64,
}

impl Window {
    /// The start of every bucket that starts in `[floor(since), until)`: the gap-filled axis.
    pub fn bucket_starts(&self, bucket: Bucket) -> Vec<i64> {
        let width = bucket.micros();
        let mut start = floor_to(self.since, width);
        let mut starts = Vec::new();
        while start < self.until {
            starts.push(start);
            start += width;
        }
        starts
    }

    /// The whole hours inside the window, `[ceil_hour(since), floor_hour(until))`, which the
    /// hourly rollups answer exactly; `None` when the window holds no whole hour.
    pub fn whole_hours(&self) -> Option<(i64, i64)> {
        let hour = Bucket::Hour.micros();
        let from = ceil_to(self.since, hour);
        let to = floor_to(self.until, hour);
        (from < to).then_some((from, to))
    }
}

/// The buckets of a window: the gap-filled axis and the SQL that puts a timestamp in one.
///
/// Hour buckets are UTC hours whatever the zone (an hour is an hour; the rollups are hourly).
/// Day buckets are the zone's local days ([`crate::zone`]). A bucket is named by its key (the
/// hour or local day number the SQL computes) and shown by its start.
#[derive(Clone, Debug)]
pub struct Axis {
    pub bucket: Bucket,
    /// The zone's offsets over the window; `None` for hour buckets.
    days: Option<Segments>,
    /// `(key, start)` of every bucket that starts in `[floor(since), until)`, in order.
    pub buckets: Vec<(i64, i64)>,
}

impl Axis {
    pub fn new(window: &Window, bucket: Bucket, zone: Zone) -> Self {
        match bucket {
            Bucket::Hour => Self {
                bucket,
                days: None,
                buckets: window
                    .bucket_starts(bucket)
                    .into_iter()
                    .map(|start| (start.div_euclid(bucket.micros()), start))
                    .collect(),
            },
            Bucket::Day => {
                let segments = Segments::of(zone, window.since, window.until);
                let first = segments.day(window.since);
                let last = segments.day(window.until - 1);
                let buckets = (first..=last)
                    .filter_map(|day| Some((day, segments.day_start(day)?)))
                    .collect();
                Self {
                    bucket,
                    days: Some(segments),
                    buckets,
                }
            }
        }
    }

    /// The SQL of the bucket key of `micros_expr` (a timestamp in microseconds).
    pub fn key_sql(&self, sql: &mut Sql, micros_expr: &str) -> String {
        match &self.days {
            Some(segments) => segments.day_sql(sql, micros_expr),
            None => {
                let width = sql.bind_i64(self.bucket.micros());
                format!("intDiv({micros_expr}, {width})")
            }
        }
    }

    /// The bucket key of `micros`, as [`Axis::key_sql`] computes it.
    pub fn key(&self, micros: i64) -> i64 {
        match &self.days {
            Some(segments) => segments.day(micros),
            None => micros.div_euclid(self.bucket.micros()),
        }
    }

    /// The hours of `[from, to)` (whole hours, µs) that two buckets share: a local midnight at
    /// a half hour (Asia/Kolkata) or a change of offset inside the hour. An hourly rollup row
    /// cannot be split between buckets, so these hours are read from the raw rows. Their
    /// numbers (start / 1 h).
    pub fn split_hours(&self, from: i64, to: i64) -> Vec<i64> {
        let hour = Bucket::Hour.micros();
        if self.days.is_none() {
            return Vec::new();
        }
        (from.div_euclid(hour)..to.div_euclid(hour))
            .filter(|h| self.key(h * hour) != self.key(h * hour + hour - 1))
            .collect()
    }
}

/// The multiple of `width` at or before `micros`; saturates at the ends of `i64` (dates there
/// are refused before they get here, but arithmetic on inputs never overflows).
pub fn floor_to(micros: i64, width: i64) -> i64 {
    micros.saturating_sub(micros.rem_euclid(width))
}

/// The multiple of `width` at or after `micros`, saturating like [`floor_to`].
pub fn ceil_to(micros: i64, width: i64) -> i64 {
    match micros.rem_euclid(width) {
        0 => micros,
        r => micros.saturating_add(width - r),
    }
}

pub fn micros(time: DateTime<Utc>) -> i64 {
    time.timestamp_micros()
}

pub fn from_micros(micros: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(micros)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

pub fn now_micros() -> i64 {
    micros(Utc::now())
}

/// RFC 3339 with microseconds, `Z`: how every timestamp leaves this API.
pub fn rfc3339(micros: i64) -> String {
    from_micros(micros).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Serde helper: microseconds as an RFC 3339 string.
pub mod as_rfc3339 {
    pub fn serialize<S: serde::Serializer>(micros: &i64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::rfc3339(*micros))
    }
}

/// Parses a timestamp given in a query string or a body.
pub fn parse_time(field: &str, text: &str) -> Result<i64, ApiError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| micros(t.with_timezone(&Utc)))
        .map_err(|error| {
            ApiError::bad_request(format!(
                "{field} must be an RFC 3339 timestamp such as 2026-01-31T00:00:00Z ({error})"
            ))
        })
}

/// Nothing before 2000 is an orchestration event (and ClickHouse's DateTime64 range is finite).
pub fn earliest() -> i64 {
    micros(flowhouse_schema::event::earliest_timestamp())
}

/// The last instant ClickHouse's `DateTime64` holds.
pub fn latest() -> i64 {
    micros(crate::events::filter::engine_range().1)
}

/// Resolves a dashboard window. The default is the 7 days that end with the current (open)
/// bucket: aligned, so that every dashboard asking for "the past week" in the same bucket
/// shares one cache entry.
///
/// With day buckets the default is the zone's 7 local days ending with today.
pub fn resolve(
    since: Option<i64>,
    until: Option<i64>,
    bucket: Bucket,
    zone: Zone,
    max_window_micros: i64,
) -> Result<Window, ApiError> {
    let week = 7 * 86_400 * MICROS_PER_SECOND;
    let (since, until) = match (since, until, bucket) {
        (None, None, Bucket::Day) => {
            let now = now_micros();
            let days = Segments::of(zone, now - week, now);
            let today = days.day(now);
            match (days.day_start(today - 6), days.day_start(today + 1)) {
                (Some(since), Some(until)) => (since, until),
                _ => return Err(ApiError::Internal),
            }
        }
        _ => {
            let until =
                until.unwrap_or_else(|| floor_to(now_micros(), bucket.micros()) + bucket.micros());
            (since.unwrap_or(until.saturating_sub(week)), until)
        }
    };
    // Readable but out of bounds: 422, as every other semantic bound.
    if since >= until {
        return Err(ApiError::unprocessable("since must be before until"));
    }
    if since < earliest() {
        return Err(ApiError::unprocessable(
            "since must not be before 2000-01-01",
        ));
    }
    if until > latest() {
        return Err(ApiError::unprocessable(
            "until must not be after 2299-12-31",
        ));
    }
    if until - since > max_window_micros {
        return Err(ApiError::unprocessable(format!(
            "the window is {:.1} days long; at most {:.1} days are allowed",
            (until - since) as f64 / (86_400.0 * MICROS_PER_SECOND as f64),
            max_window_micros as f64 / (86_400.0 * MICROS_PER_SECOND as f64)
        )));
    }
    Ok(Window { since, until })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_floor_since_to_until() {
        let hour = Bucket::Hour.micros();
        let w = Window {
            since: 10 * hour + 5,
            until: 13 * hour,
        };
        assert_eq!(
            w.bucket_starts(Bucket::Hour),
            vec![10 * hour, 11 * hour, 12 * hour]
        );
        assert_eq!(w.whole_hours(), Some((11 * hour, 13 * hour)));
        let w = Window {
            since: 10 * hour + 5,
            until: 10 * hour + 9,
        };
        assert_eq!(w.whole_hours(), None);
        assert_eq!(floor_to(-1, 10), -10);
        assert_eq!(ceil_to(-1, 10), 0);
        assert_eq!(ceil_to(11, 10), 20);
        assert_eq!(floor_to(i64::MIN, 7), i64::MIN);
        assert_eq!(ceil_to(i64::MAX, 7), i64::MAX);
        assert_eq!(ceil_to(i64::MIN, 7) % 7, 0);
    }
}
