//! The consumer-group loop: consume, decode, batch, flush, commit; rebalances, backpressure and
//! graceful shutdown.
//!
//! One task owns all partition state and is the only one that touches the consumer; each closed
//! batch is flushed by a task of its own (dead letters, record, insert), at most one per
//! partition at a time so that commits stay in offset order. Flush tasks report back over a
//! channel and the loop commits.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use flowhouse_schema::event::Limits;
use flowhouse_service::admin::Readiness;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::BorrowedMessage;
use rdkafka::statistics::Statistics;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::batch::{Batch, BatchLimits, Item, PartitionBatcher, Range};
use crate::dead_letter::{DeadLetter, DeadLetterProducer};
use crate::exactly_once::batch_token;
use crate::manifest::Manifest;
use crate::sink::{Backoff, Sink, retry};
use crate::telemetry;
use flowhouse_schema::Stream;
use flowhouse_schema::decode::decode_message;

/// How long a revocation waits for the revoked partitions' flushes to reach a safe point.
const REVOKE_WAIT: Duration = Duration::from_secs(30);

/// How often stored offsets are committed to Kafka. Commits are advisory (the manifest is where
/// partitions resume), so they are batched like Kafka's auto-commit rather than sent per batch:
/// a commit shares the group coordinator connection with heartbeats, and a slow broker answering
/// one commit per batch starves the heartbeats until the member is thrown out of its group.
const COMMIT_INTERVAL: Duration = Duration::from_secs(5);

/// The running ingest service.
pub struct Ingest {
    consumer: Arc<StreamConsumer<IngestContext>>,
    tables: HashMap<String, Stream>,
    topics: HashMap<Stream, Arc<str>>,
    batching: BatchLimits,
    event_limits: Limits,
    max_buffered: usize,
    drain_timeout: Duration,
    flush: FlushContext,
    in_flight: Arc<InFlight>,
}

/// What a flush task needs.
#[derive(Clone)]
struct FlushContext {
    group: String,
    sink: Sink,
    manifest: Manifest,
    dead_letters: DeadLetterProducer,
    readiness: Readiness,
    backoff: Backoff,
}

impl Ingest {
    pub fn new(args: &crate::Args, readiness: Readiness) -> anyhow::Result<Self> {
        telemetry::describe();
        let in_flight = Arc::new(InFlight::default());
        let client = args.clickhouse.client();
        let manifest = Manifest::new(client.clone(), args.group.clone());
        let context = IngestContext {
            rebalances: Mutex::new(Vec::new()),
            in_flight: in_flight.clone(),
            manifest: manifest.clone(),
            readiness: readiness.clone(),
            stopping: CancellationToken::new(),
            starts: Mutex::new(HashMap::new()),
        };
        let consumer: StreamConsumer<IngestContext> = args
            .kafka
            .config()?
            .set("group.id", &args.group)
            .set(
                "session.timeout.ms",
                args.session_timeout.as_millis().to_string(),
            )
            // Also the rebalance timeout: how long a rebalance waits for members that do not
            // rejoin (crashed ones). The loop polls continuously, so it is never hit otherwise.
            .set(
                "max.poll.interval.ms",
                (args.session_timeout * 3).as_millis().to_string(),
            )
            // Offsets are committed by hand, after ClickHouse acknowledged the rows before them.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("statistics.interval.ms", "5000")
            .create_with_context(context)
            .context("cannot create the Kafka consumer")?;
        let producer = args
            .kafka
            .config()?
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()
            .context("cannot create the dead-letter producer")?;
        let tables = HashMap::from([
            (args.topics.events_topic.clone(), Stream::Events),
            (args.topics.logs_topic.clone(), Stream::Logs),
        ]);
        let topics = tables
            .iter()
            .map(|(topic, table)| (*table, Arc::from(topic.as_str())))
            .collect();
        Ok(Self {
            consumer: Arc::new(consumer),
            tables,
            topics,
            batching: args.batching.clone(),
            event_limits: Limits {
                max_event_bytes: args.max_event_bytes,
                ..Limits::default()
            },
            max_buffered: args.max_buffered_bytes,
            drain_timeout: args.drain_timeout,
            flush: FlushContext {
                group: args.group.clone(),
                sink: Sink::new(client),
                manifest,
                dead_letters: DeadLetterProducer::new(producer, args.topics.dlq_topic.clone()),
                readiness,
                backoff: Backoff::default(),
            },
            in_flight,
        })
    }

