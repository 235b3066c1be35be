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
    expose: Vec<String>,
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

/// The environment variables a subcommand (`ingest`, or nested: `automations serve`) reads,
/// from clap's definition (globals included).
fn variables_read_by(subcommand: &str) -> BTreeSet<String> {
    let root = Cli::command();
    let mut sub = &root;
    for word in subcommand.split(' ') {
        sub = sub
            .find_subcommand(word)
            .unwrap_or_else(|| panic!("flowhouse has no subcommand {subcommand}"));
    }
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
            // The subcommand words: the command up to its first flag.
            let words: Vec<&str> = if s.command.is_empty() {
                s.entrypoint.iter().skip(1).map(String::as_str).collect()
            } else {
                s.command.iter().map(String::as_str).collect()
            };
            let words: Vec<&str> = words
                .into_iter()
                .take_while(|w| !w.starts_with('-'))
                .collect();
            if words.is_empty() {
                return None;
            }
            let subcommand = words.join(" ");
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
    let clickhouse_ports: BTreeSet<u16> = clickhouse.expose.iter().map(|p| port_of(p)).collect();
    assert!(
        clickhouse.ports.is_empty(),
        "ClickHouse must not be published outside the compose network"
    );
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
            let (user, password) = clickhouse_user_of(&compose, name);
            assert_eq!(env["CLICKHOUSE_USER"], user, "{name}");
            assert_eq!(env["CLICKHOUSE_PASSWORD"], password, "{name}");
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

/// The ClickHouse user and password a service should connect with: the query API's read-only
/// user and the automations' user that migrate creates, or the `flowhouse` user (DDL and
/// inserts) for the others.
fn clickhouse_user_of(compose: &Compose, name: &str) -> (String, String) {
    let migrate = &compose.services["migrate"].environment;
    if name == "query-api" {
        (
            migrate["FLOWHOUSE_READER_USER"].clone(),
            migrate["FLOWHOUSE_READER_PASSWORD"].clone(),
        )
    } else if name == "automations" {
        (
            migrate["FLOWHOUSE_AUTOMATIONS_USER"].clone(),
            migrate["FLOWHOUSE_AUTOMATIONS_PASSWORD"].clone(),
        )
    } else {
        let clickhouse = &compose.services["clickhouse"].environment;
        (
            clickhouse["CLICKHOUSE_USER"].clone(),
            clickhouse["CLICKHOUSE_PASSWORD"].clone(),
        )
    }
}

#[test]
fn the_query_api_reads_as_the_read_only_user_with_its_tenant_settings() {
    let compose = compose();
    let (reader, reader_password) = clickhouse_user_of(&compose, "query-api");
    let (writer, writer_password) = clickhouse_user_of(&compose, "ingest");
    assert_ne!(reader, writer);
    assert_ne!(reader_password, writer_password, "a password of its own");
    let query_api = &compose.services["query-api"].environment;
    assert_eq!(query_api["FLOWHOUSE_QUERY_TENANT_SETTINGS"], "true");
    // The row policies read custom settings: the server must accept their prefix.
    let clickhouse = &compose.services["clickhouse"];
    assert_eq!(
        clickhouse.environment["CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT"], "1",
        "migrate creates the reader"
    );
    let mount = clickhouse
        .volumes
        .iter()
        .find(|v| v.contains("/etc/clickhouse-server/config.d/"))
        .expect("a config.d file");
    let file = mount.split(':').next().unwrap();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/compose")
        .join(file);
    let config = std::fs::read_to_string(path).expect("read the ClickHouse config");
    let prefixes = config
        .split_once("<custom_settings_prefixes>")
        .and_then(|(_, rest)| rest.split_once("</custom_settings_prefixes>"))
        .map(|(prefixes, _)| prefixes)
        .expect("custom_settings_prefixes");
    for setting in [
        flowhouse_schema::access::ACCOUNT_SETTING,
        flowhouse_schema::access::WORKSPACE_SETTING,
    ] {
        assert!(
            prefixes.split(',').any(|p| setting.starts_with(p.trim())),
            "{setting} has none of the prefixes {prefixes}"
        );
    }
}

#[test]
fn the_automations_write_as_their_own_user_that_migrate_creates() {
    let compose = compose();
    let migrate = &compose.services["migrate"].environment;
    let query_api = &compose.services["query-api"].environment;
    let user = &query_api["FLOWHOUSE_AUTOMATIONS_CLICKHOUSE_USER"];
    let password = &query_api["FLOWHOUSE_AUTOMATIONS_CLICKHOUSE_PASSWORD"];
    assert_eq!(&migrate["FLOWHOUSE_AUTOMATIONS_USER"], user);
    assert_eq!(&migrate["FLOWHOUSE_AUTOMATIONS_PASSWORD"], password);
    // The evaluator runs apart, as the same user; the query API serves only their API.
    assert_eq!(query_api["FLOWHOUSE_AUTOMATIONS"], "false");
    let evaluator = &compose.services["automations"].environment;
    assert_eq!(&evaluator["CLICKHOUSE_USER"], user);
    assert_eq!(&evaluator["CLICKHOUSE_PASSWORD"], password);
    for other in ["query-api", "ingest"] {
        let (name, other_password) = clickhouse_user_of(&compose, other);
        assert_ne!(&name, user, "not {other}'s user");
        assert_ne!(&other_password, password, "a password of its own");
    }
}

#[test]
fn listen_ports_are_exposed_and_health_checked_and_only_the_proxy_is_published() {
    let compose = compose();
    let mut checked = 0;
    for (name, service, _) in flowhouse_services(&compose) {
        assert!(
            service.ports.is_empty(),
            "{name} publishes {:?}: clients go through the proxy",
            service.ports
        );
        let listens: Vec<_> = service
            .environment
            .iter()
            .filter(|(k, _)| k.ends_with("_LISTEN"))
            .collect();
        for (variable, listen) in &listens {
            assert!(
                listen.starts_with("0.0.0.0:"),
                "{name}: {variable}={listen} is unreachable from other containers"
            );
            let port = port_of(listen);
            assert!(
                service.expose.iter().any(|p| p == &port.to_string()),
                "{name} listens on {port} but exposes {:?}",
                service.expose
            );
        }
        let Some((_, admin)) = listens.iter().find(|(k, _)| k.ends_with("_ADMIN_LISTEN")) else {
            assert!(
                listens.is_empty(),
                "{name} serves HTTP without an admin port"
            );
            continue;
        };
        let port = port_of(admin);
        let health = service
            .healthcheck
            .as_ref()
            .unwrap_or_else(|| panic!("{name} has no health check"))
            .test
            .join(" ");
        assert!(
            health.contains(&format!("127.0.0.1:{port}/readyz")),
            "{name}: health check {health:?} does not ask /readyz on its admin port {port}"
        );
        checked += 1;
    }
    assert_eq!(
        checked, 4,
        "ingest, endpoint, query-api and automations each serve admin routes"
    );
    let published: Vec<&str> = compose
        .services
        .iter()
        .filter(|(_, s)| !s.ports.is_empty())
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(published, ["proxy"]);
}

/// The proxy's rules: `(regex or None for the fallback, upstream host:port)`, in order.
fn proxy_rules() -> Vec<(Option<regex::Regex>, String)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/compose/proxy.conf");
    let text = std::fs::read_to_string(path).expect("read proxy.conf");
    let mut rules = Vec::new();
    let mut pattern: Option<Option<regex::Regex>> = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("location ~ ") {
            let regex = rest.trim_end_matches('{').trim();
            pattern = Some(Some(regex::Regex::new(regex).expect("a valid regex")));
        } else if line.starts_with("location / ") {
            pattern = Some(None);
        } else if let Some(target) = line.strip_prefix("proxy_pass http://") {
            let target = target.trim_end_matches(';').to_string();
            rules.push((
                pattern.take().expect("proxy_pass inside a location"),
                target,
            ));
        }
    }
    rules
}

