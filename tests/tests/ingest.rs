//! The ingest service end to end: a real broker, a real ClickHouse, the real `flowhouse ingest`
//! process (killed with SIGKILL, stopped with SIGTERM), and exact answers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use chrono::Utc;
use clickhouse::Row;
use flowhouse_schema::Tenant;
use flowhouse_schema::contract::{Envelope, TopicArgs, header};
use flowhouse_service::kafka::ensure_topics;
use flowhouse_tests::fixtures::{self, Fixture};
use flowhouse_tests::{PrivateStack, ServiceProcess, Stack, free_port, unique_name};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Deserialize;
use uuid::Uuid;

/// A message of a fixture: its tenant and its value.
type Sent = (Tenant, Vec<u8>);

/// One test's world: its own database, topics and consumer group on a stack.
#[derive(Clone)]
struct Setup {
    stack: Stack,
    db: String,
    topics: TopicArgs,
    group: String,
    admin_port: u16,
}

impl Setup {
    async fn new(stack: Stack, prefix: &str) -> Self {
        let db = stack.migrated_database(prefix).await;
        let topics = TopicArgs {
            events_topic: unique_name("events"),
            logs_topic: unique_name("logs"),
            dlq_topic: unique_name("dlq"),
            topic_partitions: 3,
        };
        ensure_topics(&stack.kafka, &topics.specs())
            .await
            .expect("topics");
        Self {
            stack,
            db,
            topics,
            group: unique_name("ingest"),
            admin_port: free_port(),
        }
    }

