//! Support for the end-to-end tests: where the stack is, and small helpers.
//!
//! Every test reaches the stack only through the exported variables (`CLICKHOUSE_URL`,
//! `CLICKHOUSE_USER`, `CLICKHOUSE_PASSWORD`, `KAFKA_BROKERS`), so the same tests run unchanged
//! against a real ClickHouse server and a real Kafka cluster. `make test` starts the local stack
//! and exports them; tests that stop and start a component (fault tests) also need
//! `FLOWHOUSE_STACK_DIR`, which only the local stack exports.

pub mod browser;
pub mod fixtures;
pub mod served;
pub mod webhook;

use std::path::PathBuf;
use std::process::Command;

use flowhouse_schema::contract::TopicArgs;
use flowhouse_service::clickhouse::ClickHouseArgs;
use flowhouse_service::kafka::KafkaArgs;

/// The running stack, as the environment describes it.
#[derive(Clone, Debug)]
pub struct Stack {
    pub clickhouse: ClickHouseArgs,
    pub kafka: KafkaArgs,
    pub stack_dir: Option<PathBuf>,
}

impl Stack {
    /// Reads the stack's variables; panics with the way to get them when they are missing.
    pub fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!(
                    "{name} is not set. These tests run against a live stack: use `make test`, \
                     or `eval \"$(deploy/local/stack up)\"` first, or point the variables at a \
                     real ClickHouse and Kafka."
                )
            })
        };
        Self {
            clickhouse: ClickHouseArgs {
                url: var("CLICKHOUSE_URL"),
                user: var("CLICKHOUSE_USER"),
                password: std::env::var("CLICKHOUSE_PASSWORD").unwrap_or_default(),
                database: "default".into(),
            },
            kafka: KafkaArgs {
                brokers: var("KAFKA_BROKERS"),
                properties: Vec::new(),
                replication_factor: 1,
                topic_configs: Vec::new(),
            },
            stack_dir: std::env::var_os("FLOWHOUSE_STACK_DIR").map(PathBuf::from),
        }
    }

    /// A client bound to `database`, configured exactly as the services configure theirs.
    pub fn clickhouse_client(&self, database: &str) -> clickhouse::Client {
        ClickHouseArgs {
            database: database.into(),
            ..self.clickhouse.clone()
        }
        .client()
    }

    /// Creates a fresh database for one test, so tests never see each other's rows.
    pub async fn fresh_database(&self, prefix: &str) -> String {
        let name = unique_name(prefix);
        self.clickhouse
            .server_client()
            .query(&format!("CREATE DATABASE {name}"))
            .execute()
            .await
            .expect("create a test database");
        name
    }

    /// A fresh database for one test with every migration applied (single node, 30 days), as
    /// `flowhouse migrate` leaves it.
    /// A producer as the endpoint configures one (idempotent, all replicas).
    pub fn producer(&self) -> rdkafka::producer::FutureProducer {
        self.kafka
            .config()
            .unwrap()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .expect("producer")
    }

    /// Produces `messages` as the endpoint does (the tenant's key and headers, received now)
    /// and returns where each went: (partition, offset).
    pub async fn produce(
        &self,
        topic: &str,
        messages: &[(flowhouse_schema::Tenant, Vec<u8>)],
    ) -> Vec<(i32, i64)> {
        let producer = self.producer();
        let deliveries: Vec<_> = messages
            .iter()
            .map(|(tenant, value)| {
                let envelope = flowhouse_schema::Envelope {
                    tenant: *tenant,
                    received: Some(chrono::Utc::now()),
                };
                let key = envelope.key();
                producer
                    .send_result(
                        rdkafka::producer::FutureRecord::to(topic)
                            .key(&key)
                            .payload(value)
                            .headers(envelope.headers()),
                    )
                    .expect("enqueue")
            })
            .collect();
        let mut placed = Vec::new();
        for delivery in deliveries {
            let delivery = delivery.await.expect("delivery").expect("acknowledged");
            placed.push((delivery.partition, delivery.offset));
        }
        placed
    }

    pub async fn migrated_database(&self, prefix: &str) -> String {
        let name = unique_name(prefix);
        flowhouse_schema::migrate::apply(
            &self.clickhouse.server_client(),
            &flowhouse_schema::ddl::SchemaConfig {
                database: name.clone(),
                topology: flowhouse_schema::ddl::Topology::SingleNode,
                retention_days: 30,
            },
        )
        .await
        .expect("migrate the test database");
        name
    }

    /// The variables a `flowhouse` service process needs to reach this stack, with its own
    /// database and topics.
    pub fn service_env(&self, database: &str, topics: &TopicArgs) -> Vec<(&'static str, String)> {
        vec![
            ("CLICKHOUSE_URL", self.clickhouse.url.clone()),
            ("CLICKHOUSE_USER", self.clickhouse.user.clone()),
            ("CLICKHOUSE_PASSWORD", self.clickhouse.password.clone()),
            ("CLICKHOUSE_DATABASE", database.to_string()),
            ("KAFKA_BROKERS", self.kafka.brokers.clone()),
            ("FLOWHOUSE_EVENTS_TOPIC", topics.events_topic.clone()),
            ("FLOWHOUSE_LOGS_TOPIC", topics.logs_topic.clone()),
            ("FLOWHOUSE_DLQ_TOPIC", topics.dlq_topic.clone()),
            (
                "FLOWHOUSE_TOPIC_PARTITIONS",
                topics.topic_partitions.to_string(),
            ),
        ]
    }

    /// Stops or starts one component of the local stack (`clickhouse` or `kafka`).
    /// Returns false, doing nothing, when the stack is not the local one.
    pub fn control(&self, action: &str, component: &str) -> bool {
        let Some(dir) = &self.stack_dir else {
            return false;
        };
        let script = workspace_root().join("deploy/local/stack");
        let status = Command::new(script)
            .args([action, component])
            .env("FLOWHOUSE_STACK_DIR", dir)
            .status()
            .expect("run deploy/local/stack");
        assert!(
            status.success(),
            "deploy/local/stack {action} {component} failed"
        );
        true
    }
}

