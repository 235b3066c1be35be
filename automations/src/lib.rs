//! Automations (issue 16): Prefect-shaped metric and event triggers with webhook actions and
//! `prefect.automation.*` events, fired exactly once (by idempotency key) across restarts and
//! with several evaluators running.
//!
//! Modules: [`model`] (Prefect's shapes, validation), [`store`] (the tables of migration 4),
//! [`lease`] (one evaluator per automation at a time; the exactly-once argument),
//! [`evaluate`] (the rounds: [`evaluate::metric`] on the rollups), [`stream`] (event triggers
//! on the live event stream from Kafka, their own consumer group, windows checkpointed with
//! their offsets), [`deliver`] (webhooks, the events), [`clock`] (a parameter, so tests step
//! time), [`crash`] (the crash tests' failpoints), [`api`] (the routes mounted into the query
//! API).
//!
//! It runs inside the query API (and `flowhouse serve`) unless `--automations false`, or alone
//! as `flowhouse automations serve`; both need only the usual ClickHouse and Kafka variables.

pub mod api;
pub mod clock;
pub mod crash;
pub mod deliver;
pub mod evaluate;
pub mod lease;
pub mod model;
pub mod store;
pub mod stream;

use std::sync::Arc;
use std::time::Duration;

use flowhouse_query_api::db::{Db, DbLimits};
use flowhouse_schema::contract::TopicArgs;
use flowhouse_service::clickhouse::ClickHouseArgs;
use flowhouse_service::kafka::KafkaArgs;
use rdkafka::producer::FutureProducer;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::clock::{Clock, SystemClock};
use crate::deliver::{Deliverer, DeliveryConfig, Emitter};
use crate::evaluate::{EvalConfig, Evaluator};
use crate::lease::{LeaseConfig, Leases};
use crate::model::Limits;
use crate::store::Store;
use crate::stream::EventStream;

/// The automations' flags, shared by the query API, `flowhouse serve` and
/// `flowhouse automations serve`.
#[derive(clap::Args, Clone, Debug)]
#[group(id = "automations_args")]
pub struct Args {
    /// Evaluate automations in this process (`false`: the API only; run the evaluator apart
    /// with `flowhouse automations serve`).
    #[arg(
        long = "automations",
        env = "FLOWHOUSE_AUTOMATIONS",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub enabled: bool,
    /// ClickHouse user of the automations' tables (default: CLICKHOUSE_USER); the query API's
    /// own user can then stay read-only.
    #[arg(
        long = "automations-clickhouse-user",
        env = "FLOWHOUSE_AUTOMATIONS_CLICKHOUSE_USER"
    )]
    pub clickhouse_user: Option<String>,
    /// Its password (default: CLICKHOUSE_PASSWORD).
    #[arg(
        long = "automations-clickhouse-password",
        env = "FLOWHOUSE_AUTOMATIONS_CLICKHOUSE_PASSWORD",
        hide_env_values = true
    )]
    pub clickhouse_password: Option<String>,
    /// How often automations are evaluated.
    #[arg(long = "automations-interval", env = "FLOWHOUSE_AUTOMATIONS_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// The least `range` and `firing_for` of a metric trigger (Prefect's minimum: 300 s).
    #[arg(long = "automations-min-window", env = "FLOWHOUSE_AUTOMATIONS_MIN_WINDOW", default_value = "300s", value_parser = humantime::parse_duration)]
    pub min_window: Duration,
    /// How long events take to reach the evaluator through Kafka: proactive event triggers
    /// wait this long past a deadline before deciding nothing came.
    #[arg(long = "automations-delay", env = "FLOWHOUSE_AUTOMATIONS_DELAY", default_value = "2s", value_parser = humantime::parse_duration)]
    pub delay: Duration,
    /// The Kafka consumer group the event triggers read the events topic under (its offsets
    /// show their lag; they resume from their own checkpoints).
    #[arg(
        long = "automations-group",
        env = "FLOWHOUSE_AUTOMATIONS_GROUP",
        default_value = "flowhouse-automations"
    )]
    pub group: String,
    /// Let webhooks target loopback, private and link-local addresses.
    #[arg(
        long,
        env = "FLOWHOUSE_WEBHOOK_ALLOW_PRIVATE",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub webhook_allow_private: bool,
    /// Timeout of one webhook attempt.
    #[arg(long, env = "FLOWHOUSE_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub webhook_timeout: Duration,
    /// Attempts per webhook delivery (the first included), with exponential backoff.
    #[arg(long, env = "FLOWHOUSE_WEBHOOK_ATTEMPTS", default_value_t = 3)]
    pub webhook_attempts: u32,
    /// How long an evaluator's lease on its automations lasts unless renewed.
    #[arg(long = "automations-lease-ttl", env = "FLOWHOUSE_AUTOMATIONS_LEASE_TTL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
    /// Shards of automations, each leased apart.
    #[arg(
        long = "automations-shards",
        env = "FLOWHOUSE_AUTOMATIONS_SHARDS",
        default_value_t = 8
    )]
    pub shards: u32,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            enabled: true,
            clickhouse_user: None,
            clickhouse_password: None,
            interval: Duration::from_secs(10),
            min_window: Duration::from_secs(300),
            delay: Duration::from_secs(2),
            group: "flowhouse-automations".into(),
            webhook_allow_private: false,
            webhook_timeout: Duration::from_secs(10),
            webhook_attempts: 3,
            lease_ttl: Duration::from_secs(60),
            shards: 8,
        }
    }
}

impl Args {
    pub fn limits(&self) -> Limits {
        Limits {
            min_window: self.min_window,
            allow_private: self.webhook_allow_private,
        }
    }

