//! The Kafka producer both streams share: idempotent, `acks=all`, replaced when librdkafka
//! reports a fatal error, and the `kafka` component of `/readyz`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use flowhouse_schema::{Envelope, Stream};
use flowhouse_service::admin::Readiness;
use flowhouse_service::kafka::KafkaArgs;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};

use crate::item::Item;

/// librdkafka's messages, into `tracing`.
pub(super) struct Context;

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(facility, "librdkafka: {message}"),
            _ => tracing::debug!(facility, "librdkafka: {message}"),
        }
    }
}

#[derive(Clone)]
pub struct Producer {
    /// Replaced when librdkafka reports a fatal error (after which a producer is unusable).
    inner: Arc<RwLock<Arc<FutureProducer<Context>>>>,
    config: ClientConfig,
    readiness: Readiness,
    /// Streams whose deliverer Kafka currently refuses.
    refused: Arc<Mutex<HashSet<Stream>>>,
}

impl Producer {
    /// A producer for `kafka`. librdkafka retries a message for `delivery_timeout` before it
    /// reports it refused (its deliverer then sends it again).
    pub fn new(
        kafka: &KafkaArgs,
        delivery_timeout: Duration,
        readiness: Readiness,
    ) -> anyhow::Result<Self> {
        let mut config = kafka.config()?;
        // The contract's guarantees: acknowledged means every in-sync replica has it, and
        // librdkafka's own retries never duplicate or reorder.
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                delivery_timeout
                    .as_millis()
                    .clamp(1, i32::MAX as u128)
                    .to_string(),
            )
            .set("message.max.bytes", "2000000");
        for (key, value) in [("linger.ms", "5"), ("reconnect.backoff.max.ms", "2000")] {
            if config.get(key).is_none() {
                config.set(key, value);
            }
        }
        let inner = create(&config)?;
        readiness.ready("kafka");
        Ok(Self {
            inner: Arc::new(RwLock::new(Arc::new(inner))),
            config,
            readiness,
            refused: Arc::default(),
        })
    }

    fn current(&self) -> Arc<FutureProducer<Context>> {
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Hands one item to librdkafka, per the contract: key, the tenant's headers, the value.
    pub(super) fn send(
        &self,
        topic: &str,
        envelope: &Envelope,
        item: &Item,
    ) -> Result<DeliveryFuture, KafkaError> {
        let key = envelope.key();
        let record = FutureRecord::to(topic)
            .key(&key)
            .payload(item.json.get().as_bytes())
            .headers(envelope.headers());
        self.current()
            .send_result(record)
            .map_err(|(error, _)| error)
    }

    /// Replaces the producer when librdkafka says it hit a fatal error (what the old one held is
    /// then refused, and sent again by the deliverers).
    pub(super) fn recover(&self) {
        let current = self.current();
        let Some((code, reason)) = current.client().fatal_error() else {
            return;
        };
        let mut inner = self
            .inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // The other stream's deliverer may have replaced it already.
        if !Arc::ptr_eq(&inner, &current) {
            return;
        }
        tracing::warn!(%code, reason, "fatal Kafka producer error; starting a new producer");
        match create(&self.config) {
            Ok(fresh) => *inner = Arc::new(fresh),
            Err(error) => tracing::error!("{error:#}"),
        }
    }

    /// `/readyz`'s `kafka`: ready unless a stream's deliverer is refused.
    pub(super) fn set_refused(&self, stream: Stream, refused: Option<&str>) {
        let mut streams = self
            .refused
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match refused {
            Some(reason) => {
                streams.insert(stream);
                self.readiness.not_ready("kafka", reason.to_string());
            }
            None => {
                streams.remove(&stream);
                if streams.is_empty() {
                    self.readiness.ready("kafka");
                }
            }
        }
    }
}

fn create(config: &ClientConfig) -> anyhow::Result<FutureProducer<Context>> {
    config
        .create_with_context(Context)
        .context("cannot create the Kafka producer")
}
