//! Per-partition batching: by rows, bytes and age, or at recorded boundaries when replaying.
//!
//! This module is pure bookkeeping (no I/O, no clock of its own), so its rules are unit-tested
//! directly. See [`crate::exactly_once`] for why boundaries are per partition and replayed
//! exactly.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use flowhouse_schema::rows::{EventRow, LogRow};

use crate::dead_letter::DeadLetter;
use flowhouse_schema::Stream;
use flowhouse_schema::decode::Row;

/// When a batch closes. Defaults measured on the local stack (see the README's Performance
/// section): big enough that one insert carries thousands of rows, small and young enough that
/// events are visible within about a second.
#[derive(clap::Args, Clone, Debug)]
pub struct BatchLimits {
    /// Rows that close a batch.
    #[arg(
        long = "batch-max-rows",
        env = "FLOWHOUSE_INGEST_BATCH_MAX_ROWS",
        default_value_t = DEFAULT_LIMITS.max_rows
    )]
    pub max_rows: usize,
    /// Bytes (approximate, in memory) that close a batch.
    #[arg(long = "batch-max-bytes", env = "FLOWHOUSE_INGEST_BATCH_MAX_BYTES", default_value_t = DEFAULT_LIMITS.max_bytes)]
    pub max_bytes: usize,
    /// Age of a batch's first message that closes it.
    #[arg(long = "batch-max-age", env = "FLOWHOUSE_INGEST_BATCH_MAX_AGE", value_parser = humantime::parse_duration, default_value = "1s")]
    pub max_age: Duration,
}

/// The flags' defaults (a test in `config` checks `max_age` against the flag's text).
const DEFAULT_LIMITS: BatchLimits = BatchLimits {
    max_rows: 50_000,
    max_bytes: 32 * 1024 * 1024,
    max_age: Duration::from_secs(1),
};

impl Default for BatchLimits {
    fn default() -> Self {
        DEFAULT_LIMITS
    }
}

/// An inclusive offset range recorded in the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub first: i64,
    pub last: i64,
}

/// The rows of one batch, all for one table.
#[derive(Debug)]
pub enum Rows {
    Events(Vec<EventRow>),
    Logs(Vec<LogRow>),
}

impl Rows {
    fn new(stream: Stream) -> Self {
        match stream {
            Stream::Events => Rows::Events(Vec::new()),
            Stream::Logs => Rows::Logs(Vec::new()),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Rows::Events(rows) => rows.len(),
            Rows::Logs(rows) => rows.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&mut self, row: Row) {
        match (self, row) {
            (Rows::Events(rows), Row::Event(row)) => rows.push(row),
            (Rows::Logs(rows), Row::Log(row)) => rows.push(row),
            // The decoder picks the row type from the table; a mismatch is a bug here.
            _ => unreachable!("a row of the wrong table reached a batch"),
        }
    }
}

/// A closed batch: a contiguous offset range of one partition.
#[derive(Debug)]
pub struct Batch {
    pub stream: Stream,
    pub partition: i32,
    pub range: Range,
    pub rows: Rows,
    pub dead_letters: Vec<DeadLetter>,
    pub bytes: usize,
    /// True when the range was recorded by an earlier run (a replay): not recorded again.
    pub recorded: bool,
}

/// The open batch of one partition.
#[derive(Debug)]
struct Open {
    first: i64,
    last: i64,
    rows: Rows,
    dead_letters: Vec<DeadLetter>,
    bytes: usize,
    opened: Instant,
    /// The recorded range this batch must end at exactly, when replaying.
    planned: Option<Range>,
}

/// Batching state of one assigned partition, from the first message of its assignment.
#[derive(Debug)]
pub struct PartitionBatcher {
    stream: Stream,
    partition: i32,
    open: Option<Open>,
    /// The partition's latest recorded range, until it has been re-formed.
    replay: Option<Range>,
    /// Messages below this offset are already stored (they precede the latest recorded range).
    floor: Option<i64>,
    closed: VecDeque<Batch>,
}

/// What one message contributes to a batch.
#[derive(Debug)]
pub enum Item {
    Row(Row),
    Dead(DeadLetter),
}

impl Item {
    fn size(&self) -> usize {
        match self {
            Item::Row(row) => row.approximate_size(),
            Item::Dead(letter) => letter.size(),
        }
    }
}

impl PartitionBatcher {
    /// `latest` is the partition's latest recorded range: it is replayed as one batch under its
    /// own token, and what precedes it is already stored.
    pub fn new(stream: Stream, partition: i32, latest: Option<Range>) -> Self {
        Self {
            stream,
            partition,
            open: None,
            replay: latest,
            floor: latest.map(|range| range.first),
            closed: VecDeque::new(),
        }
    }

