//! The `chaos` section of the report: every fault with its kind, target, time and measured
//! recovery, and the raw-count verification; and its printed form.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::plan::FaultKind;
use super::raw::RawCounts;

/// One fault as it happened. Times are seconds since the run's start, as in the report's series.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultRecord {
    /// 1-based, in order of injection.
    pub index: usize,
    pub kind: FaultKind,
    /// `ingest-0`, `ingest-1`, `clickhouse`, `kafka`, `endpoint`.
    pub target: String,
    /// The share of the workload's messages the plan put it at, and where it really came (a
    /// fault waits for the previous one to recover).
    pub planned_at_fraction: f64,
    pub at_fraction: f64,
    /// Whether the workload was still being sent.
    pub while_sending: bool,
    pub injected_at_secs: f64,
    /// The component back up, or the process started again.
    pub restored_at_secs: f64,
    /// Until ingestion progressed again: every partition with messages waiting moved since
    /// the component was back (ingest kills, ClickHouse and broker restarts).
    #[serde(default)]
    pub ingestion_resumed_secs: Option<f64>,
    /// Until ingestion caught up: every partition consumed up to where it ended when the
    /// component was back, the lag the fault built up gone (same faults).
    pub ingestion_recovery_secs: Option<f64>,
    /// Until the endpoint accepted again: its `/readyz` answered 200 (endpoint and broker
    /// restarts).
    pub endpoint_recovery_secs: Option<f64>,
    /// From the fault to the last of the above; `None`: it did not recover in time.
    pub recovery_secs: Option<f64>,
    /// Faults injected after this one and before it recovered: its recovery time is then
    /// theirs too.
    #[serde(default)]
    pub overlapped_by: Vec<usize>,
    /// Pids, what was done.
    pub detail: String,
}

/// Recovery times of one kind of fault.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KindSummary {
    pub faults: u64,
    pub recovered: u64,
    pub min_secs: f64,
    pub mean_secs: f64,
    pub max_secs: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChaosReport {
    pub seed: u64,
    pub ingest_instances: usize,
    pub ingest_group: String,
    /// `FLOWHOUSE_INGEST_SESSION_TIMEOUT` of the ingest instances.
    pub session_timeout_secs: f64,
    /// Faults planned; `faults` holds those injected.
    pub planned: usize,
    pub faults: Vec<FaultRecord>,
    pub by_kind: BTreeMap<String, KindSummary>,
    /// Why the faults stopped before the plan's end (a fault that did not recover).
    pub stopped: Option<String>,
    /// Raw rows per tenant against the generator (`None` if they could not be counted).
    pub raw_counts: Option<RawCounts>,
    /// Messages the driver sent again after a restart refused them (connection refused or
    /// cut before an answer, 503), by reason. The ground truth is everything generated: each
    /// resent message was acknowledged in the end (or the run failed), none is left out.
    #[serde(default)]
    pub resent: BTreeMap<String, u64>,
    /// Services that did not exit cleanly at the end.
    pub unclean_exits: Vec<String>,
    /// The services' logs.
    pub logs: Vec<String>,
}

impl ChaosReport {
    /// Whether every planned fault was injected and recovered.
    pub fn all_recovered(&self) -> bool {
        self.stopped.is_none()
            && self.faults.len() == self.planned
            && self.faults.iter().all(|f| f.recovery_secs.is_some())
    }

    /// Whether the chaos run passed: every fault recovered, exact raw counts, clean exits.
    pub fn verified(&self) -> bool {
        self.all_recovered()
            && self.raw_counts.as_ref().is_some_and(|r| r.verified)
            && self.unclean_exits.is_empty()
    }

    pub fn summarize(&mut self) {
        let mut by_kind: BTreeMap<String, (u64, Vec<f64>)> = BTreeMap::new();
        for fault in &self.faults {
            let entry = by_kind.entry(fault.kind.name().to_string()).or_default();
            entry.0 += 1;
            entry.1.extend(fault.recovery_secs);
        }
        self.by_kind = by_kind
            .into_iter()
            .map(|(kind, (faults, secs))| {
                let n = secs.len().max(1) as f64;
                let summary = KindSummary {
                    faults,
                    recovered: secs.len() as u64,
                    min_secs: secs.iter().copied().reduce(f64::min).unwrap_or(0.0),
                    mean_secs: secs.iter().sum::<f64>() / n,
                    max_secs: secs.iter().copied().fold(0.0, f64::max),
                };
                (kind, summary)
            })
            .collect();
    }
}

/// Fills `overlapped_by`: the faults injected while another had not recovered yet.
pub fn mark_overlaps(faults: &mut [FaultRecord]) {
    faults.sort_by_key(|f| f.index);
    let injections: Vec<(usize, f64)> = faults
        .iter()
        .map(|f| (f.index, f.injected_at_secs))
        .collect();
    for fault in faults.iter_mut() {
        let end = fault
            .recovery_secs
            .map_or(f64::INFINITY, |r| fault.injected_at_secs + r);
        fault.overlapped_by = injections
            .iter()
            .filter(|(index, at)| {
                *index != fault.index && *at > fault.injected_at_secs && *at < end
            })
            .map(|(index, _)| *index)
            .collect();
    }
}

fn secs(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.1} s"))
}

