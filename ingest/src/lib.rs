//! `flowhouse ingest`: Kafka → batched, exactly-once inserts into ClickHouse.
//!
//! The pieces, each small and testable on its own (after Vector's ClickHouse sink); decoding a
//! message into a row is `flowhouse_schema::decode`, shared with the query API's live feed:
//! - [`batch`]: per-partition batching by rows, bytes and age, with deterministic boundaries
//!   when replaying (see [`exactly_once`]);
//! - [`manifest`]: the batch ranges recorded in ClickHouse before each insert;
//! - [`sink`]: the insert itself, with its deduplication token, retried with backoff;
//! - [`errors`]: which ClickHouse errors are transient and which need an operator;
//! - [`stalls`]: partitions held up by the latter, reported in `/readyz` and a gauge;
//! - [`dead_letter`]: refused messages to the dead-letter topic, with the reason in headers;
//! - [`consumer`]: the consumer-group loop tying them together (where partitions start,
//!   rebalances, backpressure, commits, partitions nobody consumes, shutdown);
//! - [`telemetry`]: the service's metrics.

pub mod batch;
pub mod consumer;
pub mod dead_letter;
pub mod errors;
pub mod exactly_once;
pub mod manifest;
pub mod sink;
pub mod stalls;
pub mod telemetry;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use flowhouse_schema::contract::TopicArgs;
use flowhouse_service::admin::{self, Readiness};
use flowhouse_service::clickhouse::ClickHouseArgs;
use flowhouse_service::kafka::{KafkaArgs, ensure_topics};
use flowhouse_service::shutdown;

/// Flags of `flowhouse ingest`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    /// Where /healthz, /readyz and /metrics are served.
    #[arg(
        long,
        env = "FLOWHOUSE_INGEST_ADMIN_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    pub admin_listen: SocketAddr,
    /// Kafka consumer group; ingest processes in one group share the partitions.
    #[arg(
        long,
        env = "FLOWHOUSE_INGEST_GROUP",
        default_value = "flowhouse-ingest"
    )]
    pub group: String,
    /// How long the group waits for a silent member before giving its partitions to others:
    /// the failover time after a crash. Shorter is faster failover, but a broker that answers
    /// heartbeats slowly under load (tansu on SQLite takes seconds) then evicts live members.
    #[arg(long, env = "FLOWHOUSE_INGEST_SESSION_TIMEOUT", value_parser = humantime::parse_duration, default_value = "30s")]
    pub session_timeout: Duration,
    #[command(flatten)]
    pub batching: batch::BatchLimits,
    /// Memory for buffered rows across all partitions; consumption pauses above it.
    #[arg(long, env = "FLOWHOUSE_INGEST_MAX_BUFFERED_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_buffered_bytes: usize,
    /// Largest event or log accepted, in bytes; larger messages are dead-lettered.
    #[arg(long, env = "FLOWHOUSE_MAX_EVENT_BYTES", default_value_t = 1_500_000)]
    pub max_event_bytes: usize,
    /// How long a SIGTERM may take to insert and commit what is buffered.
    #[arg(long, env = "FLOWHOUSE_INGEST_DRAIN_TIMEOUT", value_parser = humantime::parse_duration, default_value = "60s")]
    pub drain_timeout: Duration,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = shutdown::on_signal();
    let readiness = Readiness::default();
    let admin_server = tokio::spawn(admin::serve(
        args.admin_listen,
        admin::routes(readiness.clone()),
        shutdown.clone(),
    ));
    let result = run_in_process(args, readiness, shutdown.clone()).await;
    shutdown.cancel();
    admin_server.await.context("admin server task")??;
    result
}

/// Consumes until `shutdown` fires, then drains; reports into `readiness` (which another
/// service of the same process may share, as in `flowhouse serve`) and serves no routes.
pub async fn run_in_process(
    args: Args,
    readiness: Readiness,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    readiness.not_ready("kafka", "waiting for a partition assignment");
    readiness.not_ready("schema", "not checked yet");
    ensure_topics(&args.kafka, &args.topics.specs())
        .await
        .context("cannot prepare the Kafka topics")?;
    tokio::spawn(watch_schema(
        args.clickhouse.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));
    let ingest = consumer::Ingest::new(&args, readiness)?;
    ingest.run(shutdown).await
}

/// Reports the schema as ready once the tables ingest writes exist, re-checking every 10 s, so
/// that a service started before `flowhouse migrate` says why it is not ready.
async fn watch_schema(
    clickhouse: ClickHouseArgs,
    readiness: Readiness,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let client = clickhouse.server_client();
    loop {
        let found: Result<u64, _> = client
            .query(
                "SELECT count() FROM system.tables WHERE database = {db:String} \
                 AND name IN ('events', 'logs', 'ingest_batches')",
            )
            .param("db", &clickhouse.database)
            .fetch_one()
            .await;
        match found {
            Ok(3) => readiness.ready("schema"),
            Ok(_) => readiness.not_ready(
                "schema",
                format!(
                    "tables missing in database {}: run `flowhouse migrate`",
                    clickhouse.database
                ),
            ),
            Err(error) => {
                readiness.not_ready("schema", format!("cannot reach ClickHouse: {error}"));
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(10)) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
