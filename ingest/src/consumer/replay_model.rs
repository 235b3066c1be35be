//! A model of one partition's life across crashes, rebalances, redeliveries and seeks, driven
//! through the real start gate, the real batcher and the real deduplication token, with the
//! manifest and the table behaving as ClickHouse makes them behave (the latest recorded range
//! wins; an insert whose token was seen is dropped). Property: whatever the interleaving, every
//! offset is stored exactly once. This is the argument of [`crate::exactly_once`], checked.
//!
//! What the model lets the broker and the client do, because the real ones do it: start a
//! partition anywhere (the committed offset is not trusted), deliver the last messages again,
//! keep delivering messages fetched before a seek, apply a seek late (even to a later
//! assignment of the same process), or fail it. What it keeps as the real ones keep it: within
//! one position, offsets are delivered in order; a crash ends the process's pending calls.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use chrono::Utc;
use flowhouse_schema::Stream;
use flowhouse_schema::decode::Row;
use flowhouse_schema::rows::LogRow;
use proptest::prelude::*;
use uuid::Uuid;

use super::gate::{Gate, Start, Verdict};
use crate::batch::{Batch, BatchLimits, Item, PartitionBatcher, Range, Rows};
use crate::exactly_once::batch_token;

#[derive(Clone, Debug)]
enum Op {
    /// Producers append messages.
    Produce(u8),
    /// The client hands the loop its next message.
    Deliver,
    /// The client fetches the last few messages again.
    Redeliver(u8),
    /// The oldest pending seek takes effect (an offset below the earliest resets to it); this
    /// many messages fetched from the old position are still delivered before the new ones.
    ApplySeek(u8),
    /// The oldest pending seek fails.
    FailSeek,
    /// The earliest offset the gate asked for arrives.
    LowArrives,
    /// Time passes (ms): batches close on age, seeks age, failed ones are retried.
    Tick(u16),
    /// The flush task does one step: record the range, insert, report.
    FlushStep,
    /// The loop commits the stored offset.
    Commit,
    /// kill -9.
    Crash,
    /// The partition is revoked and assigned again to the same process.
    Rebalance(u8),
    /// SIGTERM: what can be closed is inserted, then the process leaves.
    Stop,
    /// A process starts (when none runs) at a position the broker picks.
    Start(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (1..20u8).prop_map(Op::Produce),
        12 => Just(Op::Deliver),
        1 => (1..8u8).prop_map(Op::Redeliver),
        2 => (0..4u8).prop_map(Op::ApplySeek),
        1 => Just(Op::FailSeek),
        2 => Just(Op::LowArrives),
        2 => (1..5000u16).prop_map(Op::Tick),
        6 => Just(Op::FlushStep),
        1 => Just(Op::Commit),
        1 => Just(Op::Crash),
        1 => any::<u8>().prop_map(Op::Rebalance),
        1 => Just(Op::Stop),
        2 => any::<u8>().prop_map(Op::Start),
    ]
}

const TOPIC: &str = "t";
const GROUP: &str = "g";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Record,
    Insert,
    Report,
}

/// What one ingest process holds in memory for the partition.
struct Process {
    generation: u64,
    gate: Gate,
    batcher: Option<PartitionBatcher>,
    flushing: Option<(Batch, Step)>,
    stored: Option<i64>,
    /// Where the client fetches next, and what it fetched before a seek and still delivers.
    position: i64,
    prefetched: VecDeque<i64>,
    /// Seeks asked for and not applied yet, with the generation of the gate that asked.
    seeks: VecDeque<(u64, i64)>,
    low_wanted: Option<u64>,
}

/// The broker, ClickHouse, and at most one running process.
struct World {
    low: i64,
    high: i64,
    manifest: Vec<Range>,
    tokens: HashSet<String>,
    stored: BTreeMap<i64, u32>,
    committed: Option<i64>,
    now: Instant,
    limits: BatchLimits,
    generations: u64,
    process: Option<Process>,
}

impl World {
    fn new(low: i64, limits: BatchLimits) -> Self {
        Self {
            low,
            high: low,
            manifest: Vec::new(),
            tokens: HashSet::new(),
            stored: BTreeMap::new(),
            committed: None,
            now: Instant::now(),
            limits,
            generations: 0,
            process: None,
        }
    }

