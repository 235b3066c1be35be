//! `flowhouse loadtest run --chaos`: the same run, with faults injected while it goes, and the
//! same verification, plus raw row counts.
//!
//! The run owns what it kills ([`services`]): two `flowhouse ingest` instances in one consumer
//! group for the whole run (scale-out: every restart of one is a rebalance between the two) and
//! `flowhouse endpoint`, started from `--flowhouse-bin`. The query API stays outside. The plan
//! ([`plan`], seeded) spreads over the workload: `--chaos-ingest-kills` kill -9s of either
//! ingest instance, each restarted at once as a supervisor would; one restart of the local
//! ClickHouse and one of the broker (`deploy/local/stack stop|start`, [`stack`]); one restart of
//! the endpoint.
//!
//! Faults come one at a time: each is due at its point of the workload and not before the
//! previous one recovered, so that each recovery time is that fault's own ([`probe`] says what
//! recovered means). The workload is driven over HTTP, and the driver retries what a restart
//! refuses (connections refused or cut before an answer, 503) for up to a few minutes.
//!
//! Why the endpoint gets SIGTERM, not kill -9: it answers only once Kafka acknowledged, so a
//! killed endpoint leaves clients not knowing whether a batch went in; their resend is then
//! at-least-once by contract, and log lines (no id) would be stored twice. A clean stop finishes
//! what it accepted; that is what a deploy does, and what the exact counts can hold it to.
//!
//! Why the driver pauses around the broker's restart (unless `--chaos-live-broker-restart`):
//! tansu 0.6 with SQLite storage (the local stack's broker) does not survive a restart while a
//! producer has requests in flight. Checked here (2026-11-28): the stopping broker panics
//! (`tansu-storage` `service.rs`, "entered unreachable code"), and the restarted one panics in
//! its storage (`lite.rs`, "more or less than one row") once the endpoint's idempotent producer
//! reconnects; from then on every request fails with `Storage(UnableToSend)` although the
//! process keeps running. Kafka and Redpanda are not known to do this; the pause keeps the
//! fault about Flowhouse: ingest loses its broker (and its group) and must come back, the
//! endpoint's producer reconnects.
//!
//! At the end, besides every metric card, [`raw`] counts rows per tenant against the
//! generator. The `chaos` section of the report holds every fault with its recovery time.

pub mod plan;
pub mod probe;
pub mod raw;
pub mod report;
pub mod services;
pub mod stack;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::drive::gate::Gate;
use crate::workload::Message;
use plan::{FaultKind, PlannedFault};
use probe::{Positions, Probe};
use report::{ChaosReport, FaultRecord};
use services::{Services, ServicesConfig};
use stack::LocalStack;

/// Flags of the chaos mode (all but `--chaos` only matter with it).
#[derive(clap::Args, Clone, Debug)]
pub struct ChaosArgs {
    /// Inject faults during the run: two ingest instances and the endpoint are started by the
    /// run itself (from --flowhouse-bin) and killed or restarted, ClickHouse and the broker of
    /// the local stack (FLOWHOUSE_STACK_DIR) restarted; then exact raw counts are verified too.
    /// Needs --target http.
    #[arg(long)]
    pub chaos: bool,
    /// kill -9s of a random ingest instance, each restarted at once.
    #[arg(long, default_value_t = 10)]
    pub chaos_ingest_kills: u32,
    /// Seed of the fault plan [default: the workload's --seed].
    #[arg(long)]
    pub chaos_seed: Option<u64>,
    /// Faults fall between these shares of the workload's messages.
    #[arg(long, default_value_t = 0.05)]
    pub chaos_from: f64,
    #[arg(long, default_value_t = 0.85)]
    pub chaos_to: f64,
    /// The ingest instances' session timeout: how soon the broker may give a killed member's
    /// partitions away (the ingest default, 30 s, suits a busy shared broker).
    #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
    pub chaos_session_timeout: Duration,
    /// How long one fault may take to recover before the run fails (a stall found).
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    pub chaos_recovery_timeout: Duration,
    /// The consumer group of the two ingest instances.
    #[arg(
        long,
        env = "FLOWHOUSE_INGEST_GROUP",
        default_value = "flowhouse-ingest"
    )]
    pub ingest_group: String,
    /// The `flowhouse` binary the services are started from [default: this executable].
    #[arg(long)]
    pub flowhouse_bin: Option<PathBuf>,
    /// The local stack's control script.
    #[arg(
        long,
        env = "FLOWHOUSE_STACK_SCRIPT",
        default_value = "deploy/local/stack"
    )]
    pub stack_script: PathBuf,
    /// The local stack whose ClickHouse and broker are restarted.
    #[arg(long, env = "FLOWHOUSE_STACK_DIR")]
    pub stack_dir: Option<PathBuf>,
    /// Each fault waits until the previous one has recovered, so that every recovery time is
    /// that fault's alone (`make chaos`); otherwise faults only wait for the previous one's
    /// component to be back, and may overlap (`overlapped_by` in the report).
    #[arg(long)]
    pub chaos_one_at_a_time: bool,
    /// Restart the broker while the endpoint produces, instead of pausing the driver for it
    /// (for a real Kafka: tansu 0.6, the local stack's broker, breaks on it; see the module's
    /// documentation).
    #[arg(long)]
    pub chaos_live_broker_restart: bool,
}

