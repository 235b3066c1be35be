//! The Kafka side: one idempotent producer (`acks=all`), a bound on what is in flight, and a
//! view of whether the brokers are reachable.
//!
//! Nothing is acknowledged to a client before Kafka acknowledged it: every message handed to
//! librdkafka comes back as a [`Delivery`] future, and the HTTP handlers and websockets answer
//! only once those resolved.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use futures::FutureExt as _;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use flowhouse_schema::Tenant;
use flowhouse_service::fairness::PerKeyLimit;

use crate::config::Args;
use crate::error::{ApiError, RETRY_WHEN_DOWN, RETRY_WHEN_FULL};
use crate::telemetry;

/// Readiness component name in `/readyz`.
pub const KAFKA: &str = "kafka";

pub struct Producer {
    /// Replaced when librdkafka reports a fatal error (after which a producer is unusable).
    current: RwLock<Arc<FutureProducer<KafkaContext>>>,
    config: ClientConfig,
    health: Arc<Health>,
    in_flight: Arc<Semaphore>,
    capacity: usize,
    /// Each workspace's share of `in_flight`.
    tenant_in_flight: PerKeyLimit<Tenant>,
    /// What one produce request carries: the size of the pieces [`Producer::deliver`] hands over.
    request: RequestSize,
    /// One piece per partition handed over at a time (see [`Producer::deliver`]).
    piece_turns: PerKeyLimit<(String, u32)>,
    /// Partitions per topic, as the brokers said when first asked.
    partition_counts: RwLock<HashMap<String, u32>>,
}

/// Whether the brokers are reachable, as last seen; shared with librdkafka's callbacks.
struct Health {
    available: AtomicBool,
    readiness: flowhouse_service::admin::Readiness,
    /// Wakes the watcher for a probe now, rather than at the next tick.
    probe_now: tokio::sync::Notify,
    /// Probes failed in a row; one alone (a slow answer from a busy broker) is not an outage.
    failed_probes: AtomicU32,
}

/// Failed probes in a row that make Kafka unavailable.
const PROBES_TO_FAIL: u32 = 2;

impl Health {
    fn up(&self) {
        if !self.available.swap(true, Ordering::Relaxed) {
            tracing::info!("Kafka is reachable");
            self.readiness.ready(KAFKA);
        }
    }

    fn down(&self, reason: &str) {
        if self.available.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                reason,
                "Kafka is unreachable; refusing HTTP requests with 503"
            );
        }
        self.readiness.not_ready(KAFKA, reason);
    }
}

/// librdkafka's callbacks: logs into `tracing`, and "all brokers down" into a probe at once.
/// (Not straight into "unavailable": librdkafka says it also when a broker merely closed an idle
/// connection, and a probe tells that apart in a moment.)
struct KafkaContext {
    health: Arc<Health>,
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(facility, "librdkafka: {message}");
            }
            RDKafkaLogLevel::Debug => tracing::debug!(facility, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.health.probe_now.notify_one();
        }
        tracing::warn!(%error, reason, "Kafka client error");
    }
}

