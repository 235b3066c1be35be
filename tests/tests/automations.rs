//! Automations end to end on the live stack, with a stepped clock and a local webhook receiver:
//! 20- to 40-minute scenarios run in seconds because the evaluator takes its clock as a
//! parameter and the generated events carry the matching timestamps (they are stored before
//! the clock starts; every query only looks at what is before the clock's `now`).
//!
//! - a metric trigger (successes < 0.8 for 5 minutes over 5 minutes) fires exactly once when
//!   the failure rate of its flow stays high, resolves exactly once, and a shorter breach fires
//!   nothing; another tenant's failures of the same flow id never count (expected firings are
//!   computed here from the generated runs, independently of the evaluator);
//! - event triggers: a reactive threshold within a window, and a proactive "Completed within
//!   10 minutes after Running" per flow run that fires once for each run that never completes;
//! - the evaluator stopped (as by `kill -9`: nothing of it survives but ClickHouse) right after
//!   each step of a firing, then a fresh evaluator; and two evaluators at once: each firing
//!   reaches the receiver once by idempotency key, with at most one extra attempt after a crash.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound as _, TimeDelta, Utc};
use flowhouse_automations::clock::ManualClock;
use flowhouse_automations::crash::{CrashAt, Crashed, Failpoint};
use flowhouse_automations::evaluate::Evaluator;
use flowhouse_automations::lease::{LeaseConfig, Leases};
use flowhouse_automations::model::{Automation, parse_core};
use flowhouse_automations::store::Store;
use flowhouse_schema::Tenant;
use flowhouse_schema::rows::EventRow;
use flowhouse_service::clickhouse::ClickHouseArgs;
use flowhouse_tests::webhook::{Received, Receiver};
use flowhouse_tests::{Stack, unique_name};
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use serde_json::{Value, json};
use uuid::Uuid;

struct Rig {
    stack: Stack,
    database: String,
    client: clickhouse::Client,
    store: Store,
    topic: String,
}

impl Rig {
    async fn start() -> Self {
        let stack = Stack::from_env();
        let database = stack.migrated_database("automations").await;
        let topic = unique_name("automation_events");
        flowhouse_service::kafka::ensure_topics(
            &stack.kafka,
            &[flowhouse_service::kafka::TopicSpec {
                name: topic.clone(),
                partitions: 1,
            }],
        )
        .await
        .expect("create the events topic");
        let client = stack.clickhouse_client(&database);
        Self {
            store: Store::new(client.clone()),
            stack,
            database,
            client,
            topic,
        }
    }

    fn clickhouse(&self) -> ClickHouseArgs {
        ClickHouseArgs {
            database: self.database.clone(),
            ..self.stack.clickhouse.clone()
        }
    }

    /// A fresh evaluator (a new process, as far as anything persisted can tell).
    fn evaluator(&self, clock: &ManualClock, crash_at: Option<CrashAt>) -> Evaluator {
        let args = flowhouse_automations::Args {
            webhook_allow_private: true,
            webhook_timeout: Duration::from_secs(20),
            webhook_attempts: 2,
            delay: Duration::ZERO,
            lease_ttl: Duration::from_secs(5),
            shards: 2,
            ..flowhouse_automations::Args::default()
        };
        let topics = flowhouse_schema::contract::TopicArgs {
            events_topic: self.topic.clone(),
            logs_topic: "unused".into(),
            dlq_topic: "unused".into(),
            topic_partitions: 1,
        };
        let emitter = flowhouse_automations::emitter(&self.stack.kafka, &topics).unwrap();
        let stream = flowhouse_automations::event_stream(
            &flowhouse_automations::Args {
                group: unique_name("automations"),
                ..args.clone()
            },
            &self.clickhouse(),
            &self.stack.kafka,
            &topics,
        )
        .unwrap();
        let mut evaluator = flowhouse_automations::evaluator(
            &args,
            &self.clickhouse(),
            Some(emitter),
            Some(stream),
            Arc::new(clock.clone()),
        );
        evaluator.leases = Leases::new(
            self.client.clone(),
            format!("test/{}", Uuid::new_v4()),
            LeaseConfig {
                ttl: Duration::from_secs(5),
                settle: Duration::from_millis(100),
            },
        );
        evaluator.config.margin = Duration::from_millis(500);
        evaluator.crash_at = crash_at.map(Failpoint::in_process);
        evaluator
    }

