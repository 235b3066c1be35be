//! How services reach Kafka: one set of flags, librdkafka configured the same way everywhere.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

/// Connection flags for Kafka; each can also come from the environment.
#[derive(clap::Args, Clone, Debug)]
pub struct KafkaArgs {
    /// Bootstrap brokers, comma-separated host:port.
    #[arg(
        long = "kafka-brokers",
        env = "KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    /// Extra librdkafka properties as key=value, comma-separated (e.g. security.protocol=SSL).
    #[arg(
        long = "kafka-property",
        env = "KAFKA_PROPERTIES",
        value_delimiter = ','
    )]
    pub properties: Vec<String>,
    /// Replication factor of the topics the services create (3 on a production cluster).
    #[arg(
        long = "kafka-replication-factor",
        env = "KAFKA_REPLICATION_FACTOR",
        default_value_t = 1
    )]
    pub replication_factor: i32,
    /// Configs of the topics the services create, as key=value, comma-separated (e.g.
    /// `cleanup.policy=delete,retention.ms=3600000`; the local stack exports its retention).
    /// Topics that exist already keep theirs.
    #[arg(
        long = "kafka-topic-config",
        env = "KAFKA_TOPIC_CONFIG",
        value_delimiter = ','
    )]
    pub topic_configs: Vec<String>,
}

impl KafkaArgs {
    /// A librdkafka configuration with the brokers and the extra properties set.
    pub fn config(&self) -> anyhow::Result<ClientConfig> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for property in &self.properties {
            let (key, value) = property
                .split_once('=')
                .with_context(|| format!("Kafka property {property:?} is not key=value"))?;
            config.set(key.trim(), value.trim());
        }
        Ok(config)
    }

    /// `--kafka-topic-config` as (key, value) pairs.
    pub fn topic_configs(&self) -> anyhow::Result<Vec<(&str, &str)>> {
        self.topic_configs
            .iter()
            .map(|config| {
                config
                    .split_once('=')
                    .map(|(key, value)| (key.trim(), value.trim()))
                    .with_context(|| format!("topic config {config:?} is not key=value"))
            })
            .collect()
    }
}

/// A topic a service needs, created if missing.
#[derive(Clone, Debug)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
}

/// Creates the topics that do not exist yet; existing ones are left as they are.
pub async fn ensure_topics(args: &KafkaArgs, topics: &[TopicSpec]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = args
        .config()?
        .create()
        .context("cannot create Kafka admin client")?;
    let configs = args.topic_configs()?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|topic| {
            configs.iter().fold(
                NewTopic::new(
                    &topic.name,
                    topic.partitions,
                    TopicReplication::Fixed(args.replication_factor),
                ),
                |new_topic, (key, value)| new_topic.set(key, value),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .with_context(|| format!("cannot create topics on {}", args.brokers))?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("cannot create topic {name}: {code}"),
        }
    }
    Ok(())
}