impl Producer {
    pub fn new(
        args: &Args,
        readiness: flowhouse_service::admin::Readiness,
    ) -> anyhow::Result<Arc<Self>> {
        let config = producer_config(args)?;
        let health = Arc::new(Health {
            available: AtomicBool::new(false),
            readiness,
            probe_now: tokio::sync::Notify::new(),
            failed_probes: AtomicU32::new(0),
        });
        health.readiness.not_ready(KAFKA, "not connected yet");
        let producer = create(&config, &health)?;
        let capacity = args.uploads.max_in_flight.max(1);
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(producer)),
            health,
            in_flight: Arc::new(Semaphore::new(capacity)),
            capacity,
            tenant_in_flight: PerKeyLimit::new(args.uploads.max_in_flight_per_tenant.min(capacity)),
            request: RequestSize::of(&config)?,
            config,
            piece_turns: PerKeyLimit::new(1),
            partition_counts: RwLock::new(HashMap::new()),
        }))
    }

    fn current(&self) -> Arc<FutureProducer<KafkaContext>> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Refuses at once when Kafka is known to be unreachable: better a 503 now than a request
    /// held for the whole delivery timeout.
    pub fn check_available(&self) -> Result<(), ApiError> {
        if self.health.available.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(ApiError::Unavailable {
                detail: "Kafka is unavailable; nothing was accepted, send again later".into(),
                retry_after: RETRY_WHEN_DOWN,
            })
        }
    }

    /// Room for `n` messages of `tenant`, or a 503 when its share or the producer's queue is
    /// full (HTTP: the client retries). A batch larger than a share waits for the whole share.
    pub fn try_reserve(&self, tenant: Tenant, n: usize) -> Result<Permit, ApiError> {
        let Some(share) = self.tenant_in_flight.try_acquire(&tenant, n) else {
            return Err(ApiError::Unavailable {
                detail: format!(
                    "this workspace has {} messages waiting for Kafka, its share of the \
                     producer's queue; nothing was accepted, send again shortly",
                    self.tenant_in_flight.held(&tenant)
                ),
                retry_after: RETRY_WHEN_FULL,
            });
        };
        let n = self.permits_for(n);
        match self.in_flight.clone().try_acquire_many_owned(n) {
            Ok(permit) => Ok(Permit::new(permit, share)),
            Err(_) => Err(ApiError::Unavailable {
                detail: format!(
                    "the producer's queue is full ({} messages waiting for Kafka); nothing was \
                     accepted, send again shortly",
                    self.in_flight()
                ),
                retry_after: RETRY_WHEN_FULL,
            }),
        }
    }

    /// Room for `n` messages of `tenant`, waiting for it (websockets: backpressure instead of
    /// refusal); its own share first, so a waiting workspace holds nothing the others need.
    pub async fn reserve(&self, tenant: Tenant, n: usize) -> Permit {
        let share = self.tenant_in_flight.acquire(&tenant, n).await;
        let n = self.permits_for(n);
        let permit = self
            .in_flight
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("the in-flight semaphore is never closed");
        Permit::new(permit, share)
    }

    fn permits_for(&self, n: usize) -> u32 {
        u32::try_from(n.clamp(1, self.capacity)).unwrap_or(u32::MAX)
    }

    /// Messages handed to the producer and not yet acknowledged (or failed).
    pub fn in_flight(&self) -> usize {
        self.capacity - self.in_flight.available_permits()
    }

    /// Hands one message to librdkafka (which copies it). Fails at once only when its queue is
    /// full or the message cannot be produced at all; otherwise the [`Delivery`] says how it
    /// ended.
    pub fn send(
        &self,
        topic: &str,
        key: &str,
        headers: OwnedHeaders,
        payload: &[u8],
    ) -> Result<Delivery, KafkaError> {
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        match self.current().send_result(record) {
            Ok(future) => Ok(Delivery {
                future,
                started: Instant::now(),
                health: self.health.clone(),
            }),
            Err((error, _)) => Err(error),
        }
    }

    /// `items` cut into consecutive pieces of one produce request each, for [`Self::deliver`].
    pub fn pieces(&self, items: &[Bytes]) -> Vec<std::ops::Range<usize>> {
        self.request.pieces(items)
    }

    /// Produces one piece of a batch (all with the same key and headers) and waits until Kafka
    /// acknowledged every message of it. The HTTP handler hands a batch over piece by piece
    /// ([`Self::pieces`]), the next once the previous is acknowledged.
    ///
    /// Why not all at once: librdkafka's idempotent producer keeps one request per partition in
    /// flight (its in-flight check subtracts the partition's count of in-flight *messages* from
    /// the limit of five *requests*), and while that request is out, messages waiting past
    /// `linger.ms` set the broker thread's next wake-up to "now": it spins on `poll(0)` for as
    /// long as the broker takes to answer. Against the local broker that was about 0.2 of a
    /// core for one workspace's uploads (docs/performance.md). Pieces the size of one request
    /// make the same requests without the spin, if only one piece per partition is handed over
    /// at a time: pieces of other workspaces whose keys share the partition wait their turn.
    ///
    /// An error leaves the pieces already delivered in Kafka: the client sees the error, sends
    /// the batch again, and ingest drops the duplicates by event id.
    pub async fn deliver(
        self: &Arc<Self>,
        topic: &str,
        key: &str,
        headers: &OwnedHeaders,
        piece: &[Bytes],
    ) -> Result<(), ApiError> {
        let partition = partition_of(key, self.partitions(topic).await);
        let _turn = self
            .piece_turns
            .acquire(&(topic.to_owned(), partition), 1)
            .await;
        let (producer, topic, key, headers) = (
            self.clone(),
            topic.to_owned(),
            key.to_owned(),
            headers.clone(),
        );
        let piece = piece.to_vec();
        // Handing a thousand messages to librdkafka is CPU work (copies, headers): off the async
        // workers, or every request queued on this worker waits for it.
        let deliveries = tokio::task::spawn_blocking(move || {
            piece
                .iter()
                .map(|item| producer.send(&topic, &key, headers.clone(), item))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|error| ApiError::Unavailable {
            detail: format!("handing the batch to Kafka failed ({error}); send it again"),
            retry_after: RETRY_WHEN_DOWN,
        })??;
        futures::future::try_join_all(deliveries).await?;
        Ok(())
    }

    /// Partitions of `topic`, asked of the brokers once (`None` while they cannot tell). Only
    /// the turns of [`Self::deliver`] depend on it: a topic that gains partitions later costs
    /// some spinning, never a message.
    async fn partitions(&self, topic: &str) -> Option<u32> {
        let known = self
            .partition_counts
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(topic)
            .copied();
        if known.is_some() {
            return known;
        }
        let (producer, name) = (self.current(), topic.to_owned());
        let count = tokio::task::spawn_blocking(move || {
            let metadata = producer
                .client()
                .fetch_metadata(Some(&name), Duration::from_secs(5))
                .ok()?;
            let partitions = metadata.topics().first()?.partitions().len();
            u32::try_from(partitions).ok().filter(|&n| n > 0)
        })
        .await
        .ok()
        .flatten()?;
        self.partition_counts
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(topic.to_owned(), count);
        Some(count)
    }

    /// Asks the brokers for the topic's metadata, which decides [`Self::check_available`]; a
    /// producer that hit a fatal error (its idempotence state lost) is replaced by a new one.
    pub async fn probe(&self, topic: &str) {
        let producer = self.current();
        let probe_topic = topic.to_owned();
        let probe = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&probe_topic), Duration::from_secs(5))
                .map(|_| ())
        })
        .await;
        let failure = match probe {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(format!("cannot reach Kafka: {error}")),
            Err(error) => Some(format!("Kafka probe failed: {error}")),
        };
        match failure {
            None => {
                self.health.failed_probes.store(0, Ordering::Relaxed);
                self.health.up();
            }
            Some(reason) => {
                let failed = self.health.failed_probes.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(reason, failed, "Kafka probe failed");
                if failed >= PROBES_TO_FAIL {
                    self.health.down(&reason);
                }
            }
        }
        if let Some((code, reason)) = self.current().client().fatal_error() {
            tracing::error!(%code, reason, "fatal Kafka producer error; starting a new producer");
            match create(&self.config, &self.health) {
                Ok(fresh) => {
                    *self
                        .current
                        .write()
                        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(fresh);
                }
                Err(error) => self.health.down(&format!("{error:#}")),
            }
        }
    }

    /// Probes every few seconds (every second while Kafka is down or in doubt, and at once when
    /// librdkafka sees every broker down) until `stop` fires.
    pub async fn watch(self: Arc<Self>, topic: String, stop: tokio_util::sync::CancellationToken) {
        loop {
            let suspect = !self.health.available.load(Ordering::Relaxed)
                || self.health.failed_probes.load(Ordering::Relaxed) > 0;
            let pause = if suspect {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(3)
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.health.probe_now.notified() => {}
                () = stop.cancelled() => return,
            }
            self.probe(&topic).await;
        }
    }

    /// Waits (blocking, so call it off the async workers) until everything handed to librdkafka
    /// is acknowledged or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> anyhow::Result<()> {
        self.current()
            .flush(timeout)
            .context("messages were still unacknowledged when the producer was closed")
    }
}

