//! The figures compared: each computed from Prefect's own API and read from Flowhouse's, and the
//! wait until they agree.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::flowhouse::Flowhouse;
use crate::prefect::Prefect;
use crate::rfc3339;

/// How long Prefect and Flowhouse may take to agree once Prefect is quiet.
const AGREE_WITHIN: Duration = Duration::from_secs(90);
/// How long Prefect's answers must stay unchanged to count as quiet.
const QUIET_FOR: Duration = Duration::from_secs(3);
const TERMINAL: [&str; 4] = ["COMPLETED", "FAILED", "CRASHED", "CANCELLED"];

/// What both sides answer, normalized for comparison.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Answers {
    pub event_ids: BTreeSet<String>,
    /// (id, message, level)
    pub logs: BTreeSet<(String, String, i64)>,
    pub history: History,
    /// (state type, state name) → runs whose end time is in the window.
    pub runs_by_final_state: BTreeMap<(String, String), u64>,
    /// (failed or crashed, terminal), and the rate.
    pub failures: (u64, u64, Option<String>),
    /// By flow, deployment, work pool: (id, failures), most first.
    pub top_failing: [Vec<(String, u64)>; 3],
    pub task_runs_by_state_type: BTreeMap<String, u64>,
    pub logs_by_level: BTreeMap<u64, u64>,
}

/// The window every check uses.
#[derive(Clone, Copy)]
pub struct Window {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub interval_seconds: u64,
}

/// Per interval start: (state type, state name, count).
pub type History = Vec<(String, BTreeSet<(String, String, u64)>)>;

pub fn history_of(answer: &Value) -> History {
    answer
        .as_array()
        .expect("a list of intervals")
        .iter()
        .map(|interval| {
            let start: DateTime<Utc> = interval["interval_start"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            let states = interval["states"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    (
                        s["state_type"].as_str().unwrap().to_string(),
                        s["state_name"].as_str().unwrap().to_string(),
                        s["count_runs"].as_u64().unwrap(),
                    )
                })
                .collect();
            (rfc3339(start), states)
        })
        .collect()
}

pub fn history_request(window: Window) -> Value {
    json!({"history_start": rfc3339(window.since), "history_end": rfc3339(window.until),
           "history_interval_seconds": window.interval_seconds})
}

pub fn rate(failures: u64, total: u64) -> Option<String> {
    (total > 0).then(|| format!("{:.9}", failures as f64 / total as f64))
}

pub fn in_window(at: &Value, window: Window) -> bool {
    at.as_str()
        .and_then(|t| t.parse::<DateTime<Utc>>().ok())
        .is_some_and(|t| t >= window.since && t < window.until)
}