/// The workload as the driver pulls it, counting what it handed out (faults are placed by it).
pub struct Counted<'a, I> {
    inner: &'a mut I,
    handed: Arc<AtomicU64>,
}

impl<'a, I> Counted<'a, I> {
    pub fn new(inner: &'a mut I, handed: Arc<AtomicU64>) -> Self {
        Self { inner, handed }
    }
}

impl<I: Iterator<Item = Message>> Iterator for Counted<'_, I> {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        let message = self.inner.next()?;
        self.handed.fetch_add(1, Ordering::Relaxed);
        Some(message)
    }
}

/// The least time between one fault's recovery and the next fault.
const SETTLE: Duration = Duration::from_secs(1);
/// How often recovery is polled.
const POLL: Duration = Duration::from_millis(250);
/// How long the endpoint's requests in flight may take to be answered before a broker restart.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(60);

/// What the fault loop needs besides the services.
struct Context {
    plan: Vec<PlannedFault>,
    probe: Probe,
    stack: LocalStack,
    http: reqwest::Client,
    endpoint_ready_url: String,
    recovery_timeout: Duration,
    /// The driver's and the markers' requests pass it; closed around a broker restart.
    gate: Arc<Gate>,
    live_broker_restart: bool,
    one_at_a_time: bool,
    /// The run's start, for the report's times.
    start: Instant,
    handed: Arc<AtomicU64>,
    expected_messages: u64,
    sending_done: Arc<AtomicBool>,
}

/// A chaos run in preparation: services started, plan made, faults not begun.
pub struct Chaos {
    services: Services,
    report: ChaosReport,
    context: Context,
}

/// The fault loop, running alongside the drive.
pub struct Running {
    task: tokio::task::JoinHandle<(Services, ChaosReport)>,
    sending_done: Arc<AtomicBool>,
}

/// Everything the run passes to the chaos mode.
pub struct Setup<'a> {
    pub args: &'a ChaosArgs,
    pub seed: u64,
    pub kafka: &'a flowhouse_service::kafka::KafkaArgs,
    pub topics: &'a flowhouse_schema::contract::TopicArgs,
    pub clickhouse: &'a flowhouse_service::clickhouse::ClickHouseArgs,
    pub endpoint_url: &'a str,
    pub keys_file: &'a std::path::Path,
    pub out_dir: &'a std::path::Path,
    pub expected_messages: u64,
    pub handed: Arc<AtomicU64>,
    pub gate: Arc<Gate>,
}

