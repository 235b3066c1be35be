//! `flowhouse automations serve` as a real process, on the live stack, with a local webhook
//! receiver: the evaluator alone needs only the usual ClickHouse and Kafka variables, serves
//! `/healthz`, `/readyz` and `/metrics` on its admin listener, and exits 0 on SIGTERM.
//!
//! Crashes are real ends of the process: it aborts (SIGABRT) at a failpoint right after each
//! step of a firing (`FLOWHOUSE_AUTOMATIONS_CRASH_AT`, `flowhouse_automations::crash`), or is
//! killed with SIGKILL while its webhook request is on the wire (the receiver holds the answer).
//! A new process then takes the dead one's lease over once it expires. The receiver must see
//! the firing once by idempotency key, with at most one extra attempt after the crash, and the
//! firing must end acknowledged. Two processes at once deliver each firing once.
//!
//! Time is real here (a process has the system clock), so the trigger is an event trigger on
//! the live event stream that fires in the first round after its event reaches Kafka (and, in
//! the two-process test, resolves when its 10 s window has passed), and the lease lasts 4 s:
//! each scenario takes seconds. That test also measures the firing latency: from the breaching
//! event acknowledged by Kafka to the webhook received.

use std::os::unix::process::ExitStatusExt as _;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use flowhouse_automations::model::{Automation, Limits, parse_core};
use flowhouse_automations::store::Store;
use flowhouse_schema::Tenant;
use flowhouse_schema::contract::TopicArgs;
use flowhouse_tests::webhook::Receiver;
use flowhouse_tests::{ServiceProcess, Stack, flowhouse_binary, free_port, unique_name};
use serde_json::json;
use uuid::Uuid;

/// The signal `std::process::abort` raises (Linux).
const SIGABRT: i32 = 6;

/// How long a liveness wait may take before the test fails (not a performance bound).
const PATIENCE: Duration = Duration::from_secs(45);

struct Rig {
    stack: Stack,
    database: String,
    topics: TopicArgs,
    store: Store,
    tenant: Tenant,
    url: String,
    receiver: Receiver,
}

impl Rig {
    async fn start() -> Self {
        let stack = Stack::from_env();
        let database = stack.migrated_database("automations_process").await;
        let topics = TopicArgs {
            events_topic: unique_name("automation_events"),
            logs_topic: unique_name("logs"),
            dlq_topic: unique_name("dlq"),
            topic_partitions: 1,
        };
        flowhouse_service::kafka::ensure_topics(
            &stack.kafka,
            &[flowhouse_service::kafka::TopicSpec {
                name: topics.events_topic.clone(),
                partitions: 1,
            }],
        )
        .await
        .expect("create the events topic");
        let (receiver, url) = Receiver::start().await;
        Self {
            store: Store::new(stack.clickhouse_client(&database)),
            stack,
            database,
            topics,
            tenant: Tenant {
                account_id: Uuid::new_v4(),
                workspace_id: Uuid::new_v4(),
            },
            url,
            receiver,
        }
    }

    /// A crashed flow run, `ago` before now, of the rig's tenant, sent into the events topic as
    /// the endpoint sends it.
    async fn crashed_run(&self, ago: chrono::TimeDelta) {
        let occurred: DateTime<Utc> = Utc::now() - ago;
        let raw = json!({
            "id": Uuid::new_v4(),
            "occurred": occurred.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "event": "prefect.flow-run.Crashed",
            "resource": {"prefect.resource.id": format!("prefect.flow-run.{}", Uuid::new_v4()),
                         "prefect.state-type": "CRASHED"},
            "related": [],
            "payload": {},
        })
        .to_string();
        self.stack
            .produce(
                &self.topics.events_topic,
                &[(self.tenant, raw.into_bytes())],
            )
            .await;
    }

    /// An automation that fires (`triggered`) when a flow run crashed within `within` seconds,
    /// and resolves once it has not for as long.
    async fn create(&self, name: &str, within: u64) -> Automation {
        let body = json!({"name": name, "trigger": {"type": "event",
            "expect": ["prefect.flow-run.Crashed"], "threshold": 1, "within": within},
            "actions": [{"type": "call-webhook", "url": self.url}]});
        let mut core = parse_core(body.to_string().as_bytes()).expect("a valid automation");
        core.validate(&Limits {
            allow_private: true,
            ..Limits::default()
        })
        .expect("a valid automation");
        let automation = Automation {
            id: Uuid::now_v7(),
            core,
            created: Utc::now(),
            updated: Utc::now(),
        };
        self.store
            .put(self.tenant, &automation, false)
            .await
            .unwrap();
        automation
    }

