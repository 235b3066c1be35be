//! Shutdown on SIGTERM or SIGINT, as a token every task can watch.

use tokio_util::sync::CancellationToken;

pub use tokio_util::sync::CancellationToken as ShutdownToken;

/// A token cancelled on the first SIGTERM or SIGINT. Services stop taking new work when it fires
/// and drain what is in flight.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = terminate => tracing::info!("SIGTERM: draining and stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining and stopping"),
        }
        trigger.cancel();
    });
    token
}
