//! Where an assigned partition starts, as a pure state machine (no I/O, no clock of its own):
//! the consume loop feeds it every message's offset and carries out what it answers, so the
//! start rule of [`crate::exactly_once`] is tested directly, and by a model of crashes,
//! redeliveries and seeks (`replay_model`).
//!
//! After an assignment, a partition starts exactly at its latest recorded range (or at its
//! earliest offset when it has none), whatever position the client fetched from: the broker's
//! committed offset is not trusted. The partition is moved there as soon as it is assigned
//! ([`Gate::initial_seek`]: a broker that starts it past its start, at the end of the log,
//! would otherwise deliver nothing to correct it with); messages before that offset are already
//! stored and are skipped; while the partition is elsewhere it is moved again (every few
//! seconds at most, since a seek does not stop messages already fetched). Once the partition is
//! open, a message at or below the last offset taken is a redelivery and is dropped.

use std::cmp::Ordering;
use std::time::{Duration, Instant};

use crate::batch::Range;

/// How long after a seek the gate trusts it before moving the partition again: messages
/// fetched before the seek may still arrive for a while.
pub const RESEEK_AFTER: Duration = Duration::from_secs(3);

/// Where an assigned partition starts, from the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// At its latest recorded range, which is replayed.
    At(Range),
    /// At its earliest offset: nothing was ever recorded for it.
    Beginning,
}

/// What to do with one message, and what the loop must do for the partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The first message of the partition's pass: start batching (replaying `replay` as one
    /// batch under its recorded token) and take the message.
    Open { replay: Option<Range> },
    /// The next message of an open partition: take it.
    Take,
    /// Drop it: before the resume position, or the partition is being moved.
    Skip,
    /// Drop it: offsets only grow within a partition, so an offset at or below the last one
    /// taken was delivered before (seen with tansu at the end of a log). It is batched or stored.
    Redelivered,
    /// Drop it and move the partition to this offset.
    Seek(i64),
    /// Drop it and fetch the partition's earliest offset (then [`Gate::low_fetched`]).
    FetchLow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SeekState {
    InFlight,
    Done(Instant),
    Failed(Instant),
}

/// The start of one assigned partition, then its redelivery filter.
#[derive(Debug)]
pub struct Gate {
    start: Start,
    /// The earliest offset the broker still has, once fetched: a resume point older than that
    /// was deleted by retention, and the partition can only start there.
    low: Option<i64>,
    low_requested: bool,
    /// The highest offset dropped only because `low` was not known yet: if it is at or beyond
    /// the start, the partition must be moved back.
    dropped: Option<i64>,
    seek: SeekState,
    /// The last offset taken, once the partition is open.
    last: Option<i64>,
}

impl Gate {
    /// A gate whose first seek, to [`Gate::initial_seek`], the caller starts now.
    pub fn new(start: Start) -> Self {
        Self {
            start,
            low: None,
            low_requested: false,
            dropped: None,
            seek: SeekState::InFlight,
            last: None,
        }
    }

    /// Where to move the partition on assignment: its recorded first offset (a broker moves an
    /// offset it no longer has to the earliest one, `auto.offset.reset`), or 0 for the earliest.
    pub fn initial_seek(&self) -> i64 {
        self.floor()
    }

    pub fn is_open(&self) -> bool {
        self.last.is_some()
    }

    /// The recorded first offset: nothing before it may be taken.
    fn floor(&self) -> i64 {
        match self.start {
            Start::At(range) => range.first,
            Start::Beginning => 0,
        }
    }

    /// The offset the partition starts at, once it is known.
    fn expected(&self) -> Option<i64> {
        self.low.map(|low| self.floor().max(low))
    }

    /// Decides about the message at `offset`; `now` times seeks.
    pub fn observe(&mut self, offset: i64, now: Instant) -> Verdict {
        if let Some(last) = self.last {
            if offset <= last {
                return Verdict::Redelivered;
            }
            self.last = Some(offset);
            return Verdict::Take;
        }
        let floor = self.floor();
        if offset < floor {
            return Verdict::Skip;
        }
        let expected = match self.expected() {
            Some(expected) => expected,
            // The message exists, so the earliest offset is not above it: the start is known
            // without asking the broker (the usual case, which costs no round trip).
            None if offset == floor => floor,
            None => {
                self.dropped = self.dropped.max(Some(offset));
                if self.low_requested {
                    return Verdict::Skip;
                }
                self.low_requested = true;
                return Verdict::FetchLow;
            }
        };
        match offset.cmp(&expected) {
            Ordering::Less => Verdict::Skip,
            Ordering::Equal => {
                self.last = Some(offset);
                Verdict::Open {
                    replay: match self.start {
                        Start::At(range) => Some(range),
                        Start::Beginning => None,
                    },
                }
            }
            Ordering::Greater => self.move_to(expected, now),
        }
    }

    /// A seek to `expected` unless one is running or was done a moment ago.
    fn move_to(&mut self, expected: i64, now: Instant) -> Verdict {
        let due = match self.seek {
            SeekState::Failed(_) => true,
            SeekState::InFlight => false,
            SeekState::Done(at) => now.saturating_duration_since(at) > RESEEK_AFTER,
        };
        if due {
            self.seek = SeekState::InFlight;
            Verdict::Seek(expected)
        } else {
            Verdict::Skip
        }
    }

    /// The broker's earliest offset, asked for by [`Verdict::FetchLow`]. Returns where to move
    /// the partition when a message at or beyond its start was dropped while waiting for it.
    pub fn low_fetched(&mut self, low: i64) -> Option<i64> {
        self.low = Some(low);
        let expected = self.expected()?;
        if self.is_open() || self.dropped.is_none_or(|dropped| dropped < expected) {
            return None;
        }
        // Whatever seeks ran before, the dropped message must be delivered again: this seek is
        // owed, not timed (a second one to the same offset is harmless).
        self.seek = SeekState::InFlight;
        Some(expected)
    }

