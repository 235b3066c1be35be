//! One stream's follower: live socket plus backfills, reconnecting with backoff.
//!
//! A cycle:
//! 1. subscribe to the live socket first, so that whatever Prefect publishes from now on
//!    reaches the mirror;
//! 2. backfill over HTTP from the delivered position minus the safety margin up to now (the
//!    position is the stored checkpoint at first; the initial backfill window when there is
//!    none), while live items flow;
//! 3. backfill again every resync interval (Prefect persists events a few seconds after
//!    publishing them, so an event published just before the subscription can be missing from
//!    the first backfill; the live streams drop items a slow subscriber cannot take; and a
//!    server's `/logs/out` is off by default);
//! 4. end when the socket closes or breaks, a backfill fails, or Kafka refuses (then wait until
//!    it accepts again) — and start over from the delivered position.
//!
//! Everything read goes to the stream's deliverer; duplicates (overlapping backfills, live and
//! backfill both) are dropped there or collapsed by Flowhouse's tables.

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use chrono::{DateTime, Utc};
use flowhouse_schema::Stream;
use flowhouse_service::admin::Readiness;
use futures::SinkExt as _;
use serde_json::value::RawValue;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::deliver::Handle;
use crate::enrich::Enricher;
use crate::item::Item;
use crate::prefect::socket::{Received, receive};
use crate::prefect::{self, EVENTS_PAGE, LOGS_PAGE};

#[derive(Clone, Debug)]
pub struct Settings {
    pub safety_margin: Duration,
    pub resync_interval: Duration,
    pub reconnect_max: Duration,
    pub max_item_bytes: usize,
}

pub struct Follower {
    pub stream: Stream,
    pub prefect: Arc<prefect::Client>,
    pub enricher: Arc<Enricher>,
    pub deliverer: Handle,
    pub settings: Settings,
    pub readiness: Readiness,
}

/// How often the live socket is pinged, and how long it may stay silent.
const PING_EVERY: Duration = Duration::from_secs(20);
const SILENT_FOR: Duration = Duration::from_secs(60);

enum End {
    Shutdown,
    /// Kafka refuses: wait until it accepts, then start over.
    KafkaRefused,
}

fn component(stream: Stream) -> &'static str {
    match stream {
        Stream::Events => "prefect.events",
        Stream::Logs => "prefect.logs",
    }
}

