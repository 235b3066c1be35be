//! `/healthz`, `/readyz` and `/metrics`, served on their own listener.
//!
//! Every service serves these on an admin address apart from its public API
//! ([`serve_with_admin`]): a load balancer or ingress publishes the API without exposing
//! metrics (tenant names, queue depths) or readiness details, and the admin port stays on a
//! private network where Prometheus and the orchestrator's probes reach it.
//!
//! `/healthz` answers 200 while the process can answer at all. `/readyz` answers 200 only when
//! every component that registered itself reports ready, and otherwise 503 with a JSON body that
//! names each component that is not ready and why, which is what an on-call engineer reads first.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Readiness of the named parts of a service.
#[derive(Clone, Default)]
pub struct Readiness {
    components: Arc<Mutex<BTreeMap<String, Result<(), String>>>>,
    /// Prepended to component names: several services in one process (`flowhouse serve`)
    /// report into one `/readyz` without overwriting each other's `kafka`.
    prefix: Option<&'static str>,
}

impl Readiness {
    /// A view whose components are named `{prefix}.{name}`, reported in the same `/readyz`.
    pub fn scoped(&self, prefix: &'static str) -> Readiness {
        Readiness {
            components: self.components.clone(),
            prefix: Some(prefix),
        }
    }

    fn name(&self, component: &str) -> String {
        match self.prefix {
            Some(prefix) => format!("{prefix}.{component}"),
            None => component.to_string(),
        }
    }

    pub fn ready(&self, component: &'static str) {
        let name = self.name(component);
        self.lock().insert(name, Ok(()));
    }

    pub fn not_ready(&self, component: &'static str, reason: impl Into<String>) {
        let name = self.name(component);
        self.lock().insert(name, Err(reason.into()));
    }

    /// True when at least one component registered and all are ready.
    pub fn is_ready(&self) -> bool {
        let components = self.lock();
        !components.is_empty() && components.values().all(Result::is_ok)
    }

    fn report(&self) -> serde_json::Value {
        let components = self.lock();
        let detail: BTreeMap<_, _> = components
            .iter()
            .map(|(name, state)| match state {
                Ok(()) => (name.as_str(), json!({"ready": true})),
                Err(reason) => (name.as_str(), json!({"ready": false, "reason": reason})),
            })
            .collect();
        json!({"ready": !components.is_empty() && components.values().all(Result::is_ok), "components": detail})
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Result<(), String>>> {
        // A panic while holding this lock cannot leave the map half-updated: recover it.
        self.components
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The three admin routes, served on the admin listener.
pub fn routes(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(readiness)
}

async fn readyz(State(readiness): State<Readiness>) -> impl IntoResponse {
    let status = if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(readiness.report()))
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::metrics_handle().render(),
    )
}

/// Serves `router` on `listen` until `shutdown` fires, then finishes in-flight requests.
pub async fn serve(
    listen: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|error| anyhow::anyhow!("cannot listen on {listen}: {error}"))?;
    tracing::info!(%listen, "serving HTTP");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

/// Serves the public `router` on `listen` and the admin routes on `admin_listen` until
/// `shutdown` fires. Fails at once when either address cannot be bound.
pub async fn serve_with_admin(
    listen: SocketAddr,
    router: Router,
    admin_listen: SocketAddr,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if listen == admin_listen {
        anyhow::bail!(
            "the API and the admin routes need different addresses (both are {listen}); \
             set the admin listen address to another port"
        );
    }
    let admin = serve(admin_listen, routes(readiness), shutdown.clone());
    let public = serve(listen, router, shutdown);
    tokio::try_join!(public, admin)?;
    Ok(())
}
