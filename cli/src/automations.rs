//! `flowhouse automations list|create|delete|serve`, and the query API with the automations'
//! routes and evaluator. `list`, `create` and `delete` are clients of the API like any other
//! (`--url`, `--key`); `serve` runs the evaluator alone.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use flowhouse_service::admin::{self, Readiness};

/// `flowhouse query-api`'s flags: the query API's and the automations'.
#[derive(clap::Args, Clone, Debug)]
#[group(id = "query_api_with_automations")]
pub struct QueryApiArgs {
    #[command(flatten)]
    pub query: flowhouse_query_api::Args,
    #[command(flatten)]
    pub automations: flowhouse_automations::Args,
}

/// The query API with the automations' routes (always) and evaluator (unless turned off).
pub async fn run_query_api(args: QueryApiArgs) -> anyhow::Result<()> {
    let readiness = Readiness::default();
    let (state, _tasks) = flowhouse_query_api::start(&args.query, &readiness).await?;
    let _evaluator = flowhouse_automations::spawn(
        &args.automations,
        &args.query.clickhouse,
        &args.query.live.kafka,
        &args.query.live.topics,
    )?;
    let api = flowhouse_automations::api_state(&args.automations, &args.query.clickhouse);
    let document = flowhouse_automations::api::merge_document(
        flowhouse_query_api::document(),
        &flowhouse_automations::api::document(),
    );
    let router =
        flowhouse_query_api::router_with(state, flowhouse_automations::api::routes(api), document);
    let shutdown = flowhouse_service::shutdown::on_signal();
    admin::serve_with_admin(
        args.query.listen,
        router,
        args.query.admin_listen,
        readiness,
        shutdown,
    )
    .await
}

/// Where the API is and the key to use.
#[derive(clap::Args, Clone, Debug)]
pub struct Client {
    /// The workspace's API URL (`http://host:4200/api/accounts/<account>/workspaces/<workspace>`).
    #[arg(long, env = "FLOWHOUSE_URL")]
    pub url: String,
    /// An API key of the workspace (`write` to create or delete).
    #[arg(long, env = "FLOWHOUSE_KEY", hide_env_values = true)]
    pub key: String,
}

impl Client {
    fn endpoint(&self, path: &str) -> String {
        format!("{}/automations{path}", self.url.trim_end_matches('/'))
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let response = request
            .bearer_auth(&self.key)
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.url))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let detail = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(String::from))
                .unwrap_or(body);
            bail!("{status}: {detail}");
        }
        Ok(response)
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// List the workspace's automations with their last firing.
    List {
        #[command(flatten)]
        client: Client,
    },
    /// Create an automation from a JSON file (Prefect's shape; `-` reads stdin); prints its id.
    Create {
        #[command(flatten)]
        client: Client,
        /// The automation, JSON (`{"name", "trigger", "actions", ...}`).
        file: PathBuf,
    },
    /// Delete an automation.
    Delete {
        #[command(flatten)]
        client: Client,
        id: uuid::Uuid,
    },
    /// Run the evaluator alone (with the query API's `--automations false`).
    Serve(Box<flowhouse_automations::ServeArgs>),
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    match command {
        Command::List { client } => {
            let list: Vec<serde_json::Value> = client
                .send(http.get(client.endpoint("/status")))
                .await?
                .json()
                .await?;
            println!(
                "{:<36}  {:<7}  {:<6}  {:<32}  name",
                "id", "enabled", "type", "last firing"
            );
            for a in list {
                let last = match (a["last_fired"].as_str(), a["last_transition"].as_str()) {
                    (Some(at), Some(t)) => format!("{t} {at}"),
                    _ => "-".into(),
                };
                println!(
                    "{:<36}  {:<7}  {:<6}  {:<32}  {}",
                    a["id"].as_str().unwrap_or(""),
                    a["enabled"],
                    a["trigger"].as_str().unwrap_or(""),
                    last,
                    a["name"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        Command::Create { client, file } => {
            let body = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?
            };
            let created: serde_json::Value = client
                .send(
                    http.post(client.endpoint("/"))
                        .header("Content-Type", "application/json")
                        .body(body),
                )
                .await?
                .json()
                .await?;
            println!("{}", created["id"].as_str().unwrap_or(""));
            Ok(())
        }
        Command::Delete { client, id } => {
            client
                .send(http.delete(client.endpoint(&format!("/{id}"))))
                .await?;
            Ok(())
        }
        Command::Serve(args) => flowhouse_automations::serve(*args).await,
    }
}
