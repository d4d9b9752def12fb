//! The gru-serve binary: parse flags, set up logging and threads, serve.

use clap::Parser;
use gru_serve::config::{Args, Command};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Some(Command::Health {
        addr,
        service,
        timeout_secs,
        ca,
        tls_domain,
        client_cert,
        client_key,
    }) = &args.command
    {
        let tls = ca.as_ref().map(|ca| gru_serve::server::ProbeTls {
            ca: ca.clone(),
            domain: tls_domain.clone(),
            client: client_cert.clone().zip(client_key.clone()),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let timeout = std::time::Duration::from_secs(*timeout_secs);
        let code = match runtime.block_on(gru_serve::server::check_health(
            addr,
            service,
            timeout,
            tls.as_ref(),
        )) {
            Ok(true) => {
                println!("SERVING");
                0
            }
            Ok(false) => {
                println!("NOT_SERVING");
                1
            }
            Err(e) => {
                eprintln!("{e}");
                1
            }
        };
        std::process::exit(code);
    }
    if let Some(Command::Export {
        model_dir,
        model,
        version,
        out,
        gru_prefix,
        head_prefix,
    }) = &args.command
    {
        let config = gru_serve::engine::registry::export_pytorch(
            model_dir,
            model,
            *version,
            out,
            gru_prefix,
            head_prefix,
        )?;
        println!("{}", serde_json::to_string_pretty(&config)?);
        return Ok(());
    }
    // Declared before the runtime so that it is dropped after it: the last
    // spans are flushed once serving has stopped.
    let _telemetry =
        gru_serve::server::telemetry::init(&args.log, args.log_format, args.otlp().as_ref())
            .unwrap_or_else(|e| {
                eprintln!("gru-serve: {e}");
                std::process::exit(2);
            });
    let config = args.server_config().unwrap_or_else(|e| {
        eprintln!("gru-serve: {e}");
        std::process::exit(2);
    });
    gru_serve::init_compute_threads(args.compute_threads);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.runtime_threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        gru_serve::server::run(config, listener, shutdown_signal()).await?;
        Ok(())
    })
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
