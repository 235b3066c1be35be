//! `flowhouse query-api`: tenant-scoped metrics for dashboards and Prefect-compatible event and
//! log search, over ClickHouse, behind a single-flight cache.
//!
//! Routes, under `/api/accounts/{account_id}/workspaces/{workspace_id}` with a `read` key:
//! - `GET /metrics/{flow-runs,late-runs,durations,top-failing,task-runs,logs}` ([`dashboard`]);
//! - `POST /events/filter`, `GET /events/filter/next`, `POST /events/count-by/{countable}`
//!   ([`events`]); `POST /logs/filter` ([`logs`]); `POST /flow_runs/history` ([`history`]).
//!
//! Plus `/openapi.json` (generated from the handlers and types below), `/healthz`, `/readyz`
//! and `/metrics` on the same port.
//!
//! Module map: [`auth`] (key → tenant), [`db`] (the only way to ClickHouse: bound parameters,
//! tenant predicate, concurrency limit, timeouts), [`cache`] (moka, single-flight, TTL, ETag),
//! [`error`] (one error type → HTTP), [`window`] (windows and buckets), [`request`] (parsing).

pub mod auth;
pub mod cache;
pub mod dashboard;
pub mod db;
pub mod error;
pub mod events;
pub mod history;
pub mod logs;
pub mod openapi;
pub mod request;
pub mod window;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use flowhouse_keys::Keys;
use flowhouse_schema::Tenant;
use flowhouse_service::admin::{self, Readiness};
use flowhouse_service::clickhouse::ClickHouseArgs;
use rand::RngCore as _;
use serde::Serialize;

use cache::{CacheKey, CachePolicy, ResponseCache};
use db::{Db, DbLimits};
use error::ApiError;
use events::page_token::PageTokens;

/// Flags of `flowhouse query-api`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    /// Where the API (and /healthz, /readyz, /metrics) is served.
    #[arg(
        long,
        env = "FLOWHOUSE_QUERY_API_LISTEN",
        default_value = "127.0.0.1:4201"
    )]
    pub listen: SocketAddr,
    /// The tenant API keys file.
    #[arg(long, env = "FLOWHOUSE_KEYS_FILE", default_value = "keys.json")]
    pub keys_file: PathBuf,
    /// Secret that signs event page tokens. Set the same value on every replica; when empty, a
    /// random one is made per process (tokens then fail on another replica or after a restart).
    #[arg(
        long,
        env = "FLOWHOUSE_PAGE_TOKEN_SECRET",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub page_token_secret: String,
    #[command(flatten)]
    pub limits: Settings,
}

/// Limits and cache tuning.
#[derive(clap::Args, Clone, Debug)]
pub struct Settings {
    /// Longest window a query may cover, in days (metrics refuse longer ones; event and log
    /// searches clamp their start).
    #[arg(long, env = "FLOWHOUSE_QUERY_MAX_WINDOW_DAYS", default_value_t = 31)]
    pub max_window_days: u32,
    /// Largest page of `/events/filter` (Prefect's own is 50).
    #[arg(long, env = "FLOWHOUSE_QUERY_MAX_PAGE_SIZE", default_value_t = 200)]
    pub max_page_size: u32,
    /// Most rows a list answer holds (durations per flow, counts by event or resource) and the
    /// deepest `/logs/filter` offset.
    #[arg(
        long,
        env = "FLOWHOUSE_QUERY_MAX_RESULT_ROWS",
        default_value_t = 10_000
    )]
    pub max_result_rows: u64,
    /// ClickHouse `max_execution_time` of every query, seconds.
    #[arg(long, env = "FLOWHOUSE_QUERY_TIMEOUT_SECS", default_value_t = 30)]
    pub query_timeout_secs: u64,
    /// ClickHouse queries running at once; further ones wait (then 503).
    #[arg(long, env = "FLOWHOUSE_QUERY_MAX_CONCURRENT", default_value_t = 16)]
    pub max_concurrent_queries: usize,
    /// How long a request waits for a ClickHouse slot before a 503, seconds.
    #[arg(long, env = "FLOWHOUSE_QUERY_QUEUE_TIMEOUT_SECS", default_value_t = 10)]
    pub queue_timeout_secs: u64,
    /// Response cache size in bytes (0: no cache).
    #[arg(long, env = "FLOWHOUSE_QUERY_CACHE_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub cache_bytes: u64,
    /// Freshness: the longest an answer covering the open bucket is served from cache, seconds.
    #[arg(long, env = "FLOWHOUSE_QUERY_CACHE_FRESH_SECS", default_value_t = 10)]
    pub cache_fresh_secs: u64,
    /// Life of an answer over closed, settled buckets only, seconds.
    #[arg(
        long,
        env = "FLOWHOUSE_QUERY_CACHE_SETTLED_SECS",
        default_value_t = 3600
    )]
    pub cache_settled_secs: u64,
    /// How long after a bucket closes it may still receive late events, seconds.
    #[arg(long, env = "FLOWHOUSE_QUERY_CACHE_SETTLE_SECS", default_value_t = 600)]
    pub cache_settle_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_window_days: 31,
            max_page_size: 200,
            max_result_rows: 10_000,
            query_timeout_secs: 30,
            max_concurrent_queries: 16,
            queue_timeout_secs: 10,
            cache_bytes: 256 * 1024 * 1024,
            cache_fresh_secs: 10,
            cache_settled_secs: 3600,
            cache_settle_secs: 600,
        }
    }
}

