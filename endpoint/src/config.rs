//! The flags of `flowhouse endpoint`. Every flag can also come from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use flowhouse_schema::contract::TopicArgs;
use flowhouse_schema::event::Limits;
use flowhouse_service::http::PublicApiArgs;
use flowhouse_service::kafka::KafkaArgs;

/// The defaults, in one place: the flags' and [`Args::new`]'s (a test checks the duration
/// strings of the flags against these).
mod defaults {
    use std::time::Duration;

    pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
    pub const RATE_LIMIT: f64 = 10_000.0;
    pub const RATE_BURST: f64 = 100_000.0;
    pub const MAX_IN_FLIGHT: usize = 200_000;
    pub const MAX_IN_FLIGHT_PER_TENANT: usize = 50_000;
    pub const MAX_UPLOADS_PER_TENANT: usize = 4;
    pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
    pub const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
}

/// Flags of `flowhouse endpoint`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    #[command(flatten)]
    pub public: PublicApiArgs,
    #[command(flatten)]
    pub limits: EventLimitArgs,
    #[command(flatten)]
    pub uploads: UploadLimits,
    /// Where the API is served.
    #[arg(
        long,
        env = "FLOWHOUSE_ENDPOINT_LISTEN",
        default_value = "127.0.0.1:4200"
    )]
    pub listen: SocketAddr,
    /// Where /healthz, /readyz and /metrics are served (keep it off the public network).
    #[arg(
        long,
        env = "FLOWHOUSE_ENDPOINT_ADMIN_LISTEN",
        default_value = "127.0.0.1:9465"
    )]
    pub admin_listen: SocketAddr,
    /// The tenant API keys file (reloaded when it changes).
    #[arg(long, env = "FLOWHOUSE_KEYS_FILE", default_value = "keys.json")]
    pub keys_file: PathBuf,
    /// How long a self-hosted websocket client has to send its `auth` message.
    #[arg(
        long,
        env = "FLOWHOUSE_ENDPOINT_AUTH_TIMEOUT",
        default_value = "10s",
        value_parser = humantime::parse_duration
    )]
    pub auth_timeout: Duration,
}

/// What one workspace, and all of them together, may upload: sizes, rates, what waits for
/// Kafka. Its own group of flags, so that `flowhouse serve` takes the same ones.
#[derive(clap::Args, Clone, Debug)]
pub struct UploadLimits {
    /// Largest request body accepted, in bytes; larger bodies get a 413 without being read.
    #[arg(
        long,
        env = "FLOWHOUSE_ENDPOINT_MAX_BODY_BYTES",
        default_value_t = defaults::MAX_BODY_BYTES
    )]
    pub max_body_bytes: usize,
    /// Events (and log lines) per second each workspace may send; 0 turns the limit off.
    #[arg(
        long,
        env = "FLOWHOUSE_ENDPOINT_RATE_LIMIT",
        default_value_t = defaults::RATE_LIMIT
    )]
    pub rate_limit: f64,
    /// How many events a workspace may send at once above its rate (the token bucket's size).
    /// A batch larger than this is still accepted when the bucket is full.
    #[arg(
        long,
        env = "FLOWHOUSE_ENDPOINT_RATE_BURST",
        default_value_t = defaults::RATE_BURST
    )]
    pub rate_burst: f64,
    /// Messages handed to the producer but not yet acknowledged by Kafka, at most. Over it,
    /// HTTP requests get a 503 and websockets stop reading until acknowledgements come back.
    #[arg(
        long,
        env = "FLOWHOUSE_ENDPOINT_MAX_IN_FLIGHT",
        default_value_t = defaults::MAX_IN_FLIGHT
    )]
    pub max_in_flight: usize,
    /// The share of `max_in_flight` one workspace may hold: a workspace that sends faster than
    /// Kafka acknowledges waits (websocket) or gets a 503 (HTTP) from its own share, never
    /// taking the others'.
    #[arg(
        long,
        env = "FLOWHOUSE_ENDPOINT_MAX_IN_FLIGHT_PER_TENANT",
        default_value_t = defaults::MAX_IN_FLIGHT_PER_TENANT
    )]
    pub max_in_flight_per_tenant: usize,
    /// HTTP batches one workspace may upload at once; more get a 429 before their body is read.
    #[arg(
        long,
        env = "FLOWHOUSE_ENDPOINT_MAX_UPLOADS_PER_TENANT",
        default_value_t = defaults::MAX_UPLOADS_PER_TENANT
    )]
    pub max_uploads_per_tenant: usize,
    /// How long the producer keeps retrying a message before giving up on it (a 503 for HTTP,
    /// a closed socket for websockets). Kafka's `message.timeout.ms`.
    #[arg(
        long,
        env = "FLOWHOUSE_ENDPOINT_DELIVERY_TIMEOUT",
        default_value = "30s",
        value_parser = humantime::parse_duration
    )]
    pub delivery_timeout: Duration,
}

impl Default for UploadLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: defaults::MAX_BODY_BYTES,
            rate_limit: defaults::RATE_LIMIT,
            rate_burst: defaults::RATE_BURST,
            max_in_flight: defaults::MAX_IN_FLIGHT,
            max_in_flight_per_tenant: defaults::MAX_IN_FLIGHT_PER_TENANT,
            max_uploads_per_tenant: defaults::MAX_UPLOADS_PER_TENANT,
            delivery_timeout: defaults::DELIVERY_TIMEOUT,
        }
    }
}

