//! One event or log line read from Prefect: the JSON exactly as Prefect gave it (the Kafka
//! message's value), with what the mirror needs from it.

use chrono::{DateTime, Utc};
use flowhouse_schema::Stream;
use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

/// Where the mirror stands in a stream: the `occurred` (events) or `timestamp` (log lines) of
/// the last item delivered, and its id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub at: DateTime<Utc>,
    pub id: Uuid,
}

#[derive(Clone, Debug)]
pub struct Item {
    pub id: Uuid,
    /// `occurred` of an event, `timestamp` of a log line.
    pub at: DateTime<Utc>,
    /// When Prefect received it (`received` of an event, `created` of a log line): the Kafka
    /// message's `received` header, so Flowhouse answers with Prefect's own time.
    pub received: Option<DateTime<Utc>>,
    pub json: Box<RawValue>,
}

#[derive(Deserialize)]
struct EventFields {
    id: Uuid,
    occurred: DateTime<Utc>,
    #[serde(default)]
    received: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct LogFields {
    id: Uuid,
    timestamp: DateTime<Utc>,
    #[serde(default)]
    created: Option<DateTime<Utc>>,
}

impl Item {
    /// Reads the fields the mirror needs; an item without them is not one Prefect sends.
    pub fn parse(stream: Stream, json: Box<RawValue>) -> Result<Self, serde_json::Error> {
        let (id, at, received) = match stream {
            Stream::Events => {
                let f: EventFields = serde_json::from_str(json.get())?;
                (f.id, f.occurred, f.received)
            }
            Stream::Logs => {
                let f: LogFields = serde_json::from_str(json.get())?;
                (f.id, f.timestamp, f.created)
            }
        };
        Ok(Self {
            id,
            at,
            received,
            json,
        })
    }

    pub fn position(&self) -> Position {
        Position {
            at: self.at,
            id: self.id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_string()).unwrap()
    }

    #[test]
    fn events_and_log_lines_as_prefect_serializes_them() {
        let event = Item::parse(
            Stream::Events,
            raw(
                r#"{"occurred":"2026-11-28T18:37:13.526669Z","event":"prefect.flow-run.Running",
                "resource":{"prefect.resource.id":"prefect.flow-run.1"},"related":[],"payload":{},
                "id":"019ac4b2-0000-7000-8000-000000000001","follows":null,
                "received":"2026-11-28T18:37:14Z"}"#,
            ),
        )
        .unwrap();
        assert_eq!(event.at.timestamp_micros() % 1_000_000, 526_669);
        assert_eq!(
            event.received.unwrap().timestamp(),
            event.at.timestamp() + 1
        );
        assert!(event.json.get().contains("prefect.flow-run.Running"));

        let log = Item::parse(
            Stream::Logs,
            raw(
                r#"{"id":"019ac4b2-0000-7000-8000-000000000002","created":"2026-11-28T18:37:15Z",
                "updated":"2026-11-28T18:37:15Z","name":"prefect.flow_runs","level":20,
                "message":"hi","timestamp":"2026-11-28T18:37:13+00:00","flow_run_id":null,
                "task_run_id":null}"#,
            ),
        )
        .unwrap();
        assert_eq!(log.id.to_string(), "019ac4b2-0000-7000-8000-000000000002");
        assert_eq!(log.position().at.timestamp(), 1_795_891_033);

        assert!(Item::parse(Stream::Logs, raw(r#"{"name":"no id"}"#)).is_err());
    }
}