    /// The earliest offset could not be fetched: ask again on the next message.
    pub fn low_failed(&mut self) {
        self.low_requested = false;
    }

    /// A seek asked for by [`Verdict::Seek`] (or the initial one) ended; a failed one is
    /// retried on a later message or by [`Gate::retry_seek`].
    pub fn seek_finished(&mut self, ok: bool, now: Instant) {
        self.seek = if ok {
            SeekState::Done(now)
        } else {
            SeekState::Failed(now)
        };
    }

    /// The seek to try again a while after one failed, while the partition is not open: asked
    /// on the loop's tick, because a partition the broker started at the end of its log
    /// delivers no message that would ask for it.
    pub fn retry_seek(&mut self, now: Instant) -> Option<i64> {
        match self.seek {
            SeekState::Failed(at)
                if !self.is_open() && now.saturating_duration_since(at) > RESEEK_AFTER =>
            {
                self.seek = SeekState::InFlight;
                Some(self.expected().unwrap_or_else(|| self.floor()))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(first: i64, last: i64) -> Start {
        Start::At(Range { first, last })
    }

    /// A gate whose initial seek is done.
    fn seeked(start: Start, now: Instant) -> Gate {
        let mut gate = Gate::new(start);
        gate.seek_finished(true, now - RESEEK_AFTER * 2);
        gate
    }

    #[test]
    fn opens_at_the_recorded_first_offset_and_replays_its_range() {
        let now = Instant::now();
        let mut gate = Gate::new(at(10, 14));
        assert_eq!(gate.initial_seek(), 10);
        assert_eq!(gate.observe(8, now), Verdict::Skip);
        assert_eq!(gate.observe(9, now), Verdict::Skip);
        assert_eq!(
            gate.observe(10, now),
            Verdict::Open {
                replay: Some(Range {
                    first: 10,
                    last: 14
                })
            }
        );
        assert_eq!(gate.observe(11, now), Verdict::Take);
        assert_eq!(gate.observe(11, now), Verdict::Redelivered);
        assert_eq!(gate.observe(5, now), Verdict::Redelivered);
        assert_eq!(gate.observe(12, now), Verdict::Take);
    }

    #[test]
    fn a_partition_started_beyond_its_start_is_moved_back_once_per_reseek_interval() {
        let now = Instant::now();
        let mut gate = seeked(at(10, 14), now);
        // The broker started past the recorded range: its earliest offset is needed first.
        assert_eq!(gate.observe(20, now), Verdict::FetchLow);
        assert_eq!(gate.observe(21, now), Verdict::Skip);
        assert_eq!(gate.low_fetched(0), Some(10));
        // Messages fetched before the seek keep coming; no second seek while one runs...
        assert_eq!(gate.observe(22, now), Verdict::Skip);
        gate.seek_finished(true, now);
        // ...nor right after it...
        assert_eq!(gate.observe(23, now + RESEEK_AFTER), Verdict::Skip);
        // ...but when the partition is still elsewhere a while later.
        let later = now + RESEEK_AFTER + Duration::from_millis(1);
        assert_eq!(gate.observe(24, later), Verdict::Seek(10));
        gate.seek_finished(false, later);
        assert_eq!(gate.retry_seek(later), None, "not right after the failure");
        assert_eq!(gate.observe(25, later), Verdict::Seek(10));
        gate.seek_finished(false, later);
        // No message comes (the partition sits at the end of its log): the tick retries it.
        assert_eq!(gate.retry_seek(later + RESEEK_AFTER * 2), Some(10));
        assert_eq!(
            gate.retry_seek(later + RESEEK_AFTER * 3),
            None,
            "one at a time"
        );
        assert!(!gate.is_open());
        assert!(matches!(gate.observe(10, later), Verdict::Open { .. }));
    }

    #[test]
    fn a_start_deleted_by_retention_opens_at_the_earliest_offset() {
        let now = Instant::now();
        let mut gate = seeked(at(10, 14), now);
        assert_eq!(gate.observe(30, now), Verdict::FetchLow);
        // 30 is the earliest offset left: it was dropped while asking, so move back to it.
        assert_eq!(gate.low_fetched(30), Some(30));
        gate.seek_finished(true, now);
        assert!(matches!(gate.observe(30, now), Verdict::Open { .. }));
    }

    #[test]
    fn a_partition_never_recorded_starts_at_its_earliest_offset() {
        let now = Instant::now();
        let mut gate = Gate::new(Start::Beginning);
        assert_eq!(gate.initial_seek(), 0);
        assert_eq!(gate.observe(0, now), Verdict::Open { replay: None });
        let mut gate = seeked(Start::Beginning, now);
        assert_eq!(gate.observe(7, now), Verdict::FetchLow);
        // 7 was dropped but the log starts at 5: move back to 5.
        assert_eq!(gate.low_fetched(5), Some(5));
        let mut gate = seeked(Start::Beginning, now);
        assert_eq!(gate.observe(7, now), Verdict::FetchLow);
        gate.low_failed();
        assert_eq!(gate.observe(8, now), Verdict::FetchLow);
        // Nothing at or after 9 was dropped: no seek needed, 9 opens.
        let mut gate = seeked(Start::Beginning, now);
        assert_eq!(gate.low_fetched(9), None);
        assert_eq!(gate.observe(9, now), Verdict::Open { replay: None });
    }
}