    /// Consumes until `shutdown` fires, then inserts and commits what is buffered.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // A rebalance callback blocked on ClickHouse must give up when the service stops.
        let stopping = self.consumer.context().stopping.clone();
        let stop_watch = shutdown.clone();
        tokio::spawn(async move {
            stop_watch.cancelled().await;
            stopping.cancel();
        });
        let topics: Vec<&str> = self.tables.keys().map(String::as_str).collect();
        self.consumer
            .subscribe(&topics)
            .with_context(|| format!("cannot subscribe to {topics:?}"))?;
        tracing::info!(?topics, group = %self.flush.group, "consuming");
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let mut state = State::default();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(done) = done_rx.recv() => self.on_done(&mut state, done),
                message = self.consumer.recv() => {
                    self.on_rebalances(&mut state);
                    match message {
                        Ok(message) => self.on_message(&mut state, &message),
                        Err(error) => tracing::warn!(%error, "Kafka consumer error"),
                    }
                }
                _ = tick.tick() => {
                    self.on_rebalances(&mut state);
                    let now = Instant::now();
                    for partition in state.partitions.values_mut() {
                        partition.batcher.close_due(&self.batching, now);
                    }
                    if now.duration_since(state.last_commit) >= COMMIT_INTERVAL {
                        state.last_commit = now;
                        self.commit_stored(&mut state, CommitMode::Async);
                    }
                }
            }
            self.start_flushes(&mut state, &done_tx);
            self.apply_backpressure(&mut state);
        }
        self.drain(state, done_tx, done_rx).await;
        Ok(())
    }

    fn on_message(&self, state: &mut State, message: &BorrowedMessage<'_>) {
        let Some(&table) = self.tables.get(message.topic()) else {
            tracing::warn!(
                topic = message.topic(),
                "message from a topic we did not subscribe to"
            );
            return;
        };
        metrics::counter!(telemetry::CONSUMED, "topic" => message.topic().to_string()).increment(1);
        let Some(partition) = self.admit(state, table, message) else {
            return;
        };
        let offset = message.offset();
        let item = match decode_message(table, message, &self.event_limits, Utc::now()) {
            Ok(row) => Item::Row(row),
            Err(refusal) => {
                metrics::counter!(telemetry::DEAD_LETTERS, "topic" => message.topic().to_string(), "kind" => refusal.kind.as_str())
                    .increment(1);
                tracing::warn!(
                    topic = message.topic(),
                    partition = message.partition(),
                    offset = message.offset(),
                    kind = %refusal.kind,
                    reason = %refusal.reason,
                    "dead-lettering a message"
                );
                Item::Dead(DeadLetter::from_message(message, refusal))
            }
        };
        let partition = state.partitions.get_mut(&partition).expect("admitted");
        partition
            .batcher
            .push(offset, item, &self.batching, Instant::now());
    }

    /// Whether a message joins its partition's current pass: not while the partition is being
    /// moved to its resume position, and not if it was delivered before. Returns the key.
    fn admit(
        &self,
        state: &mut State,
        stream: Stream,
        message: &BorrowedMessage<'_>,
    ) -> Option<(Stream, i32)> {
        let key = (stream, message.partition());
        let offset = message.offset();
        if !state.partitions.contains_key(&key) {
            let latest = self.start_gate(state, key, message)?;
            state.next_generation += 1;
            state.partitions.insert(
                key,
                Partition::new(stream, key.1, state.next_generation, latest),
            );
        }
        let partition = state.partitions.get_mut(&key).expect("inserted above");
        // Offsets only grow within a partition: a lower or equal one is a message delivered
        // again (seen with tansu at the end of a log). It is already batched or stored.
        if partition.last_offset.is_some_and(|last| offset <= last) {
            metrics::counter!(telemetry::REDELIVERED, "topic" => message.topic().to_string())
                .increment(1);
            return None;
        }
        partition.last_offset = Some(offset);
        Some(key)
    }

    /// After an assignment, a partition starts exactly at its latest recorded range (or at its
    /// earliest offset when it has none), whatever position the client fetched from: the broker's
    /// committed offset is not trusted. Messages before that offset are already stored and are
    /// skipped; while the partition is elsewhere it is moved (and moved again every few seconds,
    /// since a seek does not stop messages already fetched). Returns the range to replay once
    /// the first message is the expected one.
    fn start_gate(
        &self,
        state: &mut State,
        key: (Stream, i32),
        message: &BorrowedMessage<'_>,
    ) -> Option<Option<Range>> {
        let topic_key = (message.topic().to_string(), key.1);
        let start = lock(&self.consumer.context().starts)
            .get(&topic_key)
            .copied()?;
        let gate = state.gates.entry(key).or_insert_with(|| {
            // The earliest offset the broker still has: a resume point older than that was
            // deleted by retention, and the partition can only start there.
            let low = self
                .consumer
                .fetch_watermarks(message.topic(), key.1, Duration::from_secs(10))
                .map_or(0, |(low, _)| low);
            let (expected, latest) = match start {
                Start::At(range) => (range.first.max(low), Some(range)),
                Start::Beginning => (low, None),
            };
            Gate {
                expected,
                latest,
                last_seek: None,
            }
        });
        let offset = message.offset();
        if offset == gate.expected {
            let latest = state.gates.remove(&key).and_then(|gate| gate.latest);
            lock(&self.consumer.context().starts).remove(&topic_key);
            return Some(latest);
        }
        tracing::debug!(
            topic = message.topic(),
            partition = key.1,
            offset,
            expected = gate.expected,
            "skipped before the resume position"
        );
        if offset > gate.expected
            && gate
                .last_seek
                .is_none_or(|at| at.elapsed() > Duration::from_secs(3))
        {
            tracing::info!(
                topic = message.topic(),
                partition = key.1,
                offset,
                expected = gate.expected,
                "moving the partition to its resume position"
            );
            match self.consumer.seek(
                message.topic(),
                key.1,
                Offset::Offset(gate.expected),
                Duration::from_secs(10),
            ) {
                Ok(()) => gate.last_seek = Some(Instant::now()),
                Err(error) => tracing::warn!(%error, "seek failed; retrying on a later message"),
            }
        }
        None
    }

    fn on_done(&self, state: &mut State, finished: Finished) {
        match finished {
            Finished::Flushed {
                key,
                generation,
                next_offset,
            } => {
                if let Some(partition) = state.current(key, generation) {
                    partition.flushing = None;
                    partition.stored = Some(next_offset);
                }
            }
            Finished::Abandoned { key, generation } => {
                if let Some(partition) = state.current(key, generation) {
                    partition.flushing = None;
                }
            }
        }
    }

    /// Commits the offsets stored since the last commit, one request for all partitions.
    fn commit_stored(&self, state: &mut State, mode: CommitMode) {
        let mut offsets = TopicPartitionList::new();
        let mut committing = Vec::new();
        for ((table, partition), state) in &state.partitions {
            if let Some(next) = state.stored.filter(|&next| state.committed != Some(next)) {
                let topic = &self.topics[table];
                if offsets
                    .add_partition_offset(topic, *partition, Offset::Offset(next))
                    .is_ok()
                {
                    committing.push((*table, *partition, next));
                }
            }
        }
        if committing.is_empty() {
            return;
        }
        match self.consumer.commit(&offsets, mode) {
            Ok(()) => {
                for (table, partition, next) in committing {
                    metrics::gauge!(telemetry::COMMITTED_OFFSET, "topic" => self.topics[&table].to_string(), "partition" => partition.to_string())
                        .set(next as f64);
                    if let Some(state) = state.partitions.get_mut(&(table, partition)) {
                        state.committed = Some(next);
                    }
                }
            }
            // The rows are in ClickHouse and the manifest says where to resume: a lost commit
            // only makes the broker's view of the group's lag stale. Nothing to do but say so.
            Err(error) => tracing::warn!(%error, "commit failed; it is retried with the next one"),
        }
    }

    fn start_flushes(&self, state: &mut State, done: &Done) {
        for (&key, partition) in &mut state.partitions {
            if partition.flushing.is_some() {
                continue;
            }
            let Some(batch) = partition.batcher.take_closed() else {
                continue;
            };
            partition.flushing = Some(batch.bytes);
            let slot = self
                .in_flight
                .register((self.topics[&key.0].clone(), key.1));
            tokio::spawn(flush(
                batch,
                self.topics[&key.0].clone(),
                partition.generation,
                self.flush.clone(),
                slot,
                done.clone(),
            ));
        }
    }

    /// Pauses every assigned partition while buffers hold more than the budget; resumes below
    /// half of it. Memory is bounded by not reading, never by dropping.
    fn apply_backpressure(&self, state: &mut State) {
        let buffered: usize = state
            .partitions
            .values()
            .map(Partition::buffered_bytes)
            .sum();
        metrics::gauge!(telemetry::BUFFERED_BYTES).set(buffered as f64);
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        if !state.paused && buffered > self.max_buffered {
            tracing::warn!(
                buffered,
                budget = self.max_buffered,
                "buffers full: pausing consumption"
            );
            state.paused = true;
            let _ = self.consumer.pause(&assignment);
        } else if state.paused && buffered < self.max_buffered / 2 {
            tracing::info!(buffered, "buffers drained: resuming consumption");
            state.paused = false;
            let _ = self.consumer.resume(&assignment);
        }
        metrics::gauge!(telemetry::PAUSED).set(if state.paused { 1.0 } else { 0.0 });
    }

    fn on_rebalances(&self, state: &mut State) {
        let events = std::mem::take(&mut *lock(&self.consumer.context().rebalances));
        for event in events {
            match event {
                RebalanceEvent::Revoked(keys) => {
                    for (topic, partition) in keys {
                        let Some(&table) = self.tables.get(&topic) else {
                            continue;
                        };
                        state.gates.remove(&(table, partition));
                        if let Some(state) = state.partitions.remove(&(table, partition)) {
                            // Uncommitted rows are dropped here and replayed by the next owner.
                            state.cancel.cancel();
                        }
                    }
                }
                RebalanceEvent::Assigned(count) => {
                    self.flush.readiness.ready("kafka");
                    tracing::info!(partitions = count, "partitions assigned");
                    if state.paused
                        && let Ok(assignment) = self.consumer.assignment()
                    {
                        let _ = self.consumer.pause(&assignment);
                    }
                }
            }
        }
    }

    /// After SIGTERM: close what can be closed, insert and commit it, within the drain timeout.
    async fn drain(
        &self,
        mut state: State,
        done: Done,
        mut done_rx: mpsc::UnboundedReceiver<Finished>,
    ) {
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        for partition in state.partitions.values_mut() {
            partition.batcher.close_for_shutdown();
        }
        loop {
            self.start_flushes(&mut state, &done);
            if state.partitions.values().all(|p| p.flushing.is_none()) {
                break;
            }
            match tokio::time::timeout_at(deadline, done_rx.recv()).await {
                Ok(Some(finished)) => self.on_done(&mut state, finished),
                Ok(None) => break,
                Err(_) => {
                    tracing::error!(
                        timeout = ?self.drain_timeout,
                        "drain timed out; batches not inserted yet will be replayed on the next start (nothing is lost)"
                    );
                    self.in_flight.cancel_all();
                    break;
                }
            }
        }
        // Make the final offsets durable before leaving the group.
        self.commit_stored(&mut state, CommitMode::Sync);
        let left: usize = state
            .partitions
            .values()
            .map(Partition::buffered_bytes)
            .sum();
        tracing::info!(left_for_replay_bytes = left, "ingest stopped");
    }
}

