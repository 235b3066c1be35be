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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use flowhouse_keys::Scope;
use flowhouse_schema::Tenant;
use flowhouse_schema::contract::TopicArgs;
use flowhouse_tests::{
    ServiceProcess, Stack, free_port, prefect_python, unique_name, workspace_root,
};
use serde_json::{Value, json};
use uuid::Uuid;

/// How long Prefect and Flowhouse may take to agree once Prefect is quiet.
const AGREE_WITHIN: Duration = Duration::from_secs(90);
/// How long Prefect's answers must stay unchanged to count as quiet.
const QUIET_FOR: Duration = Duration::from_secs(3);
const TERMINAL: [&str; 4] = ["COMPLETED", "FAILED", "CRASHED", "CANCELLED"];

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A child process in a process group of its own (Prefect's server and worker start children),
/// stopped by signalling that group.
struct Background {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Background {
    fn spawn(name: &str, mut command: Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("create log");
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        command
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null());
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Self {
            name: name.into(),
            child,
            log,
        }
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
    }

    /// SIGTERM to the group, SIGKILL if it is still there after `grace`.
    fn stop(&mut self, grace: Duration) {
        self.signal("-TERM");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.signal("-KILL");
        let _ = self.child.wait();
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits for the process to exit on its own; its last stdout line as JSON.
    async fn report(&mut self, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(
                    status.success(),
                    "{} failed:\n{}",
                    self.name,
                    self.log_tail()
                );
                let text = std::fs::read_to_string(&self.log).unwrap();
                let last = text
                    .lines()
                    .rev()
                    .find(|l| l.starts_with('{'))
                    .unwrap_or_default();
                return serde_json::from_str(last)
                    .unwrap_or_else(|e| panic!("{}: no JSON report ({e}):\n{text}", self.name));
            }
            assert!(
                Instant::now() < deadline,
                "{} did not finish in {within:?}:\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// A real Prefect server on a free loopback port, its SQLite database in a temporary home.
struct Prefect {
    port: u16,
    home: tempfile::TempDir,
    server: Option<Background>,
    http: reqwest::Client,
}

impl Prefect {
    fn new() -> Self {
        Self {
            port: free_port(),
            home: tempfile::tempdir().unwrap(),
            server: None,
            http: reqwest::Client::new(),
        }
    }

    fn api(&self) -> String {
        format!("http://127.0.0.1:{}/api", self.port)
    }

    /// The settings every Prefect process of the test runs with.
    fn env(&self, command: &mut Command) {
        command
            .env("PREFECT_API_URL", self.api())
            .env("PREFECT_HOME", self.home.path().join("client"))
            .env("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
            .env("PREFECT_LOGGING_LEVEL", "DEBUG")
            .env("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")
            .env("PREFECT_WORKER_QUERY_SECONDS", "1");
    }

    fn start(&mut self) {
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

    async fn wait_healthy(&mut self) {
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

    fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.stop(Duration::from_secs(20));
        }
    }

    /// `tests/prefect/flows.py <args>` as a background process.
    fn flows(&self, name: &str, args: &[&str]) -> Background {
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

    fn worker(&self, pool: &str) -> Background {
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
    async fn post(&self, path: &str, body: Value) -> Value {
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
    async fn all(&self, path: &str, mut body: Value) -> Vec<Value> {
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

    async fn event_ids(&self, since: DateTime<Utc>, until: DateTime<Utc>) -> BTreeSet<String> {
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

    async fn events_of(&self, resource: &str) -> Vec<Value> {
        let filter = json!({"resource": {"id": [resource]}, "order": "ASC",
                            "occurred": {"since": "2000-01-01T00:00:00Z"}});
        let page = self
            .post("/events/filter", json!({"filter": filter, "limit": 50}))
            .await;
        page["events"].as_array().unwrap().clone()
    }
}

/// `flowhouse serve` with its own database, topics and keys, and a key per tenant.
struct Flowhouse {
    process: ServiceProcess,
    port: u16,
    database: String,
    topics: TopicArgs,
    stack: Stack,
    tenants: Vec<(Tenant, String)>,
    http: reqwest::Client,
    _keys: tempfile::TempDir,
}

impl Flowhouse {
    fn start(tenants: usize) -> Self {
        let stack = Stack::from_env();
        let database = unique_name("prefect_mirror");
        let topics = TopicArgs {
            events_topic: unique_name("events"),
            logs_topic: unique_name("logs"),
            dlq_topic: unique_name("dlq"),
            topic_partitions: 2,
        };
        let keys = tempfile::tempdir().unwrap();
        let keys_file = keys.path().join("keys.json");
        let tenants: Vec<(Tenant, String)> = (0..tenants)
            .map(|_| {
                let tenant = Tenant {
                    account_id: Uuid::new_v4(),
                    workspace_id: Uuid::new_v4(),
                };
                let key = flowhouse_keys::cli::create(
                    &keys_file,
                    tenant.account_id,
                    vec![tenant.workspace_id],
                    vec![Scope::Read],
                    Some("prefect mirror test".into()),
                )
                .unwrap();
                (tenant, key)
            })
            .collect();
        let port = free_port();
        let mut env = stack.service_env(&database, &topics);
        env.extend([
            ("FLOWHOUSE_LISTEN", format!("127.0.0.1:{port}")),
            ("FLOWHOUSE_KEYS_FILE", keys_file.display().to_string()),
            ("FLOWHOUSE_INGEST_GROUP", unique_name("ingest")),
            ("FLOWHOUSE_INGEST_BATCH_MAX_AGE", "200ms".into()),
            ("FLOWHOUSE_QUERY_CACHE_FRESH_SECS", "1".into()),
        ]);
        Self {
            process: ServiceProcess::start(&["serve"], &env),
            port,
            database,
            topics,
            stack,
            tenants,
            http: reqwest::Client::new(),
            _keys: keys,
        }
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Ok(response) = self
                .http
                .get(format!("http://127.0.0.1:{}/readyz", self.port))
                .send()
                .await
                && response.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "flowhouse serve not ready in 180 s:\n{}",
                self.process.log_text()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn base(&self, tenant: usize) -> String {
        let (t, _) = &self.tenants[tenant];
        format!(
            "http://127.0.0.1:{}/api/accounts/{}/workspaces/{}",
            self.port, t.account_id, t.workspace_id
        )
    }

    /// The answer, or the error Flowhouse gave (a 5xx from a busy shared ClickHouse is retried
    /// by the caller; a 4xx fails the test).
    async fn send(&self, tenant: usize, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request.bearer_auth(&self.tenants[tenant].1).send().await?;
        let status = response.status();
        let text = response.text().await?;
        assert!(!status.is_client_error(), "Flowhouse: {status}: {text}");
        anyhow::ensure!(status.is_success(), "Flowhouse answered {status}: {text}");
        Ok(serde_json::from_str(&text)?)
    }

    async fn post(&self, tenant: usize, path: &str, body: Value) -> anyhow::Result<Value> {
        let request = self
            .http
            .post(format!("{}{path}", self.base(tenant)))
            .json(&body);
        self.send(tenant, request).await
    }

    async fn metric(
        &self,
        tenant: usize,
        name: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<Value> {
        let request = self
            .http
            .get(format!("{}/metrics/{name}", self.base(tenant)))
            .query(query);
        self.send(tenant, request).await
    }

    async fn event_ids(
        &self,
        tenant: usize,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> anyhow::Result<BTreeSet<String>> {
        let filter = json!({"occurred": {"since": rfc3339(since), "until": rfc3339(until)},
                            "order": "ASC"});
        let mut page = self
            .post(
                tenant,
                "/events/filter",
                json!({"filter": filter, "limit": 200}),
            )
            .await?;
        let mut ids = BTreeSet::new();
        loop {
            for event in page["events"].as_array().unwrap() {
                ids.insert(event["id"].as_str().unwrap().to_string());
            }
            let Some(next) = page["next_page"].as_str() else {
                return Ok(ids);
            };
            let request = self.http.get(next);
            page = self.send(tenant, request).await?;
        }
    }

    async fn logs(&self, tenant: usize) -> anyhow::Result<Vec<Value>> {
        let mut items: Vec<Value> = Vec::new();
        loop {
            let page = self
                .post(
                    tenant,
                    "/logs/filter",
                    json!({"limit": 200, "offset": items.len()}),
                )
                .await?;
            let page = page.as_array().unwrap().clone();
            let full = page.len() == 200;
            items.extend(page);
            if !full {
                return Ok(items);
            }
        }
    }
}

/// A mirror of the Prefect server into one tenant, as a process.
fn mirror(prefect: &Prefect, flowhouse: &Flowhouse, tenant: usize, admin: u16) -> ServiceProcess {
    let (tenant, _) = flowhouse.tenants[tenant];
    let mut env = flowhouse
        .stack
        .service_env(&flowhouse.database, &flowhouse.topics);
    env.extend([
        ("PREFECT_API_URL", prefect.api()),
        ("FLOWHOUSE_MIRROR_ACCOUNT", tenant.account_id.to_string()),
        (
            "FLOWHOUSE_MIRROR_WORKSPACE",
            tenant.workspace_id.to_string(),
        ),
        (
            "FLOWHOUSE_MIRROR_ADMIN_LISTEN",
            format!("127.0.0.1:{admin}"),
        ),
        ("FLOWHOUSE_MIRROR_INITIAL_BACKFILL", "1h".into()),
        ("FLOWHOUSE_MIRROR_RESYNC_INTERVAL", "3s".into()),
        ("FLOWHOUSE_MIRROR_CHECKPOINT_INTERVAL", "1s".into()),
        ("FLOWHOUSE_MIRROR_RECONNECT_MAX", "2s".into()),
    ]);
    ServiceProcess::start(&["mirror", "prefect"], &env)
}

/// What both sides answer, normalized for comparison.
#[derive(Clone, Debug, PartialEq, Default)]
struct Answers {
    event_ids: BTreeSet<String>,
    /// (id, message, level)
    logs: BTreeSet<(String, String, i64)>,
    history: History,
    /// (state type, state name) → runs whose end time is in the window.
    runs_by_final_state: BTreeMap<(String, String), u64>,
    /// (failed or crashed, terminal), and the rate.
    failures: (u64, u64, Option<String>),
    /// By flow, deployment, work pool: (id, failures), most first.
    top_failing: [Vec<(String, u64)>; 3],
    task_runs_by_state_type: BTreeMap<String, u64>,
    logs_by_level: BTreeMap<u64, u64>,
}

/// The window every check uses.
#[derive(Clone, Copy)]
struct Window {
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    interval_seconds: u64,
}

/// Per interval start: (state type, state name, count).
type History = Vec<(String, BTreeSet<(String, String, u64)>)>;

fn history_of(answer: &Value) -> History {
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

fn history_request(window: Window) -> Value {
    json!({"history_start": rfc3339(window.since), "history_end": rfc3339(window.until),
           "history_interval_seconds": window.interval_seconds})
}

fn rate(failures: u64, total: u64) -> Option<String> {
    (total > 0).then(|| format!("{:.9}", failures as f64 / total as f64))
}

fn in_window(at: &Value, window: Window) -> bool {
    at.as_str()
        .and_then(|t| t.parse::<DateTime<Utc>>().ok())
        .is_some_and(|t| t >= window.since && t < window.until)
}

/// The answers computed from Prefect's own API.
async fn prefect_answers(prefect: &Prefect, window: Window) -> Answers {
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

fn log_key(log: &Value) -> (String, String, i64) {
    (
        log["id"].as_str().unwrap().to_string(),
        log["message"].as_str().unwrap().to_string(),
        log["level"].as_i64().unwrap(),
    )
}

/// The same answers from Flowhouse's API, for `tenant`.
async fn flowhouse_answers(
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
fn assert_same(flowhouse: &Answers, prefect: &Answers, phase: &str) {
    fn part<T: PartialEq + Debug>(name: &str, phase: &str, flowhouse: &T, prefect: &T) {
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
async fn agree(
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
    let flowhouse = Flowhouse::start(2);
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
