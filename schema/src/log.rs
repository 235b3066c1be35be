//! The log model, wire-compatible with Prefect's `LogCreate`, and its validation.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::{Limits, check_timestamp};
use crate::text::CowStr;
use crate::validate::{Problem, Rejection, Shape, describe_failure};

/// One log line as Prefect sends it (`LogCreate`), or as Prefect reads it back (`Log`, which
/// also has its `id`; `created` and `updated` are ignored).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Log<'a> {
    /// Prefect's id of a line read back from a Prefect server (the mirror sends it): the line's
    /// identity, so that a replayed line is stored once. Without one, Flowhouse derives it from
    /// the line's content (`rows::log_content_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[serde(borrow)]
    pub name: CowStr<'a>,
    pub level: i64,
    #[serde(borrow)]
    pub message: CowStr<'a>,
    pub timestamp: DateTime<Utc>,
    #[serde(default)]
    pub flow_run_id: Option<Uuid>,
    #[serde(default)]
    pub task_run_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<Uuid>,
}

/// Python's logging levels are any integer from 0 (DEBUG is 10, CRITICAL 50, custom levels
/// anywhere); Flowhouse stores a byte.
pub const LEVELS: std::ops::RangeInclusive<i64> = 0..=255;
/// Prefect's own cap on one log line (`PREFECT_LOGGING_TO_API_MAX_LOG_SIZE`).
pub const MAX_LOG_BYTES: usize = 1_000_000;
pub const MAX_NAME_CHARS: usize = 1024;

const FIELDS: &[(&str, Shape, bool)] = &[
    ("id", Shape::OptionalUuid, false),
    ("name", Shape::String, true),
    ("level", Shape::Integer, true),
    ("message", Shape::String, true),
    ("timestamp", Shape::Timestamp, true),
    ("flow_run_id", Shape::OptionalUuid, false),
    ("task_run_id", Shape::OptionalUuid, false),
    ("worker_id", Shape::OptionalUuid, false),
];

/// Parses and validates one log line; on failure, says everything that is wrong with it.
pub fn parse_log<'a>(
    raw: &'a [u8],
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<Log<'a>, Rejection> {
    let limit = MAX_LOG_BYTES.min(limits.max_event_bytes);
    if raw.len() > limit {
        return Err(Rejection::TooLarge {
            bytes: raw.len(),
            limit,
        });
    }
    let log: Log<'a> = serde_json::from_slice(raw)
        .map_err(|error| describe_failure(raw, &error, "a log", FIELDS))?;
    let mut problems = Vec::new();
    if !LEVELS.contains(&log.level) {
        problems.push(Problem::new(
            "level",
            format!(
                "{} is not a logging level Flowhouse stores: from 0 to 255 (DEBUG is 10, \
                 CRITICAL 50)",
                log.level
            ),
        ));
    }
    if log.name.chars().count() > MAX_NAME_CHARS {
        problems.push(Problem::new(
            "name",
            format!("is longer than {MAX_NAME_CHARS} characters"),
        ));
    }
    check_timestamp("timestamp", log.timestamp, limits, now, &mut problems);
    if problems.is_empty() {
        Ok(log)
    } else {
        Err(Rejection::Invalid(problems))
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()
    }

    fn check(value: serde_json::Value) -> Result<Log<'static>, Rejection> {
        let raw = Box::leak(value.to_string().into_bytes().into_boxed_slice());
        parse_log(raw, &Limits::default(), now())
    }

    fn valid() -> serde_json::Value {
        serde_json::json!({
            "name": "prefect.flow_runs", "level": 20, "message": "Finished in state Completed()",
            "timestamp": "2024-05-01T11:00:00.5Z",
            "flow_run_id": "5e0d0b6e-6ee0-4b7e-9b1f-0d6d7c3a9a10", "task_run_id": null
        })
    }

    #[test]
    fn a_valid_log_parses() {
        let log = check(valid()).unwrap();
        assert_eq!(log.level, 20);
        assert_eq!(log.task_run_id, None);
        assert_eq!(
            log.flow_run_id.unwrap().to_string(),
            "5e0d0b6e-6ee0-4b7e-9b1f-0d6d7c3a9a10"
        );
    }

    #[test]
    fn out_of_range_levels_and_wrong_types_are_named() {
        let mut log = valid();
        for custom in [0, 5, 99, 255] {
            log["level"] = serde_json::json!(custom);
            assert_eq!(check(log.clone()).unwrap().level, custom, "level {custom}");
        }
        for outside in [-1, 256] {
            log["level"] = serde_json::json!(outside);
            assert_eq!(
                check(log.clone()).unwrap_err().to_string(),
                format!(
                    "level: {outside} is not a logging level Flowhouse stores: from 0 to 255 \
                     (DEBUG is 10, CRITICAL 50)"
                )
            );
        }
        let mut log = valid();
        log["level"] = serde_json::json!("INFO");
        log["flow_run_id"] = serde_json::json!("not-a-uuid");
        log.as_object_mut().unwrap().remove("message");
        assert_eq!(
            check(log).unwrap_err().to_string(),
            "level: must be an integer; message: is required; flow_run_id: must be a UUID string or null"
        );
    }
}
