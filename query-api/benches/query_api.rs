//! Benchmark of the query API (not a test): `cargo bench -p flowhouse-query-api`.
//!
//! Generates FLOWHOUSE_BENCH_EVENTS events (default 10,000,000) over 5 days into a fresh
//! database on the stack (`CLICKHOUSE_URL`...), then reports for each dashboard metric:
//! - uncached latency served from the rollups (the API with its cache off), median of 5;
//! - the same question answered by scanning the raw tables (median of 3) and the ratio;
//! - cached latency and requests/s with 32 concurrent clients on the API with its cache on.

#[path = "../tests/common/raw.rs"]
mod raw;
#[path = "../tests/common/workload.rs"]
mod workload;

use std::time::{Duration, Instant};

use flowhouse_keys::{KeyRecord, KeySet, Keys, KeysFile, Scope, key_hash};
use flowhouse_query_api::{AppState, Settings, router};
use flowhouse_schema::Tenant;
use flowhouse_schema::ddl::{SchemaConfig, Topology};
use flowhouse_schema::rows::{EventRow, LogRow};
use flowhouse_tests::Stack;
use uuid::Uuid;
use workload::{DAY, HOUR, rfc3339};

const BATCH: usize = 200_000;

async fn flush_events(client: &clickhouse::Client, rows: &mut Vec<EventRow>) {
    let mut insert = client.insert::<EventRow>("events").await.unwrap();
    for row in rows.iter() {
        insert.write(row).await.unwrap();
    }
    insert.end().await.unwrap();
    rows.clear();
}

async fn flush_logs(client: &clickhouse::Client, rows: &mut Vec<LogRow>) {
    let mut insert = client.insert::<LogRow>("logs").await.unwrap();
    for row in rows.iter() {
        insert.write(row).await.unwrap();
    }
    insert.end().await.unwrap();
    rows.clear();
}

/// Creates the schema and inserts at least `target` events: two small tenants (5% of the runs
/// each) and one big one, generated in chunks and flushed in batches while generating.
async fn load(
    stack: &Stack,
    client: &clickhouse::Client,
    database: &str,
    target: usize,
    base: i64,
) -> Vec<Tenant> {
    let config = SchemaConfig {
        database: database.to_string(),
        topology: Topology::SingleNode,
        retention_days: 30,
    };
    flowhouse_schema::migrate::apply(&stack.clickhouse.server_client(), &config)
        .await
        .unwrap();
    let tenants: Vec<Tenant> = (0..3)
        .map(|_| Tenant {
            account_id: Uuid::new_v4(),
            workspace_id: Uuid::new_v4(),
        })
        .collect();
    let started = Instant::now();
    // About 8 events per flow run with this workload.
    let small_runs = target / 8 / 20;
    let (mut events, mut logs) = (Vec::with_capacity(BATCH), Vec::with_capacity(BATCH));
    let (mut n_events, mut n_logs) = (0usize, 0usize);
    let mut chunk = 0u64;
    // Tenant 0, the big one, until the target is reached; then the two small ones.
    for (i, tenant) in tenants.iter().enumerate() {
        let mut runs_left = if i == 0 { usize::MAX } else { small_runs };
        while runs_left > 0 && !(i == 0 && n_events >= target) {
            let runs = runs_left.min(20_000);
            runs_left -= runs;
            chunk += 1;
            workload::tenant_workload(
                1000 + chunk,
                i,
                *tenant,
                base,
                5 * DAY,
                runs,
                |e| {
                    n_events += 1;
                    events.push(e.row());
                },
                |l| {
                    n_logs += 1;
                    logs.push(l.row());
                },
            );
            if events.len() >= BATCH {
                flush_events(client, &mut events).await;
            }
            if logs.len() >= BATCH {
                flush_logs(client, &mut logs).await;
            }
        }
    }
    flush_events(client, &mut events).await;
    flush_logs(client, &mut logs).await;
    let load = started.elapsed();
    println!(
        "loaded {n_events} events and {n_logs} logs in {:.1} s ({:.0} events/s, rollups included)",
        load.as_secs_f64(),
        n_events as f64 / load.as_secs_f64()
    );
    tenants
}

