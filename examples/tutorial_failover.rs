//! Tutorial: a stream that survives a server restart. Streams a sine wave
//! through the model `sine` with the failover helper (examples/client/failover.rs),
//! pausing half-way so you can restart (or kill -9) the server, then checks
//! that every output equals an uninterrupted run's (Predict on the whole
//! sequence).
//!
//! ```text
//! cargo run --release --example tutorial_failover -- --addr http://127.0.0.1:50051 --pause 10s
//! # meanwhile, in another terminal, during the pause:
//! kill -9 $(pgrep gru-serve); target/release/gru-serve --model-dir models &
//! ```
//!
//! The helper opens the session under a key; when a call fails with
//! UNAVAILABLE, NOT_FOUND or FAILED_PRECONDITION it re-opens the key and
//! replays the inputs from the step index the server reports (0 when the
//! session did not survive, its last checkpoint when it did).

#[allow(dead_code)] // keep_at_most: a bounded replay window, unused here
#[path = "client/failover.rs"]
mod failover;

use std::time::Duration;

use clap::Parser;
use gru_serve::service::pb;
use gru_serve::service::pb::gru_service_client::GruServiceClient;

type Error = Box<dyn std::error::Error>;

#[derive(Parser)]
struct Args {
    /// The server: host:port, http://host:port or https://host:port.
    #[arg(long, env = "GRU_ADDR", default_value = "127.0.0.1:50051")]
    addr: String,
    #[arg(long, default_value = "sine")]
    model: String,
    #[arg(long, default_value_t = 40)]
    steps: usize,
    /// The session key (any string unique to this sequence).
    #[arg(long, default_value = "tutorial-failover")]
    key: String,
    /// Pause this long half-way (restart the server meanwhile), e.g. 10s.
    #[arg(long, default_value = "0s", value_parser = parse_secs)]
    pause: Duration,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    s.trim_end_matches('s')
        .parse::<f64>()
        .map(Duration::from_secs_f64)
        .map_err(|e| format!("{s}: {e} (e.g. 10s)"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let addr = gru_serve::server::endpoint_uri(&args.addr, false)?;
    // A lazy channel reconnects by itself when the server is back.
    let channel = tonic::transport::Endpoint::from_shared(addr)?.connect_lazy();
    let mut client = GruServiceClient::new(channel);

    let x = |t: usize| 0.8 * (0.3 * t as f32).sin();
    let xs: Vec<f32> = (0..args.steps).map(x).collect();
    let mut session = failover::FailoverSession::open(
        client.clone(),
        pb::OpenSessionRequest {
            model: args.model.clone(),
            session_key: args.key.clone(),
            ..Default::default()
        },
    )
    .await?;
    println!("session {} (key {})", session.session_id(), args.key);
    let mut got = Vec::new();
    for (t, v) in xs.iter().enumerate() {
        if t == args.steps / 2 && !args.pause.is_zero() {
            println!("pausing {:?}: restart the server now", args.pause);
            tokio::time::sleep(args.pause).await;
        }
        let y = session.step(&[*v]).await?;
        println!("{t:>4} {v:>9.4} -> {:>9.4}", y[0]);
        got.extend(y);
    }
    println!(
        "failovers: {}; the session is at step {}",
        session.failovers,
        session.step_index()
    );

    // The same inputs in one Predict: what an uninterrupted session gives.
    let want = client
        .predict(pb::PredictRequest {
            model: args.model.clone(),
            sequences: vec![pb::PredictSequence {
                inputs: Some(pb::Matrix {
                    rows: xs.len() as u32,
                    cols: 1,
                    values: xs.clone(),
                }),
                initial_state: None,
            }],
            ..Default::default()
        })
        .await?
        .into_inner()
        .outputs
        .remove(0)
        .outputs
        .ok_or("Predict returned no outputs")?
        .values;
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, |m, d| if d.is_nan() || d > m { d } else { m });
    println!("largest difference from an uninterrupted run: {worst:e}");
    if got.len() != want.len() || worst.is_nan() || worst > 1e-4 {
        return Err(format!("the outputs differ from an uninterrupted run by {worst:e}").into());
    }
    client
        .close_session(pb::CloseSessionRequest {
            session_id: session.session_id().to_string(),
        })
        .await?;
    Ok(())
}
