//! Straight into Kafka, as a service that already writes there would: an idempotent producer
//! with `acks=all`, one message per event or log line, keyed by workspace, the tenant in the
//! headers (`flowhouse_schema::contract`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use flowhouse_schema::contract::{Envelope, TopicArgs};
use flowhouse_service::kafka::KafkaArgs;
use rdkafka::ClientContext;
use rdkafka::config::FromClientConfigAndContext as _;
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use super::{DriveOptions, DriveStats, Paced, Sent, Tally};
use crate::measure::Progress;
use crate::workload::Message;

/// Producer settings the load generator uses unless `KAFKA_PROPERTIES` says otherwise. The
/// contract's own (`enable.idempotence`, `acks`) are always set.
const DEFAULTS: &[(&str, &str)] = &[
    ("linger.ms", "20"),
    ("batch.num.messages", "10000"),
    ("batch.size", "1000000"),
    ("queue.buffering.max.messages", "500000"),
    ("queue.buffering.max.kbytes", "1048576"),
    ("compression.type", "lz4"),
    ("message.timeout.ms", "300000"),
];

struct Delivery {
    tally: Arc<Tally>,
    events_topic: String,
}

impl ClientContext for Delivery {}

impl ProducerContext for Delivery {
    /// Microseconds from the start of the run to the send.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_at_us: usize) {
        match result {
            Ok(message) => {
                self.tally.ack(1);
                let now = self.tally.start.elapsed().as_micros() as usize;
                let route = if rdkafka::Message::topic(message) == self.events_topic {
                    "produce events"
                } else {
                    "produce logs"
                };
                self.tally.latency(
                    route,
                    Duration::from_micros(now.saturating_sub(sent_at_us) as u64),
                );
            }
            Err((error, _)) => self.tally.fail(1, format!("kafka: {error}")),
        }
    }
}

/// Produces what `source` yields (within `options`) and waits for every delivery report.
/// Blocking: call it from a blocking thread.
pub fn produce<I: Iterator<Item = Message>>(
    source: &mut I,
    kafka: &KafkaArgs,
    topics: &TopicArgs,
    options: &DriveOptions,
    progress: &Progress,
) -> anyhow::Result<DriveStats> {
    let mut config = kafka.config()?;
    for (key, value) in DEFAULTS {
        if config.get(key).is_none() {
            config.set(*key, *value);
        }
    }
    config.set("enable.idempotence", "true");
    config.set("acks", "all");
    let tally = Arc::new(Tally::new());
    let producer: ThreadedProducer<Delivery> = ThreadedProducer::from_config_and_context(
        &config,
        Delivery {
            tally: tally.clone(),
            events_topic: topics.events_topic.clone(),
        },
    )
    .with_context(|| format!("cannot create a Kafka producer for {}", kafka.brokers))?;

    let bar = progress.counter("produce", options.max_messages, "msgs");
    let mut sent = Sent::new(tally.start);
    let mut paced = Paced::new(source, options, tally.start);
    while let Some(message) = paced.next_blocking() {
        let value = message.json();
        let envelope = Envelope {
            tenant: message.tenant,
            received: None,
        };
        let key = envelope.key();
        let topic = if message.is_event() {
            &topics.events_topic
        } else {
            &topics.logs_topic
        };
        let sent_at = tally.start.elapsed().as_micros() as usize;
        let mut record = BaseRecord::with_opaque_to(topic, sent_at)
            .key(&key)
            .payload(&value)
            .headers(envelope.headers());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // librdkafka's queue is full: let its thread catch up.
                    record = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((error, _)) => {
                    tally.fail(1, format!("kafka: {error}"));
                    break;
                }
            }
        }
        sent.count(&message, value.len());
        bar.inc(1);
    }
    bar.set_message("waiting for the last delivery reports");
    let flushed = Instant::now();
    let deadline = Duration::from_secs(300);
    while producer.in_flight_count() > 0 && flushed.elapsed() < deadline {
        let _ = producer.flush(Duration::from_secs(1));
    }
    let in_flight = producer.in_flight_count();
    if in_flight > 0 {
        tally.fail(
            in_flight as u64,
            "kafka: no delivery report within 300 s of the last send",
        );
    }
    bar.finish_and_clear();
    drop(producer);
    Ok(tally.stats("kafka", options, &sent))
}