fn producer_config(args: &Args) -> anyhow::Result<ClientConfig> {
    let mut config = args.kafka.config()?;
    // Not negotiable: a client is told "accepted" only for messages every in-sync replica has,
    // and retries inside librdkafka never duplicate or reorder them.
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "message.timeout.ms",
            args.uploads
                .delivery_timeout
                .as_millis()
                .clamp(1, i32::MAX as u128)
                .to_string(),
        )
        // The semaphore above is the real bound; librdkafka's own must never be hit first.
        .set(
            "queue.buffering.max.messages",
            args.uploads
                .max_in_flight
                .saturating_mul(2)
                .clamp(100_000, i32::MAX as usize)
                .to_string(),
        )
        // Room for the largest event the validation lets through plus its headers, so that
        // librdkafka never refuses what the client was told is valid.
        .set("message.max.bytes", "2000000");
    // Defaults that suit an endpoint; KAFKA_PROPERTIES wins over them.
    for (key, value) in [("linger.ms", "5"), ("reconnect.backoff.max.ms", "2000")] {
        if config.get(key).is_none() {
            config.set(key, value);
        }
    }
    Ok(config)
}

fn create(
    config: &ClientConfig,
    health: &Arc<Health>,
) -> anyhow::Result<FutureProducer<KafkaContext>> {
    config
        .create_with_context(KafkaContext {
            health: health.clone(),
        })
        .context("cannot create the Kafka producer")
}

