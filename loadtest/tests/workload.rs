//! The generator against its specification: Prefect-shaped events that pass the shared
//! validation, only listed state transitions, determinism, and a ground truth equal to a recount
//! of the generated messages done here from scratch.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Duration, TimeZone, Utc};
use flowhouse_loadtest::truth::{
    Bucket, Filter, FlowDurations, Metrics, MetricsQuery, Point, Ranked, StateCount,
};
use flowhouse_loadtest::workload::{
    Message, Record, RunKind, State, StateType, Workload, WorkloadConfig,
};
use flowhouse_schema::Tenant;
use flowhouse_schema::event::{Event, Limits, label, parse_event};
use flowhouse_schema::log::parse_log;

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 1, 0, 0, 0).unwrap()
}

/// A small workload where everything happens often.
fn config(seed: u64) -> WorkloadConfig {
    WorkloadConfig {
        tenants: 3,
        runs: 150,
        max_tasks: 40,
        failure_rate: 0.2,
        crash_rate: 0.08,
        cancel_rate: 0.08,
        late_rate: 0.3,
        retry_rate: 0.5,
        task_retry_rate: 0.1,
        adhoc_rate: 0.15,
        duplicate_rate: 0.02,
        ..WorkloadConfig::new(seed, start(), start() + Duration::days(3))
    }
}

fn generate(config: WorkloadConfig) -> (Vec<Message>, flowhouse_loadtest::truth::GroundTruth) {
    let mut workload = Workload::new(config).unwrap();
    let messages: Vec<Message> = workload.by_ref().collect();
    (messages, workload.into_truth())
}

/// Every message, serialized as it travels.
fn wire(messages: &[Message]) -> Vec<(Tenant, bool, Vec<u8>)> {
    messages
        .iter()
        .map(|m| (m.tenant, m.is_event(), m.json()))
        .collect()
}

fn now(config: &WorkloadConfig) -> DateTime<Utc> {
    config.end
}

#[test]
fn every_message_passes_the_shared_validation() {
    let config = config(1);
    let (messages, _) = generate(config.clone());
    assert!(messages.len() > 5_000, "{} messages", messages.len());
    let limits = Limits::default();
    for (_, is_event, raw) in wire(&messages) {
        let text = String::from_utf8_lossy(&raw).to_string();
        if is_event {
            let event =
                parse_event(&raw, &limits, now(&config)).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert!(event.occurred >= config.start && event.occurred < config.end);
        } else {
            let log =
                parse_log(&raw, &limits, now(&config)).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert!(log.flow_run_id.is_some());
        }
    }
}

#[test]
fn messages_come_in_time_order_and_runs_are_streamed_not_held() {
    let config = WorkloadConfig {
        runs: 2_000,
        max_tasks: 10,
        ..config(2)
    };
    let mut workload = Workload::new(config).unwrap();
    let mut previous = None;
    let mut most_active = 0;
    let mut count = 0u64;
    for message in workload.by_ref() {
        let time = message.time();
        if let Some(previous) = previous {
            assert!(time >= previous, "{time} after {previous}");
        }
        previous = Some(time);
        count += 1;
    }
    // A second pass to watch how many runs are held at once.
    let mut workload2 = Workload::new(workload.config().clone()).unwrap();
    while workload2.next().is_some() {
        most_active = most_active.max(workload2.active_runs());
    }
    assert_eq!(workload.handed_out(), count);
    assert!(
        most_active < 100,
        "{most_active} runs held at once out of 2000"
    );
}

#[test]
fn the_same_seed_gives_the_same_stream_and_another_seed_another() {
    let digest = |seed| {
        let (messages, truth) = generate(config(seed));
        let bytes: Vec<u8> = wire(&messages)
            .into_iter()
            .flat_map(|(tenant, _, raw)| {
                let mut line = tenant.to_string().into_bytes();
                line.extend(raw);
                line.push(b'\n');
                line
            })
            .collect();
        (bytes, serde_json::to_string(&truth).unwrap())
    };
    let (a, truth_a) = digest(7);
    let (b, truth_b) = digest(7);
    let (c, truth_c) = digest(8);
    assert!(a == b, "same seed, different messages");
    assert_eq!(truth_a, truth_b);
    assert!(a != c, "different seeds, same messages");
    assert_ne!(truth_a, truth_c);
}

