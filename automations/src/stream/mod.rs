//! Event triggers on the live event stream: the evaluator reads the events topic from Kafka
//! under its own consumer group (`--automations-group`, default `flowhouse-automations`), keeps
//! each trigger's windows in memory ([`window`]) and checkpoints them with their offset in
//! ClickHouse ([`checkpoint`]).
//!
//! ## Ownership: one reader per partition, by lease
//! Every message of a tenant has the tenant's workspace id as its key, and every Flowhouse
//! producer uses librdkafka's default partitioner (`consistent_random`: CRC-32 of the key
//! modulo the partition count), so a tenant's events are all in one partition,
//! [`partition_of`]. The evaluator that holds the lease `automations-stream/{topic}/{p}`
//! (`crate::lease`, the same leases as the metric triggers' shards) reads partition `p`, and
//! is the only one to evaluate the event triggers of the tenants in it and to write their state
//! rows. It assigns its partitions itself (no group rebalance): ownership moves only with the
//! lease, whose argument is in `crate::lease`.
//!
//! ## Exactly once across restarts
//! A round takes a snapshot of a partition's windows and offset, evaluates its triggers on the
//! snapshot, writes the decisions (state rows, pending deliveries: `crate::lease`'s steps), and
//! only then writes the snapshot as the partition's checkpoint (versioned by lease term, so an
//! expired holder's late write never wins). A new holder resumes from the checkpoint:
//!
//! - a crash before the checkpoint is written replays the messages since the previous one into
//!   the same windows; each event is kept once (by time and id), the observations are the ones
//!   already decided, and a bucket's state row, already breached or resolved, fires nothing new;
//! - a crash after it resumes exactly where the decisions were made.
//!
//! Offsets are also committed to Kafka under the group, so the usual tools show the
//! evaluator's lag; the checkpoint, not the committed offset, is where a reader resumes.
//!
//! A partition read for the first time (no checkpoint, or one unused for a week) starts at the
//! messages of the last [`FIRST_LOOKBACK`], like a new Prefect automation that counts from its
//! creation.

pub mod checkpoint;
pub mod window;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use flowhouse_schema::decode::{Row, decode_message};
use flowhouse_schema::event::Limits;
use flowhouse_schema::{Stream, Tenant};
use flowhouse_service::kafka::KafkaArgs;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::Notify;
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;

use self::checkpoint::{Checkpoint, Checkpoints};
use self::window::Windows;
use crate::lease::Held;
use crate::model::{Automation, EventTrigger, Posture, Trigger};

/// Where a partition without a checkpoint starts.
pub const FIRST_LOOKBACK: Duration = Duration::from_secs(3600);
/// The least time between two checkpoints of a partition (rounds can run several times a second
/// while events match; each checkpoint is an insert). A crash replays at most this much more.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

/// The partition of a tenant's messages: librdkafka's `consistent_random` on the key.
pub fn partition_of(tenant: Tenant, partitions: i32) -> i32 {
    let key = tenant.workspace_id.to_string();
    (crc32fast::hash(key.as_bytes()) % partitions.max(1) as u32) as i32
}

/// The lease scope of a partition.
pub fn scope(topic: &str, partition: i32) -> String {
    format!("automations-stream/{topic}/{partition}")
}

/// The event-trigger automations, by tenant.
#[derive(Default)]
struct Triggers {
    by_tenant: HashMap<Tenant, Vec<(Uuid, EventTrigger)>>,
    /// The keys (workspace ids) of those tenants: other messages are skipped undecoded.
    keys: HashSet<String>,
}

/// What is read of one partition.
struct Reading {
    state: Checkpoint,
    held: Held,
    /// Checkpoints written in this term, and when the last one was.
    saved: u64,
    saved_at: Option<Instant>,
    /// The end of the partition when it was taken: until the windows have read that far, they
    /// are behind what a predecessor saw, and nothing is evaluated on them (a bucket would
    /// look resolved for lack of events not read yet).
    catch_up_to: i64,
}

