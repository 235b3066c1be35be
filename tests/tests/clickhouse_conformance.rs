//! Proves that the ClickHouse the stack exports speaks the HTTP interface the official `clickhouse`
//! crate needs: the same client configuration the services use, unchanged. Against the local stack
//! this tests the chdb bridge; pointed at a real server it must pass the same way.

use std::collections::BTreeSet;

use chrono::{DateTime, TimeZone, Utc};
use clickhouse::{Client, Compression, Row};
use flowhouse_tests::{Stack, unique_name};
use futures::future::try_join_all;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
struct Typed {
    seq: u64,
    #[serde(with = "clickhouse::serde::uuid")]
    id: Uuid,
    #[serde(with = "clickhouse::serde::chrono::datetime64::micros")]
    at: DateTime<Utc>,
    kind: String,
    labels: Vec<(String, String)>,
    tags: Vec<String>,
    note: Option<String>,
    retries: Option<u32>,
}

const TYPED_DDL: &str = "CREATE TABLE typed (
    seq UInt64,
    id UUID,
    at DateTime64(6, 'UTC'),
    kind LowCardinality(String),
    labels Map(String, String),
    tags Array(String),
    note Nullable(String),
    retries Nullable(UInt32)
) ENGINE = MergeTree ORDER BY seq";

/// Rows whose every field varies, including empty maps, NULLs, non-ASCII text and sub-second
/// timestamps, so that a codec error in any column shows up as a mismatch.
fn typed_rows(count: u64) -> Vec<Typed> {
    (0..count)
        .map(|seq| Typed {
            seq,
            id: Uuid::from_u128(0x0123_4567_89ab_cdef_0000_0000_0000_0000 + u128::from(seq) * 7919),
            at: Utc
                .timestamp_opt(
                    1_700_000_000 + seq as i64 * 37,
                    (seq as u32 % 1_000_000) * 1000,
                )
                .unwrap(),
            kind: ["Completed", "Failed", "Crashed", "Running"][seq as usize % 4].to_string(),
            labels: (0..seq % 3)
                .map(|k| (format!("prefect.label.{k}"), format!("välue-{seq}-{k}")))
                .collect(),
            tags: (0..seq % 4).map(|k| format!("tag-{k}")).collect(),
            note: (seq % 5 != 0).then(|| format!("note {seq} — \"quoted\" 'single' \\ back")),
            retries: (seq % 2 == 0).then_some(seq as u32),
        })
        .collect()
}

async fn roundtrip(client: Client, rows: &[Typed]) -> Vec<Typed> {
    client
        .query(TYPED_DDL)
        .execute()
        .await
        .expect("create table");
    let mut insert = client.insert::<Typed>("typed").await.expect("start insert");
    for row in rows {
        insert.write(row).await.expect("write row");
    }
    insert.end().await.expect("end insert");
    client
        .query("SELECT ?fields FROM typed ORDER BY seq")
        .fetch_all::<Typed>()
        .await
        .expect("fetch rows")
}

#[tokio::test]
async fn typed_roundtrip_with_lz4_and_validation() {
    let stack = Stack::from_env();
    let db = stack.fresh_database("conf_lz4").await;
    let rows = typed_rows(20_000);
    let client = stack.clickhouse_client(&db);
    assert_eq!(roundtrip(client, &rows).await, rows);
}

#[tokio::test]
async fn typed_roundtrip_uncompressed() {
    let stack = Stack::from_env();
    let db = stack.fresh_database("conf_plain").await;
    let rows = typed_rows(5_000);
    let client = stack
        .clickhouse_client(&db)
        .with_compression(Compression::None);
    assert_eq!(roundtrip(client, &rows).await, rows);
}

#[tokio::test]
async fn typed_roundtrip_plain_rowbinary() {
    // Without validation the crate sends and reads plain RowBinary, no header.
    let stack = Stack::from_env();
    let db = stack.fresh_database("conf_rb").await;
    let rows = typed_rows(5_000);
    let client = stack.clickhouse_client(&db).with_validation(false);
    assert_eq!(roundtrip(client, &rows).await, rows);
}

#[tokio::test]
async fn ddl_creates_and_drops() {
    let stack = Stack::from_env();
    let db = stack.fresh_database("conf_ddl").await;
    let client = stack.clickhouse_client(&db);
    client.query(TYPED_DDL).execute().await.unwrap();
    let tables = || async {
        client
            .query("SELECT name FROM system.tables WHERE database = {db:String}")
            .param("db", &db)
            .fetch_all::<String>()
            .await
            .unwrap()
    };
    assert_eq!(tables().await, vec!["typed".to_string()]);
    client.query("DROP TABLE typed").execute().await.unwrap();
    assert!(tables().await.is_empty());
}