/// The limits on one event the endpoint enforces; Prefect's server defaults, configurable up to
/// what the ingest consumer accepts ([`Limits::default`]).
#[derive(clap::Args, Clone, Debug)]
pub struct EventLimitArgs {
    /// Largest event or log line, in bytes (413 over HTTP, close 1009 on a websocket).
    #[arg(long, env = "FLOWHOUSE_MAX_EVENT_BYTES", default_value_t = Limits::prefect().max_event_bytes)]
    pub max_event_bytes: usize,
    /// Most related resources of one event (Prefect: `PREFECT_SERVER_EVENTS_MAXIMUM_RELATED_RESOURCES`).
    #[arg(long, env = "FLOWHOUSE_MAX_RELATED_RESOURCES", default_value_t = Limits::prefect().max_related)]
    pub max_related_resources: usize,
    /// Most labels of one resource (Prefect: `PREFECT_SERVER_EVENTS_MAXIMUM_LABELS_PER_RESOURCE`).
    #[arg(long, env = "FLOWHOUSE_MAX_LABELS_PER_RESOURCE", default_value_t = Limits::prefect().max_labels_per_resource)]
    pub max_labels_per_resource: usize,
}

impl Default for EventLimitArgs {
    fn default() -> Self {
        let prefect = Limits::prefect();
        Self {
            max_event_bytes: prefect.max_event_bytes,
            max_related_resources: prefect.max_related,
            max_labels_per_resource: prefect.max_labels_per_resource,
        }
    }
}

impl EventLimitArgs {
    /// The limits, once each is known to be within what ingest accepts.
    pub fn limits(&self) -> anyhow::Result<Limits> {
        let ceiling = Limits::default();
        for (flag, value, most) in [
            (
                "FLOWHOUSE_MAX_RELATED_RESOURCES",
                self.max_related_resources,
                ceiling.max_related,
            ),
            (
                "FLOWHOUSE_MAX_LABELS_PER_RESOURCE",
                self.max_labels_per_resource,
                ceiling.max_labels_per_resource,
            ),
        ] {
            anyhow::ensure!(
                value <= most,
                "{flag}={value} is over {most}, the most the ingest consumer accepts"
            );
        }
        Ok(Limits {
            max_event_bytes: self.max_event_bytes,
            max_related: self.max_related_resources,
            max_labels_per_resource: self.max_labels_per_resource,
            ..Limits::prefect()
        })
    }
}

impl Args {
    /// The default flags with the given brokers, keys file and topics: what tests and
    /// benchmarks start from.
    pub fn new(kafka: KafkaArgs, keys_file: PathBuf, topics: TopicArgs) -> Self {
        Self {
            kafka,
            topics,
            public: PublicApiArgs::new(),
            limits: EventLimitArgs::default(),
            listen: SocketAddr::from(([127, 0, 0, 1], 4200)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9465)),
            keys_file,
            uploads: UploadLimits::default(),
            auth_timeout: defaults::AUTH_TIMEOUT,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(clap::Parser)]
    struct Command {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn new_has_the_same_defaults_as_the_command_line() {
        let parsed = Command::try_parse_from(["endpoint"]).unwrap().args;
        let built = Args::new(
            parsed.kafka.clone(),
            parsed.keys_file.clone(),
            parsed.topics.clone(),
        );
        assert_eq!(built.listen, parsed.listen);
        assert_eq!(built.admin_listen, parsed.admin_listen);
        assert_eq!(built.uploads.max_body_bytes, parsed.uploads.max_body_bytes);
        assert_eq!(built.uploads.rate_limit, parsed.uploads.rate_limit);
        assert_eq!(built.uploads.rate_burst, parsed.uploads.rate_burst);
        assert_eq!(built.uploads.max_in_flight, parsed.uploads.max_in_flight);
        assert_eq!(
            built.uploads.max_in_flight_per_tenant,
            parsed.uploads.max_in_flight_per_tenant
        );
        assert_eq!(
            built.uploads.max_uploads_per_tenant,
            parsed.uploads.max_uploads_per_tenant
        );
        assert_eq!(
            built.uploads.delivery_timeout,
            parsed.uploads.delivery_timeout
        );
        assert_eq!(built.auth_timeout, parsed.auth_timeout);
        assert_eq!(
            built.public.prefect_api_version,
            parsed.public.prefect_api_version
        );
        let (built, parsed) = (
            built.limits.limits().unwrap(),
            parsed.limits.limits().unwrap(),
        );
        assert_eq!(built.max_event_bytes, parsed.max_event_bytes);
        assert_eq!(built.max_related, parsed.max_related);
        assert_eq!(
            built.max_labels_per_resource,
            parsed.max_labels_per_resource
        );
    }

    #[test]
    fn limits_are_prefects_and_never_over_what_ingest_accepts() {
        let limits = EventLimitArgs::default().limits().unwrap();
        assert_eq!(limits.max_related, 100);
        assert_eq!(limits.max_labels_per_resource, 500);
        assert_eq!(limits.max_event_bytes, 1_500_000);
        let over = EventLimitArgs {
            max_related_resources: 501,
            ..EventLimitArgs::default()
        };
        assert!(
            over.limits()
                .unwrap_err()
                .to_string()
                .contains("FLOWHOUSE_MAX_RELATED_RESOURCES=501")
        );
    }
}
