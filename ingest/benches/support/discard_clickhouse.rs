//! A stand-in for ClickHouse's HTTP interface that accepts inserts and throws the rows away, so
//! that the benchmark measures the client side of the insert path (RowBinary serialization with
//! the crate's schema validation, LZ4, the HTTP body) and nothing of a server.
//!
//! The official client validates rows against the table's schema, which it asks for once per
//! table with `DESCRIBE TABLE`; this server answers from the DDL that `flowhouse migrate` runs,
//! so a row type drifting from the schema fails here as it would against a real server.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Query;
use axum::http::StatusCode;
use flowhouse_schema::ddl::{SchemaConfig, Topology};
use futures::StreamExt as _;

const DATABASE: &str = "bench";

/// Starts the server on a free loopback port; it runs until the runtime stops.
pub async fn start() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let address = listener.local_addr().expect("local address");
    let app = Router::new().fallback(handle);
    tokio::spawn(async move { axum::serve(listener, app).await.expect("discard server") });
    address
}

async fn handle(Query(params): Query<HashMap<String, String>>, body: Body) -> (StatusCode, Bytes) {
    // Inserts carry their statement in the URL and the rows in the body.
    if let Some(sql) = params.get("query")
        && sql.starts_with("INSERT")
    {
        let mut chunks = body.into_data_stream();
        while let Some(chunk) = chunks.next().await {
            chunk.expect("insert body");
        }
        return (StatusCode::OK, Bytes::new());
    }
    let sql = match params.get("query") {
        Some(sql) => sql.clone(),
        None => {
            let body = axum::body::to_bytes(body, 1 << 20)
                .await
                .expect("query body");
            String::from_utf8_lossy(&body).into_owned()
        }
    };
    match sql
        .strip_prefix("DESCRIBE TABLE ")
        .map(|table| table.trim().trim_matches('`'))
    {
        Some(table) => (StatusCode::OK, describe(table)),
        None => (
            StatusCode::BAD_REQUEST,
            Bytes::from(format!(
                "the discard server answers only DESCRIBE TABLE: {sql}"
            )),
        ),
    }
}

/// `DESCRIBE TABLE` in `RowBinaryWithNamesAndTypes`, the format the client asks for.
fn describe(table: &str) -> Bytes {
    const FIELDS: [&str; 7] = [
        "name",
        "type",
        "default_type",
        "default_expression",
        "comment",
        "codec_expression",
        "ttl_expression",
    ];
    let mut out = Vec::new();
    leb128(&mut out, FIELDS.len());
    for field in FIELDS {
        string(&mut out, field);
    }
    for _ in FIELDS {
        string(&mut out, "String");
    }
    for (name, data_type, default_type) in columns(table) {
        for value in [&name, &data_type, default_type, "", "", "", ""] {
            string(&mut out, value);
        }
    }
    Bytes::from(out)
}

/// `(name, type, default kind)` of each column, parsed from the single-node DDL.
fn columns(table: &str) -> Vec<(String, String, &'static str)> {
    let config = SchemaConfig {
        database: DATABASE.into(),
        topology: Topology::SingleNode,
        retention_days: 30,
    };
    // The newest definition: a migration that rebuilds a table creates it as `T__next` and
    // exchanges the two, so the last of those statements is the table's shape now.
    let prefixes = [
        format!("CREATE TABLE IF NOT EXISTS {DATABASE}.{table} ("),
        format!("CREATE TABLE IF NOT EXISTS {DATABASE}.{table}__next ("),
    ];
    let (prefix, statement) = flowhouse_schema::migrate::full_schema(&config)
        .into_iter()
        .rev()
        .find_map(|statement| {
            let prefix = prefixes
                .iter()
                .find(|p| statement.starts_with(p.as_str()))?;
            Some((prefix.clone(), statement))
        })
        .unwrap_or_else(|| panic!("no table {table} in the schema"));
    let end = statement.find("\nENGINE").expect("ENGINE clause");
    let list = statement[prefix.len()..end]
        .trim_end()
        .strip_suffix(')')
        .expect("column list");
    top_level_items(list)
        .into_iter()
        .filter(|line| !line.is_empty() && !line.starts_with("INDEX "))
        .map(|line| {
            let (name, rest) = line.split_once(' ').expect("name and type");
            let rest = rest.split(" CODEC(").next().unwrap_or(rest);
            let (data_type, kind) = match rest.split_once(" MATERIALIZED ") {
                Some((data_type, _)) => (data_type, "MATERIALIZED"),
                None => match rest.split_once(" DEFAULT ") {
                    Some((data_type, _)) => (data_type, "DEFAULT"),
                    None => (rest, ""),
                },
            };
            (name.to_string(), data_type.to_string(), kind)
        })
        .collect()
}

/// The comma-separated items of a column list, split only outside parentheses and quotes: a
/// `DEFAULT` expression may span lines and hold commas of its own.
fn top_level_items(list: &str) -> Vec<&str> {
    let (mut items, mut depth, mut quoted, mut start) = (Vec::new(), 0usize, false, 0);
    for (i, c) in list.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth = depth.saturating_sub(1),
            ',' if !quoted && depth == 0 => {
                items.push(list[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(list[start..].trim());
    items
}

fn string(out: &mut Vec<u8>, value: &str) {
    leb128(out, value.len());
    out.extend_from_slice(value.as_bytes());
}

fn leb128(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}
