//! Per-tenant shares of a shared resource (ClickHouse slots, upload slots, the producer's
//! queue), so that one tenant's flood is bounded by its own share and never takes what the
//! others need.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// At most `per_key` units held at once by each key.
pub struct PerKeyLimit<K> {
    per_key: usize,
    slots: Mutex<HashMap<K, Arc<Semaphore>>>,
}

impl<K: Hash + Eq + Clone> PerKeyLimit<K> {
    pub fn new(per_key: usize) -> Self {
        Self {
            per_key: per_key.max(1),
            slots: Mutex::new(HashMap::new()),
        }
    }

    pub fn per_key(&self) -> usize {
        self.per_key
    }

    fn semaphore(&self, key: &K) -> Arc<Semaphore> {
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_key)))
            .clone()
    }

    /// `n` units (at most the whole share, so a large request is never refused forever), or
    /// `None` when `key` holds too many already.
    pub fn try_acquire(&self, key: &K, n: usize) -> Option<OwnedSemaphorePermit> {
        self.semaphore(key)
            .try_acquire_many_owned(self.units(n))
            .ok()
    }

    /// `n` units, waiting for them.
    pub async fn acquire(&self, key: &K, n: usize) -> OwnedSemaphorePermit {
        self.semaphore(key)
            .acquire_many_owned(self.units(n))
            .await
            .expect("the semaphores are never closed")
    }

    /// Units `key` holds now.
    pub fn held(&self, key: &K) -> usize {
        self.per_key - self.semaphore(key).available_permits()
    }

    fn units(&self, n: usize) -> u32 {
        u32::try_from(n.clamp(1, self.per_key)).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_has_its_own_share() {
        let limit = PerKeyLimit::new(2);
        let a1 = limit.try_acquire(&"a", 1).unwrap();
        let _a2 = limit.try_acquire(&"a", 1).unwrap();
        assert!(limit.try_acquire(&"a", 1).is_none(), "a's share is used up");
        assert!(limit.try_acquire(&"b", 2).is_some(), "b is not affected");
        drop(a1);
        assert!(limit.try_acquire(&"a", 1).is_some());
        // A request larger than the share waits for the whole share, never forever.
        let big = PerKeyLimit::new(3);
        assert!(big.try_acquire(&"c", 1000).is_some());
        assert_eq!(big.held(&"c"), 0);
    }

    #[tokio::test]
    async fn acquire_waits_for_the_keys_own_units() {
        let limit = Arc::new(PerKeyLimit::new(1));
        let held = limit.try_acquire(&"a", 1).unwrap();
        let waiting = tokio::spawn({
            let limit = limit.clone();
            async move { limit.acquire(&"a", 1).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(held);
        assert!(waiting.await.is_ok());
    }
}