async fn serve(state: AppState) -> String {
    let app = router(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let target: usize = std::env::var("FLOWHOUSE_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let stack = Stack::from_env();
    // FLOWHOUSE_BENCH_DATABASE reuses a database a previous run kept (FLOWHOUSE_BENCH_KEEP=1).
    let reuse = std::env::var("FLOWHOUSE_BENCH_DATABASE").ok();
    let database = match &reuse {
        Some(name) => name.clone(),
        None => stack.fresh_database("qa_bench").await,
    };
    let client = stack.clickhouse_client(&database);
    let now = chrono::Utc::now().timestamp_micros();
    let base = now.div_euclid(DAY) * DAY - 6 * DAY;
    let tenants: Vec<Tenant> = match &reuse {
        Some(_) => {
            // The tenants of the kept database, the biggest first.
            #[derive(clickhouse::Row, serde::Deserialize)]
            struct T {
                #[serde(with = "clickhouse::serde::uuid")]
                a: Uuid,
                #[serde(with = "clickhouse::serde::uuid")]
                w: Uuid,
            }
            let rows: Vec<T> = client
                .query("SELECT account_id AS a, workspace_id AS w FROM flow_runs GROUP BY a, w ORDER BY count() DESC")
                .fetch_all()
                .await
                .unwrap();
            rows.into_iter()
                .map(|t| Tenant {
                    account_id: t.a,
                    workspace_id: t.w,
                })
                .collect()
        }
        None => load(&stack, &client, &database, target, base).await,
    };
    let tenant = tenants[0];
    let key = "fh_bench_key".to_string();
    let keys = Keys::fixed(KeySet::from_file(&KeysFile {
        version: 1,
        keys: vec![KeyRecord {
            id: "kbench".into(),
            name: None,
            sha256: key_hash(&key),
            account_id: tenant.account_id,
            workspaces: vec![tenant.workspace_id],
            scopes: vec![Scope::Read],
            created_at: chrono::Utc::now(),
            revoked_at: None,
        }],
    }));
    let uncached = serve(AppState::new(
        client.clone(),
        keys.clone(),
        "bench",
        Settings {
            cache_bytes: 0,
            ..Settings::default()
        },
    ))
    .await;
    let cached = serve(AppState::new(
        client.clone(),
        keys,
        "bench",
        Settings::default(),
    ))
    .await;
    let http = reqwest::Client::new();
    let (since, until) = (base + 13 * HOUR, base + 6 * DAY);
    let query = [("since", rfc3339(since)), ("until", rfc3339(until))];
    let path = |root: &str, metric: &str| {
        format!(
            "{root}/api/accounts/{}/workspaces/{}/metrics/{metric}",
            tenant.account_id, tenant.workspace_id
        )
    };
    let get = move |url: String| {
        let http = http.clone();
        let key = key.clone();
        let query = query.clone();
        async move {
            let t = Instant::now();
            let response = http
                .get(&url)
                .bearer_auth(&key)
                .query(&query)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{url}");
            response.bytes().await.unwrap();
            t.elapsed()
        }
    };
    let metrics: [(&str, Vec<String>); 6] = [
        ("flow-runs", vec![raw::flow_runs_by_state()]),
        ("late-runs", vec![raw::late_runs(), raw::lateness()]),
        ("durations", vec![raw::durations()]),
        ("top-failing", vec![raw::top_failing_flows()]),
        ("task-runs", vec![raw::task_runs()]),
        ("logs", vec![raw::log_levels()]),
    ];
    println!(
        "\nwindow {}..{} (5.5 days), tenant with {:.0}% of the data\n",
        rfc3339(since),
        rfc3339(until),
        90.0
    );
    println!(
        "{:<12} {:>14} {:>14} {:>8} {:>12} {:>12} {:>12}",
        "metric", "rollups ms", "raw scan ms", "ratio", "cached p50", "cached p99", "cached req/s"
    );
    for (metric, raw_sqls) in &metrics {
        // Uncached, from the rollups.
        let mut times = Vec::new();
        for _ in 0..5 {
            times.push(get(path(&uncached, metric)).await);
        }
        let rollup = median(times);
        // The same question from a raw scan.
        let mut times = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            for sql in raw_sqls {
                raw::rows(&client, sql, tenant, since, until).await;
            }
            times.push(t.elapsed());
        }
        let scan = median(times);
        // Cached, 32 concurrent clients.
        get(path(&cached, metric)).await;
        let started = Instant::now();
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let url = path(&cached, metric);
                let get = get.clone();
                tokio::spawn(async move {
                    let mut t = Vec::new();
                    for _ in 0..100 {
                        t.push(get(url.clone()).await);
                    }
                    t
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        let elapsed = started.elapsed();
        all.sort();
        println!(
            "{:<12} {:>14.1} {:>14.1} {:>7.1}x {:>11.2}ms {:>11.2}ms {:>12.0}",
            metric,
            ms(rollup),
            ms(scan),
            scan.as_secs_f64() / rollup.as_secs_f64(),
            ms(all[all.len() / 2]),
            ms(all[all.len() * 99 / 100]),
            all.len() as f64 / elapsed.as_secs_f64()
        );
    }
    if reuse.is_some() || std::env::var("FLOWHOUSE_BENCH_KEEP").is_ok() {
        println!("kept database {database}");
        return;
    }
    // Drop the benchmark database: it is large.
    stack
        .clickhouse
        .server_client()
        .query(&format!("DROP DATABASE {database}"))
        .execute()
        .await
        .unwrap();
}
