//! Flags of `flowhouse mirror prefect`; each can also come from the environment. The Prefect
//! connection reads the variables a Prefect user already has (`PREFECT_API_URL`,
//! `PREFECT_API_KEY`, `PREFECT_API_AUTH_STRING`).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, ensure};
use flowhouse_schema::contract::TopicArgs;
use flowhouse_schema::{Stream, Tenant};
use flowhouse_service::clickhouse::ClickHouseArgs;
use flowhouse_service::kafka::KafkaArgs;
use uuid::Uuid;

use crate::follow::Settings;

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// The Prefect API to follow: `http://host:4200/api` (a server) or
    /// `https://api.prefect.cloud/api/accounts/<id>/workspaces/<id>` (a Cloud workspace).
    #[arg(long, env = "PREFECT_API_URL")]
    pub prefect_api_url: url::Url,
    /// Prefect Cloud API key: sent as `Authorization: Bearer` and in the websockets' auth message.
    #[arg(long, env = "PREFECT_API_KEY", hide_env_values = true)]
    pub prefect_api_key: Option<String>,
    /// A self-hosted server's auth string (`PREFECT_SERVER_API_AUTH_STRING` on the server): sent
    /// as `Authorization: Basic` and in the websockets' auth message.
    #[arg(long, env = "PREFECT_API_AUTH_STRING", hide_env_values = true)]
    pub prefect_auth_string: Option<String>,
    /// The Flowhouse account everything mirrored belongs to (never taken from Prefect's data).
    #[arg(long, env = "FLOWHOUSE_MIRROR_ACCOUNT")]
    pub account: Uuid,
    /// The Flowhouse workspace everything mirrored belongs to.
    #[arg(long, env = "FLOWHOUSE_MIRROR_WORKSPACE")]
    pub workspace: Uuid,
    /// This mirror's identity, naming its checkpoints (default: from the Prefect URL and the
    /// tenant). Mirrors of different Prefect servers need different names.
    #[arg(long, env = "FLOWHOUSE_MIRROR_NAME")]
    pub name: Option<String>,
    /// Where /healthz, /readyz and /metrics are served.
    #[arg(
        long,
        env = "FLOWHOUSE_MIRROR_ADMIN_LISTEN",
        default_value = "127.0.0.1:9467"
    )]
    pub admin_listen: SocketAddr,
    /// How far back the first start (no checkpoint yet) reads (Prefect keeps events 7 days).
    #[arg(long, env = "FLOWHOUSE_MIRROR_INITIAL_BACKFILL", value_parser = humantime::parse_duration, default_value = "7d")]
    pub initial_backfill: Duration,
    /// How far before the checkpoint each backfill starts: covers events and log lines that
    /// reach Prefect after later ones (client buffers, Prefect's persister delay, clock skew).
    #[arg(long, env = "FLOWHOUSE_MIRROR_SAFETY_MARGIN", value_parser = humantime::parse_duration, default_value = "5m")]
    pub safety_margin: Duration,
    /// How often to backfill again while live (catches what the live streams dropped, and log
    /// lines when the server's `/logs/out` is off).
    #[arg(long, env = "FLOWHOUSE_MIRROR_RESYNC_INTERVAL", value_parser = humantime::parse_duration, default_value = "60s")]
    pub resync_interval: Duration,
    /// How often the checkpoints are written to ClickHouse.
    #[arg(long, env = "FLOWHOUSE_MIRROR_CHECKPOINT_INTERVAL", value_parser = humantime::parse_duration, default_value = "2s")]
    pub checkpoint_interval: Duration,
    /// Longest wait between two reconnection attempts (the wait doubles from 250 ms, with
    /// jitter).
    #[arg(long, env = "FLOWHOUSE_MIRROR_RECONNECT_MAX", value_parser = humantime::parse_duration, default_value = "30s")]
    pub reconnect_max: Duration,
    /// How long librdkafka retries a message before giving it up (the mirror then sends it
    /// again). Long: a broker back from a restart takes the retries, and the followers stop
    /// reading after a few seconds without acknowledgements anyway.
    #[arg(long, env = "FLOWHOUSE_MIRROR_DELIVERY_TIMEOUT", value_parser = humantime::parse_duration, default_value = "5m")]
    pub delivery_timeout: Duration,
    /// Largest event or log line produced; larger ones are logged and skipped (Flowhouse would
    /// dead-letter them).
    #[arg(long, env = "FLOWHOUSE_MAX_EVENT_BYTES", default_value_t = 1_500_000)]
    pub max_event_bytes: usize,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
}

impl Args {
    pub fn check(&self) -> anyhow::Result<()> {
        if !matches!(self.prefect_api_url.scheme(), "http" | "https") {
            bail!(
                "--prefect-api-url must be http(s)://..., not {}",
                self.prefect_api_url
            );
        }
        ensure!(
            !(self.prefect_api_key.is_some() && self.prefect_auth_string.is_some()),
            "give --prefect-api-key (Prefect Cloud) or --prefect-auth-string (a server), not both"
        );
        ensure!(
            !self.resync_interval.is_zero() && !self.checkpoint_interval.is_zero(),
            "--resync-interval and --checkpoint-interval must be above zero"
        );
        Ok(())
    }

    pub fn tenant(&self) -> Tenant {
        Tenant {
            account_id: self.account,
            workspace_id: self.workspace,
        }
    }

    /// `--name`, else `prefect:<api url>-><account>/<workspace>`: one Prefect source into one
    /// tenant, whatever host the mirror runs on.
    pub fn mirror_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            format!(
                "prefect:{}->{}",
                self.prefect_api_url.as_str().trim_end_matches('/'),
                self.tenant()
            )
        })
    }

    pub fn topic(&self, stream: Stream) -> &str {
        stream.topic(&self.topics)
    }

    pub fn follow_settings(&self) -> Settings {
        Settings {
            safety_margin: self.safety_margin,
            resync_interval: self.resync_interval,
            reconnect_max: self.reconnect_max,
            max_item_bytes: self.max_event_bytes,
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

    fn parse(extra: &[&str]) -> anyhow::Result<Args> {
        let mut argv = vec![
            "mirror",
            "--prefect-api-url",
            "http://127.0.0.1:4200/api",
            "--account",
            "00000000-0000-0000-0000-00000000000a",
            "--workspace",
            "00000000-0000-0000-0000-00000000000b",
        ];
        argv.extend_from_slice(extra);
        let args = Command::try_parse_from(argv)?.args;
        args.check()?;
        Ok(args)
    }

    #[test]
    fn the_default_name_is_the_source_and_the_tenant() {
        let args = parse(&[]).unwrap();
        assert_eq!(
            args.mirror_name(),
            "prefect:http://127.0.0.1:4200/api->00000000-0000-0000-0000-00000000000a/\
             00000000-0000-0000-0000-00000000000b"
        );
        assert_eq!(parse(&["--name", "east"]).unwrap().mirror_name(), "east");
        assert_eq!(args.safety_margin, Duration::from_secs(300));
    }

    #[test]
    fn one_credential_at_most_and_an_http_url() {
        let both = parse(&["--prefect-api-key", "k", "--prefect-auth-string", "s"]);
        assert!(both.unwrap_err().to_string().contains("not both"));
        let mut argv = vec!["mirror", "--prefect-api-url", "ftp://x/api"];
        argv.extend(["--account", "00000000-0000-0000-0000-00000000000a"]);
        argv.extend(["--workspace", "00000000-0000-0000-0000-00000000000b"]);
        let args = Command::try_parse_from(argv).unwrap().args;
        assert!(args.check().unwrap_err().to_string().contains("http(s)"));
    }
}
