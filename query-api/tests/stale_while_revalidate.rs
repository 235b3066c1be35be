//! Stale-while-revalidate with data that changes closed buckets: a late event and a retried
//! run (a failed run completed later) change the flow-runs card of a window days back. Every
//! answer the API gives must equal a full scan of the raw events as of when it was computed
//! (`window.computed_at`, `Age`): first the answer from before the change, served stale while it
//! is replaced, then the answer with the change. Its own test binary (own process) so that the
//! cache counters on `/metrics` are this test's.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::DateTime;
use common::workload::{DAY, HOUR, rfc3339};
use common::{Harness, insert_events, q, raw};
use flowhouse_query_api::Settings;
use uuid::Uuid;

type ByState = BTreeMap<(String, String), u64>;

fn by_state_of(card: &serde_json::Value) -> ByState {
    card["by_state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                (
                    c["state_type"].as_str().unwrap().to_string(),
                    c["state_name"].as_str().unwrap().to_string(),
                ),
                c["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

async fn scan(h: &Harness, since: i64, until: i64) -> ByState {
    raw::rows(
        &h.client,
        &raw::flow_runs_by_state(),
        h.tenants[0].tenant,
        since,
        until,
    )
    .await
    .iter()
    .map(|r| {
        (
            (
                r["final_type"].as_str().unwrap().to_string(),
                r["final_name"].as_str().unwrap().to_string(),
            ),
            r["n"].as_u64().unwrap(),
        )
    })
    .collect()
}

fn micros(rfc3339: &str) -> i64 {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_micros()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_equal_a_fresh_computation_as_of_when_they_were_computed() {
    let fresh = Duration::from_secs(1);
    let mut h = Harness::start(
        "qa_swr",
        1,
        Settings {
            cache_fresh: fresh,
            cache_max_stale: Duration::from_secs(600),
            ..Settings::default()
        },
    )
    .await;
    h.load(11, 40).await;
    let (tenant, key) = (h.tenants[0].tenant, h.tenants[0].key.clone());
    // From the data's start to past now: the window covers the open hour, so its answer is
    // fresh for `fresh` only.
    let now = chrono::Utc::now().timestamp_micros();
    let (since, until) = (h.base, (now / HOUR + 2) * HOUR);
    let query = q(&[("since", &rfc3339(since)), ("until", &rfc3339(until))]);
    let url = h.url(tenant, "metrics/flow-runs");

    let before = scan(&h, since, until).await;
    let first = h.get_json(&key, &url, &query).await;
    assert_eq!(by_state_of(&first), before);

    // A retried run: the latest failed run gets a Completed event a minute after its failure,
    // days back; and a run nobody saw before arrives late, completed two days ago.
    let failed = h
        .events
        .iter()
        .filter(|e| e.tenant == tenant && e.event == "prefect.flow-run.Failed")
        .max_by_key(|e| e.occurred)
        .expect("the workload has failed runs")
        .clone();
    let mut retried = failed.row();
    retried.id = Uuid::new_v4();
    retried.occurred = common::workload::time(failed.occurred + 60_000_000);
    retried.event = "prefect.flow-run.Completed".into();
    for (key, value) in &mut retried.resource {
        match key.as_str() {
            "prefect.state-type" => *value = "COMPLETED".into(),
            "prefect.state-name" => *value = "Completed".into(),
            _ => {}
        }
    }
    let mut late = retried.clone();
    late.id = Uuid::new_v4();
    late.occurred = common::workload::time(now - 2 * DAY);
    late.resource = vec![
        (
            "prefect.resource.id".into(),
            format!("prefect.flow-run.{}", Uuid::new_v4()),
        ),
        ("prefect.state-type".into(), "COMPLETED".into()),
        ("prefect.state-name".into(), "Completed".into()),
    ];
    let changed_at = chrono::Utc::now().timestamp_micros();
    insert_events(&h.client, &[retried, late]).await;
    let after = scan(&h, since, until).await;
    assert_ne!(after, before, "the change must move the card");

    // Past its freshness, the first answer is still served (stale) while it is replaced.
    tokio::time::sleep(fresh + Duration::from_millis(200)).await;
    let mut seen_stale = false;
    let mut seen_new = false;
    for _ in 0..300 {
        let response = h.get(&key, &url, &query).await;
        assert_eq!(response.status(), 200);
        let age: i64 = response.headers()["age"].to_str().unwrap().parse().unwrap();
        let card: serde_json::Value = response.json().await.unwrap();
        let computed_at = micros(card["window"]["computed_at"].as_str().unwrap());
        let served_at = chrono::Utc::now().timestamp_micros();
        // The stated age is the answer's (whole seconds, rounded down).
        assert!(
            (served_at - computed_at) / 1_000_000 - age <= 1,
            "Age {age} s for an answer computed {} ms ago",
            (served_at - computed_at) / 1000
        );
        assert!(age <= 601, "never older than freshness + max_stale");
        let expected = if computed_at < changed_at {
            &before
        } else {
            &after
        };
        assert_eq!(
            &by_state_of(&card),
            expected,
            "the answer computed at {computed_at} equals the scan of that time"
        );
        if computed_at < changed_at {
            seen_stale = true;
        } else {
            seen_new = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen_stale,
        "the first request past freshness got the stale answer"
    );
    assert!(seen_new, "the background load replaced it");

    let miss = h
        .metric(
            "flowhouse_query_cache_requests_total",
            &[("route", "flow_runs"), ("result", "miss")],
        )
        .await;
    let stale = h
        .metric(
            "flowhouse_query_cache_requests_total",
            &[("route", "flow_runs"), ("result", "stale")],
        )
        .await;
    assert_eq!(miss, 1.0, "only the first answer was waited for");
    assert!(stale >= 1.0);
    h.finish().await;
}
