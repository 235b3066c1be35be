//! Messages the ingest service cannot store go to the dead-letter topic with their original key,
//! value and headers, plus headers saying why and where they came from. A poison message never
//! stalls its partition: it is delivered here and the partition moves on.
//!
//! Never stalling includes messages too large to produce again: the producer accepts the largest
//! event plus headers ([`producer_max_bytes`]), and a dead letter larger than that (the source
//! topic allowed a bigger message, which is exactly why it was refused) is cut to fit, with
//! [`DLQ_TRUNCATED`] saying how large its value was; if the dead-letter topic itself refuses it
//! as too large, it goes without its value (and, if still refused, without its key and original
//! headers). The dead-letter headers always say where the original is.

use std::borrow::Cow;
use std::time::Duration;

use flowhouse_schema::contract::header;
use futures::future::try_join_all;
use rdkafka::Message;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use flowhouse_schema::decode::Refusal;

/// Set on a dead letter whose value was cut to fit: the original value's size in bytes.
pub const DLQ_TRUNCATED: &str = "flowhouse.dlq.truncated";

/// Room for the key, headers and record framing beside the largest event.
const HEADROOM: usize = 64 * 1024;

/// The dead-letter producer's `message.max.bytes`: the largest event plus headers, and never
/// less than librdkafka's default (1 MB).
pub fn producer_max_bytes(max_event_bytes: usize) -> usize {
    (max_event_bytes + HEADROOM).max(1_000_000)
}