/// A name no other test run uses: `prefix_` and 12 hex digits.
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..12])
}

/// The repository root (this crate lives in `tests/`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `flowhouse` binary of this workspace, built (once per test process) if needed, so that
/// process-level tests (kill -9, SIGTERM) run the code under test, never a stale build.
///
/// `FLOWHOUSE_BIN` names a binary built already instead (`make fairness` measures the release
/// build: its latency bound is about the server, not about debug-build parsing).
pub fn flowhouse_binary() -> PathBuf {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(prebuilt) = std::env::var_os("FLOWHOUSE_BIN") {
                let prebuilt = PathBuf::from(prebuilt);
                assert!(
                    prebuilt.exists(),
                    "FLOWHOUSE_BIN={} does not exist",
                    prebuilt.display()
                );
                return prebuilt;
            }
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["build", "--quiet", "-p", "flowhouse", "--bin", "flowhouse"])
                // The tests drive `flowhouse loadtest` too.
                .args(["--features", "loadtest"])
                .current_dir(workspace_root())
                .status()
                .expect("run cargo build");
            assert!(status.success(), "cargo build -p flowhouse failed");
            // Test binaries live in <target>/<profile>/deps; the binary in <target>/<profile>.
            let exe = std::env::current_exe().expect("current exe");
            let profile_dir = exe
                .parent()
                .and_then(|deps| deps.parent())
                .expect("target dir");
            let binary = profile_dir.join("flowhouse");
            assert!(binary.exists(), "{} was not built", binary.display());
            binary
        })
        .clone()
}

/// The python of the venv holding the pinned Prefect SDK and server (the compatibility tests'
/// oracle), installed by the local stack on first use (`deploy/local/stack prefect`).
pub fn prefect_python() -> PathBuf {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let output = Command::new(workspace_root().join("deploy/local/stack"))
                .arg("prefect")
                .output()
                .expect("run deploy/local/stack prefect");
            assert!(
                output.status.success(),
                "deploy/local/stack prefect failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
        })
        .clone()
}