/// The partition librdkafka's default partitioner (`consistent_random`: the CRC-32 of a
/// non-empty key, modulo the partition count) gives `key`; without the count, a number that
/// still keeps each key to one turn.
fn partition_of(key: &str, partitions: Option<u32>) -> u32 {
    let hash = crc32fast::hash(key.as_bytes());
    partitions.map_or(hash, |n| hash % n)
}

/// What librdkafka puts in one produce request at most: `batch.size` bytes and
/// `batch.num.messages` messages (their defaults unless `KAFKA_PROPERTIES` sets them).
#[derive(Clone, Copy, Debug)]
struct RequestSize {
    bytes: usize,
    messages: usize,
}

/// A message's bytes on top of its payload: the key, the envelope's headers and the record's
/// framing (about 200 bytes; a little more, so that a piece never spills into a second request).
const MESSAGE_OVERHEAD: usize = 256;

impl RequestSize {
    fn of(config: &ClientConfig) -> anyhow::Result<Self> {
        let read = |key: &str, default: usize| -> anyhow::Result<usize> {
            config.get(key).map_or(Ok(default), |value| {
                value
                    .parse::<usize>()
                    .with_context(|| format!("Kafka property {key}={value:?} is not a number"))
            })
        };
        Ok(Self {
            bytes: read("batch.size", 1_000_000)?.max(1),
            messages: read("batch.num.messages", 10_000)?.max(1),
        })
    }

    /// `items` cut into consecutive ranges that each fit one request (an item larger than a
    /// request is a range of its own).
    fn pieces(self, items: &[Bytes]) -> Vec<std::ops::Range<usize>> {
        let mut pieces = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (index, item) in items.iter().enumerate() {
            let size = item.len() + MESSAGE_OVERHEAD;
            let full = index - start >= self.messages || bytes + size > self.bytes;
            if index > start && full {
                pieces.push(start..index);
                (start, bytes) = (index, 0);
            }
            bytes += size;
        }
        if start < items.len() {
            pieces.push(start..items.len());
        }
        pieces
    }
}

/// Room for some messages in the producer's queue, given back when dropped.
pub struct Permit {
    _permit: OwnedSemaphorePermit,
    _share: OwnedSemaphorePermit,
}

