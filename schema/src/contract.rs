//! The Kafka message contract, defined once for every producer (the ingestion endpoint, the load
//! generator, anyone writing to Kafka directly) and the consumer (ingest).
//!
//! | topic (default)     | key            | value                         | headers |
//! |---------------------|----------------|-------------------------------|---------|
//! | `flowhouse.events`  | workspace id   | one event, JSON (Prefect)     | `account_id`, `workspace_id`, optional `received` |
//! | `flowhouse.logs`    | workspace id   | one log line, JSON (Prefect)  | same |
//! | `flowhouse.dlq`     | original key   | original value, unchanged     | original headers + `flowhouse.dlq.*` |
//!
//! The tenant is in the headers, never taken from the value. `received` is RFC 3339; when a
//! producer leaves it out, the message's Kafka timestamp is used.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::message::{BorrowedHeaders, Header, Headers, OwnedHeaders};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::validate::Problem;

pub const EVENTS_TOPIC: &str = "flowhouse.events";
pub const LOGS_TOPIC: &str = "flowhouse.logs";
pub const DLQ_TOPIC: &str = "flowhouse.dlq";

/// The topics, as flags shared by every service that produces or consumes them.
#[derive(clap::Args, Clone, Debug)]
pub struct TopicArgs {
    /// Topic of events.
    #[arg(long, env = "FLOWHOUSE_EVENTS_TOPIC", default_value = EVENTS_TOPIC)]
    pub events_topic: String,
    /// Topic of log lines.
    #[arg(long, env = "FLOWHOUSE_LOGS_TOPIC", default_value = LOGS_TOPIC)]
    pub logs_topic: String,
    /// Dead-letter topic: messages the ingest service refused, with the reason in headers.
    #[arg(long, env = "FLOWHOUSE_DLQ_TOPIC", default_value = DLQ_TOPIC)]
    pub dlq_topic: String,
    /// Partitions of the topics when a service has to create them.
    #[arg(long, env = "FLOWHOUSE_TOPIC_PARTITIONS", default_value_t = 6)]
    pub topic_partitions: i32,
}

impl TopicArgs {
    /// The three topics as they should exist.
    pub fn specs(&self) -> Vec<flowhouse_service::kafka::TopicSpec> {
        [&self.events_topic, &self.logs_topic, &self.dlq_topic]
            .into_iter()
            .map(|name| flowhouse_service::kafka::TopicSpec {
                name: name.clone(),
                partitions: self.topic_partitions,
            })
            .collect()
    }
}

/// Header names.
pub mod header {
    pub const ACCOUNT_ID: &str = "account_id";
    pub const WORKSPACE_ID: &str = "workspace_id";
    pub const RECEIVED: &str = "received";
    /// Why the message was dead-lettered, in words (`resource["prefect.resource.id"]: is required`).
    pub const DLQ_REASON: &str = "flowhouse.dlq.reason";
    /// `not_json`, `too_large`, `invalid` or `bad_headers`.
    pub const DLQ_KIND: &str = "flowhouse.dlq.kind";
    pub const DLQ_SOURCE_TOPIC: &str = "flowhouse.dlq.source.topic";
    pub const DLQ_SOURCE_PARTITION: &str = "flowhouse.dlq.source.partition";
    pub const DLQ_SOURCE_OFFSET: &str = "flowhouse.dlq.source.offset";
}

/// Who an event belongs to. Always taken from an authenticated key (at the endpoint) or the
/// message headers (in Kafka), never from an event's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Tenant {
    pub account_id: Uuid,
    pub workspace_id: Uuid,
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.account_id, self.workspace_id)
    }
}

/// What travels beside a message's value: its tenant and when Flowhouse received it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub tenant: Tenant,
    pub received: Option<DateTime<Utc>>,
}

impl Envelope {
    /// The message key: the workspace id, so that one workspace's messages stay in order on
    /// one partition.
    pub fn key(&self) -> String {
        self.tenant.workspace_id.to_string()
    }

    pub fn headers(&self) -> OwnedHeaders {
        let account = self.tenant.account_id.to_string();
        let workspace = self.tenant.workspace_id.to_string();
        let mut headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header {
                key: header::ACCOUNT_ID,
                value: Some(&account),
            })
            .insert(Header {
                key: header::WORKSPACE_ID,
                value: Some(&workspace),
            });
        if let Some(received) = self.received {
            let received = received.to_rfc3339_opts(SecondsFormat::Micros, true);
            headers = headers.insert(Header {
                key: header::RECEIVED,
                value: Some(&received),
            });
        }
        headers
    }

    /// Reads the envelope from a consumed message's headers.
    pub fn from_headers(headers: Option<&BorrowedHeaders>) -> Result<Self, Problem> {
        let get = |name: &str| -> Option<&[u8]> {
            headers?
                .iter()
                .filter(|h| h.key == name)
                .last()
                .and_then(|h| h.value)
        };
        let uuid = |name: &str| -> Result<Uuid, Problem> {
            let value = get(name).ok_or_else(|| Problem::new(name, "header is missing"))?;
            std::str::from_utf8(value)
                .ok()
                .and_then(|text| Uuid::parse_str(text).ok())
                .ok_or_else(|| Problem::new(name, "header is not a UUID"))
        };
        let tenant = Tenant {
            account_id: uuid(header::ACCOUNT_ID)?,
            workspace_id: uuid(header::WORKSPACE_ID)?,
        };
        let received = match get(header::RECEIVED) {
            None => None,
            Some(value) => Some(
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
                    .map(|at| at.with_timezone(&Utc))
                    .ok_or_else(|| {
                        Problem::new(header::RECEIVED, "header is not an RFC 3339 timestamp")
                    })?,
            ),
        };
        Ok(Self { tenant, received })
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Message, OwnedMessage, Timestamp};

    use super::*;

    fn roundtrip(headers: OwnedHeaders) -> Result<Envelope, Problem> {
        let message = OwnedMessage::new(
            None,
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(headers),
        );
        let borrowed = message.headers().map(|h| h.as_borrowed());
        Envelope::from_headers(borrowed)
    }

    #[test]
    fn headers_round_trip() {
        let envelope = Envelope {
            tenant: Tenant {
                account_id: Uuid::new_v4(),
                workspace_id: Uuid::new_v4(),
            },
            received: Some(Utc::now().with_nanosecond_truncated()),
        };
        assert_eq!(roundtrip(envelope.headers()), Ok(envelope));
        assert_eq!(envelope.key(), envelope.tenant.workspace_id.to_string());
    }

    #[test]
    fn missing_or_malformed_tenant_headers_are_named() {
        let only_account = OwnedHeaders::new().insert(Header {
            key: header::ACCOUNT_ID,
            value: Some(&Uuid::new_v4().to_string()),
        });
        assert_eq!(
            roundtrip(only_account.clone()),
            Err(Problem::new("workspace_id", "header is missing"))
        );
        let bad = only_account.insert(Header {
            key: header::WORKSPACE_ID,
            value: Some("workspace-7"),
        });
        assert_eq!(
            roundtrip(bad),
            Err(Problem::new("workspace_id", "header is not a UUID"))
        );
    }

    trait Truncate {
        fn with_nanosecond_truncated(self) -> Self;
    }
    impl Truncate for DateTime<Utc> {
        fn with_nanosecond_truncated(self) -> Self {
            use chrono::Timelike;
            self.with_nanosecond(self.nanosecond() / 1000 * 1000)
                .unwrap()
        }
    }
}
