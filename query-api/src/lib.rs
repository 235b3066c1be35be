//! `flowhouse query-api`: tenant-scoped metrics for dashboards and Prefect-compatible event and
//! log search, over ClickHouse, behind a single-flight cache.
//!
//! Routes, under `/api/accounts/{account_id}/workspaces/{workspace_id}` with a `read` key:
//! - `GET /metrics/{flow-runs,late-runs,durations,top-failing,task-runs,logs}` ([`dashboard`]);
//! - `POST /events/filter`, `GET /events/filter/next`, `POST /events/count-by/{countable}`
//!   ([`events`]); `POST /logs/filter` ([`logs`]); `POST /flow_runs/history` ([`history`]).
//!
//! - the dashboard, a web page at `/` with its files under `/dashboard/` ([`web`]);
//! - `GET /api/me/workspaces` ([`me`]): the workspaces a key reads (the dashboard's sign-in).
//! - websockets `GET /events/out` and `GET /logs/out` ([`live`]): Prefect's subscriber protocol,
//!   a backfill from ClickHouse, then live items from Kafka.
//!
//! Plus `/openapi.json` (generated from the handlers and types below), Prefect's
//! `/admin/version` and `/health`; `/healthz`, `/readyz` and `/metrics` are served on a separate
//! admin listener.
//!
//! Module map: [`config`] (flags), [`auth`] (key → tenant), [`db`] (the only way to ClickHouse: bound parameters,
//! tenant predicate, concurrency limit, timeouts), [`cache`] (moka, single-flight, TTL, ETag),
//! [`error`] (one error type → HTTP), [`window`] (windows and buckets), [`zone`] (time zones of
//! day buckets), [`request`] (parsing).

pub mod auth;
pub mod cache;
pub mod config;
pub mod contract;
pub mod dashboard;
pub mod db;
pub mod error;
pub mod events;
pub mod history;
pub mod live;
pub mod logs;
pub mod me;
pub mod openapi;
pub mod request;
pub mod telemetry;
pub mod text_search;
pub mod web;
pub mod window;
pub mod zone;

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
use flowhouse_service::http::{PublicApi, WORKSPACE_BASE};
use rand::RngCore as _;
use serde::Serialize;
use tokio_util::task::AbortOnDropHandle;

pub use config::{Args, LiveArgs, Settings};

