use clap::Parser;
use flowhouse::Cli;
use flowhouse_service::telemetry;

// Ingest and the endpoint allocate a few small strings per message; under glibc's malloc,
// allocating and freeing them was a fifth of ingest's CPU (docs/performance.md, flamegraphs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    telemetry::init_tracing(&cli.log);
    // Install the metrics recorder before any service records anything.
    telemetry::metrics_handle();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("flowhouse: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(flowhouse::run(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the whole chain: "cannot migrate: cannot reach ...: refused".
            tracing::error!("{error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
