//! End-to-end ingest throughput on a live stack: messages/s from Kafka into ClickHouse through the
//! real `flowhouse ingest` process, beside the broker's consume-and-discard rate measured in the
//! same run on the same topics, so that the figure reads as a ratio whatever the machine.
//!
//! 1. Creates unique topics and produces N messages of the load generator's workload (flow-run
//!    events, task-run events and log lines of the last hour, several tenants) with its Kafka
//!    driver.
//! 2. Baseline: the load test's broker drain (`flowhouse_loadtest::run::baselines::broker`, the
//!    one consume-and-discard implementation of the workspace) reads exactly the offsets
//!    produced and discards them.
//! 3. `flowhouse migrate` creates a fresh database; `flowhouse ingest` (the binary of this
//!    program's profile, rebuilt first) drains the same topics into it: timed from its start
//!    until `count()` of events plus logs equals N.
//! 4. The baseline again (the machine drifts), then both rates and the ratio of ingest to the
//!    mean baseline, as text on stderr and as one JSON object on stdout.
//!
//! ```sh
//! eval "$(deploy/local/stack up)"
//! cargo run --release -p flowhouse-ingest --example throughput               # 100 000 messages
//! cargo run --release -p flowhouse-ingest --example throughput -- --messages 50000
//! ```
//!
//! `FLOWHOUSE_THROUGHPUT_MESSAGES` also sets N, `--partitions` the partitions per topic. The
//! ingest process inherits the environment, so its own variables (`FLOWHOUSE_INGEST_BATCH_MAX_AGE`,
//! ...) tune it; otherwise it runs with its defaults. The database is dropped at the end; the
//! topics are deleted when the broker allows it.
//!
//! On the local stack, read the baseline first: tansu 0.6's SQLite storage has no index on its
//! `header` table, so every fetch scans all stored headers and consume rates fall as the broker
//! holds more messages (10 000 messages: about 450 msg/s with a few tens of thousands stored,
//! 11 000 msg/s with the index; 100 000 did not drain in 10 minutes without it). Run
//! `CREATE INDEX header_record ON header (topition, offset_id)` in the stack's `kafka/tansu.db`
//! for figures about ingest rather than about the broker.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use flowhouse_loadtest::drive::{DriveOptions, DriveStats, kafka::produce};
use flowhouse_loadtest::measure::Progress;
use flowhouse_loadtest::run::baselines::{Rate, broker};
use flowhouse_loadtest::workload::{Workload, WorkloadConfig, runs_for_messages};
use flowhouse_schema::contract::TopicArgs;
use flowhouse_service::clickhouse::ClickHouseArgs;
use flowhouse_service::kafka::{KafkaArgs, ensure_topics};
use flowhouse_tests::{Stack, free_port, unique_name, workspace_root};
use rdkafka::admin::{AdminClient, AdminOptions};
use serde_json::json;

/// How long any stage may take before the run is declared stuck (a liveness bound).
const STAGE_LIMIT: Duration = Duration::from_secs(900);
/// How long the row count may stay still while ingest runs before giving up.
const STALL_LIMIT: Duration = Duration::from_secs(120);

