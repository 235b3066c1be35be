//! The production compose file cannot run on the development machines, so this test keeps it
//! honest: every variable it gives a Flowhouse service is one that service really reads (taken
//! from the CLI's own definition), the connection variables point at the compose services on the
//! ports those services listen on, and every published port and health check matches the
//! service's listen address.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use clap::CommandFactory;
use flowhouse::Cli;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Compose {
    services: BTreeMap<String, Service>,
}

#[derive(Debug, Deserialize)]
struct Service {
    image: String,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    entrypoint: Vec<String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    ports: Vec<String>,
    #[serde(default)]
    volumes: Vec<String>,
    healthcheck: Option<Healthcheck>,
}

#[derive(Debug, Deserialize)]
struct Healthcheck {
    test: Vec<String>,
}

fn compose() -> Compose {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/compose/compose.yaml");
    let text = std::fs::read_to_string(&path).expect("read compose.yaml");
    let mut value: serde_norway::Value =
        serde_norway::from_str(&text).expect("compose.yaml is YAML");
    value.apply_merge().expect("merge keys resolve");
    serde_norway::from_value(value).expect("compose.yaml has the expected shape")
}

/// The environment variables a subcommand reads, from clap's definition (globals included).
fn variables_read_by(subcommand: &str) -> BTreeSet<String> {
    let root = Cli::command();
    let sub = root
        .find_subcommand(subcommand)
        .unwrap_or_else(|| panic!("flowhouse has no subcommand {subcommand}"));
    root.get_arguments()
        .chain(sub.get_arguments())
        .filter_map(|arg| arg.get_env())
        .map(|name| name.to_string_lossy().into_owned())
        .collect()
}

fn flowhouse_services(compose: &Compose) -> Vec<(&str, &Service, String)> {
    compose
        .services
        .iter()
        .filter(|(_, s)| s.image.starts_with("flowhouse"))
        .filter_map(|(name, s)| {
            let subcommand = s
                .command
                .first()
                .cloned()
                .or_else(|| s.entrypoint.get(1).cloned())?;
            Some((name.as_str(), s, subcommand))
        })
        .collect()
}

fn port_of(address: &str) -> u16 {
    address
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {address}"))
}

#[test]
fn every_variable_is_one_the_service_reads() {
    let compose = compose();
    let services = flowhouse_services(&compose);
    assert!(
        services.len() >= 4,
        "migrate, ingest, endpoint and query-api run flowhouse"
    );
    for (name, service, subcommand) in services {
        let reads = variables_read_by(&subcommand);
        for variable in service.environment.keys() {
            assert!(
                reads.contains(variable),
                "service {name} sets {variable}, which `flowhouse {subcommand}` does not read \
                 (it reads {reads:?})"
            );
        }
    }
}

#[test]
fn connections_point_at_the_compose_services() {
    let compose = compose();
    let clickhouse = &compose.services["clickhouse"];
    let kafka = &compose.services["kafka"];
    let clickhouse_ports: BTreeSet<u16> = clickhouse.ports.iter().map(|p| port_of(p)).collect();
    let advertised = &kafka.environment["KAFKA_ADVERTISED_LISTENERS"];

    for (name, service, subcommand) in flowhouse_services(&compose) {
        let reads = variables_read_by(&subcommand);
        let env = &service.environment;
        if reads.contains("CLICKHOUSE_URL") {
            let url = env.get("CLICKHOUSE_URL").unwrap_or_else(|| {
                panic!("{name} reads CLICKHOUSE_URL but compose leaves it unset")
            });
            assert!(url.starts_with("http://clickhouse:"), "{name}: {url}");
            assert!(
                clickhouse_ports.contains(&port_of(url)),
                "{name}: {url} is not a ClickHouse port"
            );
            assert_eq!(
                env["CLICKHOUSE_USER"], clickhouse.environment["CLICKHOUSE_USER"],
                "{name}"
            );
            assert_eq!(
                env["CLICKHOUSE_PASSWORD"], clickhouse.environment["CLICKHOUSE_PASSWORD"],
                "{name}"
            );
        }
        if reads.contains("KAFKA_BROKERS") {
            let brokers = env.get("KAFKA_BROKERS").unwrap_or_else(|| {
                panic!("{name} reads KAFKA_BROKERS but compose leaves it unset")
            });
            assert!(
                advertised.contains(&format!("//{brokers}")),
                "{name}: {brokers} is not what Kafka advertises ({advertised})"
            );
        }
    }
}

#[test]
fn listen_ports_are_published_and_health_checked() {
    let compose = compose();
    let mut checked = 0;
    for (name, service, _) in flowhouse_services(&compose) {
        let Some((variable, listen)) = service
            .environment
            .iter()
            .find(|(k, _)| k.ends_with("_LISTEN"))
        else {
            continue;
        };
        assert!(
            listen.starts_with("0.0.0.0:"),
            "{name}: {variable}={listen} is unreachable from other containers"
        );
        let port = port_of(listen);
        assert!(
            service.ports.iter().any(|p| p == &format!("{port}:{port}")),
            "{name} listens on {port} but publishes {:?}",
            service.ports
        );
        let health = service
            .healthcheck
            .as_ref()
            .unwrap_or_else(|| panic!("{name} has no health check"))
            .test
            .join(" ");
        assert!(
            health.contains(&format!("127.0.0.1:{port}/readyz")),
            "{name}: health check {health:?} does not ask /readyz on {port}"
        );
        checked += 1;
    }
    assert_eq!(checked, 3, "ingest, endpoint and query-api each serve HTTP");
}

#[test]
fn the_keys_file_is_on_the_shared_volume() {
    let compose = compose();
    for (name, service, _) in flowhouse_services(&compose) {
        if let Some(path) = service.environment.get("FLOWHOUSE_KEYS_FILE") {
            let mounted = service.volumes.iter().any(|volume| {
                let target = volume.split(':').nth(1).unwrap_or_default();
                !target.is_empty() && path.starts_with(target)
            });
            assert!(
                mounted,
                "{name} reads keys from {path}, which no volume holds"
            );
        }
    }
}
