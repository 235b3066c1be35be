//! The end of a run: the report's figures and ratios, the plots, the summary table and one
//! tenant's dashboard as the query API answered it.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::api::Card;
use super::{Outcome, RunArgs};
use crate::measure::latency::summarize;
use crate::measure::report::summarize_samples;
use crate::measure::{DashboardSummary, Headline, Latencies, Report, plot};

/// Each percentile of the worst route: the dashboard is as slow as its slowest card.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WorstRoute {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The maximum over the routes of each percentile (from different routes, possibly); `None`
/// without a recorded request.
pub fn worst_route(latencies: &Latencies) -> Option<WorstRoute> {
    latencies
        .routes()
        .filter(|(_, h)| !h.is_empty())
        .map(|(_, h)| summarize(h))
        .map(|s| WorstRoute {
            p50_ms: s.p50_ms,
            p95_ms: s.p95_ms,
            p99_ms: s.p99_ms,
            max_ms: s.max_ms,
        })
        .reduce(|a, b| WorstRoute {
            p50_ms: a.p50_ms.max(b.p50_ms),
            p95_ms: a.p95_ms.max(b.p95_ms),
            p99_ms: a.p99_ms.max(b.p99_ms),
            max_ms: a.max_ms.max(b.max_ms),
        })
}

/// The p50 of every route's histogram added into one (the raw scans: three routes, a few
/// samples each).
fn all_routes_p50(latencies: &Latencies) -> Option<f64> {
    let mut all: Option<hdrhistogram::Histogram<u64>> = None;
    for (_, h) in latencies.routes() {
        match &mut all {
            Some(sum) => {
                let _ = sum.add(h);
            }
            None => all = Some(h.clone()),
        }
    }
    all.filter(|h| !h.is_empty()).map(|h| summarize(&h).p50_ms)
}

fn ratio(numerator: Option<f64>, denominator: Option<f64>) -> Option<f64> {
    match (numerator, denominator) {
        (Some(n), Some(d)) if d > 0.0 => Some(n / d),
        _ => None,
    }
}