    /// The automations' ClickHouse client: its own user when given.
    pub fn client(&self, clickhouse: &ClickHouseArgs) -> clickhouse::Client {
        let mut args = clickhouse.clone();
        if let Some(user) = &self.clickhouse_user {
            args.user = user.clone();
            args.password = self.clickhouse_password.clone().unwrap_or_default();
        }
        args.client()
    }

    pub fn delivery(&self) -> DeliveryConfig {
        DeliveryConfig {
            timeout: self.webhook_timeout,
            attempts: self.webhook_attempts.max(1),
            backoff: Duration::from_millis(500),
            allow_private: self.webhook_allow_private,
        }
    }

    /// The round's lease margin: one webhook with its retries, at least.
    pub fn eval_config(&self) -> EvalConfig {
        let delivery = self.delivery();
        let worst = delivery.timeout * delivery.attempts + Duration::from_secs(2);
        EvalConfig {
            shards: self.shards.max(1),
            delay: self.delay,
            margin: worst.min(self.lease_ttl / 2),
            ..EvalConfig::default()
        }
    }
}

/// The API's shared state for [`api::routes`].
pub fn api_state(args: &Args, clickhouse: &ClickHouseArgs) -> Arc<api::Api> {
    Arc::new(api::Api {
        store: Store::new(args.client(clickhouse)),
        limits: args.limits(),
    })
}

/// A producer for the `prefect.automation.*` events.
pub fn emitter(kafka: &KafkaArgs, topics: &TopicArgs) -> anyhow::Result<Emitter> {
    let mut config = kafka.config()?;
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "30000");
    let producer: FutureProducer = config.create()?;
    Ok(Emitter {
        producer,
        topic: topics.events_topic.clone(),
    })
}

/// The reader of the events topic for the event triggers.
pub fn event_stream(
    args: &Args,
    clickhouse: &ClickHouseArgs,
    kafka: &KafkaArgs,
    topics: &TopicArgs,
) -> anyhow::Result<EventStream> {
    EventStream::new(
        kafka,
        &topics.events_topic,
        &args.group,
        args.client(clickhouse),
    )
}

/// An evaluator on `clock` with the flags' settings; event triggers are evaluated only with a
/// `stream`.
pub fn evaluator(
    args: &Args,
    clickhouse: &ClickHouseArgs,
    emitter: Option<Emitter>,
    stream: Option<EventStream>,
    clock: Arc<dyn Clock>,
) -> Evaluator {
    let client = args.client(clickhouse);
    let owner = format!(
        "{}/{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into()),
        uuid::Uuid::new_v4()
    );
    Evaluator {
        store: Store::new(client.clone()),
        db: Db::new(
            client.clone(),
            4,
            DbLimits {
                max_execution_secs: 60,
                queue_timeout: Duration::from_secs(60),
                max_concurrent_per_tenant: 2,
                tenant_settings: false,
            },
        ),
        leases: Leases::new(
            client,
            owner,
            LeaseConfig {
                ttl: args.lease_ttl,
                ..LeaseConfig::default()
            },
        ),
        deliverer: Deliverer {
            config: args.delivery(),
            emitter: emitter.map(Arc::new),
        },
        clock,
        config: args.eval_config(),
        stream,
        crash_at: None,
    }
}

/// Starts the evaluator in this process (unless `--automations false`); it stops when the
/// handle is dropped.
pub fn spawn(
    args: &Args,
    clickhouse: &ClickHouseArgs,
    kafka: &KafkaArgs,
    topics: &TopicArgs,
) -> anyhow::Result<Option<AbortOnDropHandle<()>>> {
    if !args.enabled {
        return Ok(None);
    }
    let emitter = match emitter(kafka, topics) {
        Ok(e) => Some(e),
        Err(error) => {
            tracing::warn!("automations: no Kafka producer, events will not be emitted: {error:#}");
            None
        }
    };
    let stream = event_stream(args, clickhouse, kafka, topics)?;
    let evaluator = evaluator(
        args,
        clickhouse,
        emitter,
        Some(stream),
        Arc::new(SystemClock),
    );
    let interval = args.interval;
    Ok(Some(AbortOnDropHandle::new(tokio::spawn(evaluator.run(
        interval,
        CancellationToken::new(),
        None,
    )))))
}

/// `flowhouse automations serve`: the evaluator alone.
#[derive(clap::Args, Clone, Debug)]
#[group(id = "automations_serve_args")]
pub struct ServeArgs {
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    #[command(flatten)]
    pub automations: Args,
    /// Where /healthz, /readyz and /metrics are served.
    #[arg(
        long,
        env = "FLOWHOUSE_AUTOMATIONS_ADMIN_LISTEN",
        default_value = "127.0.0.1:9468"
    )]
    pub admin_listen: std::net::SocketAddr,
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let readiness = flowhouse_service::admin::Readiness::default();
    let shutdown = flowhouse_service::shutdown::on_signal();
    let emitter = Some(emitter(&args.kafka, &args.topics)?);
    let stream = event_stream(
        &args.automations,
        &args.clickhouse,
        &args.kafka,
        &args.topics,
    )?;
    let mut evaluator = evaluator(
        &args.automations,
        &args.clickhouse,
        emitter,
        Some(stream),
        Arc::new(SystemClock),
    );
    evaluator.crash_at = crash::Failpoint::from_env()?;
    let interval = args.automations.interval;
    // Ready once a round has run: ClickHouse and the leases answered.
    readiness.not_ready("automations", "no round has run yet");
    let run = tokio::spawn(evaluator.run(interval, shutdown.clone(), Some(readiness.clone())));
    flowhouse_service::admin::serve(
        args.admin_listen,
        flowhouse_service::admin::routes(readiness),
        shutdown,
    )
    .await?;
    run.await?;
    Ok(())
}