    /// `flowhouse automations serve` with the usual variables only, plus short timings and,
    /// when given, a failpoint.
    fn serve(&self, crash_at: Option<&str>) -> Evaluator {
        let admin = format!("127.0.0.1:{}", free_port());
        let mut env = self.stack.service_env(&self.database, &self.topics);
        env.extend([
            ("FLOWHOUSE_AUTOMATIONS_ADMIN_LISTEN", admin.clone()),
            ("FLOWHOUSE_AUTOMATIONS_INTERVAL", "300ms".into()),
            ("FLOWHOUSE_AUTOMATIONS_DELAY", "0s".into()),
            ("FLOWHOUSE_AUTOMATIONS_LEASE_TTL", "4s".into()),
            ("FLOWHOUSE_AUTOMATIONS_SHARDS", "2".into()),
            ("FLOWHOUSE_WEBHOOK_ALLOW_PRIVATE", "true".into()),
            // One attempt, and long enough for the receiver to hold it until the kill: every
            // request the receiver sees is one attempt of the process.
            ("FLOWHOUSE_WEBHOOK_ATTEMPTS", "1".into()),
            ("FLOWHOUSE_WEBHOOK_TIMEOUT", "60s".into()),
        ]);
        if let Some(step) = crash_at {
            env.push(("FLOWHOUSE_AUTOMATIONS_CRASH_AT", step.into()));
        }
        Evaluator {
            process: ServiceProcess::start(&["automations", "serve"], &env),
            admin: format!("http://{admin}"),
        }
    }