/// A free TCP port on the loopback interface.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A local stack of this test's own (own ClickHouse, own broker, own ports, own data), for
/// tests that stop and start components and so must not disturb the shared one. Deleted, data
/// and all, when dropped. `None` when the shared stack is not the local one (a real cluster):
/// such tests then say so and skip.
pub struct PrivateStack {
    pub stack: Stack,
    dir: tempfile::TempDir,
}

impl PrivateStack {
    /// `kafka_storage` is `memory` or `sqlite` (messages survive a broker restart).
    pub fn start(kafka_storage: &str) -> Option<Self> {
        std::env::var_os("FLOWHOUSE_STACK_DIR")?;
        // In memory when the machine has a tmpfs: the broker's SQLite file syncs on every write.
        let parent = Some(std::path::Path::new("/dev/shm"))
            .filter(|shm| shm.is_dir())
            .map_or_else(std::env::temp_dir, std::path::Path::to_path_buf);
        let dir = tempfile::Builder::new()
            .prefix("flowhouse-private-stack")
            .tempdir_in(parent)
            .expect("temp dir");
        let output = Command::new(workspace_root().join("deploy/local/stack"))
            .arg("up")
            .env("FLOWHOUSE_STACK_DIR", dir.path())
            .env("FLOWHOUSE_KAFKA_STORAGE", kafka_storage)
            .output()
            .expect("run deploy/local/stack up");
        assert!(
            output.status.success(),
            "private stack failed to start:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let exports: std::collections::HashMap<String, String> =
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .filter_map(|line| line.strip_prefix("export "))
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let stack = Stack {
            clickhouse: ClickHouseArgs {
                url: exports["CLICKHOUSE_URL"].clone(),
                user: exports["CLICKHOUSE_USER"].clone(),
                password: exports["CLICKHOUSE_PASSWORD"].clone(),
                database: "default".into(),
            },
            kafka: KafkaArgs {
                brokers: exports["KAFKA_BROKERS"].clone(),
                properties: Vec::new(),
                replication_factor: 1,
                topic_configs: Vec::new(),
            },
            stack_dir: Some(dir.path().to_path_buf()),
        };
        Some(Self { stack, dir })
    }
}

impl Drop for PrivateStack {
    fn drop(&mut self) {
        let _ = Command::new(workspace_root().join("deploy/local/stack"))
            .arg("reset")
            .env("FLOWHOUSE_STACK_DIR", self.dir.path())
            .status();
    }
}

/// A `flowhouse` subcommand running as a child process, with its log in a file; killed when
/// dropped.
pub struct ServiceProcess {
    child: std::process::Child,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ServiceProcess {
    /// Starts `flowhouse <args>` with `env` added to (and overriding) this process's environment.
    pub fn start(args: &[&str], env: &[(&str, String)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("service.log");
        let file = std::fs::File::create(&log).expect("create log");
        let mut command = Command::new(flowhouse_binary());
        command
            .args(args)
            .env("FLOWHOUSE_LOG_FORMAT", "text")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(file.try_clone().expect("clone log handle"))
            .stderr(file);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("spawn flowhouse");
        Self {
            child,
            log,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to flush or commit anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `timeout` for a clean exit; returns its exit code.
    pub fn terminate(&mut self, timeout: std::time::Duration) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }

    /// Waits up to `timeout` for the process to end by itself; its exit status.
    pub async fn wait_exit(
        &mut self,
        timeout: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        None
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The log so far, for assertions and for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `{admin}/readyz` answers 200 (`admin`: the service's admin listener, as
    /// `http://host:port`); fails with the service's log if it exits or is not ready `within`
    /// (a liveness bound, not a performance assertion).
    pub async fn wait_ready(&mut self, admin: &str, within: std::time::Duration) {
        let deadline = std::time::Instant::now() + within;
        let http = reqwest::Client::new();
        loop {
            if let Ok(response) = http.get(format!("{admin}/readyz")).send().await
                && response.status() == 200
            {
                return;
            }
            assert!(
                self.is_running(),
                "the service behind {admin} exited:\n{}",
                self.log_text()
            );
            assert!(
                std::time::Instant::now() < deadline,
                "the service behind {admin} is not ready after {within:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