/// Inserts one batch: dead letters first, then record its range, insert, and report. Stops
/// between steps when its partition is revoked, so a revocation never waits on a retry loop.
async fn flush(
    batch: Batch,
    topic: Arc<str>,
    generation: u64,
    ctx: FlushContext,
    slot: Arc<Slot>,
    done: Done,
) {
    let _finished = FinishOnDrop(slot.clone());
    let key = (batch.stream, batch.partition);
    let cancel = &slot.cancel;
    let outcome = async {
        if !batch.dead_letters.is_empty() {
            retry(
                "deliver dead letters",
                "kafka",
                &ctx.readiness,
                ctx.backoff,
                cancel,
                || ctx.dead_letters.deliver_all(&batch.dead_letters),
            )
            .await?;
        }
        // Every range is recorded, even one of dead letters only: the manifest is where the next
        // owner of the partition resumes.
        if !batch.recorded {
            retry(
                "record the batch range",
                "clickhouse",
                &ctx.readiness,
                ctx.backoff,
                cancel,
                || {
                    ctx.manifest
                        .record(&topic, batch.partition, batch.range, batch.rows.len())
                },
            )
            .await?;
        }
        if !batch.rows.is_empty() {
            let token = batch_token(
                &ctx.group,
                &topic,
                batch.partition,
                batch.range.first,
                batch.range.last,
            );
            let started = Instant::now();
            retry(
                "insert",
                "clickhouse",
                &ctx.readiness,
                ctx.backoff,
                cancel,
                || ctx.sink.insert(&batch, &token),
            )
            .await?;
            let table = batch.stream.table();
            metrics::histogram!(telemetry::INSERT_SECONDS, "table" => table)
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!(telemetry::BATCH_ROWS, "table" => table)
                .record(batch.rows.len() as f64);
            metrics::histogram!(telemetry::BATCH_BYTES, "table" => table)
                .record(batch.bytes as f64);
            metrics::counter!(telemetry::INSERTED_ROWS, "table" => table)
                .increment(batch.rows.len() as u64);
        }
        Some(batch.range.last + 1)
    }
    .await;
    let _ = done.send(match outcome {
        Some(next_offset) => Finished::Flushed {
            key,
            generation,
            next_offset,
        },
        None => Finished::Abandoned { key, generation },
    });
}

