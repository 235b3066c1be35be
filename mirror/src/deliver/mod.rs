//! Into Kafka, per the message contract (`schema/src/contract.rs`): key = workspace id, headers
//! `account_id` / `workspace_id` (the configured tenant, never Prefect's) and `received`
//! (Prefect's own receipt time), value = the event or log line as Prefect serialized it.
//!
//! One idempotent producer (`acks=all`, [`producer`]) for both streams; per stream a
//! [`Deliverer`] task hands items to it and takes the acknowledgements in order, so that the
//! delivered position (the checkpoint) only ever covers items Kafka has. When the oldest message
//! waits for its acknowledgement more than a few seconds (broker down), or Kafka refuses it, the
//! deliverer stops taking items: its followers see `accepting = false` and stop reading Prefect.
//! librdkafka keeps retrying what it holds (until the delivery timeout; a refused message is
//! sent again with backoff), and once everything in flight is acknowledged the deliverer accepts
//! items again: the followers reconnect and backfill from the checkpoint, so what Prefect's live
//! stream dropped meanwhile is read again.

pub mod producer;

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use flowhouse_schema::{Envelope, Stream, Tenant};
use rdkafka::error::KafkaError;
use rdkafka::producer::DeliveryFuture;
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::item::{Item, Position};
use crate::recent::Recent;
pub use producer::Producer;

/// Items handed to librdkafka and not yet acknowledged, per stream.
const MAX_IN_FLIGHT: usize = 10_000;
/// Items a follower may queue ahead of the deliverer: when full, the follower waits (and stops
/// reading Prefect).
const CHANNEL: usize = 1_000;
/// How long the oldest message may wait for its acknowledgement before the followers stop
/// reading: reading on would only fill memory, and Prefect's live stream drops what a slow
/// subscriber cannot take anyway (the backfill reads it again).
const STALLED_AFTER: Duration = Duration::from_secs(5);

/// What a stream's deliverer has done.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// The delivered item with the latest time: the checkpoint.
    pub position: Option<Position>,
    pub delivered: u64,
}

/// What a follower needs of its stream's deliverer.
#[derive(Clone)]
pub struct Handle {
    pub items: mpsc::Sender<Item>,
    /// False while Kafka refuses or stalls: stop reading.
    pub accepting: watch::Receiver<bool>,
    pub progress: watch::Receiver<Progress>,
}

pub struct Deliverer {
    handle: Handle,
    task: JoinHandle<()>,
}

impl Deliverer {
    /// Starts delivering `stream`'s items to `topic` for `tenant`; `start` is the stored
    /// checkpoint, where the position begins.
    pub fn start(
        producer: Producer,
        stream: Stream,
        topic: String,
        tenant: Tenant,
        start: Option<Position>,
    ) -> Self {
        let (items, receiver) = mpsc::channel(CHANNEL);
        let (accepting_tx, accepting) = watch::channel(true);
        let (progress_tx, progress) = watch::channel(Progress {
            position: start,
            delivered: 0,
        });
        let task = tokio::spawn(
            Task {
                producer,
                stream,
                topic,
                tenant,
                receiver,
                accepting: accepting_tx,
                progress: progress_tx,
                queue: VecDeque::new(),
                queued: HashSet::new(),
                // Long enough to cover the backfills that overlap (margin and resync).
                recent: Recent::new(Duration::from_secs(3600), 1_000_000),
            }
            .run(),
        );
        Self {
            handle: Handle {
                items,
                accepting,
                progress,
            },
            task,
        }
    }

    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.handle.progress.clone()
    }

    /// Stops taking items (every follower must have stopped) and waits until what was taken is
    /// acknowledged, at most `timeout`.
    pub async fn drain(self, timeout: Duration) -> anyhow::Result<()> {
        let Self { handle, task } = self;
        drop(handle);
        tokio::time::timeout(timeout, task)
            .await
            .context("Kafka did not acknowledge everything read before the drain timeout")?
            .context("the deliverer task panicked")
    }
}

struct Pending {
    item: Item,
    /// None: refused at once, waiting to be sent again.
    delivery: Option<DeliveryFuture>,
    sent_at: Instant,
}

struct Task {
    producer: Producer,
    stream: Stream,
    topic: String,
    tenant: Tenant,
    receiver: mpsc::Receiver<Item>,
    accepting: watch::Sender<bool>,
    progress: watch::Sender<Progress>,
    queue: VecDeque<Pending>,
    /// Ids in `queue`.
    queued: HashSet<uuid::Uuid>,
    recent: Recent,
}

enum Outcome {
    Delivered,
    /// Refused for good (too large for any broker): skipped, with the reason.
    Skipped(String),
    /// Refused for now: send again.
    Refused(String),
}

impl Task {
    fn envelope(&self, item: &Item) -> Envelope {
        Envelope {
            tenant: self.tenant,
            received: Some(item.received.unwrap_or_else(chrono::Utc::now)),
        }
    }

