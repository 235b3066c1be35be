//! Prefect's `LogFilter` from any JSON, to SQL and in memory: never panics; the text search's
//! terms reach ClickHouse as bound parameters, never as SQL text.
#![no_main]

use flowhouse_query_api::db::Sql;
use flowhouse_query_api::logs::LogFilter;
use flowhouse_schema::Tenant;
use flowhouse_schema::rows::LogRow;
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

fuzz_target!(|data: &[u8]| {
    let Ok(filter) = serde_json::from_slice::<LogFilter>(data) else {
        return;
    };
    if filter.check("logs").is_err() {
        return;
    }
    let tenant = Tenant {
        account_id: Uuid::from_u128(1),
        workspace_id: Uuid::from_u128(2),
    };
    let condition = filter.sql(&mut Sql::new(tenant));
    if let Some(text) = &filter.text {
        // The same filter without its text search: what this crate writes by itself (column
        // names such as `task_run_id`), which a search term may happen to equal.
        let without_text = LogFilter {
            text: None,
            ..filter.clone()
        };
        let written = without_text.sql(&mut Sql::new(tenant));
        for term in text.query.split_whitespace().filter(|t| t.len() >= 6) {
            let term = term.trim_matches(|c| "+-!\"".contains(c));
            if term.len() >= 6
                && term.contains(|c: char| !c.is_ascii_alphanumeric())
                && !written.contains(term)
            {
                assert!(!condition.contains(term), "{term:?} reached the SQL text");
            }
        }
    }
    let row = LogRow {
        account_id: tenant.account_id,
        workspace_id: tenant.workspace_id,
        timestamp: chrono::Utc::now(),
        id: Uuid::from_u128(5),
        received: chrono::Utc::now(),
        level: 20,
        name: "prefect.flow_runs".into(),
        message: "Finished in state Completed()".into(),
        flow_run_id: Some(Uuid::from_u128(4)),
        task_run_id: None,
        worker_id: None,
    };
    let _ = filter.matches(&row);
});
