//! The broker's own speed for the run's messages: a fresh consumer reads exactly the offsets the
//! run produced (high watermarks before and after) and discards them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use flowhouse_service::kafka::KafkaArgs;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Message as _, Offset, TopicPartitionList};

use super::Rate;

/// High watermark per (topic, partition).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Offsets(pub BTreeMap<(String, i32), i64>);

fn consumer(kafka: &KafkaArgs) -> anyhow::Result<BaseConsumer> {
    let group = format!("flowhouse-loadtest-drain-{}", uuid::Uuid::new_v4().simple());
    kafka
        .config()?
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .context("cannot create a Kafka consumer")
}

/// The end of every partition of `topics`. Blocking.
pub fn watermarks(kafka: &KafkaArgs, topics: &[&str]) -> anyhow::Result<Offsets> {
    let consumer = consumer(kafka)?;
    let mut offsets = Offsets::default();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(30))
            .with_context(|| format!("cannot read the metadata of {topic}"))?;
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let (_, high) = consumer
                .fetch_watermarks(topic, partition.id(), Duration::from_secs(30))
                .with_context(|| {
                    format!("cannot read the offsets of {topic}/{}", partition.id())
                })?;
            offsets.0.insert((topic.to_string(), partition.id()), high);
        }
    }
    Ok(offsets)
}

/// Reads `[from, to)` of every partition and discards it; the rate from the first fetch to
/// the last message. Blocking.
pub fn drain(kafka: &KafkaArgs, from: &Offsets, to: &Offsets) -> anyhow::Result<Rate> {
    let consumer = consumer(kafka)?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for ((topic, partition), &end) in &to.0 {
        let start = from
            .0
            .get(&(topic.clone(), *partition))
            .copied()
            .unwrap_or(0);
        if end > start {
            assignment.add_partition_offset(topic, *partition, Offset::Offset(start))?;
            remaining.insert((topic.clone(), *partition), end);
        }
    }
    let expected: i64 = remaining
        .iter()
        .map(|(key, end)| end - from.0.get(key).copied().unwrap_or(0))
        .sum();
    consumer.assign(&assignment)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(900);
    let (mut read, mut bytes) = (0u64, 0u64);
    while !remaining.is_empty() {
        if Instant::now() >= deadline {
            bail!("the broker drain read {read} of {expected} messages in 900 s");
        }
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message.context("the broker drain failed")?;
        let key = (message.topic().to_string(), message.partition());
        let Some(&end) = remaining.get(&key) else {
            continue;
        };
        if message.offset() < end {
            read += 1;
            // Touch the payload, as a consumer that decodes would.
            bytes += message.payload().map_or(0, <[u8]>::len) as u64;
        }
        if message.offset() + 1 >= end {
            remaining.remove(&key);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    tracing::debug!(read, bytes, secs, "broker drain");
    Ok(Rate::new(read, secs))
}
