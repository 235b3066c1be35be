//! The whole path, small: `flowhouse loadtest run --backlog` pre-loads a backlog into Kafka,
//! measures the baselines on it, starts the real ingest service (the run owns it) and times its
//! drain; then drives a generated workload through the real endpoint (HTTP) into Kafka and
//! ingest into a fresh ClickHouse database, and asks the real query API, with dashboards
//! refreshing meanwhile; then it verifies every metric card of every tenant of both phases
//! against the ground truth. The test checks its exit code, its report and the rows in
//! ClickHouse against the generator's counts.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use flowhouse_schema::contract::TopicArgs;
use flowhouse_service::kafka::ensure_topics;
use flowhouse_tests::{ServiceProcess, Stack, flowhouse_binary, free_port, unique_name};
use serde_json::Value;

/// Messages in the run: big enough for every metric to have data in every tenant, small enough
/// for seconds of broker time.
const MESSAGES: u64 = 20_000;
/// About this many messages in the backlog phase (sized, not cut: the report says how many).
const BACKLOG: u64 = 5_000;

struct World {
    stack: Stack,
    db: String,
    topics: TopicArgs,
    keys_file: std::path::PathBuf,
}

impl World {
    /// The variables every process of the run shares.
    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = self.stack.service_env(&self.db, &self.topics);
        env.push(("FLOWHOUSE_KEYS_FILE", self.keys_file.display().to_string()));
        env
    }

    fn start(&self, args: &[&str], extra: &[(&'static str, String)]) -> ServiceProcess {
        let mut env = self.env();
        env.extend(extra.iter().cloned());
        ServiceProcess::start(args, &env)
    }
}

fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).expect("valid JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_small_run_verifies_the_whole_path() {
    let stack = Stack::from_env();
    let db = unique_name("loadtest_e2e");
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
    let world = World {
        stack,
        db,
        topics,
        keys_file,
    };

    let migrate = Command::new(flowhouse_binary())
        .arg("migrate")
        .envs(world.env())
        .output()
        .expect("run flowhouse migrate");
    assert!(
        migrate.status.success(),
        "flowhouse migrate failed:\n{}",
        String::from_utf8_lossy(&migrate.stderr)
    );

    let address = || format!("127.0.0.1:{}", free_port());
    let (endpoint, endpoint_admin, query_api, query_admin) =
        (address(), address(), address(), address());
    // No ingest here: the run starts it after the backlog, with the run's environment.
    let ingest_env = [
        ("FLOWHOUSE_INGEST_GROUP", unique_name("ingest")),
        ("FLOWHOUSE_INGEST_BATCH_MAX_AGE", "300ms".to_string()),
    ];
    let mut endpoint_service = world.start(
        &["endpoint"],
        &[
            ("FLOWHOUSE_ENDPOINT_LISTEN", endpoint.clone()),
            ("FLOWHOUSE_ENDPOINT_ADMIN_LISTEN", endpoint_admin.clone()),
            ("FLOWHOUSE_ENDPOINT_RATE_LIMIT", "0".into()),
        ],
    );
    let mut query_service = world.start(
        &["query-api"],
        &[
            ("FLOWHOUSE_QUERY_API_LISTEN", query_api.clone()),
            ("FLOWHOUSE_QUERY_API_ADMIN_LISTEN", query_admin.clone()),
            ("FLOWHOUSE_PAGE_TOKEN_SECRET", unique_name("secret")),
        ],
    );
    endpoint_service
        .wait_ready(
            &format!("http://{endpoint_admin}"),
            Duration::from_secs(120),
        )
        .await;
    query_service
        .wait_ready(&format!("http://{query_admin}"), Duration::from_secs(120))
        .await;

    let out_dir = dir.path().join("results");
    // Sized for a little more than MESSAGES and cut at MESSAGES, so exactly that many go out
    // (the ground truth counts what was handed out, so the cut keeps it exact).
    let (sized, messages) = ((MESSAGES * 6 / 5).to_string(), MESSAGES.to_string());
    let services = [
        format!("endpoint={}", endpoint_service.pid()),
        format!("query-api={}", query_service.pid()),
    ];
    let run = tokio::task::spawn_blocking({
        let env = world.env();
        let (endpoint, query_api, query_admin, out_dir) = (
            endpoint.clone(),
            query_api.clone(),
            query_admin.clone(),
            out_dir.clone(),
        );
        move || {
            Command::new(flowhouse_binary())
                .args([
                    "loadtest",
                    "run",
                    "--quiet",
                    "--seed",
                    "7",
                    "--tenants",
                    "4",
                ])
                .args(["--events", &sized, "--max-messages", &messages])
                .args(["--target", "http", "--batch-size", "200"])
                .args(["--endpoint-url", &format!("http://{endpoint}")])
                .args(["--query-url", &format!("http://{query_api}")])
                .args(["--query-admin-url", &format!("http://{query_admin}")])
                .args(["--dashboard-users", "4", "--dashboard-refresh", "1s"])
                .args(["--freshness-every", "1s", "--visible-timeout", "4m"])
                .args(["--backlog", &BACKLOG.to_string()])
                .args(services.iter().flat_map(|s| ["--service-pid", s.as_str()]))
                .arg("--out-dir")
                .arg(&out_dir)
                .envs(env)
                .envs(ingest_env)
                .env("FLOWHOUSE_LOG_FORMAT", "text")
                .output()
                .expect("run flowhouse loadtest run")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "loadtest run failed ({}):\n{stdout}\n{}\ningest log:\n{}\nendpoint log:\n{}\nquery API log:\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr),
        std::fs::read_to_string(out_dir.join("ingest.log")).unwrap_or_default(),
        endpoint_service.log_text(),
        query_service.log_text()
    );

    let report = read_json(&out_dir.join("report.json"));
    let context = format!("report:\n{report:#}\nstdout:\n{stdout}");
    assert_eq!(report["verified"], true, "{context}");
    assert_eq!(report["mismatches"], serde_json::json!([]), "{context}");
    assert_eq!(report["events_sent"], MESSAGES, "{context}");
    assert_eq!(report["produce"]["messages_acked"], MESSAGES, "{context}");
    assert_eq!(report["produce"]["messages_failed"], 0, "{context}");
    let workload = &report["workload"];
    let (events, logs) = (
        workload["events"].as_u64().unwrap(),
        workload["logs"].as_u64().unwrap(),
    );
    assert_eq!(
        events + logs + workload["duplicates_sent"].as_u64().unwrap(),
        MESSAGES,
        "the generator's truth counts every message sent: {context}"
    );
    assert!(events > 0 && logs > 0, "{context}");
    // Every field the benchmark reads is there.
    for field in [
        "events_per_sec",
        "live_vs_produced",
        "backlog_drain_per_sec",
        "backlog_drain_vs_broker",
        "backlog_drain_vs_raw_insert",
        "freshness_p99_ms",
        "freshness_dashboard_p99_ms",
        "dashboard_p50_ms",
        "dashboard_p99_ms",
        "dashboard_max_ms",
        "uncached_idle_p50_ms",
        "cache_hit_rate",
    ] {
        assert!(report[field].is_number(), "{field} missing: {context}");
    }
    for (field, service) in [
        ("cpu_us_per_msg", "ingest"),
        ("cpu_us_per_msg", "endpoint"),
        ("peak_rss_mb", "ingest"),
        ("peak_rss_mb", "endpoint"),
        ("peak_rss_mb", "query-api"),
    ] {
        assert!(
            report[field][service].as_f64().is_some_and(|v| v > 0.0),
            "{field}.{service} missing: {context}"
        );
    }
    // The broker drain read exactly the backlog's offsets; the raw insert wrote exactly its
    // rows; ingest drained all of it.
    let backlog = report["backlog"]["messages"].as_u64().unwrap();
    assert!(backlog > 0, "{context}");
    for baseline in ["broker_drain", "raw_insert"] {
        assert_eq!(
            report["baselines"][baseline]["items"], backlog,
            "{baseline}: {context}"
        );
    }
    assert_eq!(report["backlog"]["drain"]["items"], backlog, "{context}");
    assert!(
        report["dashboards"]["requests"].as_u64().unwrap() > 0,
        "{context}"
    );
    for file in [
        "truth.json",
        "throughput.png",
        "freshness.png",
        "latency.png",
    ] {
        assert!(out_dir.join(file).is_file(), "{file} was not written");
    }

    // And ClickHouse itself holds exactly what the generator says was sent.
    let client = world.stack.clickhouse_client(&world.db);
    let tenants: Vec<String> = read_json(&out_dir.join("truth.json"))["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tenant"]["workspace_id"].as_str().unwrap().to_string())
        .collect();
    let count = |sql: &'static str| {
        let (client, tenants) = (client.clone(), tenants.clone());
        async move {
            client
                .query(sql)
                .param("ws", tenants)
                .fetch_one::<u64>()
                .await
                .expect(sql)
        }
    };
    assert_eq!(
        count("SELECT uniqExact(id) FROM events WHERE workspace_id IN {ws:Array(UUID)}").await,
        events
    );
    assert_eq!(
        count("SELECT count() FROM logs WHERE workspace_id IN {ws:Array(UUID)}").await,
        logs
    );
    for service in [&mut endpoint_service, &mut query_service] {
        assert_eq!(
            service.terminate(Duration::from_secs(60)),
            Some(0),
            "a service did not stop cleanly:\n{}",
            service.log_text()
        );
    }
    world
        .stack
        .clickhouse
        .server_client()
        .query(&format!("DROP DATABASE IF EXISTS {}", world.db))
        .execute()
        .await
        .expect("drop the test database");
}
