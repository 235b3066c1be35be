//! Request bodies: read within a size limit, split into the items of a JSON list, and every item
//! validated by the same code the ingest consumer uses (`flowhouse_schema`).
//!
//! Items are forwarded to Kafka as the exact bytes the client sent (each a slice of the body,
//! no copy, no re-serialization), so the ingest consumer sees what the client wrote.

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use flowhouse_schema::event::{Limits, parse_event};
use flowhouse_schema::log::parse_log;
use flowhouse_schema::{Rejection, Stream};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use serde_json::value::RawValue;

use crate::error::{ApiError, ItemProblem};

/// Validates one item of `stream`; the parsed value is not needed here, only the verdict.
pub fn validate(
    stream: Stream,
    raw: &[u8],
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<(), Rejection> {
    match stream {
        Stream::Events => parse_event(raw, limits, now).map(drop),
        Stream::Logs => parse_log(raw, limits, now).map(drop),
    }
}

/// Reads the whole body, refusing with a 413 as soon as it is known to be over `limit`: at once
/// when `Content-Length` says so (nothing of it is read), or when the bytes read pass the limit.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::TooLarge(format!(
            "the request body is larger than the limit of {limit} bytes; send smaller batches"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(error) => Err(ApiError::BadRequest(format!(
            "cannot read the request body: {error}"
        ))),
    }
}

/// Splits a JSON list into its items and validates each. All or nothing: one invalid item and
/// the whole batch is refused with a 422 naming every problem by index and field.
pub fn split_and_validate(
    body: &Bytes,
    stream: Stream,
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<Vec<Bytes>, ApiError> {
    let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(|error| {
        if error.is_syntax() || error.is_eof() {
            ApiError::BadRequest(format!("the body is not valid JSON: {error}"))
        } else {
            ApiError::Invalid {
                detail: format!("the body must be a JSON list of {}", stream.plural()),
                problems: vec![ItemProblem {
                    index: 0,
                    field: String::new(),
                    message: error.to_string(),
                }],
            }
        }
    })?;
    let mut problems = Vec::new();
    let mut invalid = 0;
    for (index, raw) in items.iter().enumerate() {
        let Err(rejection) = validate(stream, raw.get().as_bytes(), limits, now) else {
            continue;
        };
        invalid += 1;
        match rejection {
            Rejection::Invalid(found) => {
                problems.extend(found.into_iter().map(|problem| ItemProblem {
                    index,
                    field: problem.field,
                    message: problem.message,
                }));
            }
            other => problems.push(ItemProblem {
                index,
                field: String::new(),
                message: other.to_string(),
            }),
        }
    }
    if invalid > 0 {
        return Err(ApiError::Invalid {
            detail: format!(
                "{invalid} of {} {} are invalid; none of the batch was accepted",
                items.len(),
                stream.plural()
            ),
            problems,
        });
    }
    Ok(items
        .iter()
        .map(|raw| body.slice_ref(raw.get().as_bytes()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> serde_json::Value {
        serde_json::json!({
            "id": id,
            "occurred": Utc::now().to_rfc3339(),
            "event": "prefect.flow-run.Completed",
            "resource": {"prefect.resource.id": "prefect.flow-run.1"},
        })
    }

    fn check(body: &str) -> Result<Vec<Bytes>, ApiError> {
        split_and_validate(
            &Bytes::copy_from_slice(body.as_bytes()),
            Stream::Events,
            &Limits::default(),
            Utc::now(),
        )
    }

    #[test]
    fn items_keep_the_exact_bytes_sent() {
        let a = event("5e0d0b6e-6ee0-4b7e-9b1f-0d6d7c3a9a10").to_string();
        let b = format!(" {}\n", event("5e0d0b6e-6ee0-4b7e-9b1f-0d6d7c3a9a11"));
        let items = check(&format!("[{a},{b}]")).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0], a.as_bytes());
        assert_eq!(items[1], b.trim().as_bytes());
        assert!(check("[]").unwrap().is_empty());
    }

    #[test]
    fn problems_name_the_index_and_field() {
        let good = event("5e0d0b6e-6ee0-4b7e-9b1f-0d6d7c3a9a10");
        let mut bad = good.clone();
        bad["resource"] = serde_json::json!({});
        let Err(ApiError::Invalid { detail, problems }) = check(&format!("[{good},{bad}]")) else {
            panic!("expected a 422");
        };
        assert_eq!(
            detail,
            "1 of 2 events are invalid; none of the batch was accepted"
        );
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].index, 1);
        assert_eq!(problems[0].field, "resource[\"prefect.resource.id\"]");
    }

    #[test]
    fn prefects_limit_of_100_related_resources_is_enforced() {
        let mut event = event("5e0d0b6e-6ee0-4b7e-9b1f-0d6d7c3a9a10");
        let related = |n: usize| -> Vec<serde_json::Value> {
            (0..n)
                .map(|i| {
                    serde_json::json!({"prefect.resource.id": format!("prefect.tag.{i}"),
                                       "prefect.resource.role": "tag"})
                })
                .collect()
        };
        let check_with = |event: &serde_json::Value| {
            split_and_validate(
                &Bytes::from(format!("[{event}]")),
                Stream::Events,
                &Limits::prefect(),
                Utc::now(),
            )
        };
        event["related"] = serde_json::Value::Array(related(100));
        assert!(check_with(&event).is_ok());
        event["related"] = serde_json::Value::Array(related(101));
        let Err(ApiError::Invalid { problems, .. }) = check_with(&event) else {
            panic!("101 related resources must be refused");
        };
        assert!(
            problems[0].message.contains("100"),
            "{}",
            problems[0].message
        );
    }

    #[test]
    fn not_json_is_a_400_and_not_a_list_a_422() {
        assert!(matches!(check("[{\"id\": "), Err(ApiError::BadRequest(_))));
        assert!(matches!(check("not json"), Err(ApiError::BadRequest(_))));
        assert!(matches!(check("{}"), Err(ApiError::Invalid { .. })));
    }
}
