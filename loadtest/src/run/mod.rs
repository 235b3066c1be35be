//! `flowhouse loadtest run`: the whole job against running services.
//!
//! 1. Mint a read+write key per generated account (and one for the freshness markers' own
//!    tenant) into the keys file the endpoint and the query API read.
//! 2. With `--backlog N` ([`backlog`]): pre-load a backlog into the topics, measure the broker's
//!    and the engine's baselines on it, then start ingest (this run owns it, [`ingest`]) and
//!    time its drain.
//! 3. The live phase: drive the workload (Kafka, HTTP or websocket) while, at the same time,
//!    `--dashboard-users` dashboards refresh every card every `--dashboard-refresh`
//!    ([`dashboards`]), a sampler counts the rows visible in ClickHouse every second
//!    ([`visibility`]), and markers measure freshness to ClickHouse and to a dashboard answer
//!    ([`freshness`]); the services' CPU time is read at its start and end ([`cpu`]).
//! 4. Wait until every event and log line sent is visible (bounded; says what is missing).
//! 5. The raw-scan baseline of the dashboard questions ([`baselines`]).
//! 6. Verify every card of every tenant (the backlog's too) against the ground truth
//!    ([`verify`]); these first, uncached answers on an idle engine are the latency reference.
//! 7. Report: `report.json`, plots, a summary table and one tenant's dashboard ([`summary`]).
//!    Any mismatch, lost message or failed stage exits non-zero.
//!
//! With `--chaos` ([`chaos`]), the run starts two ingest instances and the endpoint itself,
//! kills and restarts them, ClickHouse and the broker while it drives, reports each fault's
//! recovery time, and also verifies exact raw row counts per tenant.

pub mod api;
pub mod backlog;
pub mod baselines;
pub mod chaos;
pub mod cpu;
pub mod dashboards;
pub mod freshness;
pub mod ingest;
pub mod rss;
pub mod summary;
pub mod verify;
pub mod visibility;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::Utc;
use flowhouse_keys::Scope;
use flowhouse_schema::Tenant;
use flowhouse_schema::contract::TopicArgs;
use flowhouse_service::clickhouse::ClickHouseArgs;
use flowhouse_service::kafka::KafkaArgs;
use uuid::Uuid;

use crate::drive::endpoint::{ApiKeys, EndpointTarget, WsAuth};
use crate::drive::gate::Gate;
use crate::drive::{DriveOptions, DriveStats};
use crate::measure::{Progress, Report};
use crate::workload::Workload;
use crate::{Target, WorkloadArgs};
use api::QueryApi;
use baselines::Baselines;
use cpu::CpuTicks;
use freshness::{MarkerPath, Markers};
use visibility::{Counter, Sampler, Visible};