#[derive(Parser, Debug)]
struct Args {
    /// Messages to produce and ingest.
    #[arg(long, env = "FLOWHOUSE_THROUGHPUT_MESSAGES", default_value_t = 100_000)]
    messages: u64,
    /// Partitions of each topic (the service's default is 6).
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Workload seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// One timed drain: seconds until the first message or row, and until the last.
#[derive(Clone, Copy, Debug)]
struct Drain {
    first: f64,
    all: f64,
}

impl Drain {
    fn json(&self, messages: u64) -> serde_json::Value {
        json!({
            "seconds": self.all,
            "msgs_per_s": messages as f64 / self.all,
            "seconds_to_first": self.first,
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut stack = Stack::from_env();
    // The ingest process reads KAFKA_PROPERTIES itself; the baseline must use the same ones.
    stack.kafka.properties = std::env::var("KAFKA_PROPERTIES")
        .map(|properties| properties.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let binary = build_flowhouse()?;
    let topics = TopicArgs {
        events_topic: unique_name("throughput_events"),
        logs_topic: unique_name("throughput_logs"),
        dlq_topic: unique_name("throughput_dlq"),
        topic_partitions: args.partitions,
    };
    ensure_topics(&stack.kafka, &topics.specs()).await?;

    eprintln!(
        "producing {} messages to {}",
        args.messages, stack.kafka.brokers
    );
    let stats = produce_workload(&stack.kafka, &topics, args.messages, args.seed).await?;
    ensure!(
        stats.messages_failed == 0,
        "{} messages were not acknowledged: {:?}",
        stats.messages_failed,
        stats.errors
    );
    let n = stats.messages_acked;
    eprintln!(
        "produced {n} ({} events, {} log lines, {:.0} bytes each on average) at {:.0} msg/s",
        stats.events_sent,
        stats.logs_sent,
        stats.bytes_sent as f64 / n as f64,
        stats.ack_rate
    );

    let progress = Progress::new(true);
    let before = consume_and_discard(&stack.kafka, &topics).await?;
    ensure!(before.items == n, "the drain read {} of {n}", before.items);
    eprintln!(
        "consume and discard: {:.1} s, {:.0} msg/s",
        before.secs, before.per_sec
    );
    let database = unique_name("throughput");
    let ingest = ingest(&binary, &stack, &topics, &database, n, &progress).await;
    let after = consume_and_discard(&stack.kafka, &topics).await?;
    eprintln!(
        "consume and discard again: {:.1} s, {:.0} msg/s",
        after.secs, after.per_sec
    );
    cleanup(&stack, &topics, &database).await;
    let ingest = ingest?;

    let baseline_rate = (before.per_sec + after.per_sec) / 2.0;
    let ingest_rate = n as f64 / ingest.all;
    eprintln!(
        "flowhouse ingest: {:.1} s, {ingest_rate:.0} msg/s; ratio to consume-and-discard {:.3}",
        ingest.all,
        ingest_rate / baseline_rate
    );
    let report = json!({
        "messages": n,
        "events": stats.events_sent,
        "logs": stats.logs_sent,
        "bytes": stats.bytes_sent,
        "partitions": args.partitions,
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
        "produce_msgs_per_s": stats.ack_rate,
        "consume_discard_before": {"seconds": before.secs, "msgs_per_s": before.per_sec},
        "consume_discard_after": {"seconds": after.secs, "msgs_per_s": after.per_sec},
        "consume_discard_msgs_per_s": baseline_rate,
        "ingest": ingest.json(n),
        "ingest_msgs_per_s": ingest_rate,
        "ratio_ingest_to_consume_discard": ingest_rate / baseline_rate,
    });
    println!("{report}");
    Ok(())
}

/// Produces the first `messages` of the load generator's workload over the last hour with its
/// Kafka driver (the message contract, `acks=all`), waiting for every acknowledgement.
async fn produce_workload(
    kafka: &KafkaArgs,
    topics: &TopicArgs,
    messages: u64,
    seed: u64,
) -> anyhow::Result<DriveStats> {
    let (kafka, topics) = (kafka.clone(), topics.clone());
    tokio::task::spawn_blocking(move || {
        let end = chrono::Utc::now();
        let mut config = WorkloadConfig::new(seed, end - chrono::Duration::hours(1), end);
        // Runs still going at the end of the window are cut short, and only the first
        // `messages` are generated: plan twice as many.
        config.runs = runs_for_messages(&config, messages * 2);
        let mut workload = Workload::new(config)?;
        let options = DriveOptions {
            rate: None,
            max_messages: Some(messages),
            duration: None,
            realtime: false,
        };
        produce(
            &mut workload,
            &kafka,
            &topics,
            &options,
            &Progress::new(true),
        )
    })
    .await?
}

/// Builds the `flowhouse` binary of this program's profile, so that the run never measures a
/// stale build; `FLOWHOUSE_BIN` names a binary to use as it is instead.
fn build_flowhouse() -> anyhow::Result<PathBuf> {
    if let Some(binary) = std::env::var_os("FLOWHOUSE_BIN") {
        return Ok(binary.into());
    }
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .args(["build", "--quiet", "-p", "flowhouse", "--bin", "flowhouse"])
        .current_dir(workspace_root());
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    ensure!(
        command.status()?.success(),
        "cargo build -p flowhouse failed"
    );
    // This program is <target>/<profile>/examples/throughput; the binary <target>/<profile>.
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(|examples| examples.parent())
        .context("target dir")?;
    Ok(profile_dir.join("flowhouse"))
}

/// The broker's consume-and-discard rate for everything in the (fresh) topics: the load test's
/// drain of `[0, end)` of every partition. Blocking calls, on the blocking pool.
async fn consume_and_discard(kafka: &KafkaArgs, topics: &TopicArgs) -> anyhow::Result<Rate> {
    let (kafka, topics) = (kafka.clone(), topics.clone());
    tokio::task::spawn_blocking(move || {
        let ends = broker::watermarks(&kafka, &[&topics.events_topic, &topics.logs_topic])?;
        broker::drain(&kafka, &broker::Offsets::default(), &ends)
    })
    .await?
}

/// Migrates a fresh database, starts `flowhouse ingest` on the topics and waits for all `n` rows.
async fn ingest(
    binary: &PathBuf,
    stack: &Stack,
    topics: &TopicArgs,
    database: &str,
    n: u64,
    progress: &Progress,
) -> anyhow::Result<Drain> {
    let env = [
        ("CLICKHOUSE_URL", stack.clickhouse.url.clone()),
        ("CLICKHOUSE_USER", stack.clickhouse.user.clone()),
        ("CLICKHOUSE_PASSWORD", stack.clickhouse.password.clone()),
        ("CLICKHOUSE_DATABASE", database.to_string()),
        ("KAFKA_BROKERS", stack.kafka.brokers.clone()),
        ("FLOWHOUSE_EVENTS_TOPIC", topics.events_topic.clone()),
        ("FLOWHOUSE_LOGS_TOPIC", topics.logs_topic.clone()),
        ("FLOWHOUSE_DLQ_TOPIC", topics.dlq_topic.clone()),
        (
            "FLOWHOUSE_TOPIC_PARTITIONS",
            topics.topic_partitions.to_string(),
        ),
        ("FLOWHOUSE_INGEST_GROUP", unique_name("throughput_ingest")),
        (
            "FLOWHOUSE_INGEST_ADMIN_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        ),
        ("FLOWHOUSE_LOG_FORMAT", "text".into()),
    ];
    let migrate = Command::new(binary)
        .arg("migrate")
        .envs(env.clone())
        .output()?;
    ensure!(
        migrate.status.success(),
        "flowhouse migrate failed:\n{}",
        String::from_utf8_lossy(&migrate.stderr)
    );

    let log_dir = tempfile::tempdir()?;
    let log_path = log_dir.path().join("ingest.log");
    let log = std::fs::File::create(&log_path)?;
    let started = Instant::now();
    let mut child = Command::new(binary)
        .arg("ingest")
        .envs(env)
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()?;
    let bar = progress.counter("ingest", Some(n), "rows");
    let result = wait_for_rows(
        &stack.clickhouse,
        database,
        n,
        started,
        &mut child,
        |count| {
            bar.set_position(count);
        },
    )
    .await;
    bar.finish_and_clear();
    // SIGTERM: a clean stop; its drain is not part of the measurement.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait()?.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    result.map_err(|error| {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        error.context(format!("ingest log (last lines):\n{}", tail.join("\n")))
    })
}

async fn wait_for_rows(
    clickhouse: &ClickHouseArgs,
    database: &str,
    n: u64,
    started: Instant,
    child: &mut std::process::Child,
    on_count: impl Fn(u64),
) -> anyhow::Result<Drain> {
    let client = ClickHouseArgs {
        database: database.into(),
        ..clickhouse.clone()
    }
    .client();
    let (mut first, mut last_count, mut last_change) = (None, 0u64, Instant::now());
    let mut last_error = None;
    loop {
        // A failed count (ClickHouse busy) is retried; it is reported if the count stalls.
        let count = match client
            .query("SELECT sum(c) FROM (SELECT count() AS c FROM events UNION ALL SELECT count() FROM logs)")
            .fetch_one::<u64>()
            .await
        {
            Ok(count) => count,
            Err(error) => {
                last_error = Some(error);
                last_count
            }
        };
        let elapsed = started.elapsed();
        on_count(count);
        if count > 0 {
            first.get_or_insert(elapsed);
        }
        if count >= n {
            ensure!(count == n, "{count} rows for {n} messages: duplicates");
            return Ok(Drain {
                first: first.unwrap_or(elapsed).as_secs_f64(),
                all: elapsed.as_secs_f64(),
            });
        }
        if count != last_count {
            (last_count, last_change) = (count, Instant::now());
        }
        if let Some(status) = child.try_wait()? {
            bail!("flowhouse ingest exited ({status}) with {count} of {n} rows stored");
        }
        if last_change.elapsed() > STALL_LIMIT || elapsed > STAGE_LIMIT {
            bail!(
                "stuck at {count} of {n} rows after {:.0} s (last count error: {last_error:?})",
                elapsed.as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Drops the database and the topics; failures are reported, not fatal.
async fn cleanup(stack: &Stack, topics: &TopicArgs, database: &str) {
    if let Err(error) = stack
        .clickhouse
        .server_client()
        .query(&format!("DROP DATABASE IF EXISTS {database}"))
        .execute()
        .await
    {
        eprintln!("could not drop database {database}: {error}");
    }
    let deleted = async {
        let admin: AdminClient<_> = stack.kafka.config()?.create()?;
        let names = [
            topics.events_topic.as_str(),
            topics.logs_topic.as_str(),
            topics.dlq_topic.as_str(),
        ];
        for result in admin.delete_topics(&names, &AdminOptions::new()).await? {
            if let Err((topic, code)) = result {
                eprintln!("topic {topic} left on the broker: {code}");
            }
        }
        anyhow::Ok(())
    };
    if let Err(error) = deleted.await {
        eprintln!("could not delete the topics: {error}");
    }
}
