//! The event model, wire-compatible with Prefect's `Event`, and its validation.
//!
//! One implementation, used by the ingestion endpoint (to refuse bad events with a 422 naming
//! each problem) and by the ingest consumer (to dead-letter what a producer wrote to Kafka
//! directly), so both accept exactly the same events.

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde::de::Deserializer;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::text::{CowStr, Labels};
use crate::validate::{Problem, Rejection, Shape, describe_failure};

/// Label holding a resource's identity, e.g. `prefect.flow-run.<uuid>`. Required on every resource.
pub const RESOURCE_ID: &str = "prefect.resource.id";
/// Label naming how a related resource relates, e.g. `flow`, `deployment`, `tag`.
pub const RESOURCE_ROLE: &str = "prefect.resource.role";
/// Label holding a resource's human name.
pub const RESOURCE_NAME: &str = "prefect.resource.name";

/// One event as Prefect sends it. Unknown fields are ignored; `received` is the server's to set
/// and travels in the Kafka headers, not in the event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event<'a> {
    pub id: Uuid,
    pub occurred: DateTime<Utc>,
    #[serde(borrow)]
    pub event: CowStr<'a>,
    #[serde(borrow)]
    pub resource: Labels<'a>,
    #[serde(borrow, default)]
    pub related: Vec<Labels<'a>>,
    #[serde(borrow, default)]
    pub payload: Payload<'a>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follows: Option<Uuid>,
}

impl Event<'_> {
    /// The `prefect.resource.id` of the resource (validated to be present and non-empty).
    pub fn resource_id(&self) -> &str {
        label(&self.resource, RESOURCE_ID).unwrap_or_default()
    }
}

/// The value of one label, if present.
pub fn label<'l>(labels: &'l Labels<'_>, key: &str) -> Option<&'l str> {
    labels.get(key).map(|value| &**value)
}

/// An event's `payload`: the JSON object exactly as sent, kept as text (it is stored verbatim).
#[derive(Clone, Debug, PartialEq)]
pub struct Payload<'a>(pub CowStr<'a>);

impl Default for Payload<'_> {
    fn default() -> Self {
        Payload(CowStr::from("{}"))
    }
}

impl Payload<'static> {
    /// A payload from a JSON value built in code (the load generator's).
    pub fn from_value(value: &serde_json::Value) -> Self {
        Payload(CowStr::owned(value.to_string()))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Payload<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <&'de RawValue>::deserialize(deserializer)?;
        Ok(Payload(CowStr::from(raw.get())))
    }
}

impl Serialize for Payload<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw: &RawValue = serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

/// Limits on one event. The defaults are the loosest Flowhouse stores, what the ingest consumer
/// accepts (1.5 MB events, 500 labels per resource, 500 related resources); the ingestion
/// endpoint enforces Prefect's own server defaults ([`Limits::prefect`]), configurable up to these.
/// Ingest keeping the loosest limits means that a limit lowered at the endpoint later never
/// dead-letters what it already accepted.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_event_bytes: usize,
    pub max_event_name_chars: usize,
    pub max_labels_per_resource: usize,
    pub max_related: usize,
    pub max_label_bytes: usize,
    pub max_payload_bytes: usize,
    /// How far in the future `occurred` may be (clients' clocks drift; a year ahead is a bug).
    pub max_clock_skew: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_event_bytes: 1_500_000,
            max_event_name_chars: 1024,
            max_labels_per_resource: 500,
            max_related: 500,
            max_label_bytes: 10_000,
            max_payload_bytes: 1_000_000,
            max_clock_skew: Duration::days(1),
        }
    }
}

impl Limits {
    /// Prefect's server defaults (`PREFECT_SERVER_EVENTS_MAXIMUM_*`): 1.5 MB events, 500 labels
    /// per resource, 100 related resources.
    pub fn prefect() -> Self {
        Self {
            max_related: 100,
            ..Self::default()
        }
    }
}

/// Nothing before this is an orchestration event (and ClickHouse's DateTime64 starts in 1900).
pub fn earliest_timestamp() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap()
}

const FIELDS: &[(&str, Shape, bool)] = &[
    ("id", Shape::Uuid, true),
    ("occurred", Shape::Timestamp, true),
    ("event", Shape::String, true),
    ("resource", Shape::Labels, true),
    ("related", Shape::LabelsList, false),
    ("payload", Shape::Object, false),
    ("follows", Shape::OptionalUuid, false),
];

/// Parses and validates one event; on failure, says everything that is wrong with it.
pub fn parse_event<'a>(
    raw: &'a [u8],
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<Event<'a>, Rejection> {
    if raw.len() > limits.max_event_bytes {
        return Err(Rejection::TooLarge {
            bytes: raw.len(),
            limit: limits.max_event_bytes,
        });
    }
    let event: Event<'a> = serde_json::from_slice(raw)
        .map_err(|error| describe_failure(raw, &error, "an event", FIELDS))?;
    let problems = check(&event, limits, now);
    if problems.is_empty() {
        Ok(event)
    } else {
        Err(Rejection::Invalid(problems))
    }
}

