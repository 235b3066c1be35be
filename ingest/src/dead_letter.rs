//! Messages the ingest service cannot store go to the dead-letter topic with their original key,
//! value and headers, plus headers saying why and where they came from. A poison message never
//! stalls its partition: it is delivered here and the partition moves on.

use std::time::Duration;

use flowhouse_schema::contract::header;
use futures::future::try_join_all;
use rdkafka::Message;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use flowhouse_schema::decode::Refusal;

/// A refused message, kept until its delivery to the dead-letter topic is acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub refusal: Refusal,
}

impl DeadLetter {
    pub fn from_message(message: &BorrowedMessage<'_>, refusal: Refusal) -> Self {
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers,
            source_topic: message.topic().to_string(),
            source_partition: message.partition(),
            source_offset: message.offset(),
            refusal,
        }
    }

    pub fn size(&self) -> usize {
        64 + self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + self.refusal.reason.len()
    }

    /// The original headers followed by the dead-letter ones.
    fn headers(&self) -> OwnedHeaders {
        let mut headers = OwnedHeaders::new_with_capacity(self.headers.len() + 5);
        for (key, value) in &self.headers {
            headers = headers.insert(Header {
                key,
                value: value.as_deref(),
            });
        }
        let partition = self.source_partition.to_string();
        let offset = self.source_offset.to_string();
        for (key, value) in [
            (header::DLQ_REASON, self.refusal.reason.as_str()),
            (header::DLQ_KIND, self.refusal.kind.as_str()),
            (header::DLQ_SOURCE_TOPIC, self.source_topic.as_str()),
            (header::DLQ_SOURCE_PARTITION, partition.as_str()),
            (header::DLQ_SOURCE_OFFSET, offset.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        headers
    }
}

/// Produces dead letters; idempotent and acknowledged by all in-sync replicas.
#[derive(Clone)]
pub struct DeadLetterProducer {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetterProducer {
    pub fn new(producer: FutureProducer, topic: String) -> Self {
        Self { producer, topic }
    }

    /// Delivers every letter; an error means at least one was not acknowledged (the caller
    /// retries the whole set: a duplicate in the dead-letter topic beats a lost one).
    pub async fn deliver_all(&self, letters: &[DeadLetter]) -> anyhow::Result<()> {
        let deliveries = letters.iter().map(|letter| async move {
            let mut record = FutureRecord::to(&self.topic).headers(letter.headers());
            if let Some(key) = &letter.key {
                record = record.key(key);
            }
            if let Some(value) = &letter.value {
                record = record.payload(value);
            }
            self.producer
                .send(record, Duration::from_secs(30))
                .await
                .map(|_| ())
                .map_err(|(error, _)| anyhow::anyhow!("dead-letter delivery failed: {error}"))
        });
        try_join_all(deliveries).await.map(|_| ())
    }
}
