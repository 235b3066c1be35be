//! The issue's "done when", end to end and in real time: against `flowhouse serve` (endpoint,
//! ingest, query API and the automations' evaluator in one process, on the local stack), an
//! operator asks through the API to be told when flow X fails too often (a metric trigger on
//! the share of successful runs, and an event trigger on each failure); Prefect-shaped events
//! go in through the endpoint; each automation fires once, the metric one resolves once when
//! the runs recover, and the firings show in the tenant's own event search.
//!
//! It measures the firing latency as an operator sees it: from the endpoint's acknowledgement
//! of the breaching events to the webhook received (the metric trigger's includes its
//! `firing_for`, lowered to 5 s here with `FLOWHOUSE_AUTOMATIONS_MIN_WINDOW`).

use std::time::{Duration, Instant};

use flowhouse_tests::served::Served;
use flowhouse_tests::webhook::Receiver;
use serde_json::{Value, json};
use uuid::Uuid;

/// How long a liveness wait may take before the test fails (not a performance bound).
const PATIENCE: Duration = Duration::from_secs(90);

/// A run of `flow` that ran 10 s and ended now, failed or completed: Prefect's state events.
fn run(flow: Uuid, failed: bool) -> Vec<Value> {
    let id = format!("prefect.flow-run.{}", Uuid::new_v4());
    let related = json!([{"prefect.resource.id": format!("prefect.flow.{flow}"),
        "prefect.resource.role": "flow", "prefect.resource.name": "flow-x"}]);
    let now = chrono::Utc::now();
    let (name, state) = if failed {
        ("prefect.flow-run.Failed", "FAILED")
    } else {
        ("prefect.flow-run.Completed", "COMPLETED")
    };
    let at =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    vec![
        json!({"id": Uuid::new_v4(), "occurred": at(now - chrono::TimeDelta::seconds(10)),
            "event": "prefect.flow-run.Running",
            "resource": {"prefect.resource.id": id, "prefect.state-type": "RUNNING"},
            "related": related}),
        json!({"id": Uuid::new_v4(), "occurred": at(now), "event": name,
            "resource": {"prefect.resource.id": id, "prefect.state-type": state},
            "related": related}),
    ]
}

async fn post(http: &reqwest::Client, served: &Served, events: &[Value]) -> Instant {
    let response = http
        .post(format!("{}/events", served.workspace_url()))
        .bearer_auth(&served.key)
        .json(events)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    Instant::now()
}