/// The rules JSON types cannot express.
fn check(event: &Event<'_>, limits: &Limits, now: DateTime<Utc>) -> Vec<Problem> {
    let mut problems = Vec::new();
    if event.id.is_nil() {
        problems.push(Problem::new("id", "must not be the nil UUID"));
    }
    check_timestamp("occurred", event.occurred, limits, now, &mut problems);
    if event.event.trim().is_empty() {
        problems.push(Problem::new("event", "must not be empty"));
    } else if event.event.chars().count() > limits.max_event_name_chars {
        problems.push(Problem::new(
            "event",
            format!("is longer than {} characters", limits.max_event_name_chars),
        ));
    }
    check_resource("resource", &event.resource, false, limits, &mut problems);
    if event.related.len() > limits.max_related {
        problems.push(Problem::new(
            "related",
            format!(
                "has {} resources, more than the limit of {}",
                event.related.len(),
                limits.max_related
            ),
        ));
    } else {
        for (i, related) in event.related.iter().enumerate() {
            check_resource(
                &format!("related[{i}]"),
                related,
                true,
                limits,
                &mut problems,
            );
        }
    }
    let payload = event.payload.0.trim_start();
    if !payload.starts_with('{') {
        problems.push(Problem::new("payload", "must be a JSON object"));
    } else if payload.len() > limits.max_payload_bytes {
        problems.push(Problem::new(
            "payload",
            format!(
                "is {} bytes, over the limit of {}",
                payload.len(),
                limits.max_payload_bytes
            ),
        ));
    }
    problems
}

pub(crate) fn check_timestamp(
    field: &str,
    at: DateTime<Utc>,
    limits: &Limits,
    now: DateTime<Utc>,
    problems: &mut Vec<Problem>,
) {
    if at < earliest_timestamp() {
        problems.push(Problem::new(field, format!("{at} is before 2000-01-01")));
    } else if at > now + limits.max_clock_skew {
        problems.push(Problem::new(
            field,
            format!(
                "{at} is more than {} hours in the future",
                limits.max_clock_skew.num_hours()
            ),
        ));
    }
}