    async fn wait_for_requests(&self, n: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.receiver.all().len() < n {
            assert!(
                Instant::now() < deadline,
                "the receiver saw {:?}, waiting for {n}",
                self.receiver.attempts()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn finish(self) {
        self.stack
            .clickhouse
            .server_client()
            .query(&format!("DROP DATABASE IF EXISTS {}", self.database))
            .execute()
            .await
            .unwrap();
    }
}

struct Evaluator {
    process: ServiceProcess,
    admin: String,
}

impl Evaluator {
    /// The value of one metric on `/metrics` (0 while it is not there yet).
    async fn metric(&self, name: &str) -> f64 {
        let Ok(response) = reqwest::get(format!("{}/metrics", self.admin)).await else {
            return 0.0;
        };
        let text = response.text().await.unwrap_or_default();
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until this process has evaluated an automation of its own in `rounds` rounds
    /// (counted by its `flowhouse_automations_evaluated_total`, one automation here).
    async fn wait_rounds(&mut self, rounds: f64) {
        let deadline = Instant::now() + PATIENCE;
        while self.metric("flowhouse_automations_evaluated_total").await < rounds {
            assert!(
                self.process.is_running(),
                "the evaluator exited:\n{}",
                self.process.log_text()
            );
            assert!(
                Instant::now() < deadline,
                "the evaluator never held the automation:\n{}",
                self.process.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM: a clean exit, code 0, within a few seconds (a liveness bound).
    fn stop(mut self) {
        let code = self.process.terminate(Duration::from_secs(10));
        assert_eq!(
            code,
            Some(0),
            "SIGTERM must end the evaluator cleanly:\n{}",
            self.process.log_text()
        );
    }
}

/// How the first process ends, and what the receiver has seen when it is gone.
#[derive(Clone, Copy, Debug)]
enum Crash {
    /// It aborts at the failpoint after this step.
    At(&'static str),
    /// SIGKILL once the receiver holds its request, unanswered.
    OnTheWire,
}

/// One firing; the first process crashes as `crash` says, a second one takes over. Returns the
/// attempts per idempotency key the receiver saw before and after the crash.
async fn crash_then_recover(crash: Crash) -> (usize, Vec<(String, usize)>) {
    let rig = Rig::start().await;
    rig.crashed_run(chrono::TimeDelta::seconds(30)).await;
    let automation = rig.create("crashes", 600).await;

    rig.receiver.hold(matches!(crash, Crash::OnTheWire));
    let mut first = rig.serve(match crash {
        Crash::At(step) => Some(step),
        Crash::OnTheWire => None,
    });
    match crash {
        Crash::At(_) => {
            let status = first
                .process
                .wait_exit(PATIENCE)
                .await
                .unwrap_or_else(|| panic!("{crash:?}: never reached the failpoint"));
            assert_eq!(
                status.signal(),
                Some(SIGABRT),
                "{crash:?}: the process aborts at the failpoint:\n{}",
                first.process.log_text()
            );
        }
        Crash::OnTheWire => {
            rig.wait_for_requests(1).await;
            first.process.kill9();
            rig.receiver.hold(false);
        }
    }
    let before = rig.receiver.all().len();

    // A new process, the usual variables only: it takes the lease over once the dead one's
    // has expired, re-sends what was pending, and then evaluates three more rounds.
    let mut second = rig.serve(None);
    second
        .process
        .wait_ready(&second.admin, Duration::from_secs(30))
        .await;
    let healthz = reqwest::get(format!("{}/healthz", second.admin))
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);
    second.wait_rounds(1.0).await;
    let after_takeover = second.metric("flowhouse_automations_evaluated_total").await;
    second.wait_rounds(after_takeover + 3.0).await;
    let states = rig
        .store
        .states(rig.tenant, automation.id)
        .await
        .expect("the state");
    assert_eq!(states.len(), 1, "{states:?}");
    assert_eq!(states[0].breached, 1, "{crash:?}: breached");
    assert_eq!(
        states[0].pending, "",
        "{crash:?}: the firing ends acknowledged"
    );
    second.stop();
    let attempts = rig.receiver.attempts().into_iter().collect();
    rig.finish().await;
    (before, attempts)
}

// Several threads: the receivers answer while the test waits on its processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_evaluator_process_neither_loses_nor_duplicates_a_firing_at_any_step() {
    // Built (when out of date) before any wait starts.
    flowhouse_binary();
    let started = Instant::now();
    let scenarios = [
        // Decided, nothing sent: the successor sends it, once.
        (Crash::At("decided"), 0, 1),
        // Received while the sender died waiting for the answer: sent again, same key.
        (Crash::OnTheWire, 1, 2),
        // Sent and answered, not acknowledged: sent again, same key.
        (Crash::At("sent"), 1, 2),
        // Acknowledged: nothing more.
        (Crash::At("acknowledged"), 1, 1),
    ];
    // Each on a database, a receiver and processes of its own, all at once.
    let results = futures::future::join_all(
        scenarios
            .iter()
            .map(|(crash, _, _)| crash_then_recover(*crash)),
    )
    .await;
    for ((crash, sent_before, attempts_after), (before, attempts)) in scenarios.iter().zip(results)
    {
        assert_eq!(before, *sent_before, "{crash:?}: requests before the crash");
        assert_eq!(attempts.len(), 1, "{crash:?}: one firing: {attempts:?}");
        let (key, n) = &attempts[0];
        assert!(key.ends_with("/all/1/triggered/0"), "{crash:?}: {key}");
        assert_eq!(n, attempts_after, "{crash:?}: attempts of {key}");
    }
    eprintln!(
        "four crashes, each with its recovery, at once: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_evaluator_processes_at_once_deliver_each_firing_once() {
    flowhouse_binary();
    let started = Instant::now();
    let rig = Rig::start().await;
    // Each fires when a run crashed within the last 10 s, and resolves 10 s after the crash.
    let mut automations: Vec<Automation> = Vec::new();
    for i in 0..6 {
        automations.push(rig.create(&format!("crashes {i}"), 10).await);
    }
    let mut one = rig.serve(None);
    let mut two = rig.serve(None);
    for evaluator in [&mut one, &mut two] {
        evaluator
            .process
            .wait_ready(&evaluator.admin, Duration::from_secs(30))
            .await;
    }
    // Both are past their first claims (the leases are contended from the start).
    let deadline = Instant::now() + PATIENCE;
    while one.metric("flowhouse_automations_evaluated_total").await
        + two.metric("flowhouse_automations_evaluated_total").await
        < 2.0 * automations.len() as f64
    {
        assert!(
            Instant::now() < deadline,
            "no evaluator holds the automations"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rig.crashed_run(chrono::TimeDelta::zero()).await;
    // The breach is the crash acknowledged by Kafka; the webhooks are what the operator sees.
    let breached = Instant::now();
    let mut first = None;
    while rig.receiver.all().len() < automations.len() {
        if first.is_none() && !rig.receiver.all().is_empty() {
            first = Some(breached.elapsed());
        }
        assert!(
            breached.elapsed() < PATIENCE,
            "{:?}",
            rig.receiver.attempts()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all = breached.elapsed();
    eprintln!(
        "firing latency, event acknowledged by Kafka → webhook received: first {:?}, all {} {:?}",
        first.unwrap_or(all),
        automations.len(),
        all
    );
    rig.wait_for_requests(2 * automations.len()).await;
    // Rounds of both after the last firing: nothing more arrives.
    let (n1, n2) = (
        one.metric("flowhouse_automations_evaluated_total").await,
        two.metric("flowhouse_automations_evaluated_total").await,
    );
    let deadline = Instant::now() + PATIENCE;
    while one.metric("flowhouse_automations_evaluated_total").await
        + two.metric("flowhouse_automations_evaluated_total").await
        < n1 + n2 + 3.0 * automations.len() as f64
    {
        assert!(
            Instant::now() < deadline,
            "the evaluators stopped evaluating"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let attempts = rig.receiver.attempts();
    assert_eq!(attempts.len(), 2 * automations.len(), "{attempts:?}");
    assert!(attempts.values().all(|n| *n == 1), "{attempts:?}");
    for a in &automations {
        for transition in ["triggered", "resolved"] {
            let key = format!(
                "{}/all/{}/{transition}/0",
                a.id,
                1 + (transition == "resolved") as u8
            );
            assert_eq!(attempts.get(&key), Some(&1), "{key} in {attempts:?}");
        }
    }
    one.stop();
    two.stop();
    eprintln!(
        "two evaluator processes: 12 firings in {:?}",
        started.elapsed()
    );
    rig.finish().await;
}
