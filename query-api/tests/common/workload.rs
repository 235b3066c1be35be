//! A generated orchestration workload whose answers are known: flow runs with state sequences
//! (Late, retries, failures, crashes, cancellations, runs still running, ad-hoc runs without a
//! schedule, a terminal event without its state-type label), task runs, logs, and resent events.
//! Shared by the tests and the benchmark (`#[path]`), deterministic for a seed.

#![allow(dead_code, clippy::type_complexity, clippy::too_many_arguments)]

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use flowhouse_schema::Tenant;
use flowhouse_schema::rows::{EventRow, LogRow};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use uuid::Uuid;

pub const SECOND: i64 = 1_000_000;
pub const HOUR: i64 = 3_600 * SECOND;
pub const DAY: i64 = 24 * HOUR;

/// A string that must reach ClickHouse as data only.
pub const HOSTILE: &str = "it's \"x\" \\ {x:String} ?; DROP TABLE events; -- \t";

#[derive(Clone, Debug)]
pub struct Ev {
    pub tenant: Tenant,
    pub id: Uuid,
    pub occurred: i64,
    pub event: String,
    pub resource: Vec<(String, String)>,
    pub related: Vec<Vec<(String, String)>>,
    pub payload: serde_json::Value,
    pub received: i64,
}

#[derive(Clone, Debug)]
pub struct Lg {
    pub tenant: Tenant,
    pub timestamp: i64,
    pub level: u8,
    pub name: String,
    pub message: String,
    pub flow_run_id: Option<Uuid>,
    pub task_run_id: Option<Uuid>,
}

pub fn time(micros: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(micros).single().expect("valid time")
}

