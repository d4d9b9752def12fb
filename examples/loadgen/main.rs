//! Load generator for gru-serve's streaming step path (StepStream).
//!
//! Opens N sessions over M bidirectional StepStream streams (sessions are dealt
//! round-robin over the streams; every message names its session, so one stream
//! carries many sessions), spread over C HTTP/2 connections, and runs a closed
//! loop for a fixed time: each session has exactly one message (k rows) in
//! flight; its reply triggers its next message. It prints steps/s, messages/s,
//! the client-measured round trip per message (p50/p95/p99), the batch sizes
//! the server's compute worker formed (when it can see them), and the CPU time
//! each group of threads used during the measured window.
//!
//! Modes:
//!
//! - default: in-process. Writes a random native model (I × H, L layers, no
//!   head unless `--head`) into a temporary model repository, starts the real
//!   server (`gru_serve::server::run`) on 127.0.0.1:0 in its own tokio runtime
//!   (`--server-threads`, default 1; the compute worker is a separate thread),
//!   drives it, and shuts it down.
//! - `--echo`: the same client against an in-process echo gRPC server (the
//!   generated `GruService` trait; replies carry a k × H matrix of zeros, so
//!   message sizes match; no model, no sessions, no batching): the transport
//!   floor, measured with the same client in the same build.
//! - `--target http://host:port`: an external server (e.g. the Python baseline
//!   in scripts/baseline/). Its worker batch sizes are not visible from here.
//!
//! `--protocol triton-grpc | triton-http` speaks the KServe v2 / Triton
//! protocol instead of gru.v1 (sessions become Triton sequences; see
//! triton.rs), so the adapter's cost is measured against gru.v1 on the same
//! server: `--protocol triton-http` serves the HTTP port in-process, or
//! drives `--http-addr` with `--target`.
//!
//! `--train` (in-process mode only): once the sessions are open and before the
//! warm-up, start a training job on the same server through
//! `gru.v1.TrainingService` (a new regression model `--train-hidden` wide on
//! generated noisy-sine data, with enough epochs to outlast the run), check
//! that it is RUNNING at both edges of the measured window, report its
//! progress (batches done, sequences/s), and cancel it at the end. Its threads
//! are set by `--train-threads` and `--train-nice` (the engine's
//! `TrainingConfig`), so serving latency can be compared with and without a
//! job, and across niceness values.
//!
//! ```text
//! cargo build --release --example loadgen
//! target/release/examples/loadgen --sessions 256 --k 1
//! target/release/examples/loadgen --sessions 256 --k 1 --echo
//! target/release/examples/loadgen --sessions 16 --k 1 --train --train-nice 10
//! target/release/examples/loadgen --sessions 256 --k 32 --target http://127.0.0.1:50052 --model bench
//! target/release/examples/loadgen --sessions 256 --k 1 --protocol triton-grpc
//! ```
//!
//! Everything ends by itself after `--warmup-secs + --duration-secs` (plus the
//! time to open sessions and to drain the last in-flight replies).

mod drive;
mod echo;
mod procstat;
mod report;
mod stats;
mod stream;
mod targets;
mod training;
mod triton;

use std::path::PathBuf;

use clap::Parser;
use serde::Serialize;

