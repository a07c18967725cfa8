//! Tracing set-up, the same in every binary: `RUST_LOG` (default `info`, the kube client quiet), to stderr.

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info,kube_client=off".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Resolves on SIGTERM or Ctrl-C: what a binary awaits to shut down gracefully.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutting down");
}
