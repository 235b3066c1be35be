//! The services a chaos run owns, because it kills and restarts them: two `flowhouse ingest`
//! instances in one consumer group, and `flowhouse endpoint`, started from the `flowhouse`
//! binary as separate processes with their own admin ports (as `make demo` starts them). The
//! query API stays outside: the run only reads through it. Each service logs to
//! `<dir>/<name>.log`, appended across restarts.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

/// How long a started service may take to answer `/readyz` (a debug build, a busy machine).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a SIGTERM'd service may take to finish what it holds before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(90);

/// What the services are started with.
#[derive(Clone, Debug)]
pub struct ServicesConfig {
    pub binary: PathBuf,
    pub log_dir: PathBuf,
    /// Variables every service gets (ClickHouse, Kafka, topics), on top of this process's.
    pub env: Vec<(String, String)>,
    pub ingest_instances: usize,
    pub ingest_group: String,
    pub session_timeout: Duration,
    /// `host:port` the endpoint listens on (from the run's `--endpoint-url`).
    pub endpoint_listen: String,
    /// `host:port` of the endpoint's admin routes, the same across its restarts (the run
    /// watches its `/readyz`).
    pub endpoint_admin: String,
    pub keys_file: PathBuf,
}

/// One running service process.
struct Running {
    name: String,
    child: Child,
    /// `host:port` of its admin routes (`/readyz`).
    admin: String,
}

impl Running {
    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }
}

pub struct Services {
    config: ServicesConfig,
    ingest: Vec<Option<Running>>,
    endpoint: Option<Running>,
    http: reqwest::Client,
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .context("no free port")?
        .port())
}

pub(crate) fn open_log(dir: &Path, name: &str, headline: &str) -> anyhow::Result<std::fs::File> {
    use std::io::Write as _;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("{name}.log"));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(file, "\n=== {headline} at {} ===", chrono::Utc::now())?;
    Ok(file)
}

impl Services {
    /// Starts every instance and waits until each is ready.
    pub async fn start(config: ServicesConfig) -> anyhow::Result<Self> {
        let mut services = Self {
            ingest: (0..config.ingest_instances).map(|_| None).collect(),
            endpoint: None,
            config,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
        };
        for instance in 0..services.ingest.len() {
            services.start_ingest(instance)?;
        }
        services.start_endpoint()?;
        let names: Vec<String> = (0..services.ingest.len())
            .map(|i| format!("ingest-{i}"))
            .chain(["endpoint".to_string()])
            .collect();
        for name in names {
            services.wait_ready(&name).await?;
        }
        Ok(services)
    }