/// What librdkafka adds to a record beyond its key, value and headers, at most (record batch v2
/// framing, varints), with a margin.
const FRAMING: usize = 128;

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
    /// The original value's size, when the value was cut to fit ([`DeadLetter::fitted`]).
    pub truncated: Option<usize>,
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
            truncated: None,
        }
    }

    pub fn size(&self) -> usize {
        64 + self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + self.refusal.reason.len()
    }

    /// The letter as it can be produced under `max_bytes`: unchanged when it fits; otherwise its
    /// value cut (marked with [`DLQ_TRUNCATED`]), then without the original headers, then
    /// without its key, until it fits. The dead-letter headers always stay.
    pub fn fitted(&self, max_bytes: usize) -> Cow<'_, DeadLetter> {
        if self.wire_size() <= max_bytes {
            return Cow::Borrowed(self);
        }
        let mut letter = self.clone();
        let original = self.value.as_ref().map_or(0, Vec::len);
        letter.truncated = Some(original);
        letter.value = Some(Vec::new());
        if letter.wire_size() > max_bytes {
            letter.headers.clear();
        }
        if letter.wire_size() > max_bytes {
            letter.key = None;
        }
        let room = max_bytes.saturating_sub(letter.wire_size());
        if let Some(value) = &self.value {
            letter.value = Some(value[..room.min(value.len())].to_vec());
        }
        Cow::Owned(letter)
    }

    /// The letter with an empty value, marked with its original size.
    fn without_value(&self) -> DeadLetter {
        DeadLetter {
            value: Some(Vec::new()),
            truncated: Some(self.value.as_ref().map_or(0, Vec::len)),
            ..self.clone()
        }
    }

    /// An upper bound of what librdkafka counts against `message.max.bytes` for this letter.
    pub fn wire_size(&self) -> usize {
        let header = |key: &str, value: usize| key.len() + value + 10;
        let partition = self.source_partition.to_string();
        let offset = self.source_offset.to_string();
        let ours = [
            header(header::DLQ_REASON, self.refusal.reason.len()),
            header(header::DLQ_KIND, self.refusal.kind.as_str().len()),
            header(header::DLQ_SOURCE_TOPIC, self.source_topic.len()),
            header(header::DLQ_SOURCE_PARTITION, partition.len()),
            header(header::DLQ_SOURCE_OFFSET, offset.len()),
            self.truncated
                .map_or(0, |size| header(DLQ_TRUNCATED, size.to_string().len())),
        ];
        FRAMING
            + self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(key, value)| header(key, value.as_ref().map_or(0, Vec::len)))
                .sum::<usize>()
            + ours.iter().sum::<usize>()
    }

    /// The original headers followed by the dead-letter ones.
    fn headers(&self) -> OwnedHeaders {
        let mut headers = OwnedHeaders::new_with_capacity(self.headers.len() + 6);
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
        if let Some(size) = self.truncated {
            headers = headers.insert(Header {
                key: DLQ_TRUNCATED,
                value: Some(&size.to_string()),
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
    /// The producer's `message.max.bytes` ([`producer_max_bytes`]).
    max_bytes: usize,
}

impl DeadLetterProducer {
    pub fn new(producer: FutureProducer, topic: String, max_bytes: usize) -> Self {
        Self {
            producer,
            topic,
            max_bytes,
        }
    }

    /// Delivers every letter; an error means at least one was not acknowledged (the caller
    /// retries the whole set: a duplicate in the dead-letter topic beats a lost one). A letter
    /// never fails for its size: see the module's documentation.
    pub async fn deliver_all(&self, letters: &[DeadLetter]) -> anyhow::Result<()> {
        try_join_all(letters.iter().map(|letter| self.deliver(letter)))
            .await
            .map(|_| ())
    }

    async fn deliver(&self, letter: &DeadLetter) -> anyhow::Result<()> {
        let fitted = letter.fitted(self.max_bytes);
        if fitted.truncated.is_some() {
            tracing::warn!(
                topic = letter.source_topic,
                partition = letter.source_partition,
                offset = letter.source_offset,
                bytes = letter.wire_size(),
                max_bytes = self.max_bytes,
                "dead letter too large to produce: its value is cut to fit"
            );
        }
        let too_large = |result: &Result<(), KafkaError>| {
            matches!(
                result,
                Err(KafkaError::MessageProduction(
                    RDKafkaErrorCode::MessageSizeTooLarge
                ))
            )
        };
        let mut result = self.send(&fitted).await;
        if too_large(&result) {
            tracing::warn!(
                topic = letter.source_topic,
                partition = letter.source_partition,
                offset = letter.source_offset,
                dlq = self.topic,
                "the dead-letter topic refused the letter as too large (its max.message.bytes is \
                 below FLOWHOUSE_MAX_EVENT_BYTES plus headers): sending it without its value"
            );
            result = self.send(&letter.without_value()).await;
        }
        if too_large(&result) {
            // Even the original key and headers are too much: only where it came from is left.
            result = self.send(&letter.fitted(0)).await;
        }
        result.map_err(|error| anyhow::anyhow!("dead-letter delivery failed: {error}"))
    }

    async fn send(&self, letter: &DeadLetter) -> Result<(), KafkaError> {
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
            .map_err(|(error, _)| error)
    }
}

#[cfg(test)]
mod tests {
    use flowhouse_schema::DeadLetterKind;
    use rdkafka::ClientConfig;
    use rdkafka::producer::Producer as _;

    use super::*;

    fn letter(value_bytes: usize) -> DeadLetter {
        DeadLetter {
            key: Some(b"workspace".to_vec()),
            value: Some(vec![b'x'; value_bytes]),
            headers: vec![("account_id".into(), Some(b"a".to_vec()))],
            source_topic: "flowhouse.events".into(),
            source_partition: 3,
            source_offset: 42,
            refusal: Refusal {
                kind: DeadLetterKind::TooLarge,
                reason: "the event is larger than 100000 bytes".into(),
            },
            truncated: None,
        }
    }

    /// A producer that never reaches a broker: librdkafka checks `message.max.bytes` when a
    /// record is enqueued, so enqueueing tells whether a letter fits.
    fn producer(max_bytes: usize) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:9")
            .set("message.max.bytes", max_bytes.to_string())
            .create()
            .unwrap()
    }

    fn enqueue(producer: &FutureProducer, letter: &DeadLetter) -> Result<(), KafkaError> {
        let mut record = FutureRecord::to("dlq").headers(letter.headers());
        if let Some(key) = &letter.key {
            record = record.key(key);
        }
        if let Some(value) = &letter.value {
            record = record.payload(value);
        }
        producer
            .send_result(record)
            .map(drop)
            .map_err(|(error, _)| error)
    }

    #[test]
    fn the_producer_fits_the_largest_event_plus_headers() {
        assert_eq!(producer_max_bytes(1_500_000), 1_500_000 + HEADROOM);
        assert_eq!(producer_max_bytes(10_000), 1_000_000);
        let max = producer_max_bytes(1_500_000);
        let producer = producer(max);
        assert_eq!(enqueue(&producer, &letter(1_500_000)), Ok(()));
        producer.purge(rdkafka::producer::PurgeConfig::default().queue());
    }

    #[test]
    fn a_letter_too_large_is_cut_to_fit_and_marked() {
        let max = 100_000;
        let producer = producer(max);
        let large = letter(300_000);
        assert_eq!(
            enqueue(&producer, &large),
            Err(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageSizeTooLarge
            )),
            "as it is, librdkafka refuses it"
        );
        let fitted = large.fitted(max);
        assert_eq!(fitted.truncated, Some(300_000));
        let value = fitted.value.as_ref().unwrap();
        assert!(
            value.len() > 90_000 && value.len() < 100_000,
            "{}",
            value.len()
        );
        assert_eq!(fitted.key, large.key, "the key stays");
        assert_eq!(fitted.headers, large.headers, "the original headers stay");
        assert_eq!(enqueue(&producer, &fitted), Ok(()));
        let marker = fitted.headers();
        let marker = marker.iter().find(|h| h.key == DLQ_TRUNCATED).unwrap();
        assert_eq!(marker.value, Some(&b"300000"[..]));
        producer.purge(rdkafka::producer::PurgeConfig::default().queue());
    }

    #[test]
    fn a_letter_that_fits_is_unchanged_and_a_minimal_one_keeps_only_what_says_where_it_was() {
        let small = letter(1000);
        assert!(matches!(small.fitted(100_000), Cow::Borrowed(_)));
        let minimal = small.fitted(0);
        assert_eq!(minimal.value.as_deref(), Some(&[][..]));
        assert_eq!(minimal.truncated, Some(1000));
        assert!(minimal.headers.is_empty() && minimal.key.is_none());
        assert_eq!(minimal.source_offset, 42);
    }
}
