//! One Kafka message → one typed row, or the reason it must be dead-lettered.

//!
//! Shared by the ingest consumer (which stores the row) and the query API's live feed (which
//! shows it to subscribers), so that both read a message the same way.

use chrono::{DateTime, Utc};
use rdkafka::Message;
use rdkafka::message::{BorrowedHeaders, Timestamp};

use crate::contract::Envelope;
use crate::event::{Limits, parse_event};
use crate::log::parse_log;
use crate::rows::{EventRow, LogRow};
use crate::stream::Stream;
use crate::{DeadLetterKind, Problem, Rejection};

/// A decoded row.
#[derive(Clone, Debug, PartialEq)]
pub enum Row {
    Event(EventRow),
    Log(LogRow),
}

impl Row {
    pub fn approximate_size(&self) -> usize {
        match self {
            Row::Event(row) => row.approximate_size(),
            Row::Log(row) => row.approximate_size(),
        }
    }
}

/// Why a message cannot be stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub kind: DeadLetterKind,
    pub reason: String,
}

impl From<Rejection> for Refusal {
    fn from(rejection: Rejection) -> Self {
        Refusal {
            kind: rejection.kind(),
            reason: rejection.to_string(),
        }
    }
}

/// Decodes a message of `stream`'s topic. `now` bounds timestamps (clock skew rule).
pub fn decode(
    stream: Stream,
    value: Option<&[u8]>,
    headers: Option<&BorrowedHeaders>,
    kafka_timestamp: Timestamp,
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<Row, Refusal> {
    let envelope = Envelope::from_headers(headers).map_err(|problem: Problem| Refusal {
        kind: DeadLetterKind::BadHeaders,
        reason: problem.to_string(),
    })?;
    let value = value.ok_or_else(|| Refusal {
        kind: DeadLetterKind::NoValue,
        reason: "the message has no value".into(),
    })?;
    // When the producer did not say when Flowhouse received the message, the broker's timestamp
    // is the closest truth.
    let received = envelope
        .received
        .or_else(|| {
            kafka_timestamp
                .to_millis()
                .and_then(DateTime::<Utc>::from_timestamp_millis)
        })
        .unwrap_or(now);
    Ok(match stream {
        Stream::Events => {
            let event = parse_event(value, limits, now)?;
            Row::Event(EventRow::new(envelope.tenant, received, &event))
        }
        Stream::Logs => {
            let log = parse_log(value, limits, now)?;
            Row::Log(LogRow::new(envelope.tenant, received, &log))
        }
    })
}

/// [`decode`] for a consumed message.
pub fn decode_message<M: Message>(
    stream: Stream,
    message: &M,
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<Row, Refusal>
where
    M::Headers: AsBorrowedHeaders,
{
    decode(
        stream,
        message.payload(),
        message
            .headers()
            .map(AsBorrowedHeaders::as_borrowed_headers),
        message.timestamp(),
        limits,
        now,
    )
}

/// Both kinds of message headers, seen as borrowed ones.
pub trait AsBorrowedHeaders {
    fn as_borrowed_headers(&self) -> &BorrowedHeaders;
}

impl AsBorrowedHeaders for BorrowedHeaders {
    fn as_borrowed_headers(&self) -> &BorrowedHeaders {
        self
    }
}

impl AsBorrowedHeaders for rdkafka::message::OwnedHeaders {
    fn as_borrowed_headers(&self) -> &BorrowedHeaders {
        self.as_borrowed()
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header, OwnedHeaders};
    use uuid::Uuid;

    use super::*;
    use crate::Tenant;

    fn tenant() -> Tenant {
        Tenant {
            account_id: Uuid::from_u128(1),
            workspace_id: Uuid::from_u128(2),
        }
    }

    fn event_json() -> Vec<u8> {
        serde_json::json!({
            "id": Uuid::new_v4(), "occurred": "2024-05-01T10:00:00Z", "event": "prefect.flow-run.Running",
            "resource": {"prefect.resource.id": "prefect.flow-run.1"}
        })
        .to_string()
        .into_bytes()
    }

    fn now() -> DateTime<Utc> {
        "2024-05-01T12:00:00Z".parse().unwrap()
    }

    fn headers(envelope: &Envelope) -> OwnedHeaders {
        envelope.headers()
    }

    #[test]
    fn the_tenant_comes_from_the_headers_and_received_falls_back_to_the_kafka_timestamp() {
        let envelope = Envelope {
            tenant: tenant(),
            received: None,
        };
        let owned = headers(&envelope);
        let row = decode(
            Stream::Events,
            Some(&event_json()),
            Some(owned.as_borrowed()),
            Timestamp::CreateTime(1_714_557_600_123),
            &Limits::default(),
            now(),
        )
        .unwrap();
        let Row::Event(row) = row else {
            panic!("an event row")
        };
        assert_eq!(
            (row.account_id, row.workspace_id),
            (tenant().account_id, tenant().workspace_id)
        );
        assert_eq!(row.received.timestamp_millis(), 1_714_557_600_123);
    }

    #[test]
    fn missing_headers_and_values_are_refused_with_a_reason() {
        let refusal = decode(
            Stream::Events,
            Some(&event_json()),
            None,
            Timestamp::NotAvailable,
            &Limits::default(),
            now(),
        )
        .unwrap_err();
        assert_eq!(refusal.kind, DeadLetterKind::BadHeaders);
        assert_eq!(refusal.reason, "account_id: header is missing");

        let owned = OwnedHeaders::new()
            .insert(Header {
                key: "account_id",
                value: Some(&tenant().account_id.to_string()),
            })
            .insert(Header {
                key: "workspace_id",
                value: Some(&tenant().workspace_id.to_string()),
            });
        let refusal = decode(
            Stream::Logs,
            None,
            Some(owned.as_borrowed()),
            Timestamp::NotAvailable,
            &Limits::default(),
            now(),
        )
        .unwrap_err();
        assert_eq!(refusal.kind, DeadLetterKind::NoValue);
    }

    #[test]
    fn an_event_on_the_logs_topic_is_refused_as_a_log() {
        let envelope = Envelope {
            tenant: tenant(),
            received: Some(now()),
        };
        let owned = headers(&envelope);
        let refusal = decode(
            Stream::Logs,
            Some(&event_json()),
            Some(owned.as_borrowed()),
            Timestamp::NotAvailable,
            &Limits::default(),
            now(),
        )
        .unwrap_err();
        assert_eq!(refusal.kind, DeadLetterKind::Invalid);
        assert!(
            refusal.reason.contains("name: is required"),
            "{}",
            refusal.reason
        );
    }
}