pub fn rfc3339(micros: i64) -> String {
    time(micros).to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl Ev {
    pub fn row(&self) -> EventRow {
        EventRow {
            account_id: self.tenant.account_id,
            workspace_id: self.tenant.workspace_id,
            occurred: time(self.occurred),
            id: self.id,
            received: time(self.received),
            event: self.event.clone(),
            resource: self.resource.clone(),
            related: self.related.clone(),
            payload: self.payload.to_string(),
            follows: None,
        }
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.resource
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl Lg {
    pub fn row(&self) -> LogRow {
        let mut row = LogRow {
            account_id: self.tenant.account_id,
            workspace_id: self.tenant.workspace_id,
            timestamp: time(self.timestamp),
            id: Uuid::nil(),
            received: time(self.timestamp + SECOND),
            level: self.level,
            name: self.name.clone(),
            message: self.message.clone(),
            flow_run_id: self.flow_run_id,
            task_run_id: self.task_run_id,
            worker_id: None,
        };
        row.id = flowhouse_schema::rows::log_content_id(&row);
        row
    }
}

/// The flows, deployments, work pools and tags of one tenant.
pub struct Catalog {
    pub flows: Vec<(String, String)>,
    pub deployments: Vec<(String, String)>,
    pub work_pools: Vec<(String, String)>,
    pub tags: Vec<String>,
}

impl Catalog {
    pub fn new(rng: &mut StdRng, tenant_index: usize) -> Self {
        let ids = |rng: &mut StdRng, n: usize, kind: &str| -> Vec<(String, String)> {
            (0..n)
                .map(|i| {
                    let id = Uuid::from_u128(rng.random()).to_string();
                    (id, format!("{kind}-{tenant_index}-{i}"))
                })
                .collect()
        };
        let mut flows = ids(rng, 4, "flow");
        // One flow whose id is hostile text: filters on it must be plain data.
        flows[3].0 = format!("{HOSTILE}{tenant_index}");
        Self {
            flows,
            deployments: ids(rng, 3, "deployment"),
            work_pools: ids(rng, 2, "pool"),
            tags: vec!["nightly".into(), "etl".into(), HOSTILE.into()],
        }
    }
}

fn uuid(rng: &mut StdRng) -> Uuid {
    Uuid::from_u128(rng.random())
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The related resources of a run's events.
struct Context {
    related: Vec<Vec<(String, String)>>,
}

/// Generates one tenant's workload: `runs` flow runs with expected starts spread over
/// `[base, base + span)`, their task runs and logs. Events and logs go to the callbacks.
pub fn tenant_workload(
    seed: u64,
    tenant_index: usize,
    tenant: Tenant,
    base: i64,
    span: i64,
    runs: usize,
    mut on_event: impl FnMut(Ev),
    mut on_log: impl FnMut(Lg),
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (tenant_index as u64) << 32);
    let catalog = Catalog::new(&mut rng, tenant_index);
    for i in 0..runs {
        let run_id = uuid(&mut rng);
        let run_name = format!("run-{tenant_index}-{i}");
        let (flow_id, flow_name) = catalog.flows[rng.random_range(0..catalog.flows.len())].clone();
        let deployment = (rng.random_range(0..5) != 0)
            .then(|| catalog.deployments[rng.random_range(0..catalog.deployments.len())].clone());
        let (pool_id, pool_name) = catalog.work_pools[rng.random_range(0..2)].clone();
        let tags: Vec<String> = catalog
            .tags
            .iter()
            .filter(|_| rng.random_range(0..3) == 0)
            .cloned()
            .collect();
        let mut related = vec![labels(&[
            ("prefect.resource.id", &format!("prefect.flow.{flow_id}")),
            ("prefect.resource.role", "flow"),
            ("prefect.resource.name", &flow_name),
        ])];
        if let Some((id, name)) = &deployment {
            related.push(labels(&[
                ("prefect.resource.id", &format!("prefect.deployment.{id}")),
                ("prefect.resource.role", "deployment"),
                ("prefect.resource.name", name),
            ]));
        }
        related.push(labels(&[
            (
                "prefect.resource.id",
                &format!("prefect.work-pool.{pool_id}"),
            ),
            ("prefect.resource.role", "work-pool"),
            ("prefect.resource.name", &pool_name),
        ]));
        for tag in &tags {
            related.push(labels(&[
                ("prefect.resource.id", &format!("prefect.tag.{tag}")),
                ("prefect.resource.role", "tag"),
            ]));
        }
        let ctx = Context { related };
        let expected = base + rng.random_range(0..span);
        let mut t = expected - rng.random_range(30..600) * SECOND;
        let mut emit = |rng: &mut StdRng,
                        kind: &str,
                        state: &str,
                        state_type: Option<&str>,
                        at: i64,
                        scheduled: Option<i64>,
                        id: Uuid| {
            let mut resource = labels(&[
                ("prefect.resource.id", &format!("prefect.{kind}.{id}")),
                ("prefect.resource.name", &format!("{kind}-{id}")),
                ("prefect.state-name", state),
            ]);
            if kind == "flow-run" {
                resource[1].1.clone_from(&run_name);
            }
            if let Some(st) = state_type {
                resource.push(("prefect.state-type".into(), st.into()));
            }
            let mut details = json!({});
            if let Some(s) = scheduled {
                details = json!({"scheduled_time": rfc3339(s)});
            }
            let mut related = ctx.related.clone();
            if kind == "task-run" {
                related.insert(
                    0,
                    labels(&[
                        ("prefect.resource.id", &format!("prefect.flow-run.{run_id}")),
                        ("prefect.resource.role", "flow-run"),
                    ]),
                );
            }
            let occurred = at + rng.random_range(0..1000);
            on_event(Ev {
                tenant,
                id: uuid(rng),
                occurred,
                event: format!("prefect.{kind}.{state}"),
                resource,
                related,
                payload: json!({
                    "intended": {"to": state_type.unwrap_or("")},
                    "validated_state": {"type": state_type, "name": state, "state_details": details},
                }),
                received: occurred + SECOND,
            });
        };
        let scenario = rng.random_range(0..100);
        let fr = "flow-run";
        // Ad-hoc runs (no Scheduled event, so no expected start).
        if scenario >= 92 {
            t = expected;
        } else {
            emit(
                &mut rng,
                fr,
                "Scheduled",
                Some("SCHEDULED"),
                t,
                Some(expected),
                run_id,
            );
        }
        if scenario < 8 {
            // Cancelled before it ever ran.
            t = expected + rng.random_range(1..3600) * SECOND;
            emit(
                &mut rng,
                fr,
                "Cancelled",
                Some("CANCELLED"),
                t,
                None,
                run_id,
            );
            continue;
        }
        t = t.max(expected);
        if (8..25).contains(&scenario) {
            t = expected + rng.random_range(20..900) * SECOND;
            emit(
                &mut rng,
                fr,
                "Late",
                Some("SCHEDULED"),
                t,
                Some(expected),
                run_id,
            );
        }
        t += rng.random_range(1..120) * SECOND;
        emit(&mut rng, fr, "Pending", Some("PENDING"), t, None, run_id);
        t += rng.random_range(1..60) * SECOND;
        let start = t;
        emit(&mut rng, fr, "Running", Some("RUNNING"), t, None, run_id);
        // Task runs while the flow runs.
        let tasks = rng.random_range(0..4);
        let mut task_t = start;
        for _ in 0..tasks {
            let task_id = uuid(&mut rng);
            task_t += rng.random_range(1..300) * SECOND;
            emit(
                &mut rng,
                "task-run",
                "Pending",
                Some("PENDING"),
                task_t,
                None,
                task_id,
            );
            task_t += rng.random_range(1..30) * SECOND;
            emit(
                &mut rng,
                "task-run",
                "Running",
                Some("RUNNING"),
                task_t,
                None,
                task_id,
            );
            task_t += rng.random_range(1..600) * SECOND;
            match rng.random_range(0..20) {
                0..=13 => emit(
                    &mut rng,
                    "task-run",
                    "Completed",
                    Some("COMPLETED"),
                    task_t,
                    None,
                    task_id,
                ),
                14..=16 => emit(
                    &mut rng,
                    "task-run",
                    "Failed",
                    Some("FAILED"),
                    task_t,
                    None,
                    task_id,
                ),
                17 => emit(
                    &mut rng,
                    "task-run",
                    "Crashed",
                    Some("CRASHED"),
                    task_t,
                    None,
                    task_id,
                ),
                _ => {
                    // A retry: Failed, Retrying, then Completed (two terminal types for one run).
                    emit(
                        &mut rng,
                        "task-run",
                        "Failed",
                        Some("FAILED"),
                        task_t,
                        None,
                        task_id,
                    );
                    task_t += rng.random_range(1..60) * SECOND;
                    emit(
                        &mut rng,
                        "task-run",
                        "Retrying",
                        Some("RUNNING"),
                        task_t,
                        None,
                        task_id,
                    );
                    task_t += rng.random_range(1..600) * SECOND;
                    emit(
                        &mut rng,
                        "task-run",
                        "Completed",
                        Some("COMPLETED"),
                        task_t,
                        None,
                        task_id,
                    );
                }
            }
            for _ in 0..rng.random_range(0..3) {
                on_log(Lg {
                    tenant,
                    timestamp: task_t
                        - rng.random_range(0..60) * SECOND
                        - rng.random_range(0..1000),
                    level: [10, 20, 30, 40, 50][rng.random_range(0..5)],
                    name: "prefect.task_runs".into(),
                    message: format!("task {task_id} says {}", rng.random_range(0..1000)),
                    flow_run_id: Some(run_id),
                    task_run_id: Some(task_id),
                });
            }
        }
        t = t.max(task_t) + rng.random_range(1..3600) * SECOND;
        for _ in 0..rng.random_range(0..4) {
            on_log(Lg {
                tenant,
                timestamp: start + rng.random_range(0..(t - start).max(1)),
                level: [10, 20, 30, 40, 50][rng.random_range(0..5)],
                name: "prefect.flow_runs".into(),
                message: if rng.random_range(0..10) == 0 {
                    HOSTILE.to_string()
                } else {
                    format!("flow run {run_name} step {}", rng.random_range(0..100))
                },
                flow_run_id: Some(run_id),
                task_run_id: None,
            });
        }
        match scenario {
            25..=60 => emit(
                &mut rng,
                fr,
                "Completed",
                Some("COMPLETED"),
                t,
                None,
                run_id,
            ),
            61..=70 => emit(&mut rng, fr, "Failed", Some("FAILED"), t, None, run_id),
            71..=75 => emit(&mut rng, fr, "Crashed", Some("CRASHED"), t, None, run_id),
            76..=79 => emit(
                &mut rng,
                fr,
                "Cancelled",
                Some("CANCELLED"),
                t,
                None,
                run_id,
            ),
            80..=85 => {
                // Failed, then retried to completion: the final state is the later Completed.
                emit(&mut rng, fr, "Failed", Some("FAILED"), t, None, run_id);
                t += rng.random_range(5..60) * SECOND;
                emit(
                    &mut rng,
                    fr,
                    "AwaitingRetry",
                    Some("SCHEDULED"),
                    t,
                    Some(t + 10 * SECOND),
                    run_id,
                );
                t += rng.random_range(10..60) * SECOND;
                emit(&mut rng, fr, "Retrying", Some("RUNNING"), t, None, run_id);
                t += rng.random_range(10..3600) * SECOND;
                emit(
                    &mut rng,
                    fr,
                    "Completed",
                    Some("COMPLETED"),
                    t,
                    None,
                    run_id,
                );
            }
            // No state-type label: the type is the upper-cased name.
            86..=88 => emit(&mut rng, fr, "Completed", None, t, None, run_id),
            // Still running: no terminal state.
            89..=91 => {}
            _ => emit(
                &mut rng,
                fr,
                "Completed",
                Some("COMPLETED"),
                t,
                None,
                run_id,
            ),
        }
    }
    // Worker logs without a flow run.
    for i in 0..runs / 10 {
        on_log(Lg {
            tenant,
            timestamp: base + rng.random_range(0..span),
            level: 20,
            name: "prefect.workers".into(),
            message: format!("worker heartbeat {i}"),
            flow_run_id: None,
            task_run_id: None,
        });
    }
}

/// One row per distinct event (a resent event counts once), as `events FINAL` holds them.
pub fn unique_rows(events: &[Ev]) -> Vec<EventRow> {
    let mut seen = std::collections::BTreeSet::new();
    events
        .iter()
        .filter(|e| seen.insert((e.tenant, e.occurred, e.id)))
        .map(Ev::row)
        .collect()
}