    /// Adds the message at `offset`. Offsets only grow within a partition.
    pub fn push(&mut self, offset: i64, item: Item, limits: &BatchLimits, now: Instant) {
        if self.floor.is_some_and(|floor| offset < floor) {
            return;
        }
        // A recorded range entirely behind this message can no longer be re-formed (its
        // messages were never delivered again, e.g. deleted): nothing is left to replay.
        self.replay.take_if(|plan| plan.last < offset);
        let must_close = self.open.as_ref().is_some_and(|open| match open.planned {
            // A replayed range ends at its recorded last offset even if that offset itself was
            // removed (compaction, aborted transactions).
            Some(plan) => offset > plan.last,
            // A free batch never runs into the recorded range: that range is replayed alone.
            None => self.replay.is_some_and(|plan| plan.first <= offset),
        });
        if must_close {
            self.close();
        }
        let open = match &mut self.open {
            Some(open) => open,
            None => {
                let planned = self
                    .replay
                    .take_if(|plan| plan.first <= offset && offset <= plan.last);
                self.open.insert(Open {
                    first: offset,
                    last: offset,
                    rows: Rows::new(self.stream),
                    dead_letters: Vec::new(),
                    bytes: 0,
                    opened: now,
                    planned,
                })
            }
        };
        open.last = offset;
        open.bytes += item.size();
        match item {
            Item::Row(row) => open.rows.push(row),
            Item::Dead(letter) => open.dead_letters.push(letter),
        }
        self.close_due(limits, now);
    }

    /// Closes the open batch if it reached its recorded end or, unplanned, a limit.
    pub fn close_due(&mut self, limits: &BatchLimits, now: Instant) {
        let Some(open) = &self.open else { return };
        let due = match open.planned {
            Some(plan) => open.last >= plan.last,
            None => {
                open.rows.len() + open.dead_letters.len() >= limits.max_rows
                    || open.bytes >= limits.max_bytes
                    || now.duration_since(open.opened) >= limits.max_age
            }
        };
        if due {
            self.close();
        }
    }

    /// Closes the open batch for a graceful stop: only if it is unplanned (a partial replayed
    /// range must wait for the rest of its messages; see [`crate::exactly_once`]).
    pub fn close_for_shutdown(&mut self) {
        if self
            .open
            .as_ref()
            .is_some_and(|open| open.planned.is_none())
        {
            self.close();
        }
    }

    fn close(&mut self) {
        let Some(open) = self.open.take() else { return };
        let (range, recorded) = match open.planned {
            Some(plan) => (plan, true),
            None => (
                Range {
                    first: open.first,
                    last: open.last,
                },
                false,
            ),
        };
        self.closed.push_back(Batch {
            stream: self.stream,
            partition: self.partition,
            range,
            rows: open.rows,
            dead_letters: open.dead_letters,
            bytes: open.bytes,
            recorded,
        });
    }

    /// The oldest closed batch, to flush.
    pub fn take_closed(&mut self) -> Option<Batch> {
        self.closed.pop_front()
    }

