//! `parse_log` on any bytes: never panics; an accepted line has a level Flowhouse stores.
#![no_main]

use chrono::{TimeZone, Utc};
use flowhouse_schema::event::Limits;
use flowhouse_schema::log::{LEVELS, parse_log};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap();
    if let Ok(log) = parse_log(data, &Limits::default(), now) {
        assert!(LEVELS.contains(&log.level));
    }
});
