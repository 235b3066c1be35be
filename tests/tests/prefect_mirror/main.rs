//! `flowhouse mirror prefect` against a real Prefect server running real flows, judged by
//! Prefect's own API, never by what the test expects.
//!
//! A Prefect 3.8.8 server (the stack's Prefect venv, SQLite, a free loopback port, `/logs/out`
//! enabled) runs the flows of `tests/prefect/flows.py`: a pipeline of tasks logging at every
//! level, a task that fails and is retried, a flow that fails, a subflow, deployment runs through
//! a process worker (one completes, one crashes), a scheduled run cancelled before it starts, and
//! a flow held in Running (heartbeating) until the test releases it. `flowhouse serve` (own
//! database, topics, keys) takes what two mirrors produce: tenant A, and tenant B side by side.
//!
//! Each check waits until Prefect's answers have stopped changing for a few seconds, then
//! requires Flowhouse's to be equal:
//! - the set of event ids (Prefect's `/events/filter`, paged over the window);
//! - the log lines by (id, message, level) (Prefect's `/logs/filter`);
//! - `/flow_runs/history` over the same start, end and interval: every interval's states by
//!   type, name and count, while a run is still Running and after;
//! - the dashboard: runs by final state, failure rate, top failing flows, deployments and work
//!   pools, task runs by state type, logs by level, each computed here from Prefect's
//!   `/flow_runs/filter`, `/task_runs/filter` and `/logs/filter` (task runs: not the ones that
//!   stand for a subflow call, which Prefect sets without events; see docs/metrics.md).
//!
//! Checked three times: while one run is held in Running; after the mirror was killed with
//! SIGKILL in the middle of a batch of runs and restarted; after the Prefect server restarted.

mod answers;
mod flowhouse;
mod prefect;
mod processes;

use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use flowhouse_tests::free_port;
use serde_json::{Value, json};

use answers::{Answers, Window, agree};
use flowhouse::{Flowhouse, mirror};
use prefect::Prefect;

pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

