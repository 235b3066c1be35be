//! The flushes running now, so that a revocation can stop them at a safe point and wait.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::lock;

/// The flushes running now, so that a revocation can stop them at a safe point and wait.
#[derive(Default)]
pub(super) struct InFlight {
    pub(super) slots: Mutex<HashMap<TopicPartition, Arc<Slot>>>,
}

pub(super) type TopicPartition = (Arc<str>, i32);

pub(super) struct Slot {
    pub(super) cancel: CancellationToken,
    pub(super) finished: Mutex<bool>,
    pub(super) signal: Condvar,
}

impl InFlight {
    pub(super) fn register(&self, key: TopicPartition) -> Arc<Slot> {
        let slot = Arc::new(Slot {
            cancel: CancellationToken::new(),
            finished: Mutex::new(false),
            signal: Condvar::new(),
        });
        lock(&self.slots).insert(key, slot.clone());
        slot
    }

    pub(super) fn cancel_and_wait(&self, keys: &[(String, i32)], timeout: Duration) {
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

    pub(super) fn cancel_all(&self) {
        for slot in lock(&self.slots).values() {
            slot.cancel.cancel();
        }
    }
}

/// Marks a flush finished however it ends (return, cancellation, panic).
pub(super) struct FinishOnDrop(pub(super) Arc<Slot>);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        *lock(&self.0.finished) = true;
        self.0.signal.notify_all();
    }
}
