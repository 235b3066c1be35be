//! The Kafka driver against the stack's broker (`KAFKA_BROKERS`): every message is delivered
//! once, to the events or logs topic, keyed by workspace, with the tenant in the headers, in
//! generation order per tenant. Uses topics of its own, deleted at the end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{Duration as Span, TimeZone, Utc};
use flowhouse_loadtest::drive::DriveOptions;
use flowhouse_loadtest::drive::kafka::produce;
use flowhouse_loadtest::measure::Progress;
use flowhouse_loadtest::workload::{Message, Workload, WorkloadConfig};
use flowhouse_schema::Tenant;
use flowhouse_schema::contract::{Envelope, TopicArgs};
use flowhouse_schema::event::{Limits, parse_event};
use flowhouse_schema::log::parse_log;
use flowhouse_service::kafka::ensure_topics;
use flowhouse_tests::{Stack, unique_name};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::{Offset, TopicPartitionList};

fn config() -> WorkloadConfig {
    let start = Utc.with_ymd_and_hms(2024, 5, 1, 0, 0, 0).unwrap();
    WorkloadConfig {
        tenants: 4,
        runs: 40,
        max_tasks: 15,
        duplicate_rate: 0.03,
        ..WorkloadConfig::new(11, start, start + Span::days(2))
    }
}

/// Reads every message of the topics from the beginning, until `count` were read (or a minute
/// passed, which the caller's assertion on the count then reports).
fn read_all(
    stack: &Stack,
    topics: &[&str],
    count: usize,
) -> Vec<(String, Tenant, String, Vec<u8>)> {
    let consumer: BaseConsumer = stack
        .kafka
        .config()
        .unwrap()
        .set("group.id", unique_name("loadtest_reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        for partition in metadata.topics()[0].partitions() {
            assignment
                .add_partition_offset(topic, partition.id(), Offset::Beginning)
                .unwrap();
        }
    }
    consumer.assign(&assignment).unwrap();
    let mut read = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while read.len() < count && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.unwrap();
        let envelope = Envelope::from_headers(message.headers()).unwrap();
        assert!(
            message
                .headers()
                .unwrap()
                .iter()
                .all(|h| h.key != "received"),
            "the generator leaves `received` to the broker's timestamp"
        );
        let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
        assert_eq!(key, envelope.key());
        read.push((
            message.topic().to_string(),
            envelope.tenant,
            key,
            message.payload().unwrap().to_vec(),
        ));
    }
    read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produced_messages_follow_the_kafka_contract() {
    let stack = Stack::from_env();
    let topics = TopicArgs {
        events_topic: unique_name("loadtest_events"),
        logs_topic: unique_name("loadtest_logs"),
        dlq_topic: unique_name("loadtest_dlq"),
        topic_partitions: 3,
    };
    ensure_topics(&stack.kafka, &topics.specs()).await.unwrap();
    let all: Vec<Message> = Workload::new(config()).unwrap().collect();
    let limit = 3_000.min(all.len() - 1);
    let (kafka, producer_topics) = (stack.kafka.clone(), topics.clone());
    let (stats, truth) = tokio::task::spawn_blocking(move || {
        let mut workload = Workload::new(config()).unwrap();
        let options = DriveOptions {
            max_messages: Some(limit as u64),
            ..DriveOptions::default()
        };
        let stats = produce(
            &mut workload,
            &kafka,
            &producer_topics,
            &options,
            &Progress::hidden(),
        )
        .unwrap();
        (stats, workload.into_truth())
    })
    .await
    .unwrap();
    assert_eq!(stats.messages_sent, limit as u64);
    assert_eq!(stats.messages_acked, limit as u64, "{:?}", stats.errors);
    assert_eq!(stats.messages_failed, 0);
    assert!(stats.ack_rate > 0.0);
    let duplicates: u64 = truth.tenants.iter().map(|t| t.duplicates_sent).sum();
    assert_eq!(truth.events() + truth.logs() + duplicates, limit as u64);

    // The topics stay (unique names; the test stack goes at the end): on the shared test broker,
    // tansu 0.6's SQLite storage panicked in its idempotent-produce check when this test's
    // DeleteTopic raced another test's produce, and every later test lost the broker.
    let read = read_all(&stack, &[&topics.events_topic, &topics.logs_topic], limit);
    assert_eq!(read.len(), limit, "every message delivered");

    // Per tenant and topic, the messages in the order they were generated.
    let mut sent: BTreeMap<(String, Tenant), Vec<Vec<u8>>> = BTreeMap::new();
    for message in &all[..limit] {
        let topic = if message.is_event() {
            &topics.events_topic
        } else {
            &topics.logs_topic
        };
        sent.entry((topic.clone(), message.tenant))
            .or_default()
            .push(message.json());
    }
    let mut received: BTreeMap<(String, Tenant), Vec<Vec<u8>>> = BTreeMap::new();
    for (topic, tenant, key, payload) in read {
        assert_eq!(key, tenant.workspace_id.to_string());
        if topic == topics.events_topic {
            parse_event(&payload, &Limits::default(), config().end).unwrap();
        } else {
            parse_log(&payload, &Limits::default(), config().end).unwrap();
        }
        received.entry((topic, tenant)).or_default().push(payload);
    }
    assert!(sent.len() >= 4, "several tenants on both topics");
    assert!(received == sent, "messages differ or are out of order");
}
