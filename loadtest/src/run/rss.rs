//! Resident memory of the services under test, from `/proc/<pid>/status` (Linux): `VmRSS`
//! sampled every second while the run goes, and the kernel's own high-water mark `VmHWM`, read
//! once at the end, which also catches a peak between two samples.

use std::collections::BTreeMap;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// `name=pid` from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub pid: u32,
}

impl std::str::FromStr for Service {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        let (name, pid) = text
            .split_once('=')
            .context("expected name=pid, e.g. ingest=1234")?;
        Ok(Self {
            name: name.trim().to_string(),
            pid: pid.trim().parse().context("the pid is not a number")?,
        })
    }
}

/// Peak and last resident set size of one service, in MB.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RssSummary {
    pub pid: u32,
    pub peak_mb: f64,
    pub last_mb: f64,
    pub samples: u64,
}

/// `VmRSS` in MB; `None` when the process is gone (or not on Linux).
pub fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_kb(&status, "VmRSS:").map(|kb| kb as f64 / 1024.0)
}

/// `VmHWM` (peak resident set size over the process's life) in MB; `None` when it is gone.
pub fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_kb(&status, "VmHWM:").map(|kb| kb as f64 / 1024.0)
}

/// The kB value of one `/proc/<pid>/status` field, e.g. `VmRSS:`.
fn status_kb(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
}

/// Records one sample of each service.
pub fn sample(services: &[Service], into: &mut BTreeMap<String, RssSummary>) {
    for service in services {
        if let Some(mb) = rss_mb(service.pid) {
            let summary = into.entry(service.name.clone()).or_default();
            summary.pid = service.pid;
            summary.peak_mb = summary.peak_mb.max(mb);
            summary.last_mb = mb;
            summary.samples += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss_and_parses_flags() {
        let status = "Name:\tflowhouse\nVmPeak:\t  900 kB\nVmHWM:\t  200000 kB\n\
                      VmRSS:\t  123456 kB\nThreads: 9\n";
        assert_eq!(status_kb(status, "VmRSS:"), Some(123_456));
        assert_eq!(status_kb(status, "VmHWM:"), Some(200_000));
        assert_eq!(status_kb("Name: x\n", "VmRSS:"), None);
        let service: Service = "ingest=42".parse().unwrap();
        assert_eq!((service.name.as_str(), service.pid), ("ingest", 42));
        assert!("ingest".parse::<Service>().is_err());
        // This process exists, so it has a resident size.
        assert!(rss_mb(std::process::id()).is_some_and(|mb| mb > 0.0));
        // The high-water mark is never below the current size.
        let (now, peak) = (rss_mb(std::process::id()), peak_rss_mb(std::process::id()));
        assert!(peak.unwrap() >= now.unwrap() - 1.0);
    }
}
