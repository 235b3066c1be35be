//! `flowhouse serve`: the single-node way to run Flowhouse. The ingestion endpoint, the query
//! API and the ingest consumer in one process, every route on one port, so that a Prefect
//! client's one `PREFECT_API_URL` reaches both writes and reads; the schema is migrated at
//! start. Split deployments run the three services apart behind a path-routing proxy
//! (`deploy/compose/`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use flowhouse_endpoint::config::EventLimitArgs;
use flowhouse_schema::contract::TopicArgs;
use flowhouse_schema::ddl::{SchemaConfig, Topology};
use flowhouse_service::admin::{self, Readiness};
use flowhouse_service::clickhouse::ClickHouseArgs;
use flowhouse_service::http::PublicApiArgs;
use flowhouse_service::kafka::KafkaArgs;
use utoipa::OpenApi as _;

/// How long SIGTERM may take: open websockets, the producer's queue, buffered batches.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Flags of `flowhouse serve`: the connections, the keys, the public API, and the limits of
/// the services it runs (each service's other flags keep their defaults).
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    #[command(flatten)]
    pub public: PublicApiArgs,
    /// Where every API route is served (ingestion, search, metrics, the websockets).
    #[arg(long, env = "FLOWHOUSE_LISTEN", default_value = "127.0.0.1:4200")]
    pub listen: SocketAddr,
    /// Where /healthz, /readyz and /metrics are served (keep it off the public network).
    #[arg(long, env = "FLOWHOUSE_ADMIN_LISTEN", default_value = "127.0.0.1:9464")]
    pub admin_listen: SocketAddr,
    /// The tenant API keys file (reloaded when it changes).
    #[arg(long, env = "FLOWHOUSE_KEYS_FILE", default_value = "keys.json")]
    pub keys_file: PathBuf,
    /// Secret that signs event page tokens (random per process when empty).
    #[arg(
        long,
        env = "FLOWHOUSE_PAGE_TOKEN_SECRET",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub page_token_secret: String,
    /// Kafka consumer group of the in-process ingest consumer.
    #[arg(
        long,
        env = "FLOWHOUSE_INGEST_GROUP",
        default_value = "flowhouse-ingest"
    )]
    pub ingest_group: String,
    /// Days of events, logs and rollups to keep (used when the schema is first created).
    #[arg(long, env = "FLOWHOUSE_RETENTION_DAYS", default_value_t = 30)]
    pub retention_days: u32,
    #[command(flatten)]
    pub event_limits: EventLimitArgs,
    #[command(flatten)]
    pub uploads: flowhouse_endpoint::config::UploadLimits,
    #[command(flatten)]
    pub query: flowhouse_query_api::Settings,
    #[command(flatten)]
    pub batching: flowhouse_ingest::batch::BatchLimits,
    #[command(flatten)]
    pub automations: flowhouse_automations::Args,
}

impl Args {
    fn endpoint(&self) -> flowhouse_endpoint::Args {
        let mut args = flowhouse_endpoint::Args::new(
            self.kafka.clone(),
            self.keys_file.clone(),
            self.topics.clone(),
        );
        args.listen = self.listen;
        args.admin_listen = self.admin_listen;
        args.public = self.public.clone();
        args.limits = self.event_limits.clone();
        args.uploads = self.uploads.clone();
        args
    }

    fn query_api(&self) -> flowhouse_query_api::Args {
        flowhouse_query_api::Args {
            clickhouse: self.clickhouse.clone(),
            listen: self.listen,
            admin_listen: self.admin_listen,
            keys_file: self.keys_file.clone(),
            page_token_secret: self.page_token_secret.clone(),
            public: self.public.clone(),
            live: flowhouse_query_api::LiveArgs::new(self.kafka.clone(), self.topics.clone()),
            limits: self.query.clone(),
        }
    }

    fn ingest(&self) -> flowhouse_ingest::Args {
        let mut args = flowhouse_ingest::Args::new(
            self.clickhouse.clone(),
            self.kafka.clone(),
            self.topics.clone(),
        );
        args.admin_listen = self.admin_listen;
        args.group = self.ingest_group.clone();
        args.batching = self.batching.clone();
        args.max_event_bytes = self.event_limits.max_event_bytes;
        args.drain_timeout = DRAIN_TIMEOUT;
        args
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.retention_days > 0,
        "--retention-days must be at least 1"
    );
    let shutdown = flowhouse_service::shutdown::on_signal();
    let config = SchemaConfig {
        database: args.clickhouse.database.clone(),
        topology: Topology::SingleNode,
        retention_days: args.retention_days,
    };
    flowhouse_schema::migrate::apply(&args.clickhouse.server_client(), &config)
        .await
        .with_context(|| {
            format!(
                "cannot migrate {} on {}",
                config.database, args.clickhouse.url
            )
        })?;