    fn spawn(&self, name: &str, args: &[&str], env: &[(&str, String)]) -> anyhow::Result<Child> {
        let log = open_log(&self.config.log_dir, name, &format!("starting {name}"))?;
        let mut command = Command::new(&self.config.binary);
        command
            .args(args)
            .envs(
                self.config
                    .env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // A run that fails halfway leaves no service behind.
            .kill_on_drop(true);
        command.spawn().with_context(|| {
            format!(
                "cannot start {} {}",
                self.config.binary.display(),
                args.join(" ")
            )
        })
    }

    /// Starts ingest instance `instance` (on a fresh admin port); returns its pid.
    pub fn start_ingest(&mut self, instance: usize) -> anyhow::Result<u32> {
        let name = format!("ingest-{instance}");
        let admin = format!("127.0.0.1:{}", free_port()?);
        let session = humantime::format_duration(self.config.session_timeout).to_string();
        let child = self.spawn(
            &name,
            &["ingest"],
            &[
                ("FLOWHOUSE_INGEST_ADMIN_LISTEN", admin.clone()),
                ("FLOWHOUSE_INGEST_GROUP", self.config.ingest_group.clone()),
                ("FLOWHOUSE_INGEST_SESSION_TIMEOUT", session),
            ],
        )?;
        let running = Running { name, child, admin };
        let pid = running.pid();
        self.ingest[instance] = Some(running);
        Ok(pid)
    }

    fn start_endpoint(&mut self) -> anyhow::Result<u32> {
        let listen = self.config.endpoint_listen.clone();
        let admin = self.config.endpoint_admin.clone();
        let child = self.spawn(
            "endpoint",
            &["endpoint"],
            &[
                ("FLOWHOUSE_ENDPOINT_LISTEN", listen),
                ("FLOWHOUSE_ENDPOINT_ADMIN_LISTEN", admin.clone()),
                (
                    "FLOWHOUSE_KEYS_FILE",
                    self.config.keys_file.display().to_string(),
                ),
                // The run measures the pipeline, not the rate limit (as `make demo` does).
                ("FLOWHOUSE_ENDPOINT_RATE_LIMIT", "0".into()),
            ],
        )?;
        let running = Running {
            name: "endpoint".into(),
            child,
            admin,
        };
        let pid = running.pid();
        self.endpoint = Some(running);
        Ok(pid)
    }

    fn running(&mut self, name: &str) -> anyhow::Result<&mut Running> {
        let slot = if name == "endpoint" {
            &mut self.endpoint
        } else {
            let instance: usize = name
                .strip_prefix("ingest-")
                .and_then(|i| i.parse().ok())
                .with_context(|| format!("no service {name}"))?;
            self.ingest
                .get_mut(instance)
                .with_context(|| format!("no service {name}"))?
        };
        slot.as_mut()
            .with_context(|| format!("{name} is not running"))
    }

    /// Whether `/readyz` of `name` answers 200 now.
    pub async fn is_ready(&mut self, name: &str) -> bool {
        let Ok(running) = self.running(name) else {
            return false;
        };
        let url = format!("http://{}/readyz", running.admin);
        let http = self.http.clone();
        matches!(http.get(url).send().await, Ok(r) if r.status().is_success())
    }

    /// Waits until `name` is ready; fails if it exits or takes longer than a generous bound.
    pub async fn wait_ready(&mut self, name: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.is_ready(name).await {
                return Ok(());
            }
            let running = self.running(name)?;
            if let Some(status) = running.child.try_wait()? {
                bail!(
                    "{name} exited ({status}) before it was ready; see {}",
                    self.log_path(name).display()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{name} is not ready after {READY_TIMEOUT:?}; see {}",
                    self.log_path(name).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.config.log_dir.join(format!("{name}.log"))
    }

    /// kill -9 of ingest instance `instance`; returns the pid it had.
    pub async fn kill_ingest(&mut self, instance: usize) -> anyhow::Result<u32> {
        let mut running = self.ingest[instance]
            .take()
            .with_context(|| format!("ingest-{instance} is not running"))?;
        let pid = running.pid();
        running.child.start_kill()?;
        running.child.wait().await?;
        Ok(pid)
    }

    /// SIGTERM, then waits for the exit (killed after a bound); returns the exit code.
    async fn terminate(running: &mut Running) -> anyhow::Result<Option<i32>> {
        let pid = running.pid().to_string();
        // Through kill(1): this crate has no signal bindings, and SIGTERM is the clean stop.
        let _ = Command::new("kill").args(["-TERM", &pid]).status().await?;
        match tokio::time::timeout(STOP_TIMEOUT, running.child.wait()).await {
            Ok(status) => Ok(status?.code()),
            Err(_) => {
                tracing::warn!(name = running.name, "ignored SIGTERM: killing it");
                running.child.start_kill()?;
                running.child.wait().await?;
                Ok(None)
            }
        }
    }

    /// Stops the endpoint cleanly and starts a new one on the same address; returns the new
    /// pid once it has started (not waiting for it to be ready).
    pub async fn restart_endpoint(&mut self) -> anyhow::Result<(u32, u32)> {
        let mut running = self
            .endpoint
            .take()
            .context("the endpoint is not running")?;
        let old = running.pid();
        let code = Self::terminate(&mut running).await?;
        if code != Some(0) {
            tracing::warn!(?code, "the endpoint did not exit cleanly on SIGTERM");
        }
        let new = self.start_endpoint()?;
        Ok((old, new))
    }

    /// Stops every service cleanly; returns those that did not exit with 0.
    pub async fn stop(mut self) -> Vec<String> {
        let mut unclean = Vec::new();
        let all = self
            .ingest
            .iter_mut()
            .chain(std::iter::once(&mut self.endpoint))
            .filter_map(Option::take);
        for mut running in all {
            match Self::terminate(&mut running).await {
                Ok(Some(0)) => {}
                Ok(code) => unclean.push(format!("{} exited with {code:?}", running.name)),
                Err(error) => unclean.push(format!("{}: {error:#}", running.name)),
            }
        }
        unclean
    }

    /// `name=pid` of what runs now.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.ingest
            .iter()
            .chain(std::iter::once(&self.endpoint))
            .flatten()
            .map(|r| (r.name.clone(), r.pid()))
            .collect()
    }
}