type Done = mpsc::UnboundedSender<Finished>;

enum Finished {
    Flushed {
        key: (Stream, i32),
        generation: u64,
        next_offset: i64,
    },
    Abandoned {
        key: (Stream, i32),
        generation: u64,
    },
}

struct State {
    partitions: HashMap<(Stream, i32), Partition>,
    /// Partitions waiting for their first message at their resume position.
    gates: HashMap<(Stream, i32), Gate>,
    next_generation: u64,
    paused: bool,
    last_commit: Instant,
}

impl Default for State {
    fn default() -> Self {
        Self {
            partitions: HashMap::new(),
            gates: HashMap::new(),
            next_generation: 0,
            paused: false,
            last_commit: Instant::now(),
        }
    }
}

impl State {
    /// The partition's state if it is still the same assignment as `generation`.
    fn current(&mut self, key: (Stream, i32), generation: u64) -> Option<&mut Partition> {
        self.partitions
            .get_mut(&key)
            .filter(|partition| partition.generation == generation)
    }
}

struct Partition {
    batcher: PartitionBatcher,
    generation: u64,
    /// Bytes of the batch being flushed, if one is.
    flushing: Option<usize>,
    /// The offset after the last batch ClickHouse acknowledged, and the last one committed.
    stored: Option<i64>,
    committed: Option<i64>,
    /// The last offset taken, to drop messages delivered twice.
    last_offset: Option<i64>,
    cancel: CancellationToken,
}