#[test]
fn the_workload_has_every_outcome_and_detour() {
    let (messages, truth) = generate(config(3));
    let mut names = BTreeSet::new();
    let mut levels = BTreeSet::new();
    let mut adhoc = 0;
    for message in &messages {
        match &message.record {
            Record::Event(event) => {
                names.insert(event.event.to_string());
                if event.event.starts_with("prefect.flow-run.")
                    && !event
                        .related
                        .iter()
                        .any(|r| label(r, "prefect.resource.role") == Some("deployment"))
                {
                    adhoc += 1;
                }
            }
            Record::Log(log) => {
                levels.insert(log.level);
            }
        }
    }
    for state in [
        "Scheduled",
        "Late",
        "Pending",
        "Running",
        "AwaitingRetry",
        "Retrying",
        "Completed",
        "Failed",
        "Crashed",
        "Cancelling",
        "Cancelled",
    ] {
        assert!(
            names.contains(&format!("prefect.flow-run.{state}")),
            "no flow run went {state}"
        );
    }
    for state in [
        "Pending",
        "Running",
        "AwaitingRetry",
        "Retrying",
        "Completed",
        "Failed",
        "Crashed",
        "Cancelled",
    ] {
        assert!(
            names.contains(&format!("prefect.task-run.{state}")),
            "no task run went {state}"
        );
    }
    assert_eq!(levels, BTreeSet::from([10, 20, 30, 40, 50]));
    assert!(adhoc > 0, "no ad-hoc runs");
    assert!(truth.tenants.iter().all(|t| t.duplicates_sent > 0));
    assert_eq!(truth.flow_runs(), 150);
}

/// The state of a run from one of its events, as `docs/metrics.md` defines it.
fn state_of(event: &Event<'_>) -> (String, String) {
    let name = event
        .event
        .rsplit_once('.')
        .map(|(_, name)| name.to_string())
        .unwrap();
    let ty = label(&event.resource, "prefect.state-type")
        .map(str::to_string)
        .unwrap_or_else(|| name.to_uppercase());
    (name, ty)
}

