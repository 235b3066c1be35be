//! The response cache in front of ClickHouse.
//!
//! - Bounded by weight: the bytes of the cached JSON bodies (plus their keys), not an entry count,
//!   since a 7-day hourly series and a one-number card differ by orders of magnitude.
//! - Keyed by tenant + route + the normalized query ([`CacheKey`]): the tenant is a field of its
//!   own, so two tenants can never share an entry whatever their queries look like.
//! - Single-flight: `try_get_with` runs one loader per key; concurrent misses wait for it and
//!   share its answer (or its error, which is not cached).
//! - Per-entry freshness aligned to buckets: an answer whose window ends before the current
//!   bucket opened (minus a settling time for late data) stays fresh long; one that covers the
//!   open bucket stays fresh for the configured freshness only.
//! - Stale-while-revalidate: once an answer is no longer fresh it is still served, for at most
//!   `max_stale` more, while one background load per key replaces it. A dashboard that refreshes
//!   every few seconds then never waits for ClickHouse (its request starts the refresh the next
//!   one sees), and no answer is older than freshness + `max_stale`: the `Age` header says how
//!   old each one is. A key nobody asked for in that time expires and loads in the foreground.
//! - HTTP: a strong `ETag` (hash of the body) with `If-None-Match` → 304, and `Cache-Control:
//!   private, max-age` = what is left of the entry's freshness (private: answers are per key).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use flowhouse_schema::Tenant;
use moka::Expiry;
use moka::future::Cache;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::telemetry;
use crate::window::{Bucket, floor_to, now_micros};

/// What identifies a cached answer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub tenant: Tenant,
    pub route: &'static str,
    /// The request after parsing, defaults and validation, serialized canonically.
    pub query: String,
}

/// One cached response body.
#[derive(Debug)]
pub struct Entry {
    pub body: Bytes,
    pub etag: String,
    created: Instant,
    /// How long after `created` the answer is fresh.
    fresh_for: Duration,
}

impl Entry {
    fn new(body: Bytes, fresh_for: Duration) -> Self {
        let digest = Sha256::digest(&body);
        Self {
            etag: format!("\"{}\"", hex::encode(&digest[..16])),
            body,
            created: Instant::now(),
            fresh_for,
        }
    }

    fn fresh_remaining(&self) -> Duration {
        self.fresh_for.saturating_sub(self.created.elapsed())
    }

    fn is_fresh(&self) -> bool {
        !self.fresh_remaining().is_zero()
    }
}

/// An entry lives for its freshness, then `max_stale` more during which it may be served while
/// it is being replaced.
struct FreshThenStale {
    max_stale: Duration,
}

impl Expiry<CacheKey, Arc<Entry>> for FreshThenStale {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<Entry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.fresh_for.saturating_add(self.max_stale))
    }

    fn expire_after_update(
        &self,
        key: &CacheKey,
        value: &Arc<Entry>,
        updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, updated_at)
    }
}

/// How long answers live.
#[derive(Clone, Debug)]
pub struct CachePolicy {
    /// Total weight of the cache; 0 disables caching (every request loads).
    pub max_bytes: u64,
    /// Life of an answer whose window reaches into the open bucket or the settling time.
    pub fresh_ttl: Duration,
    /// Life of an answer over closed, settled buckets only.
    pub settled_ttl: Duration,
    /// How long after a bucket closes late events may still change it.
    pub settle: Duration,
    /// How long past its freshness an answer may still be served while a background load
    /// replaces it (0: never; every answer past its freshness loads in the foreground).
    pub max_stale: Duration,
}

impl CachePolicy {
    /// [`ResponseCache::ttl_for`] at `now` (µs): settled once the window ended at least the
    /// settling time before the start of the open bucket, fresh otherwise.
    pub fn ttl_at(&self, now: i64, window_end: i64, bucket: Bucket) -> Duration {
        let open_bucket_start = floor_to(now, bucket.micros());
        let settle = i64::try_from(self.settle.as_micros()).unwrap_or(i64::MAX);
        if window_end <= open_bucket_start.saturating_sub(settle) {
            self.settled_ttl
        } else {
            self.fresh_ttl.min(self.settled_ttl)
        }
    }
}

#[derive(Clone)]
pub struct ResponseCache {
    cache: Option<Cache<CacheKey, Arc<Entry>>>,
    policy: CachePolicy,
    /// Keys with a background load running: one at a time per key.
    refreshing: Arc<Mutex<HashSet<CacheKey>>>,
}

