//! The flags of `flowhouse endpoint`. Every flag can also come from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use flowhouse_schema::contract::TopicArgs;
use flowhouse_service::kafka::KafkaArgs;

/// Flags of `flowhouse endpoint`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    /// Where the API (and /healthz, /readyz, /metrics) is served.
    #[arg(
        long,
        env = "FLOWHOUSE_ENDPOINT_LISTEN",
        default_value = "127.0.0.1:4200"
    )]
    pub listen: SocketAddr,
    /// The tenant API keys file (reloaded when it changes).
    #[arg(long, env = "FLOWHOUSE_KEYS_FILE", default_value = "keys.json")]
    pub keys_file: PathBuf,
    /// Largest request body accepted, in bytes; larger bodies get a 413 without being read.
    #[arg(
        long,
        env = "FLOWHOUSE_ENDPOINT_MAX_BODY_BYTES",
        default_value_t = 10 * 1024 * 1024
    )]
    pub max_body_bytes: usize,
    /// Events (and log lines) per second each workspace may send; 0 turns the limit off.
    #[arg(
        long,
        env = "FLOWHOUSE_ENDPOINT_RATE_LIMIT",
        default_value_t = 10_000.0
    )]
    pub rate_limit: f64,
    /// How many events a workspace may send at once above its rate (the token bucket's size).
    /// A batch larger than this is still accepted when the bucket is full.
    #[arg(
        long,
        env = "FLOWHOUSE_ENDPOINT_RATE_BURST",
        default_value_t = 100_000.0
    )]
    pub rate_burst: f64,
    /// Messages handed to the producer but not yet acknowledged by Kafka, at most. Over it,
    /// HTTP requests get a 503 and websockets stop reading until acknowledgements come back.
    #[arg(
        long,
        env = "FLOWHOUSE_ENDPOINT_MAX_IN_FLIGHT",
        default_value_t = 200_000
    )]
    pub max_in_flight: usize,
    /// How long the producer keeps retrying a message before giving up on it (a 503 for HTTP,
    /// a closed socket for websockets). Kafka's `message.timeout.ms`.
    #[arg(
        long,
        env = "FLOWHOUSE_ENDPOINT_DELIVERY_TIMEOUT",
        default_value = "30s",
        value_parser = humantime::parse_duration
    )]
    pub delivery_timeout: Duration,
    /// How long a self-hosted websocket client has to send its `auth` message.
    #[arg(
        long,
        env = "FLOWHOUSE_ENDPOINT_AUTH_TIMEOUT",
        default_value = "10s",
        value_parser = humantime::parse_duration
    )]
    pub auth_timeout: Duration,
}

impl Args {
    /// The default flags with the given brokers, keys file and topics: what tests and
    /// benchmarks start from.
    pub fn new(kafka: KafkaArgs, keys_file: PathBuf, topics: TopicArgs) -> Self {
        Self {
            kafka,
            topics,
            listen: SocketAddr::from(([127, 0, 0, 1], 4200)),
            keys_file,
            max_body_bytes: 10 * 1024 * 1024,
            rate_limit: 10_000.0,
            rate_burst: 100_000.0,
            max_in_flight: 200_000,
            delivery_timeout: Duration::from_secs(30),
            auth_timeout: Duration::from_secs(10),
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
        assert_eq!(built.max_body_bytes, parsed.max_body_bytes);
        assert_eq!(built.rate_limit, parsed.rate_limit);
        assert_eq!(built.rate_burst, parsed.rate_burst);
        assert_eq!(built.max_in_flight, parsed.max_in_flight);
        assert_eq!(built.delivery_timeout, parsed.delivery_timeout);
        assert_eq!(built.auth_timeout, parsed.auth_timeout);
    }
}
