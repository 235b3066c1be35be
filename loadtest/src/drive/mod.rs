//! Drivers: push a workload into Flowhouse straight into Kafka ([`kafka`]) or through the
//! ingestion endpoint ([`endpoint`]: HTTP batches or websocket), at a steady target rate or as
//! fast as it goes, by count or by duration, and count what the target acknowledged.
//!
//! A driver takes the workload as `&mut impl Iterator<Item = Message>` and pulls from it only what
//! it sends, so a [`crate::workload::Workload`]'s ground truth afterwards is the truth of what
//! was sent (acknowledged, if `messages_failed` is 0).

pub mod endpoint;
pub mod gate;
pub mod kafka;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::measure::{Latencies, LatencySummary, RateCounter};
use crate::workload::Message;

/// How much to send and how fast.
#[derive(Clone, Debug, Default)]
pub struct DriveOptions {
    /// Messages per second, evenly spaced; `None`: as fast as the target takes them.
    pub rate: Option<f64>,
    /// Stop after this many messages.
    pub max_messages: Option<u64>,
    /// Stop pulling messages after this long.
    pub duration: Option<Duration>,
    /// Send each message when the wall clock reaches its time (for workloads generated over a
    /// window starting now), instead of at `rate`.
    pub realtime: bool,
}

/// What a driver did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DriveStats {
    /// `kafka`, `http` or `ws`.
    pub target: String,
    pub target_rate: Option<f64>,
    /// Handed to the transport.
    pub messages_sent: u64,
    pub events_sent: u64,
    pub logs_sent: u64,
    pub bytes_sent: u64,
    /// Acknowledged: Kafka delivery reports (acks=all), 2xx answers, normally closed websockets.
    pub messages_acked: u64,
    pub messages_failed: u64,
    /// Failures by kind, with counts of messages.
    pub errors: BTreeMap<String, u64>,
    /// Messages sent again after a refusal the driver retries (connection refused or cut
    /// before an answer, 429, 502-504), by reason; each was acknowledged later or counts in
    /// `messages_failed`.
    #[serde(default)]
    pub retried: BTreeMap<String, u64>,
    /// From the first send to the last send.
    pub send_secs: f64,
    /// From the first send to the last acknowledgement.
    pub elapsed_secs: f64,
    /// `messages_sent / send_secs`.
    pub send_rate: f64,
    /// `messages_acked / elapsed_secs`: the produce rate.
    pub ack_rate: f64,
    /// Send-to-acknowledgement latency per route (`produce events`, `POST /events`...).
    pub latency: BTreeMap<String, LatencySummary>,
    /// Messages acknowledged in each second of the run.
    pub acked_per_sec: Vec<(f64, f64)>,
}

/// Counters shared with the tasks and callbacks that see acknowledgements.
#[derive(Debug)]
pub struct Tally {
    pub start: Instant,
    acked: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    retried: Mutex<BTreeMap<String, u64>>,
    latencies: Mutex<Latencies>,
    rate: RateCounter,
    last_ack: Mutex<Instant>,
}

impl Tally {
    pub fn new() -> Self {
        let start = Instant::now();
        Self {
            start,
            acked: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            retried: Mutex::new(BTreeMap::new()),
            latencies: Mutex::new(Latencies::default()),
            rate: RateCounter::new(start),
            last_ack: Mutex::new(start),
        }
    }

    pub fn ack(&self, messages: u64) {
        let now = Instant::now();
        self.acked.fetch_add(messages, Ordering::Relaxed);
        self.rate.add_at(now, messages);
        let mut last = self.last_ack.lock().unwrap_or_else(|e| e.into_inner());
        *last = (*last).max(now);
    }

    pub fn fail(&self, messages: u64, kind: impl Into<String>) {
        self.failed.fetch_add(messages, Ordering::Relaxed);
        let mut kind: String = kind.into();
        if kind.len() > 240 {
            let mut cut = 240;
            while !kind.is_char_boundary(cut) {
                cut -= 1;
            }
            kind.truncate(cut);
        }
        *self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind)
            .or_default() += messages;
    }

    /// `messages` are sent again after `reason` (a refusal the driver retries).
    pub fn retry(&self, messages: u64, reason: impl Into<String>) {
        *self
            .retried
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason.into())
            .or_default() += messages;
    }

    pub fn latency(&self, route: &str, latency: Duration) {
        self.latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(route, latency);
    }

    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    pub fn latencies(&self) -> Latencies {
        self.latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The stats, once everything sent has been acknowledged or has failed.
    pub(crate) fn stats(&self, target: &str, options: &DriveOptions, sent: &Sent) -> DriveStats {
        let send_secs = sent
            .last_send
            .saturating_duration_since(self.start)
            .as_secs_f64();
        let last_ack = *self.last_ack.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed_secs = last_ack
            .max(sent.last_send)
            .saturating_duration_since(self.start)
            .as_secs_f64();
        let per_sec = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        DriveStats {
            target: target.to_string(),
            target_rate: options.rate,
            messages_sent: sent.messages,
            events_sent: sent.events,
            logs_sent: sent.logs,
            bytes_sent: sent.bytes,
            messages_acked: self.acked(),
            messages_failed: self.failed(),
            errors: self
                .errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            retried: self
                .retried
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            send_secs,
            elapsed_secs,
            send_rate: per_sec(sent.messages, send_secs),
            ack_rate: per_sec(self.acked(), elapsed_secs),
            latency: self.latencies().summaries(),
            acked_per_sec: self.rate.points(),
        }
    }
}

