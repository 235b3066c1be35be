//! The mirror's delivery through a Kafka outage, on a private local stack whose broker this test
//! stops and starts: while Kafka does not acknowledge, the deliverer stops taking items (its
//! followers stop reading Prefect) and counts nothing as delivered; once the broker is back,
//! every item is in the topic, keyed and with the tenant's headers, and the checkpoint position
//! is the latest item.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use flowhouse_mirror::deliver::{Deliverer, Producer};
use flowhouse_mirror::item::Item;
use flowhouse_schema::{Envelope, Stream, Tenant};
use flowhouse_service::admin::Readiness;
use flowhouse_service::kafka::{TopicSpec, ensure_topics};
use flowhouse_tests::{PrivateStack, unique_name, workspace_root};
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use serde_json::value::RawValue;
use tokio::sync::watch;
use uuid::Uuid;

/// Stops or starts the private broker, on its SQLite storage (so it comes back with its topics
/// and messages; `Stack::control` would restart it on the default storage).
fn broker(stack: &flowhouse_tests::Stack, action: &str) {
    let dir = stack.stack_dir.as_ref().expect("a local stack");
    let status = std::process::Command::new(workspace_root().join("deploy/local/stack"))
        .args([action, "kafka"])
        .env("FLOWHOUSE_STACK_DIR", dir)
        .env("FLOWHOUSE_KAFKA_STORAGE", "sqlite")
        .status()
        .expect("run deploy/local/stack");
    assert!(status.success(), "deploy/local/stack {action} kafka failed");
}

fn event(n: i64) -> Item {
    let at = DateTime::<Utc>::from_timestamp(1_800_000_000 + n, 0).unwrap();
    let id = Uuid::now_v7();
    let json = serde_json::json!({
        "id": id, "occurred": at, "event": "prefect.flow-run.Running",
        "resource": {"prefect.resource.id": format!("prefect.flow-run.{n}")},
        "related": [], "payload": {}, "received": at,
    });
    Item::parse(
        Stream::Events,
        RawValue::from_string(json.to_string()).unwrap(),
    )
    .unwrap()
}

/// Waits (at most `within`) until `check` holds of the watched value.
async fn wait_for<T: Clone>(
    what: &str,
    receiver: &mut watch::Receiver<T>,
    within: Duration,
    check: impl Fn(&T) -> bool,
) {
    let result = tokio::time::timeout(within, receiver.wait_for(|v| check(v))).await;
    assert!(matches!(result, Ok(Ok(_))), "{what}: not within {within:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kafka_outage_pauses_the_mirror_and_loses_nothing() {
    let Some(private) = PrivateStack::start("sqlite") else {
        eprintln!("skipped: needs the local stack (FLOWHOUSE_STACK_DIR) to stop its broker");
        return;
    };
    flowhouse_service::telemetry::init_tracing(&flowhouse_service::telemetry::LogArgs {
        log_format: flowhouse_service::telemetry::LogFormat::Text,
        log: std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
    });
    let started = Instant::now();
    let stack = &private.stack;
    let topic = unique_name("mirror_events");
    ensure_topics(
        &stack.kafka,
        &[TopicSpec {
            name: topic.clone(),
            partitions: 2,
        }],
    )
    .await
    .unwrap();
    let tenant = Tenant {
        account_id: Uuid::new_v4(),
        workspace_id: Uuid::new_v4(),
    };
    let readiness = Readiness::default();
    let producer =
        Producer::new(&stack.kafka, Duration::from_secs(300), readiness.clone()).unwrap();
    let deliverer = Deliverer::start(producer, Stream::Events, topic.clone(), tenant, None);
    let handle = deliverer.handle();
    let mut progress = deliverer.progress();
    let mut accepting = handle.accepting.clone();

    let before: Vec<Item> = (0..100).map(event).collect();
    for item in before.clone() {
        handle.items.send(item).await.unwrap();
    }
    wait_for(
        "the first 100 delivered",
        &mut progress,
        Duration::from_secs(60),
        |p| p.delivered == 100,
    )
    .await;

    broker(stack, "stop");
    let during: Vec<Item> = (100..150).map(event).collect();
    for item in during.clone() {
        handle.items.send(item).await.unwrap();
    }
    wait_for(
        "refusal noticed",
        &mut accepting,
        Duration::from_secs(60),
        |a| !*a,
    )
    .await;
    assert!(!readiness.is_ready(), "/readyz says Kafka refuses");
    assert_eq!(
        progress.borrow().delivered,
        100,
        "nothing counts as delivered while Kafka refuses"
    );

    broker(stack, "start");
    wait_for(
        "accepting again",
        &mut accepting,
        Duration::from_secs(120),
        |a| *a,
    )
    .await;
    wait_for(
        "all 150 delivered",
        &mut progress,
        Duration::from_secs(60),
        |p| p.delivered == 150,
    )
    .await;
    assert!(readiness.is_ready());
    let latest = during.last().unwrap().position();
    assert_eq!(progress.borrow().position.as_ref(), Some(&latest));

    // Every item is in the topic (a resend may have left a copy: Flowhouse keeps one per id).
    let consumer: StreamConsumer = stack
        .kafka
        .config()
        .unwrap()
        .set("group.id", unique_name("check"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let wanted: BTreeSet<Uuid> = before.iter().chain(&during).map(|i| i.id).collect();
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < wanted.len() {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("messages")
            .expect("a message");
        let envelope = Envelope::from_headers(message.headers()).expect("the contract's headers");
        assert_eq!(envelope.tenant, tenant);
        assert!(envelope.received.is_some());
        assert_eq!(
            message.key(),
            Some(tenant.workspace_id.to_string().as_bytes())
        );
        let item = Item::parse(
            Stream::Events,
            RawValue::from_string(String::from_utf8(message.payload().unwrap().to_vec()).unwrap())
                .unwrap(),
        )
        .unwrap();
        seen.insert(item.id);
        assert!(
            Instant::now() < deadline,
            "{} of {} read",
            seen.len(),
            wanted.len()
        );
    }
    assert_eq!(seen, wanted);
    drop(handle);
    deliverer.drain(Duration::from_secs(30)).await.unwrap();
    eprintln!(
        "150 items through a Kafka outage in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
