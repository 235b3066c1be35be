//! The flags of `flowhouse query-api`. Every flag can also come from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use flowhouse_schema::contract::TopicArgs;
use flowhouse_service::clickhouse::ClickHouseArgs;
use flowhouse_service::http::PublicApiArgs;
use flowhouse_service::kafka::KafkaArgs;

use crate::window;

/// Flags of `flowhouse query-api`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    /// Where the API is served.
    #[arg(
        long,
        env = "FLOWHOUSE_QUERY_API_LISTEN",
        default_value = "127.0.0.1:4201"
    )]
    pub listen: SocketAddr,
    /// Where /healthz, /readyz and /metrics are served (keep it off the public network).
    #[arg(
        long,
        env = "FLOWHOUSE_QUERY_API_ADMIN_LISTEN",
        default_value = "127.0.0.1:9466"
    )]
    pub admin_listen: SocketAddr,
    /// The tenant API keys file.
    #[arg(long, env = "FLOWHOUSE_KEYS_FILE", default_value = "keys.json")]
    pub keys_file: PathBuf,
    /// Secret that signs event page tokens. Set the same value on every replica; when empty, a
    /// random one is made per process (tokens then fail on another replica or after a restart).
    #[arg(
        long,
        env = "FLOWHOUSE_PAGE_TOKEN_SECRET",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub page_token_secret: String,
    #[command(flatten)]
    pub public: PublicApiArgs,
    #[command(flatten)]
    pub live: LiveArgs,
    #[command(flatten)]
    pub limits: Settings,
}

/// The live feed of `/events/out` and `/logs/out`: events and log lines read from Kafka as they
/// are acknowledged there, fanned out to the subscribers of their tenant.
#[derive(clap::Args, Clone, Debug)]
pub struct LiveArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    /// Serve live events and logs on `/events/out` and `/logs/out` (needs Kafka). Without it
    /// the sockets send their backfill and then close.
    #[arg(
        long,
        env = "FLOWHOUSE_LIVE_FEED",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub live_feed: bool,
    /// Messages waiting for one subscriber, at most; a subscriber further behind is
    /// disconnected (close 1013) rather than buffered without bound.
    #[arg(
        long,
        env = "FLOWHOUSE_LIVE_SUBSCRIBER_QUEUE",
        default_value_t = 10_000
    )]
    pub subscriber_queue: usize,
}

impl LiveArgs {
    pub fn new(kafka: KafkaArgs, topics: TopicArgs) -> Self {
        Self {
            kafka,
            topics,
            live_feed: true,
            subscriber_queue: 10_000,
        }
    }
}

/// The defaults, in one place: the flags' and [`Settings::default`]'s.
mod defaults {
    use std::time::Duration;

    pub const MAX_WINDOW_DAYS: u32 = 31;
    pub const MAX_SEARCH_DAYS: u32 = 366;
    pub const MAX_PAGE_SIZE: u32 = 200;
    pub const MAX_RESULT_ROWS: u64 = 10_000;
    pub const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
    pub const MAX_CONCURRENT_QUERIES: usize = 16;
    pub const MAX_CONCURRENT_PER_TENANT: usize = 4;
    pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(10);
    pub const CACHE_BYTES: u64 = 256 * 1024 * 1024;
    pub const CACHE_FRESH: Duration = Duration::from_secs(1);
    pub const CACHE_MAX_STALE: Duration = Duration::from_secs(30);
    pub const CACHE_SETTLED: Duration = Duration::from_secs(3600);
    pub const CACHE_SETTLE: Duration = Duration::from_secs(600);
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|error| error.to_string())
}

