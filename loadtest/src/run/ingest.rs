//! The ingest service a `--backlog` run owns: it must start only once the backlog is in the
//! topics, so the run starts it itself (`flowhouse ingest`, from this same binary, with this
//! process's environment: ClickHouse, Kafka, topics, consumer group), logging to
//! `<dir>/ingest.log`, and stops it with SIGTERM at the end.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

use super::chaos::services::{free_port, open_log};

/// A debug build on a busy machine may take a while to answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long it may take to finish what it holds after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(90);

pub struct Ingest {
    child: Child,
    pub pid: u32,
}

impl Ingest {
    /// Starts it and returns at once: its consumption starts before it answers `/readyz`, so
    /// a drain is timed from here. [`Ingest::wait_ready`] checks that it did come up.
    pub fn start(log_dir: &Path) -> anyhow::Result<(Self, String)> {
        let binary = std::env::current_exe().context("cannot find this binary")?;
        let admin = format!("127.0.0.1:{}", free_port()?);
        let log = open_log(log_dir, "ingest", "starting ingest")?;
        let child = Command::new(&binary)
            .arg("ingest")
            .env("FLOWHOUSE_INGEST_ADMIN_LISTEN", &admin)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // A run that fails halfway leaves no ingest behind.
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} ingest", binary.display()))?;
        let pid = child.id().context("ingest exited at once")?;
        Ok((Self { child, pid }, admin))
    }

    pub async fn wait_ready(&mut self, admin: &str, log_dir: &Path) -> anyhow::Result<()> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let ready = client.get(format!("http://{admin}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "ingest exited ({status}) before it was ready; see {}",
                    log_dir.join("ingest.log").display()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "ingest is not ready after {READY_TIMEOUT:?}; see {}",
                    log_dir.join("ingest.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM (through kill(1): this crate has no signal bindings), then the exit; killed
    /// after a bound.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await?;
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    tracing::warn!(%status, "ingest did not exit cleanly on SIGTERM");
                }
            }
            Err(_) => {
                tracing::warn!("ingest ignored SIGTERM: killing it");
                self.child.start_kill()?;
                self.child.wait().await?;
            }
        }
        Ok(())
    }
}