    fn label(&self) -> &'static str {
        self.stream.plural()
    }

    fn send(&self, item: &Item) -> Option<DeliveryFuture> {
        self.producer
            .send(&self.topic, &self.envelope(item), item)
            .ok()
    }

    async fn run(mut self) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut closed = false;
        loop {
            if closed && self.queue.is_empty() {
                return;
            }
            let accepting = *self.accepting.borrow();
            let take = !closed && accepting && self.queue.len() < MAX_IN_FLIGHT;
            let stalls_at = self
                .queue
                .front()
                .filter(|_| accepting)
                .map(|front| tokio::time::Instant::from_std(front.sent_at + STALLED_AFTER));
            tokio::select! {
                biased;
                outcome = front_outcome(&mut self.queue), if !self.queue.is_empty() => {
                    self.settle_front(outcome, &mut backoff).await;
                }
                () = sleep_until(stalls_at), if stalls_at.is_some() => {
                    self.stop_taking(&format!("no acknowledgement for {STALLED_AFTER:?}"));
                }
                item = self.receiver.recv(), if take => match item {
                    Some(item) => self.take(item),
                    None => closed = true,
                },
            }
        }
    }

    fn take(&mut self, item: Item) {
        if self.recent.contains(&item.id) || self.queued.contains(&item.id) {
            metrics::counter!("flowhouse_mirror_skipped_total", "stream" => self.label(), "reason" => "already_delivered")
                .increment(1);
            return;
        }
        let delivery = self.send(&item);
        self.queued.insert(item.id);
        self.queue.push_back(Pending {
            item,
            delivery,
            sent_at: Instant::now(),
        });
    }

    /// Kafka refuses or stalls: stop taking items (the followers stop reading Prefect).
    fn stop_taking(&mut self, reason: &str) {
        if *self.accepting.borrow() {
            tracing::warn!(
                stream = self.label(),
                reason,
                "Kafka does not take messages; reading stops until it does"
            );
            metrics::counter!("flowhouse_mirror_kafka_refusals_total", "stream" => self.label())
                .increment(1);
            self.producer.set_refused(self.stream, Some(reason));
            self.accepting.send_replace(false);
        }
    }

    async fn settle_front(&mut self, outcome: Outcome, backoff: &mut Backoff) {
        match outcome {
            Outcome::Delivered | Outcome::Skipped(_) => {
                let pending = self.queue.pop_front().expect("a front item");
                self.queued.remove(&pending.item.id);
                if let Outcome::Skipped(reason) = outcome {
                    tracing::error!(stream = self.label(), id = %pending.item.id, reason, "Kafka refuses this item for good; skipped");
                    metrics::counter!("flowhouse_mirror_skipped_total", "stream" => self.label(), "reason" => "refused")
                        .increment(1);
                } else {
                    metrics::counter!("flowhouse_mirror_delivered_total", "stream" => self.label())
                        .increment(1);
                }
                self.recent.insert(pending.item.id, Instant::now());
                let position = pending.item.position();
                self.progress.send_modify(|progress| {
                    progress.delivered += 1;
                    if progress.position.as_ref().is_none_or(|p| position > *p) {
                        progress.position = Some(position);
                    }
                });
                backoff.reset();
                if self.queue.is_empty() && !*self.accepting.borrow() {
                    tracing::info!(
                        stream = self.label(),
                        "Kafka takes messages again; resuming from the checkpoint"
                    );
                    self.producer.set_refused(self.stream, None);
                    self.accepting.send_replace(true);
                }
            }
            Outcome::Refused(reason) => {
                tracing::debug!(stream = self.label(), reason, "refused; sending again");
                self.stop_taking(&reason);
                tokio::time::sleep(backoff.next_wait()).await;
                self.producer.recover();
                let delivery = self.send(&self.queue[0].item);
                let front = &mut self.queue[0];
                front.delivery = delivery;
                front.sent_at = Instant::now();
            }
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How the front item's delivery ended (waits for it).
async fn front_outcome(queue: &mut VecDeque<Pending>) -> Outcome {
    let front = queue.front_mut().expect("called with a front item");
    let Some(delivery) = front.delivery.as_mut() else {
        return Outcome::Refused("librdkafka's queue did not take the message".into());
    };
    match delivery.await {
        Ok(Ok(_)) => Outcome::Delivered,
        Ok(Err((error, _))) => classify(&error),
        Err(_canceled) => Outcome::Refused("the producer dropped the message".into()),
    }
}

fn classify(error: &KafkaError) -> Outcome {
    match error.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage,
        ) => Outcome::Skipped(error.to_string()),
        _ => Outcome::Refused(error.to_string()),
    }
}

/// `flowhouse_mirror_lag_seconds{stream}`: now − the latest delivered time, every second.
pub async fn report_lag(
    streams: Vec<(Stream, watch::Receiver<Progress>)>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        for (stream, progress) in &streams {
            if let Some(position) = &progress.borrow().position {
                let lag = chrono::Utc::now() - position.at;
                metrics::gauge!("flowhouse_mirror_lag_seconds", "stream" => stream.plural())
                    .set(lag.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Outcome {
        fn name(&self) -> &'static str {
            match self {
                Outcome::Delivered => "delivered",
                Outcome::Skipped(_) => "skipped",
                Outcome::Refused(_) => "refused",
            }
        }
    }

    #[test]
    fn only_size_refusals_are_permanent() {
        let too_large = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert_eq!(classify(&too_large).name(), "skipped");
        for transient in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::NotEnoughReplicas,
        ] {
            let error = KafkaError::MessageProduction(transient);
            assert_eq!(classify(&error).name(), "refused", "{transient:?}");
        }
    }
}