/// The answers computed from Prefect's own API.
pub async fn prefect_answers(prefect: &Prefect, window: Window) -> Answers {
    let logs = prefect.all("/logs/filter", json!({})).await;
    let flow_runs = prefect.all("/flow_runs/filter", json!({})).await;
    // Not the task runs that stand for a subflow call in its parent: Prefect sets their states
    // itself and emits no events for them (the subflow's own flow-run events are there).
    let task_runs = prefect
        .all(
            "/task_runs/filter",
            json!({"task_runs": {"subflow_runs": {"exists_": false}}}),
        )
        .await;
    let history = prefect
        .post("/flow_runs/history", history_request(window))
        .await;

    let ended: Vec<&Value> = flow_runs
        .iter()
        .filter(|r| {
            TERMINAL.contains(&r["state_type"].as_str().unwrap_or_default())
                && in_window(&r["end_time"], window)
        })
        .collect();
    let mut runs_by_final_state = BTreeMap::new();
    for run in &ended {
        let key = (
            run["state_type"].as_str().unwrap().to_string(),
            run["state_name"].as_str().unwrap().to_string(),
        );
        *runs_by_final_state.entry(key).or_insert(0) += 1;
    }
    let failing: Vec<&&Value> = ended
        .iter()
        .filter(|r| matches!(r["state_type"].as_str(), Some("FAILED" | "CRASHED")))
        .collect();
    let top = |field: &str| {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for run in &failing {
            if let Some(id) = run[field].as_str() {
                *counts.entry(id.to_string()).or_insert(0) += 1;
            }
        }
        let mut top: Vec<(String, u64)> = counts.into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        top
    };
    let mut task_runs_by_state_type = BTreeMap::new();
    for run in &task_runs {
        let state_type = run["state_type"].as_str().unwrap_or_default();
        if TERMINAL.contains(&state_type) && in_window(&run["end_time"], window) {
            *task_runs_by_state_type
                .entry(state_type.to_string())
                .or_insert(0) += 1;
        }
    }
    let mut logs_by_level = BTreeMap::new();
    for log in &logs {
        if in_window(&log["timestamp"], window) {
            *logs_by_level
                .entry(log["level"].as_u64().unwrap())
                .or_insert(0) += 1;
        }
    }
    Answers {
        event_ids: prefect.event_ids(window.since, window.until).await,
        logs: logs.iter().map(log_key).collect(),
        history: history_of(&history),
        failures: (
            failing.len() as u64,
            ended.len() as u64,
            rate(failing.len() as u64, ended.len() as u64),
        ),
        runs_by_final_state,
        top_failing: [top("flow_id"), top("deployment_id"), top("work_pool_id")],
        task_runs_by_state_type,
        logs_by_level,
    }
}

pub fn log_key(log: &Value) -> (String, String, i64) {
    (
        log["id"].as_str().unwrap().to_string(),
        log["message"].as_str().unwrap().to_string(),
        log["level"].as_i64().unwrap(),
    )
}

/// The same answers from Flowhouse's API, for `tenant`.
pub async fn flowhouse_answers(
    flowhouse: &Flowhouse,
    tenant: usize,
    window: Window,
) -> anyhow::Result<Answers> {
    let query = vec![
        ("since", rfc3339(window.since)),
        ("until", rfc3339(window.until)),
    ];
    let flow_runs = flowhouse.metric(tenant, "flow-runs", &query).await?;
    let mut top_failing: [Vec<(String, u64)>; 3] = Default::default();
    for (slot, by) in top_failing
        .iter_mut()
        .zip(["flow", "deployment", "work-pool"])
    {
        let mut q = query.clone();
        q.extend([("by", by.to_string()), ("limit", "100".to_string())]);
        let answer = flowhouse.metric(tenant, "top-failing", &q).await?;
        *slot = answer["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["id"].as_str().unwrap().to_string(),
                    i["failures"].as_u64().unwrap(),
                )
            })
            .collect();
    }
    let task_runs = flowhouse.metric(tenant, "task-runs", &query).await?;
    let logs_metric = flowhouse.metric(tenant, "logs", &query).await?;
    let history = flowhouse
        .post(tenant, "/flow_runs/history", history_request(window))
        .await?;
    let (failures, total) = (
        flow_runs["failures"].as_u64().unwrap(),
        flow_runs["total"].as_u64().unwrap(),
    );
    assert_eq!(
        flow_runs["failure_rate"]
            .as_f64()
            .map(|r| format!("{r:.9}")),
        rate(failures, total),
        "the failure rate is failures over terminal runs"
    );
    Ok(Answers {
        event_ids: flowhouse
            .event_ids(tenant, window.since, window.until)
            .await?,
        logs: flowhouse.logs(tenant).await?.iter().map(log_key).collect(),
        history: history_of(&history),
        runs_by_final_state: flow_runs["by_state"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    (
                        s["state_type"].as_str().unwrap().to_string(),
                        s["state_name"].as_str().unwrap().to_string(),
                    ),
                    s["count"].as_u64().unwrap(),
                )
            })
            .collect(),
        failures: (failures, total, rate(failures, total)),
        top_failing,
        task_runs_by_state_type: task_runs["by_state_type"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["state_type"].as_str().unwrap().to_string(),
                    s["count"].as_u64().unwrap(),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect(),
        logs_by_level: logs_metric["by_level"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (l["level"].as_u64().unwrap(), l["count"].as_u64().unwrap()))
            .filter(|(_, n)| *n > 0)
            .collect(),
    })
}

