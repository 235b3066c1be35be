//! `flowhouse loadtest`: a realistic orchestration workload with its ground truth
//! ([`workload`], [`truth`]), drivers that push it into Flowhouse ([`drive`]), and the
//! measurement plumbing of the reports ([`measure`]).
//!
//! - `flowhouse loadtest generate` writes a workload as JSON lines, and its ground truth.
//! - `flowhouse loadtest drive --target kafka|http|ws` sends it, at `--rate` or as fast as it
//!   goes, the whole workload or `--max-messages` of it or for `--duration`, and writes a report
//!   with the produce rate.
//! - `flowhouse loadtest run` is the whole job ([`run`]): drive the workload with dashboards
//!   refreshing at the same time, wait until everything is visible in ClickHouse, measure the
//!   baselines, verify every metric against the ground truth, and report.

pub mod drive;
pub mod measure;
pub mod run;
pub mod truth;
pub mod workload;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::{DateTime, DurationRound as _, Utc};
use flowhouse_schema::contract::TopicArgs;
use flowhouse_service::kafka::KafkaArgs;
use uuid::Uuid;

use drive::endpoint::{ApiKeys, EndpointTarget, WsAuth};
use drive::{DriveOptions, DriveStats};
use measure::{Progress, Report, plot};
use workload::{LevelMix, Workload, WorkloadConfig};

/// Flags of `flowhouse loadtest`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand, Clone, Debug)]
pub enum Command {
    /// Generate a workload and write it as JSON lines, with its ground truth; sends nothing.
    Generate(Box<GenerateArgs>),
    /// Send a workload into Flowhouse (Kafka, HTTP or websocket) and report the produce rate.
    Drive(Box<DriveArgs>),
    /// The end-to-end run: drive, dashboards, freshness, baselines, verification, report.
    Run(Box<run::RunArgs>),
}

/// What the workload is made of.
#[derive(clap::Args, Clone, Debug)]
pub struct WorkloadArgs {
    /// Same seed, same workload, byte for byte.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Tenants (workspaces) in all.
    #[arg(long, default_value_t = 4)]
    pub tenants: u32,
    #[arg(long, default_value_t = 2)]
    pub workspaces_per_account: u32,
    #[arg(long, default_value_t = 12)]
    pub flows: u32,
    #[arg(long, default_value_t = 3)]
    pub work_pools: u32,
    #[arg(long, default_value_t = 8)]
    pub tags: u32,
    /// Flow runs in all [default: as many as --events needs, else 200].
    #[arg(long)]
    pub runs: Option<u64>,
    /// Size the workload to about this many messages (events and log lines), over the whole
    /// window.
    #[arg(long)]
    pub events: Option<u64>,
    /// Stop after exactly this many messages (the rest of the workload is not generated: the
    /// window is then covered only up to that point).
    #[arg(long)]
    pub max_messages: Option<u64>,
    /// The runs start within this window, ending now (or at --until), rounded down to
    /// --truth-resolution.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pub window: Duration,
    /// End of the window, RFC 3339 [default: now].
    #[arg(long)]
    pub until: Option<DateTime<Utc>>,
    #[arg(long, default_value_t = 1)]
    pub min_tasks: u32,
    #[arg(long, default_value_t = 200)]
    pub max_tasks: u32,
    #[arg(long, default_value_t = 0)]
    pub min_logs_per_task: u32,
    #[arg(long, default_value_t = 4)]
    pub max_logs_per_task: u32,
    #[arg(long, default_value_t = 0.08)]
    pub failure_rate: f64,
    #[arg(long, default_value_t = 0.02)]
    pub crash_rate: f64,
    #[arg(long, default_value_t = 0.02)]
    pub cancel_rate: f64,
    #[arg(long, default_value_t = 0.10)]
    pub late_rate: f64,
    #[arg(long, default_value_t = 0.15)]
    pub retry_rate: f64,
    #[arg(long, default_value_t = 0.03)]
    pub task_retry_rate: f64,
    #[arg(long, default_value_t = 0.10)]
    pub adhoc_rate: f64,
    /// Relative weights of DEBUG,INFO,WARNING,ERROR,CRITICAL task log lines.
    #[arg(long, value_delimiter = ',', default_value = "15,65,12,6,2")]
    pub level_mix: Vec<f64>,
    /// Share of events sent twice (same id), as retrying clients do.
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_rate: f64,
    /// Seconds per slot of the ground truth's counts (a divisor of 3600).
    #[arg(long, default_value_t = 60)]
    pub truth_resolution: u32,
}