/// Puts what was measured into the report.
pub fn fill(report: &mut Report, outcome: &Outcome, args: &RunArgs) {
    let stats = &outcome.stats;
    report.produce = Some(stats.clone());
    report.series.produced_per_sec = stats.acked_per_sec.clone();
    report.series.ingested_per_sec = outcome.samples.per_second();
    report.series.freshness_ms = outcome.freshness.samples.clone();
    report.series.freshness_dashboard_ms = outcome.freshness.dashboard_samples.clone();
    let freshness: Vec<f64> = outcome.freshness.samples.iter().map(|s| s.1).collect();
    report.freshness = summarize_samples(&freshness);
    let to_dashboard: Vec<f64> = outcome
        .freshness
        .dashboard_samples
        .iter()
        .map(|s| s.1)
        .collect();
    let freshness_dashboard = summarize_samples(&to_dashboard);
    let mut query_latency = outcome.dashboards.latencies.summaries();
    query_latency.extend(outcome.verification.latencies.summaries());
    query_latency.extend(outcome.raw_scans.summaries());
    report.query_latency = query_latency;
    report.cache_hit_rate = outcome
        .cache
        .and_then(|(hits, all)| (all > 0.0).then(|| hits / all));
    report.dashboards = Some(DashboardSummary {
        users: args.dashboard_users,
        refresh_secs: args.dashboard_refresh.as_secs_f64(),
        requests: outcome.dashboards.requests,
        failed: outcome.dashboards.errors.values().sum(),
    });
    report.baselines = outcome.baselines.clone();
    report.backlog = outcome.backlog.clone();
    report.services_rss = outcome.samples.rss.clone();
    // Under chaos, the raw counts and every fault's recovery are part of the verdict.
    report.chaos = outcome.chaos.clone();
    report.verified = Some(
        outcome.verification.cards_checked > 0
            && outcome.verification.mismatches == 0
            && outcome.chaos.as_ref().is_none_or(|c| c.verified()),
    );
    report.mismatches = outcome.verification.lines.clone();
    let mut errors = BTreeMap::new();
    let stages = [
        ("produce", &stats.errors),
        ("dashboards", &outcome.dashboards.errors),
        ("freshness", &outcome.freshness.errors),
        ("visibility sampler", &outcome.samples.errors),
    ];
    for (stage, kinds) in stages {
        for (kind, n) in kinds {
            errors.insert(format!("{stage}: {kind}"), *n);
        }
    }
    report.errors = errors;

    let events_per_sec = outcome.visible.total() as f64 / outcome.end_to_end_secs.max(1e-9);
    let dashboards = worst_route(&outcome.dashboards.latencies);
    let uncached = worst_route(&outcome.verification.latencies);
    let baselines = outcome.baselines.clone().unwrap_or_default();
    let broker = baselines.broker_drain.as_ref().map(|r| r.per_sec);
    let insert = baselines.raw_insert.as_ref().map(|r| r.per_sec);
    let drain = outcome.backlog.as_ref().map(|b| b.drain.per_sec);
    report.headline = Some(Headline {
        verified: report.verified == Some(true),
        events_sent: stats.messages_acked,
        produce_per_sec: stats.ack_rate,
        events_per_sec,
        live_vs_produced: ratio(Some(events_per_sec), Some(stats.ack_rate)),
        backlog_messages: outcome.backlog.as_ref().map(|b| b.messages),
        backlog_drain_per_sec: drain,
        broker_drain_per_sec: broker,
        raw_insert_per_sec: insert,
        backlog_drain_vs_broker: ratio(drain, broker),
        backlog_drain_vs_raw_insert: ratio(drain, insert),
        freshness_p50_ms: report.freshness.as_ref().map(|f| f.p50_ms),
        freshness_p99_ms: report.freshness.as_ref().map(|f| f.p99_ms),
        freshness_dashboard_p50_ms: freshness_dashboard.as_ref().map(|f| f.p50_ms),
        freshness_dashboard_p99_ms: freshness_dashboard.as_ref().map(|f| f.p99_ms),
        dashboard_p50_ms: dashboards.map(|s| s.p50_ms),
        dashboard_p95_ms: dashboards.map(|s| s.p95_ms),
        dashboard_p99_ms: dashboards.map(|s| s.p99_ms),
        dashboard_max_ms: dashboards.map(|s| s.max_ms),
        uncached_idle_p50_ms: uncached.map(|s| s.p50_ms),
        raw_scan_p50_ms: all_routes_p50(&outcome.raw_scans),
        cache_hit_rate: report.cache_hit_rate,
        cpu_us_per_msg: outcome.cpu_us_per_msg.clone(),
        peak_rss_mb: outcome.peak_rss_mb.clone(),
    });
}

/// Throughput, freshness and latency charts beside the report.
pub fn plots(report: &mut Report, outcome: &Outcome, dir: &Path) -> anyhow::Result<()> {
    let throughput = dir.join("throughput.png");
    plot::throughput_chart(
        &throughput,
        &[
            (
                "acknowledged by the target",
                &report.series.produced_per_sec,
            ),
            ("visible in ClickHouse", &report.series.ingested_per_sec),
        ],
    )?;
    report.files.push(throughput.display().to_string());
    let freshness = dir.join("freshness.png");
    plot::freshness_chart(
        &freshness,
        &[
            ("visible in ClickHouse", &report.series.freshness_ms),
            (
                "counted in a dashboard answer",
                &report.series.freshness_dashboard_ms,
            ),
        ],
    )?;
    report.files.push(freshness.display().to_string());
    let mut latencies = outcome.dashboards.latencies.clone();
    latencies.merge(&outcome.raw_scans);
    let latency = dir.join("latency.png");
    plot::latency_chart(&latency, &latencies)?;
    report.files.push(latency.display().to_string());
    Ok(())
}

fn ms(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.1} ms"))
}

fn per_sec(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{}/s", plot::compact_number(v)))
}

fn times(value: Option<&f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.2}x"))
}