/// Waits until the receiver has `n` requests named `name` (by their payload); returns when the
/// last of them arrived, polled every 5 ms.
async fn wait_for(receiver: &Receiver, name: &str, n: usize) -> Instant {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let seen = receiver
            .all()
            .iter()
            .filter(|r| r.body["name"] == name)
            .count();
        if seen >= n {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "{name}: {seen} of {n}: {:?}",
            receiver.all().iter().map(|r| &r.body).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The names of the `prefect.automation.*` events the workspace at `base` finds, sorted.
async fn automation_events(http: &reqwest::Client, base: &str, key: &str) -> Vec<String> {
    let found: Value = http
        .post(format!("{base}/events/filter"))
        .bearer_auth(key)
        .json(&json!({"filter": {"event": {"prefix": ["prefect.automation."]}}, "limit": 50}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut names: Vec<String> = found["events"]
        .as_array()
        .unwrap_or_else(|| panic!("{found}"))
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_is_told_once_when_a_flow_fails_too_often_and_once_when_it_recovers() {
    let started = Instant::now();
    let served = Served::start(&[
        ("FLOWHOUSE_AUTOMATIONS_MIN_WINDOW", "5s".into()),
        ("FLOWHOUSE_AUTOMATIONS_INTERVAL", "1s".into()),
        ("FLOWHOUSE_WEBHOOK_ALLOW_PRIVATE", "true".into()),
    ])
    .await;
    eprintln!("serve ready after {:?}", started.elapsed());
    let (receiver, url) = Receiver::start().await;
    let http = reqwest::Client::new();
    let base = served.workspace_url();
    let flow = Uuid::new_v4();
    let flow_x = json!({"prefect.resource.role": "flow",
        "prefect.resource.id": format!("prefect.flow.{flow}")});
    let hook = |name: &str| {
        json!([{"type": "call-webhook", "url": url, "payload": format!(
            r#"{{"name": "{name}", "transition": "{{{{ transition }}}}", "value": {{{{ value | tojson }}}}}}"#)}])
    };
    for body in [
        json!({"name": "flow X fails", "trigger": {"type": "metric", "match_related": flow_x,
            "metric": {"name": "successes", "operator": "<", "threshold": 0.8,
                       "range": 60, "firing_for": 5}},
            "actions": hook("metric")}),
        json!({"name": "flow X failed", "trigger": {"type": "event", "posture": "Reactive",
            "expect": ["prefect.flow-run.Failed"], "match_related": flow_x,
            "threshold": 1, "within": 60},
            "actions_on_trigger": hook("event")}),
    ] {
        let response = http
            .post(format!("{base}/automations/"))
            .bearer_auth(&served.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    }
    // The evaluator has read the automations and holds its leases before the breach.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Two runs of flow X, both failed: successes 0 < 0.8 from now on.
    let breach: Vec<Value> = run(flow, true).into_iter().chain(run(flow, true)).collect();
    let acknowledged = post(&http, &served, &breach).await;
    let event_fired = wait_for(&receiver, "event", 1).await - acknowledged;
    let metric_fired = wait_for(&receiver, "metric", 1).await - acknowledged;
    eprintln!(
        "firing latency, breach acknowledged by the endpoint → webhook received: event trigger \
         {event_fired:?}; metric trigger {metric_fired:?} (of which firing_for 5 s)"
    );
    assert!(
        metric_fired >= Duration::from_secs(5),
        "the metric trigger waited its firing_for: {metric_fired:?}"
    );

    // Ten completed runs: 10 of 12 succeeded (0.83 ≥ 0.8); resolves after firing_for.
    let recovery: Vec<Value> = (0..10).flat_map(|_| run(flow, false)).collect();
    let recovered = post(&http, &served, &recovery).await;
    let resolved = wait_for(&receiver, "metric", 2).await - recovered;
    eprintln!("metric trigger resolved {resolved:?} after the recovery was acknowledged");
    // A few more rounds: nothing more fires while the states stay.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let bodies: Vec<(String, String)> = receiver
        .all()
        .iter()
        .map(|r| {
            (
                r.body["name"].as_str().unwrap().to_string(),
                r.body["transition"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // The event trigger saw two failures: one firing (it stays breached within its window).
    assert_eq!(
        bodies,
        vec![
            ("event".to_string(), "triggered".to_string()),
            ("metric".to_string(), "triggered".to_string()),
            ("metric".to_string(), "resolved".to_string()),
        ],
        "each transition once"
    );
    assert!(receiver.attempts().values().all(|n| *n == 1));
    let value = receiver.all()[1].body["value"].as_f64().unwrap();
    assert_eq!(value, 0.0, "both runs of flow X failed: successes 0");

    eprintln!("firings checked after {:?}", started.elapsed());
    // The firings are in the tenant's own events, through the same search as any event.
    let deadline = Instant::now() + PATIENCE;
    let names = loop {
        let names = automation_events(&http, &base, &served.key).await;
        if names.len() >= 3 || Instant::now() > deadline {
            break names;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(
        names,
        vec![
            "prefect.automation.resolved",
            "prefect.automation.triggered",
            "prefect.automation.triggered"
        ]
    );
    // Another tenant sees none of them.
    let other = served.url_of(served.other_tenant);
    let seen = automation_events(&http, &other, &served.other_key).await;
    assert_eq!(seen, Vec::<String>::new());
    served.finish().await;
    eprintln!("done after {:?}", started.elapsed());
}