use crate::drive::drive;
use crate::report::print_results;
use crate::targets::InProcess;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Closed-loop StepStream load generator for gru-serve (in-process server, echo server, or --target).
#[derive(Debug, Clone, Parser, Serialize)]
#[command(name = "loadgen")]
struct Args {
    /// Concurrent sessions (each has one message in flight at a time).
    #[arg(long, default_value_t = 16)]
    sessions: usize,
    /// StepStream streams the sessions are spread over (default: min(sessions, 16)).
    #[arg(long)]
    streams: Option<usize>,
    /// HTTP/2 connections the streams are spread over (default: min(streams, 16)).
    #[arg(long)]
    connections: Option<usize>,
    /// Rows (steps) per message.
    #[arg(long, default_value_t = 1)]
    k: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 5.0)]
    duration_secs: f64,
    /// Unmeasured seconds before the measurement.
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    /// In-process model: input features per step.
    #[arg(long, default_value_t = 64)]
    input_size: usize,
    /// In-process model: hidden size (also the echo reply width).
    #[arg(long, default_value_t = 256)]
    hidden_size: usize,
    /// In-process model: stacked layers.
    #[arg(long, default_value_t = 1)]
    layers: usize,
    /// In-process model: add a linear head of this width (default: none; outputs are h).
    #[arg(long)]
    head: Option<usize>,
    /// Measure the transport floor: an in-process echo server, no model.
    #[arg(long, conflicts_with = "target")]
    echo: bool,
    /// Drive an external server instead (host:port, http://host:port or https://host:port).
    #[arg(long)]
    target: Option<String>,
    /// Model name to open sessions on (the in-process server serves "bench").
    #[arg(long, default_value = "bench")]
    model: String,
    /// In-process server: tokio runtime threads (network I/O; compute runs on its own thread).
    #[arg(long, default_value_t = 1)]
    server_threads: usize,
    /// Client: tokio runtime threads.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// In-process server: most sessions one batched step gathers.
    #[arg(long, default_value_t = 256)]
    max_batch: usize,
    /// In-process server: how long a lightly loaded worker stays awake for the next step (0 = never).
    #[arg(long, default_value = "200us", value_parser = gru_serve::config::units::parse_duration)]
    worker_spin: std::time::Duration,
    /// In-process server: threads a large matmul may use (RAYON_NUM_THREADS).
    #[arg(long, default_value_t = 1)]
    compute_threads: usize,
    /// In-process server: the session store (memory, file:DIR, redis://HOST:PORT).
    #[arg(long, default_value = "memory")]
    session_store: String,
    /// In-process server: how often changed sessions are checkpointed to the store.
    #[arg(long, default_value = "1s", value_parser = gru_serve::config::units::parse_duration)]
    checkpoint_interval: std::time::Duration,
    /// Seed of the random model and inputs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// In-process server: run a training job on the same server during the warm-up and measurement.
    #[arg(long, conflicts_with_all = ["echo", "target"])]
    train: bool,
    /// In-process server: compute threads of each training job (TrainingConfig.threads_per_job).
    #[arg(long, default_value_t = 1)]
    train_threads: usize,
    /// In-process server: OS niceness of the training threads (TrainingConfig.nice; 0 = same as serving).
    #[arg(long, default_value_t = 10)]
    train_nice: i32,
    /// --train: generated training sequences.
    #[arg(long, default_value_t = 2000)]
    train_sequences: usize,
    /// --train: steps per sequence (lengths vary from ×0.67 to ×1.33 of this).
    #[arg(long, default_value_t = 75)]
    train_seq_len: usize,
    /// --train: the trained model's input size.
    #[arg(long, default_value_t = 8)]
    train_input: usize,
    /// --train: the trained model's hidden size (1 layer, a head of width 1).
    #[arg(long, default_value_t = 64)]
    train_hidden: usize,
    /// --train: sequences per training batch.
    #[arg(long, default_value_t = 32)]
    train_batch: usize,
    /// --train: epochs asked for (enough to outlast the run; the job is cancelled at the end).
    #[arg(long, default_value_t = 10_000)]
    train_epochs: usize,
    /// Open this many more sessions before the run and leave them idle. The
    /// in-process server's session cap is then exactly --sessions + this.
    #[arg(long, default_value_t = 0)]
    idle_sessions: usize,
    /// During warm-up and measurement, try to open this many sessions per
    /// second (past a full cap each is refused with RESOURCE_EXHAUSTED).
    #[arg(long, default_value_t = 0.0)]
    open_rate: f64,
    /// What --open-rate sends: OpenSession (refused past a full cap) or, as a
    /// control of the same RPC rate, GetModel.
    #[arg(long, value_enum, default_value = "open-session")]
    rate_rpc: RateRpc,
    /// The protocol the steps are sent in: gru.v1's StepStream, or the
    /// KServe v2 / Triton protocol over gRPC (ModelStreamInfer) or HTTP/JSON.
    #[arg(long, value_enum, default_value = "gru-v1")]
    protocol: Protocol,
    /// --protocol triton-http with --target: the server's HTTP port (host:port).
    #[arg(long)]
    http_addr: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
enum Protocol {
    GruV1,
    TritonGrpc,
    TritonHttp,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum, Serialize)]
enum RateRpc {
    OpenSession,
    GetModel,
}

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    if args.sessions == 0 || args.k == 0 {
        return Err("--sessions and --k must be ≥ 1".into());
    }
    if args.protocol != Protocol::GruV1 && (args.echo || args.train || args.open_rate > 0.0) {
        return Err("--echo, --train and --open-rate speak gru.v1: use --protocol gru-v1".into());
    }
    if args.protocol == Protocol::TritonHttp && args.target.is_some() && args.http_addr.is_none() {
        return Err("--protocol triton-http with --target needs --http-addr".into());
    }
    let streams = args
        .streams
        .unwrap_or(args.sessions.min(16))
        .clamp(1, args.sessions);
    let connections = args
        .connections
        .unwrap_or(streams.min(16))
        .clamp(1, streams);
    gru_serve::init_compute_threads(args.compute_threads);

    // The server under test lives in its own runtime on its own threads.
    let (server, mode) = if let Some(t) = &args.target {
        (None, format!("external {t}"))
    } else if args.echo {
        (Some(InProcess::start_echo(&args)?), "echo".to_string())
    } else {
        (
            Some(InProcess::start_gru(&args)?),
            "gru-serve in-process".to_string(),
        )
    };
    let mode = match args.protocol {
        Protocol::GruV1 => mode,
        p => format!("{mode}, {p:?}"),
    };
    let url = match (&args.target, &server) {
        (Some(t), _) => t.clone(),
        (None, Some(s)) => format!("http://{}", s.addr),
        _ => unreachable!(),
    };
    let stats = server.as_ref().and_then(|s| s.stats.clone());
    let http_addr = match &server {
        Some(s) => s.http_addr.map(|a| a.to_string()),
        None => args.http_addr.clone(),
    };

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .thread_name("lg-client")
        .enable_all()
        .build()?;
    let outcome = client_rt.block_on(drive(
        &args,
        &url,
        http_addr.as_deref(),
        streams,
        connections,
        stats,
        &mode,
    ));
    drop(client_rt);
    if let Some(s) = server {
        s.stop()?;
    }
    let results = outcome?;
    print_results(&results);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&results)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