impl Partition {
    fn new(stream: Stream, partition: i32, generation: u64, latest: Option<Range>) -> Self {
        Self {
            batcher: PartitionBatcher::new(stream, partition, latest),
            generation,
            flushing: None,
            stored: None,
            committed: None,
            last_offset: None,
            cancel: CancellationToken::new(),
        }
    }

    fn buffered_bytes(&self) -> usize {
        self.batcher.buffered_bytes() + self.flushing.unwrap_or(0)
    }
}

enum RebalanceEvent {
    Revoked(Vec<(String, i32)>),
    Assigned(usize),
}

/// The consumer's callbacks: rebalances and statistics.
struct IngestContext {
    rebalances: Mutex<Vec<RebalanceEvent>>,
    in_flight: Arc<InFlight>,
    manifest: Manifest,
    readiness: Readiness,
    stopping: CancellationToken,
    /// Where each partition of the current assignment starts, until its first message.
    starts: Mutex<HashMap<(String, i32), Start>>,
}

/// A partition waiting for the first message of its assignment.
struct Gate {
    expected: i64,
    latest: Option<Range>,
    last_seek: Option<Instant>,
}

/// Where an assigned partition starts.
#[derive(Clone, Copy, Debug)]
enum Start {
    /// At its latest recorded range, which is replayed.
    At(Range),
    /// At its earliest offset: nothing was ever recorded for it.
    Beginning,
}

