//! CPU cost of the ingest path per message, for the load generator's realistic mix of flow-run
//! events, task-run events and log lines, beside a baseline measured in the same run:
//! `serde_json::from_slice::<serde_json::Value>` of the same bytes (the least any JSON consumer
//! does), so that the figures read as ratios whatever the machine.
//!
//! - `json_value` (the baseline): the value parsed into a `serde_json::Value`, nothing else;
//! - `decode`: what the consumer does per message, [`decode`]: tenant headers, parse, validate,
//!   build the row;
//! - `encode`: decoded rows, batched as the consumer batches them, through [`Sink::insert`]: the
//!   `clickhouse` crate's RowBinary serializer with its schema validation, LZ4 and the HTTP body,
//!   to an in-process server that discards them (`support/discard_clickhouse.rs`);
//! - `decode_batch_encode`: all of it, from Kafka value and headers to an acknowledged insert.
//!
//! Everything runs on one thread (a current-thread runtime, the discard server included), so
//! elapsed time is CPU time of that path. Kafka polling, the manifest and commits are not here:
//! `examples/throughput.rs` measures the service end to end.
//!
//! ```sh
//! cargo bench -p flowhouse-ingest --bench cpu
//! ```
//!
//! Criterion prints its report per benchmark (`thrpt` is messages/s); a summary follows with the
//! median messages/s of each and its ratio to the baseline.

#[path = "support/discard_clickhouse.rs"]
mod discard_clickhouse;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use criterion::{Criterion, SamplingMode, Throughput};
use flowhouse_ingest::batch::{Batch, BatchLimits, Item, PartitionBatcher};
use flowhouse_ingest::sink::Sink;
use flowhouse_loadtest::workload::{Workload, WorkloadConfig, runs_for_messages};
use flowhouse_schema::Envelope;
use flowhouse_schema::Stream;
use flowhouse_schema::decode::{Row, decode};
use flowhouse_schema::event::Limits;
use flowhouse_schema::rows::{EventRow, LogRow};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rdkafka::message::{OwnedHeaders, Timestamp};

// The allocator of the `flowhouse` binary (cli/src/main.rs), so that the figures are its.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Messages per iteration: one insert per table per iteration, about what a partition's batch
/// holds at a few thousand messages per second.
const MESSAGES: usize = 5_000;
const BASELINE: &str = "json_value";

/// One Kafka message as the consumer receives it.
struct Input {
    stream: Stream,
    value: Vec<u8>,
    headers: OwnedHeaders,
}

fn inputs(end: DateTime<Utc>) -> Vec<Input> {
    let mut config = WorkloadConfig::past_days(42, 1, end);
    config.runs = runs_for_messages(&config, MESSAGES as u64 * 2);
    let workload = Workload::new(config).expect("workload");
    workload
        .take(MESSAGES)
        .map(|message| {
            // The endpoint stamps `received` in the headers; parsing it is part of the path.
            let envelope = Envelope {
                tenant: message.tenant,
                received: Some(message.time()),
            };
            Input {
                stream: if message.is_event() {
                    Stream::Events
                } else {
                    Stream::Logs
                },
                value: message.json(),
                headers: envelope.headers(),
            }
        })
        .collect()
}

fn describe(inputs: &[Input]) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for input in inputs {
        let kind = match input.stream {
            Stream::Logs => "log lines",
            Stream::Events if input.value.windows(17).any(|w| w == b"prefect.task-run.") => {
                "task-run events"
            }
            Stream::Events => "flow-run events",
        };
        *counts.entry(kind).or_default() += 1;
    }
    let bytes: usize = inputs.iter().map(|input| input.value.len()).sum();
    println!(
        "{} messages per iteration, {} bytes on average: {counts:?}",
        inputs.len(),
        bytes / inputs.len()
    );
}

fn decode_one(input: &Input, limits: &Limits, now: DateTime<Utc>) -> Row {
    decode(
        input.stream,
        Some(&input.value),
        Some(input.headers.as_borrowed()),
        Timestamp::NotAvailable,
        limits,
        now,
    )
    .expect("the workload is valid")
}

/// Decoded rows in one batch per table, as the consumer forms them for one partition.
fn batches(rows: impl IntoIterator<Item = Row>) -> Vec<Batch> {
    let limits = BatchLimits {
        max_rows: usize::MAX,
        max_bytes: usize::MAX,
        max_age: Duration::from_secs(3600),
    };
    let now = Instant::now();
    let mut events = PartitionBatcher::new(Stream::Events, 0, None);
    let mut logs = PartitionBatcher::new(Stream::Logs, 0, None);
    for (offset, row) in rows.into_iter().enumerate() {
        let batcher = match row {
            Row::Event(_) => &mut events,
            Row::Log(_) => &mut logs,
        };
        batcher.push(offset as i64, Item::Row(row), &limits, now);
    }
    [events, logs]
        .into_iter()
        .filter_map(|mut batcher| {
            batcher.close_for_shutdown();
            batcher.take_closed()
        })
        .collect()
}

