//! Prefect's `EventFilter` from any JSON, to SQL: never panics; the query always starts with
//! the tenant predicate; every string of the filter reaches ClickHouse as a bound parameter,
//! never as SQL text; and the in-memory matcher (the live feed's) never panics on it either.
#![no_main]

use flowhouse_query_api::db::{Sql, TENANT};
use flowhouse_query_api::events::filter::EventFilter;
use flowhouse_schema::Tenant;
use flowhouse_schema::rows::EventRow;
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

/// Every string inside `value` (keys included) that is long enough to be recognizable.
fn strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                out.push(k.clone());
                strings(v, out);
            }
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(filter) = serde_json::from_value::<EventFilter>(value.clone()) else {
        return;
    };
    let Ok(filter) = filter.resolve(chrono::Duration::days(366), "filter") else {
        return;
    };
    let tenant = Tenant {
        account_id: Uuid::from_u128(1),
        workspace_id: Uuid::from_u128(2),
    };
    let mut sql = Sql::new(tenant);
    let condition = filter.where_clause(&mut sql);
    assert!(
        condition.starts_with(TENANT),
        "the tenant predicate leads: {condition}"
    );
    let mut found = Vec::new();
    strings(&value, &mut found);
    for text in found.iter().filter(|s| {
        s.len() >= 6
            && s.chars()
                .any(|c| !c.is_ascii_alphanumeric() && c != '_' && c != '.')
    }) {
        assert!(
            !condition.contains(text.as_str()),
            "a filter string reached the SQL text: {text:?} in {condition}"
        );
    }
    let row = EventRow {
        account_id: tenant.account_id,
        workspace_id: tenant.workspace_id,
        occurred: chrono::Utc::now(),
        id: Uuid::from_u128(3),
        received: chrono::Utc::now(),
        event: "prefect.flow-run.Completed".into(),
        resource: vec![("prefect.resource.id".into(), "prefect.flow-run.1".into())],
        related: vec![vec![
            ("prefect.resource.id".into(), "prefect.flow.1".into()),
            ("prefect.resource.role".into(), "flow".into()),
        ]],
        payload: "{}".into(),
        follows: None,
    };
    let _ = filter.matches(&row);
});