/// Asserts each part of the answers equal, naming the part.
pub fn assert_same(flowhouse: &Answers, prefect: &Answers, phase: &str) {
    pub fn part<T: PartialEq + Debug>(name: &str, phase: &str, flowhouse: &T, prefect: &T) {
        assert_eq!(
            flowhouse, prefect,
            "{phase}: {name} (left: Flowhouse, right: Prefect)"
        );
    }
    part("event ids", phase, &flowhouse.event_ids, &prefect.event_ids);
    part("log lines", phase, &flowhouse.logs, &prefect.logs);
    part(
        "/flow_runs/history",
        phase,
        &flowhouse.history,
        &prefect.history,
    );
    part(
        "runs by final state",
        phase,
        &flowhouse.runs_by_final_state,
        &prefect.runs_by_final_state,
    );
    part("failures", phase, &flowhouse.failures, &prefect.failures);
    part(
        "top failing",
        phase,
        &flowhouse.top_failing,
        &prefect.top_failing,
    );
    part(
        "task runs by state type",
        phase,
        &flowhouse.task_runs_by_state_type,
        &prefect.task_runs_by_state_type,
    );
    part(
        "logs by level",
        phase,
        &flowhouse.logs_by_level,
        &prefect.logs_by_level,
    );
}

/// Waits until Prefect's answers have not changed for [`QUIET_FOR`] and `ready` holds of them,
/// then until Flowhouse's equal them (at most [`AGREE_WITHIN`]); returns Prefect's.
pub async fn agree(
    prefect: &Prefect,
    flowhouse: &Flowhouse,
    tenant: usize,
    window: Window,
    phase: &str,
    ready: impl Fn(&Answers) -> bool,
) -> Answers {
    let started = Instant::now();
    let mut stable: Option<(Answers, Instant)> = None;
    loop {
        let theirs = prefect_answers(prefect, window).await;
        match &stable {
            Some((previous, _)) if *previous == theirs => {}
            _ => stable = Some((theirs.clone(), Instant::now())),
        }
        let quiet = stable
            .as_ref()
            .is_some_and(|(_, since)| since.elapsed() >= QUIET_FOR);
        if quiet && ready(&theirs) {
            let ours = match flowhouse_answers(flowhouse, tenant, window).await {
                Ok(ours) => ours,
                Err(error) => {
                    assert!(
                        started.elapsed() < AGREE_WITHIN,
                        "{phase}: {error:#}\n{}",
                        flowhouse.process.log_text()
                    );
                    eprintln!("{phase}: {error:#}; asking again");
                    tokio::time::sleep(Duration::from_millis(1000)).await;
                    continue;
                }
            };
            if ours == theirs {
                eprintln!(
                    "{phase}: equal after {:.1} s: {} events, {} log lines, {} history \
                     intervals, runs by final state {:?}, failures {:?}, task runs {:?}, logs \
                     by level {:?}, top failing {:?}",
                    started.elapsed().as_secs_f64(),
                    theirs.event_ids.len(),
                    theirs.logs.len(),
                    theirs.history.len(),
                    theirs.runs_by_final_state,
                    theirs.failures,
                    theirs.task_runs_by_state_type,
                    theirs.logs_by_level,
                    theirs.top_failing.each_ref().map(Vec::len),
                );
                return theirs;
            }
            if started.elapsed() > AGREE_WITHIN {
                assert_same(&ours, &theirs, phase);
            }
        }
        assert!(
            started.elapsed() < AGREE_WITHIN + Duration::from_secs(120),
            "{phase}: Prefect's answers did not settle: {:?}",
            stable.map(|(a, _)| (a.event_ids.len(), a.logs.len()))
        );
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
}