impl WorkloadArgs {
    /// The configuration over `[start, end)`, sized by --runs or --events.
    fn aligned(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        let resolution = chrono::Duration::seconds(self.truth_resolution.max(1).into());
        at.duration_trunc(resolution).unwrap_or(at)
    }

    pub fn config(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> anyhow::Result<WorkloadConfig> {
        let mut config = WorkloadConfig {
            tenants: self.tenants,
            workspaces_per_account: self.workspaces_per_account,
            flows_per_tenant: self.flows,
            work_pools_per_tenant: self.work_pools,
            tags_per_tenant: self.tags,
            min_tasks: self.min_tasks,
            max_tasks: self.max_tasks,
            min_logs_per_task: self.min_logs_per_task,
            max_logs_per_task: self.max_logs_per_task,
            level_mix: match self.level_mix[..] {
                [debug, info, warning, error, critical] => LevelMix {
                    debug,
                    info,
                    warning,
                    error,
                    critical,
                },
                _ => bail!("--level-mix takes five weights: DEBUG,INFO,WARNING,ERROR,CRITICAL"),
            },
            failure_rate: self.failure_rate,
            crash_rate: self.crash_rate,
            cancel_rate: self.cancel_rate,
            late_rate: self.late_rate,
            retry_rate: self.retry_rate,
            task_retry_rate: self.task_retry_rate,
            adhoc_rate: self.adhoc_rate,
            duplicate_rate: self.duplicate_rate,
            truth_resolution_secs: self.truth_resolution,
            ..WorkloadConfig::new(self.seed, start, end)
        };
        config.validate()?;
        config.runs = match (self.runs, self.events) {
            (Some(runs), _) => runs,
            (None, Some(events)) => workload::runs_for_messages(&config, events),
            (None, None) => 200,
        };
        Ok(config)
    }

    /// The window ending at --until or now, rounded down to the ground truth's resolution (so
    /// that the whole window is one the truth answers exactly).
    pub fn window_config(&self) -> anyhow::Result<WorkloadConfig> {
        let end = self.aligned(self.until.unwrap_or_else(Utc::now));
        let window = chrono::Duration::from_std(self.window).context("window too long")?;
        self.config(end - window, end)
    }
}

#[derive(clap::Args, Clone, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// Where to write the messages, one JSON object per line: `{"account_id", "workspace_id",
    /// "kind": "event"|"log", "message"}`; `-` for stdout.
    #[arg(long, default_value = "-")]
    pub out: PathBuf,
    /// Where to write the ground truth (JSON).
    #[arg(long)]
    pub truth: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// Straight into Kafka, per the message contract.
    Kafka,
    /// HTTP batches to the ingestion endpoint.
    Http,
    /// Events over the endpoint's websocket, logs over HTTP.
    Ws,
}