/// The summary table, then the first tenant's dashboard.
pub fn print(report: &Report, outcome: &Outcome) {
    let Some(h) = &report.headline else {
        return;
    };
    let w = &report.workload;
    println!();
    println!(
        "workload: {} tenants, {} flow runs, {} events, {} log lines",
        w.tenants, w.flow_runs, w.events, w.logs
    );
    println!("{:<44} {:>14}  beside", "throughput", "");
    println!(
        "{:<44} {:>14}",
        "  live: produced (acknowledged by the target)",
        per_sec(Some(h.produce_per_sec))
    );
    println!(
        "{:<44} {:>14}  {} of produced",
        "  live: end to end (visible in ClickHouse)",
        per_sec(Some(h.events_per_sec)),
        times(h.live_vs_produced.as_ref()),
    );
    if let Some(messages) = h.backlog_messages {
        println!(
            "{:<44} {:>14}  broker drain {} ({} of it), raw insert {} ({} of it)",
            format!("  backlog of {messages}: ingest drains"),
            per_sec(h.backlog_drain_per_sec),
            per_sec(h.broker_drain_per_sec),
            times(h.backlog_drain_vs_broker.as_ref()),
            per_sec(h.raw_insert_per_sec),
            times(h.backlog_drain_vs_raw_insert.as_ref()),
        );
    }
    println!(
        "{:<44} {:>14}  p99 {}",
        "freshness (produced to visible) p50",
        ms(h.freshness_p50_ms),
        ms(h.freshness_p99_ms)
    );
    println!(
        "{:<44} {:>14}  p99 {}",
        "freshness (produced to dashboard) p50",
        ms(h.freshness_dashboard_p50_ms),
        ms(h.freshness_dashboard_p99_ms)
    );
    println!(
        "{:<44} {:>14}  p99 {}, max {}; uncached idle p50 {}",
        "dashboard during ingestion p50 (worst route)",
        ms(h.dashboard_p50_ms),
        ms(h.dashboard_p99_ms),
        ms(h.dashboard_max_ms),
        ms(h.uncached_idle_p50_ms),
    );
    println!(
        "{:<44} {:>14}",
        "cache hit rate",
        h.cache_hit_rate
            .map_or("-".into(), |r| format!("{:.1} %", r * 100.0))
    );
    for (name, us) in &h.cpu_us_per_msg {
        println!(
            "{:<44} {:>14}",
            format!("CPU per message: {name}"),
            format!("{us:.1} us")
        );
    }
    println!();
    println!(
        "{:<52} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "query latency", "count", "p50", "p95", "p99", "max"
    );
    for (route, s) in &report.query_latency {
        println!(
            "  {:<50} {:>8} {:>10} {:>10} {:>10} {:>10}",
            route,
            s.count,
            ms(Some(s.p50_ms)),
            ms(Some(s.p95_ms)),
            ms(Some(s.p99_ms)),
            ms(Some(s.max_ms))
        );
    }
    if !report.services_rss.is_empty() {
        println!();
        println!("service memory (RSS):");
        for (name, rss) in &report.services_rss {
            println!(
                "  {name:<12} peak {:>8.1} MB (VmHWM {}), last {:>8.1} MB",
                rss.peak_mb,
                h.peak_rss_mb
                    .get(name)
                    .map_or("-".into(), |mb| format!("{mb:.1} MB")),
                rss.last_mb
            );
        }
    }
    if let Some(baselines) = &report.baselines {
        for error in &baselines.errors {
            println!("baseline not measured: {error}");
        }
    }
    if !report.errors.is_empty() {
        println!();
        println!("errors by kind:");
        for (kind, n) in &report.errors {
            println!("  {n:>8} x {kind}");
        }
    }
    if let Some(chaos) = &outcome.chaos {
        super::chaos::report::print(chaos);
    }
    println!();
    let v = &outcome.verification;
    if v.mismatches == 0 {
        println!(
            "verified: all {} cards of {} tenants equal the ground truth",
            v.cards_checked,
            v.cards_checked / super::api::CARDS.len() as u64
        );
    } else {
        println!(
            "NOT VERIFIED: {} of {} cards differ from the ground truth:",
            v.mismatches, v.cards_checked
        );
        for line in &v.lines {
            println!("  {line}");
        }
    }
    print_dashboard(&outcome.verification.sample);
}