impl Settings {
    pub fn max_window_micros(&self) -> i64 {
        i64::from(self.max_window_days) * 86_400 * window::MICROS_PER_SECOND
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub keys: Keys,
    pub cache: ResponseCache,
    pub page_tokens: PageTokens,
    pub settings: Arc<Settings>,
}

impl AppState {
    pub fn new(
        client: clickhouse::Client,
        keys: Keys,
        page_token_secret: &str,
        settings: Settings,
    ) -> Self {
        let secret = if page_token_secret.is_empty() {
            tracing::warn!(
                "FLOWHOUSE_PAGE_TOKEN_SECRET is not set: page tokens are signed with a random \
                 per-process secret and will not be accepted by other replicas or after a restart"
            );
            let mut bytes = vec![0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            bytes
        } else {
            page_token_secret.as_bytes().to_vec()
        };
        let db = Db::new(
            client,
            settings.max_concurrent_queries,
            DbLimits {
                max_execution_secs: settings.query_timeout_secs,
                queue_timeout: Duration::from_secs(settings.queue_timeout_secs),
            },
        );
        let cache = ResponseCache::new(CachePolicy {
            max_bytes: settings.cache_bytes,
            fresh_ttl: Duration::from_secs(settings.cache_fresh_secs),
            settled_ttl: Duration::from_secs(settings.cache_settled_secs),
            settle: Duration::from_secs(settings.cache_settle_secs),
        });
        Self {
            db,
            keys,
            cache,
            page_tokens: PageTokens::new(secret),
            settings: Arc::new(settings),
        }
    }
}

/// Serves `compute`'s answer as JSON through the cache: the tenant and route are part of the key.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn cached_json<T, F>(
    state: &AppState,
    tenant: Tenant,
    route: &'static str,
    query: String,
    ttl: Duration,
    method: &Method,
    headers: &HeaderMap,
    compute: F,
) -> Result<Response, ApiError>
where
    T: Serialize,
    F: Future<Output = Result<T, ApiError>> + Send,
{
    let key = CacheKey {
        tenant,
        route,
        query,
    };
    let (entry, _) = state
        .cache
        .get_or_load(key, ttl, async {
            let value = compute.await?;
            serde_json::to_vec(&value)
                .map(Bytes::from)
                .map_err(|_| ApiError::Internal)
        })
        .await?;
    Ok(cache::respond(&entry, method, headers))
}

/// The whole HTTP surface: API routes, `/openapi.json` and the admin routes.
pub fn router(state: AppState, readiness: Readiness) -> Router {
    // Install the Prometheus recorder before the first metric is recorded.
    let _ = flowhouse_service::telemetry::metrics_handle();
    let base = "/api/accounts/{account_id}/workspaces/{workspace_id}";
    let api = Router::new()
        .route(
            &format!("{base}/metrics/flow-runs"),
            get(dashboard::flow_runs),
        )
        .route(
            &format!("{base}/metrics/late-runs"),
            get(dashboard::late_runs),
        )
        .route(
            &format!("{base}/metrics/durations"),
            get(dashboard::durations),
        )
        .route(
            &format!("{base}/metrics/top-failing"),
            get(dashboard::top_failing),
        )
        .route(
            &format!("{base}/metrics/task-runs"),
            get(dashboard::task_runs),
        )
        .route(&format!("{base}/metrics/logs"), get(dashboard::logs))
        .route(
            &format!("{base}/events/filter"),
            post(events::filter_events),
        )
        .route(
            &format!("{base}/events/filter/next"),
            get(events::next_page),
        )
        .route(
            &format!("{base}/events/count-by/{{countable}}"),
            post(events::count::count_by),
        )
        .route(&format!("{base}/logs/filter"), post(logs::filter_logs))
        .route(
            &format!("{base}/flow_runs/history"),
            post(history::flow_run_history),
        )
        .route("/openapi.json", get(openapi::serve))
        .layer(DefaultBodyLimit::max(request::MAX_BODY_BYTES))
        .with_state(state);
    api.merge(admin::routes(readiness))
}

/// Keeps `/readyz` honest: ClickHouse is pinged every few seconds.
fn watch_clickhouse(
    client: clickhouse::Client,
    readiness: Readiness,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match client.query("SELECT 1").fetch_all::<u8>().await {
                Ok(_) => readiness.ready("clickhouse"),
                Err(error) => readiness.not_ready("clickhouse", error.to_string()),
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    })
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let _ = flowhouse_service::telemetry::metrics_handle();
    let keys = Keys::load(&args.keys_file)?;
    let _watch_keys = keys.watch(Duration::from_secs(2));
    let client = args.clickhouse.client();
    let readiness = Readiness::default();
    readiness.not_ready("clickhouse", "not checked yet");
    let _watch_clickhouse = watch_clickhouse(client.clone(), readiness.clone());
    let state = AppState::new(client, keys, &args.page_token_secret, args.limits);
    let shutdown = flowhouse_service::shutdown::on_signal();
    admin::serve(args.listen, router(state, readiness), shutdown).await
}
