//! The time zone of day buckets (`tz`, an IANA name; UTC by default).
//!
//! A day bucket is a local calendar day of the zone: 23 or 25 hours long on the days clocks
//! change, and starting at a half hour in zones such as Asia/Kolkata. The zone's rules come from
//! one place, the IANA database compiled into `chrono-tz`; ClickHouse never sees the zone's
//! name. Over a window the zone is a handful of [`Segments`] (an instant where the UTC offset
//! changes, and the offset from there on), bound as numbers: the SQL buckets a timestamp by
//! `intDiv(t + offset(t), day)` (the local day number) and the gap-filled axis comes from the
//! same segments, so the rows and the axis can never disagree — as they could if ClickHouse's
//! own time zone database (`toStartOfDay(t, tz)`) were a different release from ours.

use chrono::{Offset as _, TimeZone as _};
use chrono_tz::Tz;
use serde::{Serialize, Serializer};

use crate::error::ApiError;
use crate::window::{self, MICROS_PER_SECOND};

pub const DAY: i64 = 86_400 * MICROS_PER_SECOND;
const MINUTE: i64 = 60 * MICROS_PER_SECOND;

/// A validated IANA time zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Zone(Tz);

impl Default for Zone {
    fn default() -> Self {
        Zone(Tz::UTC)
    }
}

impl Serialize for Zone {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl Zone {
    /// The zone named `name`, exactly as the IANA database spells it (its backward-compatible
    /// links included: `Asia/Calcutta` as well as `Asia/Kolkata`); anything else is a 422 naming
    /// the parameter. Only a name found in that list is ever used, and only here.
    pub fn parse(name: &str) -> Result<Self, ApiError> {
        name.parse::<Tz>().map(Zone).map_err(|_| {
            let shown: String = name.chars().take(64).collect();
            ApiError::unprocessable(format!(
                "tz: unknown time zone `{shown}`; expected an IANA name such as UTC, \
                 Europe/Berlin or America/New_York"
            ))
        })
    }

    pub fn name(&self) -> &'static str {
        self.0.name()
    }

    /// Every name [`Zone::parse`] accepts, for the published document.
    pub fn names() -> impl Iterator<Item = &'static str> {
        chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name())
    }

    /// The UTC offset at `micros`, in microseconds.
    pub fn offset_at(&self, micros: i64) -> i64 {
        let utc = window::from_micros(micros).naive_utc();
        i64::from(
            self.0
                .offset_from_utc_datetime(&utc)
                .fix()
                .local_minus_utc(),
        ) * MICROS_PER_SECOND
    }
}

/// The zone's offsets over a span: `(from, offset)` pairs, `from` ascending, the first from
/// `i64::MIN`; each offset holds until the next pair's `from`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segments(Vec<(i64, i64)>);

impl Segments {
    /// The offsets of `zone` over `[from, to)`, with a day of margin on each side (a local day
    /// that starts before `from` still needs its start). Offsets are sampled every 15 minutes
    /// and each change is bisected to the second: no zone has changed its offset twice within
    /// 15 minutes, and every change since 1970 falls on a whole second.
    pub fn of(zone: Zone, from: i64, to: i64) -> Self {
        const STEP: i64 = 15 * MINUTE;
        // Minute-aligned, so that the bisection below lands on whole seconds.
        let from = window::floor_to(from.saturating_sub(2 * DAY), MINUTE);
        let to = to.saturating_add(2 * DAY);
        let mut segments = vec![(i64::MIN, zone.offset_at(from))];
        let mut t = from;
        while t < to {
            let next = t.saturating_add(STEP);
            let (before, after) = (zone.offset_at(t), zone.offset_at(next));
            if before != after {
                // The change is in (t, next]: the first second whose offset is `after`.
                let (mut low, mut high) = (t, next);
                while high - low > MICROS_PER_SECOND {
                    let mid = low + (high - low) / 2 / MICROS_PER_SECOND * MICROS_PER_SECOND;
                    if zone.offset_at(mid) == before {
                        low = mid;
                    } else {
                        high = mid;
                    }
                }
                segments.push((high, after));
            }
            t = next;
        }
        Segments(segments)
    }

    /// The offset at `micros`.
    pub fn offset(&self, micros: i64) -> i64 {
        let i = self.0.partition_point(|(from, _)| *from <= micros);
        self.0[i.saturating_sub(1)].1
    }

    /// The local day number of `micros` (days since 1970-01-01 on the zone's calendar).
    pub fn day(&self, micros: i64) -> i64 {
        micros.saturating_add(self.offset(micros)).div_euclid(DAY)
    }

    /// The first instant of local day `day`: the local midnight, or, where the clocks skip
    /// midnight, the instant they skip to.
    pub fn day_start(&self, day: i64) -> Option<i64> {
        let midnight = day.checked_mul(DAY)?;
        self.0
            .iter()
            .enumerate()
            .filter_map(|(i, &(from, offset))| {
                let until = self.0.get(i + 1).map_or(i64::MAX, |next| next.0);
                let t = from.max(midnight.checked_sub(offset)?);
                (t < until && t.saturating_add(offset).div_euclid(DAY) == day).then_some(t)
            })
            .min()
    }

