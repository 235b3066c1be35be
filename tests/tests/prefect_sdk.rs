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
use std::time::Instant;

use flowhouse_tests::served::Served;
use flowhouse_tests::{prefect_python, unique_name, workspace_root};
use serde_json::Value;

/// Runs the SDK program with exactly `settings` as its Prefect configuration.
fn sdk(served: &Served, args: &[&str], settings: &[(&str, String)]) -> Value {
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
        served.process.log_text()
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|error| panic!("the SDK program's report is not JSON ({error}):\n{stdout}"))
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
    let served = Served::start(&[]).await;
    let started = Instant::now();

    // (a) The self-hosted client with only PREFECT_API_KEY sends no credential on the socket.
    let refused = sdk(
        &served,
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
    let self_hosted = sdk(
        &served,
        &["roundtrip", &unique_name("selfhosted"), &count.to_string()],
        &[
            ("PREFECT_API_URL", format!("{}/api", served.base())),
            ("PREFECT_API_AUTH_STRING", served.key.clone()),
        ],
    );
    check_roundtrip(&self_hosted, count, "PrefectEventsClient");

    // (c) Cloud mode: the workspace URL under PREFECT_CLOUD_API_URL, bearer keys.
    let cloud = sdk(
        &served,
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
    let contract = sdk(
        &served,
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
