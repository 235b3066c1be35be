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
//! - [`telemetry`]: the service's metrics;
//! - [`config`]: the flags, with their defaults in one place.

pub mod batch;
pub mod config;
pub mod consumer;
pub mod dead_letter;
pub mod errors;
pub mod exactly_once;
pub mod manifest;
pub mod sink;
pub mod stalls;
pub mod telemetry;

use std::time::Duration;

use anyhow::Context as _;
use flowhouse_service::admin::{self, Readiness};
use flowhouse_service::clickhouse::ClickHouseArgs;
use flowhouse_service::kafka::ensure_topics;
use flowhouse_service::shutdown;

pub use config::Args;

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
