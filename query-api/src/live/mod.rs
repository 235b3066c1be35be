//! The live side of `/events/out` and `/logs/out`: one Kafka consumer per query-API process
//! reads the events and logs topics from their end (no consumer group: every process sees
//! every message) and hands each decoded row to the subscribers of its tenant.
//!
//! - An item reaches a subscriber as soon as Kafka has it, which is when the ingestion
//!   endpoint acknowledges it (well before ingest has inserted it into ClickHouse).
//! - Rows are decoded by `flowhouse_schema::decode`, as ingest decodes them, so a subscriber
//!   sees what will be stored (messages ingest would dead-letter are skipped).
//! - Each subscriber has a bounded queue (`--subscriber-queue`); one that falls that far behind
//!   is disconnected (close 1013, "reconnect") rather than buffered without bound. Prefect
//!   subscribers reconnect and backfill from their last event, so nothing is lost to them.
//!
//! [`socket`] holds the websocket handlers.

pub mod socket;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use flowhouse_schema::decode::{Row, decode_message};
use flowhouse_schema::event::Limits;
use flowhouse_schema::rows::{EventRow, LogRow};
use flowhouse_schema::{Stream, Tenant};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;

pub use socket::{events_out, logs_out};

use crate::config::LiveArgs;
use crate::telemetry;

/// A decoded item, shared by every subscriber it goes to.
#[derive(Debug)]
pub enum Item {
    Event(EventRow),
    Log(LogRow),
}

struct Subscriber {
    id: u64,
    stream: Stream,
    sender: mpsc::Sender<Arc<Item>>,
    lagged: Arc<AtomicBool>,
}

#[derive(Default)]
struct Registry {
    by_tenant: Mutex<HashMap<Tenant, Vec<Subscriber>>>,
    next_id: AtomicU64,
}

/// The live feed; cheap to clone.
#[derive(Clone)]
pub struct Feed {
    registry: Arc<Registry>,
    queue: usize,
}

/// One subscriber's end of the feed; it leaves the feed when dropped.
pub struct Subscription {
    pub receiver: mpsc::Receiver<Arc<Item>>,
    lagged: Arc<AtomicBool>,
    id: u64,
    tenant: Tenant,
    registry: Arc<Registry>,
}

