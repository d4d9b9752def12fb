//! Tutorial, step 1: stream a sine wave through the default model, one step
//! per message, and compare each prediction with the next true value.
//!
//! ```text
//! cargo run --release --example tutorial_stream -- --addr http://127.0.0.1:50051
//! ```
//!
//! The model `sine` reads x_t and predicts x_{t+1}. The server keeps the
//! session's hidden state h_t, so each message carries one number. The first
//! steps are a warm-up (h starts at zero and has seen nothing yet); the mean
//! squared error over the rest must stay under `--max-mse`, or the example
//! exits non-zero.

use clap::Parser;
use gru_serve::service::pb;
use gru_serve::service::pb::gru_service_client::GruServiceClient;
use tokio_stream::wrappers::ReceiverStream;

type Error = Box<dyn std::error::Error>;

#[derive(Parser)]
struct Args {
    /// The server: host:port, http://host:port or https://host:port.
    #[arg(long, env = "GRU_ADDR", default_value = "127.0.0.1:50051")]
    addr: String,
    #[arg(long, default_value = "sine")]
    model: String,
    /// Steps to stream.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Steps left out of the error (the state is still warming up).
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Fail above this MSE (measured with models/sine/1: 0.00016).
    #[arg(long, default_value_t = 0.002)]
    max_mse: f64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let addr = gru_serve::server::endpoint_uri(&args.addr, false)?;
    let mut client = GruServiceClient::connect(addr.clone()).await?;

    // What is this model? Sizes, reset mode and a description of its inputs.
    let info = client
        .get_model(pb::GetModelRequest {
            model: args.model.clone(),
            version: 0, // the latest
        })
        .await?
        .into_inner()
        .model
        .ok_or("GetModel returned no model")?;
    println!(
        "model {} v{}: input {}, hidden {}, layers {}, output {}, {:?}",
        info.name,
        info.version,
        info.input_size,
        info.hidden_size,
        info.num_layers,
        info.output_size,
        info.reset_mode()
    );

    // A session: the server holds its hidden state between messages.
    let session = client
        .open_session(pb::OpenSessionRequest {
            model: args.model.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    println!("session {}", session.session_id);

    // One bidirectional stream; we send a step, read its reply, send the next.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut replies = client
        .step_stream(ReceiverStream::new(rx))
        .await?
        .into_inner();

    let x = |t: usize| 0.8 * (0.3 * t as f32).sin();
    let (mut sum_sq, mut counted) = (0.0f64, 0usize);
    println!(
        "{:>4} {:>9} {:>11} {:>11}",
        "t", "x_t", "predicted", "x_{t+1}"
    );
    for t in 0..args.steps {
        tx.send(pb::StepRequest {
            session_id: session.session_id.clone(),
            inputs: Some(pb::Matrix {
                rows: 1,
                cols: 1,
                values: vec![x(t)],
            }),
            // Exactly-once: the server checks that this is step t.
            start_step: t as u64,
            has_start_step: true,
            ..Default::default()
        })
        .await?;
        let reply = replies.message().await?.ok_or("the stream ended early")?;
        let out = match reply.result {
            Some(pb::step_response::Result::Ok(r)) => r.outputs.ok_or("no outputs")?,
            Some(pb::step_response::Result::Error(e)) => {
                return Err(format!("step {t}: error {}: {}", e.code, e.message).into())
            }
            None => return Err("empty reply".into()),
        };
        let (pred, truth) = (out.values[0], x(t + 1));
        let warm = if t < args.warmup { "  (warm-up)" } else { "" };
        println!("{t:>4} {:>9.4} {pred:>11.4} {truth:>11.4}{warm}", x(t));
        if t >= args.warmup {
            sum_sq += f64::from(pred - truth).powi(2);
            counted += 1;
        }
    }
    drop(tx); // ends the stream; the session lives on until closed
    client
        .close_session(pb::CloseSessionRequest {
            session_id: session.session_id,
        })
        .await?;

    let mse = sum_sq / counted.max(1) as f64;
    println!("MSE after the warm-up: {mse:.5} (bound {})", args.max_mse);
    if mse.is_nan() || mse > args.max_mse {
        return Err(format!("MSE {mse:.5} is above the bound {}", args.max_mse).into());
    }
    Ok(())
}
