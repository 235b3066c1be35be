//! Processes the test starts and stops: Prefect's server, worker and flow programs.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A child process in a process group of its own (Prefect's server and worker start children),
/// stopped by signalling that group.
pub struct Background {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Background {
    pub fn spawn(name: &str, mut command: Command, log: PathBuf) -> Self {
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

    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
    }

    /// SIGTERM to the group, SIGKILL if it is still there after `grace`.
    pub fn stop(&mut self, grace: Duration) {
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

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits for the process to exit on its own; its last stdout line as JSON.
    pub async fn report(&mut self, within: Duration) -> Value {
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