    let readiness = Readiness::default();
    let endpoint =
        flowhouse_endpoint::App::start(&args.endpoint(), readiness.scoped("endpoint")).await?;
    let (query_state, _query_tasks) =
        flowhouse_query_api::start(&args.query_api(), &readiness.scoped("query")).await?;
    let ingest = tokio::spawn(flowhouse_ingest::run_in_process(
        args.ingest(),
        readiness.scoped("ingest"),
        shutdown.clone(),
    ));

    let _evaluator = flowhouse_automations::spawn(
        &args.automations,
        &args.clickhouse,
        &args.kafka,
        &args.topics,
    )?;
    let automations = flowhouse_automations::api_state(&args.automations, &args.clickhouse);

    let document = merged_document(
        endpoint.openapi_document(),
        flowhouse_automations::api::merge_document(
            serde_json::to_value(flowhouse_query_api::openapi::ApiDoc::openapi())?,
            &flowhouse_automations::api::document(),
        ),
    );
    let routes = endpoint
        .api_routes()
        .merge(flowhouse_query_api::api_routes_with(
            query_state,
            flowhouse_automations::api::routes(automations),
        ))
        .route(
            "/openapi.json",
            axum::routing::get(move || async move { axum::Json(document) }),
        );
    let router = args.public.build()?.router(routes);
    let served = admin::serve_with_admin(
        args.listen,
        router,
        args.admin_listen,
        readiness,
        shutdown.clone(),
    )
    .await;
    // Writes first: what the endpoint acknowledged is in Kafka before ingest stops reading.
    let drained = endpoint.drain(DRAIN_TIMEOUT).await;
    shutdown.cancel();
    let ingested = ingest.await.context("the ingest task panicked")?;
    served.and(drained).and(ingested)
}

/// One document for every route `flowhouse serve` answers: both services' paths and schemas.
fn merged_document(mut endpoint: serde_json::Value, query: serde_json::Value) -> serde_json::Value {
    for section in ["paths", "components/schemas", "components/securitySchemes"] {
        let pointer = format!("/{section}");
        if let (Some(into), Some(from)) = (
            endpoint
                .pointer_mut(&pointer)
                .and_then(|v| v.as_object_mut()),
            query.pointer(&pointer).and_then(|v| v.as_object()),
        ) {
            for (name, value) in from {
                into.entry(name.clone()).or_insert_with(|| value.clone());
            }
        }
    }
    endpoint["info"]["title"] = "Flowhouse".into();
    endpoint["info"]["description"] =
        "Prefect-compatible ingestion, search and metrics, every route on one port.".into();
    endpoint
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(clap::Parser)]
    struct Command {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn the_services_get_the_one_listen_address_and_the_shared_flags() {
        let args = Command::try_parse_from([
            "serve",
            "--listen",
            "127.0.0.1:4300",
            "--admin-listen",
            "127.0.0.1:9300",
            "--keys-file",
            "/etc/k.json",
            "--max-related-resources",
            "50",
            "--rate-limit",
            "250",
            "--max-uploads-per-tenant",
            "3",
        ])
        .unwrap()
        .args;
        let endpoint = args.endpoint();
        let query = args.query_api();
        let ingest = args.ingest();
        assert_eq!(endpoint.listen, args.listen);
        assert_eq!(query.listen, args.listen);
        assert_eq!(endpoint.admin_listen, args.admin_listen);
        assert_eq!(query.admin_listen, args.admin_listen);
        assert_eq!(endpoint.keys_file, query.keys_file);
        assert_eq!(endpoint.limits.limits().unwrap().max_related, 50);
        assert_eq!(endpoint.uploads.rate_limit, 250.0);
        assert_eq!(endpoint.uploads.max_uploads_per_tenant, 3);
        assert_eq!(ingest.max_event_bytes, endpoint.limits.max_event_bytes);
        assert_eq!(query.clickhouse.database, ingest.clickhouse.database);
        assert_eq!(query.live.topics.events_topic, ingest.topics.events_topic);
    }
}
