//! The real Prefect 3 SDK (pinned, in the stack's Prefect venv) against `flowhouse serve`,
//! configured exactly as the README's "Use with Prefect" section says, and nothing else:
//!
//! - the self-hosted client with only `PREFECT_API_KEY` is refused with a reason that names
//!   the two settings that work;
//! - self-hosted (`PREFECT_API_AUTH_STRING=<key>`, `PREFECT_API_URL=http://host:port/api` in
//!   single-tenant mode) and Cloud mode (`PREFECT_API_KEY`, `PREFECT_CLOUD_API_URL=<flowhouse>/api`,
//!   the workspace URL): events through `get_events_client()`, logs through `create_logs` and
//!   the SDK's `APILogHandler`, read back with `read_events` (+ `next_page`), `read_logs`, and
//!   live through `get_events_subscriber` and `get_logs_subscriber`; every item sent is read
//!   back, exactly, every way;
//! - Prefect's own pydantic models parse Flowhouse's answers (`EventPage`, `EventCount`, `Log`,
//!   `HistoryResponse`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use flowhouse_keys::Scope;
use flowhouse_schema::Tenant;
use flowhouse_schema::contract::TopicArgs;
use flowhouse_tests::{
    ServiceProcess, Stack, free_port, prefect_python, unique_name, workspace_root,
};
use serde_json::Value;
use uuid::Uuid;

/// `flowhouse serve` on a free port, with its own database, topics and keys.
struct Served {
    process: ServiceProcess,
    port: u16,
    tenant: Tenant,
    /// `write` and `read` on `tenant`.
    key: String,
    /// A key of another tenant.
    other_key: String,
    database: String,
    stack: Stack,
    _keys_dir: tempfile::TempDir,
}

