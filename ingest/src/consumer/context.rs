//! The consumer's callbacks: rebalances (revocations wait for in-flight flushes; assignments
//! read resume positions from the manifest) and statistics.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowhouse_service::admin::Readiness;
use rdkafka::TopicPartitionList;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use tokio_util::sync::CancellationToken;

use super::gate::Start;
use super::in_flight::InFlight;
use super::lock;
use crate::batch::Range;
use crate::manifest::Manifest;
use crate::sink::{Backoff, Retry};
use crate::stalls::Stalls;
use crate::telemetry;

/// How long a revocation waits for the revoked partitions' flushes to reach a safe point.
pub(super) const REVOKE_WAIT: Duration = Duration::from_secs(30);

/// What the callbacks tell the consume loop, which owns the partitions' state.
pub(super) enum RebalanceEvent {
    Revoked(Vec<(String, i32)>),
    /// The new partitions, each with where it starts (`None` if the service stopped before the
    /// manifest answered: its messages are dropped).
    Assigned(Vec<((String, i32), Option<Start>)>),
}

/// The consumer's callbacks: rebalances and statistics.
pub(super) struct IngestContext {
    pub(super) rebalances: Mutex<Vec<RebalanceEvent>>,
    pub(super) in_flight: Arc<InFlight>,
    pub(super) manifest: Manifest,
    pub(super) readiness: Readiness,
    pub(super) stopping: CancellationToken,
    pub(super) stalls: Stalls,
}

impl IngestContext {
    /// Resume positions from the manifest for the assigned partitions, retried until ClickHouse
    /// answers (consuming would be pointless before it does) or the service stops.
    pub(super) fn resume_positions(
        &self,
        topics: &[String],
    ) -> Option<HashMap<(String, i32), Range>> {
        let fetch = async {
            let mut positions = HashMap::new();
            for topic in topics {
                let latest = Retry {
                    what: "read resume positions",
                    component: "clickhouse",
                    readiness: &self.readiness,
                    backoff: Backoff::default(),
                    cancel: &self.stopping,
                    stalls: Some((&self.stalls, "partition assignment")),
                }
                .run(|| self.manifest.latest(topic))
                .await?;
                positions.extend(
                    latest
                        .into_iter()
                        .map(|(partition, range)| ((topic.clone(), partition), range)),
                );
            }
            Some(positions)
        };
        // Called on the consumer's polling task: let the runtime move other tasks away while
        // this thread waits.
        block_on_runtime(fetch)
    }
}

/// Runs a future to completion from synchronous code inside the runtime.
pub(super) fn block_on_runtime<T>(future: impl Future<Output = T>) -> T {
    let handle = tokio::runtime::Handle::current();
    match handle.runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| handle.block_on(future))
        }
        _ => futures::executor::block_on(future),
    }
}

impl ClientContext for IngestContext {
    fn stats(&self, statistics: Statistics) {
        for (name, topic) in &statistics.topics {
            for (id, partition) in &topic.partitions {
                if *id < 0 || partition.consumer_lag < 0 {
                    continue;
                }
                metrics::gauge!(telemetry::CONSUMER_LAG, "topic" => name.clone(), "partition" => id.to_string())
                    .set(partition.consumer_lag as f64);
            }
        }
    }
}

impl ConsumerContext for IngestContext {
    fn pre_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        if let Rebalance::Revoke(list) = rebalance {
            let keys: Vec<(String, i32)> = list
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect();
            tracing::info!(partitions = keys.len(), "partitions revoked");
            // Before the group hands these partitions to someone else, every range we recorded
            // must be in the manifest and no insert of ours may still be running, or the next
            // owner could cut different batches over the same messages.
            let wait = || self.in_flight.cancel_and_wait(&keys, REVOKE_WAIT);
            match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
                Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
                _ => wait(),
            }
            lock(&self.rebalances).push(RebalanceEvent::Revoked(keys));
        }
    }

    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        let Rebalance::Assign(list) = rebalance else {
            return;
        };
        // Start each partition where the manifest says, not where the broker's committed offset
        // says: the manifest is written in the same system as the rows, and some
        // Kafka-compatible brokers keep commits unreliably. Partitions without a recorded range
        // start at their earliest offset (see the gate).
        let mut topics: Vec<String> = list
            .elements()
            .iter()
            .map(|e| e.topic().to_string())
            .collect();
        topics.sort();
        topics.dedup();
        let positions = self.resume_positions(&topics);
        let starts: Vec<((String, i32), Option<Start>)> = list
            .elements()
            .iter()
            .map(|element| {
                let key = (element.topic().to_string(), element.partition());
                let start = positions.as_ref().map(|positions| {
                    positions
                        .get(&key)
                        .map_or(Start::Beginning, |&range| Start::At(range))
                });
                (key, start)
            })
            .collect();
        tracing::info!(?starts, "resuming from the recorded batch ranges");
        lock(&self.rebalances).push(RebalanceEvent::Assigned(starts));
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(error) = result {
            tracing::debug!(%error, "asynchronous commit failed");
        }
    }
}