#[test]
fn state_machines_only_take_listed_transitions() {
    let config = config(4);
    let (messages, _) = generate(config.clone());
    let raws = wire(&messages);
    let limits = Limits::default();
    // resource id -> (last state, last event id, last occurred)
    let mut chains: HashMap<String, (State, uuid::Uuid, DateTime<Utc>)> = HashMap::new();
    let mut seen_ids = HashSet::new();
    let mut transitions = 0;
    let mut runs_with_tasks: HashMap<String, usize> = HashMap::new();
    for (_, is_event, raw) in &raws {
        if !is_event {
            continue;
        }
        let event = parse_event(raw, &limits, now(&config)).unwrap();
        if !seen_ids.insert(event.id) {
            continue; // a duplicate: same event again
        }
        let kind = if event.event.starts_with("prefect.flow-run.") {
            RunKind::FlowRun
        } else {
            RunKind::TaskRun
        };
        let resource = event.resource_id().to_string();
        assert!(resource.starts_with(kind.prefix()), "{resource}");
        let (name, ty) = state_of(&event);
        let state = State::from_name(&name).unwrap_or_else(|| panic!("unknown state {name}"));
        assert_eq!(ty, state.state_type().as_str());
        assert_eq!(label(&event.resource, "prefect.state-name"), Some(&*name));
        let payload: serde_json::Value = serde_json::from_str(&event.payload.0).unwrap();
        assert_eq!(payload["validated_state"]["type"], ty.as_str());
        assert_eq!(payload["validated_state"]["name"], name.as_str());
        assert_eq!(payload["intended"]["to"], ty.as_str());
        let scheduled = &payload["validated_state"]["state_details"]["scheduled_time"];
        assert_eq!(
            scheduled.is_string(),
            state.state_type() == StateType::Scheduled,
            "scheduled_time on {name}"
        );
        let previous = chains.get(&resource).copied();
        assert!(
            kind.allows(previous.map(|p| p.0), state),
            "{resource}: {:?} -> {state:?} is not a listed transition",
            previous.map(|p| p.0)
        );
        match previous {
            None => {
                assert!(payload["intended"]["from"].is_null());
                assert!(event.follows.is_none());
            }
            Some((from, id, at)) => {
                assert_eq!(payload["intended"]["from"], from.state_type().as_str());
                assert!(event.occurred > at, "{resource} goes back in time");
                let tight = event.occurred - at < Duration::minutes(5);
                assert_eq!(event.follows, tight.then_some(id), "{resource} follows");
            }
        }
        if kind == RunKind::TaskRun {
            let flow_run = event
                .related
                .iter()
                .find(|r| label(r, "prefect.resource.role") == Some("flow-run"))
                .and_then(|r| label(r, "prefect.resource.id"))
                .expect("a task run is related to its flow run");
            assert!(
                chains.contains_key(flow_run),
                "task run before its flow run"
            );
            if previous.is_none() {
                *runs_with_tasks.entry(flow_run.to_string()).or_default() += 1;
            }
        }
        for related in &event.related {
            let role = label(related, "prefect.resource.role").unwrap();
            let id = label(related, "prefect.resource.id").unwrap();
            let prefix = match role {
                "flow" => "prefect.flow.",
                "deployment" | "creator" => "prefect.deployment.",
                "work-queue" => "prefect.work-queue.",
                "work-pool" => "prefect.work-pool.",
                "tag" => "prefect.tag.",
                "flow-run" => "prefect.flow-run.",
                other => panic!("unexpected role {other}"),
            };
            assert!(id.starts_with(prefix), "{role}: {id}");
        }
        chains.insert(resource, (state, event.id, event.occurred));
        transitions += 1;
    }
    assert!(transitions > 2_000);
    // At most 40 task runs per attempt, at most 4 attempts (3 retries).
    let most_tasks = runs_with_tasks.values().max().copied().unwrap_or_default();
    assert!((2..=40 * 4).contains(&most_tasks), "{most_tasks}");
}

// ---------------------------------------------------------------------------------------------
// The recount: a plain walk over the serialized messages, sharing nothing with the generator.

/// (occurred, state name, state type, scheduled_time)
type StateFact = (DateTime<Utc>, String, String, Option<DateTime<Utc>>);

#[derive(Default)]
struct RunFacts {
    states: Vec<StateFact>,
    flows: BTreeMap<String, String>,
    deployments: BTreeMap<String, String>,
    work_pools: BTreeMap<String, String>,
    tags: BTreeSet<String>,
}

impl RunFacts {
    fn matches(&self, filter: &Filter) -> bool {
        filter
            .flow_id
            .as_ref()
            .is_none_or(|f| self.flows.contains_key(f))
            && filter
                .deployment_id
                .as_ref()
                .is_none_or(|d| self.deployments.contains_key(d))
            && filter
                .work_pool_id
                .as_ref()
                .is_none_or(|w| self.work_pools.contains_key(w))
            && filter.tag.as_ref().is_none_or(|t| self.tags.contains(t))
    }
}

#[derive(Default)]
struct Recount {
    flow_runs: BTreeMap<String, RunFacts>,
    task_runs: BTreeMap<String, RunFacts>,
    /// (timestamp, level, flow run resource id)
    logs: Vec<(DateTime<Utc>, i64, String)>,
    event_names: BTreeMap<String, u64>,
}