/// Limits and cache tuning.
#[derive(clap::Args, Clone, Debug)]
pub struct Settings {
    /// Longest window a dashboard metric may cover, in days (longer ones get a 422).
    #[arg(long, env = "FLOWHOUSE_QUERY_MAX_WINDOW_DAYS", default_value_t = defaults::MAX_WINDOW_DAYS)]
    pub max_window_days: u32,
    /// How far back event and log searches may reach, in days (Prefect's event search defaults
    /// to 180 days back; an older `since` gets a 422 naming this limit, never a silent clamp).
    #[arg(long, env = "FLOWHOUSE_QUERY_MAX_SEARCH_DAYS", default_value_t = defaults::MAX_SEARCH_DAYS)]
    pub max_search_days: u32,
    /// Largest page of `/events/filter` (Prefect's own is 50).
    #[arg(long, env = "FLOWHOUSE_QUERY_MAX_PAGE_SIZE", default_value_t = defaults::MAX_PAGE_SIZE)]
    pub max_page_size: u32,
    /// Most rows a list answer holds (durations per flow, counts by event or resource) and the
    /// deepest `/logs/filter` offset.
    #[arg(long, env = "FLOWHOUSE_QUERY_MAX_RESULT_ROWS", default_value_t = defaults::MAX_RESULT_ROWS)]
    pub max_result_rows: u64,
    /// ClickHouse `max_execution_time` of every query (whole seconds).
    #[arg(long, env = "FLOWHOUSE_QUERY_TIMEOUT", value_parser = duration, default_value = "30s")]
    pub query_timeout: Duration,
    /// ClickHouse queries running at once; further ones wait (then 503).
    #[arg(long, env = "FLOWHOUSE_QUERY_MAX_CONCURRENT", default_value_t = defaults::MAX_CONCURRENT_QUERIES)]
    pub max_concurrent_queries: usize,
    /// ClickHouse queries one tenant may run at once: a tenant's flood waits in (and is
    /// refused from) its own share, never the others'.
    #[arg(long, env = "FLOWHOUSE_QUERY_MAX_CONCURRENT_PER_TENANT", default_value_t = defaults::MAX_CONCURRENT_PER_TENANT)]
    pub max_concurrent_per_tenant: usize,
    /// How long a request waits for a ClickHouse slot before a 503.
    #[arg(long, env = "FLOWHOUSE_QUERY_QUEUE_TIMEOUT", value_parser = duration, default_value = "10s")]
    pub queue_timeout: Duration,
    /// Response cache size in bytes (0: no cache).
    #[arg(long, env = "FLOWHOUSE_QUERY_CACHE_BYTES", default_value_t = defaults::CACHE_BYTES)]
    pub cache_bytes: u64,
    /// Freshness: how long an answer covering the open bucket is served without a reload.
    #[arg(long, env = "FLOWHOUSE_QUERY_CACHE_FRESH", value_parser = duration, default_value = "1s")]
    pub cache_fresh: Duration,
    /// How long past its freshness an answer is still served while it is reloaded in the
    /// background (its `Age` says how old it is); 0 reloads in the foreground.
    #[arg(long, env = "FLOWHOUSE_QUERY_CACHE_MAX_STALE", value_parser = duration, default_value = "30s")]
    pub cache_max_stale: Duration,
    /// Life of an answer over closed, settled buckets only.
    #[arg(long, env = "FLOWHOUSE_QUERY_CACHE_SETTLED", value_parser = duration, default_value = "1h")]
    pub cache_settled: Duration,
    /// How long after a bucket closes it may still receive late events.
    #[arg(long, env = "FLOWHOUSE_QUERY_CACHE_SETTLE", value_parser = duration, default_value = "10m")]
    pub cache_settle: Duration,
    /// Send each query's tenant as the ClickHouse settings the tenant row policies read
    /// (`flowhouse migrate --reader-user`); needs `SQL_` in the server's custom_settings_prefixes.
    #[arg(long, env = "FLOWHOUSE_QUERY_TENANT_SETTINGS")]
    pub tenant_settings: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_window_days: defaults::MAX_WINDOW_DAYS,
            max_search_days: defaults::MAX_SEARCH_DAYS,
            max_page_size: defaults::MAX_PAGE_SIZE,
            max_result_rows: defaults::MAX_RESULT_ROWS,
            query_timeout: defaults::QUERY_TIMEOUT,
            max_concurrent_queries: defaults::MAX_CONCURRENT_QUERIES,
            max_concurrent_per_tenant: defaults::MAX_CONCURRENT_PER_TENANT,
            queue_timeout: defaults::QUEUE_TIMEOUT,
            cache_bytes: defaults::CACHE_BYTES,
            cache_fresh: defaults::CACHE_FRESH,
            cache_max_stale: defaults::CACHE_MAX_STALE,
            cache_settled: defaults::CACHE_SETTLED,
            cache_settle: defaults::CACHE_SETTLE,
            tenant_settings: false,
        }
    }
}

/// The integer-seconds variables of earlier releases, read for one more release (with a
/// warning) when the new one is not set: `(old, new)`.
const RENAMED: &[(&str, &str)] = &[
    ("FLOWHOUSE_QUERY_TIMEOUT_SECS", "FLOWHOUSE_QUERY_TIMEOUT"),
    (
        "FLOWHOUSE_QUERY_QUEUE_TIMEOUT_SECS",
        "FLOWHOUSE_QUERY_QUEUE_TIMEOUT",
    ),
    (
        "FLOWHOUSE_QUERY_CACHE_FRESH_SECS",
        "FLOWHOUSE_QUERY_CACHE_FRESH",
    ),
    (
        "FLOWHOUSE_QUERY_CACHE_SETTLED_SECS",
        "FLOWHOUSE_QUERY_CACHE_SETTLED",
    ),
    (
        "FLOWHOUSE_QUERY_CACHE_SETTLE_SECS",
        "FLOWHOUSE_QUERY_CACHE_SETTLE",
    ),
];