/// The printed section.
pub fn print(chaos: &ChaosReport) {
    println!();
    println!(
        "chaos: {} of {} faults injected, {} ingest instances in group {} (session timeout {:.0} s), seed {}",
        chaos.faults.len(),
        chaos.planned,
        chaos.ingest_instances,
        chaos.ingest_group,
        chaos.session_timeout_secs,
        chaos.seed
    );
    println!(
        "  {:>3} {:<20} {:<11} {:>8} {:>6} {:>8} {:>10} {:>10} {:>10} {:>10}  overlapped by",
        "#",
        "fault",
        "target",
        "at",
        "share",
        "back",
        "resumed",
        "caught up",
        "endpoint",
        "recovery"
    );
    for f in &chaos.faults {
        let overlaps: Vec<String> = f.overlapped_by.iter().map(ToString::to_string).collect();
        println!(
            "  {:>3} {:<20} {:<11} {:>6.1} s {:>5.0}%{} {:>6.1} s {:>10} {:>10} {:>10} {:>10}  {}",
            f.index,
            f.kind.name(),
            f.target,
            f.injected_at_secs,
            f.at_fraction * 100.0,
            if f.while_sending { " " } else { "*" },
            f.restored_at_secs - f.injected_at_secs,
            secs(f.ingestion_resumed_secs),
            secs(f.ingestion_recovery_secs),
            secs(f.endpoint_recovery_secs),
            secs(f.recovery_secs),
            overlaps.join(","),
        );
        println!("        {}", f.detail);
    }
    if chaos.faults.iter().any(|f| !f.while_sending) {
        println!("  * after the last message was sent");
    }
    println!(
        "  back: until the component was back (restarted, answering); the rest count from the \
         fault itself"
    );
    for (kind, s) in &chaos.by_kind {
        println!(
            "  {kind:<20} {} of {} recovered: min {:.1} s, mean {:.1} s, max {:.1} s",
            s.recovered, s.faults, s.min_secs, s.mean_secs, s.max_secs
        );
    }
    let resent: u64 = chaos.resent.values().sum();
    if resent > 0 {
        let reasons: Vec<String> = chaos
            .resent
            .iter()
            .map(|(reason, n)| format!("{n} after {reason}"))
            .collect();
        println!(
            "  resent by the driver until acknowledged: {resent} messages ({}); the ground \
             truth holds every generated message",
            reasons.join(", ")
        );
    }
    if let Some(stopped) = &chaos.stopped {
        println!("  STOPPED: {stopped}");
    }
    for exit in &chaos.unclean_exits {
        println!("  unclean exit: {exit}");
    }
    match &chaos.raw_counts {
        Some(raw) if raw.verified => println!(
            "  raw counts: {} tenants exact: events FINAL {} distinct ids of {} generated, \
             logs FINAL {} of {} (0 lost, 0 duplicated; copies not merged yet: {} events, \
             {} log lines)",
            raw.tenants.len(),
            raw.events_final_distinct_ids,
            raw.events_expected,
            raw.logs_final_distinct_ids,
            raw.logs_expected,
            raw.events_unmerged_copies,
            raw.logs_unmerged_copies,
        ),
        Some(raw) => {
            println!("  RAW COUNTS DIFFER from the generator:");
            for line in &raw.mismatches {
                println!("    {line}");
            }
        }
        None => println!("  raw counts: not counted"),
    }
    if let Some(dir) = chaos.logs.first() {
        println!("  service logs: {dir} ...");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(kind: FaultKind, recovery: Option<f64>) -> FaultRecord {
        FaultRecord {
            index: 1,
            kind,
            target: "t".into(),
            planned_at_fraction: 0.1,
            at_fraction: 0.1,
            while_sending: true,
            injected_at_secs: 1.0,
            restored_at_secs: 1.0,
            ingestion_resumed_secs: recovery,
            ingestion_recovery_secs: recovery,
            endpoint_recovery_secs: None,
            recovery_secs: recovery,
            overlapped_by: Vec::new(),
            detail: String::new(),
        }
    }

    #[test]
    fn kinds_are_summarized_and_a_missing_recovery_fails_the_run() {
        let mut chaos = ChaosReport {
            planned: 3,
            faults: vec![
                fault(FaultKind::IngestKill, Some(2.0)),
                fault(FaultKind::IngestKill, Some(4.0)),
                fault(FaultKind::BrokerRestart, None),
            ],
            raw_counts: Some(RawCounts {
                verified: true,
                ..RawCounts::default()
            }),
            ..ChaosReport::default()
        };
        chaos.summarize();
        let kills = &chaos.by_kind["ingest kill -9"];
        assert_eq!((kills.faults, kills.recovered), (2, 2));
        assert_eq!(
            (kills.min_secs, kills.mean_secs, kills.max_secs),
            (2.0, 3.0, 4.0)
        );
        assert_eq!(chaos.by_kind["broker restart"].recovered, 0);
        assert!(!chaos.verified());
        chaos.faults.pop();
        chaos.planned = 2;
        assert!(chaos.verified());
    }

    #[test]
    fn a_fault_injected_before_another_recovered_overlaps_it() {
        let mut faults = vec![
            fault(FaultKind::IngestKill, Some(5.0)),
            fault(FaultKind::IngestKill, Some(1.0)),
            fault(FaultKind::BrokerRestart, None),
        ];
        for (i, (fault, at)) in faults.iter_mut().zip([10.0, 12.0, 20.0]).enumerate() {
            (fault.index, fault.injected_at_secs) = (i + 1, at);
        }
        mark_overlaps(&mut faults);
        // 1 lasts 10..15: 2 comes at 12; 2 lasts 12..13; 3 never recovers, nothing after it.
        assert_eq!(faults[0].overlapped_by, vec![2]);
        assert!(faults[1].overlapped_by.is_empty());
        assert!(faults[2].overlapped_by.is_empty());
    }
}