/// How a request was served, for `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    /// Served past its freshness (within `max_stale`) while a background load replaces it.
    Stale,
    /// This request ran the loader.
    Miss,
    /// Another request was already loading the same key; this one waited and shared it.
    Coalesced,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Stale => "stale",
            Outcome::Miss => "miss",
            Outcome::Coalesced => "coalesced",
        }
    }
}

impl ResponseCache {
    pub fn new(policy: CachePolicy) -> Self {
        let cache = (policy.max_bytes > 0).then(|| {
            Cache::builder()
                .max_capacity(policy.max_bytes)
                .weigher(|key: &CacheKey, entry: &Arc<Entry>| {
                    let bytes = key.query.len() + entry.body.len() + entry.etag.len() + 96;
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                })
                .expire_after(FreshThenStale {
                    max_stale: policy.max_stale,
                })
                .build()
        });
        Self {
            cache,
            policy,
            refreshing: Arc::default(),
        }
    }

    /// The life of an answer about data up to `window_end` (µs): long when every bucket it
    /// covers closed more than the settling time ago, otherwise the freshness.
    pub fn ttl_for(&self, window_end: i64, bucket: Bucket) -> Duration {
        self.policy.ttl_at(now_micros(), window_end, bucket)
    }

    /// The cached answer for `key`, or the one `load` produces (run once however many requests
    /// ask for the key at the same time). A stale answer is returned at once and `load` runs in
    /// the background to replace it.
    pub async fn get_or_load<F>(
        &self,
        key: CacheKey,
        ttl: Duration,
        load: F,
    ) -> Result<(Arc<Entry>, Outcome), ApiError>
    where
        F: Future<Output = Result<Bytes, ApiError>> + Send + 'static,
    {
        let route = key.route;
        let Some(cache) = &self.cache else {
            let started = Instant::now();
            let body = load.await?;
            record_load(route, started);
            return Ok((Arc::new(Entry::new(body, Duration::ZERO)), Outcome::Miss));
        };
        if let Some(entry) = cache.get(&key).await {
            let outcome = if entry.is_fresh() {
                Outcome::Hit
            } else {
                self.refresh_in_background(cache, key, ttl, load);
                Outcome::Stale
            };
            record(route, outcome);
            return Ok((entry, outcome));
        }
        let ran = Arc::new(AtomicBool::new(false));
        let loader = {
            let ran = ran.clone();
            async move {
                ran.store(true, Ordering::SeqCst);
                let started = Instant::now();
                let body = load.await?;
                record_load(route, started);
                Ok::<_, ApiError>(Arc::new(Entry::new(body, ttl)))
            }
        };
        metrics::gauge!(telemetry::CACHE_WAITING).increment(1.0);
        let result = cache.try_get_with(key, loader).await;
        metrics::gauge!(telemetry::CACHE_WAITING).decrement(1.0);
        let entry = result.map_err(|error| (*error).clone())?;
        let outcome = if ran.load(Ordering::SeqCst) {
            Outcome::Miss
        } else {
            Outcome::Coalesced
        };
        record(route, outcome);
        metrics::gauge!(telemetry::CACHE_BYTES).set(cache.weighted_size() as f64);
        Ok((entry, outcome))
    }
}

impl ResponseCache {
    /// Runs `load` on its own task and stores its answer, unless a load for `key` already
    /// runs. A failed load leaves the stale answer to expire (the next request past it loads in
    /// the foreground and gets the error).
    fn refresh_in_background<F>(
        &self,
        cache: &Cache<CacheKey, Arc<Entry>>,
        key: CacheKey,
        ttl: Duration,
        load: F,
    ) where
        F: Future<Output = Result<Bytes, ApiError>> + Send + 'static,
    {
        let claimed = lock(&self.refreshing).insert(key.clone());
        if !claimed {
            return;
        }
        let cache = cache.clone();
        let claim = RefreshClaim {
            key,
            refreshing: self.refreshing.clone(),
        };
        tokio::spawn(async move {
            let key = &claim.key;
            let started = Instant::now();
            match load.await {
                Ok(body) => {
                    record_load(key.route, started);
                    cache
                        .insert(key.clone(), Arc::new(Entry::new(body, ttl)))
                        .await;
                }
                Err(error) => {
                    metrics::counter!(telemetry::CACHE_REFRESH_FAILURES, "route" => key.route)
                        .increment(1);
                    tracing::warn!(route = key.route, %error, "background refresh failed");
                }
            }
        });
    }
}