async fn insert(sink: &Sink, batches: &[Batch]) {
    for batch in batches {
        let token = format!("bench-{}-{}", batch.range.first, batch.range.last);
        sink.insert(batch, &token).await.expect("insert");
    }
}

/// A sink configured as the service's (`ClickHouseArgs::client`: LZ4, validation on), pointed
/// at the discard server, with the tables' schemas already fetched.
///
/// One difference, on purpose: the connection sets TCP_NODELAY, which the crate's default
/// connector does not. Without it the end of each insert's body waits for the server's delayed
/// ACK (about 40 ms on Linux loopback), idle time that would swamp the CPU being measured.
/// `BENCH_CLICKHOUSE_DEFAULT_CONNECTOR=1` uses the crate's default connector instead, to see it.
async fn sink() -> Sink {
    let address = discard_clickhouse::start().await;
    let client = if std::env::var_os("BENCH_CLICKHOUSE_DEFAULT_CONNECTOR").is_some() {
        clickhouse::Client::default()
    } else {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        clickhouse::Client::with_http_client(
            hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector),
        )
    }
    .with_url(format!("http://{address}"))
    .with_database("bench");
    // The schema is fetched once per table and cached for every clone of the client. Fetching
    // it uncompressed spares the discard server LZ4 framing; inserts are then compressed.
    let uncompressed = client
        .clone()
        .with_compression(clickhouse::Compression::None);
    drop(
        uncompressed
            .insert::<EventRow>("events")
            .await
            .expect("schema"),
    );
    drop(uncompressed.insert::<LogRow>("logs").await.expect("schema"));
    Sink::new(client)
}

/// Seconds per message of every sample, by benchmark, for the ratio summary.
static SAMPLES: Mutex<BTreeMap<&'static str, Vec<f64>>> = Mutex::new(BTreeMap::new());

fn record(name: &'static str, elapsed: Duration, iters: u64) -> Duration {
    let per_message = elapsed.as_secs_f64() / (iters as f64 * MESSAGES as f64);
    SAMPLES
        .lock()
        .unwrap()
        .entry(name)
        .or_default()
        .push(per_message);
    elapsed
}

fn summary() {
    let samples = SAMPLES.lock().unwrap();
    let median = |values: &[f64]| {
        let mut values = values.to_vec();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let rates: BTreeMap<&str, f64> = samples
        .iter()
        .map(|(name, values)| (*name, 1.0 / median(values)))
        .collect();
    println!("\nmedian messages/s, and ratio to {BASELINE} (higher is faster):");
    for (name, rate) in &rates {
        let ratio = rates
            .get(BASELINE)
            .map(|baseline| format!("{:.3}", rate / baseline))
            .unwrap_or_else(|| "-".into());
        println!("  {name:<22} {rate:>12.0} msg/s   ratio {ratio}");
    }
}

fn main() {
    let end: DateTime<Utc> = "2025-06-02T00:00:00Z".parse().unwrap();
    let now = end + chrono::Duration::minutes(1);
    let limits = Limits::default();
    let inputs = inputs(end);
    describe(&inputs);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sink = runtime.block_on(sink());
    let decoded = batches(inputs.iter().map(|input| decode_one(input, &limits, now)));

    let mut criterion = Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(10))
        .configure_from_args();
    let mut group = criterion.benchmark_group("ingest_cpu");
    group
        .throughput(Throughput::Elements(MESSAGES as u64))
        .sampling_mode(SamplingMode::Flat);

    group.bench_function(BASELINE, |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            for _ in 0..iters {
                for input in &inputs {
                    black_box(serde_json::from_slice::<serde_json::Value>(&input.value).unwrap());
                }
            }
            record(BASELINE, started.elapsed(), iters)
        });
    });
    group.bench_function("decode", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            for _ in 0..iters {
                for input in &inputs {
                    black_box(decode_one(input, &limits, now));
                }
            }
            record("decode", started.elapsed(), iters)
        });
    });
    group.bench_function("encode", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    insert(&sink, &decoded).await;
                }
                record("encode", started.elapsed(), iters)
            })
        });
    });
    group.bench_function("decode_batch_encode", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let rows = inputs.iter().map(|input| decode_one(input, &limits, now));
                    insert(&sink, &batches(rows)).await;
                }
                record("decode_batch_encode", started.elapsed(), iters)
            })
        });
    });
    group.finish();
    criterion.final_summary();
    summary();
}