#[derive(clap::Args, Clone, Debug)]
pub struct DriveArgs {
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[arg(long, value_enum, default_value = "kafka")]
    pub target: Target,
    /// Messages per second, evenly paced [default: as fast as it goes].
    #[arg(long)]
    pub rate: Option<f64>,
    /// Stop after this long (e.g. `10m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Generate the runs over [now, now + --duration) and send each message at its time.
    #[arg(long, requires = "duration")]
    pub realtime: bool,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    /// The ingestion endpoint (for --target http or ws).
    #[arg(
        long,
        env = "FLOWHOUSE_ENDPOINT_URL",
        default_value = "http://127.0.0.1:4200"
    )]
    pub endpoint_url: String,
    /// One API key for every tenant (http, ws).
    #[arg(long, env = "FLOWHOUSE_API_KEY")]
    pub api_key: Option<String>,
    /// Without --api-key: create a write key per generated account in this keys file (the one
    /// the endpoint reads).
    #[arg(long)]
    pub mint_keys: Option<PathBuf>,
    /// Messages per POST; for ws, events per flush.
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
    /// POSTs in flight.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    #[arg(long, value_enum, default_value = "header")]
    pub ws_auth: WsAuth,
    /// Folder for report.json, truth.json and the plots.
    #[arg(long, default_value = "loadtest-results")]
    pub out_dir: PathBuf,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Generate(args) => tokio::task::spawn_blocking(move || generate(&args)).await?,
        Command::Drive(args) => drive(*args).await,
        Command::Run(args) => run::run(*args).await,
    }
}

fn generate(args: &GenerateArgs) -> anyhow::Result<()> {
    let config = args.workload.window_config()?;
    let mut workload = Workload::new(config)?;
    let limit = args.workload.max_messages.unwrap_or(u64::MAX);
    let out: Box<dyn std::io::Write> = if args.out.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            std::fs::File::create(&args.out)
                .with_context(|| format!("cannot write {}", args.out.display()))?,
        )
    };
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    let started = Instant::now();
    let mut bytes = 0u64;
    for message in workload.by_ref().take(limit as usize) {
        let json = message.json();
        bytes += json.len() as u64;
        write!(
            out,
            "{{\"account_id\":\"{}\",\"workspace_id\":\"{}\",\"kind\":\"{}\",\"message\":",
            message.tenant.account_id,
            message.tenant.workspace_id,
            if message.is_event() { "event" } else { "log" }
        )?;
        out.write_all(&json)?;
        out.write_all(b"}\n")?;
    }
    out.flush()?;
    let elapsed = started.elapsed().as_secs_f64();
    let truth = workload.into_truth();
    if let Some(path) = &args.truth {
        measure::report::write_json(path, &truth)?;
    }
    let messages = truth.events()
        + truth.logs()
        + truth.tenants.iter().map(|t| t.duplicates_sent).sum::<u64>();
    eprintln!(
        "generated {messages} messages ({} events, {} log lines, {} flow runs, {} tenants, {:.1} MB) in {elapsed:.1} s: {:.0} messages/s",
        truth.events(),
        truth.logs(),
        truth.flow_runs(),
        truth.tenants.len(),
        bytes as f64 / 1e6,
        messages as f64 / elapsed.max(1e-9),
    );
    Ok(())
}

/// One key per account of the workload, with `scopes`, added to the keys file the services read.
pub fn mint_keys(
    path: &Path,
    tenants: &[flowhouse_schema::Tenant],
    scopes: &[flowhouse_keys::Scope],
) -> anyhow::Result<ApiKeys> {
    let mut accounts: BTreeMap<Uuid, Vec<Uuid>> = BTreeMap::new();
    for tenant in tenants {
        accounts
            .entry(tenant.account_id)
            .or_default()
            .push(tenant.workspace_id);
    }
    let mut keys = std::collections::HashMap::new();
    for (account, workspaces) in accounts {
        let key = flowhouse_keys::cli::create(
            path,
            account,
            workspaces,
            scopes.to_vec(),
            Some("loadtest".into()),
        )?;
        keys.insert(account, key);
    }
    Ok(ApiKeys::PerAccount(keys))
}