fn recount(raws: &[(Tenant, bool, Vec<u8>)], now: DateTime<Utc>) -> BTreeMap<Tenant, Recount> {
    let limits = Limits::default();
    let mut tenants: BTreeMap<Tenant, Recount> = BTreeMap::new();
    let mut seen = HashSet::new();
    for (tenant, is_event, raw) in raws {
        let recount = tenants.entry(*tenant).or_default();
        if !is_event {
            let log = parse_log(raw, &limits, now).unwrap();
            recount.logs.push((
                log.timestamp,
                log.level,
                format!("prefect.flow-run.{}", log.flow_run_id.unwrap()),
            ));
            continue;
        }
        let event = parse_event(raw, &limits, now).unwrap();
        if !seen.insert((*tenant, event.resource_id().to_string(), event.id)) {
            continue;
        }
        *recount
            .event_names
            .entry(event.event.to_string())
            .or_default() += 1;
        let runs = if event.event.starts_with("prefect.flow-run.")
            && event.resource_id().starts_with("prefect.flow-run.")
        {
            &mut recount.flow_runs
        } else if event.event.starts_with("prefect.task-run.")
            && event.resource_id().starts_with("prefect.task-run.")
        {
            &mut recount.task_runs
        } else {
            continue;
        };
        let facts = runs.entry(event.resource_id().to_string()).or_default();
        let (name, ty) = state_of(&event);
        let payload: serde_json::Value = serde_json::from_str(&event.payload.0).unwrap();
        let scheduled = payload["validated_state"]["state_details"]["scheduled_time"]
            .as_str()
            .map(|s| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc));
        facts.states.push((event.occurred, name, ty, scheduled));
        for related in &event.related {
            let id = label(related, "prefect.resource.id").unwrap();
            let name = label(related, "prefect.resource.name")
                .unwrap_or_default()
                .to_string();
            match label(related, "prefect.resource.role").unwrap() {
                "flow" => {
                    facts
                        .flows
                        .insert(id.strip_prefix("prefect.flow.").unwrap().into(), name);
                }
                "deployment" => {
                    facts
                        .deployments
                        .insert(id.strip_prefix("prefect.deployment.").unwrap().into(), name);
                }
                "work-pool" => {
                    facts
                        .work_pools
                        .insert(id.strip_prefix("prefect.work-pool.").unwrap().into(), name);
                }
                "tag" => {
                    facts
                        .tags
                        .insert(id.strip_prefix("prefect.tag.").unwrap().into());
                }
                _ => {}
            }
        }
    }
    tenants
}

const TERMINAL: [&str; 4] = ["COMPLETED", "FAILED", "CRASHED", "CANCELLED"];