impl Permit {
    fn new(permit: OwnedSemaphorePermit, share: OwnedSemaphorePermit) -> Self {
        metrics::gauge!(telemetry::IN_FLIGHT).increment(permit.num_permits() as f64);
        Self {
            _permit: permit,
            _share: share,
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        metrics::gauge!(telemetry::IN_FLIGHT).decrement(self._permit.num_permits() as f64);
    }
}

/// One message's fate: `Ok` once Kafka acknowledged it.
pub struct Delivery {
    future: DeliveryFuture,
    started: Instant,
    health: Arc<Health>,
}

impl Future for Delivery {
    type Output = Result<(), ApiError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let outcome = futures::ready!(self.future.poll_unpin(cx));
        let label = if matches!(outcome, Ok(Ok(_))) {
            "ok"
        } else {
            "error"
        };
        metrics::histogram!(telemetry::DELIVERY_SECONDS, "outcome" => label)
            .record(self.started.elapsed().as_secs_f64());
        Poll::Ready(match outcome {
            Ok(Ok(_)) => {
                // An acknowledgement is the best proof that Kafka is back.
                self.health.up();
                Ok(())
            }
            Ok(Err((error, _message))) => Err(error.into()),
            Err(_canceled) => Err(ApiError::Unavailable {
                detail: "the Kafka producer was closed before acknowledging the messages".into(),
                retry_after: RETRY_WHEN_DOWN,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(sizes: &[usize]) -> Vec<Bytes> {
        sizes.iter().map(|&n| Bytes::from(vec![b'x'; n])).collect()
    }

    /// The pieces cover every item once, in order; each fits a request (bytes with the
    /// overhead, and messages) unless it is a single oversized item; and each is as large as
    /// it can be (the next item would not have fitted).
    fn check(size: RequestSize, sizes: &[usize]) -> Vec<std::ops::Range<usize>> {
        let pieces = size.pieces(&items(sizes));
        let covered: Vec<usize> = pieces.iter().cloned().flatten().collect();
        assert_eq!(covered, (0..sizes.len()).collect::<Vec<_>>());
        let bytes = |range: std::ops::Range<usize>| -> usize {
            sizes[range].iter().map(|n| n + MESSAGE_OVERHEAD).sum()
        };
        for (i, piece) in pieces.iter().enumerate() {
            assert!(!piece.is_empty());
            if piece.len() > 1 {
                assert!(bytes(piece.clone()) <= size.bytes, "{piece:?} of {sizes:?}");
                assert!(piece.len() <= size.messages, "{piece:?}");
            }
            if let Some(next) = pieces.get(i + 1) {
                let grown = piece.start..next.start + 1;
                assert!(
                    bytes(grown.clone()) > size.bytes || grown.len() > size.messages,
                    "{piece:?} could have taken item {}",
                    next.start
                );
            }
        }
        pieces
    }

    #[test]
    fn a_batch_is_cut_into_pieces_of_one_request_each() {
        let size = RequestSize {
            bytes: 10_000,
            messages: 5,
        };
        assert!(check(size, &[]).is_empty());
        // 744 + 256 = 1000 bytes each: the message count binds first.
        assert_eq!(check(size, &[744; 12]), [0..5, 5..10, 10..12]);
        // 4744 + 256 = 5000 bytes each: the bytes bind first.
        assert_eq!(check(size, &[4744; 5]), [0..2, 2..4, 4..5]);
        // An item larger than a request goes alone, and the pieces around it are unaffected.
        assert_eq!(check(size, &[100, 50_000, 100, 100]), [0..1, 1..2, 2..4]);
        let mixed: Vec<usize> = (0..500).map(|i| (i * 7919) % 6000).collect();
        check(size, &mixed);
    }

    #[test]
    fn keys_go_to_the_partition_librdkafkas_partitioner_picks() {
        // CRC-32 (ISO-HDLC, librdkafka's rd_crc32) of "123456789" is 0xCBF43926, its check value.
        assert_eq!(partition_of("123456789", None), 0xCBF4_3926);
        assert_eq!(partition_of("123456789", Some(6)), 0xCBF4_3926 % 6);
        let key = "2f6c1f1e-8a51-4a8e-9d0a-6f1d2a3b4c5d";
        assert!(partition_of(key, Some(6)) < 6);
        assert_eq!(partition_of(key, Some(1)), 0);
    }

    #[test]
    fn the_request_size_follows_librdkafkas_settings() {
        let mut config = ClientConfig::new();
        let defaults = RequestSize::of(&config).unwrap();
        assert_eq!((defaults.bytes, defaults.messages), (1_000_000, 10_000));
        config
            .set("batch.size", "65536")
            .set("batch.num.messages", "100");
        let set = RequestSize::of(&config).unwrap();
        assert_eq!((set.bytes, set.messages), (65_536, 100));
        config.set("batch.size", "a lot");
        let error = RequestSize::of(&config).unwrap_err().to_string();
        assert!(error.contains("batch.size"), "{error}");
    }
}