impl Served {
    async fn start() -> Self {
        let stack = Stack::from_env();
        let database = unique_name("prefect_sdk");
        let topics = TopicArgs {
            events_topic: unique_name("events"),
            logs_topic: unique_name("logs"),
            dlq_topic: unique_name("dlq"),
            topic_partitions: 2,
        };
        let keys_dir = tempfile::tempdir().unwrap();
        let keys_file = keys_dir.path().join("keys.json");
        let tenant = Tenant {
            account_id: Uuid::new_v4(),
            workspace_id: Uuid::new_v4(),
        };
        let key = flowhouse_keys::cli::create(
            &keys_file,
            tenant.account_id,
            vec![tenant.workspace_id],
            vec![Scope::Write, Scope::Read],
            Some("prefect sdk".into()),
        )
        .unwrap();
        let other_key = flowhouse_keys::cli::create(
            &keys_file,
            Uuid::new_v4(),
            vec![Uuid::new_v4()],
            vec![Scope::Write, Scope::Read],
            Some("other tenant".into()),
        )
        .unwrap();
        let port = free_port();
        let mut env = stack.service_env(&database, &topics);
        env.extend([
            ("FLOWHOUSE_LISTEN", format!("127.0.0.1:{port}")),
            ("FLOWHOUSE_KEYS_FILE", keys_file.display().to_string()),
            ("FLOWHOUSE_INGEST_GROUP", unique_name("ingest")),
            (
                "FLOWHOUSE_DEFAULT_TENANT",
                format!("{}/{}", tenant.account_id, tenant.workspace_id),
            ),
            ("FLOWHOUSE_INGEST_BATCH_MAX_AGE", "200ms".into()),
            ("FLOWHOUSE_QUERY_CACHE_FRESH", "1s".into()),
        ]);
        let process = ServiceProcess::start(&["serve"], &env);
        let served = Self {
            process,
            port,
            tenant,
            key,
            other_key,
            database,
            stack,
            _keys_dir: keys_dir,
        };
        served.wait_ready().await;
        served
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn workspace_url(&self) -> String {
        format!(
            "{}/api/accounts/{}/workspaces/{}",
            self.base(),
            self.tenant.account_id,
            self.tenant.workspace_id
        )
    }

    async fn wait_ready(&self) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(response) = http.get(format!("{}/readyz", self.base())).send().await
                && response.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "flowhouse serve not ready in 120 s:\n{}",
                self.process.log_text()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Runs the SDK program with exactly `settings` as its Prefect configuration.
    fn sdk(&self, args: &[&str], settings: &[(&str, String)]) -> Value {
        let home = tempfile::tempdir().unwrap();
        let mut command = Command::new(prefect_python());
        command
            .arg(workspace_root().join("tests/prefect/sdk_client.py"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .env("PREFECT_HOME", home.path().join(".prefect"))
            .env("PREFECT_LOGGING_LEVEL", "WARNING");
        for (name, value) in settings {
            command.env(name, value);
        }
        let output = command.output().expect("run the Prefect SDK program");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "the SDK program failed ({args:?}):\n{stdout}\n{}\n--- flowhouse serve ---\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.process.log_text()
        );
        let last = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(last).unwrap_or_else(|error| {
            panic!("the SDK program's report is not JSON ({error}):\n{stdout}")
        })
    }

    async fn finish(self) {
        self.stack
            .clickhouse_client("default")
            .query(&format!("DROP DATABASE IF EXISTS {}", self.database))
            .execute()
            .await
            .unwrap();
    }
}

fn sorted(values: &Value) -> Vec<String> {
    let mut items: Vec<String> = values
        .as_array()
        .expect("a list")
        .iter()
        .map(Value::to_string)
        .collect();
    items.sort();
    items
}

/// The log fields both sides know (the read side adds ids and timestamps).
fn log_keys(logs: &Value, min_level: i64) -> Vec<String> {
    let mut keys: Vec<String> = logs
        .as_array()
        .expect("a list")
        .iter()
        .filter(|log| log["level"].as_i64().unwrap() >= min_level)
        .map(|log| {
            format!(
                "{}|{}|{}|{}",
                log["name"], log["level"], log["message"], log["flow_run_id"]
            )
        })
        .collect();
    keys.sort();
    keys
}

fn check_roundtrip(report: &Value, count: usize, client: &str) {
    assert_eq!(report["events_client"], client, "{report}");
    let sent = sorted(&report["sent_events"]);
    assert_eq!(sent.len(), count);
    assert_eq!(sorted(&report["read_events"]), sent, "read_events differs");
    assert_eq!(
        sorted(&report["live_events"]),
        sent,
        "the subscriber's events differ"
    );
    assert!(
        report["event_pages"].as_u64().unwrap() >= count.div_ceil(7) as u64,
        "read_events was not paged through next_page: {}",
        report["event_pages"]
    );
    let sent_logs = log_keys(&report["sent_logs"], 0);
    assert_eq!(sent_logs.len(), 2 * count);
    assert_eq!(
        log_keys(&report["read_logs"], 0),
        sent_logs,
        "read_logs differs"
    );
    assert_eq!(
        log_keys(&report["read_logs_ge_40"], 0),
        log_keys(&report["sent_logs"], 40),
        "read_logs with level >= 40 differs"
    );
    assert_eq!(
        log_keys(&report["live_logs"], 0),
        sent_logs,
        "the log subscriber differs"
    );
}

async fn stored_events(served: &Served) -> u64 {
    served
        .stack
        .clickhouse_client(&served.database)
        .query(
            "SELECT count() FROM events FINAL WHERE account_id = ? AND workspace_id = ? \
             AND startsWith(event, 'flowhouse.test.')",
        )
        .bind(served.tenant.account_id)
        .bind(served.tenant.workspace_id)
        .fetch_one()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_prefect_sdk_works_unchanged_against_flowhouse_serve() {
    let served = Served::start().await;
    let started = Instant::now();

    // (a) The self-hosted client with only PREFECT_API_KEY sends no credential on the socket.
    let refused = served.sdk(
        &["key-only"],
        &[
            ("PREFECT_API_URL", format!("{}/api", served.base())),
            ("PREFECT_API_KEY", served.key.clone()),
        ],
    );
    let error = refused["error"]
        .as_str()
        .expect("the SDK reported an error");
    assert!(
        error.contains("PREFECT_API_AUTH_STRING=<key>") && error.contains("PREFECT_CLOUD_API_URL"),
        "the refusal must name the settings that work: {error}"
    );

    // (b) Self-hosted, single-tenant URL, auth string = the key.
    let count = 40;
    let self_hosted = served.sdk(
        &["roundtrip", &unique_name("selfhosted"), &count.to_string()],
        &[
            ("PREFECT_API_URL", format!("{}/api", served.base())),
            ("PREFECT_API_AUTH_STRING", served.key.clone()),
        ],
    );
    check_roundtrip(&self_hosted, count, "PrefectEventsClient");

    // (c) Cloud mode: the workspace URL under PREFECT_CLOUD_API_URL, bearer keys.
    let cloud = served.sdk(
        &["roundtrip", &unique_name("cloud"), &count.to_string()],
        &[
            ("PREFECT_API_URL", served.workspace_url()),
            ("PREFECT_CLOUD_API_URL", format!("{}/api", served.base())),
            ("PREFECT_API_KEY", served.key.clone()),
        ],
    );
    check_roundtrip(&cloud, count, "PrefectCloudEventsClient");
    assert_eq!(stored_events(&served).await, 2 * count as u64);

    // Prefect's own models parse Flowhouse's answers.
    let contract = served.sdk(
        &["contract", &served.workspace_url(), &served.key],
        &[("PREFECT_API_URL", served.workspace_url())],
    );
    for (model, result) in contract.as_object().unwrap() {
        assert_eq!(result["status"], 200, "{model}: {result}");
        assert!(
            result.get("error").is_none(),
            "{model} does not parse: {result}"
        );
    }
    let pages: BTreeMap<&str, u64> = contract
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str(), v["parsed"].as_u64().unwrap_or(0)))
        .collect();
    assert_eq!(pages["EventPage"], 1);
    assert!(pages["EventCount(event)"] >= 3, "{pages:?}");

    // Another tenant's key reads nothing of this one, whichever URL shape it uses.
    let http = reqwest::Client::new();
    for url in [
        format!("{}/events/filter", served.workspace_url()),
        format!("{}/api/events/filter", served.base()),
    ] {
        let response = http
            .post(&url)
            .bearer_auth(&served.other_key)
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{url}");
    }
    eprintln!("Prefect SDK round trips took {:?}", started.elapsed());
    served.finish().await;
}

#[test]
fn the_readme_shows_the_settings_the_tests_use() {
    let readme = std::fs::read_to_string(Path::new(&workspace_root()).join("README.md")).unwrap();
    let section = readme
        .split("## Use with Prefect")
        .nth(1)
        .expect("README has a \"Use with Prefect\" section");
    for setting in [
        "flowhouse serve",
        "PREFECT_API_URL=http://127.0.0.1:4200/api",
        "PREFECT_API_AUTH_STRING=",
        "FLOWHOUSE_DEFAULT_TENANT=",
        "PREFECT_CLOUD_API_URL=http://127.0.0.1:4200/api",
        "PREFECT_API_KEY=",
    ] {
        assert!(
            section.contains(setting),
            "the section does not show {setting}"
        );
    }
}