    /// Where the manifest says the partition starts, as `Manifest::latest` reads it.
    fn start(&self) -> Start {
        self.manifest
            .iter()
            .max_by_key(|range| range.last)
            .map_or(Start::Beginning, |&range| Start::At(range))
    }

    /// A position the broker may start an assignment at: the committed offset, or anywhere.
    fn untrusted_position(&self, pick: u8) -> i64 {
        if pick.is_multiple_of(3) {
            self.committed.unwrap_or(self.low)
        } else {
            self.low + i64::from(pick) % (self.high - self.low + 1)
        }
    }

    fn assign(&mut self, pick: u8, mut seeks: VecDeque<(u64, i64)>) {
        self.generations += 1;
        let gate = Gate::new(self.start());
        seeks.push_back((self.generations, gate.initial_seek()));
        self.process = Some(Process {
            generation: self.generations,
            gate,
            batcher: None,
            flushing: None,
            stored: None,
            position: self.untrusted_position(pick),
            prefetched: VecDeque::new(),
            seeks,
            low_wanted: None,
        });
    }

    fn apply(&mut self, op: &Op) {
        if let Op::Produce(n) = op {
            self.high += i64::from(*n);
            return;
        }
        if let Op::Start(pick) = op {
            if self.process.is_none() {
                self.assign(*pick, VecDeque::new());
            }
            return;
        }
        let now = self.now;
        let (low, high) = (self.low, self.high);
        let Some(process) = self.process.as_mut() else {
            return;
        };
        match op {
            Op::Deliver => {
                let offset = match process.prefetched.pop_front() {
                    Some(offset) => offset,
                    None if process.position < high => {
                        process.position += 1;
                        process.position - 1
                    }
                    None => return,
                };
                self.deliver(offset);
            }
            Op::Redeliver(k) => process.position = (process.position - i64::from(*k)).max(low),
            Op::ApplySeek(stale) => {
                let Some((generation, target)) = process.seeks.pop_front() else {
                    return;
                };
                let old = process.position;
                process
                    .prefetched
                    .extend((old..high).take(usize::from(*stale)));
                // An offset the broker no longer has resets to the earliest one.
                process.position = target.max(low);
                if generation == process.generation {
                    process.gate.seek_finished(true, now);
                }
            }
            Op::FailSeek => {
                if let Some((generation, _)) = process.seeks.pop_front()
                    && generation == process.generation
                {
                    process.gate.seek_finished(false, now);
                }
            }
            Op::LowArrives => {
                if process.low_wanted.take() == Some(process.generation)
                    && let Some(target) = process.gate.low_fetched(low)
                {
                    process.seeks.push_back((process.generation, target));
                }
            }
            Op::Tick(ms) => {
                self.now += Duration::from_millis(u64::from(*ms));
                if let Some(batcher) = process.batcher.as_mut() {
                    batcher.close_due(&self.limits, self.now);
                }
                if let Some(target) = process.gate.retry_seek(self.now) {
                    process.seeks.push_back((process.generation, target));
                }
            }
            Op::FlushStep => {
                self.flush_step();
            }
            Op::Commit => {
                if process.stored.is_some() {
                    self.committed = process.stored;
                }
            }
            Op::Crash => self.process = None,
            Op::Rebalance(pick) => {
                // The revocation waited for the flush to stop between steps; the client keeps
                // the process's pending seeks, which may still move the new assignment.
                let seeks = std::mem::take(&mut process.seeks);
                self.assign(*pick, seeks);
            }
            Op::Stop => {
                if let Some(batcher) = process.batcher.as_mut() {
                    batcher.close_for_shutdown();
                }
                while self.flush_step() {}
                if let Some(stored) = self.process.as_ref().and_then(|p| p.stored) {
                    self.committed = Some(stored);
                }
                self.process = None;
            }
            Op::Produce(_) | Op::Start(_) => unreachable!("handled above"),
        }
    }