fn check_resource(
    field: &str,
    labels: &Labels<'_>,
    related: bool,
    limits: &Limits,
    problems: &mut Vec<Problem>,
) {
    if labels.len() > limits.max_labels_per_resource {
        problems.push(Problem::new(
            field,
            format!(
                "has {} labels, more than the limit of {}",
                labels.len(),
                limits.max_labels_per_resource
            ),
        ));
        return;
    }
    for required in [RESOURCE_ID]
        .iter()
        .chain(related.then_some(&RESOURCE_ROLE))
    {
        if label(labels, required).is_none_or(|value| value.trim().is_empty()) {
            problems.push(Problem::new(
                format!("{field}[{required:?}]"),
                "is required and must not be empty",
            ));
        }
    }
    for (key, value) in labels {
        if key.is_empty() {
            problems.push(Problem::new(field, "label keys must not be empty"));
        } else if key.len() > limits.max_label_bytes || value.len() > limits.max_label_bytes {
            problems.push(Problem::new(
                format!("{field}[{:?}]", &**key),
                format!("labels are limited to {} bytes", limits.max_label_bytes),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()
    }

    fn valid() -> serde_json::Value {
        serde_json::json!({
            "id": "5e0d0b6e-6ee0-4b7e-9b1f-0d6d7c3a9a10",
            "occurred": "2024-05-01T11:59:59.123456Z",
            "event": "prefect.flow-run.Completed",
            "resource": {"prefect.resource.id": "prefect.flow-run.7f0c", "prefect.state-type": "COMPLETED"},
            "related": [{"prefect.resource.id": "prefect.flow.1", "prefect.resource.role": "flow"}],
            "payload": {"intended": {"from": "RUNNING", "to": "COMPLETED"}},
            "follows": null,
            "unknown_field": [1, 2, 3]
        })
    }

    fn parse(value: &serde_json::Value) -> Result<Event<'static>, Rejection> {
        let raw = Box::leak(value.to_string().into_bytes().into_boxed_slice());
        parse_event(raw, &Limits::default(), now())
    }

    fn problems(value: serde_json::Value) -> Vec<String> {
        match parse(&value) {
            Err(Rejection::Invalid(problems)) => problems.iter().map(ToString::to_string).collect(),
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_event_parses_with_its_fields_intact() {
        let event = parse(&valid()).unwrap();
        assert_eq!(event.event.to_string(), "prefect.flow-run.Completed");
        assert_eq!(event.resource_id(), "prefect.flow-run.7f0c");
        assert_eq!(event.occurred.timestamp_subsec_micros(), 123_456);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&event.payload.0).unwrap(),
            valid()["payload"]
        );
        assert_eq!(label(&event.related[0], RESOURCE_ROLE), Some("flow"));
    }

    #[test]
    fn serializing_and_parsing_again_gives_the_same_event() {
        let event = parse(&valid()).unwrap();
        let text = serde_json::to_vec(&event).unwrap();
        assert_eq!(
            parse_event(&text, &Limits::default(), now()).unwrap(),
            event
        );
    }

    #[test]
    fn a_missing_resource_id_and_role_are_both_named() {
        let mut event = valid();
        event["resource"] = serde_json::json!({"prefect.resource.name": "x"});
        event["related"] = serde_json::json!([{"prefect.resource.id": "prefect.tag.a"}]);
        assert_eq!(
            problems(event),
            vec![
                "resource[\"prefect.resource.id\"]: is required and must not be empty",
                "related[0][\"prefect.resource.role\"]: is required and must not be empty",
            ]
        );
    }

    #[test]
    fn wrong_types_are_reported_per_field() {
        let mut event = valid();
        event["id"] = serde_json::json!(42);
        event["occurred"] = serde_json::json!("yesterday");
        event["resource"]["prefect.state-type"] = serde_json::json!(7);
        event["payload"] = serde_json::json!([1]);
        assert_eq!(
            problems(event),
            vec![
                "id: must be a UUID string",
                "occurred: must be an RFC 3339 timestamp with a time zone, like 2024-05-01T12:00:00.000000Z",
                "resource[\"prefect.state-type\"]: label values must be strings",
                "payload: must be a JSON object",
            ]
        );
    }

    #[test]
    fn missing_required_fields_are_each_named() {
        assert_eq!(
            problems(serde_json::json!({"payload": {}})),
            vec![
                "id: is required",
                "occurred: is required",
                "event: is required",
                "resource: is required"
            ]
        );
    }

    #[test]
    fn a_timestamp_without_a_zone_is_refused() {
        let mut event = valid();
        event["occurred"] = serde_json::json!("2024-05-01T11:59:59");
        assert_eq!(
            problems(event),
            vec![
                "occurred: must be an RFC 3339 timestamp with a time zone, like 2024-05-01T12:00:00.000000Z"
            ]
        );
    }

    #[test]
    fn timestamps_far_in_the_future_or_past_are_refused() {
        let mut event = valid();
        event["occurred"] = serde_json::json!("2024-05-03T12:00:00Z");
        assert_eq!(problems(event.clone()).len(), 1);
        event["occurred"] = serde_json::json!("1999-12-31T23:59:59Z");
        assert_eq!(problems(event.clone()).len(), 1);
        event["occurred"] = serde_json::json!("2024-05-02T11:00:00Z");
        assert!(parse(&event).is_ok(), "within the allowed clock skew");
    }

    #[test]
    fn not_json_and_not_an_object_are_told_apart() {
        let limits = Limits::default();
        assert!(matches!(
            parse_event(b"{\"id\": ", &limits, now()),
            Err(Rejection::NotJson(_))
        ));
        assert!(matches!(
            parse_event(b"not json", &limits, now()),
            Err(Rejection::NotJson(_))
        ));
        assert_eq!(
            parse_event(b"[1,2]", &limits, now()),
            Err(Rejection::Invalid(vec![Problem::new(
                "",
                "an event must be a JSON object"
            )]))
        );
    }

    #[test]
    fn oversized_events_are_refused_before_parsing() {
        let limits = Limits {
            max_event_bytes: 100,
            ..Limits::default()
        };
        let raw = vec![b' '; 101];
        assert_eq!(
            parse_event(&raw, &limits, now()),
            Err(Rejection::TooLarge {
                bytes: 101,
                limit: 100
            })
        );
    }

    #[test]
    fn label_and_related_counts_are_limited() {
        let limits = Limits {
            max_labels_per_resource: 3,
            max_related: 2,
            ..Limits::default()
        };
        let mut event = valid();
        for i in 0..3 {
            event["resource"][format!("k{i}")] = serde_json::json!("v");
        }
        event["related"] = serde_json::json!([
            {"prefect.resource.id": "a", "prefect.resource.role": "r"},
            {"prefect.resource.id": "b", "prefect.resource.role": "r"},
            {"prefect.resource.id": "c", "prefect.resource.role": "r"},
        ]);
        let raw = event.to_string().into_bytes();
        let Err(Rejection::Invalid(found)) = parse_event(&raw, &limits, now()) else {
            panic!("expected problems");
        };
        let fields: Vec<&str> = found.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, vec!["resource", "related"]);
    }

    #[test]
    fn escaped_strings_are_unescaped() {
        let mut event = valid();
        event["event"] = serde_json::json!("prefect.flow-run.\"Quoted\"\n");
        event["resource"]["note"] = serde_json::json!("tab\tand ünïcode");
        let parsed = parse(&event).unwrap();
        assert_eq!(&*parsed.event, "prefect.flow-run.\"Quoted\"\n");
        assert_eq!(label(&parsed.resource, "note"), Some("tab\tand ünïcode"));
    }

    #[test]
    fn a_nil_id_is_refused() {
        let mut event = valid();
        event["id"] = serde_json::json!(Uuid::nil().to_string());
        assert_eq!(problems(event), vec!["id: must not be the nil UUID"]);
    }
}
