//! `gru-serve health`: asks a running server whether it is SERVING.

use std::time::Duration;

use crate::config::HealthArgs;
use crate::server::{check_health, ProbeTls};

/// Prints SERVING or NOT_SERVING (or why the probe failed) and returns the
/// process's exit code: 0 when serving, 1 otherwise.
pub fn health(args: &HealthArgs) -> std::io::Result<i32> {
    let tls = args.ca.as_ref().map(|ca| ProbeTls {
        ca: ca.clone(),
        domain: args.tls_domain.clone(),
        client: args.client_cert.clone().zip(args.client_key.clone()),
    });
    // One probe needs no thread pool.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let timeout = Duration::from_secs(args.timeout_secs);
    let code = match runtime.block_on(check_health(
        &args.addr,
        &args.service,
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
    Ok(code)
}