    /// Bytes held: the open batch and the closed ones waiting for their turn.
    pub fn buffered_bytes(&self) -> usize {
        self.open.as_ref().map_or(0, |open| open.bytes)
            + self.closed.iter().map(|batch| batch.bytes).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use flowhouse_schema::rows::LogRow;
    use uuid::Uuid;

    use super::*;

    fn limits(rows: usize) -> BatchLimits {
        BatchLimits {
            max_rows: rows,
            max_bytes: usize::MAX,
            max_age: Duration::from_secs(3600),
        }
    }

    fn row() -> Item {
        Item::Row(Row::Log(LogRow {
            account_id: Uuid::nil(),
            workspace_id: Uuid::nil(),
            timestamp: Utc::now(),
            id: Uuid::nil(),
            received: Utc::now(),
            level: 20,
            name: "n".into(),
            message: "m".into(),
            flow_run_id: None,
            task_run_id: None,
            worker_id: None,
        }))
    }

    fn ranges(batcher: &mut PartitionBatcher) -> Vec<(i64, i64, usize, bool)> {
        std::iter::from_fn(|| batcher.take_closed())
            .map(|b| (b.range.first, b.range.last, b.rows.len(), b.recorded))
            .collect()
    }

    #[test]
    fn batches_close_on_rows_and_on_age() {
        let now = Instant::now();
        let limits = BatchLimits {
            max_age: Duration::from_secs(1),
            ..limits(3)
        };
        let mut batcher = PartitionBatcher::new(Stream::Logs, 0, None);
        for offset in 10..17 {
            batcher.push(offset, row(), &limits, now);
        }
        assert_eq!(
            ranges(&mut batcher),
            vec![(10, 12, 3, false), (13, 15, 3, false)]
        );
        batcher.close_due(&limits, now + Duration::from_millis(999));
        assert!(ranges(&mut batcher).is_empty());
        batcher.close_due(&limits, now + Duration::from_secs(1));
        assert_eq!(ranges(&mut batcher), vec![(16, 16, 1, false)]);
    }

    #[test]
    fn the_latest_recorded_range_is_replayed_whatever_the_limits() {
        let now = Instant::now();
        // Recorded by a run that crashed: [100, 104]; this run starts there.
        let mut batcher = PartitionBatcher::new(
            Stream::Logs,
            0,
            Some(Range {
                first: 100,
                last: 104,
            }),
        );
        for offset in 100..109 {
            batcher.push(offset, row(), &limits(2), now);
        }
        assert_eq!(
            ranges(&mut batcher),
            vec![
                (100, 104, 5, true),
                (105, 106, 2, false),
                (107, 108, 2, false)
            ]
        );
    }

    #[test]
    fn a_recorded_range_whose_last_offset_is_gone_still_closes_at_its_end() {
        let now = Instant::now();
        let mut batcher = PartitionBatcher::new(Stream::Logs, 0, Some(Range { first: 0, last: 5 }));
        for offset in [0, 1, 2, 7, 8] {
            batcher.push(offset, row(), &limits(100), now);
        }
        batcher.close_for_shutdown();
        assert_eq!(
            ranges(&mut batcher),
            vec![(0, 5, 3, true), (7, 8, 2, false)]
        );
    }

    #[test]
    fn messages_before_the_latest_recorded_range_are_already_stored() {
        let now = Instant::now();
        let mut batcher = PartitionBatcher::new(
            Stream::Logs,
            0,
            Some(Range {
                first: 10,
                last: 12,
            }),
        );
        for offset in 5..14 {
            batcher.push(offset, row(), &limits(100), now);
        }
        batcher.close_for_shutdown();
        assert_eq!(
            ranges(&mut batcher),
            vec![(10, 12, 3, true), (13, 13, 1, false)]
        );
    }

    #[test]
    fn shutdown_leaves_a_partial_replayed_range_alone() {
        let now = Instant::now();
        let mut batcher = PartitionBatcher::new(Stream::Logs, 0, Some(Range { first: 0, last: 9 }));
        for offset in 0..4 {
            batcher.push(offset, row(), &limits(100), now);
        }
        batcher.close_for_shutdown();
        assert!(ranges(&mut batcher).is_empty());
        assert!(batcher.buffered_bytes() > 0);
    }

    #[test]
    fn a_range_entirely_behind_the_start_is_not_replayed() {
        let now = Instant::now();
        let mut batcher = PartitionBatcher::new(Stream::Logs, 0, Some(Range { first: 0, last: 9 }));
        for offset in 10..13 {
            batcher.push(offset, row(), &limits(100), now);
        }
        batcher.close_for_shutdown();
        assert_eq!(ranges(&mut batcher), vec![(10, 12, 3, false)]);
    }

    /// Property tests: whatever the limits and the timing, a replay after a crash re-forms the
    /// recorded batch exactly, and the batches of the two runs cover every offset once.
    mod replay {
        use proptest::prelude::*;

        use super::*;

        fn row_at(offset: i64) -> Item {
            let Item::Row(Row::Log(mut log)) = row() else {
                unreachable!("row() is a log row")
            };
            // The offset, so that a batch says which messages it holds.
            log.message = offset.to_string();
            Item::Row(Row::Log(log))
        }

        /// A closed batch as (range, offsets of its rows, replayed).
        type Closed = (Range, Vec<i64>, bool);

        /// Pushes `offsets`, `steps[i]` ms apart, closing due batches as the loop's tick does.
        fn run(
            batcher: &mut PartitionBatcher,
            offsets: &[i64],
            steps: &[u16],
            limits: &BatchLimits,
        ) -> Vec<Closed> {
            let mut now = Instant::now();
            let mut closed = Vec::new();
            for (i, &offset) in offsets.iter().enumerate() {
                now += Duration::from_millis(u64::from(steps[i % steps.len()]));
                batcher.close_due(limits, now);
                batcher.push(offset, row_at(offset), limits, now);
                closed.extend(take_all(batcher));
            }
            closed
        }

        fn take_all(batcher: &mut PartitionBatcher) -> Vec<Closed> {
            std::iter::from_fn(|| batcher.take_closed())
                .map(|batch| {
                    let Rows::Logs(rows) = &batch.rows else {
                        unreachable!("log rows")
                    };
                    let held = rows.iter().map(|r| r.message.parse().unwrap()).collect();
                    (batch.range, held, batch.recorded)
                })
                .collect()
        }

        fn limits(max_rows: usize, max_age_ms: u64) -> BatchLimits {
            BatchLimits {
                max_rows,
                max_bytes: usize::MAX,
                max_age: Duration::from_millis(max_age_ms),
            }
        }

        proptest! {
            #[test]
            fn a_replay_re_forms_the_recorded_batch_and_the_runs_cover_each_offset_once(
                // Gaps between offsets stand for compacted messages and transaction markers.
                gaps in prop::collection::vec(1..3i64, 1..80),
                (rows1, age1, rows2, age2) in (1..8usize, 1..60u64, 1..8usize, 1..60u64),
                steps1 in prop::collection::vec(0..30u16, 1..20),
                steps2 in prop::collection::vec(0..30u16, 1..20),
                crash in any::<prop::sample::Index>(),
                from in any::<prop::sample::Index>(),
            ) {
                let offsets: Vec<i64> = gaps
                    .iter()
                    .scan(100, |offset, gap| {
                        *offset += gap;
                        Some(*offset)
                    })
                    .collect();
                let mut first = PartitionBatcher::new(Stream::Logs, 0, None);
                let before = run(&mut first, &offsets, &steps1, &limits(rows1, age1));
                prop_assume!(!before.is_empty());
                // The first run recorded batch k, then crashed: everything before it is stored.
                let k = crash.index(before.len());
                let (recorded, held, _) = before[k].clone();

                // The next owner starts anywhere at or before the recorded first offset (its
                // gate skips nothing the batcher must see), with other limits and timing.
                let start = offsets.iter().position(|&o| o == recorded.first).unwrap();
                let replayed = &offsets[from.index(start + 1)..];
                let mut second = PartitionBatcher::new(Stream::Logs, 0, Some(recorded));
                let mut after = run(&mut second, replayed, &steps2, &limits(rows2, age2));
                second.close_due(&limits(rows2, age2), Instant::now() + Duration::from_secs(3600));
                after.extend(take_all(&mut second));

                prop_assert_eq!(&after[0], &(recorded, held, true), "the replay re-forms batch {}", k);
                let mut covered: Vec<i64> = before[..k].iter().flat_map(|(_, held, _)| held.clone()).collect();
                covered.extend(after.iter().flat_map(|(_, held, _)| held.clone()));
                let stored_last = after.last().map_or(recorded.last, |(range, _, _)| range.last);
                let expected: Vec<i64> = offsets.iter().copied().filter(|&o| o <= stored_last).collect();
                prop_assert_eq!(covered, expected);
                for pair in before[..k].iter().chain(&after).collect::<Vec<_>>().windows(2) {
                    prop_assert!(pair[0].0.last < pair[1].0.first, "ranges in order, no overlap");
                }
            }
        }
    }
}