impl Default for Tally {
    fn default() -> Self {
        Self::new()
    }
}

/// What went out.
#[derive(Clone, Debug)]
pub(crate) struct Sent {
    pub messages: u64,
    pub events: u64,
    pub logs: u64,
    pub bytes: u64,
    pub last_send: Instant,
}

impl Sent {
    pub fn new(start: Instant) -> Self {
        Self {
            messages: 0,
            events: 0,
            logs: 0,
            bytes: 0,
            last_send: start,
        }
    }

    pub fn count(&mut self, message: &Message, bytes: usize) {
        self.messages += 1;
        if message.is_event() {
            self.events += 1;
        } else {
            self.logs += 1;
        }
        self.bytes += bytes as u64;
        self.last_send = Instant::now();
    }
}

/// Hands out the source's messages at the pace and within the limits asked.
pub struct Paced<'a, I> {
    source: &'a mut I,
    options: DriveOptions,
    start: Instant,
    handed: u64,
}

impl<'a, I: Iterator<Item = Message>> Paced<'a, I> {
    pub fn new(source: &'a mut I, options: &DriveOptions, start: Instant) -> Self {
        Self {
            source,
            options: options.clone(),
            start,
            handed: 0,
        }
    }

    fn exhausted(&self) -> bool {
        self.options
            .max_messages
            .is_some_and(|max| self.handed >= max)
            || self
                .options
                .duration
                .is_some_and(|duration| self.start.elapsed() >= duration)
    }

    /// How long to wait before pulling the next message, at the target rate.
    fn rate_delay(&self) -> Option<Duration> {
        let rate = self.options.rate.filter(|r| *r > 0.0)?;
        let due = self.start + Duration::from_secs_f64(self.handed as f64 / rate);
        due.checked_duration_since(Instant::now())
    }

    /// How long to wait before sending `message`, in real-time mode.
    fn realtime_delay(&self, message: &Message) -> Option<Duration> {
        if !self.options.realtime {
            return None;
        }
        (message.time() - Utc::now()).to_std().ok()
    }

    /// The next message, after sleeping the thread as the pace requires.
    pub fn next_blocking(&mut self) -> Option<Message> {
        if self.exhausted() {
            return None;
        }
        if let Some(delay) = self.rate_delay() {
            std::thread::sleep(delay);
        }
        let message = self.source.next()?;
        self.handed += 1;
        if let Some(delay) = self.realtime_delay(&message) {
            std::thread::sleep(delay);
        }
        Some(message)
    }

    /// The next message, after sleeping the task as the pace requires.
    pub async fn next_async(&mut self) -> Option<Message> {
        if self.exhausted() {
            return None;
        }
        if let Some(delay) = self.rate_delay() {
            tokio::time::sleep(delay).await;
        }
        let message = self.source.next()?;
        self.handed += 1;
        if let Some(delay) = self.realtime_delay(&message) {
            tokio::time::sleep(delay).await;
        }
        Some(message)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;

    use super::*;
    use crate::workload::{Workload, WorkloadConfig};

    fn workload() -> Workload {
        let start = Utc.with_ymd_and_hms(2024, 5, 1, 0, 0, 0).unwrap();
        Workload::new(WorkloadConfig::new(
            1,
            start,
            start + chrono::Duration::days(1),
        ))
        .unwrap()
    }

    #[test]
    fn a_count_limit_pulls_exactly_that_many_messages() {
        let mut source = workload();
        let options = DriveOptions {
            max_messages: Some(7),
            ..DriveOptions::default()
        };
        let mut paced = Paced::new(&mut source, &options, Instant::now());
        let mut n = 0;
        while paced.next_blocking().is_some() {
            n += 1;
        }
        assert_eq!(n, 7);
        assert_eq!(source.handed_out(), 7, "nothing pulled beyond the limit");
    }

    #[test]
    fn an_elapsed_duration_pulls_nothing_more() {
        let mut source = workload();
        let options = DriveOptions {
            duration: Some(Duration::ZERO),
            ..DriveOptions::default()
        };
        let mut paced = Paced::new(&mut source, &options, Instant::now());
        assert!(paced.next_blocking().is_none());
        assert_eq!(source.handed_out(), 0);
    }

    #[test]
    fn the_tally_counts_acks_failures_and_kinds() {
        let tally = Tally::new();
        tally.ack(5);
        tally.fail(2, "HTTP 422: bad");
        tally.fail(1, "HTTP 422: bad");
        let mut sent = Sent::new(tally.start);
        let options = DriveOptions::default();
        sent.messages = 8;
        let stats = tally.stats("http", &options, &sent);
        assert_eq!((stats.messages_acked, stats.messages_failed), (5, 3));
        assert_eq!(stats.errors["HTTP 422: bad"], 3);
        assert_eq!(stats.acked_per_sec.iter().map(|p| p.1).sum::<f64>(), 5.0);
    }
}