impl Settings {
    pub fn max_window_micros(&self) -> i64 {
        i64::from(self.max_window_days) * 86_400 * window::MICROS_PER_SECOND
    }

    pub fn max_search_micros(&self) -> i64 {
        i64::from(self.max_search_days) * 86_400 * window::MICROS_PER_SECOND
    }

    /// Applies the renamed variables of `env` (old name → seconds) where the new one is unset;
    /// returns the warnings to log.
    pub fn apply_renamed(&mut self, env: impl Fn(&str) -> Option<String>) -> Vec<String> {
        let mut warnings = Vec::new();
        for (old, new) in RENAMED {
            let Some(value) = env(old) else { continue };
            if env(new).is_some() {
                warnings.push(format!("{old} is ignored: {new} is set"));
                continue;
            }
            let Ok(seconds) = value.trim().parse::<u64>() else {
                warnings.push(format!("{old}={value} is not a number of seconds; ignored"));
                continue;
            };
            let value = Duration::from_secs(seconds);
            match *new {
                "FLOWHOUSE_QUERY_TIMEOUT" => self.query_timeout = value,
                "FLOWHOUSE_QUERY_QUEUE_TIMEOUT" => self.queue_timeout = value,
                "FLOWHOUSE_QUERY_CACHE_FRESH" => self.cache_fresh = value,
                "FLOWHOUSE_QUERY_CACHE_SETTLED" => self.cache_settled = value,
                _ => self.cache_settle = value,
            }
            warnings.push(format!(
                "{old} is deprecated and will be removed in the next release: set {new}={seconds}s"
            ));
        }
        warnings
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
    fn the_defaults_in_code_are_the_command_lines() {
        let parsed = Command::try_parse_from(["query-api"]).unwrap().args;
        let d = Settings::default();
        let p = &parsed.limits;
        assert_eq!(
            (
                d.max_window_days,
                d.max_search_days,
                d.max_page_size,
                d.max_result_rows
            ),
            (
                p.max_window_days,
                p.max_search_days,
                p.max_page_size,
                p.max_result_rows
            )
        );
        assert_eq!(
            (d.query_timeout, d.max_concurrent_queries, d.queue_timeout),
            (p.query_timeout, p.max_concurrent_queries, p.queue_timeout)
        );
        assert_eq!(d.max_concurrent_per_tenant, p.max_concurrent_per_tenant);
        assert_eq!(
            (
                d.cache_bytes,
                d.cache_fresh,
                d.cache_max_stale,
                d.cache_settled,
                d.cache_settle
            ),
            (
                p.cache_bytes,
                p.cache_fresh,
                p.cache_max_stale,
                p.cache_settled,
                p.cache_settle
            )
        );
        let live = LiveArgs::new(parsed.live.kafka.clone(), parsed.live.topics.clone());
        assert_eq!(live.live_feed, parsed.live.live_feed);
        assert_eq!(live.subscriber_queue, parsed.live.subscriber_queue);
        let off = Command::try_parse_from(["query-api", "--live-feed", "false"]).unwrap();
        assert!(!off.args.live.live_feed);
    }

    #[test]
    fn renamed_seconds_variables_still_work_for_one_release() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let mut settings = Settings::default();
        let warnings = settings.apply_renamed(env(&[("FLOWHOUSE_QUERY_CACHE_FRESH_SECS", "2")]));
        assert_eq!(settings.cache_fresh, Duration::from_secs(2));
        assert!(
            warnings[0].contains("set FLOWHOUSE_QUERY_CACHE_FRESH=2s"),
            "{warnings:?}"
        );
        let mut settings = Settings::default();
        let warnings = settings.apply_renamed(env(&[
            ("FLOWHOUSE_QUERY_TIMEOUT_SECS", "5"),
            ("FLOWHOUSE_QUERY_TIMEOUT", "7s"),
        ]));
        assert_eq!(
            settings.query_timeout,
            defaults::QUERY_TIMEOUT,
            "the new one wins (clap read it)"
        );
        assert!(warnings[0].contains("ignored"));
        let parsed = Command::try_parse_from(["query-api", "--cache-settle", "15m"]).unwrap();
        assert_eq!(parsed.args.limits.cache_settle, Duration::from_secs(900));
    }
}