#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[arg(long, value_enum, default_value = "kafka")]
    pub target: Target,
    /// Messages per second, evenly paced [default: as fast as it goes].
    #[arg(long)]
    pub rate: Option<f64>,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    /// The ingestion endpoint (for --target http or ws, and their freshness markers).
    #[arg(
        long,
        env = "FLOWHOUSE_ENDPOINT_URL",
        default_value = "http://127.0.0.1:4200"
    )]
    pub endpoint_url: String,
    /// The query API (dashboards, verification).
    #[arg(
        long,
        env = "FLOWHOUSE_QUERY_URL",
        default_value = "http://127.0.0.1:4201"
    )]
    pub query_url: String,
    /// The query API's admin listener (cache counters from its /metrics).
    #[arg(
        long,
        env = "FLOWHOUSE_QUERY_ADMIN_URL",
        default_value = "http://127.0.0.1:9466"
    )]
    pub query_admin_url: String,
    /// The keys file the endpoint and the query API read; a read+write key per generated
    /// account is added to it.
    #[arg(long, env = "FLOWHOUSE_KEYS_FILE", default_value = "keys.json")]
    pub keys_file: PathBuf,
    /// Messages per POST; for ws, events per flush.
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
    /// POSTs in flight.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    #[arg(long, value_enum, default_value = "header")]
    pub ws_auth: WsAuth,
    /// People watching a dashboard during the run (spread over the tenants).
    #[arg(long, default_value_t = 20)]
    pub dashboard_users: u32,
    /// How often each of them refreshes every card.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub dashboard_refresh: Duration,
    /// How often a freshness marker is sent (one at a time).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub freshness_every: Duration,
    /// A service whose memory to sample, as name=pid (repeatable).
    #[arg(long = "service-pid")]
    pub services: Vec<rss::Service>,
    /// How long everything sent may take to become visible after the last acknowledgement.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub visible_timeout: Duration,
    /// Before the live phase, write about this many messages (another workload, other tenants)
    /// straight into the topics, measure the baselines on them, then start ingest and time its
    /// drain. The run starts ingest itself (`flowhouse ingest` with this environment): do not
    /// run one beside it. 0: no backlog phase, ingest runs outside.
    #[arg(long, default_value_t = 0)]
    pub backlog: u64,
    /// Skip the baselines (broker drain, raw insert, raw scans).
    #[arg(long)]
    pub no_baselines: bool,
    /// Folder for report.json, truth.json and the plots.
    #[arg(long, default_value = "loadtest-results")]
    pub out_dir: PathBuf,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub chaos: chaos::ChaosArgs,
}

/// Everything measured, handed to the report.
pub struct Outcome {
    pub stats: DriveStats,
    pub samples: visibility::Samples,
    pub freshness: freshness::FreshnessSamples,
    pub dashboards: dashboards::DashboardStats,
    pub visible: Visible,
    /// From the first send until everything was visible.
    pub end_to_end_secs: f64,
    pub cache: Option<(f64, f64)>,
    pub baselines: Option<Baselines>,
    pub backlog: Option<crate::measure::report::BacklogSummary>,
    pub raw_scans: crate::measure::Latencies,
    /// Live phase: CPU microseconds per message of each service on the message path.
    pub cpu_us_per_msg: BTreeMap<String, f64>,
    /// `VmHWM` of each service at the end, MB.
    pub peak_rss_mb: BTreeMap<String, f64>,
    pub verification: verify::Verification,
    /// With `--chaos`: the faults, their recoveries and the raw counts.
    pub chaos: Option<chaos::report::ChaosReport>,
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let started_at = Utc::now();
    if args.chaos.chaos && args.target != Target::Http {
        // The endpoint's restart is one of the faults, and the HTTP driver is the one that
        // retries what a restart refuses.
        bail!("--chaos drives the workload through the endpoint: use --target http");
    }
    if args.chaos.chaos && args.backlog > 0 {
        bail!("--chaos starts its own ingest instances: no --backlog with it");
    }
    let config = args.workload.window_config()?;
    let workload = Workload::new(config.clone())?;
    let tenants = workload.tenants();
    let progress = Progress::new(!args.quiet);
    progress.println(&format!(
        "flowhouse loadtest run: {} tenants, {} flow runs over {} .. {}, target {:?}{}, \
         {} dashboard users every {:?}",
        config.tenants,
        config.runs,
        config.start.format("%Y-%m-%d %H:%M"),
        config.end.format("%Y-%m-%d %H:%M"),
        args.target,
        args.rate
            .map(|r| format!(" at {r:.0} messages/s"))
            .unwrap_or_default(),
        args.dashboard_users,
        args.dashboard_refresh,
    ));