async fn mirror_metrics(admin: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of a Prometheus sample line starting with `series`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// Flow runs of one `flows.py batch`: pipeline, flaky, doomed, parent and its subflow in
/// process; deployed, crashed and cancelled through the worker.
const RUNS_PER_BATCH: u64 = 8;
/// Flow runs of `flows.py batch ... local`: the ones in process.
const LOCAL_RUNS_PER_BATCH: u64 = 5;

/// Runs that ended in the window.
fn ended(answers: &Answers) -> u64 {
    answers.runs_by_final_state.values().sum()
}

/// The held run's state in Prefect, and whether it heartbeat after entering Running.
async fn held_run(prefect: &Prefect, run: &str) -> (String, bool) {
    let events = prefect.events_of(&format!("prefect.flow-run.{run}")).await;
    let running_at = events
        .iter()
        .filter(|e| e["event"] == "prefect.flow-run.Running")
        .filter_map(|e| e["occurred"].as_str()?.parse::<DateTime<Utc>>().ok())
        .min();
    let beat_after = events.iter().any(|e| {
        e["event"] == "prefect.flow-run.heartbeat"
            && e["occurred"]
                .as_str()
                .and_then(|t| t.parse::<DateTime<Utc>>().ok())
                .zip(running_at)
                .is_some_and(|(beat, running)| beat > running)
    });
    let run: Value = prefect
        .http
        .get(format!("{}/flow_runs/{run}", prefect.api()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        run["state_type"].as_str().unwrap_or_default().to_string(),
        beat_after,
    )
}

fn phase_done(name: &str, started: Instant, total: Instant) {
    eprintln!(
        "[{:6.1} s] {name} ({:.1} s)",
        total.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn a_prefect_server_running_real_flows_is_mirrored_exactly() {
    // Built (if needed) before the clock starts: the test's time is the test's, not the build's.
    flowhouse_tests::flowhouse_binary();
    let total = Instant::now();
    let mut prefect = Prefect::new();
    prefect.start();
    let mut flowhouse = Flowhouse::start(2);
    let step = Instant::now();
    tokio::join!(prefect.wait_healthy(), flowhouse.wait_ready());
    phase_done("Prefect server and flowhouse serve up", step, total);
    let test_start = Utc::now() - chrono::Duration::seconds(30);

    let step = Instant::now();
    let pool = "flowhouse-test-pool";
    let setup = prefect
        .flows("setup", &["setup", pool])
        .report(Duration::from_secs(120))
        .await;
    let _worker = prefect.worker(pool);
    let release = prefect.home.path().join("release");
    let mut held = prefect.flows("hold", &["hold", release.to_str().unwrap()]);
    let (admin_a, admin_b) = (free_port(), free_port());
    let mut mirror_a = mirror(&prefect, &flowhouse, 0, admin_a);
    let mirror_b = mirror(&prefect, &flowhouse, 1, admin_b);
    let batch = prefect
        .flows("batch 1", &["batch", "one", pool])
        .report(Duration::from_secs(180))
        .await;
    phase_done(
        "flows of batch 1 ran; deployment runs handed to the worker",
        step,
        total,
    );
    eprintln!(
        "deployments: {}\nbatch 1: {}",
        setup["deployments"], batch["runs"]
    );

    // 1. Live, with one run held in Running and heartbeating.
    let step = Instant::now();
    let window = |until_from_now: i64| Window {
        since: test_start,
        until: Utc::now() + chrono::Duration::seconds(until_from_now),
        interval_seconds: 30,
    };
    // Every run of the batch has ended (the worker's included), but the held one.
    agree(
        &prefect,
        &flowhouse,
        0,
        window(300),
        "live, one run held",
        |a| ended(a) >= RUNS_PER_BATCH,
    )
    .await;
    // The held run: Running in Prefect, with a heartbeat after its Running event, and counted
    // as RUNNING by both (the history above is equal, and shows it).
    let running: Vec<String> = prefect
        .post(
            "/flow_runs/filter",
            json!({"flow_runs": {"state": {"type": {"any_": ["RUNNING"]}}}}),
        )
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        running.len(),
        1,
        "exactly the held run is Running: {running:?}"
    );
    let held_run_id = running[0].clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (state, beat_after) = held_run(&prefect, &held_run_id).await;
        assert_eq!(state, "RUNNING");
        if beat_after {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the held run sent no heartbeat after entering Running"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    agree(
        &prefect,
        &flowhouse,
        0,
        window(300),
        "live, the held run heartbeating",
        |a| {
            a.history.iter().any(|(_, states)| {
                states
                    .iter()
                    .any(|(t, n, _)| t == "RUNNING" && n == "Running")
            })
        },
    )
    .await;
    phase_done("check 1: live, one run held in Running", step, total);

    // 2. SIGKILL the mirror in the middle of a batch of runs, restart it.
    let step = Instant::now();
    let mut batch2 = prefect.flows("batch 2", &["batch", "two", pool, "local"]);
    tokio::time::sleep(Duration::from_secs(8)).await;
    mirror_a.kill9();
    batch2.report(Duration::from_secs(180)).await;
    let mirror_a = mirror(&prefect, &flowhouse, 0, admin_a);
    agree(
        &prefect,
        &flowhouse,
        0,
        window(300),
        "after kill -9 and restart",
        |a| ended(a) >= RUNS_PER_BATCH + LOCAL_RUNS_PER_BATCH,
    )
    .await;
    let log = mirror_a.log_text();
    assert!(
        log.matches("resuming from the checkpoint").count() >= 2,
        "the restarted mirror resumed both streams from ClickHouse:\n{log}"
    );
    phase_done(
        "check 2: mirror killed with SIGKILL mid-batch and restarted",
        step,
        total,
    );

    // 3. Restart the Prefect server; release the held run once it is back.
    let step = Instant::now();
    prefect.stop();
    prefect.start();
    prefect.wait_healthy().await;
    std::fs::write(&release, "go").unwrap();
    let held_report = held.report(Duration::from_secs(120)).await;
    assert_eq!(held_report["state"], "COMPLETED", "{held_report}");
    let last = agree(
        &prefect,
        &flowhouse,
        0,
        window(300),
        "after the Prefect server restarted",
        |a| {
            a.history
                .iter()
                .all(|(_, states)| states.iter().all(|(t, _, _)| t != "RUNNING"))
        },
    )
    .await;
    phase_done(
        "check 3: Prefect server restarted, held run released",
        step,
        total,
    );

    // The second mirror, side by side, into its own tenant: the same events.
    let other = flowhouse
        .event_ids(1, window(300).since, window(300).until)
        .await
        .unwrap();
    assert_eq!(
        other, last.event_ids,
        "the second mirror's tenant has the same events"
    );
    let metrics = mirror_metrics(admin_a).await;
    let delivered = sample(
        &metrics,
        "flowhouse_mirror_delivered_total{stream=\"events\"}",
    );
    assert!(delivered.is_some_and(|n| n > 0.0), "{metrics}");
    assert!(sample(&metrics, "flowhouse_mirror_lag_seconds{stream=\"events\"}").is_some());
    eprintln!(
        "mirror A after restart delivered {delivered:?} events; total {:.1} s",
        total.elapsed().as_secs_f64()
    );
    // The live sockets carried items, not only the backfills: mirror B ran throughout.
    let metrics_b = mirror_metrics(admin_b).await;
    for stream in ["events", "logs"] {
        let live = sample(
            &metrics_b,
            &format!("flowhouse_mirror_read_total{{stream=\"{stream}\",source=\"live\"}}"),
        );
        assert!(
            live.is_some_and(|n| n > 0.0),
            "no live {stream}:\n{metrics_b}"
        );
        eprintln!("mirror B read {live:?} {stream} live");
    }
    // SIGTERM: mirror B drains and exits cleanly; both mirrors' checkpoints, one per stream,
    // are in ClickHouse under their own names.
    let mut mirror_b = mirror_b;
    assert_eq!(
        mirror_b.terminate(Duration::from_secs(40)),
        Some(0),
        "mirror B did not stop cleanly on SIGTERM:\n{}",
        mirror_b.log_text()
    );
    let checkpoints: Vec<(String, String)> = flowhouse
        .stack
        .clickhouse_client(&flowhouse.database)
        .query("SELECT mirror, stream FROM mirror_checkpoints FINAL ORDER BY mirror, stream")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(checkpoints.len(), 4, "{checkpoints:?}");
    for (tenant, _) in &flowhouse.tenants {
        let mine = checkpoints
            .iter()
            .filter(|(name, _)| name.ends_with(&tenant.to_string()))
            .count();
        assert_eq!(mine, 2, "events and logs for {tenant}: {checkpoints:?}");
    }
    drop(mirror_a);
    flowhouse
        .stack
        .clickhouse_client("default")
        .query(&format!("DROP DATABASE IF EXISTS {}", flowhouse.database))
        .execute()
        .await
        .unwrap();
}