/// A key's claim on its one background refresh, given back when the refresh ends, however it
/// ends (a panicking load must not leave the key unrefreshable).
struct RefreshClaim {
    key: CacheKey,
    refreshing: Arc<Mutex<HashSet<CacheKey>>>,
}

impl Drop for RefreshClaim {
    fn drop(&mut self) {
        lock(&self.refreshing).remove(&self.key);
    }
}

fn lock(set: &Mutex<HashSet<CacheKey>>) -> std::sync::MutexGuard<'_, HashSet<CacheKey>> {
    // Inserting or removing a key cannot leave the set half-changed: recover from a poison.
    set.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn record(route: &'static str, outcome: Outcome) {
    metrics::counter!(telemetry::CACHE_REQUESTS, "route" => route, "result" => outcome.label())
        .increment(1);
}

fn record_load(route: &'static str, started: Instant) {
    metrics::histogram!(telemetry::CACHE_LOAD_SECONDS, "route" => route)
        .record(started.elapsed().as_secs_f64());
}

/// The HTTP response for a cached body: 304 when the client already has it (GET only: a
/// failed precondition on other methods is not a 304), else 200 with the body.
pub fn respond(entry: &Entry, method: &Method, headers: &HeaderMap) -> Response {
    let max_age = entry.fresh_remaining().as_secs();
    let cache_control = if max_age == 0 {
        HeaderValue::from_static("private, no-cache")
    } else {
        HeaderValue::from_str(&format!("private, max-age={max_age}"))
            .unwrap_or(HeaderValue::from_static("private, no-cache"))
    };
    let etag = HeaderValue::from_str(&entry.etag).unwrap_or(HeaderValue::from_static("\"\""));
    let not_modified = (method == Method::GET || method == Method::HEAD)
        && headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|tag| tag.trim().trim_start_matches("W/"))
            .any(|tag| tag == "*" || tag == entry.etag);
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            entry.body.clone(),
        )
            .into_response()
    };
    response.headers_mut().insert(header::ETAG, etag);
    // How old the answer is: a dashboard shows its data's freshness from it.
    response.headers_mut().insert(
        header::AGE,
        HeaderValue::from(entry.created.elapsed().as_secs()),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, cache_control);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000_000;
    const MINUTE: i64 = 60_000_000;

    fn policy() -> CachePolicy {
        CachePolicy {
            max_bytes: 1 << 20,
            fresh_ttl: Duration::from_secs(10),
            settled_ttl: Duration::from_secs(3600),
            settle: Duration::from_secs(600),
            max_stale: Duration::from_secs(30),
        }
    }

    fn key() -> CacheKey {
        CacheKey {
            tenant: Tenant {
                account_id: uuid::Uuid::from_u128(1),
                workspace_id: uuid::Uuid::from_u128(2),
            },
            route: "test",
            query: "q".into(),
        }
    }

    /// A loader that answers `body` and counts its runs.
    fn loader(
        body: &'static str,
        runs: &Arc<std::sync::atomic::AtomicUsize>,
    ) -> impl Future<Output = Result<Bytes, ApiError>> + Send + 'static {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(Bytes::from_static(body.as_bytes()))
        }
    }

    /// Waits (bounded) until the background load for `key` finished.
    async fn refreshed(cache: &ResponseCache) {
        for _ in 0..1000 {
            if lock(&cache.refreshing).is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the background load never finished");
    }

    #[tokio::test]
    async fn a_stale_answer_is_served_at_once_while_one_background_load_replaces_it() {
        let cache = ResponseCache::new(policy());
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // Fresh for no time at all: the next request finds it stale.
        let (first, outcome) = cache
            .get_or_load(key(), Duration::ZERO, loader("old", &runs))
            .await
            .unwrap();
        assert_eq!((first.body.as_ref(), outcome), (&b"old"[..], Outcome::Miss));

        // Eight requests past freshness: each gets the old answer at once; one load runs.
        for _ in 0..8 {
            let (entry, outcome) = cache
                .get_or_load(key(), Duration::from_secs(60), loader("new", &runs))
                .await
                .unwrap();
            assert_eq!(outcome, Outcome::Stale);
            assert_eq!(entry.body.as_ref(), b"old");
        }
        refreshed(&cache).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "the first load and one refresh"
        );

        let (entry, outcome) = cache
            .get_or_load(key(), Duration::from_secs(60), loader("unused", &runs))
            .await
            .unwrap();
        assert_eq!((entry.body.as_ref(), outcome), (&b"new"[..], Outcome::Hit));
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn without_max_stale_an_answer_past_its_freshness_loads_in_the_foreground() {
        let cache = ResponseCache::new(CachePolicy {
            max_stale: Duration::ZERO,
            ..policy()
        });
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        cache
            .get_or_load(key(), Duration::ZERO, loader("old", &runs))
            .await
            .unwrap();
        let (entry, outcome) = cache
            .get_or_load(key(), Duration::from_secs(60), loader("new", &runs))
            .await
            .unwrap();
        assert_eq!((entry.body.as_ref(), outcome), (&b"new"[..], Outcome::Miss));
    }

    #[tokio::test]
    async fn a_failed_background_load_keeps_serving_the_stale_answer_until_it_expires() {
        let cache = ResponseCache::new(policy());
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        cache
            .get_or_load(key(), Duration::ZERO, loader("old", &runs))
            .await
            .unwrap();
        let failing = async { Err::<Bytes, _>(ApiError::Upstream) };
        let (entry, outcome) = cache
            .get_or_load(key(), Duration::from_secs(60), failing)
            .await
            .unwrap();
        assert_eq!(
            (entry.body.as_ref(), outcome),
            (&b"old"[..], Outcome::Stale)
        );
        refreshed(&cache).await;
        // The next request starts another load, which succeeds.
        let (entry, _) = cache
            .get_or_load(key(), Duration::from_secs(60), loader("new", &runs))
            .await
            .unwrap();
        assert_eq!(entry.body.as_ref(), b"old");
        refreshed(&cache).await;
        let (entry, outcome) = cache
            .get_or_load(key(), Duration::from_secs(60), loader("unused", &runs))
            .await
            .unwrap();
        assert_eq!((entry.body.as_ref(), outcome), (&b"new"[..], Outcome::Hit));
    }

    #[tokio::test]
    async fn a_background_load_that_panics_leaves_the_key_refreshable() {
        let cache = ResponseCache::new(policy());
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        cache
            .get_or_load(key(), Duration::ZERO, loader("old", &runs))
            .await
            .unwrap();
        let panicking = async { panic!("a bug in a loader") };
        let (_, outcome) = cache
            .get_or_load(key(), Duration::from_secs(60), panicking)
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Stale);
        refreshed(&cache).await;
        cache
            .get_or_load(key(), Duration::from_secs(60), loader("new", &runs))
            .await
            .unwrap();
        refreshed(&cache).await;
        let (entry, outcome) = cache
            .get_or_load(key(), Duration::from_secs(60), loader("unused", &runs))
            .await
            .unwrap();
        assert_eq!((entry.body.as_ref(), outcome), (&b"new"[..], Outcome::Hit));
    }

    #[test]
    fn only_windows_that_ended_a_settling_time_before_the_open_bucket_live_long() {
        let p = policy();
        let now = 100 * HOUR + 30 * MINUTE; // in the open hour [100h, 101h)
        let settled = Duration::from_secs(3600);
        let fresh = Duration::from_secs(10);
        assert_eq!(
            p.ttl_at(now, 100 * HOUR - 10 * MINUTE, Bucket::Hour),
            settled
        );
        assert_eq!(
            p.ttl_at(now, 100 * HOUR - 10 * MINUTE + 1, Bucket::Hour),
            fresh
        );
        assert_eq!(p.ttl_at(now, 101 * HOUR, Bucket::Hour), fresh);
        // Day buckets: the open bucket is today, so yesterday's last hours are still fresh.
        assert_eq!(p.ttl_at(now, 100 * HOUR - HOUR, Bucket::Day), fresh);
        assert_eq!(p.ttl_at(now, 96 * HOUR - 10 * MINUTE, Bucket::Day), settled);
        // A freshness longer than the settled life never outlives it.
        let odd = CachePolicy {
            fresh_ttl: Duration::from_secs(7200),
            ..policy()
        };
        assert_eq!(odd.ttl_at(now, 101 * HOUR, Bucket::Hour), settled);
        // Extreme inputs do not overflow.
        assert_eq!(p.ttl_at(i64::MIN, i64::MIN, Bucket::Day), settled);
    }
}
