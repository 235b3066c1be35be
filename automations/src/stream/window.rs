//! The event triggers' windows: what each trigger has seen of its tenant's event stream, per
//! `for_each` bucket, and the observations a round makes from it. Pure (no I/O), so the
//! semantics are unit-tested here and the state is checkpointed as JSON with its offset.
//!
//! Matching has the query API's label semantics (`events::labels`, whose in-memory and SQL
//! twins are tested against each other): `expect` and `after` are event names or globs (`*`,
//! `?`; empty `expect`: any event), `match` applies to the primary resource, each
//! `match_related` to some related resource.
//!
//! - **Reactive**: per bucket, the matching `expect` events in `(now − within, now]` (`within`
//!   of 0: the last [`MIN_REACTIVE_WINDOW`]); the condition holds while there are at least
//!   `threshold`. An event counts as soon as the evaluator reads it from Kafka.
//! - **Proactive with `after`**: per bucket, the first `after` event starts a clock; once
//!   `within` has passed (plus `delay`, the time events take to reach the evaluator) with fewer
//!   than `threshold` matching `expect` events since it, the condition holds; it resolves when
//!   the expected events arrive later. A bucket whose `after` event is older than the horizon is
//!   forgotten (its state row keeps its state).
//! - **Proactive without `after`**: one bucket; the condition holds while fewer than
//!   `threshold` expected events occurred in `(now − delay − within, now − delay]`.
//!
//! Each event is kept once (by occurred time and id: a redelivered message or a replay after a
//! restart changes nothing) and at most [`MAX_EVENTS_PER_BUCKET`] per bucket, the newest, and
//! [`MAX_BUCKETS`] buckets per automation: the memory of a checkpoint is bounded.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use flowhouse_query_api::events::labels::{self, ResourceView};
use flowhouse_schema::event::{RESOURCE_ID, RESOURCE_ROLE};
use flowhouse_schema::rows::EventRow;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::evaluate::Observation;
use crate::model::{EventTrigger, Posture};

/// The shortest window of a reactive trigger (`within: 0` in Prefect reacts to each event;
/// here, to the events of the last evaluation period).
pub const MIN_REACTIVE_WINDOW: Duration = Duration::from_secs(10);
/// Events kept per bucket (at least `threshold` are needed to decide; more only refine the
/// reported count).
pub const MAX_EVENTS_PER_BUCKET: usize = 10_000;
/// Buckets kept per automation; events of further buckets are dropped and counted.
pub const MAX_BUCKETS: usize = 100_000;

/// One event a trigger matched: when it occurred (µs since the epoch) and its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Seen {
    at: i64,
    id: Uuid,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Bucket {
    /// Proactive triggers with `after`: the earliest `after` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after: Option<Seen>,
    /// The matching `expect` events, oldest first.
    #[serde(default)]
    expects: VecDeque<Seen>,
}

/// What one evaluation of an event trigger found.
pub struct Found {
    pub observations: Vec<Observation>,
    /// Whether buckets absent from `observations` no longer hold (reactive, and proactive
    /// without `after`) or keep their state (proactive with `after`).
    pub absent_resolve: bool,
}

/// The windows of every event trigger of the tenants one partition carries.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Windows {
    automations: BTreeMap<Uuid, BTreeMap<String, Bucket>>,
    /// Events dropped because an automation had [`MAX_BUCKETS`] buckets.
    #[serde(default)]
    pub dropped: u64,
}

fn names_match(names: &BTreeSet<String>, event: &str) -> bool {
    names.is_empty() || names.iter().any(|n| labels::glob_matches(n, event))
}

fn label<'a>(labels: &'a [(String, String)], key: &str) -> &'a str {
    labels
        .iter()
        .find(|(k, _)| k == key)
        .map_or("", |(_, v)| v.as_str())
}

/// Whether `row` satisfies the trigger's `match` and every `match_related`.
fn resources_match(trigger: &EventTrigger, row: &EventRow) -> bool {
    let primary = ResourceView {
        labels: &row.resource,
        role: "",
    };
    if !labels::matches(&primary, &trigger.match_, false) {
        return false;
    }
    trigger.match_related.iter().all(|spec| {
        !labels::constrains(spec, true)
            || row.related.iter().any(|related| {
                let view = ResourceView {
                    labels: related,
                    role: label(related, RESOURCE_ROLE),
                };
                labels::matches(&view, spec, true)
            })
    })
}