async fn drive(args: DriveArgs) -> anyhow::Result<()> {
    let started_at = Utc::now();
    let config = if args.realtime {
        let start = args.workload.aligned(started_at);
        let duration = args.duration.context("--realtime needs --duration")?;
        args.workload
            .config(start, start + chrono::Duration::from_std(duration)?)?
    } else {
        args.workload.window_config()?
    };
    let mut workload = Workload::new(config.clone())?;
    let options = DriveOptions {
        rate: args.rate,
        max_messages: args.workload.max_messages,
        duration: args.duration,
        realtime: args.realtime,
    };
    let progress = Progress::new(!args.quiet);
    progress.println(&format!(
        "flowhouse loadtest: {} tenants, {} flow runs over {} .. {}, target {:?}{}",
        config.tenants,
        config.runs,
        config.start.format("%Y-%m-%d %H:%M:%S"),
        config.end.format("%Y-%m-%d %H:%M:%S"),
        args.target,
        args.rate
            .map(|r| format!(" at {r:.0} messages/s"))
            .unwrap_or_default()
    ));

    let (stats, workload): (DriveStats, Workload) = match args.target {
        Target::Kafka => {
            flowhouse_service::kafka::ensure_topics(&args.kafka, &args.topics.specs()).await?;
            let (kafka, topics, progress) =
                (args.kafka.clone(), args.topics.clone(), progress.clone());
            let options = options.clone();
            tokio::task::spawn_blocking(move || {
                let stats =
                    drive::kafka::produce(&mut workload, &kafka, &topics, &options, &progress)?;
                Ok::<_, anyhow::Error>((stats, workload))
            })
            .await??
        }
        Target::Http | Target::Ws => {
            let keys = match (&args.api_key, &args.mint_keys) {
                (Some(key), _) => ApiKeys::One(key.clone()),
                (None, Some(path)) => {
                    mint_keys(path, &workload.tenants(), &[flowhouse_keys::Scope::Write])?
                }
                (None, None) => bail!("--target http/ws needs --api-key or --mint-keys"),
            };
            let target = EndpointTarget {
                batch_size: args.batch_size,
                concurrency: args.concurrency,
                ws_auth: args.ws_auth,
                ..EndpointTarget::new(args.endpoint_url.clone(), keys)
            };
            let stats = if args.target == Target::Http {
                drive::endpoint::post_batches(&mut workload, &target, &options, &progress).await?
            } else {
                drive::endpoint::websocket(&mut workload, &target, &options, &progress).await?
            };
            (stats, workload)
        }
    };

    let truth = workload.into_truth();
    let mut report = Report::new(started_at, config, &truth);
    report.series.produced_per_sec = stats.acked_per_sec.clone();
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    let truth_path = args.out_dir.join("truth.json");
    measure::report::write_json(&truth_path, &truth)?;
    report.files.push(truth_path.display().to_string());
    let throughput = args.out_dir.join("throughput.png");
    plot::throughput_chart(
        &throughput,
        &[("acknowledged by the target", &stats.acked_per_sec)],
    )?;
    report.files.push(throughput.display().to_string());
    print_stats(&stats);
    report.produce = Some(stats);
    report.finished_at = Utc::now();
    let report_path = args.out_dir.join("report.json");
    report.write(&report_path)?;
    println!("report: {}", report_path.display());
    let failed = report.produce.as_ref().map_or(0, |s| s.messages_failed);
    if failed > 0 {
        bail!("{failed} messages were not acknowledged; see the errors above");
    }
    Ok(())
}

fn print_stats(stats: &DriveStats) {
    println!(
        "sent {} messages ({} events, {} log lines, {:.1} MB) to {} in {:.1} s: {:.0} messages/s sent, {:.0} messages/s acknowledged",
        stats.messages_sent,
        stats.events_sent,
        stats.logs_sent,
        stats.bytes_sent as f64 / 1e6,
        stats.target,
        stats.elapsed_secs,
        stats.send_rate,
        stats.ack_rate,
    );
    println!(
        "acknowledged {}, failed {}",
        stats.messages_acked, stats.messages_failed
    );
    for (route, latency) in &stats.latency {
        println!(
            "  {route}: p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
            latency.p50_ms, latency.p95_ms, latency.p99_ms, latency.max_ms, latency.count
        );
    }
    for (error, count) in &stats.errors {
        println!("  error x{count}: {error}");
    }
}