    /// The SQL of the local day number of the timestamp `micros_expr` (microseconds): its
    /// offset chosen by `multiIf` over the changes, every number bound.
    pub fn day_sql(&self, sql: &mut crate::db::Sql, micros_expr: &str) -> String {
        let mut offset = sql.bind_i64(self.0.last().map_or(0, |s| s.1));
        for window in self.0.windows(2).rev() {
            let (change, before) = (window[1].0, window[0].1);
            let change = sql.bind_i64(change);
            let before = sql.bind_i64(before);
            offset = format!("multiIf({micros_expr} < {change}, {before}, {offset})");
        }
        let day = sql.bind_i64(DAY);
        format!("intDiv({micros_expr} + {offset}, {day})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600 * MICROS_PER_SECOND;

    fn at(text: &str) -> i64 {
        window::parse_time("t", text).unwrap()
    }

    fn zone(name: &str) -> Zone {
        Zone::parse(name).unwrap()
    }

    /// The local days that start in `[since, until)` and how long each is, in hours.
    fn day_lengths(name: &str, since: &str, until: &str) -> Vec<(i64, f64)> {
        let (since, until) = (at(since), at(until));
        let s = Segments::of(zone(name), since, until);
        let first = s.day(since);
        (first..=s.day(until - 1))
            .map(|d| {
                let start = s.day_start(d).unwrap();
                let end = s.day_start(d + 1).unwrap();
                (start, (end - start) as f64 / HOUR as f64)
            })
            .collect()
    }

    #[test]
    fn unknown_zones_are_refused_naming_the_parameter() {
        let error = Zone::parse("Mars/Olympus_Mons").unwrap_err();
        assert_eq!(error.status(), 422);
        assert!(
            error.to_string().starts_with("tz: unknown time zone"),
            "{error}"
        );
        assert!(Zone::parse("europe/berlin").is_err(), "names are exact");
        assert!(Zone::parse("'; DROP TABLE events; --").is_err());
        assert_eq!(zone("Asia/Calcutta").offset_at(0), 5 * HOUR + 30 * MINUTE);
        assert!(Zone::names().any(|n| n == "UTC"));
    }

    #[test]
    fn days_on_which_clocks_change_are_23_or_25_hours() {
        // Europe/Berlin: spring forward on 2027-03-28, fall back on 2027-10-31.
        let spring = day_lengths(
            "Europe/Berlin",
            "2027-03-27T00:00:00Z",
            "2027-03-29T12:00:00Z",
        );
        assert_eq!(
            spring,
            vec![
                (at("2027-03-26T23:00:00Z"), 24.0),
                (at("2027-03-27T23:00:00Z"), 23.0),
                (at("2027-03-28T22:00:00Z"), 24.0),
            ]
        );
        let fall = day_lengths(
            "Europe/Berlin",
            "2027-10-30T12:00:00Z",
            "2027-11-01T00:00:00Z",
        );
        assert_eq!(
            fall,
            vec![
                (at("2027-10-29T22:00:00Z"), 24.0),
                (at("2027-10-30T22:00:00Z"), 25.0),
                (at("2027-10-31T23:00:00Z"), 24.0),
            ]
        );
        // America/New_York: a 25-hour day on 2027-11-07.
        let ny = day_lengths(
            "America/New_York",
            "2027-11-07T12:00:00Z",
            "2027-11-07T13:00:00Z",
        );
        assert_eq!(ny, vec![(at("2027-11-07T04:00:00Z"), 25.0)]);
    }

    #[test]
    fn half_hour_zones_and_skipped_midnights() {
        let kolkata = day_lengths(
            "Asia/Kolkata",
            "2027-01-01T00:00:00Z",
            "2027-01-01T20:00:00Z",
        );
        assert_eq!(
            kolkata,
            vec![
                (at("2026-12-31T18:30:00Z"), 24.0),
                (at("2027-01-01T18:30:00Z"), 24.0),
            ]
        );
        // São Paulo skipped midnight on 2018-11-04 (00:00 → 01:00): that day starts at 01:00.
        let s = Segments::of(
            zone("America/Sao_Paulo"),
            at("2018-11-03T12:00:00Z"),
            at("2018-11-05T00:00:00Z"),
        );
        let day = s.day(at("2018-11-04T12:00:00Z"));
        assert_eq!(s.day_start(day), Some(at("2018-11-04T03:00:00Z")));
        assert_eq!(s.day(at("2018-11-04T02:59:59Z")), day - 1);
    }

    #[test]
    fn utc_is_plain_division() {
        let s = Segments::of(Zone::default(), 0, 10 * DAY);
        assert_eq!(s, Segments(vec![(i64::MIN, 0)]));
        assert_eq!(s.day(3 * DAY + 5), 3);
        assert_eq!(s.day_start(3), Some(3 * DAY));
        let mut sql = crate::db::Sql::new(flowhouse_schema::Tenant {
            account_id: uuid::Uuid::nil(),
            workspace_id: uuid::Uuid::nil(),
        });
        assert_eq!(
            s.day_sql(&mut sql, "t"),
            "intDiv(t + {p2:Int64}, {p3:Int64})"
        );
    }
}
