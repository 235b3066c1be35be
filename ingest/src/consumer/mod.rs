//! The consumer-group loop: consume, decode, batch, flush, commit; rebalances, backpressure and
//! graceful shutdown.
//!
//! One task owns all partition state and decides everything about the consumer; each closed
//! batch is flushed by a task of its own (dead letters, record, insert), at most one per
//! partition at a time so that commits stay in offset order. Flush tasks report back over a
//! channel and the loop commits. Client calls that block (seeks, offsets, metadata; up to 10 s
//! each) run on the blocking pool and report back the same way, so the loop keeps consuming.
//!
//! - `gate`: where an assigned partition starts, a pure state machine (`seek` carries out
//!   its answers; `replay_model` property-tests it with the batcher across crashes);
//! - `state`: what the loop knows about its partitions, including the cached assignment;
//! - `flush`, `in_flight`: one batch to ClickHouse, and stopping flushes on revocation;
//! - `commit`, `backpressure`: advisory commits; pausing when buffers are full;
//! - `context`: the client's callbacks (rebalances, statistics);
//! - `ownership`: rejoining the group while partitions with messages waiting have no consumer.

mod backpressure;
mod commit;
mod context;
mod flush;
mod gate;
mod in_flight;
mod ownership;
#[cfg(test)]
mod replay_model;
mod seek;
mod state;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use flowhouse_schema::Stream;
use flowhouse_schema::decode::decode_message;
use flowhouse_schema::event::Limits;
use flowhouse_service::admin::Readiness;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::batch::{BatchLimits, Item};
use crate::dead_letter::{self, DeadLetter, DeadLetterProducer};
use crate::manifest::Manifest;
use crate::sink::{Backoff, Sink};
use crate::stalls::Stalls;
use crate::telemetry;
use commit::COMMIT_INTERVAL;
use context::{IngestContext, RebalanceEvent};
use flush::{Done, Finished, FlushContext, flush};
use gate::{Gate, Verdict};
use in_flight::InFlight;
use seek::GateEvent;
use state::{Assignment, Partition, State, lock};

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