fn recount_metrics(recount: &Recount, query: &MetricsQuery) -> Metrics {
    let bucket_len = match query.bucket {
        Bucket::Hour => Duration::hours(1),
        Bucket::Day => Duration::days(1),
    };
    let floor = |at: DateTime<Utc>| {
        let len = bucket_len.num_seconds();
        Utc.timestamp_opt(at.timestamp().div_euclid(len) * len, 0)
            .unwrap()
    };
    let mut buckets = Vec::new();
    let mut b = floor(query.since);
    while b < query.until {
        buckets.push(b);
        b += bucket_len;
    }
    let in_window = |at: DateTime<Utc>| query.since <= at && at < query.until;
    let series = |f: &dyn Fn(DateTime<Utc>) -> BTreeMap<String, u64>| {
        buckets
            .iter()
            .map(|&start| Point {
                start,
                value: f(start),
            })
            .collect::<Vec<_>>()
    };

    struct Run<'a> {
        facts: &'a RunFacts,
        final_state: Option<(String, String, DateTime<Utc>)>,
        start: Option<DateTime<Utc>>,
        expected: Option<DateTime<Utc>>,
        late_at: Option<DateTime<Utc>>,
    }
    let runs: Vec<Run<'_>> = recount
        .flow_runs
        .values()
        .filter(|facts| facts.matches(&query.filter))
        .map(|facts| {
            let mut final_state: Option<(String, String, DateTime<Utc>)> = None;
            for (at, name, ty, _) in &facts.states {
                if TERMINAL.contains(&ty.as_str())
                    && final_state.as_ref().is_none_or(|(_, _, end)| at >= end)
                {
                    final_state = Some((name.clone(), ty.clone(), *at));
                }
            }
            Run {
                facts,
                final_state,
                start: facts
                    .states
                    .iter()
                    .filter(|s| s.2 == "RUNNING")
                    .map(|s| s.0)
                    .min(),
                expected: facts
                    .states
                    .iter()
                    .filter(|s| s.2 == "SCHEDULED")
                    .filter_map(|s| s.3)
                    .min(),
                late_at: facts
                    .states
                    .iter()
                    .filter(|s| s.1 == "Late")
                    .map(|s| s.0)
                    .min(),
            }
        })
        .collect();

    let ended: Vec<&Run<'_>> = runs
        .iter()
        .filter(|r| r.final_state.as_ref().is_some_and(|f| in_window(f.2)))
        .collect();
    let mut by_state: BTreeMap<(String, String), u64> = BTreeMap::new();
    for run in &ended {
        let (name, ty, _) = run.final_state.as_ref().unwrap();
        *by_state.entry((name.clone(), ty.clone())).or_default() += 1;
    }
    let failed = |r: &Run<'_>| {
        let ty = &r.final_state.as_ref().unwrap().1;
        ty == "FAILED" || ty == "CRASHED"
    };
    let failures = ended.iter().filter(|r| failed(r)).count();
    let top = |pick: &dyn Fn(&RunFacts) -> &BTreeMap<String, String>| {
        let mut counts: BTreeMap<String, (String, u64)> = BTreeMap::new();
        for run in ended.iter().filter(|r| failed(r)) {
            for (id, name) in pick(run.facts) {
                counts.entry(id.clone()).or_insert((name.clone(), 0)).1 += 1;
            }
        }
        let mut ranked: Vec<Ranked> = counts
            .into_iter()
            .map(|(id, (name, failures))| Ranked { id, name, failures })
            .collect();
        ranked.sort_by(|a, b| b.failures.cmp(&a.failures).then(a.id.cmp(&b.id)));
        ranked.truncate(query.top_n);
        ranked
    };
    let mut durations: BTreeMap<String, (String, Vec<i64>)> = BTreeMap::new();
    for run in &ended {
        if let Some(start) = run.start {
            let (id, name) = run.facts.flows.iter().next().unwrap();
            let micros = (run.final_state.as_ref().unwrap().2 - start)
                .num_microseconds()
                .unwrap();
            durations
                .entry(id.clone())
                .or_insert((name.clone(), Vec::new()))
                .1
                .push(micros);
        }
    }
    let quantile = |sorted: &[i64], p: f64| {
        let rank = (p * sorted.len() as f64 - 1e-9).ceil() as usize;
        sorted[rank.max(1) - 1] as f64 / 1e6
    };
    let lateness: Vec<f64> = runs
        .iter()
        .filter(|r| r.start.is_some_and(in_window) && r.expected.is_some())
        .map(|r| {
            ((r.start.unwrap() - r.expected.unwrap())
                .num_microseconds()
                .unwrap()
                .max(0)) as f64
                / 1e6
        })
        .collect();

    // Task runs: distinct runs per terminal type entered in the window (and per bucket).
    let mut task_types: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    let mut task_buckets: BTreeMap<(DateTime<Utc>, String), BTreeSet<&str>> = BTreeMap::new();
    for (id, facts) in &recount.task_runs {
        if !facts.matches(&query.filter) {
            continue;
        }
        for (at, _, ty, _) in &facts.states {
            if TERMINAL.contains(&ty.as_str()) && in_window(*at) {
                task_types.entry(ty.clone()).or_default().insert(id);
                task_buckets
                    .entry((floor(*at), ty.clone()))
                    .or_default()
                    .insert(id);
            }
        }
    }
    let mut logs: BTreeMap<u8, u64> = BTreeMap::new();
    let mut log_buckets: BTreeMap<(DateTime<Utc>, u8), u64> = BTreeMap::new();
    for (at, level, run) in &recount.logs {
        let matches = recount
            .flow_runs
            .get(run)
            .is_some_and(|f| f.matches(&query.filter));
        if matches && in_window(*at) {
            *logs.entry(*level as u8).or_default() += 1;
            *log_buckets.entry((floor(*at), *level as u8)).or_default() += 1;
        }
    }
    let task_ty = |ty: &str| StateType::parse(ty).unwrap();

    Metrics {
        flow_runs_by_final_state: by_state
            .iter()
            .map(|((name, ty), runs)| StateCount {
                state_name: name.clone(),
                state_type: task_ty(ty),
                runs: *runs,
            })
            .collect(),
        flow_runs_total: ended.len() as u64,
        flow_runs_series: series(&|start| {
            let mut counts = BTreeMap::new();
            for run in &ended {
                let (name, _, end) = run.final_state.as_ref().unwrap();
                if floor(*end) == start {
                    *counts.entry(name.clone()).or_default() += 1;
                }
            }
            counts
        }),
        failure_rate: (!ended.is_empty()).then(|| failures as f64 / ended.len() as f64),
        late_runs: runs
            .iter()
            .filter(|r| r.late_at.is_some_and(in_window))
            .count() as u64,
        late_runs_series: buckets
            .iter()
            .map(|&start| Point {
                start,
                value: runs
                    .iter()
                    .filter(|r| r.late_at.is_some_and(|l| in_window(l) && floor(l) == start))
                    .count() as u64,
            })
            .collect(),
        mean_lateness_secs: (!lateness.is_empty())
            .then(|| lateness.iter().sum::<f64>() / lateness.len() as f64),
        durations: durations
            .into_iter()
            .map(|(flow_id, (flow_name, mut values))| {
                values.sort_unstable();
                FlowDurations {
                    flow_id,
                    flow_name,
                    runs: values.len() as u64,
                    p50_secs: quantile(&values, 0.5),
                    p95_secs: quantile(&values, 0.95),
                }
            })
            .collect(),
        top_failing_flows: top(&|f| &f.flows),
        top_failing_deployments: top(&|f| &f.deployments),
        top_failing_work_pools: top(&|f| &f.work_pools),
        task_runs_by_state_type: task_types
            .iter()
            .map(|(ty, runs)| (task_ty(ty), runs.len() as u64))
            .collect(),
        task_run_failures: task_types
            .iter()
            .filter(|(ty, _)| *ty == "FAILED" || *ty == "CRASHED")
            .map(|(_, runs)| runs.len() as u64)
            .sum(),
        task_runs_series: buckets
            .iter()
            .map(|&start| Point {
                start,
                value: task_buckets
                    .iter()
                    .filter(|((b, _), _)| *b == start)
                    .map(|((_, ty), runs)| (task_ty(ty), runs.len() as u64))
                    .collect(),
            })
            .collect(),
        logs_by_level: logs,
        logs_series: buckets
            .iter()
            .map(|&start| Point {
                start,
                value: log_buckets
                    .iter()
                    .filter(|((b, _), _)| *b == start)
                    .map(|((_, level), n)| (*level, *n))
                    .collect(),
            })
            .collect(),
    }
}

