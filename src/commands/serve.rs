//! Serving, the default command: logging, the server's settings, the
//! runtime, the listening socket, and shutdown on SIGINT or SIGTERM.

use crate::config::Args;
use crate::server::telemetry;

/// Serves until SIGINT or SIGTERM. A bad setting (log filter, OTLP endpoint,
/// device, tokens) ends the process with status 2 and a line naming it.
/// The compute threads must be set before this is called (see `main.rs`).
pub fn serve(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    // Declared before the runtime so that it is dropped after it: the last
    // spans are flushed once serving has stopped.
    let _telemetry = telemetry::init(&args.log, args.log_format, args.otlp().as_ref())
        .unwrap_or_else(|e| {
            eprintln!("gru-serve: {e}");
            std::process::exit(2);
        });
    let config = args.server_config().unwrap_or_else(|e| {
        eprintln!("gru-serve: {e}");
        std::process::exit(2);
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.runtime_threads.max(1))
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("cannot listen on {} (--listen): {e}", args.listen))?;
        crate::server::run(config, listener, shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    });
    // Printed as a sentence, not as main's Debug form (`Os { code: 98, … }`).
    if let Err(e) = result {
        tracing::error!(error = %e, "gru-serve stopped");
        eprintln!("gru-serve: {e}");
        std::process::exit(1);
    }
    Ok(())
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