impl Ingest {
    pub fn new(args: &crate::Args, readiness: Readiness) -> anyhow::Result<Self> {
        telemetry::describe();
        let in_flight = Arc::new(InFlight::default());
        let stalls = Stalls::new(readiness.clone());
        let client = args.clickhouse.client();
        let manifest = Manifest::new(client.clone(), args.group.clone());
        let context = IngestContext {
            rebalances: std::sync::Mutex::new(Vec::new()),
            in_flight: in_flight.clone(),
            manifest: manifest.clone(),
            readiness: readiness.clone(),
            stopping: CancellationToken::new(),
            stalls: stalls.clone(),
        };
        readiness.ready(ownership::COMPONENT);
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
        let dead_letter_max = dead_letter::producer_max_bytes(args.max_event_bytes);
        let producer = args
            .kafka
            .config()?
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // The default (1 MB) is below the largest event: such a dead letter would be
            // refused forever and stall its partition.
            .set("message.max.bytes", dead_letter_max.to_string())
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
                dead_letters: DeadLetterProducer::new(
                    producer,
                    args.topics.dlq_topic.clone(),
                    dead_letter_max,
                ),
                readiness,
                backoff: Backoff::default(),
                stalls,
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
        let (gate_tx, mut gate_rx) = mpsc::unbounded_channel();
        let (owner_tx, mut owner_rx) = mpsc::unbounded_channel();
        let mut state = State::default();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            // rdkafka's `recv` is ready at once while messages are buffered, so without this the
            // loop would decode a whole fetched backlog without yielding, holding its worker (and
            // the task in that worker's LIFO slot, which no other worker may steal) for as long:
            // in `flowhouse serve` that was a dashboard request's 0.5 s.
            tokio::task::consume_budget().await;
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(done) = done_rx.recv() => self.on_done(&mut state, done),
                Some(event) = gate_rx.recv() => self.on_gate_event(&mut state, event, &gate_tx),
                Some(found) = owner_rx.recv() => self.on_ownership(&mut state, found),
                message = self.consumer.recv() => {
                    self.on_rebalances(&mut state, &gate_tx);
                    match message {
                        Ok(message) => self.on_message(&mut state, &message, &gate_tx),
                        Err(error) => tracing::warn!(%error, "Kafka consumer error"),
                    }
                }
                _ = tick.tick() => {
                    self.on_rebalances(&mut state, &gate_tx);
                    let now = Instant::now();
                    for partition in state.partitions.values_mut() {
                        partition.batcher.close_due(&self.batching, now);
                    }
                    self.retry_seeks(&mut state, &gate_tx);
                    if now.duration_since(state.last_commit) >= COMMIT_INTERVAL {
                        state.last_commit = now;
                        self.commit_stored(&mut state, CommitMode::Async);
                    }
                    let check_due = now.duration_since(state.last_check) >= ownership::CHECK_EVERY;
                    if check_due && !state.checking {
                        state.last_check = now;
                        state.checking = true;
                        self.spawn_ownership_check(&state, &owner_tx);
                    }
                }
            }
            self.start_flushes(&mut state, &done_tx);
            self.apply_backpressure(&mut state);
        }
        for assignment in state.assigned.values() {
            assignment.cancel.cancel();
        }
        self.drain(state, done_tx, done_rx).await;
        self.leave_group().await;
        Ok(())
    }

    fn on_message(
        &self,
        state: &mut State,
        message: &BorrowedMessage<'_>,
        gate_events: &mpsc::UnboundedSender<GateEvent>,
    ) {
        let Some(&table) = self.tables.get(message.topic()) else {
            tracing::warn!(
                topic = message.topic(),
                "message from a topic we did not subscribe to"
            );
            return;
        };
        metrics::counter!(telemetry::CONSUMED, "topic" => message.topic().to_string()).increment(1);
        let Some(partition) = self.admit(state, table, message, gate_events) else {
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

    /// Whether a message joins its partition's current pass, as the partition's gate decides:
    /// not before the partition's resume position, not while it is being moved there, not if it
    /// was delivered before. Returns the key.
    fn admit(
        &self,
        state: &mut State,
        stream: Stream,
        message: &BorrowedMessage<'_>,
        gate_events: &mpsc::UnboundedSender<GateEvent>,
    ) -> Option<(Stream, i32)> {
        let key = (stream, message.partition());
        let offset = message.offset();
        let assignment = state.assigned.get_mut(&key)?;
        let gate = assignment.gate.as_mut()?;
        match gate.observe(offset, Instant::now()) {
            Verdict::Take => return Some(key),
            Verdict::Open { replay } => {
                let partition = Partition::new(stream, key.1, assignment.generation, replay);
                state.partitions.insert(key, partition);
                return Some(key);
            }
            Verdict::Skip => tracing::debug!(
                topic = message.topic(),
                partition = key.1,
                offset,
                "skipped before the resume position"
            ),
            Verdict::Redelivered => {
                metrics::counter!(telemetry::REDELIVERED, "topic" => message.topic().to_string())
                    .increment(1);
            }
            Verdict::Seek(target) => {
                tracing::info!(
                    topic = message.topic(),
                    partition = key.1,
                    offset,
                    expected = target,
                    "moving the partition to its resume position"
                );
                self.spawn_seek(key, assignment, target, gate_events);
            }
            Verdict::FetchLow => self.spawn_fetch_low(key, assignment, gate_events),
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

    fn on_rebalances(&self, state: &mut State, gate_events: &mpsc::UnboundedSender<GateEvent>) {
        let events = std::mem::take(&mut *lock(&self.consumer.context().rebalances));
        for event in events {
            match event {
                RebalanceEvent::Revoked(keys) => {
                    state.steady = false;
                    for (topic, partition) in keys {
                        let Some(&table) = self.tables.get(&topic) else {
                            continue;
                        };
                        if let Some(assignment) = state.assigned.remove(&(table, partition)) {
                            assignment.cancel.cancel();
                        }
                        // Rows not inserted yet are dropped here: the next owner replays them
                        // from the manifest. The partition's flush was already stopped at a safe
                        // point by the revocation callback (see `context`).
                        state.partitions.remove(&(table, partition));
                    }
                }
                RebalanceEvent::Assigned(starts) => {
                    state.steady = true;
                    self.flush.readiness.ready("kafka");
                    tracing::info!(partitions = starts.len(), "partitions assigned");
                    let mut added = Vec::new();
                    for ((topic, partition), start) in starts {
                        let Some(&table) = self.tables.get(&topic) else {
                            continue;
                        };
                        state.next_generation += 1;
                        let assignment = Assignment {
                            gate: start.map(Gate::new),
                            generation: state.next_generation,
                            cancel: CancellationToken::new(),
                        };
                        // Moved to its start at once, not on its first message: a broker that
                        // starts it at the end of its log would never deliver one.
                        if let Some(gate) = &assignment.gate {
                            let target = gate.initial_seek();
                            self.spawn_seek((table, partition), &assignment, target, gate_events);
                        }
                        state.assigned.insert((table, partition), assignment);
                        added.push((table, partition));
                    }
                    if state.paused {
                        let _ = self.consumer.pause(&self.partition_list(&added));
                    }
                }
            }
        }
    }

    /// Leaves the group now, not when the client is dropped (which waits for every background
    /// call holding it): the next member gets the partitions at once instead of after this
    /// one's session expires. Unsubscribing revokes the assignment, which is served by polling;
    /// the client sends its LeaveGroup request once that is done.
    async fn leave_group(&self) {
        let consumer = self.consumer.clone();
        let _ = tokio::task::spawn_blocking(move || consumer.unsubscribe()).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            // Messages still arriving are not batched: the next owner reads them.
            let _ = tokio::time::timeout(Duration::from_millis(100), self.consumer.recv()).await;
            if self
                .consumer
                .assignment()
                .is_ok_and(|assignment| assignment.count() == 0)
            {
                tracing::info!("left the consumer group");
                return;
            }
        }
        tracing::warn!("could not leave the consumer group in time; its session will expire");
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
        // Make the final offsets durable before leaving the group (a blocking call).
        tokio::task::block_in_place(|| self.commit_stored(&mut state, CommitMode::Sync));
        let left: usize = state
            .partitions
            .values()
            .map(Partition::buffered_bytes)
            .sum();
        tracing::info!(left_for_replay_bytes = left, "ingest stopped");
    }
}