    async fn create(&self, tenant: Tenant, body: Value) -> Automation {
        let mut core = parse_core(body.to_string().as_bytes()).expect("a valid automation");
        core.validate(&flowhouse_automations::model::Limits {
            allow_private: true,
            ..Default::default()
        })
        .expect("a valid automation");
        let automation = Automation {
            id: Uuid::now_v7(),
            core,
            created: Utc::now(),
            updated: Utc::now(),
        };
        self.store.put(tenant, &automation, false).await.unwrap();
        automation
    }

    async fn insert(&self, rows: &[EventRow]) {
        let mut insert = self.client.insert::<EventRow>("events").await.unwrap();
        for row in rows {
            insert.write(row).await.unwrap();
        }
        insert.end().await.unwrap();
    }

    /// Sends events into the events topic, as the endpoint would.
    async fn publish(&self, rows: &[EventRow]) {
        let messages: Vec<(Tenant, Vec<u8>)> = rows
            .iter()
            .map(|row| {
                let tenant = Tenant {
                    account_id: row.account_id,
                    workspace_id: row.workspace_id,
                };
                (tenant, raw_of(row))
            })
            .collect();
        self.stack.produce(&self.topic, &messages).await;
    }

    async fn finish(self) {
        self.stack
            .clickhouse_client("default")
            .query(&format!("DROP DATABASE IF EXISTS {}", self.database))
            .execute()
            .await
            .unwrap();
    }
}

fn tenant() -> Tenant {
    Tenant {
        account_id: Uuid::new_v4(),
        workspace_id: Uuid::new_v4(),
    }
}

fn event(
    tenant: Tenant,
    name: &str,
    resource: &str,
    state_type: &str,
    occurred: DateTime<Utc>,
    related: Vec<Value>,
) -> EventRow {
    let raw = json!({
        "id": Uuid::new_v4(),
        "occurred": occurred.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "event": name,
        "resource": {"prefect.resource.id": resource, "prefect.state-type": state_type},
        "related": related,
        "payload": {},
    })
    .to_string();
    let parsed = flowhouse_schema::event::parse_event(
        raw.as_bytes(),
        &flowhouse_schema::event::Limits::default(),
        Utc::now(),
    )
    .expect("a valid event");
    EventRow::new(tenant, occurred, &parsed)
}

