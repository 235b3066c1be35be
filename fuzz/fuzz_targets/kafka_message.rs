//! A Kafka message as the ingest consumer and the live feed decode it: any headers, any value.
//! Never panics; a decoded row's tenant is the one of the headers, whatever the value says.
#![no_main]

use arbitrary::Arbitrary;
use chrono::{TimeZone, Utc};
use flowhouse_schema::Stream;
use flowhouse_schema::contract::Envelope;
use flowhouse_schema::decode::{Row, decode};
use flowhouse_schema::event::Limits;
use libfuzzer_sys::fuzz_target;
use rdkafka::message::{Header, Headers, OwnedHeaders, Timestamp};

#[derive(Arbitrary, Debug)]
struct Message<'a> {
    logs: bool,
    headers: Vec<(&'a str, Option<&'a [u8]>)>,
    value: Option<&'a [u8]>,
    timestamp: Option<i64>,
}

fuzz_target!(|message: Message<'_>| {
    let mut headers = OwnedHeaders::new();
    for (key, value) in message.headers.iter().take(16) {
        headers = headers.insert(Header { key, value: *value });
    }
    let timestamp = message
        .timestamp
        .map_or(Timestamp::NotAvailable, Timestamp::CreateTime);
    let stream = if message.logs {
        Stream::Logs
    } else {
        Stream::Events
    };
    let now = Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap();
    let borrowed = headers.as_borrowed();
    let Ok(row) = decode(
        stream,
        message.value,
        Some(borrowed),
        timestamp,
        &Limits::default(),
        now,
    ) else {
        return;
    };
    let envelope = Envelope::from_headers(Some(borrowed)).expect("decoded, so the headers read");
    let (account, workspace) = match &row {
        Row::Event(row) => (row.account_id, row.workspace_id),
        Row::Log(row) => (row.account_id, row.workspace_id),
    };
    assert_eq!(account, envelope.tenant.account_id);
    assert_eq!(workspace, envelope.tenant.workspace_id);
    let _ = borrowed.count();
});