/// One tenant's cards as a dashboard would show them.
fn print_dashboard(cards: &[(Card, Value)]) {
    let Some((_, first)) = cards.first() else {
        return;
    };
    let window = &first["window"];
    println!();
    println!(
        "dashboard of one tenant, {} .. {} (from the query API):",
        window["since"].as_str().unwrap_or("?"),
        window["until"].as_str().unwrap_or("?")
    );
    for (card, value) in cards {
        match (card.route, card.by) {
            ("flow-runs", _) => {
                println!(
                    "  flow runs: {} ended, failure rate {}",
                    value["total"],
                    value["failure_rate"]
                        .as_f64()
                        .map_or("-".into(), |r| format!("{:.2} %", r * 100.0))
                );
                let states: Vec<String> = list(&value["by_state"])
                    .map(|s| format!("{} {}", s["state_name"].as_str().unwrap_or("?"), s["count"]))
                    .collect();
                println!("    by final state: {}", states.join(", "));
            }
            ("late-runs", _) => println!(
                "  late runs: {}, mean lateness {}",
                value["late_runs"],
                value["mean_lateness_seconds"]
                    .as_f64()
                    .map_or("-".into(), |s| format!("{s:.1} s"))
            ),
            ("durations", _) => {
                println!("  run duration per flow (p50 / p95):");
                for flow in list(&value["flows"]).take(8) {
                    println!(
                        "    {:<32} {:>6} runs {:>9.1} s {:>9.1} s",
                        flow["flow_name"].as_str().unwrap_or("?"),
                        flow["runs"],
                        flow["p50_seconds"].as_f64().unwrap_or(0.0),
                        flow["p95_seconds"].as_f64().unwrap_or(0.0)
                    );
                }
            }
            ("top-failing", Some(by)) => {
                let items: Vec<String> = list(&value["items"])
                    .take(3)
                    .map(|i| format!("{} ({})", i["name"].as_str().unwrap_or("?"), i["failures"]))
                    .collect();
                println!("  top failing by {by}: {}", items.join(", "));
            }
            ("task-runs", _) => {
                let types: Vec<String> = list(&value["by_state_type"])
                    .map(|t| format!("{} {}", t["state_type"].as_str().unwrap_or("?"), t["count"]))
                    .collect();
                println!(
                    "  task runs: {}; failures {}",
                    types.join(", "),
                    value["failures"]
                );
            }
            ("logs", _) => {
                let levels: Vec<String> = list(&value["by_level"])
                    .map(|l| format!("{} {}", level_name(&l["level"]), l["count"]))
                    .collect();
                println!("  log lines: {} ({})", value["total"], levels.join(", "));
            }
            _ => {}
        }
    }
}

fn list(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten()
}

fn level_name(level: &Value) -> &'static str {
    match level.as_u64() {
        Some(10) => "DEBUG",
        Some(20) => "INFO",
        Some(30) => "WARNING",
        Some(40) => "ERROR",
        Some(50) => "CRITICAL",
        _ => "?",
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn worst_route_takes_each_percentile_from_the_slowest_route() {
        let mut latencies = Latencies::default();
        // Route a: 1..=100 ms, so p50 50 ms, p95 95 ms, p99 99 ms, max 100 ms.
        for ms in 1..=100 {
            latencies.record("a", Duration::from_millis(ms));
        }
        // Route b: 99 answers of 60 ms and one of 40 ms: a slower median, a faster tail.
        for _ in 0..99 {
            latencies.record("b", Duration::from_millis(60));
        }
        latencies.record("b", Duration::from_millis(40));
        let worst = worst_route(&latencies).unwrap();
        // Three significant digits: within 0.1 % of the recorded values.
        let close = |got: f64, want: f64| (got - want).abs() <= want * 1e-3;
        assert!(close(worst.p50_ms, 60.0), "{worst:?}");
        assert!(close(worst.p95_ms, 95.0), "{worst:?}");
        assert!(close(worst.p99_ms, 99.0), "{worst:?}");
        assert!(close(worst.max_ms, 100.0), "{worst:?}");
        assert_eq!(worst_route(&Latencies::default()), None);
    }

    #[test]
    fn ratios_need_a_positive_denominator() {
        assert_eq!(ratio(Some(3.0), Some(4.0)), Some(0.75));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(4.0)), None);
    }
}
