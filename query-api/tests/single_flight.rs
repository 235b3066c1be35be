//! N identical concurrent cache misses make one ClickHouse query. Its own test binary (own
//! process), so that the process-wide counters on `/metrics` count this test's queries only.
//!
//! Deterministic, no timing: the test holds every ClickHouse slot, fires the requests, waits
//! until all of them are inside the cache (the `flowhouse_query_cache_waiting` gauge), then
//! releases the slots and counts the queries.

mod common;

use common::workload::{DAY, rfc3339};
use common::{Harness, q};
use flowhouse_query_api::Settings;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_misses_make_one_clickhouse_query() {
    const N: usize = 16;
    let mut h = Harness::start(
        "qa_single_flight",
        1,
        Settings {
            max_concurrent_queries: 2,
            queue_timeout: std::time::Duration::from_secs(600),
            ..Settings::default()
        },
    )
    .await;
    h.load(2, 40).await;
    let t = &h.tenants[0];
    let url = h.url(t.tenant, "metrics/flow-runs");
    let query = q(&[
        ("since", &rfc3339(h.base)),
        ("until", &rfc3339(h.base + 3 * DAY)),
    ]);
    let before = queries(&h).await;

    let slots = h.state.db.slots();
    let held = slots.clone().acquire_many_owned(2).await.unwrap();
    let requests: Vec<_> = (0..N)
        .map(|_| {
            let (http, url, key, query) =
                (h.http.clone(), url.clone(), t.key.clone(), query.clone());
            tokio::spawn(async move {
                let response = http
                    .get(&url)
                    .bearer_auth(&key)
                    .query(&query)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                response.text().await.unwrap()
            })
        })
        .collect();
    // Wait (bounded) until every request is waiting on the same cache entry.
    let mut waiting = 0.0;
    for _ in 0..2_000 {
        waiting = h.metric("flowhouse_query_cache_waiting", &[]).await;
        if waiting as usize == N {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(waiting as usize, N, "all requests reached the cache");
    // Nothing reached ClickHouse yet: the loader waits for a slot.
    assert_eq!(queries(&h).await, before);
    drop(held);

    let bodies: Vec<String> = futures::future::join_all(requests)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every request got the same answer"
    );
    assert_eq!(
        queries(&h).await - before,
        1.0,
        "{N} identical misses, one ClickHouse query"
    );
    assert_eq!(result(&h, "miss").await, 1.0);
    assert_eq!(result(&h, "coalesced").await, (N - 1) as f64);

    // Afterwards: a hit, still no query.
    let again = h.get(&t.key, &url, &query).await.text().await.unwrap();
    assert_eq!(again, bodies[0]);
    assert_eq!(result(&h, "hit").await, 1.0);
    assert_eq!(queries(&h).await - before, 1.0);
    h.finish().await;
}

async fn queries(h: &Harness) -> f64 {
    h.metric(
        "flowhouse_query_clickhouse_queries_total",
        &[("query", "flow_runs_by_state")],
    )
    .await
}

async fn result(h: &Harness, result: &str) -> f64 {
    h.metric(
        "flowhouse_query_cache_requests_total",
        &[("route", "flow_runs"), ("result", result)],
    )
    .await
}
