//! Per-workspace rate limit: a token bucket per tenant, refilled at `rate` events per second up to
//! `burst`. One event (or log line) costs one token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flowhouse_schema::Tenant;

pub struct RateLimiter {
    /// Tokens per second; 0 (or less) means no limit.
    rate: f64,
    burst: f64,
    state: Mutex<State>,
}

struct State {
    buckets: HashMap<Tenant, Bucket>,
    /// When the map grows past this, full buckets (which carry no information) are dropped.
    cleanup_at: usize,
}

#[derive(Clone, Copy)]
struct Bucket {
    /// May go negative: a batch larger than the bucket is let through when the bucket is full,
    /// and the debt is paid back before anything else passes, so the average rate still holds.
    tokens: f64,
    updated: Instant,
}

const MIN_CLEANUP: usize = 10_000;

impl RateLimiter {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst: burst.max(1.0),
            state: Mutex::new(State {
                buckets: HashMap::new(),
                cleanup_at: MIN_CLEANUP,
            }),
        }
    }

    fn enabled(&self) -> bool {
        self.rate > 0.0
    }

    /// Whether the tenant may send at least one event now: checked before reading a body, so that
    /// a tenant over its limit does not make the endpoint read (and parse) megabytes for nothing.
    pub fn check(&self, tenant: Tenant) -> Result<(), Duration> {
        self.with_bucket(tenant, |bucket, _| {
            if bucket.tokens >= 1.0 {
                Ok(())
            } else {
                Err(self.wait_for(1.0 - bucket.tokens))
            }
        })
    }

    /// Takes `n` tokens, or says how long until `n` would be let through.
    pub fn take(&self, tenant: Tenant, n: usize) -> Result<(), Duration> {
        self.with_bucket(tenant, |bucket, burst| {
            let n = n as f64;
            let needed = n.min(burst);
            if bucket.tokens >= needed {
                bucket.tokens -= n;
                Ok(())
            } else {
                Err(self.wait_for(needed - bucket.tokens))
            }
        })
    }

    fn wait_for(&self, tokens: f64) -> Duration {
        Duration::from_secs_f64((tokens / self.rate).clamp(0.001, 86_400.0))
    }

    fn with_bucket(
        &self,
        tenant: Tenant,
        decide: impl FnOnce(&mut Bucket, f64) -> Result<(), Duration>,
    ) -> Result<(), Duration> {
        if !self.enabled() {
            return Ok(());
        }
        let now = Instant::now();
        // A poisoned lock only means a panic elsewhere; the map is still consistent.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.buckets.len() >= state.cleanup_at && !state.buckets.contains_key(&tenant) {
            self.drop_full_buckets(&mut state, now);
        }
        let bucket = state.buckets.entry(tenant).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.updated = now;
        decide(bucket, self.burst)
    }

    fn drop_full_buckets(&self, state: &mut State, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        state.buckets.retain(|_, bucket| {
            let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
            bucket.tokens + elapsed * rate < burst
        });
        state.cleanup_at = (state.buckets.len() * 2).max(MIN_CLEANUP);
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn tenant() -> Tenant {
        Tenant {
            account_id: Uuid::new_v4(),
            workspace_id: Uuid::new_v4(),
        }
    }

    #[test]
    fn a_bucket_lets_its_burst_through_then_refuses() {
        // 0.001 tokens per second: nothing refills during the test.
        let limiter = RateLimiter::new(0.001, 10.0);
        let (a, b) = (tenant(), tenant());
        assert!(limiter.take(a, 6).is_ok());
        assert!(limiter.take(a, 4).is_ok());
        let wait = limiter.take(a, 1).unwrap_err();
        assert!(wait > Duration::from_secs(900), "{wait:?}");
        assert!(limiter.check(a).is_err());
        assert!(
            limiter.take(b, 10).is_ok(),
            "tenants have their own buckets"
        );
    }

    #[test]
    fn a_batch_larger_than_the_bucket_passes_once_then_is_paid_back() {
        let limiter = RateLimiter::new(0.001, 10.0);
        let a = tenant();
        assert!(limiter.take(a, 25).is_ok());
        assert!(limiter.check(a).is_err());
        let wait = limiter.take(a, 1).unwrap_err();
        // 15 tokens of debt plus the one asked for, at 0.001/s.
        assert!(wait >= Duration::from_secs(15_900), "{wait:?}");
    }

    #[test]
    fn a_zero_rate_is_no_limit() {
        let limiter = RateLimiter::new(0.0, 1.0);
        assert!(limiter.take(tenant(), 1_000_000).is_ok());
    }
}