impl Reading {
    fn caught_up(&self) -> bool {
        self.state.next_offset >= self.catch_up_to
    }
}

struct Shared {
    triggers: RwLock<Arc<Triggers>>,
    partitions: Mutex<BTreeMap<i32, Reading>>,
    /// Rung when an event matched a reactive trigger: a round runs without waiting.
    wake: Notify,
}

pub struct EventStream {
    topic: String,
    consumer: Arc<StreamConsumer>,
    shared: Arc<Shared>,
    checkpoints: Checkpoints,
    count: Mutex<Option<(i32, Instant)>>,
    _pump: AbortOnDropHandle<()>,
}

/// The event triggers of `automations`, with their automation ids.
pub fn event_triggers(automations: &[(Tenant, Automation)]) -> Vec<(Tenant, Uuid, &EventTrigger)> {
    automations
        .iter()
        .filter(|(_, a)| a.core.enabled)
        .filter_map(|(tenant, a)| match &a.core.trigger {
            Trigger::Event(t) => Some((*tenant, a.id, t)),
            Trigger::Metric(_) => None,
        })
        .collect()
}

impl EventStream {
    /// A reader of `topic` under `group`; it reads no partition until [`EventStream::take`].
    pub fn new(
        kafka: &KafkaArgs,
        topic: &str,
        group: &str,
        client: clickhouse::Client,
    ) -> anyhow::Result<Self> {
        let consumer: StreamConsumer = kafka
            .config()?
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("fetch.wait.max.ms", "100")
            .set("enable.partition.eof", "false")
            .create()
            .context("cannot create the automations' Kafka consumer")?;
        let consumer = Arc::new(consumer);
        let shared = Arc::new(Shared {
            triggers: RwLock::default(),
            partitions: Mutex::default(),
            wake: Notify::new(),
        });
        let pump = tokio::spawn(pump(consumer.clone(), shared.clone()));
        Ok(Self {
            topic: topic.into(),
            consumer,
            shared,
            checkpoints: Checkpoints::new(client),
            count: Mutex::new(None),
            _pump: AbortOnDropHandle::new(pump),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The topic's partition count (read from the broker at most once a minute).
    pub async fn partitions(&self) -> anyhow::Result<i32> {
        if let Some((n, at)) = *self.count.lock().expect("count lock")
            && at.elapsed() < Duration::from_secs(60)
        {
            return Ok(n);
        }
        let (consumer, topic) = (self.consumer.clone(), self.topic.clone());
        let n = tokio::task::spawn_blocking(move || -> anyhow::Result<i32> {
            let metadata = consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .with_context(|| format!("cannot read the partitions of {topic}"))?;
            let n = metadata
                .topics()
                .iter()
                .map(|t| t.partitions().len())
                .sum::<usize>();
            anyhow::ensure!(n > 0, "topic {topic} has no partitions");
            Ok(n as i32)
        })
        .await??;
        *self.count.lock().expect("count lock") = Some((n, Instant::now()));
        Ok(n)
    }

    /// The automations whose events are kept from now on.
    pub fn set_triggers(&self, triggers: &[(Tenant, Uuid, &EventTrigger)]) {
        let mut next = Triggers::default();
        for (tenant, id, trigger) in triggers {
            next.by_tenant
                .entry(*tenant)
                .or_default()
                .push((*id, (*trigger).clone()));
            next.keys.insert(tenant.workspace_id.to_string());
        }
        let keep: BTreeSet<Uuid> = triggers.iter().map(|(_, id, _)| *id).collect();
        for reading in self.partitions_lock().values_mut() {
            reading.state.windows.retain(&keep);
        }
        *self.shared.triggers.write().expect("triggers lock") = Arc::new(next);
    }

    fn partitions_lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, Reading>> {
        self.shared.partitions.lock().expect("partitions lock")
    }

    /// The partitions read now.
    pub fn reading(&self) -> BTreeSet<i32> {
        self.partitions_lock().keys().copied().collect()
    }

    /// Reads `partition` under `held` (renewed: the term is updated; new: from its checkpoint).
    pub async fn take(&self, partition: i32, held: Held) -> anyhow::Result<()> {
        {
            let mut partitions = self.partitions_lock();
            if let Some(reading) = partitions.get_mut(&partition) {
                if reading.held.term == held.term {
                    reading.held = held;
                    return Ok(());
                }
                // A new term: someone else may have written since; start again from the
                // checkpoint.
                partitions.remove(&partition);
            }
        }
        let state = match self.checkpoints.load(&self.topic, partition).await? {
            Some(checkpoint) => checkpoint,
            None => Checkpoint {
                next_offset: self.offset_at(partition, FIRST_LOOKBACK).await,
                windows: Windows::default(),
            },
        };
        let (_, catch_up_to) = self.watermarks(partition).await?;
        tracing::info!(
            topic = self.topic,
            partition,
            offset = state.next_offset,
            catch_up_to,
            term = held.term,
            "automations: reading a partition of the event stream"
        );
        self.partitions_lock().insert(
            partition,
            Reading {
                state,
                held,
                saved: 0,
                saved_at: None,
                catch_up_to,
            },
        );
        self.assign()
    }

    /// Stops reading `partition` (its lease is lost or no trigger needs it).
    pub fn release(&self, partition: i32) -> anyhow::Result<()> {
        if self.partitions_lock().remove(&partition).is_some() {
            tracing::info!(
                topic = self.topic,
                partition,
                "automations: partition released"
            );
            self.assign()?;
        }
        Ok(())
    }

    /// Assigns every partition read, each at the offset its windows have reached.
    fn assign(&self) -> anyhow::Result<()> {
        let mut list = TopicPartitionList::new();
        for (partition, reading) in self.partitions_lock().iter() {
            list.add_partition_offset(
                &self.topic,
                *partition,
                Offset::Offset(reading.state.next_offset),
            )?;
        }
        self.consumer.assign(&list)?;
        Ok(())
    }

    /// The first offset of `partition` at or after `ago` before now; its start when the
    /// broker cannot say.
    async fn offset_at(&self, partition: i32, ago: Duration) -> i64 {
        let (consumer, topic) = (self.consumer.clone(), self.topic.clone());
        let since = Utc::now().timestamp_millis() - ago.as_millis() as i64;
        let found = tokio::task::spawn_blocking(move || -> anyhow::Result<i64> {
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(&topic, partition, Offset::Offset(since))?;
            let found = consumer.offsets_for_times(list, Duration::from_secs(10))?;
            let (low, high) =
                consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10))?;
            Ok(
                match found.find_partition(&topic, partition).map(|p| p.offset()) {
                    Some(Offset::Offset(n)) => n.clamp(low, high),
                    Some(Offset::End) => high,
                    _ => low,
                },
            )
        })
        .await;
        match found {
            Ok(Ok(offset)) => offset,
            Ok(Err(error)) => {
                tracing::warn!(
                    partition,
                    "automations: no offset by time ({error:#}); reading from the start"
                );
                0
            }
            Err(error) => {
                tracing::warn!(partition, "automations: {error}");
                0
            }
        }
    }

    async fn watermarks(&self, partition: i32) -> anyhow::Result<(i64, i64)> {
        let (consumer, topic) = (self.consumer.clone(), self.topic.clone());
        let marks = tokio::task::spawn_blocking(move || {
            consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10))
        })
        .await??;
        Ok(marks)
    }

    /// A copy of `partition`'s windows and offset, with the lease they are read under, once
    /// the windows have caught up with what the partition held when it was taken.
    pub fn snapshot(&self, partition: i32) -> Option<(Checkpoint, Held)> {
        self.partitions_lock()
            .get(&partition)
            .filter(|r| r.caught_up())
            .map(|r| (r.state.clone(), r.held.clone()))
    }

    /// Writes `snapshot` as `partition`'s checkpoint (its decisions are written; at most every
    /// [`CHECKPOINT_EVERY`], the first of a term at once), then commits its offset under the
    /// group, and prunes the live windows at `now`.
    pub async fn checkpoint(
        &self,
        partition: i32,
        mut snapshot: Checkpoint,
        owner: &str,
        now: DateTime<Utc>,
        horizon: Duration,
    ) -> anyhow::Result<()> {
        let triggers = self.shared.triggers.read().expect("triggers lock").clone();
        let all: Vec<(Uuid, &EventTrigger)> = triggers
            .by_tenant
            .values()
            .flatten()
            .map(|(id, t)| (*id, t))
            .collect();
        snapshot.windows.prune(&all, now, horizon);
        let version = {
            let mut partitions = self.partitions_lock();
            let Some(reading) = partitions.get_mut(&partition) else {
                return Ok(());
            };
            reading.state.windows.prune(&all, now, horizon);
            if reading
                .saved_at
                .is_some_and(|at| at.elapsed() < CHECKPOINT_EVERY)
            {
                return Ok(());
            }
            reading.saved += 1;
            reading.saved_at = Some(Instant::now());
            checkpoint::version(reading.held.term, reading.saved)
        };
        self.checkpoints
            .save(&self.topic, partition, version, owner, &snapshot)
            .await?;
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.topic, partition, Offset::Offset(snapshot.next_offset))?;
        if let Err(error) = self.consumer.commit(&list, CommitMode::Async) {
            tracing::debug!(partition, "automations: offset not committed: {error}");
        }
        Ok(())
    }

    /// Resolves when an event matched a reactive trigger since the last call.
    pub async fn woken(&self) {
        self.shared.wake.notified().await;
    }

    /// Whether every partition read has reached the end the broker had when asked.
    pub async fn caught_up(&self) -> anyhow::Result<bool> {
        let positions: Vec<(i32, i64)> = self
            .partitions_lock()
            .iter()
            .map(|(p, r)| (*p, r.state.next_offset))
            .collect();
        for (partition, position) in positions {
            if position < self.watermarks(partition).await?.1 {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Reads the assigned partitions: each message of a tenant with event triggers is decoded (as
/// ingest decodes it: what would be dead-lettered is skipped) and added to its partition's
/// windows.
async fn pump(consumer: Arc<StreamConsumer>, shared: Arc<Shared>) {
    let limits = Limits::default();
    loop {
        // As in ingest's loop: `recv` is ready at once while librdkafka holds fetched messages,
        // so without the budget a backlog is read without yielding, and a request woken on this
        // worker waits for all of it (`flowhouse serve` runs the dashboards beside this).
        tokio::task::consume_budget().await;
        let message = match consumer.recv().await {
            Ok(message) => message,
            Err(error) => {
                metrics::counter!("flowhouse_automations_stream_errors_total").increment(1);
                tracing::warn!(%error, "automations: Kafka error; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let triggers = shared.triggers.read().expect("triggers lock").clone();
        let wanted = message
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .is_some_and(|k| triggers.keys.contains(k));
        let row = if wanted {
            match decode_message(Stream::Events, &message, &limits, Utc::now()) {
                Ok(Row::Event(row)) => Some(row),
                _ => None,
            }
        } else {
            None
        };
        let mut partitions = shared.partitions.lock().expect("partitions lock");
        let Some(reading) = partitions.get_mut(&message.partition()) else {
            continue;
        };
        if message.offset() < reading.state.next_offset {
            continue;
        }
        reading.state.next_offset = message.offset() + 1;
        let Some(row) = row else {
            continue;
        };
        let tenant = Tenant {
            account_id: row.account_id,
            workspace_id: row.workspace_id,
        };
        let Some(list) = triggers.by_tenant.get(&tenant) else {
            continue;
        };
        let refs: Vec<(Uuid, &EventTrigger)> = list.iter().map(|(id, t)| (*id, t)).collect();
        if reading.state.windows.apply(&row, &refs)
            && list.iter().any(|(_, t)| t.posture == Posture::Reactive)
        {
            metrics::counter!("flowhouse_automations_stream_matched_total").increment(1);
            shared.wake.notify_one();
        }
    }
}