/// The bucket of an event: its `for_each` labels (`related:<role>:<label>` for the first
/// related resource in that role) joined with U+001F; `''` without `for_each`.
fn bucket_of(trigger: &EventTrigger, row: &EventRow) -> String {
    let parts: Vec<&str> = trigger
        .for_each
        .iter()
        .map(|key| {
            match key
                .strip_prefix("related:")
                .and_then(|rest| rest.split_once(':'))
            {
                Some((role, key)) => row
                    .related
                    .iter()
                    .find(|r| label(r, RESOURCE_ROLE) == role)
                    .map_or("", |r| label(r, key)),
                None => label(&row.resource, key),
            }
        })
        .collect();
    parts.join("\u{1f}")
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn time(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

impl Bucket {
    /// Adds `seen` in order, once; keeps the newest [`MAX_EVENTS_PER_BUCKET`].
    fn expect(&mut self, seen: Seen) {
        let at = self.expects.partition_point(|s| *s < seen);
        if self.expects.get(at) == Some(&seen) {
            return;
        }
        if self.expects.len() >= MAX_EVENTS_PER_BUCKET {
            if at == 0 {
                return;
            }
            self.expects.pop_front();
            self.expects.insert(at - 1, seen);
        } else {
            self.expects.insert(at, seen);
        }
    }

    fn count(&self, from_exclusive: i64, to_inclusive: i64) -> u64 {
        self.expects
            .iter()
            .filter(|s| s.at > from_exclusive && s.at <= to_inclusive)
            .count() as u64
    }
}

impl Windows {
    /// Adds `row` to the windows of the `triggers` (automation id, trigger) it matches; whether
    /// it matched any.
    pub fn apply(&mut self, row: &EventRow, triggers: &[(Uuid, &EventTrigger)]) -> bool {
        let seen = Seen {
            at: row.occurred.timestamp_micros(),
            id: row.id,
        };
        let mut matched = false;
        for (automation, trigger) in triggers {
            let is_after = trigger.posture == Posture::Proactive
                && !trigger.after.is_empty()
                && names_match(&trigger.after, &row.event);
            let is_expect = names_match(&trigger.expect, &row.event);
            if !(is_after || is_expect) || !resources_match(trigger, row) {
                continue;
            }
            let buckets = self.automations.entry(*automation).or_default();
            let key = bucket_of(trigger, row);
            if !buckets.contains_key(&key) && buckets.len() >= MAX_BUCKETS {
                self.dropped += 1;
                continue;
            }
            matched = true;
            let bucket = buckets.entry(key).or_default();
            if is_after && bucket.after.is_none_or(|a| seen < a) {
                bucket.after = Some(seen);
            }
            if is_expect {
                bucket.expect(seen);
            }
        }
        matched
    }

    /// Forgets the automations not in `keep` (deleted, disabled, or no longer event triggers).
    pub fn retain(&mut self, keep: &BTreeSet<Uuid>) {
        self.automations.retain(|id, _| keep.contains(id));
    }

    /// Drops what no observation at or after `now` can use (the clock only moves forward; a
    /// minute of slack covers an evaluator taking over with a clock slightly behind).
    pub fn prune(
        &mut self,
        triggers: &[(Uuid, &EventTrigger)],
        now: DateTime<Utc>,
        horizon: Duration,
    ) {
        const SLACK: Duration = Duration::from_secs(60);
        let now = now.timestamp_micros();
        for (automation, trigger) in triggers {
            let Some(buckets) = self.automations.get_mut(automation) else {
                continue;
            };
            let with_after = trigger.posture == Posture::Proactive && !trigger.after.is_empty();
            let keep = if with_after {
                horizon + trigger.within
            } else {
                window(trigger)
            };
            let keep_from = now.saturating_sub(micros(keep + SLACK));
            buckets.retain(|_, b| {
                while b.expects.front().is_some_and(|s| s.at <= keep_from) {
                    b.expects.pop_front();
                }
                if b.after.is_some_and(|a| a.at <= keep_from) {
                    // Left the horizon: forgotten, its state row keeps its state.
                    return false;
                }
                b.after.is_some() || !b.expects.is_empty()
            });
        }
    }

    /// What `trigger` of `automation` observes at `now`.
    pub fn observe(
        &self,
        automation: Uuid,
        trigger: &EventTrigger,
        now: DateTime<Utc>,
        delay: Duration,
    ) -> Found {
        let empty = BTreeMap::new();
        let buckets = self.automations.get(&automation).unwrap_or(&empty);
        let now_us = now.timestamp_micros();
        let threshold = trigger.threshold.max(1) as u64;
        let describe = |bucket: &str| -> serde_json::Value {
            let values: Vec<&str> = if bucket.is_empty() {
                vec![]
            } else {
                bucket.split('\u{1f}').collect()
            };
            serde_json::Value::Object(
                trigger
                    .for_each
                    .iter()
                    .zip(values)
                    .map(|(k, v)| (k.clone(), json!(v)))
                    .collect(),
            )
        };
        if trigger.posture == Posture::Proactive && !trigger.after.is_empty() {
            let settled = now_us.saturating_sub(micros(delay));
            let within = micros(trigger.within);
            let observations = buckets
                .iter()
                .filter_map(|(bucket, b)| {
                    let after = b.after.filter(|a| a.at <= now_us)?;
                    let deadline = after.at.saturating_add(within);
                    let in_time = b.count(after.at - 1, deadline.min(now_us));
                    let since_after = b.count(after.at - 1, now_us);
                    let observed = if since_after >= threshold {
                        false
                    } else if settled >= deadline && in_time < threshold {
                        true
                    } else {
                        return None;
                    };
                    let labels = describe(bucket);
                    Some(Observation {
                        observed,
                        value: in_time as f64,
                        context: json!({
                            "after": trigger.after, "expect": trigger.expect,
                            "after_at": time(after.at), "deadline": time(deadline),
                            "within": trigger.within.as_secs_f64(),
                            "seen": since_after, "threshold": threshold,
                            "for_each": labels,
                            "summary": format!(
                                "expected {threshold} of {:?} within {} s after {} ({labels}); saw {in_time}",
                                trigger.expect, trigger.within.as_secs(), time(after.at)
                            ),
                        }),
                        related: related_of(bucket, trigger),
                        bucket: bucket.clone(),
                    })
                })
                .collect();
            return Found {
                observations,
                absent_resolve: false,
            };
        }
        let window = window(trigger);
        let end = match trigger.posture {
            Posture::Reactive => now_us,
            Posture::Proactive => now_us.saturating_sub(micros(delay)),
        };
        let since = end.saturating_sub(micros(window));
        let counts = buckets
            .iter()
            .map(|(bucket, b)| (bucket, b.count(since, end)));
        let observations = if trigger.posture == Posture::Reactive {
            counts
                .filter(|(_, n)| *n >= threshold)
                .map(|(bucket, n)| {
                    let labels = describe(bucket);
                    Observation {
                        observed: true,
                        value: n as f64,
                        context: json!({
                            "expect": trigger.expect, "count": n, "threshold": threshold,
                            "within": window.as_secs_f64(), "for_each": labels,
                            "summary": format!("{n} matching events in the last {} s ({labels}), threshold {threshold}",
                                window.as_secs()),
                        }),
                        related: related_of(bucket, trigger),
                        bucket: bucket.clone(),
                    }
                })
                .collect()
        } else {
            let n: u64 = counts.map(|(_, n)| n).sum();
            vec![Observation {
                bucket: String::new(),
                observed: n < threshold,
                value: n as f64,
                context: json!({
                    "expect": trigger.expect, "count": n, "threshold": threshold,
                    "within": window.as_secs_f64(),
                    "summary": format!("{n} of {threshold} expected events in the last {} s", window.as_secs()),
                }),
                related: vec![],
            }]
        };
        Found {
            observations,
            absent_resolve: true,
        }
    }
}

/// A reactive trigger's or a proactive trigger's (without `after`) window.
fn window(trigger: &EventTrigger) -> Duration {
    match trigger.posture {
        Posture::Reactive => trigger.within.max(MIN_REACTIVE_WINDOW),
        Posture::Proactive => trigger.within,
    }
}

/// The bucket's resource ids as related resources of the automation's event.
fn related_of(bucket: &str, trigger: &EventTrigger) -> Vec<serde_json::Value> {
    if bucket.is_empty() {
        return vec![];
    }
    trigger
        .for_each
        .iter()
        .zip(bucket.split('\u{1f}'))
        .filter(|(label, value)| label.ends_with(RESOURCE_ID) && !value.is_empty())
        .map(|(_, value)| json!({"prefect.resource.id": value, "prefect.resource.role": "triggering"}))
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;
    use flowhouse_schema::Tenant;

    use super::*;

    fn trigger(body: serde_json::Value) -> EventTrigger {
        serde_json::from_value(body).expect("a trigger")
    }

    fn row(event: &str, resource: &str, related: &[(&str, &str)], at: DateTime<Utc>) -> EventRow {
        let raw = json!({
            "id": Uuid::new_v4(), "occurred": at.to_rfc3339(), "event": event,
            "resource": {"prefect.resource.id": resource},
            "related": related.iter().map(|(role, id)| json!({
                "prefect.resource.id": id, "prefect.resource.role": role})).collect::<Vec<_>>(),
        })
        .to_string();
        let parsed = flowhouse_schema::event::parse_event(
            raw.as_bytes(),
            &flowhouse_schema::event::Limits::default(),
            Utc::now(),
        )
        .expect("a valid event");
        let tenant = Tenant {
            account_id: Uuid::nil(),
            workspace_id: Uuid::nil(),
        };
        EventRow::new(tenant, at, &parsed)
    }

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0).unwrap()
    }

    fn counts(found: &Found) -> Vec<(String, bool, f64)> {
        found
            .observations
            .iter()
            .map(|o| (o.bucket.clone(), o.observed, o.value))
            .collect()
    }

    #[test]
    fn a_reactive_window_counts_each_matching_event_once_in_its_half_open_interval() {
        let t = trigger(
            json!({"expect": ["prefect.flow-run.F*"], "threshold": 2, "within": 60,
            "match_related": {"prefect.resource.role": "flow", "prefect.resource.id": "prefect.flow.a"}}),
        );
        let id = Uuid::new_v4();
        let mut w = Windows::default();
        let flow_a = [("flow", "prefect.flow.a")];
        let first = row(
            "prefect.flow-run.Failed",
            "prefect.flow-run.1",
            &flow_a,
            t0(),
        );
        assert!(w.apply(&first, &[(id, &t)]));
        // The same event again (a redelivery), another flow, another name: nothing counts.
        assert!(w.apply(&first, &[(id, &t)]));
        let other_flow = [("flow", "prefect.flow.b")];
        assert!(!w.apply(
            &row(
                "prefect.flow-run.Failed",
                "prefect.flow-run.2",
                &other_flow,
                t0()
            ),
            &[(id, &t)]
        ));
        assert!(!w.apply(
            &row(
                "prefect.flow-run.Completed",
                "prefect.flow-run.3",
                &flow_a,
                t0()
            ),
            &[(id, &t)]
        ));
        let at = |s: i64| t0() + TimeDelta::seconds(s);
        assert!(counts(&w.observe(id, &t, at(30), Duration::ZERO)).is_empty());
        w.apply(
            &row(
                "prefect.flow-run.Failed",
                "prefect.flow-run.4",
                &flow_a,
                at(30),
            ),
            &[(id, &t)],
        );
        assert_eq!(
            counts(&w.observe(id, &t, at(30), Duration::ZERO)),
            vec![(String::new(), true, 2.0)]
        );
        // (now − 60 s, now]: the first failure leaves the window at exactly 60 s.
        assert!(counts(&w.observe(id, &t, at(60), Duration::ZERO)).is_empty());
        // Another automation's windows are its own.
        assert!(counts(&w.observe(Uuid::new_v4(), &t, at(30), Duration::ZERO)).is_empty());
    }

    #[test]
    fn proactive_buckets_fire_after_their_deadline_and_resolve_when_the_event_comes_late() {
        let t = trigger(
            json!({"posture": "Proactive", "after": ["prefect.flow-run.Running"],
            "expect": ["prefect.flow-run.Completed"], "for_each": ["prefect.resource.id"],
            "threshold": 1, "within": 600}),
        );
        let id = Uuid::new_v4();
        let mut w = Windows::default();
        let at = |m: i64| t0() + TimeDelta::minutes(m);
        for (run, m) in [("prefect.flow-run.1", 0), ("prefect.flow-run.2", 1)] {
            w.apply(
                &row("prefect.flow-run.Running", run, &[], at(m)),
                &[(id, &t)],
            );
        }
        w.apply(
            &row(
                "prefect.flow-run.Completed",
                "prefect.flow-run.1",
                &[],
                at(5),
            ),
            &[(id, &t)],
        );
        // Before any deadline: run 1 completed (not observed), run 2 undecided.
        assert_eq!(
            counts(&w.observe(id, &t, at(6), Duration::ZERO)),
            vec![("prefect.flow-run.1".into(), false, 1.0)]
        );
        // The delay postpones run 2's deadline (11:00) by 30 s.
        let late = Duration::from_secs(30);
        assert_eq!(counts(&w.observe(id, &t, at(11), late)).len(), 1);
        let found = w.observe(id, &t, at(12), late);
        assert_eq!(
            counts(&found),
            vec![
                ("prefect.flow-run.1".into(), false, 1.0),
                ("prefect.flow-run.2".into(), true, 0.0)
            ]
        );
        assert!(!found.absent_resolve);
        assert_eq!(
            found.observations[1].related,
            vec![json!({"prefect.resource.id": "prefect.flow-run.2",
                "prefect.resource.role": "triggering"})]
        );
        w.apply(
            &row(
                "prefect.flow-run.Completed",
                "prefect.flow-run.2",
                &[],
                at(13),
            ),
            &[(id, &t)],
        );
        assert_eq!(
            counts(&w.observe(id, &t, at(14), late))[1],
            ("prefect.flow-run.2".into(), false, 0.0)
        );
        // A day and the window later, both buckets are forgotten.
        w.prune(&[(id, &t)], at(24 * 60 + 12), Duration::from_secs(86_400));
        assert!(counts(&w.observe(id, &t, at(24 * 60 + 12), late)).is_empty());
    }

    #[test]
    fn buckets_come_from_the_resource_or_a_related_resource_in_a_role() {
        let t = trigger(
            json!({"expect": ["e"], "for_each": ["related:flow:prefect.resource.id"],
            "within": 60}),
        );
        let id = Uuid::new_v4();
        let mut w = Windows::default();
        w.apply(&row("e", "r.1", &[("flow", "f.a")], t0()), &[(id, &t)]);
        w.apply(&row("e", "r.2", &[("flow", "f.b")], t0()), &[(id, &t)]);
        w.apply(&row("e", "r.3", &[("tag", "t.x")], t0()), &[(id, &t)]);
        let buckets: Vec<String> = w
            .observe(id, &t, t0(), Duration::ZERO)
            .observations
            .into_iter()
            .map(|o| o.bucket)
            .collect();
        assert_eq!(buckets, vec!["", "f.a", "f.b"]);
    }

    #[test]
    fn a_bucket_keeps_its_newest_events_up_to_the_cap_and_survives_a_checkpoint() {
        let t = trigger(json!({"expect": ["e"], "threshold": 1, "within": 86_400}));
        let id = Uuid::new_v4();
        let mut w = Windows::default();
        for s in 0..(MAX_EVENTS_PER_BUCKET as i64 + 5) {
            w.apply(
                &row("e", "r", &[], t0() + TimeDelta::seconds(s)),
                &[(id, &t)],
            );
        }
        // An event older than every kept one does not displace them.
        w.apply(&row("e", "r", &[], t0() - TimeDelta::hours(1)), &[(id, &t)]);
        let bucket = &w.automations[&id][""];
        assert_eq!(bucket.expects.len(), MAX_EVENTS_PER_BUCKET);
        assert_eq!(
            bucket.expects.front().unwrap().at,
            (t0() + TimeDelta::seconds(5)).timestamp_micros()
        );
        let copy: Windows = serde_json::from_str(&serde_json::to_string(&w).unwrap()).unwrap();
        let now = t0() + TimeDelta::hours(3);
        assert_eq!(
            counts(&copy.observe(id, &t, now, Duration::ZERO)),
            counts(&w.observe(id, &t, now, Duration::ZERO))
        );
        // Forgetting a deleted automation.
        w.retain(&BTreeSet::new());
        assert!(w.automations.is_empty());
    }
}
