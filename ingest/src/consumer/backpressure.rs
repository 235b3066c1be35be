//! Bounding memory by pausing consumption, never by dropping.

use rdkafka::consumer::Consumer;

use super::Ingest;
use super::state::{Partition, State};
use crate::telemetry;

impl Ingest {
    /// Pauses every assigned partition while buffers hold more than the budget; resumes below
    /// half of it. Memory is bounded by not reading, never by dropping.
    pub(super) fn apply_backpressure(&self, state: &mut State) {
        let buffered: usize = state
            .partitions
            .values()
            .map(Partition::buffered_bytes)
            .sum();
        metrics::gauge!(telemetry::BUFFERED_BYTES).set(buffered as f64);
        if !state.paused && buffered > self.max_buffered {
            tracing::warn!(
                buffered,
                budget = self.max_buffered,
                "buffers full: pausing consumption"
            );
            state.paused = true;
            let _ = self
                .consumer
                .pause(&self.partition_list(state.assigned.keys()));
        } else if state.paused && buffered < self.max_buffered / 2 {
            tracing::info!(buffered, "buffers drained: resuming consumption");
            state.paused = false;
            let _ = self
                .consumer
                .resume(&self.partition_list(state.assigned.keys()));
        }
        metrics::gauge!(telemetry::PAUSED).set(if state.paused { 1.0 } else { 0.0 });
    }
}
