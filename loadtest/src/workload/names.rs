//! Word lists for names that look like the ones Prefect users have.

pub const FLOW_VERBS: &[&str] = &[
    "etl",
    "sync",
    "ingest",
    "train",
    "score",
    "report",
    "backfill",
    "export",
    "cleanup",
    "refresh",
    "validate",
    "aggregate",
    "publish",
    "archive",
    "reconcile",
];

pub const FLOW_NOUNS: &[&str] = &[
    "orders",
    "customers",
    "events",
    "invoices",
    "inventory",
    "models",
    "metrics",
    "payments",
    "sessions",
    "features",
    "shipments",
    "ledger",
    "clicks",
    "embeddings",
    "forecasts",
];

pub const TASK_NAMES: &[&str] = &[
    "extract",
    "fetch_page",
    "download_file",
    "parse_records",
    "validate_schema",
    "transform",
    "deduplicate",
    "enrich",
    "join_tables",
    "compute_features",
    "train_model",
    "evaluate",
    "write_parquet",
    "load_warehouse",
    "upload_s3",
    "notify_slack",
    "refresh_cache",
    "send_report",
];

pub const DEPLOYMENT_NAMES: &[&str] = &[
    "prod",
    "staging",
    "nightly",
    "hourly",
    "daily",
    "backfill",
    "canary",
    "on-demand",
];

/// Work pool names with their type.
pub const WORK_POOLS: &[(&str, &str)] = &[
    ("k8s-prod", "kubernetes"),
    ("process-pool", "process"),
    ("docker-pool", "docker"),
    ("k8s-staging", "kubernetes"),
    ("ecs-prod", "ecs"),
    ("gpu-pool", "kubernetes"),
    ("cloud-run", "cloud-run"),
    ("batch", "process"),
];

pub const TAGS: &[&str] = &[
    "prod",
    "staging",
    "nightly",
    "hourly",
    "etl",
    "ml",
    "reporting",
    "critical",
    "backfill",
    "team-data",
    "team-ml",
    "team-platform",
    "finance",
    "marketing",
    "pii",
    "experimental",
];

pub const ADJECTIVES: &[&str] = &[
    "crimson", "amber", "silent", "brave", "clever", "dapper", "eager", "fuzzy", "gentle",
    "hungry", "icy", "jolly", "keen", "lucky", "mellow", "nimble", "olive", "proud", "quick",
    "rustic", "sturdy", "tidy", "urban", "vivid", "witty", "zealous", "cobalt", "golden", "misty",
    "scarlet",
];

pub const ANIMALS: &[&str] = &[
    "otter",
    "falcon",
    "badger",
    "heron",
    "lynx",
    "marmot",
    "narwhal",
    "ocelot",
    "panda",
    "quail",
    "raven",
    "salamander",
    "tapir",
    "urchin",
    "vulture",
    "walrus",
    "yak",
    "zebra",
    "bison",
    "coyote",
    "dingo",
    "ermine",
    "ferret",
    "gecko",
    "hyena",
    "ibis",
    "jackal",
    "koala",
    "lemur",
    "mole",
];

pub const HOSTS: &[&str] = &[
    "api.stripe.com",
    "warehouse.internal",
    "s3.us-east-1.amazonaws.com",
    "postgres-primary",
    "redis-cache",
    "api.hubspot.com",
    "bigquery.googleapis.com",
];

pub const TABLES: &[&str] = &[
    "raw.orders",
    "staging.customers",
    "analytics.daily_revenue",
    "ml.features_v3",
    "raw.clickstream",
    "finance.ledger",
];