    /// The loop's `admit` and `on_message`, with the real gate and batcher.
    fn deliver(&mut self, offset: i64) {
        let process = self.process.as_mut().expect("running");
        match process.gate.observe(offset, self.now) {
            Verdict::Open { replay } => {
                process.batcher = Some(PartitionBatcher::new(Stream::Logs, 0, replay));
            }
            Verdict::Take => {}
            Verdict::Skip | Verdict::Redelivered => return,
            Verdict::Seek(target) => {
                process.seeks.push_back((process.generation, target));
                return;
            }
            Verdict::FetchLow => {
                process.low_wanted = Some(process.generation);
                return;
            }
        }
        let batcher = process.batcher.as_mut().expect("opened");
        batcher.push(offset, row(offset), &self.limits, self.now);
    }

    /// One step of `flush`: record the range (unless replayed), insert under its token, report.
    /// Returns false when there was nothing to do.
    fn flush_step(&mut self) -> bool {
        let Some(process) = self.process.as_mut() else {
            return false;
        };
        if process.flushing.is_none() {
            let batch = process
                .batcher
                .as_mut()
                .and_then(PartitionBatcher::take_closed);
            process.flushing = batch.map(|batch| (batch, Step::Record));
        }
        let Some((batch, step)) = process.flushing.as_mut() else {
            return false;
        };
        match step {
            Step::Record => {
                if !batch.recorded {
                    self.manifest.push(batch.range);
                }
                *step = Step::Insert;
            }
            Step::Insert => {
                let token = batch_token(GROUP, TOPIC, 0, batch.range.first, batch.range.last);
                if !batch.rows.is_empty() && self.tokens.insert(token) {
                    for offset in offsets(&batch.rows) {
                        let copies = self.stored.entry(offset).or_default();
                        *copies += 1;
                        assert_eq!(*copies, 1, "offset {offset} stored twice");
                    }
                }
                *step = Step::Report;
            }
            Step::Report => {
                process.stored = Some(batch.range.last + 1);
                process.flushing = None;
            }
        }
        true
    }

    /// After the random part: a process runs undisturbed until everything is stored.
    fn settle(&mut self) {
        if self.process.is_none() {
            self.apply(&Op::Start(0));
        }
        for _ in 0..50 {
            let process = self.process.as_ref().expect("running");
            for _ in 0..process.seeks.len() {
                self.apply(&Op::ApplySeek(0));
            }
            self.apply(&Op::LowArrives);
            for _ in 0..(self.high - self.low + 10) {
                self.apply(&Op::Deliver);
            }
            self.apply(&Op::Tick(4000));
            while self.flush_step() {}
            if self.stored.len() as i64 == self.high - self.low {
                return;
            }
        }
    }
}

fn row(offset: i64) -> Item {
    Item::Row(Row::Log(LogRow {
        account_id: Uuid::nil(),
        workspace_id: Uuid::nil(),
        timestamp: Utc::now(),
        id: Uuid::nil(),
        received: Utc::now(),
        level: 20,
        name: "n".into(),
        // The offset, so that the model can tell which messages an insert stored.
        message: offset.to_string(),
        flow_run_id: None,
        task_run_id: None,
        worker_id: None,
    }))
}

fn offsets(rows: &Rows) -> Vec<i64> {
    match rows {
        Rows::Logs(rows) => rows.iter().map(|r| r.message.parse().unwrap()).collect(),
        Rows::Events(_) => unreachable!("the model batches logs"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_offset_is_stored_exactly_once_whatever_crashes_redeliveries_and_seeks_happen(
        low in 0..5i64,
        max_rows in 1..6usize,
        max_age_ms in 10..3000u64,
        ops in prop::collection::vec(op(), 0..300),
    ) {
        let limits = BatchLimits {
            max_rows,
            max_bytes: usize::MAX,
            max_age: Duration::from_millis(max_age_ms),
        };
        let mut world = World::new(low, limits);
        for op in &ops {
            world.apply(op);
        }
        world.settle();
        let expected: BTreeMap<i64, u32> = (world.low..world.high).map(|o| (o, 1)).collect();
        prop_assert_eq!(&world.stored, &expected, "manifest: {:?}", world.manifest);
    }
}
