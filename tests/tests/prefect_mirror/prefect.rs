//! A real Prefect server, and what the test asks its API.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use flowhouse_tests::{free_port, prefect_python, workspace_root};
use serde_json::{Value, json};

use crate::processes::Background;
use crate::rfc3339;

/// A real Prefect server on a free loopback port, its SQLite database in a temporary home.
pub struct Prefect {
    pub port: u16,
    pub home: tempfile::TempDir,
    pub server: Option<Background>,
    pub http: reqwest::Client,
}

impl Prefect {
    pub fn new() -> Self {
        Self {
            port: free_port(),
            home: tempfile::tempdir().unwrap(),
            server: None,
            http: reqwest::Client::new(),
        }
    }

    pub fn api(&self) -> String {
        format!("http://127.0.0.1:{}/api", self.port)
    }

    /// The settings every Prefect process of the test runs with.
    pub fn env(&self, command: &mut Command) {
        command
            .env("PREFECT_API_URL", self.api())
            .env("PREFECT_HOME", self.home.path().join("client"))
            .env("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
            .env("PREFECT_LOGGING_LEVEL", "DEBUG")
            .env("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")
            .env("PREFECT_WORKER_QUERY_SECONDS", "1");
    }

    pub fn start(&mut self) {
        let mut command = Command::new(prefect_python());
        command
            .args(["-m", "prefect", "server", "start", "--host", "127.0.0.1"])
            .args(["--port", &self.port.to_string()])
            .env("PREFECT_HOME", self.home.path().join("server"))
            .env("PREFECT_UI_ENABLED", "false")
            .env("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
            // The live log stream is off by default; on here so the mirror's `/logs/out` path
            // is exercised (the backfills cover a server that leaves it off).
            .env("PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED", "true")
            .env("PREFECT_SERVER_LOGS_STREAM_PUBLISHING_ENABLED", "true");
        let log = self
            .home
            .path()
            .join(format!("server-{}.log", Utc::now().timestamp_millis()));
        self.server = Some(Background::spawn("prefect server", command, log));
    }

    pub async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Ok(response) = self.http.get(format!("{}/health", self.api())).send().await
                && response.status() == 200
            {
                return;
            }
            let server = self.server.as_mut().expect("started");
            assert!(
                matches!(server.child.try_wait(), Ok(None)),
                "the Prefect server exited:\n{}",
                server.log_tail()
            );
            assert!(
                Instant::now() < deadline,
                "the Prefect server did not answer in 180 s:\n{}",
                server.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.stop(Duration::from_secs(20));
        }
    }

    /// `tests/prefect/flows.py <args>` as a background process.
    pub fn flows(&self, name: &str, args: &[&str]) -> Background {
        let mut command = Command::new(prefect_python());
        command
            .arg(workspace_root().join("tests/prefect/flows.py"))
            .args(args);
        self.env(&mut command);
        let log = self
            .home
            .path()
            .join(format!("{name}-{}.log", Utc::now().timestamp_millis()));
        Background::spawn(name, command, log)
    }

    pub fn worker(&self, pool: &str) -> Background {
        let mut command = Command::new(prefect_python());
        command.args([
            "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process",
        ]);
        self.env(&mut command);
        Background::spawn(
            "prefect worker",
            command,
            self.home.path().join("worker.log"),
        )
    }

    /// Prefect's answer; a 5xx (SQLite busy under load answers 503) is asked again a few times.
    pub async fn post(&self, path: &str, body: Value) -> Value {
        for attempt in 1.. {
            let response = self
                .http
                .post(format!("{}{path}", self.api()))
                .json(&body)
                .send()
                .await
                .unwrap_or_else(|e| panic!("Prefect {path}: {e}"));
            let status = response.status();
            let text = response.text().await.unwrap();
            if status.is_server_error() && attempt < 5 {
                eprintln!("Prefect {path}: {status}; asking again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            assert!(status.is_success(), "Prefect {path}: {status}: {text}");
            return serde_json::from_str(&text).unwrap();
        }
        unreachable!("the loop returns")
    }

    /// Every item of an offset-paged Prefect list route.
    pub async fn all(&self, path: &str, mut body: Value) -> Vec<Value> {
        let mut items = Vec::new();
        loop {
            body["offset"] = json!(items.len());
            body["limit"] = json!(200);
            let page = self.post(path, body.clone()).await;
            let page = page.as_array().expect("a list").clone();
            let full = page.len() == 200;
            items.extend(page);
            if !full {
                return items;
            }
        }
    }

    pub async fn event_ids(&self, since: DateTime<Utc>, until: DateTime<Utc>) -> BTreeSet<String> {
        let filter = json!({"occurred": {"since": rfc3339(since), "until": rfc3339(until)},
                            "order": "ASC"});
        let mut page = self
            .post("/events/filter", json!({"filter": filter, "limit": 50}))
            .await;
        let mut ids = BTreeSet::new();
        loop {
            for event in page["events"].as_array().unwrap() {
                ids.insert(event["id"].as_str().unwrap().to_string());
            }
            let Some(next) = page["next_page"].as_str() else {
                return ids;
            };
            // Prefect's token is raw base64 in the URL; send it encoded.
            let token = next.split_once("page-token=").unwrap().1;
            page = self
                .http
                .get(format!("{}/events/filter/next", self.api()))
                .query(&[("page-token", token)])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        }
    }

    pub async fn events_of(&self, resource: &str) -> Vec<Value> {
        let filter = json!({"resource": {"id": [resource]}, "order": "ASC",
                            "occurred": {"since": "2000-01-01T00:00:00Z"}});
        let page = self
            .post("/events/filter", json!({"filter": filter, "limit": 50}))
            .await;
        page["events"].as_array().unwrap().clone()
    }
}
