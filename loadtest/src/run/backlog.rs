//! The backlog phase of `--backlog N`, before the live phase: about N messages of a workload of
//! their own (the next seed: other tenants) are written straight into the topics while ingest
//! is stopped, then ingest is started and timed until all of it is visible. The baselines are
//! measured on that same backlog meanwhile, before ingest starts, so that nothing else runs:
//! - the broker reads exactly the backlog's offsets and discards them;
//! - the engine inserts the same rows, materialized views attached.
//!
//! Its tenants are verified with the live phase's, against their own ground truth.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::bail;
use flowhouse_keys::Scope;
use flowhouse_schema::Tenant;

use super::RunArgs;
use super::baselines::{self, Baselines, Rate};
use super::cpu::{self, CpuTicks};
use super::ingest::Ingest;
use super::rss::Service;
use super::visibility::{self, Counter, Visible};
use crate::drive::DriveOptions;
use crate::measure::Progress;
use crate::measure::report::BacklogSummary;
use crate::truth::GroundTruth;
use crate::workload::{Workload, WorkloadConfig};

/// What the phase leaves for the rest of the run.
pub struct Backlog {
    pub summary: BacklogSummary,
    pub baselines: Baselines,
    pub config: WorkloadConfig,
    pub truth: GroundTruth,
    pub tenant_keys: Vec<(Tenant, String)>,
    /// Running from here on, for the live phase too.
    pub ingest: Ingest,
}

/// The backlog's workload: the run's shape, sized to `--backlog`, on the next seed.
fn config(args: &RunArgs) -> anyhow::Result<WorkloadConfig> {
    let mut workload = args.workload.clone();
    workload.seed = workload.seed.wrapping_add(1);
    workload.events = Some(args.backlog);
    workload.max_messages = None;
    workload.runs = None;
    workload.window_config()
}

pub async fn run(
    args: &RunArgs,
    clickhouse: &clickhouse::Client,
    progress: &Progress,
) -> anyhow::Result<Backlog> {
    let config = config(args)?;
    let mut workload = Workload::new(config.clone())?;
    let tenants = workload.tenants();
    let keys = crate::mint_keys(&args.keys_file, &tenants, &[Scope::Write, Scope::Read])?;
    let tenant_keys: Vec<(Tenant, String)> = tenants
        .iter()
        .filter_map(|t| keys.key(t).map(|k| (*t, k.to_string())))
        .collect();

    progress.println(&format!(
        "backlog: writing about {} messages into the topics, ingest stopped",
        args.backlog
    ));
    let topics = [
        args.topics.events_topic.clone(),
        args.topics.logs_topic.clone(),
    ];
    let before = watermarks(args, &topics).await?;
    let (kafka, topic_args, progress_bar) =
        (args.kafka.clone(), args.topics.clone(), progress.clone());
    let (stats, workload) = tokio::task::spawn_blocking(move || {
        let stats = crate::drive::kafka::produce(
            &mut workload,
            &kafka,
            &topic_args,
            &DriveOptions::default(),
            &progress_bar,
        );
        (stats, workload)
    })
    .await?;
    let stats = stats?;
    if stats.messages_failed > 0 {
        bail!(
            "backlog: {} of {} messages were not acknowledged: {:?}",
            stats.messages_failed,
            stats.messages_sent,
            stats.errors
        );
    }
    let truth = workload.into_truth();
    let after = watermarks(args, &topics).await?;

    let mut baselines = Baselines::default();
    if !args.no_baselines {
        progress.println("baseline: the broker reads the backlog and discards it");
        let kafka = args.kafka.clone();
        match tokio::task::spawn_blocking(move || baselines::broker::drain(&kafka, &before, &after))
            .await?
        {
            Ok(rate) => baselines.broker_drain = Some(rate),
            Err(error) => baselines.errors.push(format!("broker drain: {error:#}")),
        }
        progress.println("baseline: the engine inserts the same rows, materialized views on");
        match baselines::insert::raw_insert(clickhouse, config.clone(), stats.messages_sent).await {
            Ok(rate) => baselines.raw_insert = Some(rate),
            Err(error) => baselines.errors.push(format!("raw insert: {error:#}")),
        }
    }

    progress.println("backlog: starting ingest");
    let ticks_per_sec = cpu::ticks_per_sec();
    let started = Instant::now();
    let (mut ingest, admin) = Ingest::start(&args.out_dir)?;
    let service = [Service {
        name: "ingest".into(),
        pid: ingest.pid,
    }];
    let cpu_start = CpuTicks::read(&service);
    ingest.wait_ready(&admin, &args.out_dir).await?;
    let expected = Visible {
        events: truth.events(),
        logs: truth.logs(),
    };
    let counter = Counter::new(clickhouse.clone(), &tenants);
    let visible_at =
        visibility::wait_all_visible(&counter, expected, args.visible_timeout, progress).await?;
    let cpu_end = CpuTicks::read(&service);
    let drain = Rate::new(
        expected.total(),
        visible_at.duration_since(started).as_secs_f64(),
    );
    let cpu_us_per_msg: BTreeMap<String, f64> =
        cpu_start.us_per_message(&cpu_end, ticks_per_sec, expected.total());
    progress.println(&format!(
        "backlog: {} messages drained in {:.1} s",
        drain.items, drain.secs
    ));
    Ok(Backlog {
        summary: BacklogSummary {
            messages: expected.total(),
            drain,
            cpu_us_per_msg,
        },
        baselines,
        config,
        truth,
        tenant_keys,
        ingest,
    })
}

async fn watermarks(
    args: &RunArgs,
    topics: &[String; 2],
) -> anyhow::Result<baselines::broker::Offsets> {
    let (kafka, topics) = (args.kafka.clone(), topics.clone());
    tokio::task::spawn_blocking(move || {
        baselines::broker::watermarks(&kafka, &[topics[0].as_str(), topics[1].as_str()])
    })
    .await?
}
