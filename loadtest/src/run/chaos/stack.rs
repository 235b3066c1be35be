//! Restarts of the local stack's components through `deploy/local/stack stop|start COMPONENT`,
//! the same commands the fault tests use: `stop` sends SIGTERM and waits for the exit, `start`
//! returns once the component answers (ClickHouse a query, the broker an ApiVersions request).
//! Ports and data are kept, so every client reconnects to the same address.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use tokio::process::Command;

#[derive(Clone, Debug)]
pub struct LocalStack {
    pub script: PathBuf,
    pub dir: PathBuf,
}

impl LocalStack {
    async fn control(&self, action: &str, component: &str) -> anyhow::Result<()> {
        let output = Command::new(&self.script)
            .args([action, component])
            .env("FLOWHOUSE_STACK_DIR", &self.dir)
            .output()
            .await
            .with_context(|| format!("cannot run {}", self.script.display()))?;
        if !output.status.success() {
            bail!(
                "{} {action} {component} failed ({}): {}",
                self.script.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    pub async fn stop(&self, component: &str) -> anyhow::Result<()> {
        self.control("stop", component).await
    }

    pub async fn start(&self, component: &str) -> anyhow::Result<()> {
        self.control("start", component).await
    }
}
