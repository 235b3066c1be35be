//! `parse_event` on any bytes: never panics, and what it accepts is an event that serializes
//! back to JSON the parser accepts again (the row the ingest consumer would store).
#![no_main]

use chrono::{TimeZone, Utc};
use flowhouse_schema::event::{Limits, parse_event};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap();
    for limits in [Limits::default(), Limits::prefect()] {
        if let Ok(event) = parse_event(data, &limits, now) {
            let again = serde_json::to_vec(&event).expect("an accepted event serializes");
            let reparsed = parse_event(&again, &Limits::default(), now)
                .expect("a serialized accepted event parses again");
            assert_eq!(reparsed.id, event.id);
            assert_eq!(reparsed.resource_id(), event.resource_id());
        }
    }
});