/// Both sides compute the floats from the same integers, but in different orders: take the
/// truth's value where the recount's is within a millionth of it.
fn reconcile_floats(actual: &Metrics, expected: &mut Metrics) {
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * a.abs().max(1.0);
    let pick = |a: Option<f64>, b: &mut Option<f64>| {
        if let (Some(a), Some(b)) = (a, b.as_mut())
            && close(a, *b)
        {
            *b = a;
        }
    };
    pick(actual.failure_rate, &mut expected.failure_rate);
    pick(actual.mean_lateness_secs, &mut expected.mean_lateness_secs);
    for (a, b) in actual.durations.iter().zip(expected.durations.iter_mut()) {
        for (x, y) in [(a.p50_secs, &mut b.p50_secs), (a.p95_secs, &mut b.p95_secs)] {
            if close(x, *y) {
                *y = x;
            }
        }
    }
}

fn queries(
    truth: &flowhouse_loadtest::truth::TenantTruth,
    config: &WorkloadConfig,
) -> Vec<MetricsQuery> {
    let mut queries = vec![
        MetricsQuery::new(config.start, config.end, Bucket::Hour),
        MetricsQuery::new(config.start, config.end, Bucket::Day),
        MetricsQuery::new(
            config.start + Duration::hours(20) + Duration::minutes(17),
            config.start + Duration::days(2) + Duration::minutes(3),
            Bucket::Hour,
        ),
        MetricsQuery::new(
            config.start - Duration::days(1),
            config.end + Duration::days(1),
            Bucket::Day,
        ),
    ];
    let busiest_flow = {
        let mut runs: BTreeMap<u16, usize> = BTreeMap::new();
        for run in &truth.flow_runs {
            *runs.entry(truth.dims[run.dims as usize].flow).or_default() += 1;
        }
        runs.into_iter().max_by_key(|(_, n)| *n).unwrap().0
    };
    let some_deployment = truth.dims.iter().find_map(|d| d.deployment).unwrap();
    let some_pool = truth.dims.iter().find_map(|d| d.work_pool).unwrap();
    let some_tag = truth.dims.iter().find_map(|d| d.tags.first()).unwrap();
    let filters = [
        Filter {
            flow_id: Some(truth.flows[busiest_flow as usize].id.to_string()),
            ..Filter::default()
        },
        Filter {
            deployment_id: Some(truth.deployments[some_deployment as usize].id.to_string()),
            ..Filter::default()
        },
        Filter {
            work_pool_id: Some(truth.work_pools[some_pool as usize].id.to_string()),
            ..Filter::default()
        },
        Filter {
            tag: Some(truth.tags[*some_tag as usize].clone()),
            ..Filter::default()
        },
        Filter {
            flow_id: Some(uuid::Uuid::nil().to_string()),
            ..Filter::default()
        },
    ];
    for filter in filters {
        queries.push(MetricsQuery {
            filter,
            top_n: 3,
            ..MetricsQuery::new(config.start, config.end, Bucket::Hour)
        });
    }
    queries
}