#[tokio::test]
async fn server_side_parameters_are_data_not_sql() {
    let stack = Stack::from_env();
    let client = stack.clickhouse_client("default");
    let hostile = "x'); DROP TABLE users; --\n{other:String} \\' \"";
    let echoed: (String, u64, String) = client
        .query("SELECT {text:String}, {n:UInt64} * 2, toString({id:UUID})")
        .param("text", hostile)
        .param("n", 21u64)
        .param("id", "f0e1d2c3-b4a5-4697-8879-6a5b4c3d2e1f")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        echoed,
        (
            hostile.to_string(),
            42,
            "f0e1d2c3-b4a5-4697-8879-6a5b4c3d2e1f".into()
        )
    );
}

#[tokio::test]
async fn errors_surface_with_their_code() {
    let stack = Stack::from_env();
    let client = stack.clickhouse_client("default");
    let table = unique_name("missing");

    let error = client
        .query(&format!("SELECT * FROM {table}"))
        .fetch_all::<u8>()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("Code: 60") && error.contains("UNKNOWN_TABLE"),
        "{error}"
    );

    let error = client
        .query("SELEC 1")
        .execute()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("Code: 62") && error.contains("SYNTAX_ERROR"),
        "{error}"
    );

    let mut insert = client
        .insert::<Typed>(&table)
        .await
        .map(Some)
        .unwrap_or(None);
    // With validation the crate asks for the table's columns first, so the error may come there.
    if let Some(insert) = insert.take() {
        let error = insert.end().await.unwrap_err().to_string();
        assert!(error.contains("Code: 60"), "{error}");
    }
}

#[tokio::test]
async fn an_error_in_the_middle_of_a_stream_is_reported() {
    let stack = Stack::from_env();
    let client = stack.clickhouse_client("default");
    let mut cursor = client
        .query("SELECT throwIf(number = 700000, 'boom at 700000') FROM numbers(1000000)")
        .with_setting("max_block_size", "10000")
        .fetch::<u8>()
        .unwrap();
    let mut rows = 0u64;
    let error = loop {
        match cursor.next().await {
            Ok(Some(_)) => rows += 1,
            Ok(None) => panic!("the stream ended without the error, after {rows} rows"),
            Err(error) => break error.to_string(),
        }
    };
    assert!(
        error.contains("Code: 395") && error.contains("boom at 700000"),
        "{error}"
    );
    // Rows 0..700000 precede the failing one; all of them may arrive before the error.
    assert!(
        rows <= 700_000,
        "read {rows} rows, more than precede the failing one"
    );
}

#[tokio::test]
async fn settings_apply_to_one_query_only() {
    let stack = Stack::from_env();
    let client = stack.clickhouse_client("default");
    let error = client
        .query("SELECT number FROM numbers(100)")
        .with_setting("max_result_rows", "10")
        .with_setting("result_overflow_mode", "throw")
        .fetch_all::<u64>()
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("Code: 396"), "{error}");
    // The next query on the same client (and pooled connection) is unaffected.
    let all = client
        .query("SELECT number FROM numbers(100)")
        .fetch_all::<u64>()
        .await
        .unwrap();
    assert_eq!(all.len(), 100);
    let threads: String = client
        .query("SELECT getSetting('max_threads')::String")
        .with_setting("max_threads", "3")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(threads, "3");
    let error = client
        .query("SELECT 1")
        .with_setting("no_such_setting_anywhere", "1")
        .fetch_all::<u8>()
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("Code: 115"), "{error}");
}

#[tokio::test]
async fn eight_concurrent_writers_and_readers() {
    let stack = Stack::from_env();
    let db = stack.fresh_database("conf_conc").await;
    let client = stack.clickhouse_client(&db);
    client
        .query("CREATE TABLE writes (writer UInt8, seq UInt64) ENGINE = MergeTree ORDER BY (writer, seq)")
        .execute()
        .await
        .unwrap();

    #[derive(Row, Serialize, Deserialize)]
    struct Write {
        writer: u8,
        seq: u64,
    }
    const BATCHES: u64 = 5;
    const PER_BATCH: u64 = 20_000;

    let writers = (0..8u8).map(|writer| {
        let client = client.clone();
        async move {
            for batch in 0..BATCHES {
                let mut insert = client.insert::<Write>("writes").await?;
                for seq in batch * PER_BATCH..(batch + 1) * PER_BATCH {
                    insert.write(&Write { writer, seq }).await?;
                }
                insert.end().await?;
            }
            Ok::<_, clickhouse::error::Error>(())
        }
    });
    let readers = (0..8).map(|_| {
        let client = client.clone();
        async move {
            let mut last = 0u64;
            for _ in 0..10 {
                let count: u64 = client
                    .query("SELECT count() FROM writes")
                    .fetch_one()
                    .await?;
                // Inserts are atomic: a reader sees whole batches, never fewer rows than before.
                assert!(
                    count >= last && count.is_multiple_of(PER_BATCH),
                    "count {count} after {last}"
                );
                last = count;
            }
            Ok::<_, clickhouse::error::Error>(())
        }
    });
    let (written, read) = tokio::join!(try_join_all(writers), try_join_all(readers));
    written.unwrap();
    read.unwrap();

    let per_writer: Vec<(u8, u64, u64)> = client
        .query("SELECT writer, count(), sum(seq) FROM writes GROUP BY writer ORDER BY writer")
        .fetch_all()
        .await
        .unwrap();
    let n = BATCHES * PER_BATCH;
    let expected: Vec<(u8, u64, u64)> = (0..8).map(|w| (w, n, n * (n - 1) / 2)).collect();
    assert_eq!(per_writer, expected);
}

