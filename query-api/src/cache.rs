//! The response cache in front of ClickHouse.
//!
//! - Bounded by weight: the bytes of the cached JSON bodies (plus their keys), not an entry count,
//!   since a 7-day hourly series and a one-number card differ by orders of magnitude.
//! - Keyed by tenant + route + the normalized query ([`CacheKey`]): the tenant is a field of its
//!   own, so two tenants can never share an entry whatever their queries look like.
//! - Single-flight: `try_get_with` runs one loader per key; concurrent misses wait for it and
//!   share its answer (or its error, which is not cached).
//! - Per-entry TTL aligned to buckets: an answer whose window ends before the current bucket
//!   opened (minus a settling time for late data) lives long; one that covers the open bucket
//!   lives for the configured freshness only, so it is never staler than that.
//! - HTTP: a strong `ETag` (hash of the body) with `If-None-Match` → 304, and `Cache-Control:
//!   private, max-age` = what is left of the entry's life (private: answers are per key).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    ttl: Duration,
}

impl Entry {
    fn new(body: Bytes, ttl: Duration) -> Self {
        let digest = Sha256::digest(&body);
        Self {
            etag: format!("\"{}\"", hex::encode(&digest[..16])),
            body,
            created: Instant::now(),
            ttl,
        }
    }

    fn remaining(&self) -> Duration {
        self.ttl.saturating_sub(self.created.elapsed())
    }
}

struct PerEntryTtl;

impl Expiry<CacheKey, Arc<Entry>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<Entry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
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
}

/// How a request was served, for `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    /// This request ran the loader.
    Miss,
    /// Another request was already loading the same key; this one waited and shared it.
    Coalesced,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
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
                .expire_after(PerEntryTtl)
                .build()
        });
        Self { cache, policy }
    }

    /// The life of an answer about data up to `window_end` (µs): long when every bucket it
    /// covers closed more than the settling time ago, otherwise the freshness.
    pub fn ttl_for(&self, window_end: i64, bucket: Bucket) -> Duration {
        self.policy.ttl_at(now_micros(), window_end, bucket)
    }

    /// The cached answer for `key`, or the one `load` produces (run once however many requests
    /// ask for the key at the same time).
    pub async fn get_or_load<F>(
        &self,
        key: CacheKey,
        ttl: Duration,
        load: F,
    ) -> Result<(Arc<Entry>, Outcome), ApiError>
    where
        F: Future<Output = Result<Bytes, ApiError>>,
    {
        let route = key.route;
        let Some(cache) = &self.cache else {
            let started = Instant::now();
            let body = load.await?;
            record_load(route, started);
            return Ok((Arc::new(Entry::new(body, Duration::ZERO)), Outcome::Miss));
        };
        if let Some(entry) = cache.get(&key).await {
            record(route, Outcome::Hit);
            return Ok((entry, Outcome::Hit));
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
    let max_age = entry.remaining().as_secs();
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
        }
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
