//! The start of an assigned partition: where it resumes, and moving it there.

use std::time::{Duration, Instant};

use flowhouse_schema::Stream;
use rdkafka::consumer::Consumer;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset};

use super::{Ingest, State, lock};
use crate::batch::Range;

impl Ingest {
    /// After an assignment, a partition starts exactly at its latest recorded range (or at its
    /// earliest offset when it has none), whatever position the client fetched from: the broker's
    /// committed offset is not trusted. Messages before that offset are already stored and are
    /// skipped; while the partition is elsewhere it is moved (and moved again every few seconds,
    /// since a seek does not stop messages already fetched). Returns the range to replay once
    /// the first message is the expected one.
    pub(super) fn start_gate(
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
}

/// A partition waiting for the first message of its assignment.
pub(super) struct Gate {
    pub(super) expected: i64,
    pub(super) latest: Option<Range>,
    pub(super) last_seek: Option<Instant>,
}

/// Where an assigned partition starts.
#[derive(Clone, Copy, Debug)]
pub(super) enum Start {
    /// At its latest recorded range, which is replayed.
    At(Range),
    /// At its earliest offset: nothing was ever recorded for it.
    Beginning,
}