impl IngestContext {
    /// Resume positions from the manifest for the assigned partitions, retried until ClickHouse
    /// answers (consuming would be pointless before it does) or the service stops.
    fn resume_positions(&self, topics: &[String]) -> Option<HashMap<(String, i32), Range>> {
        let fetch = async {
            let mut positions = HashMap::new();
            for topic in topics {
                let latest = retry(
                    "read resume positions",
                    "clickhouse",
                    &self.readiness,
                    Backoff::default(),
                    &self.stopping,
                    || self.manifest.latest(topic),
                )
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
fn block_on_runtime<T>(future: impl Future<Output = T>) -> T {
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
        // start at the committed offset (or the earliest one).
        let mut topics: Vec<String> = list
            .elements()
            .iter()
            .map(|e| e.topic().to_string())
            .collect();
        topics.sort();
        topics.dedup();
        if let Some(positions) = self.resume_positions(&topics) {
            let starts: HashMap<(String, i32), Start> = list
                .elements()
                .iter()
                .map(|element| {
                    let key = (element.topic().to_string(), element.partition());
                    let start = positions
                        .get(&key)
                        .map_or(Start::Beginning, |&range| Start::At(range));
                    (key, start)
                })
                .collect();
            tracing::info!(?starts, "resuming from the recorded batch ranges");
            *lock(&self.starts) = starts;
        }
        lock(&self.rebalances).push(RebalanceEvent::Assigned(list.count()));
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(error) = result {
            tracing::debug!(%error, "asynchronous commit failed");
        }
    }
}

/// The flushes running now, so that a revocation can stop them at a safe point and wait.
#[derive(Default)]
struct InFlight {
    slots: Mutex<HashMap<TopicPartition, Arc<Slot>>>,
}

type TopicPartition = (Arc<str>, i32);

struct Slot {
    cancel: CancellationToken,
    finished: Mutex<bool>,
    signal: Condvar,
}

impl InFlight {
    fn register(&self, key: TopicPartition) -> Arc<Slot> {
        let slot = Arc::new(Slot {
            cancel: CancellationToken::new(),
            finished: Mutex::new(false),
            signal: Condvar::new(),
        });
        lock(&self.slots).insert(key, slot.clone());
        slot
    }

    fn cancel_and_wait(&self, keys: &[(String, i32)], timeout: Duration) {
        let slots: Vec<Arc<Slot>> = {
            let slots = lock(&self.slots);
            keys.iter()
                .filter_map(|(topic, partition)| {
                    slots.get(&(Arc::from(topic.as_str()), *partition)).cloned()
                })
                .collect()
        };
        let deadline = Instant::now() + timeout;
        for slot in slots {
            slot.cancel.cancel();
            let mut finished = lock(&slot.finished);
            while !*finished {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    tracing::error!(
                        "a flush did not stop within {timeout:?} of its partition's revocation"
                    );
                    break;
                }
                finished = slot
                    .signal
                    .wait_timeout(finished, left)
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .0;
            }
        }
    }

    fn cancel_all(&self) {
        for slot in lock(&self.slots).values() {
            slot.cancel.cancel();
        }
    }
}

/// Marks a flush finished however it ends (return, cancellation, panic).
struct FinishOnDrop(Arc<Slot>);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        *lock(&self.0.finished) = true;
        self.0.signal.notify_all();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
