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

/// Every dashboard route's histogram added into one.
fn all_routes(latencies: &Latencies) -> Option<crate::measure::LatencySummary> {
    let mut all: Option<hdrhistogram::Histogram<u64>> = None;
    for (_, h) in latencies.routes() {
        match &mut all {
            Some(sum) => {
                let _ = sum.add(h);
            }
            None => all = Some(h.clone()),
        }
    }
    all.map(|h| summarize(&h))
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
    let freshness: Vec<f64> = outcome.freshness.samples.iter().map(|s| s.1).collect();
    report.freshness = summarize_samples(&freshness);
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
    let dashboards = all_routes(&outcome.dashboards.latencies);
    let uncached = all_routes(&outcome.verification.latencies);
    let raw_scan = all_routes(&outcome.raw_scans);
    let baselines = outcome.baselines.clone().unwrap_or_default();
    let broker = baselines.broker_drain.as_ref().map(|r| r.per_sec);
    let insert = baselines.raw_insert.as_ref().map(|r| r.per_sec);
    let mut ratios = BTreeMap::new();
    let named = [
        (
            "ingest_vs_broker_drain",
            ratio(Some(events_per_sec), broker),
        ),
        ("ingest_vs_raw_insert", ratio(Some(events_per_sec), insert)),
        (
            "produce_vs_broker_drain",
            ratio(Some(stats.ack_rate), broker),
        ),
        (
            "raw_scan_p50_vs_uncached_api_p50",
            ratio(
                raw_scan.as_ref().map(|s| s.p50_ms),
                uncached.as_ref().map(|s| s.p50_ms),
            ),
        ),
        (
            "raw_scan_p50_vs_dashboard_p50",
            ratio(
                raw_scan.as_ref().map(|s| s.p50_ms),
                dashboards.as_ref().map(|s| s.p50_ms),
            ),
        ),
    ];
    for (name, value) in named {
        if let Some(value) = value {
            ratios.insert(name.to_string(), value);
        }
    }
    report.headline = Some(Headline {
        events_sent: stats.messages_acked,
        events_per_sec,
        produce_per_sec: stats.ack_rate,
        broker_drain_per_sec: broker,
        raw_insert_per_sec: insert,
        freshness_p50_ms: report.freshness.as_ref().map(|f| f.p50_ms),
        freshness_p99_ms: report.freshness.as_ref().map(|f| f.p99_ms),
        query_p50_ms: dashboards.as_ref().map(|s| s.p50_ms),
        query_p99_ms: dashboards.as_ref().map(|s| s.p99_ms),
        raw_scan_p50_ms: raw_scan.as_ref().map(|s| s.p50_ms),
        cache_hit_rate: report.cache_hit_rate,
        verified: report.verified == Some(true),
        ratios,
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
    plot::freshness_chart(&freshness, &report.series.freshness_ms)?;
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
        "  produced (acknowledged by the target)",
        per_sec(Some(h.produce_per_sec))
    );
    println!(
        "{:<44} {:>14}  broker drain {} ({} of it), raw insert {} ({} of it)",
        "  end to end (visible in ClickHouse)",
        per_sec(Some(h.events_per_sec)),
        per_sec(h.broker_drain_per_sec),
        times(h.ratios.get("ingest_vs_broker_drain")),
        per_sec(h.raw_insert_per_sec),
        times(h.ratios.get("ingest_vs_raw_insert")),
    );
    println!(
        "{:<44} {:>14}  p99 {}",
        "freshness (produce to visible) p50",
        ms(h.freshness_p50_ms),
        ms(h.freshness_p99_ms)
    );
    println!(
        "{:<44} {:>14}",
        "cache hit rate",
        h.cache_hit_rate
            .map_or("-".into(), |r| format!("{:.1} %", r * 100.0))
    );
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
    println!(
        "  raw scan p50 / uncached API p50: {}; raw scan p50 / dashboard p50: {}",
        times(h.ratios.get("raw_scan_p50_vs_uncached_api_p50")),
        times(h.ratios.get("raw_scan_p50_vs_dashboard_p50"))
    );
    if !report.services_rss.is_empty() {
        println!();
        println!("service memory (RSS):");
        for (name, rss) in &report.services_rss {
            println!(
                "  {name:<12} peak {:>8.1} MB, last {:>8.1} MB",
                rss.peak_mb, rss.last_mb
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
            v.cards_checked, w.tenants
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
