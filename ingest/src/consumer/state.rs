//! What the consume loop knows about its partitions.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use flowhouse_schema::Stream;
use rdkafka::TopicPartitionList;
use tokio_util::sync::CancellationToken;

use super::Ingest;
use super::gate::Gate;
use super::ownership::Ownership;
use crate::batch::{PartitionBatcher, Range};

pub(super) type Key = (Stream, i32);

pub(super) struct State {
    /// Every partition of the current assignment: the cached assignment (the client's
    /// `assignment()` copies it from librdkafka on every call).
    pub(super) assigned: HashMap<Key, Assignment>,
    /// The partitions whose gate opened: batching.
    pub(super) partitions: HashMap<Key, Partition>,
    pub(super) next_generation: u64,
    pub(super) paused: bool,
    pub(super) last_commit: Instant,
    /// Partitions nobody consumes (see `ownership`): the tracker, whether a check runs, and
    /// when the last one started.
    pub(super) ownership: Ownership,
    pub(super) checking: bool,
    pub(super) last_check: Instant,
    /// Between rebalances: the last one's assignment arrived and no revocation since.
    pub(super) steady: bool,
}

impl Default for State {
    fn default() -> Self {
        Self {
            assigned: HashMap::new(),
            partitions: HashMap::new(),
            next_generation: 0,
            paused: false,
            last_commit: Instant::now(),
            ownership: Ownership::default(),
            checking: false,
            last_check: Instant::now(),
            steady: false,
        }
    }
}

impl State {
    /// The partition's state if it is still the same assignment as `generation`.
    pub(super) fn current(&mut self, key: Key, generation: u64) -> Option<&mut Partition> {
        self.partitions
            .get_mut(&key)
            .filter(|partition| partition.generation == generation)
    }

    /// The partition's assignment if it is still the one numbered `generation`.
    pub(super) fn assignment(&mut self, key: Key, generation: u64) -> Option<&mut Assignment> {
        self.assigned
            .get_mut(&key)
            .filter(|assignment| assignment.generation == generation)
    }
}

/// One assigned partition.
pub(super) struct Assignment {
    /// `None` when the service stopped before the manifest said where to start.
    pub(super) gate: Option<Gate>,
    /// Tells answers meant for an earlier assignment of the same partition apart.
    pub(super) generation: u64,
    /// Stops the gate's background calls (earliest offset, seek) when the partition goes.
    pub(super) cancel: CancellationToken,
}

/// One partition being batched.
pub(super) struct Partition {
    pub(super) batcher: PartitionBatcher,
    pub(super) generation: u64,
    /// Bytes of the batch being flushed, if one is.
    pub(super) flushing: Option<usize>,
    /// The offset after the last batch ClickHouse acknowledged, and the last one committed.
    pub(super) stored: Option<i64>,
    pub(super) committed: Option<i64>,
}

impl Partition {
    pub(super) fn new(
        stream: Stream,
        partition: i32,
        generation: u64,
        latest: Option<Range>,
    ) -> Self {
        Self {
            batcher: PartitionBatcher::new(stream, partition, latest),
            generation,
            flushing: None,
            stored: None,
            committed: None,
        }
    }

    pub(super) fn buffered_bytes(&self) -> usize {
        self.batcher.buffered_bytes() + self.flushing.unwrap_or(0)
    }
}

impl Ingest {
    /// `keys` as the client's partition list.
    pub(super) fn partition_list<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a Key>,
    ) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for (stream, partition) in keys {
            list.add_partition(&self.topics[stream], *partition);
        }
        list
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