#[tokio::test]
async fn a_million_rows_stream_in_order() {
    let stack = Stack::from_env();
    let client = stack.clickhouse_client("default");
    let mut cursor = client
        .query("SELECT number, toString(number) FROM numbers(1000000)")
        .fetch::<(u64, String)>()
        .unwrap();
    let mut expected = 0u64;
    while let Some((number, text)) = cursor.next().await.unwrap() {
        assert_eq!(number, expected);
        assert_eq!(text, expected.to_string());
        expected += 1;
    }
    assert_eq!(expected, 1_000_000);
    // The result arrived in many HTTP chunks, not one buffer: more bytes than any single block.
    assert!(
        cursor.received_bytes() > 10_000_000,
        "{}",
        cursor.received_bytes()
    );
}

#[tokio::test]
async fn an_empty_result_is_empty_not_an_error() {
    let stack = Stack::from_env();
    let client = stack.clickhouse_client("default");
    let rows: Vec<(u64, String)> = client
        .query("SELECT number, toString(number) FROM numbers(10) WHERE number > 100")
        .fetch_all()
        .await
        .unwrap();
    assert!(rows.is_empty());
}

#[tokio::test]
async fn bad_credentials_are_rejected() {
    let stack = Stack::from_env();
    let good = stack.clickhouse_client("default");
    assert_eq!(good.query("SELECT 1").fetch_one::<u8>().await.unwrap(), 1);

    let wrong_password = good.clone().with_password("not-the-password");
    let error = wrong_password
        .query("SELECT 1")
        .fetch_one::<u8>()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("516") || error.contains("AUTHENTICATION_FAILED"),
        "{error}"
    );

    let wrong_user = good.with_user(unique_name("nobody"));
    let error = wrong_user
        .query("SELECT 1")
        .fetch_one::<u8>()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("516") || error.contains("AUTHENTICATION_FAILED"),
        "{error}"
    );
}

/// What the crate does not expose: headers, basic auth, `/ping`, the insert summary.
mod raw_http {
    use super::*;

    fn http() -> reqwest::Client {
        reqwest::Client::new()
    }