    // Keys: one read+write key per account; the markers get a tenant (and key) of their own.
    let keys = crate::mint_keys(&args.keys_file, &tenants, &[Scope::Write, Scope::Read])?;
    let tenant_keys: Vec<(Tenant, String)> = tenants
        .iter()
        .filter_map(|t| keys.key(t).map(|k| (*t, k.to_string())))
        .collect();
    let marker_tenant = Tenant {
        account_id: Uuid::new_v4(),
        workspace_id: Uuid::new_v4(),
    };
    let marker_key = flowhouse_keys::cli::create(
        &args.keys_file,
        marker_tenant.account_id,
        vec![marker_tenant.workspace_id],
        vec![Scope::Write, Scope::Read],
        Some("loadtest freshness markers".into()),
    )?;
    let api = QueryApi::new(&args.query_url, &args.query_admin_url)?;
    let (first_tenant, first_key) = tenant_keys.first().context("the workload has no tenant")?;
    api.wait_for_key(first_tenant, first_key, Duration::from_secs(60))
        .await?;

    let clickhouse = args.clickhouse.client();
    let counter = Counter::new(clickhouse.clone(), &tenants);
    flowhouse_service::kafka::ensure_topics(&args.kafka, &args.topics.specs()).await?;
    let backlog = if args.backlog > 0 {
        Some(backlog::run(&args, &clickhouse, &progress).await?)
    } else {
        None
    };
    let mut services = args.services.clone();
    if let Some(backlog) = &backlog {
        services.push(rss::Service {
            name: "ingest".into(),
            pid: backlog.ingest.pid,
        });
    }
    let cache_before = cache_counts(&api).await;
    // Messages handed to the driver so far: the chaos faults are placed by it. Every request
    // to the endpoint passes the gate, which the chaos run may close (see `chaos`).
    let handed = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(Gate::default());
    let chaos = if args.chaos.chaos {
        progress.println("chaos: starting two ingest instances and the endpoint");
        let expected_messages = [args.workload.max_messages, args.workload.events]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| {
                (crate::workload::messages_per_run(&config) * config.runs as f64) as u64
            });
        Some(
            chaos::Chaos::prepare(chaos::Setup {
                args: &args.chaos,
                seed: args.workload.seed,
                kafka: &args.kafka,
                topics: &args.topics,
                clickhouse: &args.clickhouse,
                endpoint_url: &args.endpoint_url,
                keys_file: &args.keys_file,
                out_dir: &args.out_dir,
                expected_messages,
                handed: handed.clone(),
                gate: gate.clone(),
            })
            .await?,
        )
    } else {
        None
    };

    let marker_path = match args.target {
        Target::Kafka => MarkerPath::kafka(
            &args.kafka,
            &args.topics.events_topic,
            &args.topics.logs_topic,
        )?,
        Target::Http | Target::Ws => MarkerPath::Endpoint {
            client: reqwest::Client::new(),
            url: EndpointTarget::new(args.endpoint_url.clone(), ApiKeys::One(String::new()))
                .workspace_url(&marker_tenant),
            key: marker_key.clone(),
            gate: Some(gate.clone()),
        },
    };
    let ticks_per_sec = cpu::ticks_per_sec();
    let cpu_start = CpuTicks::read(&services);
    let start = Instant::now();
    let sampler = Sampler::start(counter.clone(), services.clone(), start);
    let markers = Markers::start(
        marker_path,
        freshness::Watch {
            clickhouse: clickhouse.clone(),
            api: api.clone(),
            key: marker_key,
            tenant: marker_tenant,
        },
        args.freshness_every,
        start,
    );
    let dashboards = dashboards::Dashboards::start(
        &api,
        &tenant_keys,
        args.dashboard_users,
        args.dashboard_refresh,
    );
    let chaos = chaos.map(|chaos| chaos.begin(start));

    let options = DriveOptions {
        rate: args.rate,
        max_messages: args.workload.max_messages,
        ..DriveOptions::default()
    };
    let (stats, workload) =
        drive(&args, workload, keys, &options, &progress, &handed, &gate).await?;
    let truth = workload.into_truth();
    let chaos = match chaos {
        Some(running) => {
            progress.println("chaos: everything sent; waiting for the faults still due");
            Some(running.finish().await?)
        }
        None => None,
    };
    if stats.messages_failed > 0 {
        if let Some((services, report)) = chaos {
            chaos::report::print(
                &chaos::conclude(services, report, &clickhouse, &truth, &stats).await,
            );
        }
        bail!(
            "{} of {} messages were not acknowledged: {:?}",
            stats.messages_failed,
            stats.messages_sent,
            stats.errors
        );
    }
    let expected = Visible {
        events: truth.events(),
        logs: truth.logs(),
    };
    let visible_at =
        match visibility::wait_all_visible(&counter, expected, args.visible_timeout, &progress)
            .await
        {
            Ok(at) => at,
            Err(error) => {
                // What the raw tables hold says more than "not visible": lost or duplicated.
                if let Some((services, report)) = chaos {
                    let report =
                        chaos::conclude(services, report, &clickhouse, &truth, &stats).await;
                    chaos::report::print(&report);
                }
                return Err(error);
            }
        };
    let cpu_end = CpuTicks::read(&services);
    let cpu_us_per_msg = cpu_start.us_per_message(&cpu_end, ticks_per_sec, expected.total());
    let end_to_end_secs = visible_at.duration_since(start).as_secs_f64();
    let dashboards_seen = dashboards.stop().await;
    let freshness = markers.stop().await;
    let samples = sampler.stop().await;
    let cache = match (cache_before, cache_counts(&api).await) {
        (Some(before), Some(after)) => Some((after.0 - before.0, after.1 - before.1)),
        _ => None,
    };

    let (raw_scans, raw_scan_error) = if args.no_baselines {
        (crate::measure::Latencies::default(), None)
    } else {
        raw_scans(&clickhouse, &config, &tenants).await
    };

    let chaos = match chaos {
        Some((services, report)) => {
            progress.println("chaos: counting raw rows per tenant, stopping the services");
            Some(chaos::conclude(services, report, &clickhouse, &truth, &stats).await)
        }
        None => None,
    };

    progress.println("verifying every card of every tenant against the ground truth");
    let mut verification =
        verify::verify(&api, &truth, &tenant_keys, config.start, config.end).await?;
    let backlog = match backlog {
        Some(backlog) => {
            verification.absorb(
                verify::verify(
                    &api,
                    &backlog.truth,
                    &backlog.tenant_keys,
                    backlog.config.start,
                    backlog.config.end,
                )
                .await?,
            );
            Some(backlog)
        }
        None => None,
    };
    // Read before the run's own ingest stops: the peak over the whole run.
    let peak_rss_mb: BTreeMap<String, f64> = services
        .iter()
        .filter_map(|s| Some((s.name.clone(), rss::peak_rss_mb(s.pid)?)))
        .collect();
    let (mut baselines, backlog) = match backlog {
        Some(backlog) => {
            backlog.ingest.stop().await?;
            (Some(backlog.baselines), Some(backlog.summary))
        }
        None => (None, None),
    };
    if let Some(error) = raw_scan_error {
        baselines.get_or_insert_default().errors.push(error);
    }

    let outcome = Outcome {
        stats,
        samples,
        freshness,
        dashboards: dashboards_seen,
        visible: expected,
        end_to_end_secs,
        cache,
        baselines,
        backlog,
        raw_scans,
        cpu_us_per_msg,
        peak_rss_mb,
        verification,
        chaos,
    };
    let mut report = Report::new(started_at, config, &truth);
    summary::fill(&mut report, &outcome, &args);
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    let truth_path = args.out_dir.join("truth.json");
    crate::measure::report::write_json(&truth_path, &truth)?;
    report.files.push(truth_path.display().to_string());
    summary::plots(&mut report, &outcome, &args.out_dir)?;
    report.finished_at = Utc::now();
    let report_path = args.out_dir.join("report.json");
    report.write(&report_path)?;
    summary::print(&report, &outcome);
    println!("report: {}", report_path.display());
    for file in &report.files {
        println!("        {file}");
    }
    if let Some(chaos) = &outcome.chaos
        && !chaos.verified()
    {
        bail!(
            "chaos: {} (see above and {})",
            chaos
                .stopped
                .clone()
                .or_else(|| chaos
                    .raw_counts
                    .as_ref()
                    .and_then(|r| r.mismatches.first().cloned()))
                .or_else(|| chaos.unclean_exits.first().cloned())
                .unwrap_or_else(|| "the raw rows could not be counted".into()),
            report_path.display()
        );
    }
    if report.verified != Some(true) {
        bail!(
            "verification failed: {} of {} cards differ from the ground truth (see above and {})",
            outcome.verification.mismatches,
            outcome.verification.cards_checked,
            report_path.display()
        );
    }
    Ok(())
}