fn assert_truth_matches_recount(
    messages: &[Message],
    truth: &flowhouse_loadtest::truth::GroundTruth,
    config: &WorkloadConfig,
) {
    let raws = wire(messages);
    let recounts = recount(&raws, now(config));
    let mut compared = 0;
    for tenant_truth in &truth.tenants {
        let Some(recount) = recounts.get(&tenant_truth.tenant) else {
            assert_eq!(tenant_truth.events + tenant_truth.logs, 0);
            continue;
        };
        assert_eq!(tenant_truth.events_by_name, recount.event_names);
        assert_eq!(
            tenant_truth.events,
            recount.event_names.values().sum::<u64>()
        );
        assert_eq!(tenant_truth.logs, recount.logs.len() as u64);
        assert_eq!(tenant_truth.flow_runs.len(), recount.flow_runs.len());
        assert_eq!(
            tenant_truth
                .event_counts(
                    config.start,
                    config.end,
                    &Filter::default(),
                    truth.resolution_secs
                )
                .unwrap(),
            recount.event_names
        );
        for query in queries(tenant_truth, config) {
            let actual = truth.metrics(&tenant_truth.tenant, &query).unwrap();
            let mut expected = recount_metrics(recount, &query);
            reconcile_floats(&actual, &mut expected);
            assert_eq!(
                actual, expected,
                "tenant {} query {query:?}",
                tenant_truth.tenant
            );
            compared += 1;
        }
    }
    assert!(compared >= 9 * 2);
}