/// The event a row was made from, as a client sends it.
fn raw_of(row: &EventRow) -> Vec<u8> {
    let object = |labels: &[(String, String)]| -> Value {
        Value::Object(labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
    };
    json!({
        "id": row.id,
        "occurred": row.occurred.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "event": row.event,
        "resource": object(&row.resource),
        "related": row.related.iter().map(|r| object(r)).collect::<Vec<_>>(),
        "payload": serde_json::from_str::<Value>(&row.payload).unwrap(),
    })
    .to_string()
    .into_bytes()
}

fn minute(n: i64) -> TimeDelta {
    TimeDelta::seconds(60 * n)
}

/// A flow run of `flow` that ran 20 s and ended at `end`, failed or completed.
fn run(tenant: Tenant, flow: Uuid, end: DateTime<Utc>, failed: bool) -> Vec<EventRow> {
    let id = format!("prefect.flow-run.{}", Uuid::new_v4());
    let related = vec![
        json!({"prefect.resource.id": format!("prefect.flow.{flow}"), "prefect.resource.role": "flow"}),
    ];
    let (name, kind) = if failed {
        ("prefect.flow-run.Failed", "FAILED")
    } else {
        ("prefect.flow-run.Completed", "COMPLETED")
    };
    vec![
        event(
            tenant,
            "prefect.flow-run.Running",
            &id,
            "RUNNING",
            end - TimeDelta::seconds(20),
            related.clone(),
        ),
        event(tenant, name, &id, kind, end, related),
    ]
}

/// The clock's start: a whole minute, an hour ago (every generated time is in the past).
fn start_time() -> DateTime<Utc> {
    (Utc::now() - TimeDelta::hours(1))
        .duration_trunc(TimeDelta::minutes(1))
        .unwrap()
}

/// Steps the clock by a minute `minutes` times, one evaluation round per step; returns the
/// receiver's new requests per minute.
async fn step(
    evaluator: &Evaluator,
    clock: &ManualClock,
    t0: DateTime<Utc>,
    minutes: std::ops::RangeInclusive<i64>,
    receiver: &Receiver,
) -> Vec<(i64, Received)> {
    let mut out = Vec::new();
    for m in minutes {
        clock.set(t0 + minute(m));
        let before = receiver.all().len();
        let report = evaluator.tick().await.expect("a round");
        assert!(report.errors.is_empty(), "minute {m}: {:?}", report.errors);
        assert!(
            report.shards_held > 0,
            "minute {m}: the only evaluator holds its leases"
        );
        out.extend(receiver.all()[before..].iter().map(|r| (m, r.clone())));
    }
    out
}

#[tokio::test]
async fn a_metric_trigger_fires_once_when_the_failure_rate_stays_high_and_resolves_once() {
    let started = Instant::now();
    let rig = Rig::start().await;
    let (receiver, url) = Receiver::start().await;
    let (a, b) = (tenant(), tenant());
    let flow = Uuid::new_v4();
    let other_flow = Uuid::new_v4();
    let t0 = start_time();

    // Tenant a: 4 runs of the flow end at mm:30 each minute; minutes 5-6 (short) and 15-24
    // (long) fail. Another flow of a always fails (out of scope); tenant b's runs of the same
    // flow id always fail (another tenant).
    let bad = |m: i64| (5..=6).contains(&m) || (15..=24).contains(&m);
    let mut rows = Vec::new();
    let mut ends: Vec<(DateTime<Utc>, bool)> = Vec::new();
    for m in 0..=40 {
        let end = t0 + minute(m) + TimeDelta::seconds(30);
        for _ in 0..4 {
            rows.extend(run(a, flow, end, bad(m)));
            ends.push((end, bad(m)));
            rows.extend(run(a, other_flow, end, true));
            rows.extend(run(b, flow, end, true));
        }
    }
    rig.insert(&rows).await;

    let trigger = |_: Tenant| {
        json!({"type": "metric",
            "match": {"prefect.resource.id": "prefect.flow-run.*"},
            "match_related": {"prefect.resource.role": "flow", "prefect.resource.id": format!("prefect.flow.{flow}")},
            "metric": {"name": "successes", "operator": "<", "threshold": 0.8, "range": 300, "firing_for": 300}})
    };
    let payload = r#"{"automation": "{{ automation.id }}", "transition": "{{ transition }}", "value": {{ value }}, "flows": {{ flows | tojson }}, "since": "{{ window.since }}", "until": "{{ window.until }}"}"#;
    let automation = rig
        .create(
            a,
            json!({"name": "flow X fails", "trigger": trigger(a),
            "actions": [{"type": "call-webhook", "url": url, "payload": payload}]}),
        )
        .await;
    let other = rig
        .create(
            b,
            json!({"name": "b's", "trigger": trigger(b),
            "actions": [{"type": "call-webhook", "url": url, "payload": payload}]}),
        )
        .await;

    // Independently: successes over (t − 5 min, t] at each whole minute, and the state machine
    // (observed continuously for 5 minutes → triggered; not observed for 5 → resolved).
    let mut expected = Vec::new();
    let (mut breached, mut since, mut observed) = (false, 0, false);
    for m in 0..=40 {
        let t = t0 + minute(m);
        let window: Vec<bool> = ends
            .iter()
            .filter(|(end, _)| *end >= t - minute(5) && *end < t)
            .map(|(_, failed)| *failed)
            .collect();
        let holds = !window.is_empty()
            && (window.iter().filter(|f| !**f).count() as f64 / window.len() as f64) < 0.8;
        if holds != observed {
            observed = holds;
            since = m;
        }
        if observed && !breached && m - since >= 5 {
            breached = true;
            expected.push((m, "triggered"));
        } else if !observed && breached && m - since >= 5 {
            breached = false;
            expected.push((m, "resolved"));
        }
    }
    assert_eq!(expected, vec![(22, "triggered"), (34, "resolved")]);

    let clock = ManualClock::new(t0);
    let evaluator = rig.evaluator(&clock, None);
    let ticked = Instant::now();
    let got = step(&evaluator, &clock, t0, 0..=40, &receiver).await;
    let ticks_wall = ticked.elapsed();
    let mine: Vec<(i64, &str)> = got
        .iter()
        .filter(|(_, r)| r.body["automation"] == automation.id.to_string())
        .map(|(m, r)| (*m, r.body["transition"].as_str().unwrap()))
        .collect();
    assert_eq!(mine, expected, "tenant a's firings");
    let fired = got
        .iter()
        .find(|(_, r)| r.body["automation"] == automation.id.to_string())
        .unwrap();
    assert_eq!(fired.1.body["value"], 0.0);
    assert_eq!(fired.1.body["flows"], json!([flow.to_string()]));
    assert_eq!(
        fired.1.body["since"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        t0 + minute(17)
    );
    assert_eq!(
        fired.1.body["until"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        t0 + minute(22)
    );
    // Tenant b's automation sees only b's runs: failing from the first minute, it fires once
    // (at minute 6: observed from minute 1) and never resolves.
    let theirs: Vec<(i64, &str)> = got
        .iter()
        .filter(|(_, r)| r.body["automation"] == other.id.to_string())
        .map(|(m, r)| (*m, r.body["transition"].as_str().unwrap()))
        .collect();
    assert_eq!(theirs, vec![(6, "triggered")]);
    // Each firing reached the receiver once, by its idempotency key.
    assert!(
        receiver.attempts().values().all(|n| *n == 1),
        "{:?}",
        receiver.attempts()
    );

    // The events went to the tenant's stream: one per firing, each under its own tenant.
    let consumer: BaseConsumer = {
        let mut config = rig.stack.kafka.config().unwrap();
        config.set("group.id", unique_name("check"));
        config.create().unwrap()
    };
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(&rig.topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let mut emitted = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while emitted.len() < 3 && Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(500)) {
            let envelope = flowhouse_schema::contract::Envelope::from_headers(message.headers())
                .expect("the contract's headers");
            let value: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
            emitted.push((envelope.tenant, value));
        }
    }
    let names: Vec<(Tenant, String)> = emitted
        .iter()
        .map(|(t, v)| (*t, v["event"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    for expected in [
        (a, "prefect.automation.triggered"),
        (a, "prefect.automation.resolved"),
        (b, "prefect.automation.triggered"),
    ] {
        assert!(
            names
                .iter()
                .any(|(t, n)| *t == expected.0 && n == expected.1),
            "{expected:?} in {names:?}"
        );
    }
    for (_, value) in &emitted {
        let raw = value.to_string();
        flowhouse_schema::event::parse_event(
            raw.as_bytes(),
            &flowhouse_schema::event::Limits::default(),
            Utc::now(),
        )
        .expect("the emitted event passes Flowhouse's own validation");
    }
    // The delivery log.
    let log = rig.store.deliveries(a, automation.id, 100).await.unwrap();
    let webhooks: Vec<&str> = log
        .iter()
        .filter(|d| d.action == "call-webhook")
        .map(|d| d.outcome.as_str())
        .collect();
    assert_eq!(webhooks, vec!["delivered", "delivered"]);
    eprintln!(
        "metric scenario: 41 stepped minutes in {ticks_wall:?} of rounds ({:?} in all); breach \
         from minute 17 (observed) fired at minute 22 = firing_for, in the round of that minute",
        started.elapsed()
    );
    rig.finish().await;
}

#[tokio::test]
async fn event_triggers_reactive_within_a_window_and_proactive_per_flow_run_fire_once_each() {
    let rig = Rig::start().await;
    let (receiver, url) = Receiver::start().await;
    let a = tenant();
    let flow = Uuid::new_v4();
    let t0 = start_time();
    let related = || {
        vec![
            json!({"prefect.resource.id": format!("prefect.flow.{flow}"), "prefect.resource.role": "flow"}),
        ]
    };
    let at = |m: i64, s: i64| t0 + minute(m) + TimeDelta::seconds(s);

    let mut rows = Vec::new();
    // Reactive: failures at 2:30 and 3:30 (two: below the threshold), then 10:30, 11:30, 12:30.
    for m in [2, 3, 10, 11, 12] {
        let id = format!("prefect.flow-run.{}", Uuid::new_v4());
        rows.push(event(
            a,
            "prefect.flow-run.Failed",
            &id,
            "FAILED",
            at(m, 30),
            related(),
        ));
    }
    // Proactive: r1 completes in time, r2 and r4 never, r3 late (at 19:30).
    let runs: Vec<String> = (0..4)
        .map(|_| format!("prefect.flow-run.{}", Uuid::new_v4()))
        .collect();
    for (i, r) in runs.iter().enumerate() {
        rows.push(event(
            a,
            "prefect.flow-run.Running",
            r,
            "RUNNING",
            at(1 + i as i64, 0),
            related(),
        ));
    }
    rows.push(event(
        a,
        "prefect.flow-run.Completed",
        &runs[0],
        "COMPLETED",
        at(5, 0),
        related(),
    ));
    rows.push(event(
        a,
        "prefect.flow-run.Completed",
        &runs[2],
        "COMPLETED",
        at(19, 30),
        related(),
    ));
    // Another tenant's runs that never complete: never seen by a's automation.
    let b = tenant();
    for _ in 0..3 {
        let id = format!("prefect.flow-run.{}", Uuid::new_v4());
        rows.push(event(
            b,
            "prefect.flow-run.Running",
            &id,
            "RUNNING",
            at(1, 0),
            related(),
        ));
        rows.push(event(
            b,
            "prefect.flow-run.Failed",
            &id,
            "FAILED",
            at(2, 30),
            related(),
        ));
    }
    rig.publish(&rows).await;

    let hook = |name: &str| {
        json!([{"type": "call-webhook", "url": url,
            "payload": format!(r#"{{"name": "{name}", "transition": "{{{{ transition }}}}", "bucket": {{{{ bucket | tojson }}}}}}"#)}])
    };
    rig.create(a, json!({"name": "reactive", "trigger": {"type": "event", "posture": "Reactive",
        "expect": ["prefect.flow-run.Failed"], "threshold": 3, "within": 300,
        "match_related": {"prefect.resource.role": "flow", "prefect.resource.id": format!("prefect.flow.{flow}")}},
        "actions": hook("reactive")}))
        .await;
    rig.create(
        a,
        json!({"name": "proactive", "trigger": {"type": "event", "posture": "Proactive",
        "after": ["prefect.flow-run.Running"], "expect": ["prefect.flow-run.Completed"],
        "for_each": ["prefect.resource.id"], "threshold": 1, "within": "PT10M",
        "match": {"prefect.resource.id": "prefect.flow-run.*"}},
        "actions": hook("proactive")}),
    )
    .await;

    let clock = ManualClock::new(t0);
    let evaluator = rig.evaluator(&clock, None);
    evaluator.catch_up(Duration::from_secs(60)).await.unwrap();
    let got = step(&evaluator, &clock, t0, 0..=25, &receiver).await;
    let of = |name: &str| -> Vec<(i64, String, String)> {
        got.iter()
            .filter(|(_, r)| r.body["name"] == name)
            .map(|(m, r)| {
                (
                    *m,
                    r.body["transition"].as_str().unwrap().to_string(),
                    r.body["bucket"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    // Three failures in (t − 5 min, t] from minute 13 through 15; two at 16.
    assert_eq!(
        of("reactive"),
        vec![
            (13, "triggered".into(), String::new()),
            (16, "resolved".into(), String::new())
        ]
    );
    // Deadlines: r2 (Running 2:00) at 12:00, r3 at 13:00, r4 at 14:00; r3 completes at 19:30.
    assert_eq!(
        of("proactive"),
        vec![
            (12, "triggered".into(), runs[1].clone()),
            (13, "triggered".into(), runs[2].clone()),
            (14, "triggered".into(), runs[3].clone()),
            (20, "resolved".into(), runs[2].clone()),
        ]
    );
    assert!(receiver.attempts().values().all(|n| *n == 1));
    rig.finish().await;
}

/// One firing with the evaluator stopped right after `crash`, then a fresh evaluator.
async fn crash_then_recover(crash: CrashAt) -> BTreeMap<String, usize> {
    let rig = Rig::start().await;
    let (receiver, url) = Receiver::start().await;
    let a = tenant();
    let t0 = start_time();
    let id = format!("prefect.flow-run.{}", Uuid::new_v4());
    rig.publish(&[event(
        a,
        "prefect.flow-run.Crashed",
        &id,
        "CRASHED",
        t0 + TimeDelta::seconds(30),
        vec![],
    )])
    .await;
    rig.create(
        a,
        json!({"name": "crashes", "trigger": {"type": "event",
        "expect": ["prefect.flow-run.Crashed"], "threshold": 1, "within": 600},
        "actions": [{"type": "call-webhook", "url": url}]}),
    )
    .await;
    let clock = ManualClock::new(t0 + minute(1));
    let first = rig.evaluator(&clock, Some(crash));
    first.catch_up(Duration::from_secs(60)).await.unwrap();
    let error = first
        .tick()
        .await
        .expect_err("the evaluator stops at the step");
    assert!(error.downcast_ref::<Crashed>().is_some(), "{error:#}");
    drop(first);
    let after_crash = receiver.all().len();
    // A new evaluator: it waits for the dead one's lease to expire, then takes over.
    let second = rig.evaluator(&clock, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let report = second.tick().await.unwrap();
        if report.shards_held > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the lease never came free");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // More rounds while the condition holds: nothing more is sent.
    for _ in 0..3 {
        clock.advance(minute(1));
        second.tick().await.unwrap();
    }
    let attempts = receiver.attempts();
    assert_eq!(attempts.len(), 1, "{crash:?}: one firing: {attempts:?}");
    let sent_before_crash = after_crash;
    match crash {
        CrashAt::Decided => assert_eq!(sent_before_crash, 0),
        CrashAt::Sent | CrashAt::Acknowledged => assert_eq!(sent_before_crash, 1),
    }
    rig.finish().await;
    attempts
}

#[tokio::test]
async fn a_crash_at_each_step_of_a_firing_neither_loses_nor_duplicates_it() {
    for (crash, attempts) in [
        (CrashAt::Decided, 1),
        // Sent but not acknowledged: the successor sends it again, with the same key.
        (CrashAt::Sent, 2),
        (CrashAt::Acknowledged, 1),
    ] {
        let seen = crash_then_recover(crash).await;
        let (key, n) = seen.iter().next().unwrap();
        assert!(key.ends_with("/1/triggered/0"), "{key}");
        assert_eq!(*n, attempts, "{crash:?}: attempts of {key}");
    }
}

#[tokio::test]
async fn two_evaluators_at_once_deliver_each_firing_once() {
    let rig = Rig::start().await;
    let (receiver, url) = Receiver::start().await;
    let a = tenant();
    let t0 = start_time();
    // A crash every other minute; reactive within 60 s: triggered and resolved alternately.
    let mut rows = Vec::new();
    for m in (0..20).step_by(2) {
        let id = format!("prefect.flow-run.{}", Uuid::new_v4());
        rows.push(event(
            a,
            "prefect.flow-run.Crashed",
            &id,
            "CRASHED",
            t0 + minute(m) + TimeDelta::seconds(30),
            vec![],
        ));
    }
    rig.publish(&rows).await;
    for i in 0..4 {
        rig.create(
            a,
            json!({"name": format!("crashes {i}"), "trigger": {"type": "event",
            "expect": ["prefect.flow-run.Crashed"], "threshold": 1, "within": 60},
            "actions": [{"type": "call-webhook", "url": url}]}),
        )
        .await;
    }
    let clock = ManualClock::new(t0);
    let (one, two) = (rig.evaluator(&clock, None), rig.evaluator(&clock, None));
    let (r1, r2) = tokio::join!(
        one.catch_up(Duration::from_secs(60)),
        two.catch_up(Duration::from_secs(60))
    );
    r1.unwrap();
    r2.unwrap();
    for m in 0..=20 {
        clock.set(t0 + minute(m));
        let (r1, r2) = tokio::join!(one.tick(), two.tick());
        let (r1, r2) = (r1.unwrap(), r2.unwrap());
        assert!(
            r1.errors.is_empty() && r2.errors.is_empty(),
            "{r1:?} {r2:?}"
        );
    }
    let attempts = receiver.attempts();
    // 10 crashes → 10 triggered and 10 resolved per automation (each resolves a minute later).
    assert_eq!(attempts.len(), 4 * 20, "{attempts:?}");
    assert!(attempts.values().all(|n| *n == 1), "{attempts:?}");
    rig.finish().await;
}

/// The event triggers' windows survive a new evaluator: the first reads two failures and writes
/// its checkpoint; the second resumes at that checkpoint's offset (not from the start) and a
/// third failure, sent while no evaluator ran, completes the threshold: one firing, from
/// events read by two evaluators.
#[tokio::test]
async fn a_new_evaluator_resumes_the_event_windows_from_the_checkpoint() {
    let rig = Rig::start().await;
    let (receiver, url) = Receiver::start().await;
    let a = tenant();
    let t0 = start_time();
    let failed = |m: i64| {
        let id = format!("prefect.flow-run.{}", Uuid::new_v4());
        event(
            a,
            "prefect.flow-run.Failed",
            &id,
            "FAILED",
            t0 + minute(m),
            vec![],
        )
    };
    rig.create(
        a,
        json!({"name": "failures", "trigger": {"type": "event",
        "expect": ["prefect.flow-run.Failed"], "threshold": 3, "within": 600},
        "actions": [{"type": "call-webhook", "url": url, "payload": r#"{"count": {{ count }}}"#}]}),
    )
    .await;
    rig.publish(&[failed(1), failed(2)]).await;
    let clock = ManualClock::new(t0 + minute(3));
    let first = rig.evaluator(&clock, None);
    first.catch_up(Duration::from_secs(60)).await.unwrap();
    let report = first.tick().await.unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(report.evaluated, 1, "{report:?}");
    assert!(
        report.fired.is_empty(),
        "two failures are below the threshold"
    );
    drop(first);
    let offset: i64 = rig
        .client
        .query("SELECT next_offset FROM automation_stream_checkpoints FINAL WHERE topic = ?")
        .bind(&rig.topic)
        .fetch_one()
        .await
        .expect("the first evaluator's checkpoint");
    assert_eq!(
        offset, 2,
        "the checkpoint is after the two failures it counted"
    );

    rig.publish(&[failed(4)]).await;
    clock.set(t0 + minute(5));
    let second = rig.evaluator(&clock, None);
    // It takes the partition once the first one's lease has expired.
    let deadline = Instant::now() + Duration::from_secs(60);
    let report = loop {
        second.catch_up(Duration::from_secs(60)).await.unwrap();
        let report = second.tick().await.unwrap();
        if report.evaluated > 0 {
            break report;
        }
        assert!(Instant::now() < deadline, "the lease never came free");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(report.fired.len(), 1, "{report:?}");
    assert_eq!(receiver.all().len(), 1);
    assert_eq!(
        receiver.all()[0].body["count"],
        3,
        "{:?}",
        receiver.all()[0].body
    );
    rig.finish().await;
}

/// Where a tenant's events are is where the evaluator looks for them: `partition_of` is the
/// partition the endpoint's producer (librdkafka's default partitioner) puts each tenant in.
#[tokio::test]
async fn partition_of_is_where_the_producer_puts_each_tenant() {
    let stack = Stack::from_env();
    let topic = unique_name("automation_partitions");
    let partitions = 5;
    flowhouse_service::kafka::ensure_topics(
        &stack.kafka,
        &[flowhouse_service::kafka::TopicSpec {
            name: topic.clone(),
            partitions,
        }],
    )
    .await
    .unwrap();
    let tenants: Vec<Tenant> = (0..40).map(|_| tenant()).collect();
    let messages: Vec<(Tenant, Vec<u8>)> = tenants.iter().map(|t| (*t, b"{}".to_vec())).collect();
    let placed = stack.produce(&topic, &messages).await;
    let used: std::collections::BTreeSet<i32> = placed.iter().map(|(p, _)| *p).collect();
    assert!(
        used.len() > 1,
        "40 tenants spread over partitions: {used:?}"
    );
    for (tenant, (partition, _)) in tenants.iter().zip(placed) {
        assert_eq!(
            flowhouse_automations::stream::partition_of(*tenant, partitions),
            partition,
            "{tenant}"
        );
    }
}