/// Drives the workload to its end through the chosen target.
async fn drive(
    args: &RunArgs,
    mut workload: Workload,
    keys: ApiKeys,
    options: &DriveOptions,
    progress: &Progress,
    handed: &Arc<AtomicU64>,
    gate: &Arc<Gate>,
) -> anyhow::Result<(DriveStats, Workload)> {
    match args.target {
        Target::Kafka => {
            let (kafka, topics, options, progress, handed) = (
                args.kafka.clone(),
                args.topics.clone(),
                options.clone(),
                progress.clone(),
                handed.clone(),
            );
            tokio::task::spawn_blocking(move || {
                let stats = crate::drive::kafka::produce(
                    &mut chaos::Counted::new(&mut workload, handed),
                    &kafka,
                    &topics,
                    &options,
                    &progress,
                )?;
                Ok((stats, workload))
            })
            .await?
        }
        Target::Http | Target::Ws => {
            let mut target = EndpointTarget {
                batch_size: args.batch_size,
                concurrency: args.concurrency,
                ws_auth: args.ws_auth,
                gate: Some(gate.clone()),
                ..EndpointTarget::new(args.endpoint_url.clone(), keys)
            };
            if args.chaos.chaos {
                // The endpoint and the broker go away for seconds at a time: keep retrying
                // for a few minutes, every two seconds at most, and also retry a request cut
                // by the endpoint's restart (a clean stop answers what it read, so a request
                // cut off was never taken).
                target.retries = 100;
                target.max_retry_delay = Duration::from_secs(2);
                target.retry_cut_requests = true;
            }
            let mut source = chaos::Counted::new(&mut workload, handed.clone());
            let stats = if args.target == Target::Http {
                crate::drive::endpoint::post_batches(&mut source, &target, options, progress)
                    .await?
            } else {
                crate::drive::endpoint::websocket(&mut source, &target, options, progress).await?
            };
            Ok((stats, workload))
        }
    }
}

