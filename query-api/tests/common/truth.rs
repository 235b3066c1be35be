//! The answers, computed in Rust from the generated events, straight from docs/metrics.md.

#![allow(dead_code, clippy::type_complexity, clippy::too_many_arguments)]

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::TimeZone as _;
use flowhouse_schema::Tenant;

use super::workload::{Ev, Lg};

pub const TERMINAL: [&str; 4] = ["COMPLETED", "FAILED", "CRASHED", "CANCELLED"];

pub fn is_failure(t: &str) -> bool {
    t == "FAILED" || t == "CRASHED"
}

pub fn state_name(ev: &Ev) -> &str {
    &ev.event[17..]
}

pub fn state_type(ev: &Ev) -> String {
    match ev.label("prefect.state-type") {
        Some(t) if !t.is_empty() => t.to_string(),
        _ => state_name(ev).to_uppercase(),
    }
}

fn related_id(ev: &Ev, role: &str, prefix: &str) -> String {
    ev.related
        .iter()
        .find(|r| {
            r.iter()
                .any(|(k, v)| k == "prefect.resource.role" && v == role)
        })
        .and_then(|r| r.iter().find(|(k, _)| k == "prefect.resource.id"))
        .map(|(_, v)| v.strip_prefix(prefix).unwrap_or(v).to_string())
        .unwrap_or_default()
}