fn upstream(rules: &[(Option<regex::Regex>, String)], path: &str) -> String {
    rules
        .iter()
        .find(|(pattern, _)| pattern.as_ref().is_some_and(|p| p.is_match(path)))
        .or_else(|| rules.iter().find(|(pattern, _)| pattern.is_none()))
        .map(|(_, target)| target.clone())
        .expect("a rule for every path")
}

#[test]
fn the_proxy_sends_writes_to_the_endpoint_and_the_rest_to_the_query_api() {
    let compose = compose();
    // The public listen address, never the admin one: the proxy publishes the API only.
    let listen = |name: &str| {
        let service = &compose.services[name];
        let listen = service
            .environment
            .iter()
            .find(|(k, _)| k.ends_with("_LISTEN") && !k.ends_with("_ADMIN_LISTEN"))
            .map(|(_, v)| port_of(v))
            .unwrap();
        format!("{name}:{listen}")
    };
    let (endpoint, query) = (listen("endpoint"), listen("query-api"));
    let rules = proxy_rules();
    let writes = ["events", "logs", "events/in"];
    let reads = [
        "events/filter",
        "events/filter/next",
        "events/count-by/time",
        "events/out",
        "logs/filter",
        "logs/out",
        "flow_runs/history",
        "metrics/flow-runs",
        "admin/version",
        "csrf-token",
    ];
    for base in ["/api/accounts/0b0e/workspaces/7c1d", "/api"] {
        for slash in ["", "/"] {
            for route in writes {
                let path = format!("{base}/{route}{slash}");
                assert_eq!(upstream(&rules, &path), endpoint, "{path}");
            }
            for route in reads {
                let path = format!("{base}/{route}{slash}");
                assert_eq!(upstream(&rules, &path), query, "{path}");
            }
        }
    }
    assert_eq!(upstream(&rules, "/openapi.json"), query);
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
