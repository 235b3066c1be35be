//! `flowhouse endpoint`: Prefect-compatible event ingestion over HTTP and websocket, producing to
//! Kafka.
//!
//! Under the workspace base path `/api/accounts/{account_id}/workspaces/{workspace_id}`:
//!
//! | route | what | answer |
//! |---|---|---|
//! | `POST /events` | a JSON list of events | 204 once Kafka acknowledged every one |
//! | `GET /events/in` (websocket) | one JSON event per text message | a pong once every earlier event is acknowledged |
//! | `POST /logs` | a JSON list of log lines | 201 once Kafka acknowledged every one |
//!
//! with or without a trailing slash (the SDK posts to `/logs/`), plus Prefect's `/admin/version`
//! and `/health`; `/healthz`, `/readyz` and `/metrics` are on a separate admin listener. The
//! tenant written to Kafka is the workspace of the path, and only once the caller's key is proven to hold it ([`flowhouse_keys`]); events are
//! validated by [`flowhouse_schema`], the code the ingest consumer uses too.
//!
//! Modules: [`config`] (flags), [`routes`] (HTTP), [`websocket`], [`batch`] (bodies and
//! validation), [`producer`] (Kafka), [`ratelimit`], [`error`] (every failure and its response).

pub mod batch;
pub mod config;
pub mod error;
pub mod openapi;
pub mod producer;
pub mod ratelimit;
pub mod routes;
pub mod telemetry;
pub mod websocket;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use flowhouse_keys::Keys;
use flowhouse_schema::Tenant;
use flowhouse_schema::contract::TopicArgs;
use flowhouse_schema::event::Limits;
use flowhouse_service::admin::Readiness;
use flowhouse_service::fairness::PerKeyLimit;
use flowhouse_service::http::PublicApi;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Args;

use crate::producer::Producer;
use crate::ratelimit::RateLimiter;

/// How often the keys file is checked for changes.
const KEYS_RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// How long shutdown waits for open websockets and the producer's queue.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the endpoint until SIGTERM or SIGINT, then drains: stops accepting, finishes in-flight
/// requests, closes websockets once their events are acknowledged, and flushes the producer.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = flowhouse_service::shutdown::on_signal();
    let app = App::start(&args, Readiness::default()).await?;
    flowhouse_service::admin::serve_with_admin(
        args.listen,
        app.router(),
        args.admin_listen,
        app.readiness(),
        shutdown,
    )
    .await?;
    app.drain(DRAIN_TIMEOUT).await
}

/// What every handler shares.
pub(crate) struct Shared {
    pub keys: Keys,
    pub producer: Arc<Producer>,
    pub limiter: RateLimiter,
    /// Each workspace's concurrent HTTP uploads.
    pub uploads: PerKeyLimit<Tenant>,
    pub limits: Arc<Limits>,
    pub topics: TopicArgs,
    pub max_body_bytes: usize,
    pub auth_timeout: Duration,
    /// Fired when the process drains: websockets stop reading and close.
    pub closing: CancellationToken,
    /// Open websockets, so that draining can wait for them.
    pub sockets: TaskTracker,
}

/// A started endpoint: its router, and the background work (keys reload, Kafka probe) that
/// stops when it is dropped.
pub struct App {
    shared: Arc<Shared>,
    public: PublicApi,
    readiness: Readiness,
    background: Vec<JoinHandle<()>>,
    stop_background: CancellationToken,
}

impl App {
    /// Loads the keys, creates the topics if missing, and connects the producer; reports its
    /// state in `readiness` (shared with other services when they run in one process).
    pub async fn start(args: &Args, readiness: Readiness) -> anyhow::Result<Self> {
        // Installs the Prometheus recorder before the first counter is touched.
        flowhouse_service::telemetry::metrics_handle();
        telemetry::describe();
        let public = args.public.build()?;
        let limits = args.limits.limits()?;
        let keys = Keys::load(&args.keys_file)?;
        readiness.ready("keys");
        flowhouse_service::kafka::ensure_topics(&args.kafka, &args.topics.specs())
            .await
            .context("cannot create the Kafka topics")?;
        let producer = Producer::new(args, readiness.clone())?;
        // Ready from the first request on, rather than after the watcher's first probe. The
        // topics were just created, so Kafka answers; a few tries cover a slow first answer.
        for _ in 0..3 {
            producer.probe(&args.topics.events_topic).await;
            if producer.check_available().is_ok() {
                break;
            }
        }

        let stop_background = CancellationToken::new();
        let mut background = vec![keys.watch(KEYS_RELOAD_INTERVAL)];
        background.push(tokio::spawn(
            producer
                .clone()
                .watch(args.topics.events_topic.clone(), stop_background.clone()),
        ));

        let shared = Arc::new(Shared {
            keys,
            producer,
            limiter: RateLimiter::new(args.uploads.rate_limit, args.uploads.rate_burst),
            uploads: PerKeyLimit::new(args.uploads.max_uploads_per_tenant),
            limits: Arc::new(limits),
            topics: args.topics.clone(),
            max_body_bytes: args.uploads.max_body_bytes,
            auth_timeout: args.auth_timeout,
            closing: CancellationToken::new(),
            sockets: TaskTracker::new(),
        });
        Ok(Self {
            shared,
            public,
            readiness,
            background,
            stop_background,
        })
    }

    /// The API and `/openapi.json` (the admin routes are served apart: [`Self::admin_router`]).
    pub fn router(&self) -> Router {
        self.public
            .router(self.api_routes().merge(self.openapi_route()))
    }

    /// `/healthz`, `/readyz` and `/metrics`, for the admin listener.
    pub fn admin_router(&self) -> Router {
        flowhouse_service::admin::routes(self.readiness.clone())
    }

    /// `GET /openapi.json`: this endpoint's document, with the limits it enforces.
    pub fn openapi_route(&self) -> Router {
        let limits = self.shared.limits.clone();
        Router::new().route(
            "/openapi.json",
            axum::routing::get(move || openapi::serve(limits.clone())),
        )
    }

    /// This endpoint's OpenAPI document (see [`openapi`]).
    pub fn openapi_document(&self) -> serde_json::Value {
        openapi::document(&self.shared.limits)
    }

    /// The ingestion routes alone, to be served with other services' routes in one process.
    pub fn api_routes(&self) -> Router {
        routes::router(self.shared.clone())
    }

    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Messages handed to the producer and not yet acknowledged by Kafka.
    pub fn in_flight(&self) -> usize {
        self.shared.producer.in_flight()
    }

    /// After the HTTP server stopped: closes the websockets (each once its events are
    /// acknowledged) and flushes what is left in the producer.
    pub async fn drain(&self, timeout: Duration) -> anyhow::Result<()> {
        self.readiness.not_ready("endpoint", "shutting down");
        self.shared.closing.cancel();
        self.shared.sockets.close();
        if tokio::time::timeout(timeout, self.shared.sockets.wait())
            .await
            .is_err()
        {
            tracing::warn!("websockets still open after {timeout:?}; closing anyway");
        }
        let producer = self.shared.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .context("producer flush panicked")??;
        tracing::info!("endpoint drained");
        Ok(())
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop_background.cancel();
        for task in &self.background {
            task.abort();
        }
    }
}
