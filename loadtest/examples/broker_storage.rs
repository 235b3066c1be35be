//! How the broker's storage holds up as its topics grow: produces `--max-messages` more of the
//! load generator's workload into the events and logs topics (as `flowhouse loadtest drive
//! --target kafka` does), then, on the grown topics, times what a new consumer group does first
//! (`ListOffsets` of every partition, the first message from the earliest offset) and the
//! consume-and-discard drain rate of the newest `--drain` messages (the `run` report's broker
//! baseline). One JSON object on stdout.
//!
//! ```sh
//! eval "$(FLOWHOUSE_KAFKA_STORAGE=postgres deploy/local/stack up)"
//! cargo run --release -p flowhouse-loadtest --example broker_storage -- \
//!     --events 100000 --max-messages 100000 --drain 100000 --seed 1
//! ```
//!
//! Call it again with another `--seed` to grow the same topics; `--produce-only` skips the reads
//! (for tansu's memory storage, which is not a correct consumer-group broker).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use flowhouse_loadtest::WorkloadArgs;
use flowhouse_loadtest::drive::{self, DriveOptions};
use flowhouse_loadtest::measure::Progress;
use flowhouse_loadtest::run::baselines::broker::{Offsets, drain, watermarks};
use flowhouse_loadtest::workload::Workload;
use flowhouse_schema::contract::TopicArgs;
use flowhouse_service::kafka::{KafkaArgs, ensure_topics};
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use serde_json::json;

#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    topics: TopicArgs,
    #[command(flatten)]
    workload: WorkloadArgs,
    /// Read back at most this many of the newest messages [default: all this call produced].
    #[arg(long)]
    drain: Option<u64>,
    /// Produce only: no consumer group, no drain.
    #[arg(long)]
    produce_only: bool,
}

fn total(offsets: &Offsets) -> i64 {
    offsets.0.values().sum()
}

/// The newest `count` messages of `[before, after)`, taken from each partition in proportion.
fn newest(before: &Offsets, after: &Offsets, count: u64) -> Offsets {
    let produced = (total(after) - total(before)).max(1) as f64;
    let share = (count as f64 / produced).min(1.0);
    Offsets(
        after
            .0
            .iter()
            .map(|(key, &end)| {
                let start = before.0.get(key).copied().unwrap_or(0);
                let take = ((end - start) as f64 * share).round() as i64;
                (key.clone(), end - take)
            })
            .collect(),
    )
}

/// A new group, as a new ingest deployment starts: the time its `ListOffsets` answers take
/// (every partition, one after another) and the time from subscribing to its first message.
fn new_group(kafka: &KafkaArgs, topics: &[String]) -> anyhow::Result<serde_json::Value> {
    let group = format!("flowhouse-storage-{}", uuid::Uuid::new_v4().simple());
    let consumer: BaseConsumer = kafka
        .config()?
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .context("consumer")?;
    let mut list_offsets = Vec::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic.as_str()), Duration::from_secs(60))?;
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let started = Instant::now();
            consumer.fetch_watermarks(topic, partition.id(), Duration::from_secs(120))?;
            list_offsets.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let started = Instant::now();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names)?;
    let deadline = started + Duration::from_secs(300);
    let first_message_ms = loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no message for a new group within 300 s"
        );
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message?;
            let _ = message.payload();
            break started.elapsed().as_secs_f64() * 1000.0;
        }
    };
    list_offsets.sort_by(f64::total_cmp);
    Ok(json!({
        "list_offsets_requests": list_offsets.len(),
        "list_offsets_max_ms": list_offsets.last().copied().unwrap_or(0.0),
        "list_offsets_median_ms": list_offsets.get(list_offsets.len() / 2).copied().unwrap_or(0.0),
        "list_offsets_total_ms": list_offsets.iter().sum::<f64>(),
        "first_message_ms": first_message_ms,
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let topics = [
        args.topics.events_topic.as_str(),
        args.topics.logs_topic.as_str(),
    ];
    ensure_topics(&args.kafka, &args.topics.specs()).await?;
    let before = watermarks(&args.kafka, &topics)?;

    let mut workload = Workload::new(args.workload.window_config()?)?;
    let options = DriveOptions {
        max_messages: args.workload.max_messages,
        ..DriveOptions::default()
    };
    let (kafka, topic_args) = (args.kafka.clone(), args.topics.clone());
    let stats = tokio::task::spawn_blocking(move || {
        drive::kafka::produce(
            &mut workload,
            &kafka,
            &topic_args,
            &options,
            &Progress::new(false),
        )
    })
    .await??;
    anyhow::ensure!(
        stats.messages_failed == 0,
        "{} messages failed: {:?}",
        stats.messages_failed,
        stats.errors
    );
    let after = watermarks(&args.kafka, &topics)?;
    let mut report = json!({
        "stored": total(&after),
        "produced": stats.messages_acked,
        "produce_per_sec": stats.ack_rate,
        "produce_bytes": stats.bytes_sent,
    });
    if !args.produce_only {
        let (kafka, names) = (args.kafka.clone(), topics.map(String::from).to_vec());
        let group = tokio::task::spawn_blocking(move || new_group(&kafka, &names)).await??;
        report["new_group"] = group;
        let from = newest(&before, &after, args.drain.unwrap_or(stats.messages_acked));
        let kafka = args.kafka.clone();
        let (from_, after_) = (from.clone(), after.clone());
        let rate = tokio::task::spawn_blocking(move || drain(&kafka, &from_, &after_)).await??;
        report["drained"] = json!(rate.items);
        report["drain_per_sec"] = json!(rate.per_sec);
        report["drain_secs"] = json!(rate.secs);
        let per_partition: BTreeMap<String, i64> = after
            .0
            .iter()
            .map(|((topic, partition), end)| (format!("{topic}/{partition}"), *end))
            .collect();
        report["high_watermarks"] = json!(per_partition);
    }
    println!("{report}");
    Ok(())
}