    #[tokio::test]
    async fn ping_answers_ok() {
        let stack = Stack::from_env();
        let body = http()
            .get(format!("{}/ping", stack.clickhouse.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "Ok.\n");
    }

    #[tokio::test]
    async fn basic_auth_query_id_and_version() {
        let stack = Stack::from_env();
        let query_id = unique_name("qid");
        let response = http()
            .get(&stack.clickhouse.url)
            .basic_auth(&stack.clickhouse.user, Some(&stack.clickhouse.password))
            .query(&[("query", "SELECT version()"), ("query_id", &query_id)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["X-ClickHouse-Query-Id"],
            query_id.as_str()
        );
        let version = response.text().await.unwrap();
        let major: u32 = version.split('.').next().unwrap().parse().unwrap();
        assert!(
            major >= 24,
            "ClickHouse {version} is older than the schema needs"
        );
    }

    #[tokio::test]
    async fn insert_summary_counts_written_rows_and_errors_carry_the_code_header() {
        let stack = Stack::from_env();
        let db = stack.fresh_database("conf_raw").await;
        let client = stack.clickhouse_client(&db);
        client
            .query("CREATE TABLE t (n UInt32) ENGINE = MergeTree ORDER BY n")
            .execute()
            .await
            .unwrap();
        let response = http()
            .post(&stack.clickhouse.url)
            .header("X-ClickHouse-User", &stack.clickhouse.user)
            .header("X-ClickHouse-Key", &stack.clickhouse.password)
            .query(&[
                ("database", db.as_str()),
                ("query", "INSERT INTO t FORMAT TSV"),
            ])
            .body("1\n2\n3\n")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let summary: serde_json::Value =
            serde_json::from_str(response.headers()["X-ClickHouse-Summary"].to_str().unwrap())
                .unwrap();
        assert_eq!(summary["written_rows"], "3");

        let response = http()
            .post(&stack.clickhouse.url)
            .header("X-ClickHouse-User", &stack.clickhouse.user)
            .header("X-ClickHouse-Key", &stack.clickhouse.password)
            .query(&[
                ("database", db.as_str()),
                ("query", "INSERT INTO t FORMAT TSV"),
            ])
            .body("1\nnot a number\n")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        assert_eq!(response.headers()["X-ClickHouse-Exception-Code"], "27");
        let text = response.text().await.unwrap();
        assert!(text.starts_with("Code: 27. DB::Exception:"), "{text}");
        // Nothing of the failed insert was written.
        let count: u64 = client
            .query("SELECT count() FROM t")
            .fetch_one()
            .await
            .unwrap();
        assert_eq!(count, 3);
    }
}

/// One compressed block claiming LZ4 with a payload that is not LZ4, and a valid checksum: the
/// server must refuse it as CANNOT_DECOMPRESS (found by fuzzing the bridge's decoder, whose codec
/// error escaped as an internal error), for an insert and for a query alike.
#[tokio::test]
async fn a_corrupt_block_with_a_valid_checksum_is_cannot_decompress() {
    let stack = Stack::from_env();
    let db = stack.fresh_database("conf_corrupt").await;
    let client = stack.clickhouse_client(&db);
    client
        .query("CREATE TABLE t (n UInt32) ENGINE = MergeTree ORDER BY n")
        .execute()
        .await
        .unwrap();
    let payload = [0xffu8; 8];
    let mut framed = vec![0x82u8];
    framed.extend_from_slice(&(9 + payload.len() as u32).to_le_bytes());
    framed.extend_from_slice(&100u32.to_le_bytes());
    framed.extend_from_slice(&payload);
    let checksum = cityhash_rs::cityhash_102_128(&framed).rotate_right(64);
    let mut body = checksum.to_le_bytes().to_vec();
    body.extend_from_slice(&framed);

    for query in ["INSERT INTO t FORMAT TSV", ""] {
        let mut params = vec![("database", db.as_str()), ("decompress", "1")];
        if !query.is_empty() {
            params.push(("query", query));
        }
        let response = reqwest::Client::new()
            .post(&stack.clickhouse.url)
            .header("X-ClickHouse-User", &stack.clickhouse.user)
            .header("X-ClickHouse-Key", &stack.clickhouse.password)
            .query(&params)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let code = response.headers()["X-ClickHouse-Exception-Code"].clone();
        let text = response.text().await.unwrap();
        assert!(!status.is_success(), "{query:?}: {status} {text}");
        assert_eq!(code, "271", "{query:?}: {text}");
    }
    let count: u64 = client
        .query("SELECT count() FROM t")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn the_server_reads_typed_values_as_the_client_meant_them() {
    // A round trip alone would pass even if both directions swapped UUID halves or shifted
    // timestamps the same way: compare with the server's own text rendering instead.
    let stack = Stack::from_env();
    let db = stack.fresh_database("conf_text").await;
    let rows = typed_rows(500);
    let client = stack.clickhouse_client(&db);
    roundtrip(client.clone(), &rows).await;
    #[derive(Debug, PartialEq, Row, Deserialize)]
    struct Rendered {
        id: String,
        at: String,
        labels: String,
        tags: Vec<String>,
    }
    let rendered: Vec<Rendered> = client
        .query(
            "SELECT toString(id) AS id, toString(at) AS at, toString(labels) AS labels, tags \
             FROM typed ORDER BY seq",
        )
        .fetch_all()
        .await
        .unwrap();
    let expected: Vec<Rendered> = rows
        .iter()
        .map(|row| {
            let labels = row
                .labels
                .iter()
                .map(|(k, v)| format!("'{k}':'{v}'"))
                .collect::<Vec<_>>()
                .join(",");
            Rendered {
                id: row.id.to_string(),
                at: row.at.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
                labels: format!("{{{labels}}}"),
                tags: row.tags.clone(),
            }
        })
        .collect();
    assert_eq!(rendered, expected);
    let distinct: u64 = client
        .query("SELECT uniqExact(id) FROM typed")
        .fetch_one()
        .await
        .unwrap();
    let ids: BTreeSet<Uuid> = rows.iter().map(|row| row.id).collect();
    assert_eq!(distinct, ids.len() as u64);
}