fn related_name(ev: &Ev, role: &str) -> String {
    ev.related
        .iter()
        .find(|r| {
            r.iter()
                .any(|(k, v)| k == "prefect.resource.role" && v == role)
        })
        .and_then(|r| r.iter().find(|(k, _)| k == "prefect.resource.name"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

fn tags(ev: &Ev) -> Vec<String> {
    ev.related
        .iter()
        .filter(|r| {
            r.iter()
                .any(|(k, v)| k == "prefect.resource.role" && v == "tag")
        })
        .filter_map(|r| r.iter().find(|(k, _)| k == "prefect.resource.id"))
        .map(|(_, v)| v.strip_prefix("prefect.tag.").unwrap_or(v).to_string())
        .collect()
}

/// Distinct events: a resent event (same tenant, occurred and id) counts once.
pub fn unique(events: &[Ev]) -> Vec<Ev> {
    let mut seen = BTreeSet::new();
    events
        .iter()
        .filter(|e| seen.insert((e.tenant, e.occurred, e.id)))
        .cloned()
        .collect()
}

#[derive(Clone, Debug, Default)]
pub struct Run {
    pub id: String,
    pub name: String,
    pub flow: String,
    pub flow_name: String,
    pub deployment: String,
    pub deployment_name: String,
    pub work_pool: String,
    pub work_pool_name: String,
    pub tags: BTreeSet<String>,
    pub expected: Option<i64>,
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub late: Option<i64>,
    pub final_name: String,
    pub final_type: String,
    pub last_name: String,
    pub last_type: String,
    pub first_seen: i64,
    pub last_seen: i64,
}

/// Run facts of one tenant's runs of `kind` (`flow-run` or `task-run`), from distinct events.
pub fn runs(events: &[Ev], tenant: Tenant, kind: &str) -> BTreeMap<String, Run> {
    let prefix = format!("prefect.{kind}.");
    let mut runs: BTreeMap<String, Run> = BTreeMap::new();
    let mut mine: Vec<&Ev> = events
        .iter()
        .filter(|e| e.tenant == tenant && e.event.starts_with(&prefix))
        .filter(|e| {
            e.label("prefect.resource.id")
                .is_some_and(|id| id.starts_with(&prefix))
        })
        .collect();
    mine.sort_by_key(|e| e.occurred);
    for ev in mine {
        let id = ev.label("prefect.resource.id").unwrap()[prefix.len()..].to_string();
        let run = runs.entry(id.clone()).or_insert_with(|| Run {
            id,
            first_seen: ev.occurred,
            ..Run::default()
        });
        let (name, ty) = (state_name(ev).to_string(), state_type(ev));
        run.name = run
            .name
            .clone()
            .max(ev.label("prefect.resource.name").unwrap_or("").into());
        run.flow = run
            .flow
            .clone()
            .max(related_id(ev, "flow", "prefect.flow."));
        run.flow_name = run.flow_name.clone().max(related_name(ev, "flow"));
        run.deployment =
            run.deployment
                .clone()
                .max(related_id(ev, "deployment", "prefect.deployment."));
        run.deployment_name = run
            .deployment_name
            .clone()
            .max(related_name(ev, "deployment"));
        run.work_pool =
            run.work_pool
                .clone()
                .max(related_id(ev, "work-pool", "prefect.work-pool."));
        run.work_pool_name = run
            .work_pool_name
            .clone()
            .max(related_name(ev, "work-pool"));
        run.tags.extend(tags(ev));
        if ty == "SCHEDULED" {
            let scheduled = ev.payload["validated_state"]["state_details"]["scheduled_time"]
                .as_str()
                .map(|s| {
                    chrono::DateTime::parse_from_rfc3339(s)
                        .unwrap()
                        .timestamp_micros()
                });
            if let Some(s) = scheduled {
                run.expected = Some(run.expected.map_or(s, |e| e.min(s)));
            }
        }
        if ty == "RUNNING" && run.start.is_none() {
            run.start = Some(ev.occurred);
        }
        if name == "Late" && run.late.is_none() {
            run.late = Some(ev.occurred);
        }
        if TERMINAL.contains(&ty.as_str()) {
            run.end = Some(ev.occurred);
            run.final_name.clone_from(&name);
            run.final_type.clone_from(&ty);
        }
        run.last_name = name;
        run.last_type = ty;
        run.last_seen = ev.occurred;
    }
    runs
}

#[derive(Clone, Debug, Default)]
pub struct Filters {
    pub flow: Vec<String>,
    pub deployment: Vec<String>,
    pub work_pool: Vec<String>,
    pub tag: Vec<String>,
}

impl Filters {
    pub fn keeps(&self, run: &Run) -> bool {
        (self.flow.is_empty() || self.flow.contains(&run.flow))
            && (self.deployment.is_empty() || self.deployment.contains(&run.deployment))
            && (self.work_pool.is_empty() || self.work_pool.contains(&run.work_pool))
            && (self.tag.is_empty() || self.tag.iter().any(|t| run.tags.contains(t)))
    }

    pub fn query(&self) -> Vec<(String, String)> {
        let mut q = Vec::new();
        for (key, values) in [
            ("flow", &self.flow),
            ("deployment", &self.deployment),
            ("work_pool", &self.work_pool),
            ("tag", &self.tag),
        ] {
            q.extend(values.iter().map(|v| (key.to_string(), v.clone())));
        }
        q
    }
}

pub fn in_window(t: Option<i64>, since: i64, until: i64) -> bool {
    t.is_some_and(|t| t >= since && t < until)
}

pub fn bucket(t: i64, width: i64) -> i64 {
    t.div_euclid(width) * width
}

/// How the expectations put a timestamp in a bucket: UTC buckets of a fixed width, or the local
/// calendar days of a zone, straight from the zone's local dates (chrono-tz), independently of
/// the server's offset segments.
#[derive(Clone, Copy, Debug)]
pub enum Buckets {
    Width(i64),
    Days(chrono_tz::Tz),
}

impl Buckets {
    /// The start of the bucket holding `t`.
    pub fn start(&self, t: i64) -> i64 {
        match self {
            Buckets::Width(width) => bucket(t, *width),
            Buckets::Days(tz) => local_midnight(*tz, tz.timestamp_micros(t).unwrap().date_naive()),
        }
    }

    /// Every bucket start in `[start(since), until)`: the gap-filled axis.
    pub fn axis(&self, since: i64, until: i64) -> Vec<i64> {
        let mut starts = vec![self.start(since)];
        loop {
            let last = *starts.last().unwrap();
            // The next bucket starts within 26 hours (the longest local day is 25).
            let next = match self {
                Buckets::Width(width) => last + width,
                Buckets::Days(tz) => {
                    let date = tz.timestamp_micros(last).unwrap().date_naive();
                    local_midnight(*tz, date.succ_opt().unwrap())
                }
            };
            if next >= until {
                return starts;
            }
            starts.push(next);
        }
    }
}

/// The instant of local midnight on `date` (the test zones have one every day).
fn local_midnight(tz: chrono_tz::Tz, date: chrono::NaiveDate) -> i64 {
    use chrono::offset::LocalResult;
    match tz.from_local_datetime(&date.and_hms_opt(0, 0, 0).unwrap()) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t.timestamp_micros(),
        LocalResult::None => panic!("{tz} skips midnight on {date}; pick another test zone"),
    }
}

/// Flow runs by final state: (type, name) → count, in total and per bucket start.
pub fn by_final_state(
    runs: &BTreeMap<String, Run>,
    f: &Filters,
    since: i64,
    until: i64,
    buckets: &Buckets,
) -> (
    BTreeMap<(String, String), u64>,
    BTreeMap<i64, BTreeMap<(String, String), u64>>,
) {
    let (mut totals, mut series) = (BTreeMap::new(), BTreeMap::<i64, BTreeMap<_, u64>>::new());
    for run in runs
        .values()
        .filter(|r| f.keeps(r) && in_window(r.end, since, until))
    {
        let key = (run.final_type.clone(), run.final_name.clone());
        *totals.entry(key.clone()).or_insert(0) += 1;
        *series
            .entry(buckets.start(run.end.unwrap()))
            .or_default()
            .entry(key)
            .or_insert(0) += 1;
    }
    (totals, series)
}

pub fn late(
    runs: &BTreeMap<String, Run>,
    f: &Filters,
    since: i64,
    until: i64,
    buckets: &Buckets,
) -> BTreeMap<i64, u64> {
    let mut series = BTreeMap::new();
    for run in runs
        .values()
        .filter(|r| f.keeps(r) && in_window(r.late, since, until))
    {
        *series.entry(buckets.start(run.late.unwrap())).or_insert(0) += 1;
    }
    series
}

/// (runs, sum of max(0, start − expected) in µs).
pub fn lateness(runs: &BTreeMap<String, Run>, f: &Filters, since: i64, until: i64) -> (u64, i64) {
    runs.values()
        .filter(|r| f.keeps(r) && in_window(r.start, since, until) && r.expected.is_some())
        .fold((0, 0), |(n, sum), r| {
            (n + 1, sum + (r.start.unwrap() - r.expected.unwrap()).max(0))
        })
}

/// flow → (name, n, p50 µs, p95 µs), nearest rank.
pub fn durations(
    runs: &BTreeMap<String, Run>,
    f: &Filters,
    since: i64,
    until: i64,
) -> BTreeMap<String, (String, u64, i64, i64)> {
    let mut per_flow: BTreeMap<String, (String, Vec<i64>)> = BTreeMap::new();
    for run in runs.values().filter(|r| {
        f.keeps(r) && in_window(r.end, since, until) && r.start.is_some() && !r.flow.is_empty()
    }) {
        let e = per_flow.entry(run.flow.clone()).or_default();
        e.0 = e.0.clone().max(run.flow_name.clone());
        e.1.push(run.end.unwrap() - run.start.unwrap());
    }
    per_flow
        .into_iter()
        .map(|(flow, (name, mut d))| {
            d.sort();
            let n = d.len();
            let rank = |p: f64| d[((p * n as f64).ceil() as usize).max(1) - 1];
            (flow, (name, n as u64, rank(0.5), rank(0.95)))
        })
        .collect()
}

/// (id, name, failures), most first, ties by id.
pub fn top_failing(
    runs: &BTreeMap<String, Run>,
    f: &Filters,
    since: i64,
    until: i64,
    by: &str,
    limit: usize,
) -> Vec<(String, String, u64)> {
    let mut counts: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for run in runs
        .values()
        .filter(|r| f.keeps(r) && in_window(r.end, since, until) && is_failure(&r.final_type))
    {
        let (id, name) = match by {
            "flow" => (&run.flow, &run.flow_name),
            "deployment" => (&run.deployment, &run.deployment_name),
            _ => (&run.work_pool, &run.work_pool_name),
        };
        let name = if by == "deployment" {
            // Shown as "flow / deployment": the flow's name travels with it.
            &format!("{} / {name}", run.flow_name)
        } else {
            name
        };
        if id.is_empty() {
            continue;
        }
        let e = counts.entry(id.clone()).or_default();
        e.0 = e.0.clone().max(name.clone());
        e.1 += 1;
    }
    let mut list: Vec<_> = counts
        .into_iter()
        .map(|(id, (name, n))| (id, name, n))
        .collect();
    list.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    list.truncate(limit);
    list
}

/// Task runs that entered each terminal type in the window: type → distinct runs, in total and
/// per bucket.
pub fn task_runs(
    events: &[Ev],
    tenant: Tenant,
    f: &Filters,
    since: i64,
    until: i64,
    buckets: &Buckets,
) -> (BTreeMap<String, u64>, BTreeMap<i64, BTreeMap<String, u64>>) {
    let runs = runs(events, tenant, "task-run");
    let mut totals: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut series: BTreeMap<i64, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for ev in events
        .iter()
        .filter(|e| e.tenant == tenant && e.event.starts_with("prefect.task-run."))
    {
        let ty = state_type(ev);
        if !TERMINAL.contains(&ty.as_str()) || ev.occurred < since || ev.occurred >= until {
            continue;
        }
        let id = ev.label("prefect.resource.id").unwrap()["prefect.task-run.".len()..].to_string();
        if !f.keeps(&runs[&id]) {
            continue;
        }
        totals.entry(ty.clone()).or_default().insert(id.clone());
        series
            .entry(buckets.start(ev.occurred))
            .or_default()
            .entry(ty)
            .or_default()
            .insert(id);
    }
    (
        totals
            .into_iter()
            .map(|(k, v)| (k, v.len() as u64))
            .collect(),
        series
            .into_iter()
            .map(|(b, m)| (b, m.into_iter().map(|(k, v)| (k, v.len() as u64)).collect()))
            .collect(),
    )
}

/// Log lines per level in the window, in total and per bucket; with filters, only lines of
/// flow runs that match.
pub fn log_levels(
    logs: &[Lg],
    runs: &BTreeMap<String, Run>,
    tenant: Tenant,
    f: &Filters,
    filtered: bool,
    since: i64,
    until: i64,
    buckets: &Buckets,
) -> (BTreeMap<u8, u64>, BTreeMap<i64, BTreeMap<u8, u64>>) {
    let (mut totals, mut series) = (BTreeMap::new(), BTreeMap::<i64, BTreeMap<u8, u64>>::new());
    for lg in logs
        .iter()
        .filter(|l| l.tenant == tenant && l.timestamp >= since && l.timestamp < until)
    {
        if filtered {
            let Some(run) = lg.flow_run_id.and_then(|id| runs.get(&id.to_string())) else {
                continue;
            };
            if !f.keeps(run) {
                continue;
            }
        }
        *totals.entry(lg.level).or_insert(0) += 1;
        *series
            .entry(buckets.start(lg.timestamp))
            .or_default()
            .entry(lg.level)
            .or_insert(0) += 1;
    }
    (totals, series)
}

/// Prefect's type of a state name (for current states the rollup keeps by name only).
pub fn prefect_type(name: &str) -> String {
    let map: HashMap<&str, &str> = [
        ("Scheduled", "SCHEDULED"),
        ("Late", "SCHEDULED"),
        ("AwaitingRetry", "SCHEDULED"),
        ("AwaitingConcurrencySlot", "SCHEDULED"),
        ("Pending", "PENDING"),
        ("Running", "RUNNING"),
        ("Retrying", "RUNNING"),
        ("Paused", "PAUSED"),
        ("Suspended", "PAUSED"),
        ("Cancelling", "CANCELLING"),
        ("Completed", "COMPLETED"),
        ("Cached", "COMPLETED"),
        ("RolledBack", "COMPLETED"),
        ("Failed", "FAILED"),
        ("TimedOut", "FAILED"),
        ("Crashed", "CRASHED"),
        ("Cancelled", "CANCELLED"),
    ]
    .into_iter()
    .collect();
    map.get(name)
        .map_or_else(|| name.to_uppercase(), |t| t.to_string())
}