/// The variables every service gets: the run's own connections and topics, so that the
/// services and the run always look at the same place.
fn service_env(setup: &Setup<'_>) -> Vec<(String, String)> {
    let (ch, topics) = (setup.clickhouse, setup.topics);
    let mut env = vec![
        ("CLICKHOUSE_URL", ch.url.clone()),
        ("CLICKHOUSE_USER", ch.user.clone()),
        ("CLICKHOUSE_PASSWORD", ch.password.clone()),
        ("CLICKHOUSE_DATABASE", ch.database.clone()),
        ("KAFKA_BROKERS", setup.kafka.brokers.clone()),
        (
            "KAFKA_REPLICATION_FACTOR",
            setup.kafka.replication_factor.to_string(),
        ),
        ("FLOWHOUSE_EVENTS_TOPIC", topics.events_topic.clone()),
        ("FLOWHOUSE_LOGS_TOPIC", topics.logs_topic.clone()),
        ("FLOWHOUSE_DLQ_TOPIC", topics.dlq_topic.clone()),
        (
            "FLOWHOUSE_TOPIC_PARTITIONS",
            topics.topic_partitions.to_string(),
        ),
        ("FLOWHOUSE_LOG_FORMAT", "text".to_string()),
    ];
    if !setup.kafka.properties.is_empty() {
        env.push(("KAFKA_PROPERTIES", setup.kafka.properties.join(",")));
    }
    env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// `host:port` of an `http://host:port` URL.
fn listen_address(url: &str) -> anyhow::Result<String> {
    let url = reqwest::Url::parse(url).with_context(|| format!("bad endpoint URL {url}"))?;
    let host = url.host_str().context("the endpoint URL has no host")?;
    let port = url
        .port_or_known_default()
        .context("the endpoint URL has no port")?;
    Ok(format!("{host}:{port}"))
}

impl Chaos {
    /// Checks what the chaos mode needs, starts the services and waits until they are ready.
    pub async fn prepare(setup: Setup<'_>) -> anyhow::Result<Self> {
        let args = setup.args;
        let stack_dir = args.stack_dir.clone().context(
            "--chaos restarts ClickHouse and the broker of the local stack: set \
             FLOWHOUSE_STACK_DIR (or --stack-dir) to it",
        )?;
        if !args.stack_script.is_file() {
            bail!(
                "--chaos needs the local stack's script; {} is not a file (run from the \
                 repository's root or set --stack-script)",
                args.stack_script.display()
            );
        }
        let binary = match &args.flowhouse_bin {
            Some(binary) => binary.clone(),
            None => std::env::current_exe().context("cannot tell this executable's path")?,
        };
        let endpoint_listen = listen_address(setup.endpoint_url)?;
        let endpoint_admin = format!("127.0.0.1:{}", services::free_port()?);
        let log_dir = setup.out_dir.join("chaos");
        let seed = args.chaos_seed.unwrap_or(setup.seed);
        let instances = 2;
        let plan = plan::plan(
            seed,
            args.chaos_ingest_kills,
            instances,
            args.chaos_from,
            args.chaos_to,
        );
        let services = Services::start(ServicesConfig {
            binary,
            log_dir: log_dir.clone(),
            env: service_env(&setup),
            ingest_instances: instances,
            ingest_group: args.ingest_group.clone(),
            session_timeout: args.chaos_session_timeout,
            endpoint_listen,
            endpoint_admin: endpoint_admin.clone(),
            keys_file: setup.keys_file.to_path_buf(),
        })
        .await?;
        let probe = Probe::new(
            setup.kafka,
            setup.clickhouse.client(),
            &args.ingest_group,
            vec![
                setup.topics.events_topic.clone(),
                setup.topics.logs_topic.clone(),
            ],
        )?;
        let report = ChaosReport {
            seed,
            ingest_instances: instances,
            ingest_group: args.ingest_group.clone(),
            session_timeout_secs: args.chaos_session_timeout.as_secs_f64(),
            planned: plan.len(),
            logs: services
                .pids()
                .iter()
                .map(|(name, _)| services.log_path(name).display().to_string())
                .collect(),
            ..ChaosReport::default()
        };
        Ok(Self {
            services,
            report,
            context: Context {
                plan,
                probe,
                stack: LocalStack {
                    script: args.stack_script.clone(),
                    dir: stack_dir,
                },
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()?,
                endpoint_ready_url: format!("http://{endpoint_admin}/readyz"),
                recovery_timeout: args.chaos_recovery_timeout,
                gate: setup.gate,
                live_broker_restart: args.chaos_live_broker_restart,
                one_at_a_time: args.chaos_one_at_a_time,
                start: Instant::now(),
                handed: setup.handed,
                expected_messages: setup.expected_messages.max(1),
                sending_done: Arc::new(AtomicBool::new(false)),
            },
        })
    }

    /// Starts the faults; times are counted from `start`, the run's.
    pub fn begin(self, start: Instant) -> Running {
        let Self {
            services,
            report,
            mut context,
        } = self;
        context.start = start;
        let sending_done = context.sending_done.clone();
        let task = tokio::spawn(fault_loop(context, services, report));
        Running { task, sending_done }
    }
}

impl Running {
    /// Once everything is sent: waits for the faults still due (they come at once now).
    pub async fn finish(self) -> anyhow::Result<(Services, ChaosReport)> {
        self.sending_done.store(true, Ordering::Relaxed);
        self.task.await.context("the chaos fault loop panicked")
    }
}

/// Ends the chaos part: raw counts, services stopped cleanly, the section summarized.
pub async fn conclude(
    services: Services,
    mut report: ChaosReport,
    clickhouse: &clickhouse::Client,
    truth: &crate::truth::GroundTruth,
    stats: &crate::drive::DriveStats,
) -> ChaosReport {
    report.resent = stats.retried.clone();
    report.raw_counts = match raw::verify(clickhouse, truth).await {
        Ok(raw) => Some(raw),
        Err(error) => {
            report
                .stopped
                .get_or_insert_with(|| format!("raw counts failed: {error:#}"));
            None
        }
    };
    report.unclean_exits = services.stop().await;
    report.summarize();
    report
}

async fn fault_loop(
    context: Context,
    mut services: Services,
    mut report: ChaosReport,
) -> (Services, ChaosReport) {
    let context = Arc::new(context);
    let mut measuring: Vec<tokio::task::JoinHandle<FaultRecord>> = Vec::new();
    let mut settled = Instant::now();
    for (index, planned) in context.plan.iter().enumerate() {
        // Due at its share of the workload (at once once everything is sent), a moment after
        // the previous fault's component is back, and, with --chaos-one-at-a-time, only once
        // the previous fault has recovered.
        let due = (planned.at_fraction * context.expected_messages as f64).ceil() as u64;
        loop {
            let done = context.sending_done.load(Ordering::Relaxed);
            if (done || context.handed.load(Ordering::Relaxed) >= due)
                && settled.elapsed() >= SETTLE
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let injected = match inject(&context, &mut services, index + 1, planned).await {
            Ok(injected) => injected,
            Err(error) => {
                report.stopped = Some(format!(
                    "fault {} ({} of {}) could not be injected: {error:#}",
                    index + 1,
                    planned.kind.name(),
                    planned.target()
                ));
                break;
            }
        };
        let measure = tokio::spawn(measure(context.clone(), injected));
        if context.one_at_a_time {
            let record = match measure.await {
                Ok(record) => record,
                Err(error) => {
                    report.stopped = Some(format!("measuring fault {}: {error}", index + 1));
                    break;
                }
            };
            let recovered = record.recovery_secs.is_some();
            report.faults.push(record);
            if !recovered {
                break;
            }
        } else {
            measuring.push(measure);
        }
        settled = Instant::now();
    }
    for measure in measuring {
        match measure.await {
            Ok(record) => report.faults.push(record),
            Err(error) => report.stopped = Some(format!("measuring a fault: {error}")),
        }
    }
    if report.stopped.is_none()
        && let Some(fault) = report.faults.iter().find(|f| f.recovery_secs.is_none())
    {
        report.stopped = Some(format!(
            "fault {} ({} of {}) did not recover within {:?}",
            fault.index,
            fault.kind.name(),
            fault.target,
            context.recovery_timeout
        ));
    }
    report::mark_overlaps(&mut report.faults);
    (services, report)
}

/// A fault just injected, before its recovery is measured.
struct Injected {
    record: FaultRecord,
    injected: Instant,
    restored: Instant,
}

/// Injects one fault: the component is back (or restarted) when this returns.
async fn inject(
    context: &Context,
    services: &mut Services,
    index: usize,
    planned: &PlannedFault,
) -> anyhow::Result<Injected> {
    let at_fraction =
        context.handed.load(Ordering::Relaxed) as f64 / context.expected_messages as f64;
    let while_sending = !context.sending_done.load(Ordering::Relaxed);
    let injected = Instant::now();
    let detail = match planned.kind {
        FaultKind::IngestKill => {
            let instance = planned.instance.context("a kill without an instance")?;
            let old = services.kill_ingest(instance).await?;
            let new = services.start_ingest(instance)?;
            format!("kill -9 of pid {old}, restarted as pid {new}")
        }
        FaultKind::ClickHouseRestart => {
            let (stopped, started) = restart(&context.stack, "clickhouse").await?;
            format!("stopped in {stopped:.1} s, answering again {started:.1} s later")
        }
        FaultKind::BrokerRestart if context.live_broker_restart => {
            let (stopped, started) = restart(&context.stack, "kafka").await?;
            format!("stopped in {stopped:.1} s, answering again {started:.1} s later")
        }
        FaultKind::BrokerRestart => {
            // The endpoint's requests are paused and the ones in flight answered first, so
            // that its producer has nothing in flight when the broker goes (see above).
            let drained = context.gate.close(QUIESCE_TIMEOUT).await;
            let quiet = injected.elapsed().as_secs_f64();
            let restarted = restart(&context.stack, "kafka").await;
            context.gate.open();
            let (stopped, started) = restarted?;
            format!(
                "sending paused ({}, {quiet:.1} s), broker stopped in {stopped:.1} s, answering \
                 again {started:.1} s later, sending resumed",
                if drained {
                    "nothing in flight"
                } else {
                    "still requests in flight"
                }
            )
        }
        FaultKind::EndpointRestart => {
            let (old, new) = services.restart_endpoint().await?;
            format!("SIGTERM to pid {old} (exited after its drain), started pid {new}")
        }
    };
    let restored = Instant::now();
    let since_start = |at: Instant| at.duration_since(context.start).as_secs_f64();
    Ok(Injected {
        record: FaultRecord {
            index,
            kind: planned.kind,
            target: planned.target(),
            planned_at_fraction: planned.at_fraction,
            at_fraction,
            while_sending,
            injected_at_secs: since_start(injected),
            restored_at_secs: since_start(restored),
            ingestion_resumed_secs: None,
            ingestion_recovery_secs: None,
            endpoint_recovery_secs: None,
            recovery_secs: None,
            overlapped_by: Vec::new(),
            detail,
        },
        injected,
        restored,
    })
}

/// Measures a fault's recovery, from the moment its component was back.
async fn measure(context: Arc<Context>, injected: Injected) -> FaultRecord {
    let Injected {
        mut record,
        injected,
        restored,
    } = injected;
    let deadline = restored + context.recovery_timeout;
    let ingestion = matches!(
        record.kind,
        FaultKind::IngestKill | FaultKind::ClickHouseRestart | FaultKind::BrokerRestart
    );
    let endpoint = matches!(
        record.kind,
        FaultKind::EndpointRestart | FaultKind::BrokerRestart
    );
    let ((resumed_at, ingestion_at), endpoint_at) = tokio::join!(
        async {
            if ingestion {
                ingestion_recovered(&context, deadline).await
            } else {
                (None, None)
            }
        },
        async {
            if endpoint {
                endpoint_recovered(&context, deadline).await
            } else {
                None
            }
        }
    );
    let since = |at: Option<Instant>| at.map(|at| at.duration_since(injected).as_secs_f64());
    let recovery = match (ingestion, endpoint) {
        (true, true) => ingestion_at.zip(endpoint_at).map(|(a, b)| a.max(b)),
        (true, false) => ingestion_at,
        _ => endpoint_at,
    };
    record.ingestion_resumed_secs = since(resumed_at);
    record.ingestion_recovery_secs = since(ingestion_at);
    record.endpoint_recovery_secs = since(endpoint_at);
    record.recovery_secs = since(recovery);
    tracing::info!(
        fault = record.index,
        kind = record.kind.name(),
        target = record.target,
        recovery_secs = record.recovery_secs,
        "chaos: fault recovered"
    );
    record
}

/// Stops and starts a stack component; returns how long each took (seconds).
async fn restart(stack: &LocalStack, component: &str) -> anyhow::Result<(f64, f64)> {
    let begun = Instant::now();
    stack.stop(component).await?;
    let stopped = begun.elapsed();
    stack.start(component).await?;
    Ok((
        stopped.as_secs_f64(),
        begun.elapsed().saturating_sub(stopped).as_secs_f64(),
    ))
}

/// The positions once they can be read (the broker or ClickHouse may still be coming back).
async fn positions_by(context: &Context, deadline: Instant) -> Option<Positions> {
    loop {
        match context.probe.positions().await {
            Ok(positions) => return Some(positions),
            Err(error) if Instant::now() >= deadline => {
                tracing::warn!("chaos: cannot read positions: {error:#}");
                return None;
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// When ingestion resumed (every partition with messages waiting had moved since now) and
/// when it caught up (every partition consumed up to where it ended now); see [`probe`].
async fn ingestion_recovered(
    context: &Context,
    deadline: Instant,
) -> (Option<Instant>, Option<Instant>) {
    let Some(baseline) = positions_by(context, deadline).await else {
        return (None, None);
    };
    let mut resumed = None;
    loop {
        let Some(now) = positions_by(context, deadline).await else {
            return (resumed, None);
        };
        let stalled = probe::stalled(&baseline, &now);
        if resumed.is_none() && stalled.is_empty() {
            resumed = Some(Instant::now());
        }
        let behind = probe::behind(&baseline, &now);
        if behind.is_empty() {
            let caught_up = Instant::now();
            return (resumed.or(Some(caught_up)), Some(caught_up));
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                ?stalled,
                ?behind,
                "chaos: partitions still without progress"
            );
            return (resumed, None);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// When the endpoint's `/readyz` answered 200 (it is ready once Kafka is reachable).
async fn endpoint_recovered(context: &Context, deadline: Instant) -> Option<Instant> {
    loop {
        let answer = context.http.get(&context.endpoint_ready_url).send().await;
        if matches!(answer, Ok(r) if r.status().is_success()) {
            return Some(Instant::now());
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_listens_where_its_url_points() {
        assert_eq!(
            listen_address("http://127.0.0.1:4300").unwrap(),
            "127.0.0.1:4300"
        );
        assert_eq!(listen_address("http://localhost/").unwrap(), "localhost:80");
        assert!(listen_address("not a url").is_err());
    }
}
