//! The messages a websocket reads before any key is proven: the auth message (`/events/in`,
//! `/events/out`, `/logs/out`) and the subscribers' filter messages. Never panics.
#![no_main]

use flowhouse_query_api::events::filter::EventFilter;
use flowhouse_query_api::logs::LogFilter;
use flowhouse_service::websocket::auth_message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(Some(token)) = auth_message(data) {
        assert!(!token.trim().is_empty(), "an empty token reads as none");
        // `user:key` gives the part after the user name (which has no colon, RFC 7617).
        let key = flowhouse_keys::key_from_auth_string(&token);
        assert!(token.ends_with(key) || token.trim().ends_with(key));
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data)
        && let Some(filter) = value.get("filter")
    {
        if let Ok(filter) = serde_json::from_value::<EventFilter>(filter.clone()) {
            let _ = filter.resolve(chrono::Duration::days(366), "filter");
        }
        if let Ok(filter) = serde_json::from_value::<LogFilter>(filter.clone()) {
            let _ = filter.check("filter");
        }
    }
});