impl Subscription {
    /// Whether the feed dropped this subscriber for falling behind.
    pub fn lagged(&self) -> bool {
        self.lagged.load(Ordering::Relaxed)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut by_tenant = self.registry.lock();
        if let Some(list) = by_tenant.get_mut(&self.tenant) {
            list.retain(|s| s.id != self.id);
            if list.is_empty() {
                by_tenant.remove(&self.tenant);
            }
        }
        metrics::gauge!(telemetry::LIVE_SUBSCRIBERS).decrement(1);
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Tenant, Vec<Subscriber>>> {
        self.by_tenant
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Feed {
    /// A feed nothing writes to (tests of the subscriber side; see [`Feed::publish`]).
    pub fn detached(queue: usize) -> Self {
        Self {
            registry: Arc::new(Registry::default()),
            queue,
        }
    }

    /// Connects the consumer, assigns every partition of the two topics at their end, and
    /// spawns the task that fans messages out.
    pub async fn start(args: &LiveArgs) -> anyhow::Result<(Self, tokio::task::JoinHandle<()>)> {
        let feed = Self::detached(args.subscriber_queue.max(1));
        let topics = [
            (Stream::Events, args.topics.events_topic.clone()),
            (Stream::Logs, args.topics.logs_topic.clone()),
        ];
        let consumer: StreamConsumer = args
            .kafka
            .config()?
            // A group id is required by librdkafka, but nothing is ever committed: every
            // process reads everything from the end.
            .set(
                "group.id",
                format!("flowhouse-live-{}", uuid::Uuid::new_v4()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("fetch.wait.max.ms", "100")
            .set("enable.partition.eof", "false")
            .create()
            .context("cannot create the live feed's Kafka consumer")?;
        let consumer = Arc::new(consumer);
        let assignment = {
            let consumer = consumer.clone();
            let names: Vec<String> = topics.iter().map(|(_, t)| t.clone()).collect();
            tokio::task::spawn_blocking(move || -> anyhow::Result<TopicPartitionList> {
                let mut list = TopicPartitionList::new();
                for topic in &names {
                    let metadata = consumer
                        .fetch_metadata(Some(topic), Duration::from_secs(10))
                        .with_context(|| format!("cannot read the partitions of {topic}"))?;
                    for t in metadata.topics() {
                        for p in t.partitions() {
                            list.add_partition_offset(topic, p.id(), Offset::End)?;
                        }
                    }
                }
                consumer.assign(&list)?;
                Ok(list)
            })
            .await
            .context("the live feed's assignment panicked")??
        };
        tracing::info!(
            partitions = assignment.count(),
            "live feed reading events and logs from Kafka"
        );
        let by_topic: HashMap<String, Stream> =
            topics.iter().map(|(s, t)| (t.clone(), *s)).collect();
        let task = tokio::spawn(feed.clone().pump(consumer, by_topic));
        Ok((feed, task))
    }

    async fn pump(self, consumer: Arc<StreamConsumer>, by_topic: HashMap<String, Stream>) {
        // Ingest's limits: the feed shows what ingest will store, whatever the endpoint checked.
        let limits = Limits::default();
        metrics::gauge!(telemetry::LIVE_FEED_UP).set(1.0);
        loop {
            let message = match consumer.recv().await {
                Ok(message) => message,
                Err(error) => {
                    metrics::counter!(telemetry::LIVE_FEED_ERRORS).increment(1);
                    tracing::warn!(%error, "live feed: Kafka error; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let Some(&stream) = by_topic.get(message.topic()) else {
                continue;
            };
            match decode_message(stream, &message, &limits, Utc::now()) {
                Ok(Row::Event(row)) => {
                    let tenant = row_tenant(row.account_id, row.workspace_id);
                    self.publish(tenant, Stream::Events, Item::Event(row));
                }
                Ok(Row::Log(row)) => {
                    let tenant = row_tenant(row.account_id, row.workspace_id);
                    self.publish(tenant, Stream::Logs, Item::Log(row));
                }
                // Ingest dead-letters it; subscribers never see it.
                Err(_) => {}
            }
        }
    }

    /// Joins the feed for `tenant`'s items of `stream`.
    pub fn subscribe(&self, tenant: Tenant, stream: Stream) -> Subscription {
        let (sender, receiver) = mpsc::channel(self.queue);
        let lagged = Arc::new(AtomicBool::new(false));
        let id = self.registry.next_id.fetch_add(1, Ordering::Relaxed);
        self.registry
            .lock()
            .entry(tenant)
            .or_default()
            .push(Subscriber {
                id,
                stream,
                sender,
                lagged: lagged.clone(),
            });
        metrics::gauge!(telemetry::LIVE_SUBSCRIBERS).increment(1);
        Subscription {
            receiver,
            lagged,
            id,
            tenant,
            registry: self.registry.clone(),
        }
    }

    /// Hands `item` to every subscriber of `tenant` and `stream`; a subscriber whose queue is
    /// full is dropped from the feed (its receiver then ends, and [`Subscription::lagged`]
    /// says why).
    pub fn publish(&self, tenant: Tenant, stream: Stream, item: Item) {
        let mut by_tenant = self.registry.lock();
        let Some(list) = by_tenant.get_mut(&tenant) else {
            return;
        };
        let item = Arc::new(item);
        list.retain(|subscriber| {
            if subscriber.stream != stream {
                return true;
            }
            match subscriber.sender.try_send(item.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    subscriber.lagged.store(true, Ordering::Relaxed);
                    metrics::counter!(telemetry::LIVE_LAGGED).increment(1);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        if list.is_empty() {
            by_tenant.remove(&tenant);
        }
    }
}

fn row_tenant(account_id: uuid::Uuid, workspace_id: uuid::Uuid) -> Tenant {
    Tenant {
        account_id,
        workspace_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(n: u128) -> Tenant {
        Tenant {
            account_id: uuid::Uuid::from_u128(n),
            workspace_id: uuid::Uuid::from_u128(n + 100),
        }
    }

    fn log() -> Item {
        Item::Log(LogRow {
            account_id: uuid::Uuid::nil(),
            workspace_id: uuid::Uuid::nil(),
            timestamp: Utc::now(),
            id: uuid::Uuid::nil(),
            received: Utc::now(),
            level: 20,
            name: "n".into(),
            message: "m".into(),
            flow_run_id: None,
            task_run_id: None,
            worker_id: None,
        })
    }

    #[tokio::test]
    async fn items_reach_only_their_tenant_and_stream() {
        let feed = Feed::detached(10);
        let mut a_logs = feed.subscribe(tenant(1), Stream::Logs);
        let mut a_events = feed.subscribe(tenant(1), Stream::Events);
        let mut b_logs = feed.subscribe(tenant(2), Stream::Logs);
        feed.publish(tenant(1), Stream::Logs, log());
        assert!(a_logs.receiver.try_recv().is_ok());
        assert!(a_events.receiver.try_recv().is_err());
        assert!(b_logs.receiver.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_dropped_not_buffered() {
        let feed = Feed::detached(2);
        let mut slow = feed.subscribe(tenant(1), Stream::Logs);
        for _ in 0..3 {
            feed.publish(tenant(1), Stream::Logs, log());
        }
        assert!(slow.lagged());
        assert!(slow.receiver.recv().await.is_some());
        assert!(slow.receiver.recv().await.is_some());
        assert!(slow.receiver.recv().await.is_none(), "the feed let it go");
        // A new subscriber of the same tenant is unaffected.
        let mut fresh = feed.subscribe(tenant(1), Stream::Logs);
        feed.publish(tenant(1), Stream::Logs, log());
        assert!(fresh.receiver.try_recv().is_ok());
    }

    #[tokio::test]
    async fn dropping_a_subscription_leaves_the_feed() {
        let feed = Feed::detached(2);
        let subscription = feed.subscribe(tenant(1), Stream::Logs);
        drop(subscription);
        assert!(feed.registry.lock().is_empty());
    }
}