    fn start_ingest(&self, extra: &[(&'static str, &str)]) -> ServiceProcess {
        let mut env = self.stack.service_env(&self.db, &self.topics);
        env.extend([
            ("FLOWHOUSE_INGEST_GROUP", self.group.clone()),
            (
                "FLOWHOUSE_INGEST_ADMIN_LISTEN",
                format!("127.0.0.1:{}", self.admin_port),
            ),
            ("FLOWHOUSE_INGEST_BATCH_MAX_AGE", "300ms".into()),
        ]);
        env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        ServiceProcess::start(&["ingest"], &env)
    }

    /// Produces and returns, per partition, the offset after the last message written.
    async fn produce(&self, topic: &str, messages: &[(Tenant, Vec<u8>)]) -> BTreeMap<i32, i64> {
        let mut ends = BTreeMap::new();
        for (partition, offset) in self.stack.produce(topic, messages).await {
            let end = ends.entry(partition).or_insert(0);
            *end = (*end).max(offset + 1);
        }
        ends
    }

    /// Produces a slice of events and of logs, if there is one.
    async fn produce_slice(&self, slice: Option<(&[Sent], &[Sent])>) {
        if let Some((events, logs)) = slice {
            self.produce(&self.topics.events_topic, events).await;
            self.produce(&self.topics.logs_topic, logs).await;
        }
    }

    fn client(&self) -> clickhouse::Client {
        self.stack.clickhouse_client(&self.db)
    }

    async fn scalar(&self, sql: &str) -> u64 {
        self.client().query(sql).fetch_one().await.expect(sql)
    }

    /// Waits until `sql` returns `expected`; fails with the service's log if it never does
    /// (a liveness bound, not a performance assertion) or if the service dies.
    async fn wait_for(&self, sql: &str, expected: u64, ingest: &mut ServiceProcess) {
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let value = self
                .client()
                .query(sql)
                .fetch_one::<u64>()
                .await
                .unwrap_or(u64::MAX);
            if value == expected {
                return;
            }
            assert!(
                ingest.is_running(),
                "ingest exited while `{sql}` was {value}, waiting for {expected}:\n{}",
                ingest.log_text()
            );
            assert!(
                Instant::now() < deadline,
                "`{sql}` is {value}, expected {expected}; ingest log:\n{}",
                ingest.log_text()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn http_get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("http://127.0.0.1:{}{path}", self.admin_port))
            .await
            .expect("admin endpoint");
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// A counter from `/metrics`, summed over its labels.
    async fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.http_get("/metrics").await;
        text.lines()
            .filter(|line| line.starts_with(name) && !line.starts_with('#'))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

fn distinct_event_ids(fixture: &Fixture, tenant: &Tenant) -> usize {
    fixture
        .events
        .iter()
        .filter(|(t, _)| t == tenant)
        .map(|(_, bytes)| {
            serde_json::from_slice::<serde_json::Value>(bytes).unwrap()["id"].to_string()
        })
        .collect::<BTreeSet<_>>()
        .len()
}

fn tenant_filter(tenant: &Tenant) -> String {
    format!(
        "account_id = '{}' AND workspace_id = '{}'",
        tenant.account_id, tenant.workspace_id
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn events_and_logs_arrive_exactly_once_per_tenant() {
    let setup = Setup::new(Stack::from_env(), "ingest_exact").await;
    let tenants = fixtures::tenants(3);
    let fixture = fixtures::orchestration(1, &tenants, 60, Utc::now());
    setup
        .produce(&setup.topics.events_topic, &fixture.events)
        .await;
    setup.produce(&setup.topics.logs_topic, &fixture.logs).await;
    let mut ingest = setup.start_ingest(&[]);

    let all_ids: usize = tenants
        .iter()
        .map(|t| distinct_event_ids(&fixture, t))
        .sum();
    setup
        .wait_for(
            "SELECT count() FROM logs",
            fixture.logs.len() as u64,
            &mut ingest,
        )
        .await;
    setup
        .wait_for(
            "SELECT uniqExact(id) FROM events",
            all_ids as u64,
            &mut ingest,
        )
        .await;

    for tenant in &tenants {
        let filter = tenant_filter(tenant);
        let expected_ids = distinct_event_ids(&fixture, tenant) as u64;
        assert_eq!(
            setup
                .scalar(&format!("SELECT count() FROM events FINAL WHERE {filter}"))
                .await,
            expected_ids
        );
        assert_eq!(
            setup
                .scalar(&format!("SELECT uniqExact(id) FROM events WHERE {filter}"))
                .await,
            expected_ids
        );

        #[derive(Row, Deserialize, PartialEq, Eq, PartialOrd, Ord, Debug)]
        struct LogLine {
            level: u8,
            message: String,
        }
        let mut stored: Vec<LogLine> = setup
            .client()
            .query(&format!("SELECT level, message FROM logs WHERE {filter}"))
            .fetch_all()
            .await
            .unwrap();
        stored.sort();
        let mut sent: Vec<LogLine> = fixture
            .logs
            .iter()
            .filter(|(t, _)| t == tenant)
            .map(|(_, bytes)| {
                let log: serde_json::Value = serde_json::from_slice(bytes).unwrap();
                LogLine {
                    level: log["level"].as_u64().unwrap() as u8,
                    message: log["message"].as_str().unwrap().to_string(),
                }
            })
            .collect();
        sent.sort();
        assert_eq!(stored, sent, "tenant {tenant}: logs differ");
    }
    assert_eq!(setup.http_get("/readyz").await.0, 200);
    assert_eq!(
        setup.metric("flowhouse_ingest_dead_letters_total").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_ingest_mid_stream_neither_loses_nor_duplicates() {
    // On the local stack, a stack of its own: tansu keeps the group state of killed members
    // around and slows down every other group on the broker. A real cluster is shared as is.
    let private = PrivateStack::start("sqlite");
    let stack = private
        .as_ref()
        .map_or_else(Stack::from_env, |private| private.stack.clone());
    let setup = Setup::new(stack, "ingest_kill").await;
    let tenants = fixtures::tenants(4);
    let fixture = fixtures::orchestration(2, &tenants, 150, Utc::now());
    let small_batches = [
        ("FLOWHOUSE_INGEST_BATCH_MAX_ROWS", "300"),
        ("FLOWHOUSE_INGEST_BATCH_MAX_AGE", "100ms"),
        ("FLOWHOUSE_INGEST_SESSION_TIMEOUT", "15s"),
    ];
    // The stream arrives in slices, one after each crash, so that every restart has messages
    // waiting. (Slices also keep the backlog small: tansu's SQLite engine re-reads a partition's
    // whole backlog on every fetch and answers group heartbeats only in between.)
    const ROUNDS: usize = 3;
    let slices = 2 * ROUNDS + 1;
    let events: Vec<_> = fixture
        .events
        .chunks(fixture.events.len() / slices + 1)
        .collect();
    let logs: Vec<_> = fixture
        .logs
        .chunks(fixture.logs.len() / slices + 1)
        .collect();
    let mut slices = events.into_iter().zip(logs);
    let stored = || async {
        setup.scalar("SELECT count() FROM logs").await
            + setup.scalar("SELECT count() FROM events").await
    };

    setup.produce_slice(slices.next()).await;
    let mut recoveries = Vec::new();
    let mut last_seen;
    for round in 1..=ROUNDS {
        // Started right after the crash (the first time, after none), as a supervisor does.
        let before = stored().await;
        let started = Instant::now();
        let mut ingest = setup.start_ingest(&small_batches);
        let deadline = started + Duration::from_secs(180);
        loop {
            let seen = stored().await;
            if seen > before {
                last_seen = seen;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no progress after restart {round}; ingest log:\n{}",
                ingest.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if round > 1 {
            recoveries.push(started.elapsed());
        }
        // Killed mid-stream, once it stored more than before the previous crash.
        tokio::time::sleep(Duration::from_millis(200)).await;
        ingest.kill9();
        eprintln!("round {round}: killed with {last_seen} rows stored");
        setup.produce_slice(slices.next()).await;
        // Restarted at once, and killed again a few seconds later: a crash loop leaves the
        // broker two dead members holding the partitions.
        let mut ingest = setup.start_ingest(&small_batches);
        tokio::time::sleep(Duration::from_secs(3)).await;
        ingest.kill9();
        setup.produce_slice(slices.next()).await;
    }
    for slice in slices {
        setup.produce_slice(Some(slice)).await;
    }

    let before = stored().await;
    let started = Instant::now();
    let mut ingest = setup.start_ingest(&small_batches);
    while stored().await <= before {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "no progress after the last restart; ingest log:\n{}",
            ingest.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    recoveries.push(started.elapsed());
    eprintln!("from restart to the first new rows: {recoveries:?}");
    let all_ids: usize = tenants
        .iter()
        .map(|t| distinct_event_ids(&fixture, t))
        .sum();
    setup
        .wait_for(
            "SELECT uniqExact(id) FROM events",
            all_ids as u64,
            &mut ingest,
        )
        .await;
    setup
        .wait_for(
            "SELECT count() FROM logs",
            fixture.logs.len() as u64,
            &mut ingest,
        )
        .await;
    eprintln!(
        "from the last restart to every row stored: {:?}",
        started.elapsed()
    );

    // Without FINAL every stored copy of a line shows (the table collapses them on their id only
    // when merging): exactly one per line sent.
    assert_eq!(
        setup.scalar("SELECT count() FROM logs").await,
        fixture.logs.len() as u64
    );
    assert_eq!(
        setup
            .scalar("SELECT uniqExact(account_id, workspace_id, timestamp, message) FROM logs")
            .await,
        fixture.logs.len() as u64
    );
    // The rollup fed by a materialized view counts distinct lines.
    assert_eq!(
        setup
            .scalar("SELECT toUInt64(uniqExactMerge(log_ids)) FROM log_counts_hourly")
            .await,
        fixture.logs.len() as u64
    );
    assert!(
        setup.scalar("SELECT count() FROM ingest_batches").await > 0,
        "the batches' ranges were recorded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn clickhouse_going_down_mid_stream_loses_nothing() {
    let Some(private) = PrivateStack::start("memory") else {
        eprintln!("skipped: needs the local stack to stop and start ClickHouse");
        return;
    };
    let setup = Setup::new(private.stack.clone(), "ingest_chdown").await;
    let tenants = fixtures::tenants(2);
    let fixture = fixtures::orchestration(3, &tenants, 150, Utc::now());
    let (first, second) = fixture.logs.split_at(fixture.logs.len() / 2);

    setup.produce(&setup.topics.logs_topic, first).await;
    let mut ingest = setup.start_ingest(&[]);
    setup
        .wait_for("SELECT count() FROM logs", first.len() as u64, &mut ingest)
        .await;

    assert!(setup.stack.control("stop", "clickhouse"));
    setup.produce(&setup.topics.logs_topic, second).await;
    setup
        .produce(&setup.topics.events_topic, &fixture.events)
        .await;
    // While ClickHouse is away, readiness says so and why.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = setup.http_get("/readyz").await;
        if status == 503 && body.contains("clickhouse") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readyz never reported ClickHouse down: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        ingest.is_running(),
        "ingest must wait for ClickHouse, not exit"
    );

    assert!(setup.stack.control("start", "clickhouse"));
    setup
        .wait_for(
            "SELECT count() FROM logs",
            fixture.logs.len() as u64,
            &mut ingest,
        )
        .await;
    let all_ids: usize = tenants
        .iter()
        .map(|t| distinct_event_ids(&fixture, t))
        .sum();
    setup
        .wait_for(
            "SELECT uniqExact(id) FROM events",
            all_ids as u64,
            &mut ingest,
        )
        .await;
    assert_eq!(
        setup
            .scalar("SELECT toUInt64(uniqExactMerge(log_ids)) FROM log_counts_hourly")
            .await,
        fixture.logs.len() as u64
    );
    drop(private);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schema_mismatch_stalls_ingest_says_why_and_resumes_once_fixed() {
    let setup = Setup::new(Stack::from_env(), "ingest_schema").await;
    let tenants = fixtures::tenants(2);
    let fixture = fixtures::orchestration(7, &tenants, 60, Utc::now());
    let (first, second) = fixture.logs.split_at(fixture.logs.len() / 2);
    setup.produce(&setup.topics.logs_topic, first).await;
    let mut ingest = setup.start_ingest(&[]);
    setup
        .wait_for("SELECT count() FROM logs", first.len() as u64, &mut ingest)
        .await;

    // The schema drifts from what this version writes (an operator's ALTER, a half-applied
    // migration): every insert into `logs` is refused until the column is back.
    let alter = |from: &str, to: &str| format!("ALTER TABLE logs RENAME COLUMN {from} TO {to}");
    setup
        .client()
        .query(&alter("message", "message_moved"))
        .execute()
        .await
        .unwrap();
    setup.produce(&setup.topics.logs_topic, second).await;

    // Ingest waits (nothing may be skipped) and says why, and what to do, where operators look.
    let deadline = Instant::now() + Duration::from_secs(120);
    let body = loop {
        let (status, body) = setup.http_get("/readyz").await;
        if status == 503 && body.contains("stalled_partitions") {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "readyz never reported the stall: {status} {body}\n{}",
            ingest.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(body.contains("flowhouse migrate"), "{body}");
    assert!(
        body.contains(&setup.topics.logs_topic),
        "names the partition: {body}"
    );
    assert!(
        setup
            .metric("flowhouse_ingest_insert_permanent_errors_total")
            .await
            >= 1.0
    );
    assert!(setup.metric("flowhouse_ingest_stalled_partitions").await >= 1.0);
    assert!(
        ingest.log_text().contains("run `flowhouse migrate`"),
        "the log tells the operator what to do:\n{}",
        ingest.log_text()
    );
    assert!(ingest.is_running(), "a stall is not a crash");
    assert_eq!(
        setup.scalar("SELECT count() FROM logs").await,
        first.len() as u64
    );

    // Fixed: the stalled partitions resume by themselves, and every line is stored once.
    setup
        .client()
        .query(&alter("message_moved", "message"))
        .execute()
        .await
        .unwrap();
    setup
        .wait_for(
            "SELECT count() FROM logs",
            fixture.logs.len() as u64,
            &mut ingest,
        )
        .await;
    assert_eq!(
        setup
            .scalar("SELECT uniqExact(account_id, workspace_id, timestamp, message) FROM logs")
            .await,
        fixture.logs.len() as u64
    );
    assert_eq!(
        setup
            .scalar("SELECT toUInt64(uniqExactMerge(log_ids)) FROM log_counts_hourly")
            .await,
        fixture.logs.len() as u64
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while setup.http_get("/readyz").await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            setup.http_get("/readyz").await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        setup.metric("flowhouse_ingest_stalled_partitions").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_messages_go_to_the_dead_letter_topic_and_the_rest_is_stored() {
    let setup = Setup::new(Stack::from_env(), "ingest_dlq").await;
    let tenant = fixtures::tenants(1)[0];
    let valid = fixtures::orchestration(4, &[tenant], 10, Utc::now());
    let now = Utc::now().to_rfc3339();
    let event = |resource: serde_json::Value, related: serde_json::Value| {
        serde_json::json!({"id": Uuid::new_v4(), "occurred": now, "event": "prefect.flow-run.Running", "resource": resource, "related": related})
            .to_string()
            .into_bytes()
    };
    let good_resource = serde_json::json!({"prefect.resource.id": "prefect.flow-run.x"});
    // (value, expected dead-letter kind); every one must come out of the DLQ, the valid ones in
    // ClickHouse.
    let poison: Vec<(Option<Vec<u8>>, &str)> = vec![
        (Some(b"{not json".to_vec()), "not_json"),
        (Some(b"[1, 2, 3]".to_vec()), "invalid"),
        (
            Some(
                serde_json::json!({"id": 5, "occurred": "soon", "event": 1, "resource": []})
                    .to_string()
                    .into_bytes(),
            ),
            "invalid",
        ),
        (
            Some(event(
                serde_json::json!({"prefect.resource.name": "no id"}),
                serde_json::json!([]),
            )),
            "invalid",
        ),
        (
            Some(event(
                good_resource.clone(),
                serde_json::json!([{"prefect.resource.id": "prefect.tag.x"}]),
            )),
            "invalid",
        ),
        (
            Some(event(
                serde_json::json!({"prefect.resource.id": "x".repeat(5000)}),
                serde_json::json!([]),
            )),
            "too_large",
        ),
        (None, "no_value"),
    ];

    let producer = setup.stack.producer();
    let envelope = Envelope {
        tenant,
        received: None,
    };
    let mut expected: BTreeMap<i64, (&str, Option<Vec<u8>>)> = BTreeMap::new();
    // Everything goes to partition 0, poison first: later valid messages prove nothing stalls.
    for (value, kind) in &poison {
        let mut record = FutureRecord::to(&setup.topics.events_topic)
            .key("k")
            .partition(0)
            .headers(envelope.headers().insert(Header {
                key: "x-trace",
                value: Some("kept"),
            }));
        if let Some(value) = value {
            record = record.payload(value);
        }
        let offset = producer
            .send(record, Duration::from_secs(30))
            .await
            .unwrap()
            .offset;
        expected.insert(offset, (kind, value.clone()));
    }
    for (value, headers, kind) in [
        (
            event(good_resource.clone(), serde_json::json!([])),
            OwnedHeaders::new(),
            "bad_headers",
        ),
        (
            event(good_resource.clone(), serde_json::json!([])),
            OwnedHeaders::new()
                .insert(Header {
                    key: header::ACCOUNT_ID,
                    value: Some("acct"),
                })
                .insert(Header {
                    key: header::WORKSPACE_ID,
                    value: Some("ws"),
                }),
            "bad_headers",
        ),
    ] {
        let record = FutureRecord::to(&setup.topics.events_topic)
            .key("k")
            .partition(0)
            .payload(&value)
            .headers(headers);
        let offset = producer
            .send(record, Duration::from_secs(30))
            .await
            .unwrap()
            .offset;
        expected.insert(offset, (kind, Some(value)));
    }
    setup
        .produce(&setup.topics.events_topic, &valid.events)
        .await;
    setup.produce(&setup.topics.logs_topic, &valid.logs).await;

    let mut ingest = setup.start_ingest(&[("FLOWHOUSE_MAX_EVENT_BYTES", "4096")]);
    setup
        .wait_for(
            "SELECT uniqExact(id) FROM events",
            distinct_event_ids(&valid, &tenant) as u64,
            &mut ingest,
        )
        .await;
    setup
        .wait_for(
            "SELECT count() FROM logs",
            valid.logs.len() as u64,
            &mut ingest,
        )
        .await;

    let consumer: StreamConsumer = setup
        .stack
        .kafka
        .config()
        .unwrap()
        .set("group.id", unique_name("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&setup.topics.dlq_topic]).unwrap();
    let mut seen: BTreeMap<i64, HashMap<String, String>> = BTreeMap::new();
    while seen.len() < expected.len() {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .expect("dead letters within 60 s")
            .unwrap();
        let headers: HashMap<String, String> = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let offset: i64 = headers[header::DLQ_SOURCE_OFFSET].parse().unwrap();
        let (kind, value) = &expected[&offset];
        assert_eq!(
            headers[header::DLQ_KIND],
            *kind,
            "offset {offset}: {headers:?}"
        );
        assert!(!headers[header::DLQ_REASON].is_empty());
        assert_eq!(headers[header::DLQ_SOURCE_TOPIC], setup.topics.events_topic);
        assert_eq!(headers[header::DLQ_SOURCE_PARTITION], "0");
        assert_eq!(
            message.payload().map(<[u8]>::to_vec),
            *value,
            "the original value is kept"
        );
        assert_eq!(message.key(), Some(&b"k"[..]), "the original key is kept");
        if *kind != "bad_headers" {
            assert_eq!(
                headers.get("x-trace").map(String::as_str),
                Some("kept"),
                "original headers are kept"
            );
        }
        seen.insert(offset, headers);
    }
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    let reasons: Vec<&str> = seen
        .values()
        .map(|h| h[header::DLQ_REASON].as_str())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("resource[\"prefect.resource.id\"]: is required")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("related[0][\"prefect.resource.role\"]")),
        "{reasons:?}"
    );
    assert_eq!(
        setup.metric("flowhouse_ingest_dead_letters_total").await,
        expected.len() as f64
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_too_large_to_produce_are_cut_to_fit_and_never_stall() {
    let setup = Setup::new(Stack::from_env(), "ingest_dlq_big").await;
    let tenant = fixtures::tenants(1)[0];
    let valid = fixtures::orchestration(8, &[tenant], 5, Utc::now());
    let envelope = Envelope {
        tenant,
        received: None,
    };
    let producer: FutureProducer = setup
        .stack
        .kafka
        .config()
        .unwrap()
        .set("message.max.bytes", "3000000")
        .create()
        .unwrap();
    // Not JSON, so dead-lettered: one over librdkafka's default producer limit (1 MB) but within
    // the largest event (FLOWHOUSE_MAX_EVENT_BYTES, 1.5 MB), one over both. All on partition 0,
    // before valid messages that must not wait behind them.
    let garbage = |bytes: usize| vec![b'{'; bytes];
    let mut offsets = Vec::new();
    for bytes in [1_200_000, 2_000_000] {
        let value = garbage(bytes);
        let record = FutureRecord::to(&setup.topics.events_topic)
            .key("k")
            .partition(0)
            .payload(&value)
            .headers(envelope.headers());
        let offset = producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(error, _)| error)
            .expect("the broker takes a 2 MB message")
            .offset;
        offsets.push(offset);
    }
    for (_, value) in &valid.events {
        let record = FutureRecord::to(&setup.topics.events_topic)
            .key("k")
            .partition(0)
            .payload(value)
            .headers(envelope.headers());
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(error, _)| error)
            .unwrap();
    }
    let mut ingest = setup.start_ingest(&[]);
    setup
        .wait_for(
            "SELECT uniqExact(id) FROM events",
            distinct_event_ids(&valid, &tenant) as u64,
            &mut ingest,
        )
        .await;

    let consumer: StreamConsumer = setup
        .stack
        .kafka
        .config()
        .unwrap()
        .set("group.id", unique_name("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&setup.topics.dlq_topic]).unwrap();
    let mut letters: BTreeMap<i64, (Vec<u8>, Option<String>)> = BTreeMap::new();
    while letters.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .expect("dead letters within 60 s")
            .unwrap();
        let header = |name: &str| {
            message.headers().and_then(|headers| {
                headers
                    .iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        let offset: i64 = header(header::DLQ_SOURCE_OFFSET).unwrap().parse().unwrap();
        let value = message.payload().unwrap_or_default().to_vec();
        letters.insert(offset, (value, header("flowhouse.dlq.truncated")));
    }
    let (whole, marker) = &letters[&offsets[0]];
    assert_eq!(
        whole.len(),
        1_200_000,
        "within the largest event: kept whole"
    );
    assert_eq!(marker, &None);
    let (cut, marker) = &letters[&offsets[1]];
    assert_eq!(marker.as_deref(), Some("2000000"), "says how large it was");
    assert!(
        cut.len() > 1_000_000 && cut.len() < 2_000_000 && cut.iter().all(|&b| b == b'{'),
        "a prefix of the original that fits: {} bytes",
        cut.len()
    );
    assert_eq!(
        setup.metric("flowhouse_ingest_dead_letters_total").await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_inserts_and_commits_what_is_buffered() {
    let setup = Setup::new(Stack::from_env(), "ingest_term").await;
    let tenants = fixtures::tenants(2);
    let fixture = fixtures::orchestration(5, &tenants, 50, Utc::now());
    // Batches never close on their own: only the drain can insert them. A long session, so
    // that a successor gets the partitions quickly only if the group was left.
    let settings = [
        ("FLOWHOUSE_INGEST_BATCH_MAX_AGE", "1h"),
        ("FLOWHOUSE_INGEST_BATCH_MAX_ROWS", "1000000"),
        ("FLOWHOUSE_INGEST_SESSION_TIMEOUT", "90s"),
    ];
    let mut ingest = setup.start_ingest(&settings);
    let ends = setup.produce(&setup.topics.logs_topic, &fixture.logs).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while setup
        .metric("flowhouse_ingest_messages_consumed_total")
        .await
        < fixture.logs.len() as f64
    {
        assert!(
            Instant::now() < deadline,
            "never consumed everything:\n{}",
            ingest.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        setup.scalar("SELECT count() FROM logs").await,
        0,
        "nothing inserted before the signal"
    );

    assert_eq!(
        ingest.terminate(Duration::from_secs(60)),
        Some(0),
        "clean exit:\n{}",
        ingest.log_text()
    );
    assert_eq!(
        setup.scalar("SELECT count() FROM logs").await,
        fixture.logs.len() as u64
    );

    // The committed offsets are the end of every partition: a restart would replay nothing.
    let consumer: StreamConsumer = setup
        .stack
        .kafka
        .config()
        .unwrap()
        .set("group.id", &setup.group)
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    for partition in 0..setup.topics.topic_partitions {
        partitions.add_partition(&setup.topics.logs_topic, partition);
    }
    let committed = consumer
        .committed_offsets(partitions, Duration::from_secs(10))
        .unwrap();
    for element in committed.elements() {
        let expected = ends
            .get(&element.partition())
            .map_or(Offset::Invalid, |end| Offset::Offset(*end));
        assert_eq!(
            element.offset(),
            expected,
            "partition {}",
            element.partition()
        );
    }

    // It left the group on its way out: a successor is assigned the partitions at once, not
    // after the stopped member's 90 s session expires.
    assert!(ingest.log_text().contains("left the consumer group"));
    let started = Instant::now();
    let mut successor = setup.start_ingest(&settings);
    loop {
        // Refused while the successor starts.
        let url = format!("http://127.0.0.1:{}/readyz", setup.admin_port);
        let readyz: serde_json::Value = match reqwest::get(url).await {
            Ok(response) => response.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        };
        if readyz["components"]["kafka"]["ready"] == true {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no assignment for the successor: {readyz}\n{}",
            successor.log_text()
        );
        assert!(successor.is_running(), "{}", successor.log_text());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("successor assigned after {:?}", started.elapsed());
}

/// Per flow run, what docs/metrics.md defines, computed here from the messages themselves.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Row, Deserialize)]
struct RunTruth {
    flow_run_id: String,
    flow_id: String,
    deployment_id: String,
    work_pool_id: String,
    tags: Vec<String>,
    final_state: String,
    final_state_type: String,
    start_time: Option<i64>,
    end_time: Option<i64>,
    expected_start: Option<i64>,
    late_at: Option<i64>,
}

fn runs_from_messages(fixture: &Fixture, tenant: &Tenant) -> Vec<RunTruth> {
    let micros = |value: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(value.as_str().unwrap())
            .unwrap()
            .timestamp_micros()
    };
    let mut seen_ids = BTreeSet::new();
    let mut runs: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for (t, bytes) in &fixture.events {
        let event: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        let name = event["event"].as_str().unwrap();
        if t != tenant
            || !name.starts_with("prefect.flow-run.")
            || !seen_ids.insert(event["id"].to_string())
        {
            continue;
        }
        let run = event["resource"]["prefect.resource.id"].as_str().unwrap()
            ["prefect.flow-run.".len()..]
            .to_string();
        runs.entry(run).or_default().push(event);
    }
    let related_id = |events: &[serde_json::Value], role: &str, prefix: &str| -> String {
        events
            .iter()
            .flat_map(|e| e["related"].as_array().unwrap().iter())
            .filter(|r| r["prefect.resource.role"] == role)
            .map(|r| {
                r["prefect.resource.id"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches(prefix)
                    .to_string()
            })
            .max()
            .unwrap_or_default()
    };
    let mut truths: Vec<RunTruth> = runs
        .into_iter()
        .map(|(run, mut events)| {
            events.sort_by_key(|e| micros(&e["occurred"]));
            let state = |e: &serde_json::Value| {
                e["resource"]["prefect.state-type"]
                    .as_str()
                    .unwrap()
                    .to_string()
            };
            let name = |e: &serde_json::Value| {
                e["event"].as_str().unwrap()["prefect.flow-run.".len()..].to_string()
            };
            let terminal = events.iter().rfind(|e| {
                ["COMPLETED", "FAILED", "CRASHED", "CANCELLED"].contains(&state(e).as_str())
            });
            let mut tags: Vec<String> = events
                .iter()
                .flat_map(|e| e["related"].as_array().unwrap().iter())
                .filter(|r| r["prefect.resource.role"] == "tag")
                .map(|r| {
                    r["prefect.resource.id"]
                        .as_str()
                        .unwrap()
                        .trim_start_matches("prefect.tag.")
                        .to_string()
                })
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            tags.sort();
            RunTruth {
                flow_run_id: run,
                flow_id: related_id(&events, "flow", "prefect.flow."),
                deployment_id: related_id(&events, "deployment", "prefect.deployment."),
                work_pool_id: related_id(&events, "work-pool", "prefect.work-pool."),
                tags,
                final_state: terminal.map(name).unwrap_or_default(),
                final_state_type: terminal.map(state).unwrap_or_default(),
                start_time: events
                    .iter()
                    .find(|e| state(e) == "RUNNING")
                    .map(|e| micros(&e["occurred"])),
                end_time: terminal.map(|e| micros(&e["occurred"])),
                expected_start: events
                    .iter()
                    .filter(|e| state(e) == "SCHEDULED")
                    .map(|e| {
                        micros(&e["payload"]["validated_state"]["state_details"]["scheduled_time"])
                    })
                    .min(),
                late_at: events
                    .iter()
                    .find(|e| name(e) == "Late")
                    .map(|e| micros(&e["occurred"])),
            }
        })
        .collect();
    truths.sort();
    truths
}

#[tokio::test(flavor = "multi_thread")]
async fn rollups_equal_the_messages_and_a_full_scan_of_raw_events() {
    let setup = Setup::new(Stack::from_env(), "ingest_rollup").await;
    let tenants = fixtures::tenants(3);
    let fixture = fixtures::orchestration(6, &tenants, 120, Utc::now());
    setup
        .produce(&setup.topics.events_topic, &fixture.events)
        .await;
    setup.produce(&setup.topics.logs_topic, &fixture.logs).await;
    let mut ingest = setup.start_ingest(&[("FLOWHOUSE_INGEST_BATCH_MAX_ROWS", "500")]);
    let all_ids: usize = tenants
        .iter()
        .map(|t| distinct_event_ids(&fixture, t))
        .sum();
    setup
        .wait_for(
            "SELECT uniqExact(id) FROM events",
            all_ids as u64,
            &mut ingest,
        )
        .await;
    setup
        .wait_for(
            "SELECT count() FROM logs",
            fixture.logs.len() as u64,
            &mut ingest,
        )
        .await;

    // 1. The per-run rollup equals what the messages say, run by run.
    for tenant in &tenants {
        let mut rollup: Vec<RunTruth> = setup
            .client()
            .query(&format!(
                "SELECT flow_run_id, max(flow_id) AS flow_id, max(deployment_id) AS deployment_id,
                        max(work_pool_id) AS work_pool_id, arraySort(groupUniqArrayArray(tags)) AS tags,
                        argMaxIfMerge(final_state) AS final_state, argMaxIfMerge(final_state_type) AS final_state_type,
                        toUnixTimestamp64Micro(min(start_time)) AS start_time,
                        toUnixTimestamp64Micro(max(end_time)) AS end_time,
                        toUnixTimestamp64Micro(min(expected_start)) AS expected_start,
                        toUnixTimestamp64Micro(min(late_at)) AS late_at
                 FROM flow_runs WHERE {} GROUP BY flow_run_id",
                tenant_filter(tenant)
            ))
            .fetch_all()
            .await
            .unwrap();
        rollup.sort();
        assert_eq!(
            rollup,
            runs_from_messages(&fixture, tenant),
            "tenant {tenant}"
        );
    }

    // 2. The hourly rollups equal a full scan of the raw tables. Each side is written
    //    independently of the materialized views' SQL; EXCEPT both ways must be empty.
    let comparisons = [
        (
            "flow runs entering each state per hour",
            "SELECT account_id, workspace_id, hour, state_type, state_name, flow_id, uniqExactMerge(runs) AS n
             FROM flow_run_states_hourly GROUP BY account_id, workspace_id, hour, state_type, state_name, flow_id",
            "SELECT account_id, workspace_id, toStartOfHour(occurred) AS hour, resource['prefect.state-type'] AS state_type,
                    splitByChar('.', event)[3] AS state_name,
                    replaceOne(arrayFilter(r -> r['prefect.resource.role'] = 'flow', related)[1]['prefect.resource.id'], 'prefect.flow.', '') AS flow_id,
                    count(DISTINCT resource_id) AS n
             FROM events FINAL WHERE event LIKE 'prefect.flow-run.%'
             GROUP BY account_id, workspace_id, hour, state_type, state_name, flow_id",
        ),
        (
            "task runs entering each state per hour",
            "SELECT account_id, workspace_id, hour, state_type, uniqExactMerge(runs) AS n
             FROM task_run_states_hourly GROUP BY account_id, workspace_id, hour, state_type",
            "SELECT account_id, workspace_id, toStartOfHour(occurred) AS hour, resource['prefect.state-type'] AS state_type,
                    count(DISTINCT resource_id) AS n
             FROM events FINAL WHERE event LIKE 'prefect.task-run.%'
             GROUP BY account_id, workspace_id, hour, state_type",
        ),
        (
            "log lines per hour, level and flow run",
            "SELECT account_id, workspace_id, hour, level, flow_run_id, toUInt64(uniqExactMerge(log_ids)) AS n
             FROM log_counts_hourly GROUP BY account_id, workspace_id, hour, level, flow_run_id",
            "SELECT account_id, workspace_id, toStartOfHour(timestamp) AS hour, level,
                    ifNull(flow_run_id, toUUID('00000000-0000-0000-0000-000000000000')) AS flow_run_id, count() AS n
             FROM logs FINAL GROUP BY account_id, workspace_id, hour, level, flow_run_id",
        ),
    ];
    for (what, rollup, scan) in comparisons {
        for (left, right) in [(rollup, scan), (scan, rollup)] {
            let differences = setup
                .scalar(&format!("SELECT count() FROM (({left}) EXCEPT ({right}))"))
                .await;
            assert_eq!(differences, 0, "{what}: rollup and full scan differ");
        }
        let rows = setup
            .scalar(&format!("SELECT count() FROM ({rollup})"))
            .await;
        assert!(rows > 10, "{what}: the comparison covered only {rows} rows");
    }
}