use cache::{CacheKey, CachePolicy, ResponseCache};
use db::{Db, DbLimits};
use error::ApiError;
use events::page_token::PageTokens;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub keys: Keys,
    pub cache: ResponseCache,
    pub page_tokens: PageTokens,
    pub settings: Arc<Settings>,
    pub public: PublicApi,
    /// The live feed of `/events/out` and `/logs/out`; `None`: backfill only.
    pub live: Option<live::Feed>,
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
                max_execution_secs: settings.query_timeout.as_secs().max(1),
                queue_timeout: settings.queue_timeout,
                max_concurrent_per_tenant: settings.max_concurrent_per_tenant,
                tenant_settings: settings.tenant_settings,
            },
        );
        let cache = ResponseCache::new(CachePolicy {
            max_bytes: settings.cache_bytes,
            fresh_ttl: settings.cache_fresh,
            settled_ttl: settings.cache_settled,
            settle: settings.cache_settle,
            max_stale: settings.cache_max_stale,
        });
        Self {
            db,
            keys,
            cache,
            page_tokens: PageTokens::new(secret),
            settings: Arc::new(settings),
            public: PublicApi::default(),
            live: None,
        }
    }

    /// With the public API's settings (base URL of links, single-tenant mode, CORS).
    pub fn with_public(self, public: PublicApi) -> Self {
        Self { public, ..self }
    }

    /// With a live feed for the subscriber websockets.
    pub fn with_live(self, live: live::Feed) -> Self {
        Self {
            live: Some(live),
            ..self
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
    F: Future<Output = Result<T, ApiError>> + Send + 'static,
{
    let key = CacheKey {
        tenant,
        route,
        query,
    };
    let (entry, _) = state
        .cache
        .get_or_load(key, ttl, async move {
            let value = compute.await?;
            serde_json::to_vec(&value)
                .map(Bytes::from)
                .map_err(|_| ApiError::Internal)
        })
        .await?;
    Ok(cache::respond(&entry, method, headers))
}

/// The public HTTP surface: API routes and `/openapi.json`, behind the public API's path
/// handling and CORS. The admin routes are served apart ([`admin::routes`]).
pub fn router(state: AppState) -> Router {
    let public = state.public.clone();
    public.router(api_routes(state).route("/openapi.json", get(openapi::serve)))
}

/// The query routes alone, to be served with other services' routes in one process.
pub fn api_routes(state: AppState) -> Router {
    // Install the Prometheus recorder before the first metric is recorded.
    let _ = flowhouse_service::telemetry::metrics_handle();
    telemetry::describe();
    let base = WORKSPACE_BASE;
    Router::new()
        .route(
            &format!("{base}/metrics/flow-runs"),
            get(dashboard::handlers::flow_runs),
        )
        .route(
            &format!("{base}/metrics/late-runs"),
            get(dashboard::handlers::late_runs),
        )
        .route(
            &format!("{base}/metrics/durations"),
            get(dashboard::handlers::durations),
        )
        .route(
            &format!("{base}/metrics/top-failing"),
            get(dashboard::handlers::top_failing),
        )
        .route(
            &format!("{base}/metrics/task-runs"),
            get(dashboard::handlers::task_runs),
        )
        .route(
            &format!("{base}/metrics/logs"),
            get(dashboard::handlers::logs),
        )
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
        .route("/", get(web::index))
        .route("/dashboard/{file}", get(web::file))
        .route("/api/me/workspaces", get(me::me_workspaces))
        .route(
            &format!("{base}/me/workspaces"),
            get(me::me_workspaces_in_workspace),
        )
        .route(&format!("{base}/events/out"), get(live::events_out))
        .route(&format!("{base}/logs/out"), get(live::logs_out))
        .layer(DefaultBodyLimit::max(request::MAX_BODY_BYTES))
        .with_state(state)
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

/// Builds the query API's state from its flags: keys (watched), ClickHouse (watched for
/// `/readyz`), the public API's settings and, unless turned off, the live feed from Kafka.
/// The returned tasks run until dropped.
pub async fn start(
    args: &Args,
    readiness: &Readiness,
) -> anyhow::Result<(AppState, Vec<AbortOnDropHandle<()>>)> {
    let _ = flowhouse_service::telemetry::metrics_handle();
    let public = args.public.build()?;
    let keys = Keys::load(&args.keys_file)?;
    let mut tasks = vec![AbortOnDropHandle::new(keys.watch(Duration::from_secs(2)))];
    let client = args.clickhouse.client();
    readiness.not_ready("clickhouse", "not checked yet");
    tasks.push(AbortOnDropHandle::new(watch_clickhouse(
        client.clone(),
        readiness.clone(),
    )));
    let mut settings = args.limits.clone();
    for warning in settings.apply_renamed(|name| std::env::var(name).ok()) {
        tracing::warn!("{warning}");
    }
    let mut state =
        AppState::new(client, keys, &args.page_token_secret, settings).with_public(public);
    if args.live.live_feed {
        let (feed, task) = live::Feed::start(&args.live).await?;
        tasks.push(AbortOnDropHandle::new(task));
        state = state.with_live(feed);
    }
    Ok((state, tasks))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let readiness = Readiness::default();
    let (state, _tasks) = start(&args, &readiness).await?;
    let shutdown = flowhouse_service::shutdown::on_signal();
    admin::serve_with_admin(
        args.listen,
        router(state),
        args.admin_listen,
        readiness,
        shutdown,
    )
    .await
}
