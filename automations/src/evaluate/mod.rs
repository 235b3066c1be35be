//! The evaluator: each round (`tick`), for the shards whose lease it holds, it re-sends what a
//! crashed predecessor left pending, evaluates every enabled automation at the clock's `now`,
//! and fires each transition once (`crate::lease` has the argument, step by step).
//!
//! A bucket's state machine (Prefect's semantics): the condition is *observed* or not at each
//! round; it must hold (or not hold) continuously for `firing_for` (metric triggers; 0 for
//! event triggers) before the bucket becomes *breached* (fires `triggered`) or stops being
//! breached (fires `resolved`). Staying breached fires nothing.

pub mod metric;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use flowhouse_query_api::db::Db;
use flowhouse_schema::Tenant;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::clock::Clock;
use crate::crash::{CrashAt, Crashed, Failpoint};
use crate::deliver::{Deliverer, automation_event};
use crate::lease::{Held, Leases};
use crate::model::{Action, Automation, Trigger};
use crate::store::{DeliveryRow, StateRow, Store};
use crate::stream::checkpoint::Checkpoint;
use crate::stream::{EventStream, event_triggers, partition_of};

/// What one evaluation saw for one bucket.
#[derive(Clone, Debug)]
pub struct Observation {
    pub bucket: String,
    pub observed: bool,
    pub value: f64,
    pub context: Value,
    /// Related resources of the automation's event.
    pub related: Vec<Value>,
}

#[derive(Clone, Debug)]
pub struct EvalConfig {
    pub shards: u32,
    /// How long events take to reach the evaluator through Kafka: proactive deadlines and
    /// windows end this much before `now`.
    pub delay: Duration,
    /// How far back a proactive trigger looks for `after` events.
    pub horizon: Duration,
    /// An owner stops delivering when its lease has less than this left.
    pub margin: Duration,
    /// Automations evaluated at once (a slow webhook holds only its own slot).
    pub concurrency: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            shards: 8,
            delay: Duration::from_secs(2),
            horizon: Duration::from_secs(86_400),
            margin: Duration::from_secs(10),
            concurrency: 16,
        }
    }
}

/// A decided firing, kept in the state row until acknowledged.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pending {
    pub key: String,
    pub transition: String,
    pub fired_at: DateTime<Utc>,
    pub value: f64,
    pub context: Value,
    pub related: Vec<Value>,
}

/// What a round did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub shards_held: usize,
    pub evaluated: usize,
    pub fired: Vec<String>,
    pub resent: Vec<String>,
    pub errors: Vec<String>,
}

pub struct Evaluator {
    pub store: Store,
    pub db: Db,
    pub leases: Leases,
    pub deliverer: Deliverer,
    pub clock: Arc<dyn Clock>,
    pub config: EvalConfig,
    /// The event stream the event triggers are evaluated on (`None`: they are not evaluated).
    pub stream: Option<EventStream>,
    /// A failpoint of the crash tests (`crate::crash`); `None` in production.
    pub crash_at: Option<Failpoint>,
}

pub fn shard_of(id: Uuid, shards: u32) -> u32 {
    let bytes = id.as_bytes();
    u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) % shards.max(1)
}

fn scope(shard: u32, shards: u32) -> String {
    format!("automations/{shards}/{shard}")
}

/// The deterministic name of a transition.
pub fn firing_key(automation: Uuid, bucket: &str, seq: u64, transition: &str) -> String {
    let bucket = if bucket.is_empty() {
        "all".to_string()
    } else {
        hex::encode(&Sha256::digest(bucket.as_bytes())[..6])
    };
    format!("{automation}/{bucket}/{seq}/{transition}")
}

/// Which automations a round evaluates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Round {
    All,
    Events,
}

/// Where an automation's observations come from.
enum Source {
    Rollups,
    /// A snapshot of the partition's windows, shared by its automations of the round.
    Windows(Arc<Checkpoint>),
}

enum Outcome {
    Done(Vec<String>, Vec<String>),
    Crashed(CrashAt),
}

impl Evaluator {
    /// One round at the clock's `now`: every automation.
    pub async fn tick(&self) -> anyhow::Result<Report> {
        self.round(Round::All).await
    }

    /// One round of the event triggers only (when the stream saw a matching event).
    pub async fn tick_events(&self) -> anyhow::Result<Report> {
        self.round(Round::Events).await
    }

