//! `flowhouse loadtest run --chaos`, small, end to end, on a local stack of its own (it stops
//! ClickHouse and the broker): two ingest instances in one consumer group, kill -9s of each
//! (KILLS in all; `make chaos` does 10), a restart each of ClickHouse, the broker and the
//! endpoint, while a generated workload goes in over HTTP; then every metric card against the
//! ground truth, and the raw rows, which this test also counts itself.
//!
//! Nothing here is timed: every wait in the run has a generous deadline (a fault may take
//! minutes to recover on a loaded machine before the run calls it a stall), and the test only
//! checks what happened, not how fast.

use std::path::Path;
use std::process::Command;

use flowhouse_schema::contract::TopicArgs;
use flowhouse_service::kafka::ensure_topics;
use flowhouse_tests::{
    PrivateStack, ServiceProcess, flowhouse_binary, free_port, unique_name, workspace_root,
};
use serde_json::Value;

/// Messages in the run, and their pace: the drive lasts about MESSAGES / RATE seconds, long
/// enough for the faults to come while it goes, short enough for the test to stay within
/// about three minutes.
const MESSAGES: u64 = 16_000;
const RATE: u64 = 200;
/// kill -9s of the ingest instances (the plan kills each at least once).
const KILLS: usize = 4;

fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).expect("valid JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chaos_run_loses_and_duplicates_nothing() {
    // SQLite storage: the broker's restart must keep what it acknowledged.
    let Some(private) = PrivateStack::start("sqlite") else {
        eprintln!("skipped: the chaos run restarts ClickHouse and the broker of a local stack");
        return;
    };
    let stack = private.stack.clone();
    let db = unique_name("chaos");
    let topics = TopicArgs {
        events_topic: unique_name("events"),
        logs_topic: unique_name("logs"),
        dlq_topic: unique_name("dlq"),
        topic_partitions: 3,
    };
    ensure_topics(&stack.kafka, &topics.specs())
        .await
        .expect("topics");
    let dir = tempfile::tempdir().expect("temp dir");
    let keys_file = dir.path().join("keys.json");
    std::fs::write(&keys_file, r#"{"version": 1, "keys": []}"#).unwrap();
    let mut env = stack.service_env(&db, &topics);
    env.push(("FLOWHOUSE_KEYS_FILE", keys_file.display().to_string()));
    env.push((
        "FLOWHOUSE_STACK_DIR",
        stack.stack_dir.clone().unwrap().display().to_string(),
    ));

    let migrate = Command::new(flowhouse_binary())
        .arg("migrate")
        .envs(env.clone())
        .output()
        .expect("run flowhouse migrate");
    assert!(
        migrate.status.success(),
        "flowhouse migrate failed:\n{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    // The query API is the one service the chaos run does not own.
    let query_api = format!("127.0.0.1:{}", free_port());
    let query_admin = format!("127.0.0.1:{}", free_port());
    let mut query_env = env.clone();
    query_env.extend([
        ("FLOWHOUSE_QUERY_API_LISTEN", query_api.clone()),
        ("FLOWHOUSE_QUERY_API_ADMIN_LISTEN", query_admin.clone()),
        ("FLOWHOUSE_PAGE_TOKEN_SECRET", unique_name("secret")),
    ]);
    let mut query_service = ServiceProcess::start(&["query-api"], &query_env);
    query_service
        .wait_ready(
            &format!("http://{query_admin}"),
            std::time::Duration::from_secs(180),
        )
        .await;

    let out_dir = dir.path().join("results");
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let (sized, messages) = ((MESSAGES * 6 / 5).to_string(), MESSAGES.to_string());
    let started = std::time::Instant::now();
    let run = tokio::task::spawn_blocking({
        let (env, out_dir) = (env.clone(), out_dir.clone());
        let (query_api, query_admin) = (query_api.clone(), query_admin.clone());
        move || {
            Command::new(flowhouse_binary())
                .args([
                    "loadtest",
                    "run",
                    "--quiet",
                    "--seed",
                    "11",
                    "--tenants",
                    "4",
                ])
                .args(["--events", &sized, "--max-messages", &messages])
                .args(["--rate", &RATE.to_string()])
                .args(["--target", "http", "--batch-size", "100"])
                .args(["--endpoint-url", &endpoint])
                .args(["--query-url", &format!("http://{query_api}")])
                .args(["--query-admin-url", &format!("http://{query_admin}")])
                .args(["--dashboard-users", "2", "--dashboard-refresh", "2s"])
                .args(["--freshness-every", "2s", "--visible-timeout", "4m"])
                .args(["--no-baselines", "--chaos"])
                .args(["--chaos-ingest-kills", &KILLS.to_string()])
                .args(["--ingest-group", &unique_name("ingest")])
                .arg("--flowhouse-bin")
                .arg(flowhouse_binary())
                .arg("--stack-script")
                .arg(workspace_root().join("deploy/local/stack"))
                .arg("--out-dir")
                .arg(&out_dir)
                .envs(env)
                .env("FLOWHOUSE_LOG_FORMAT", "text")
                .output()
                .expect("run flowhouse loadtest run --chaos")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    eprintln!("{stdout}");
    eprintln!("the chaos run took {:?}", started.elapsed());
    let service_logs = || {
        ["ingest-0", "ingest-1", "endpoint"]
            .iter()
            .map(|name| {
                let path = out_dir.join("chaos").join(format!("{name}.log"));
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!(
                    "--- {name} (end of {}):\n{}",
                    path.display(),
                    tail.join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        run.status.success(),
        "the chaos run failed ({}):\n{stdout}\n{}\n{}\nquery API log:\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr),
        service_logs(),
        query_service.log_text()
    );

    let report = read_json(&out_dir.join("report.json"));
    let chaos = &report["chaos"];
    let context = format!("chaos report:\n{chaos:#}");
    assert_eq!(report["verified"], true, "{context}");
    assert_eq!(report["mismatches"], serde_json::json!([]), "{context}");
    assert_eq!(report["produce"]["messages_acked"], MESSAGES, "{context}");
    assert_eq!(report["produce"]["messages_failed"], 0, "{context}");
    // Every fault of the plan happened and recovered.
    let faults = chaos["faults"].as_array().expect("faults");
    let kinds = |kind: &str| faults.iter().filter(|f| f["kind"] == kind).count();
    assert_eq!(faults.len(), KILLS + 3, "{context}");
    assert_eq!(kinds("ingest_kill"), KILLS, "{context}");
    assert_eq!(kinds("clickhouse_restart"), 1, "{context}");
    assert_eq!(kinds("broker_restart"), 1, "{context}");
    assert_eq!(kinds("endpoint_restart"), 1, "{context}");
    for instance in ["ingest-0", "ingest-1"] {
        assert!(
            faults.iter().any(|f| f["target"] == instance),
            "{instance} was never killed: {context}"
        );
    }
    assert!(
        faults.iter().all(|f| f["recovery_secs"].is_number()),
        "{context}"
    );
    // Each fault recovered in the way of its kind: ingestion caught up again after everything
    // but the endpoint's restart, the endpoint ready again after its own and the broker's.
    for fault in faults {
        let kind = fault["kind"].as_str().unwrap_or_default();
        let ingestion = kind != "endpoint_restart";
        let endpoint = matches!(kind, "endpoint_restart" | "broker_restart");
        assert_eq!(
            fault["ingestion_recovery_secs"].is_number(),
            ingestion,
            "{fault:#}"
        );
        assert_eq!(
            fault["endpoint_recovery_secs"].is_number(),
            endpoint,
            "{fault:#}"
        );
    }
    assert_eq!(chaos["stopped"], Value::Null, "{context}");
    assert_eq!(chaos["unclean_exits"], serde_json::json!([]), "{context}");
    assert_eq!(chaos["raw_counts"]["verified"], true, "{context}");

    // The raw rows, counted here too, per tenant, against the generator's truth.
    let truth = read_json(&out_dir.join("truth.json"));
    let client = stack.clickhouse_client(&db);
    let mut tenants = 0;
    for tenant in truth["tenants"].as_array().unwrap() {
        let ws = tenant["tenant"]["workspace_id"]
            .as_str()
            .unwrap()
            .to_string();
        let count = |sql: &'static str| {
            let (client, ws) = (client.clone(), ws.clone());
            async move {
                client
                    .query(sql)
                    .param("ws", ws)
                    .fetch_one::<u64>()
                    .await
                    .expect(sql)
            }
        };
        let (events, logs) = (tenant["events"].as_u64(), tenant["logs"].as_u64());
        assert_eq!(
            Some(
                count("SELECT uniqExact(id) FROM events FINAL WHERE workspace_id = {ws:UUID}")
                    .await
            ),
            events,
            "events of {ws}: {context}"
        );
        assert_eq!(
            Some(count("SELECT count() FROM events FINAL WHERE workspace_id = {ws:UUID}").await),
            events,
            "events of {ws}: {context}"
        );
        // A log line's id is Prefect's or its content's: one stored twice is collapsed by
        // FINAL, one lost is missing from both counts.
        assert_eq!(
            Some(
                count("SELECT uniqExact(id) FROM logs FINAL WHERE workspace_id = {ws:UUID}").await
            ),
            logs,
            "log lines of {ws}: {context}"
        );
        assert_eq!(
            Some(count("SELECT count() FROM logs FINAL WHERE workspace_id = {ws:UUID}").await),
            logs,
            "log lines of {ws}: {context}"
        );
        assert_eq!(
            Some(
                count(
                    "SELECT toUInt64(uniqExactMerge(log_ids)) FROM log_counts_hourly \
                     WHERE workspace_id = {ws:UUID}"
                )
                .await
            ),
            logs,
            "the log rollup of {ws}: {context}"
        );
        tenants += 1;
    }
    assert_eq!(tenants, 4);

    assert_eq!(
        query_service.terminate(std::time::Duration::from_secs(60)),
        Some(0),
        "the query API did not stop cleanly:\n{}",
        query_service.log_text()
    );
    drop(private);
}