/// Follows the stream until `shutdown`. `initial_since` is where the first backfill starts when
/// nothing was ever delivered.
pub async fn run(follower: Follower, initial_since: DateTime<Utc>, shutdown: CancellationToken) {
    let stream = follower.stream;
    let name = stream.plural();
    let mut backoff = Backoff::new(Duration::from_millis(250), follower.settings.reconnect_max);
    follower
        .readiness
        .not_ready(component(stream), "not connected yet");
    loop {
        match follower.cycle(initial_since, &shutdown, &mut backoff).await {
            Ok(End::Shutdown) => return,
            Ok(End::KafkaRefused) => {
                follower
                    .readiness
                    .not_ready(component(stream), "paused: Kafka refuses messages");
                let mut accepting = follower.deliverer.accepting.clone();
                tokio::select! {
                    () = accepted(&mut accepting) => {}
                    () = shutdown.cancelled() => return,
                }
            }
            Err(error) => {
                let wait = backoff.next_wait();
                tracing::warn!(stream = name, retry_in = ?wait, "{error:#}");
                metrics::counter!("flowhouse_mirror_reconnects_total", "stream" => name)
                    .increment(1);
                follower
                    .readiness
                    .not_ready(component(stream), format!("{error:#}"));
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    }
}

impl Follower {
    fn since(&self, initial_since: DateTime<Utc>) -> DateTime<Utc> {
        let margin = chrono::Duration::from_std(self.settings.safety_margin)
            .unwrap_or(chrono::Duration::MAX);
        match &self.deliverer.progress.borrow().position {
            Some(position) => position
                .at
                .checked_sub_signed(margin)
                .unwrap_or(position.at),
            None => initial_since,
        }
    }

    fn start_backfill(&self, initial_since: DateTime<Utc>) -> JoinHandle<anyhow::Result<u64>> {
        let since = self.since(initial_since);
        let (stream, prefect, enricher, handle, max) = (
            self.stream,
            self.prefect.clone(),
            self.enricher.clone(),
            self.deliverer.clone(),
            self.settings.max_item_bytes,
        );
        tokio::spawn(
            async move { backfill(stream, &prefect, &enricher, &handle, since, max).await },
        )
    }

    async fn cycle(
        &self,
        initial_since: DateTime<Utc>,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> anyhow::Result<End> {
        let name = self.stream.plural();
        let mut accepting = self.deliverer.accepting.clone();
        if !*accepting.borrow_and_update() {
            return Ok(End::KafkaRefused);
        }
        let mut socket = tokio::select! {
            socket = self.prefect.subscribe(self.stream) => socket?,
            () = shutdown.cancelled() => return Ok(End::Shutdown),
        };
        tracing::info!(stream = name, "live stream connected; backfilling");
        let mut backfill = Some(self.start_backfill(initial_since));
        let mut caught_up = false;
        let mut next_resync = Instant::now() + self.settings.resync_interval;
        let mut ping = tokio::time::interval(PING_EVERY);
        let mut heard = Instant::now();
        let end = loop {
            tokio::select! {
                () = shutdown.cancelled() => break Ok(End::Shutdown),
                () = refused(&mut accepting) => break Ok(End::KafkaRefused),
                received = receive(&mut socket, self.stream) => {
                    heard = Instant::now();
                    match received {
                        Ok(Received::Item(json)) => {
                            match self.push(json, "live", shutdown).await {
                                Ok(None) => {}
                                Ok(Some(end)) => break Ok(end),
                                Err(error) => break Err(error),
                            }
                        }
                        Ok(Received::Other) => {}
                        Err(error) => break Err(error),
                    }
                }
                finished = async { backfill.as_mut().expect("running").await }, if backfill.is_some() => {
                    backfill = None;
                    match finished {
                        Ok(Ok(read)) => {
                            tracing::debug!(stream = name, read, "backfill done");
                            if !caught_up {
                                tracing::info!(stream = name, read, "caught up; following live");
                                caught_up = true;
                                self.readiness.ready(component(self.stream));
                                backoff.reset();
                            }
                            next_resync = Instant::now() + self.settings.resync_interval;
                        }
                        Ok(Err(error)) => break Err(error.context("backfill failed")),
                        Err(error) => break Err(anyhow!("the backfill task failed: {error}")),
                    }
                }
                () = tokio::time::sleep_until(next_resync), if backfill.is_none() => {
                    backfill = Some(self.start_backfill(initial_since));
                }
                _ = ping.tick() => {
                    if heard.elapsed() > SILENT_FOR {
                        break Err(anyhow!("the live stream was silent for {SILENT_FOR:?}"));
                    }
                    if let Err(error) = socket.send(Message::Ping(Vec::new().into())).await {
                        break Err(anyhow!("cannot ping the live stream: {error}"));
                    }
                }
            }
        };
        if let Some(task) = backfill {
            task.abort();
        }
        // A clean close, so Prefect's server forgets the subscriber at once.
        let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
        end
    }

    /// Hands one live item to the deliverer (waiting while it is full). `Some` when the
    /// follower must stop instead.
    async fn push(
        &self,
        json: Box<RawValue>,
        source: &'static str,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<End>> {
        let Some(item) = parse(self.stream, json, self.settings.max_item_bytes) else {
            return Ok(None);
        };
        let item = self.enricher.enrich(&self.prefect, item).await?;
        metrics::counter!("flowhouse_mirror_read_total", "stream" => self.stream.plural(), "source" => source)
            .increment(1);
        let mut accepting = self.deliverer.accepting.clone();
        tokio::select! {
            sent = self.deliverer.items.send(item) => {
                sent.map_err(|_| anyhow!("the deliverer stopped"))?;
                Ok(None)
            }
            () = refused(&mut accepting) => Ok(Some(End::KafkaRefused)),
            () = shutdown.cancelled() => Ok(Some(End::Shutdown)),
        }
    }
}

/// Resolves once the deliverer refuses items (Kafka refuses them).
async fn refused(accepting: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send: dropped here, not held in a `select!`.
    if accepting.wait_for(|accepting| !*accepting).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Resolves once the deliverer takes items again.
async fn accepted(accepting: &mut tokio::sync::watch::Receiver<bool>) {
    if accepting.wait_for(|accepting| *accepting).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// An item, or `None` (logged and counted) when it cannot or must not be produced.
fn parse(stream: Stream, json: Box<RawValue>, max_bytes: usize) -> Option<Item> {
    let name = stream.plural();
    if json.get().len() > max_bytes {
        tracing::error!(
            stream = name,
            bytes = json.get().len(),
            max_bytes,
            "item too large; skipped"
        );
        metrics::counter!("flowhouse_mirror_skipped_total", "stream" => name, "reason" => "too_large")
            .increment(1);
        return None;
    }
    match Item::parse(stream, json) {
        Ok(item) => Some(item),
        Err(error) => {
            tracing::error!(stream = name, %error, "Prefect sent an item without an id or time; skipped");
            metrics::counter!("flowhouse_mirror_skipped_total", "stream" => name, "reason" => "malformed")
                .increment(1);
            None
        }
    }
}

/// Reads everything from `since` up to now over HTTP into the deliverer; returns how many items
/// were read.
async fn backfill(
    stream: Stream,
    prefect: &prefect::Client,
    enricher: &Enricher,
    handle: &Handle,
    since: DateTime<Utc>,
    max_bytes: usize,
) -> anyhow::Result<u64> {
    let until = Utc::now();
    let mut read = 0u64;
    let mut send = async |json: Box<RawValue>| -> anyhow::Result<()> {
        read += 1;
        metrics::counter!("flowhouse_mirror_read_total", "stream" => stream.plural(), "source" => "backfill")
            .increment(1);
        if let Some(item) = parse(stream, json, max_bytes) {
            let item = enricher.enrich(prefect, item).await?;
            handle
                .items
                .send(item)
                .await
                .map_err(|_| anyhow!("the deliverer stopped"))?;
        }
        Ok(())
    };
    match stream {
        Stream::Events => {
            let mut page = prefect.events_first_page(since, until).await?;
            loop {
                let token = page.next_token();
                let count = page.events.len();
                for json in page.events {
                    send(json).await?;
                }
                match token {
                    Some(token) if count > 0 => page = prefect.events_next_page(&token).await?,
                    _ => break,
                }
                debug_assert!(count <= EVENTS_PAGE);
            }
        }
        Stream::Logs => {
            let mut cursor = LogCursor::new(since);
            loop {
                let page = prefect
                    .logs_page(cursor.after, until, cursor.offset)
                    .await?;
                let full = page.len() >= LOGS_PAGE;
                let times: Vec<Option<DateTime<Utc>>> =
                    page.iter().map(|json| log_time(json)).collect();
                for json in page {
                    send(json).await?;
                }
                if !full || !cursor.advance(&times) {
                    break;
                }
            }
        }
    }
    Ok(read)
}

fn log_time(json: &RawValue) -> Option<DateTime<Utc>> {
    #[derive(serde::Deserialize)]
    struct Time {
        timestamp: DateTime<Utc>,
    }
    serde_json::from_str::<Time>(json.get())
        .ok()
        .map(|t| t.timestamp)
}

/// Paging `/logs/filter`, which orders by timestamp only: the next page starts at the last
/// page's latest timestamp (inclusive), skipping the lines of that timestamp already read.
/// Lines inserted meanwhile shift later pages forward, which only repeats lines; a page whose
/// lines all share one timestamp moves on by offset.
#[derive(Debug, PartialEq)]
struct LogCursor {
    after: DateTime<Utc>,
    offset: usize,
}

impl LogCursor {
    fn new(since: DateTime<Utc>) -> Self {
        Self {
            after: since,
            offset: 0,
        }
    }

    /// Moves past a full page whose lines have `times`; false when it cannot (a line without a
    /// timestamp: not Prefect's shape).
    fn advance(&mut self, times: &[Option<DateTime<Utc>>]) -> bool {
        let Some(Some(last)) = times.last().copied() else {
            return false;
        };
        let at_last = times.iter().filter(|t| **t == Some(last)).count();
        if last == self.after {
            self.offset += times.len();
        } else {
            self.after = last;
            self.offset = at_last;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(1_800_000_000 + second, 0)
    }

    #[test]
    fn the_log_cursor_moves_to_the_last_timestamp_and_skips_what_it_read_there() {
        let mut cursor = LogCursor::new(at(0).unwrap());
        assert!(cursor.advance(&[at(0), at(1), at(2), at(2)]));
        assert_eq!(
            cursor,
            LogCursor {
                after: at(2).unwrap(),
                offset: 2
            }
        );
        // A page entirely at the cursor's timestamp: move on by offset.
        assert!(cursor.advance(&[at(2), at(2), at(2)]));
        assert_eq!(cursor.offset, 5);
        assert!(cursor.advance(&[at(2), at(3)]));
        assert_eq!(
            cursor,
            LogCursor {
                after: at(3).unwrap(),
                offset: 1
            }
        );
        assert!(!cursor.advance(&[at(4), None]));
    }

    #[test]
    fn oversized_and_malformed_items_are_skipped() {
        let raw = |text: &str| RawValue::from_string(text.to_string()).unwrap();
        let event =
            r#"{"id":"019ac4b2-0000-7000-8000-000000000001","occurred":"2026-01-01T00:00:00Z"}"#;
        assert!(parse(Stream::Events, raw(event), 10_000).is_some());
        assert!(parse(Stream::Events, raw(event), 10).is_none());
        assert!(parse(Stream::Events, raw(r#"{"occurred":"x"}"#), 10_000).is_none());
    }
}