    /// Takes the stream's partitions this evaluator can hold and waits until it has read what
    /// the broker has now (tests call it before stepping their clock; `run` needs nothing of
    /// the sort, rounds simply skip a partition until it has caught up).
    pub async fn catch_up(&self, within: Duration) -> anyhow::Result<()> {
        let Some(stream) = &self.stream else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let automations = self.store.all_automations().await?;
            let mut report = Report::default();
            self.event_work(&automations, &mut Vec::new(), &mut report)
                .await;
            anyhow::ensure!(report.errors.is_empty(), "{:?}", report.errors);
            if stream.caught_up().await?
                && stream
                    .reading()
                    .into_iter()
                    .all(|p| stream.snapshot(p).is_some())
            {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the event stream did not catch up within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn round(&self, round: Round) -> anyhow::Result<Report> {
        let now = self.clock.now();
        let automations = self.store.all_automations().await?;
        let mut report = Report::default();
        let mut work: Vec<(Tenant, Automation, Held, Source)> = Vec::new();
        if round == Round::All {
            work.extend(self.metric_work(&automations, &mut report).await);
        }
        let snapshots = self.event_work(&automations, &mut work, &mut report).await;
        report.evaluated = work.len();
        let results: Vec<(Uuid, anyhow::Result<Outcome>)> = futures::stream::iter(work)
            .map(|(tenant, a, h, source)| async move {
                let id = a.id;
                (id, self.evaluate_one(tenant, &a, now, &h, source).await)
            })
            .buffer_unordered(self.config.concurrency.max(1))
            .collect()
            .await;
        let mut failed = false;
        for (id, result) in results {
            match result {
                Ok(Outcome::Done(fired, resent)) => {
                    report.fired.extend(fired);
                    report.resent.extend(resent);
                }
                Ok(Outcome::Crashed(at)) => return Err(Crashed(at).into()),
                Err(error) => {
                    tracing::warn!(automation = %id, "evaluation failed: {error:#}");
                    report.errors.push(format!("{id}: {error:#}"));
                    failed = true;
                }
            }
        }
        // The decisions are written: the windows they were made on become the checkpoints.
        // After a failed evaluation the old checkpoint stays, and the next holder replays.
        if let Some(stream) = &self.stream
            && !failed
        {
            for (partition, snapshot) in snapshots {
                if let Err(error) = stream
                    .checkpoint(
                        partition,
                        // The round's evaluations are done: the snapshot is this loop's alone.
                        Arc::unwrap_or_clone(snapshot),
                        self.leases.owner(),
                        now,
                        self.config.horizon,
                    )
                    .await
                {
                    report
                        .errors
                        .push(format!("checkpoint {partition}: {error:#}"));
                }
            }
        }
        Ok(report)
    }

    /// The metric automations of the shards whose lease this evaluator holds.
    async fn metric_work(
        &self,
        automations: &[(Tenant, Automation)],
        report: &mut Report,
    ) -> Vec<(Tenant, Automation, Held, Source)> {
        let metric: Vec<&(Tenant, Automation)> = automations
            .iter()
            .filter(|(_, a)| matches!(a.core.trigger, Trigger::Metric(_)))
            .collect();
        let shards: std::collections::BTreeSet<u32> = metric
            .iter()
            .map(|(_, a)| shard_of(a.id, self.config.shards))
            .collect();
        let mut held: BTreeMap<u32, Held> = BTreeMap::new();
        for shard in shards {
            match self.leases.hold(&scope(shard, self.config.shards)).await {
                Ok(Some(h)) => {
                    held.insert(shard, h);
                }
                Ok(None) => {}
                Err(error) => report.errors.push(format!("lease {shard}: {error:#}")),
            }
        }
        report.shards_held += held.len();
        metric
            .into_iter()
            .filter_map(|(tenant, a)| {
                let h = held.get(&shard_of(a.id, self.config.shards))?.clone();
                Some((*tenant, a.clone(), h, Source::Rollups))
            })
            .collect()
    }

    /// The event automations of the partitions whose lease this evaluator holds, each with its
    /// partition's windows; returns those windows (the checkpoints to write after the round).
    async fn event_work(
        &self,
        automations: &[(Tenant, Automation)],
        work: &mut Vec<(Tenant, Automation, Held, Source)>,
        report: &mut Report,
    ) -> BTreeMap<i32, Arc<Checkpoint>> {
        let Some(stream) = &self.stream else {
            return BTreeMap::new();
        };
        let triggers = event_triggers(automations);
        stream.set_triggers(&triggers);
        let partitions = match stream.partitions().await {
            Ok(n) => n,
            Err(error) => {
                report.errors.push(format!("event stream: {error:#}"));
                return BTreeMap::new();
            }
        };
        let needed: std::collections::BTreeSet<i32> = triggers
            .iter()
            .map(|(tenant, _, _)| partition_of(*tenant, partitions))
            .collect();
        for partition in stream.reading() {
            if !needed.contains(&partition)
                && let Err(error) = stream.release(partition)
            {
                report
                    .errors
                    .push(format!("release {partition}: {error:#}"));
            }
        }
        let mut snapshots = BTreeMap::new();
        for partition in needed {
            let scope = crate::stream::scope(stream.topic(), partition);
            let outcome = match self.leases.hold(&scope).await {
                Ok(Some(h)) => stream.take(partition, h).await,
                Ok(None) => stream.release(partition),
                Err(error) => Err(error),
            };
            if let Err(error) = outcome {
                report
                    .errors
                    .push(format!("partition {partition}: {error:#}"));
                let _ = stream.release(partition);
                continue;
            }
            if let Some((snapshot, held)) = stream.snapshot(partition) {
                snapshots.insert(partition, (Arc::new(snapshot), held));
            }
        }
        report.shards_held += snapshots.len();
        for (tenant, a) in automations {
            if !matches!(a.core.trigger, Trigger::Event(_)) {
                continue;
            }
            let partition = partition_of(*tenant, partitions);
            if let Some((snapshot, held)) = snapshots.get(&partition) {
                work.push((
                    *tenant,
                    a.clone(),
                    held.clone(),
                    Source::Windows(snapshot.clone()),
                ));
            }
        }
        snapshots.into_iter().map(|(p, (s, _))| (p, s)).collect()
    }

    async fn evaluate_one(
        &self,
        tenant: Tenant,
        a: &Automation,
        now: DateTime<Utc>,
        held: &Held,
        source: Source,
    ) -> anyhow::Result<Outcome> {
        let mut states: BTreeMap<String, StateRow> = self
            .store
            .states(tenant, a.id)
            .await?
            .into_iter()
            .map(|s| (s.bucket.clone(), s))
            .collect();
        let mut fired = Vec::new();
        let mut resent = Vec::new();
        // A predecessor's decided but unacknowledged firings first, with their keys.
        for state in states.values_mut() {
            if !state.pending.is_empty() {
                let pending: Pending =
                    serde_json::from_str(&state.pending).context("unreadable pending delivery")?;
                if let Some(at) = self.send(tenant, a, state, &pending, held).await? {
                    return Ok(Outcome::Crashed(at));
                }
                resent.push(pending.key);
            }
        }
        if !a.core.enabled {
            return Ok(Outcome::Done(fired, resent));
        }
        let (observations, absent_resolve, firing_for) = match (&a.core.trigger, source) {
            (Trigger::Metric(t), _) => (
                vec![
                    metric::observe(&self.db, tenant, t, now)
                        .await
                        .map_err(api)?,
                ],
                true,
                t.metric.firing_for,
            ),
            (Trigger::Event(t), Source::Windows(snapshot)) => {
                let found = snapshot.windows.observe(a.id, t, now, self.config.delay);
                (found.observations, found.absent_resolve, Duration::ZERO)
            }
            (Trigger::Event(_), Source::Rollups) => {
                anyhow::bail!("an event trigger is evaluated on the event stream only")
            }
        };
        let mut seen: BTreeMap<String, Observation> = observations
            .into_iter()
            .map(|o| (o.bucket.clone(), o))
            .collect();
        if absent_resolve {
            for (bucket, state) in &states {
                if state.observed == 1 && !seen.contains_key(bucket) {
                    seen.insert(
                        bucket.clone(),
                        Observation {
                            bucket: bucket.clone(),
                            observed: false,
                            value: f64::NAN,
                            context: json!({"summary": "the condition no longer holds"}),
                            related: vec![],
                        },
                    );
                }
            }
        }
        let firing_for = chrono::Duration::from_std(firing_for)?;
        for (bucket, obs) in seen {
            let mut state = states.remove(&bucket).unwrap_or(StateRow {
                account_id: tenant.account_id,
                workspace_id: tenant.workspace_id,
                automation_id: a.id,
                bucket: bucket.clone(),
                version: 0,
                seq: 0,
                breached: 0,
                observed: 0,
                observed_since: now,
                last_fired: None,
                last_value: f64::NAN,
                pending: String::new(),
            });
            let mut changed = false;
            if obs.observed != (state.observed == 1) {
                state.observed = obs.observed as u8;
                state.observed_since = now;
                changed = true;
            }
            let held_for = now - state.observed_since;
            let transition = match (state.observed == 1, state.breached == 1) {
                (true, false) if held_for >= firing_for => Some("triggered"),
                (false, true) if held_for >= firing_for => Some("resolved"),
                _ => None,
            };
            let Some(transition) = transition else {
                if changed {
                    state.version += 1;
                    state.last_value = obs.value;
                    self.store.write_state(&state).await?;
                }
                continue;
            };
            state.seq += 1;
            state.breached = (transition == "triggered") as u8;
            state.last_fired = Some(now);
            state.last_value = obs.value;
            let key = firing_key(a.id, &bucket, state.seq, transition);
            let mut context = obs.context.clone();
            if let Value::Object(map) = &mut context {
                map.insert(
                    "automation".into(),
                    json!({"id": a.id, "name": a.core.name, "description": a.core.description,
                           "tags": a.core.tags}),
                );
                map.insert("transition".into(), json!(transition));
                map.insert("fired_at".into(), json!(now));
                map.insert("idempotency_key".into(), json!(key));
                map.insert("bucket".into(), json!(bucket));
                map.insert("trigger".into(), serde_json::to_value(&a.core.trigger)?);
                map.insert(
                    "workspace".into(),
                    json!({"account_id": tenant.account_id, "workspace_id": tenant.workspace_id}),
                );
                map.entry("summary").or_insert(json!(""));
            }
            let pending = Pending {
                key: key.clone(),
                transition: transition.into(),
                fired_at: now,
                value: obs.value,
                context,
                related: obs.related.clone(),
            };
            state.pending = serde_json::to_string(&pending)?;
            state.version += 1;
            self.store.write_state(&state).await?;
            if Failpoint::reached(self.crash_at, CrashAt::Decided) {
                return Ok(Outcome::Crashed(CrashAt::Decided));
            }
            if let Some(at) = self.send(tenant, a, &mut state, &pending, held).await? {
                return Ok(Outcome::Crashed(at));
            }
            fired.push(key);
        }
        Ok(Outcome::Done(fired, resent))
    }

    /// Steps 2 and 3 of a firing: deliver every action and the event, then acknowledge.
    async fn send(
        &self,
        tenant: Tenant,
        a: &Automation,
        state: &mut StateRow,
        pending: &Pending,
        held: &Held,
    ) -> anyhow::Result<Option<CrashAt>> {
        let margin = chrono::Duration::from_std(self.config.margin)?;
        let triggered = pending.transition == "triggered";
        let row =
            |action: &str, attempt: u32, outcome: &str, status: u16, error: String| DeliveryRow {
                account_id: tenant.account_id,
                workspace_id: tenant.workspace_id,
                automation_id: a.id,
                at: Utc::now(),
                idempotency_key: pending.key.clone(),
                transition: pending.transition.clone(),
                action: action.into(),
                attempt,
                outcome: outcome.into(),
                status,
                error,
                fired_at: pending.fired_at,
                bucket: state.bucket.clone(),
                value: if pending.value.is_finite() {
                    pending.value
                } else {
                    0.0
                },
            };
        for (i, action) in a.core.actions_for(triggered).into_iter().enumerate() {
            if Utc::now() + margin > held.expires {
                anyhow::bail!("the lease ends too soon to deliver {}", pending.key);
            }
            let key = format!("{}/{i}", pending.key);
            match action {
                Action::CallWebhook(hook) => {
                    let store = &self.store;
                    let last = self
                        .deliverer
                        .webhook(hook, &key, &pending.context, |attempt| {
                            let mut r = row(
                                "call-webhook",
                                attempt.attempt,
                                if attempt.delivered {
                                    "delivered"
                                } else {
                                    "failed"
                                },
                                attempt.status,
                                attempt.error,
                            );
                            r.idempotency_key = key.clone();
                            async move {
                                if let Err(error) = store.log_delivery(&r).await {
                                    tracing::warn!("delivery log: {error:#}");
                                }
                            }
                        })
                        .await;
                    if !last.delivered {
                        tracing::warn!(automation = %a.id, key, error = last.error, "webhook gave up");
                        let mut r = row(
                            "call-webhook",
                            last.attempt,
                            "gave-up",
                            last.status,
                            last.error,
                        );
                        r.idempotency_key = key.clone();
                        self.store.log_delivery(&r).await?;
                    }
                }
                Action::DoNothing {} => {
                    let mut r = row("do-nothing", 1, "delivered", 0, String::new());
                    r.idempotency_key = key;
                    self.store.log_delivery(&r).await?;
                }
            }
        }
        let event = automation_event(
            &pending.key,
            a.id,
            &a.core.name,
            &pending.transition,
            pending.fired_at,
            &pending.context,
            pending.related.clone(),
        );
        match self.deliverer.emit(tenant, &pending.key, &event).await {
            Ok(()) => {
                self.store
                    .log_delivery(&row("emit-event", 1, "delivered", 0, String::new()))
                    .await?;
            }
            Err(error) => {
                tracing::warn!(automation = %a.id, "event not emitted: {error}");
                self.store
                    .log_delivery(&row("emit-event", 1, "failed", 0, error))
                    .await?;
            }
        }
        if Failpoint::reached(self.crash_at, CrashAt::Sent) {
            return Ok(Some(CrashAt::Sent));
        }
        state.pending.clear();
        state.version += 1;
        self.store.write_state(state).await?;
        if Failpoint::reached(self.crash_at, CrashAt::Acknowledged) {
            return Ok(Some(CrashAt::Acknowledged));
        }
        Ok(None)
    }

    /// Rounds every `interval` until `shutdown`, and a round of the event triggers as soon as
    /// the stream saw an event that matched a reactive one. `readiness` is marked ready after
    /// the first round that succeeded.
    pub async fn run(
        self,
        interval: Duration,
        shutdown: tokio_util::sync::CancellationToken,
        mut readiness: Option<flowhouse_service::admin::Readiness>,
    ) {
        // Events that arrive together are evaluated together, and event rounds (each reads the
        // automations and the leases) run at most once a second however many events match.
        const GATHER: Duration = Duration::from_millis(100);
        const EVENT_ROUNDS_APART: Duration = Duration::from_secs(1);
        let mut next_full = tokio::time::Instant::now();
        let mut last_event_round: Option<tokio::time::Instant> = None;
        loop {
            let round = if tokio::time::Instant::now() >= next_full {
                next_full = tokio::time::Instant::now() + interval;
                Round::All
            } else {
                last_event_round = Some(tokio::time::Instant::now());
                Round::Events
            };
            match self.round(round).await {
                Ok(report) => {
                    record(&report, round);
                    if let Some(readiness) = readiness.take() {
                        readiness.ready("automations");
                    }
                }
                Err(error) => {
                    metrics::counter!("flowhouse_automations_errors_total").increment(1);
                    tracing::warn!("automations round failed: {error:#}");
                }
            }
            let woken = async {
                match &self.stream {
                    Some(stream) => {
                        stream.woken().await;
                        let gathered = tokio::time::Instant::now() + GATHER;
                        let soonest = last_event_round
                            .map_or(gathered, |at| gathered.max(at + EVENT_ROUNDS_APART));
                        tokio::time::sleep_until(soonest).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(next_full) => {}
                () = woken => {}
            }
        }
    }
}

fn record(report: &Report, round: Round) {
    for key in &report.fired {
        tracing::info!(key, "automation fired");
    }
    metrics::counter!("flowhouse_automations_fired_total").increment(report.fired.len() as u64);
    metrics::counter!("flowhouse_automations_resent_total").increment(report.resent.len() as u64);
    // What this evaluator owns: an operator (and the process crash test) sees whether it took
    // over after another one died.
    metrics::counter!("flowhouse_automations_evaluated_total").increment(report.evaluated as u64);
    if round == Round::All {
        metrics::gauge!("flowhouse_automations_shards_held").set(report.shards_held as f64);
    }
    metrics::counter!("flowhouse_automations_errors_total").increment(report.errors.len() as u64);
}

fn api(error: flowhouse_query_api::error::ApiError) -> anyhow::Error {
    anyhow::anyhow!("{error}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_automation_bucket_sequence_and_transition() {
        let id = Uuid::nil();
        assert_eq!(
            firing_key(id, "", 3, "resolved"),
            format!("{id}/all/3/resolved")
        );
        let a = firing_key(id, "prefect.flow-run.a", 1, "triggered");
        let b = firing_key(id, "prefect.flow-run.b", 1, "triggered");
        assert_ne!(a, b);
        assert_eq!(a, firing_key(id, "prefect.flow-run.a", 1, "triggered"));
        assert!(shard_of(Uuid::new_v4(), 8) < 8);
    }
}
