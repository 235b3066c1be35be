//! Small, deterministic orchestration workloads for tests that need realistic events without the
//! load generator: flow runs through Prefect's states (with lateness, retries, failures, crashes,
//! cancellations), task runs, logs, resent duplicates, several tenants.

use chrono::{DateTime, Duration, Utc};
use flowhouse_schema::Tenant;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use uuid::Uuid;

/// Messages to produce, each with its tenant: the JSON values exactly as a producer sends them.
#[derive(Default)]
pub struct Fixture {
    pub events: Vec<(Tenant, Vec<u8>)>,
    pub logs: Vec<(Tenant, Vec<u8>)>,
}

/// `runs` flow runs per tenant, their task runs and logs, ending before `now`.
pub fn orchestration(seed: u64, tenants: &[Tenant], runs: usize, now: DateTime<Utc>) -> Fixture {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut fixture = Fixture::default();
    // Whole milliseconds: every timestamp then has one exact representation in JSON, in Rust and
    // in ClickHouse's DateTime64(6).
    let now = DateTime::from_timestamp_millis(now.timestamp_millis()).expect("a valid time");
    for tenant in tenants {
        let flows: Vec<Uuid> = (0..3).map(|_| uuid(&mut rng)).collect();
        let deployments: Vec<Uuid> = (0..2).map(|_| uuid(&mut rng)).collect();
        let pools: Vec<Uuid> = (0..2).map(|_| uuid(&mut rng)).collect();
        for _ in 0..runs {
            let run = uuid(&mut rng);
            let flow = flows[rng.random_range(0..flows.len())];
            let mut related = vec![
                json!({"prefect.resource.id": format!("prefect.flow.{flow}"), "prefect.resource.role": "flow", "prefect.resource.name": format!("flow-{}", &flow.to_string()[..4])}),
                json!({"prefect.resource.id": format!("prefect.deployment.{}", deployments[rng.random_range(0..2)]), "prefect.resource.role": "deployment", "prefect.resource.name": "deploy"}),
                json!({"prefect.resource.id": format!("prefect.work-pool.{}", pools[rng.random_range(0..2)]), "prefect.resource.role": "work-pool", "prefect.resource.name": "pool"}),
            ];
            for tag in ["nightly", "etl", "critical"] {
                if rng.random_bool(0.4) {
                    related.push(json!({"prefect.resource.id": format!("prefect.tag.{tag}"), "prefect.resource.role": "tag"}));
                }
            }
            let scheduled = now - Duration::minutes(rng.random_range(10..3 * 24 * 60));
            let mut at = scheduled - Duration::seconds(rng.random_range(1..600));
            let mut states = vec![("Scheduled", "SCHEDULED")];
            let late = rng.random_bool(0.2);
            if late {
                states.push(("Late", "SCHEDULED"));
            }
            states.extend([("Pending", "PENDING"), ("Running", "RUNNING")]);
            if rng.random_bool(0.15) {
                states.extend([("AwaitingRetry", "SCHEDULED"), ("Retrying", "RUNNING")]);
            }
            let terminal = match rng.random_range(0..100) {
                0..70 => ("Completed", "COMPLETED"),
                70..85 => ("Failed", "FAILED"),
                85..93 => ("Crashed", "CRASHED"),
                _ => ("Cancelled", "CANCELLED"),
            };
            // A few runs are still going: no terminal state yet.
            if rng.random_bool(0.9) {
                states.push(terminal);
            }
            let mut previous: Option<Uuid> = None;
            for (name, kind) in states {
                at = if name == "Pending" && late {
                    scheduled + Duration::seconds(rng.random_range(30..900))
                } else {
                    at + Duration::milliseconds(rng.random_range(100..120_000))
                };
                let id = uuid(&mut rng);
                let event = json!({
                    "id": id,
                    "occurred": at,
                    "event": format!("prefect.flow-run.{name}"),
                    "resource": {
                        "prefect.resource.id": format!("prefect.flow-run.{run}"),
                        "prefect.resource.name": format!("run-{}", &run.to_string()[..6]),
                        "prefect.state-name": name,
                        "prefect.state-type": kind,
                    },
                    "related": related,
                    "payload": {"validated_state": {"type": kind, "name": name, "state_details": {"scheduled_time": scheduled}}},
                    "follows": previous,
                });
                let bytes = event.to_string().into_bytes();
                // Clients resend: about 2% of events arrive twice, same id.
                if rng.random_bool(0.02) {
                    fixture.events.push((*tenant, bytes.clone()));
                }
                fixture.events.push((*tenant, bytes));
                previous = Some(id);
            }
            for _ in 0..rng.random_range(0..4) {
                let task = uuid(&mut rng);
                let mut task_at = at - Duration::seconds(rng.random_range(1..60));
                let end = if rng.random_bool(0.8) {
                    ("Completed", "COMPLETED")
                } else {
                    ("Failed", "FAILED")
                };
                for (name, kind) in [("Pending", "PENDING"), ("Running", "RUNNING"), end] {
                    task_at += Duration::milliseconds(rng.random_range(10..5_000));
                    let event = json!({
                        "id": uuid(&mut rng), "occurred": task_at, "event": format!("prefect.task-run.{name}"),
                        "resource": {"prefect.resource.id": format!("prefect.task-run.{task}"), "prefect.state-type": kind},
                        "related": [
                            {"prefect.resource.id": format!("prefect.flow-run.{run}"), "prefect.resource.role": "flow-run"},
                            related[0],
                        ],
                    });
                    fixture
                        .events
                        .push((*tenant, event.to_string().into_bytes()));
                }
            }
            for _ in 0..rng.random_range(0..5) {
                let level = [10, 20, 20, 30, 40, 50][rng.random_range(0..6)];
                let log = json!({
                    "name": "prefect.flow_runs", "level": level,
                    "message": format!("step {} of {run}", rng.random_range(0..100)),
                    "timestamp": at - Duration::seconds(rng.random_range(0..3600)),
                    "flow_run_id": run, "task_run_id": null,
                });
                fixture.logs.push((*tenant, log.to_string().into_bytes()));
            }
        }
    }
    fixture
}

fn uuid(rng: &mut StdRng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid()
}

/// `count` distinct tenants.
pub fn tenants(count: usize) -> Vec<Tenant> {
    (0..count)
        .map(|_| Tenant {
            account_id: Uuid::new_v4(),
            workspace_id: Uuid::new_v4(),
        })
        .collect()
}
