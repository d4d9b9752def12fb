//! `gru-serve health`: asks a running server whether it is SERVING.

use crate::config::HealthArgs;
use crate::server::{probe_health, Health, ProbeTls};

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
    let timeout = args.timeout;
    let code = match runtime.block_on(probe_health(
        &args.addr,
        &args.service,
        timeout,
        tls.as_ref(),
    )) {
        Ok(Health::Serving) => {
            println!("SERVING");
            0
        }
        Ok(Health::NotServing(why)) => {
            match why {
                Some(why) => println!("NOT_SERVING: {why}"),
                None => println!("NOT_SERVING"),
            }
            1
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    };
    Ok(code)
}
