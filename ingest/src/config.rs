//! The flags of `flowhouse ingest`. Every flag can also come from the environment.

use std::net::SocketAddr;
use std::time::Duration;

use flowhouse_schema::contract::TopicArgs;
use flowhouse_schema::event::Limits;
use flowhouse_service::clickhouse::ClickHouseArgs;
use flowhouse_service::kafka::KafkaArgs;

use crate::batch;

/// The defaults, in one place: the flags' and [`Args::new`]'s (a test checks the duration
/// strings of the flags against these).
mod defaults {
    use std::net::SocketAddr;
    use std::time::Duration;

    pub const ADMIN_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::LOCALHOST,
        9464,
    ));
    pub const GROUP: &str = "flowhouse-ingest";
    pub const SESSION_TIMEOUT: Duration = Duration::from_secs(30);
    pub const MAX_BUFFERED_BYTES: usize = 256 * 1024 * 1024;
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
}

/// Flags of `flowhouse ingest`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    /// Where /healthz, /readyz and /metrics are served.
    #[arg(
        long,
        env = "FLOWHOUSE_INGEST_ADMIN_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    pub admin_listen: SocketAddr,
    /// Kafka consumer group; ingest processes in one group share the partitions.
    #[arg(
        long,
        env = "FLOWHOUSE_INGEST_GROUP",
        default_value = "flowhouse-ingest"
    )]
    pub group: String,
    /// How long the group waits for a silent member before giving its partitions to others:
    /// the failover time after a crash. Shorter is faster failover, but a broker that answers
    /// heartbeats slowly under load (tansu on SQLite takes seconds) then evicts live members.
    #[arg(long, env = "FLOWHOUSE_INGEST_SESSION_TIMEOUT", value_parser = humantime::parse_duration, default_value = "30s")]
    pub session_timeout: Duration,
    #[command(flatten)]
    pub batching: batch::BatchLimits,
    /// Memory for buffered rows across all partitions; consumption pauses above it.
    #[arg(long, env = "FLOWHOUSE_INGEST_MAX_BUFFERED_BYTES", default_value_t = defaults::MAX_BUFFERED_BYTES)]
    pub max_buffered_bytes: usize,
    /// Largest event or log accepted, in bytes; larger messages are dead-lettered.
    #[arg(long, env = "FLOWHOUSE_MAX_EVENT_BYTES", default_value_t = Limits::prefect().max_event_bytes)]
    pub max_event_bytes: usize,
    /// How long a SIGTERM may take to insert and commit what is buffered.
    #[arg(long, env = "FLOWHOUSE_INGEST_DRAIN_TIMEOUT", value_parser = humantime::parse_duration, default_value = "60s")]
    pub drain_timeout: Duration,
}

impl Args {
    /// The flags' defaults, for a service started in code (`flowhouse serve`, tests).
    pub fn new(clickhouse: ClickHouseArgs, kafka: KafkaArgs, topics: TopicArgs) -> Self {
        Self {
            clickhouse,
            kafka,
            topics,
            admin_listen: defaults::ADMIN_LISTEN,
            group: defaults::GROUP.to_string(),
            session_timeout: defaults::SESSION_TIMEOUT,
            batching: batch::BatchLimits::default(),
            max_buffered_bytes: defaults::MAX_BUFFERED_BYTES,
            max_event_bytes: Limits::prefect().max_event_bytes,
            drain_timeout: defaults::DRAIN_TIMEOUT,
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
        let parsed = Command::try_parse_from(["ingest"]).unwrap().args;
        let built = Args::new(
            parsed.clickhouse.clone(),
            parsed.kafka.clone(),
            parsed.topics.clone(),
        );
        assert_eq!(built.admin_listen, parsed.admin_listen);
        assert_eq!(built.group, parsed.group);
        assert_eq!(built.session_timeout, parsed.session_timeout);
        assert_eq!(built.max_buffered_bytes, parsed.max_buffered_bytes);
        assert_eq!(built.max_event_bytes, parsed.max_event_bytes);
        assert_eq!(built.drain_timeout, parsed.drain_timeout);
        assert_eq!(built.batching.max_rows, parsed.batching.max_rows);
        assert_eq!(built.batching.max_bytes, parsed.batching.max_bytes);
        assert_eq!(built.batching.max_age, parsed.batching.max_age);
    }
}
