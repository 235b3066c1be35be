//! `flowhouse mirror prefect`: follows one Prefect server or Prefect Cloud workspace and produces
//! everything it sees (events and log lines) to Flowhouse's Kafka topics under one configured
//! tenant, with no change to the flows, workers or server.
//!
//! Per stream (events, logs):
//! - [`follow`]: subscribes to Prefect's live websocket (`/events/out`, `/logs/out`), backfills
//!   over HTTP (`/events/filter` + `next_page`, `/logs/filter`) from the checkpoint minus a safety
//!   margin, and backfills again every resync interval (Prefect's live streams drop what a slow
//!   subscriber cannot take, its event persister writes up to seconds after publishing, and its
//!   `/logs/out` is off unless two server settings are on: the backfills alone are complete);
//!   reconnects with exponential backoff and jitter;
//! - [`deliver`]: one idempotent producer (`acks=all`) per the Kafka contract, deliveries
//!   acknowledged in order, a refused delivery retried until Kafka takes it while the followers
//!   stop reading (they resume from the checkpoint once Kafka is back);
//! - [`checkpoint`]: the last delivered `occurred` and id per stream, written to ClickHouse
//!   (`mirror_checkpoints`) every few seconds, so that a restart, or another host, resumes there.
//!
//! Replays are harmless: events keep Prefect's ids and log lines Prefect's log ids, and both
//! tables keep one row per id. Items are produced as Prefect serialized them, but for one
//! addition ([`enrich`]): the scheduled time of a flow run's `Scheduled` state.

pub mod args;
pub mod backoff;
pub mod checkpoint;
pub mod deliver;
pub mod enrich;
pub mod follow;
pub mod item;
pub mod prefect;
pub mod recent;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use flowhouse_schema::Stream;
use flowhouse_service::admin::{self, Readiness};
use flowhouse_service::kafka::ensure_topics;
use flowhouse_service::shutdown;

pub use args::Args;

/// What `flowhouse mirror` can follow.
#[derive(clap::Subcommand, Debug)]
pub enum Source {
    /// Follow a Prefect server or Prefect Cloud workspace.
    Prefect(Args),
}

pub async fn run(source: Source) -> anyhow::Result<()> {
    match source {
        Source::Prefect(args) => run_prefect(args).await,
    }
}

/// How long SIGTERM may take to get what was read into Kafka and checkpoint it.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

async fn run_prefect(args: Args) -> anyhow::Result<()> {
    args.check()?;
    let shutdown = shutdown::on_signal();
    let readiness = Readiness::default();
    let admin_server = tokio::spawn(admin::serve(
        args.admin_listen,
        admin::routes(readiness.clone()),
        shutdown.clone(),
    ));
    let name = args.mirror_name();
    tracing::info!(
        mirror = name,
        prefect = args.prefect_api_url.as_str(),
        tenant = %args.tenant(),
        "mirroring Prefect into Flowhouse"
    );

    ensure_topics(
        &args.kafka,
        &[
            flowhouse_service::kafka::TopicSpec {
                name: args.topics.events_topic.clone(),
                partitions: args.topics.topic_partitions,
            },
            flowhouse_service::kafka::TopicSpec {
                name: args.topics.logs_topic.clone(),
                partitions: args.topics.topic_partitions,
            },
        ],
    )
    .await
    .context("cannot prepare the Kafka topics")?;

    let store = checkpoint::Store::new(args.clickhouse.client(), name.clone());
    // Where the first backfill starts when a stream was never delivered: fixed once, so that a
    // reconnection before the first delivery does not move it.
    let initial_since = chrono::Duration::from_std(args.initial_backfill)
        .ok()
        .and_then(|back| chrono::Utc::now().checked_sub_signed(back))
        .unwrap_or(chrono::DateTime::UNIX_EPOCH);
    let prefect = Arc::new(prefect::Client::new(&args)?);
    let enricher = Arc::new(enrich::Enricher::default());
    let producer = deliver::Producer::new(&args.kafka, args.delivery_timeout, readiness.clone())?;
    let mut streams = Vec::new();
    for stream in Stream::ALL {
        let start = checkpoint::load_with_retry(&store, stream, &readiness, &shutdown).await;
        let Some(start) = start else {
            break; // shut down while waiting for ClickHouse
        };
        let deliverer = deliver::Deliverer::start(
            producer.clone(),
            stream,
            args.topic(stream).to_string(),
            args.tenant(),
            start,
        );
        let saver = tokio::spawn(checkpoint::save_periodically(
            store.clone(),
            stream,
            deliverer.progress(),
            args.checkpoint_interval,
            shutdown.clone(),
        ));
        let follower = tokio::spawn(follow::run(
            follow::Follower {
                stream,
                prefect: prefect.clone(),
                enricher: enricher.clone(),
                deliverer: deliverer.handle(),
                settings: args.follow_settings(),
                readiness: readiness.clone(),
            },
            initial_since,
            shutdown.clone(),
        ));
        streams.push((stream, deliverer, saver, follower));
    }
    let lag = tokio::spawn(deliver::report_lag(
        streams
            .iter()
            .map(|(s, d, ..)| (*s, d.progress()))
            .collect(),
        shutdown.clone(),
    ));

    shutdown.cancelled().await;
    tracing::info!("stopping: delivering what was read and writing the checkpoints");
    let mut result = Ok(());
    for (stream, deliverer, saver, follower) in streams {
        follower.await.context("a follower task panicked")?;
        let progress = deliverer.progress();
        let drained = deliverer.drain(DRAIN_TIMEOUT).await;
        if let Err(error) = &drained {
            tracing::error!(stream = stream.plural(), "{error:#}");
        }
        saver.await.context("a checkpoint task panicked")?;
        // The final checkpoint, after the drain.
        let position = progress.borrow().position.clone();
        if let Some(position) = position
            && let Err(error) = store.save(stream, &position).await
        {
            tracing::warn!(
                stream = stream.plural(),
                "cannot write the final checkpoint: {error:#}"
            );
        }
        result = result.and(drained);
    }
    lag.abort();
    admin_server.await.context("admin server task")??;
    result
}