/// (hits, all lookups) of the query API's cache so far; `None` if its /metrics is unreadable.
/// A stale answer served while its replacement loads counts as a hit: the request did not
/// wait for ClickHouse.
async fn cache_counts(api: &QueryApi) -> Option<(f64, f64)> {
    let counts = api
        .counter_by("flowhouse_query_cache_requests_total", "result")
        .await
        .ok()?;
    let hits = counts
        .iter()
        .filter(|(result, _)| result == "hit" || result == "stale")
        .map(|(_, n)| n)
        .sum();
    let all = counts.iter().map(|(_, n)| n).sum();
    Some((hits, all))
}

/// The raw-scan baseline of the dashboard questions; a failure leaves it empty and says why
/// (reported with the other baselines' errors), it is not fatal.
async fn raw_scans(
    clickhouse: &clickhouse::Client,
    config: &crate::workload::WorkloadConfig,
    tenants: &[Tenant],
) -> (crate::measure::Latencies, Option<String>) {
    eprintln!("baseline: the dashboard questions as raw scans");
    // Three tenants, three times each: enough for a median, short even on a big run.
    let scanned: Vec<Tenant> = tenants.iter().take(3).copied().collect();
    match baselines::scan::raw_scans(clickhouse, &scanned, config.start, config.end, 3).await {
        Ok(latencies) => (latencies, None),
        Err(error) => (
            crate::measure::Latencies::default(),
            Some(format!("raw scans: {error:#}")),
        ),
    }
}