#[test]
fn the_ground_truth_equals_a_recount_of_the_messages() {
    let config = config(5);
    let (messages, truth) = generate(config.clone());
    // The recount must see something in each metric for the comparison to mean anything.
    let whole = truth
        .metrics(
            &truth.tenants[0].tenant,
            &MetricsQuery::new(config.start, config.end, Bucket::Hour),
        )
        .unwrap();
    assert!(whole.flow_runs_total > 10);
    assert!(whole.failure_rate.is_some_and(|r| r > 0.0 && r < 1.0));
    assert!(whole.late_runs > 0 && whole.mean_lateness_secs.is_some());
    assert!(!whole.durations.is_empty() && !whole.top_failing_flows.is_empty());
    assert!(whole.task_run_failures > 0 && whole.logs_by_level.len() == 5);
    assert_truth_matches_recount(&messages, &truth, &config);
}

#[test]
fn a_stream_cut_short_has_the_truth_of_what_was_handed_out() {
    let config = config(6);
    let mut workload = Workload::new(config.clone()).unwrap();
    let messages: Vec<Message> = workload.by_ref().take(4_321).collect();
    assert_eq!(workload.handed_out(), 4_321);
    let truth = workload.truth().clone();
    assert_eq!(
        truth.events()
            + truth.logs()
            + truth.tenants.iter().map(|t| t.duplicates_sent).sum::<u64>(),
        4_321
    );
    assert_truth_matches_recount(&messages, &truth, &config);
}

#[test]
fn the_truth_refuses_windows_it_cannot_answer_exactly_and_serializes() {
    let config = config(9);
    let (_, truth) = generate(config.clone());
    let tenant = truth.tenants[0].tenant;
    let unaligned = MetricsQuery::new(
        config.start + Duration::seconds(30),
        config.end,
        Bucket::Hour,
    );
    assert!(truth.metrics(&tenant, &unaligned).is_err());
    let text = serde_json::to_string(&truth).unwrap();
    let back: flowhouse_loadtest::truth::GroundTruth = serde_json::from_str(&text).unwrap();
    let query = MetricsQuery::new(config.start, config.end, Bucket::Day);
    assert_eq!(
        back.metrics(&tenant, &query).unwrap(),
        truth.metrics(&tenant, &query).unwrap()
    );
    // Compact: far smaller than the messages it describes.
    let messages: usize = Workload::new(config).unwrap().map(|m| m.json().len()).sum();
    assert!(text.len() * 5 < messages, "{} vs {messages}", text.len());
}

#[test]
fn duplicates_repeat_an_event_exactly_and_count_once() {
    let config = WorkloadConfig {
        duplicate_rate: 0.2,
        ..config(10)
    };
    let (messages, truth) = generate(config);
    let mut duplicates = 0;
    for pair in messages.windows(2) {
        if pair[1].duplicate {
            duplicates += 1;
            assert!(!pair[0].duplicate);
            assert_eq!(pair[0].json(), pair[1].json());
        }
    }
    assert!(duplicates > 100);
    let sent: u64 = truth.tenants.iter().map(|t| t.duplicates_sent).sum();
    assert_eq!(sent, duplicates);
    assert_eq!(truth.events() + truth.logs() + sent, messages.len() as u64);
}

#[test]
fn the_size_estimate_is_close() {
    let config = WorkloadConfig {
        runs: 600,
        ..config(11)
    };
    let per_run = flowhouse_loadtest::workload::messages_per_run(&config);
    let actual = Workload::new(config).unwrap().count() as f64 / 600.0;
    assert!(
        (per_run / actual - 1.0).abs() < 0.25,
        "estimated {per_run:.1} per run, got {actual:.1}"
    );
}
