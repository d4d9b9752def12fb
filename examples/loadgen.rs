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
//! ```
//!
//! Everything ends by itself after `--warmup-secs + --duration-secs` (plus the
//! time to open sessions and to drain the last in-flight replies).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use gru_serve::engine::batcher::{WorkerStats, BATCH_BUCKETS};
use gru_serve::service::pb;
use gru_serve::service::pb::gru_service_client::GruServiceClient;
use gru_serve::service::pb::gru_service_server::{GruService, GruServiceServer};
use gru_serve::service::pb::training_service_client::TrainingServiceClient;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A server thread: its address, its stop signal and its join handle.
type Spawned = (
    SocketAddr,
    oneshot::Sender<()>,
    std::thread::JoinHandle<Result<(), String>>,
);

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
    /// Drive an external server instead (http://host:port).
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
    /// In-process server: threads a large matmul may use (RAYON_NUM_THREADS).
    #[arg(long, default_value_t = 1)]
    compute_threads: usize,
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
}

#[derive(Debug, Clone, Copy, clap::ValueEnum, Serialize)]
enum RateRpc {
    OpenSession,
    GetModel,
}

/// What the --open-rate load got back.
#[derive(Debug, Default, Serialize)]
struct OpenLoad {
    attempted: u64,
    opened: u64,
    refused: u64,
    other_errors: u64,
}

// ---------------------------------------------------------------- results

#[derive(Debug, Serialize)]
struct Latency {
    count: u64,
    p50_us: f64,
    p95_us: f64,
    p99_us: f64,
    max_us: f64,
    mean_us: f64,
}

#[derive(Debug, Serialize)]
struct BatchStats {
    batches: u64,
    session_steps: u64,
    mean_batch: f64,
    /// (lower bound of the power-of-two bucket, batches) for non-empty buckets.
    histogram: Vec<(u64, u64)>,
}

#[derive(Debug, Serialize)]
struct ThreadCpu {
    group: String,
    threads: usize,
    /// CPU seconds used during the measured window, divided by its length.
    cores: f64,
}

#[derive(Debug, Serialize)]
struct Results {
    mode: String,
    args: Args,
    streams: usize,
    connections: usize,
    input_size: usize,
    output_cols: usize,
    measured_secs: f64,
    messages: u64,
    errors: u64,
    messages_per_sec: f64,
    steps_per_sec: f64,
    latency: Latency,
    /// None when the worker is not visible (external server, echo, or `server::run` without a handle).
    server_batches: Option<BatchStats>,
    server_batches_note: String,
    thread_cpu: Vec<ThreadCpu>,
    load_average: String,
    first_error: Option<String>,
    /// Set with --train: the training job that ran beside the measurement.
    training: Option<TrainingReport>,
    /// Set with --open-rate.
    opens: Option<OpenLoad>,
}

/// A training job's state and progress at one moment.
#[derive(Debug, Clone, Serialize)]
struct JobSnapshot {
    state: String,
    /// 1-based.
    epoch: u32,
    batch: u32,
    batches_per_epoch: u32,
    /// (epoch - 1) × batches_per_epoch + batch.
    batches_done: u64,
    /// The job's own figure: sequences / seconds since the current epoch began.
    sequences_per_second: f64,
    train_loss: f64,
    elapsed_seconds: f64,
}

#[derive(Debug, Serialize)]
struct TrainingReport {
    job_id: String,
    model: String,
    input_size: usize,
    hidden_size: usize,
    num_sequences: usize,
    mean_seq_len: f64,
    batch_size: usize,
    epochs: usize,
    threads_per_job: usize,
    nice: i32,
    /// StartTraining call, upload included.
    submit_secs: f64,
    /// From StartTraining's reply until the job reported its first batch.
    until_running_secs: f64,
    at_window_start: Option<JobSnapshot>,
    at_window_end: Option<JobSnapshot>,
    /// Batches the job finished during the measured window.
    batches_in_window: u64,
    /// batches_in_window × batch_size / window length (approximate: an epoch's last batch may be short).
    sequences_per_second_in_window: f64,
    /// True when the job was RUNNING at both edges of the window.
    running_throughout: bool,
    /// After CancelTraining (and waiting for the job to stop).
    final_state: String,
}

// ---------------------------------------------------------------- main

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    if args.sessions == 0 || args.k == 0 {
        return Err("--sessions and --k must be ≥ 1".into());
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
    let url = match (&args.target, &server) {
        (Some(t), _) => t.clone(),
        (None, Some(s)) => format!("http://{}", s.addr),
        _ => unreachable!(),
    };
    let stats = server.as_ref().and_then(|s| s.stats.clone());

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .thread_name("lg-client")
        .enable_all()
        .build()?;
    let outcome = client_rt.block_on(drive(&args, &url, streams, connections, stats, &mode));
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

// ---------------------------------------------------------------- in-process servers

/// Where the compute worker's batch statistics come from, when they can be seen.
type StatsSource = Option<Arc<dyn Fn() -> Option<Arc<WorkerStats>> + Send + Sync>>;

struct InProcess {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
    stats: StatsSource,
    _dir: Option<tempfile::TempDir>,
}

impl InProcess {
    fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("lg-server")
            .enable_all()
            .build()
    }

    /// Runs `serve(listener, shutdown)` on a fresh runtime in a new thread.
    fn spawn<F, Fut>(threads: usize, serve: F) -> Result<Spawned, BoxError>
    where
        F: FnOnce(tokio::net::TcpListener, oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("lg-server-main".into())
            .spawn(move || -> Result<(), String> {
                let rt = Self::runtime(threads).map_err(|e| e.to_string())?;
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                        .await
                        .map_err(|e| e.to_string())?;
                    let _ = addr_tx.send(listener.local_addr().map_err(|e| e.to_string()));
                    serve(listener, stop_rx).await
                })
            })?;
        let addr = addr_rx
            .recv()
            .map_err(|_| "the server thread ended before binding")??;
        Ok((addr, stop_tx, thread))
    }

    fn start_gru(args: &Args) -> Result<InProcess, BoxError> {
        use gru_serve::formats::native;
        use gru_serve::model::{GruModel, ModelConfig};
        let dir = tempfile::tempdir()?;
        let mut cfg = ModelConfig::new(args.input_size, args.hidden_size, args.layers);
        if let Some(o) = args.head {
            cfg = cfg.with_head(o);
        }
        let model = GruModel::init(cfg, args.seed, &candle_core::Device::Cpu)?;
        native::save_native(&model, &dir.path().join(&args.model).join("1"))?;

        let mut config = gru_serve::server::ServerConfig::default();
        config.engine.model_dir = dir.path().to_path_buf();
        config.engine.max_batch = args.max_batch;
        config.engine.max_sessions = match args.idle_sessions {
            0 => args.sessions.max(1) * 2 + 16,
            idle => args.sessions + idle,
        };
        config.engine.training = gru_serve::engine::TrainingConfig {
            threads_per_job: args.train_threads.max(1),
            nice: args.train_nice,
            ..gru_serve::engine::TrainingConfig::default()
        };
        config.drain_timeout = Duration::from_secs(2);
        // The engine is handed out once loaded: its worker's WorkerStats give the batch sizes.
        let cell: Arc<std::sync::OnceLock<gru_serve::engine::Engine>> =
            Arc::new(std::sync::OnceLock::new());
        let (engine, name) = (cell.clone(), args.model.clone());
        let (addr, stop, thread) =
            Self::spawn(args.server_threads, move |listener, stop| async move {
                let shutdown = async move {
                    let _ = stop.await;
                };
                gru_serve::server::run_with_engine(config, listener, shutdown, engine)
                    .await
                    .map_err(|e| e.to_string())
            })?;
        let stats: StatsSource = Some(Arc::new(move || {
            cell.get()
                .and_then(|e| e.model(&name, None).ok())
                .map(|m| m.worker.stats.clone())
        }));
        Ok(InProcess {
            addr,
            shutdown: Some(stop),
            thread: Some(thread),
            stats,
            _dir: Some(dir),
        })
    }

    fn start_echo(args: &Args) -> Result<InProcess, BoxError> {
        let echo = Echo {
            hidden: args.hidden_size,
            next_id: Arc::new(AtomicU64::new(1)),
        };
        let (addr, stop, thread) =
            Self::spawn(args.server_threads, move |listener, stop| async move {
                let incoming =
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                tonic::transport::Server::builder()
                    .add_service(
                        GruServiceServer::new(echo)
                            .max_decoding_message_size(64 << 20)
                            .max_encoding_message_size(64 << 20),
                    )
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = stop.await;
                    })
                    .await
                    .map_err(|e| e.to_string())
            })?;
        Ok(InProcess {
            addr,
            shutdown: Some(stop),
            thread: Some(thread),
            stats: None,
            _dir: None,
        })
    }

    fn stop(mut self) -> Result<(), BoxError> {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().map_err(|_| "the server thread panicked")??;
        }
        Ok(())
    }
}

/// The transport floor: the same service trait, replies of the right shape, no math.
#[derive(Clone)]
struct Echo {
    hidden: usize,
    next_id: Arc<AtomicU64>,
}

fn echo_reply(hidden: usize, req: pb::StepRequest) -> pb::StepResponse {
    let k = req.inputs.as_ref().map_or(1, |m| m.rows.max(1)) as usize;
    pb::StepResponse {
        session_id: req.session_id,
        request_id: req.request_id,
        result: Some(pb::step_response::Result::Ok(pb::StepResult {
            outputs: Some(pb::Matrix {
                rows: k as u32,
                cols: hidden as u32,
                values: vec![0.0; k * hidden],
            }),
            start_step: req.start_step,
            next_step: req.start_step + k as u64,
            state: None,
            replayed: false,
        })),
    }
}

#[tonic::async_trait]
impl GruService for Echo {
    async fn list_models(
        &self,
        _: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        Err(Status::unimplemented("echo server"))
    }
    async fn get_model(
        &self,
        _: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::GetModelResponse>, Status> {
        Err(Status::unimplemented("echo server"))
    }
    async fn predict(
        &self,
        _: Request<pb::PredictRequest>,
    ) -> Result<Response<pb::PredictResponse>, Status> {
        Err(Status::unimplemented("echo server"))
    }
    async fn open_session(
        &self,
        req: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(pb::OpenSessionResponse {
            session_id: format!("echo-{id:016x}"),
            model: req.into_inner().model,
            version: 1,
            step_index: 0,
            created: true,
            ttl_ms: 600_000,
        }))
    }
    async fn step(
        &self,
        req: Request<pb::StepRequest>,
    ) -> Result<Response<pb::StepResponse>, Status> {
        Ok(Response::new(echo_reply(self.hidden, req.into_inner())))
    }

    type StepStreamStream = ReceiverStream<Result<pb::StepResponse, Status>>;

    async fn step_stream(
        &self,
        req: Request<Streaming<pb::StepRequest>>,
    ) -> Result<Response<Self::StepStreamStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(256);
        let hidden = self.hidden;
        tokio::spawn(async move {
            loop {
                let out = match inbound.message().await {
                    Ok(Some(m)) => Ok(echo_reply(hidden, m)),
                    Ok(None) => break,
                    Err(s) => Err(s),
                };
                let end = out.is_err();
                if tx.send(out).await.is_err() || end {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
    async fn get_session_state(
        &self,
        _: Request<pb::GetSessionStateRequest>,
    ) -> Result<Response<pb::GetSessionStateResponse>, Status> {
        Err(Status::unimplemented("echo server"))
    }
    async fn close_session(
        &self,
        _: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionResponse>, Status> {
        Ok(Response::new(pb::CloseSessionResponse { step_index: 0 }))
    }
}

// ---------------------------------------------------------------- client

type Client = GruServiceClient<Channel>;

/// The measured window, shared by every stream.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

#[derive(Default)]
struct StreamOutcome {
    latencies_us: Vec<u32>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

async fn connect(url: &str) -> Result<Channel, BoxError> {
    let ep = Endpoint::from_shared(url.to_string())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5));
    // The in-process server starts listening before its models are loaded: retry briefly.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ep.connect().await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(format!("connect {url}: {e}").into()),
        }
    }
}

fn client(ch: Channel) -> Client {
    GruServiceClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// The input width: from GetModel when the server answers it, else `--input-size`.
async fn input_size(c: &mut Client, args: &Args) -> Result<usize, BoxError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match c
            .get_model(pb::GetModelRequest {
                model: args.model.clone(),
                version: 0,
            })
            .await
        {
            Ok(r) => {
                let m = r.into_inner().model.ok_or("GetModel: no model in reply")?;
                if m.input_size as usize != args.input_size {
                    eprintln!(
                        "note: the server's model '{}' takes {} inputs; using that, not --input-size {}",
                        m.name, m.input_size, args.input_size
                    );
                }
                return Ok(m.input_size as usize);
            }
            // Models still loading.
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) if s.code() == tonic::Code::Unimplemented => return Ok(args.input_size),
            Err(s) => return Err(format!("GetModel '{}': {s}", args.model).into()),
        }
    }
}

async fn drive(
    args: &Args,
    url: &str,
    streams: usize,
    connections: usize,
    stats: StatsSource,
    mode: &str,
) -> Result<Results, BoxError> {
    let mut chans = Vec::with_capacity(connections);
    for _ in 0..connections {
        chans.push(connect(url).await?);
    }
    let mut c0 = client(chans[0].clone());
    let input_size = input_size(&mut c0, args).await?;

    // Open the sessions, concurrently over the connections.
    let mut opens = tokio::task::JoinSet::new();
    for s in 0..args.sessions {
        let mut c = client(chans[s % connections].clone());
        let model = args.model.clone();
        opens.spawn(async move {
            let r = c
                .open_session(pb::OpenSessionRequest {
                    model,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("OpenSession: {e}"))?;
            Ok::<_, String>((s, r.into_inner().session_id))
        });
    }
    let mut ids = vec![String::new(); args.sessions];
    while let Some(r) = opens.join_next().await {
        let (s, id) = r??;
        ids[s] = id;
    }

    // --idle-sessions: opened by 64 tasks at once, then left alone.
    let mut idle = tokio::task::JoinSet::new();
    for t in 0..64.min(args.idle_sessions) {
        let mut c = client(chans[t % connections].clone());
        let (model, n) = (args.model.clone(), (args.idle_sessions + 63 - t) / 64);
        idle.spawn(async move {
            for _ in 0..n {
                c.open_session(pb::OpenSessionRequest {
                    model: model.clone(),
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("OpenSession (idle): {e}"))?;
            }
            Ok::<_, String>(())
        });
    }
    while let Some(r) = idle.join_next().await {
        r??;
    }

    // --train: a job on the same server, running before the warm-up starts.
    let mut job = match args.train {
        true => Some(TrainJob::start(args, url).await?),
        false => None,
    };

    // Deal the sessions over the streams.
    let mut per_stream: Vec<Vec<String>> = vec![Vec::new(); streams];
    for (s, id) in ids.iter().enumerate() {
        per_stream[s % streams].push(id.clone());
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed ^ 0x5eed);
    let inputs: Arc<Vec<f32>> = Arc::new(
        (0..args.k * input_size)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect(),
    );
    let start = Instant::now() + Duration::from_millis(50);
    let window = Window {
        start: start + Duration::from_secs_f64(args.warmup_secs),
        end: start + Duration::from_secs_f64(args.warmup_secs + args.duration_secs),
    };
    let out_cols = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (j, sess) in per_stream.into_iter().enumerate() {
        let c = client(chans[j % connections].clone());
        let (inputs, out_cols) = (inputs.clone(), out_cols.clone());
        let (k, cols) = (args.k, input_size);
        tasks.spawn(async move {
            tokio::time::sleep_until(start.into()).await;
            run_stream(c, sess, k, cols, inputs, window, out_cols).await
        });
    }

    // --open-rate: paced OpenSession calls over the warm-up and the measurement.
    let opener = (args.open_rate > 0.0).then(|| {
        let mut c = client(chans[0].clone());
        let (model, every) = (
            args.model.clone(),
            Duration::from_secs_f64(1.0 / args.open_rate),
        );
        let rpc = args.rate_rpc;
        tokio::spawn(async move {
            let mut load = OpenLoad::default();
            let mut tick = tokio::time::interval_at(start.into(), every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while Instant::now() < window.end {
                tick.tick().await;
                load.attempted += 1;
                let r = match rpc {
                    RateRpc::OpenSession => c
                        .open_session(pb::OpenSessionRequest {
                            model: model.clone(),
                            ..Default::default()
                        })
                        .await
                        .map(drop),
                    RateRpc::GetModel => c
                        .get_model(pb::GetModelRequest {
                            model: model.clone(),
                            version: 0,
                        })
                        .await
                        .map(drop),
                };
                match r {
                    Ok(()) => load.opened += 1,
                    Err(s) if s.code() == tonic::Code::ResourceExhausted => load.refused += 1,
                    Err(_) => load.other_errors += 1,
                }
            }
            load
        })
    });

    // Snapshot the server's batch stats and the threads' CPU time at the window's edges.
    // The training job's state too (its RPCs go over a connection of its own).
    let snap = {
        let stats = stats.clone();
        let mut tc = job.as_ref().map(|j| j.client.clone());
        let job_id = job.as_ref().map(|j| j.job_id.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(window.start.into()).await;
            let w0 = stats.as_ref().and_then(|f| f()).map(|s| hist_snapshot(&s));
            let c0 = thread_cpu_snapshot();
            let t0 = Instant::now();
            let j0 = match (&mut tc, &job_id) {
                (Some(c), Some(id)) => Some(job_snapshot(c, id).await),
                _ => None,
            };
            tokio::time::sleep_until(window.end.into()).await;
            let w1 = stats.as_ref().and_then(|f| f()).map(|s| hist_snapshot(&s));
            let c1 = thread_cpu_snapshot();
            let secs = t0.elapsed().as_secs_f64();
            let j1 = match (&mut tc, &job_id) {
                (Some(c), Some(id)) => Some(job_snapshot(c, id).await),
                _ => None,
            };
            (w0.zip(w1), c0, c1, secs, j0.zip(j1))
        })
    };

    let mut all = StreamOutcome::default();
    while let Some(r) = tasks.join_next().await {
        let o = r?;
        all.latencies_us.extend(o.latencies_us);
        all.ok += o.ok;
        all.errors += o.errors;
        if all.first_error.is_none() {
            all.first_error = o.first_error;
        }
    }
    let (hists, cpu0, cpu1, cpu_secs, job_snaps) = snap.await?;
    let opens = match opener {
        Some(t) => Some(t.await?),
        None => None,
    };
    let training = match job.take() {
        Some(j) => Some(j.finish(job_snaps, args.duration_secs).await),
        None => None,
    };
    if args.target.is_some() {
        // Be tidy on an external server: close what we opened (errors ignored).
        let mut closes = tokio::task::JoinSet::new();
        for (s, id) in ids.into_iter().enumerate() {
            let mut c = client(chans[s % connections].clone());
            closes.spawn(async move {
                let _ = c
                    .close_session(pb::CloseSessionRequest { session_id: id })
                    .await;
            });
        }
        while closes.join_next().await.is_some() {}
    }
    drop(chans);

    let measured = args.duration_secs;
    let server_batches = hists.map(|(a, b)| batch_diff(&a, &b));
    let note = if server_batches.is_some() {
        "from the compute worker's WorkerStats, measured window only".to_string()
    } else if args.target.is_some() {
        "n/a: external server (its worker statistics are not visible to the client)".to_string()
    } else if args.echo {
        "n/a: echo server (no model, no batching)".to_string()
    } else {
        "n/a: the model was not loaded".to_string()
    };
    let lat = latency(&mut all.latencies_us);
    Ok(Results {
        mode: mode.to_string(),
        args: args.clone(),
        streams,
        connections,
        input_size,
        output_cols: out_cols.load(Ordering::Relaxed) as usize,
        measured_secs: measured,
        messages: all.ok,
        errors: all.errors,
        messages_per_sec: all.ok as f64 / measured,
        steps_per_sec: (all.ok * args.k as u64) as f64 / measured,
        latency: lat,
        server_batches,
        server_batches_note: note,
        thread_cpu: cpu_diff(&cpu0, &cpu1, cpu_secs),
        load_average: std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        first_error: all.first_error,
        training,
        opens,
    })
}

// ---------------------------------------------------------------- --train

type TrainClient = TrainingServiceClient<Channel>;

/// A training job started by --train.
struct TrainJob {
    client: TrainClient,
    job_id: String,
    report: TrainingReport,
}

/// Noisy sines: `input` features of different frequencies and phases; the
/// target is feature 0 at the next step (next-step regression).
fn training_data(args: &Args) -> (Vec<pb::TrainingSequence>, f64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed ^ 0x7a41);
    let i = args.train_input.max(1);
    let base = args.train_seq_len.max(3);
    let mut steps_total = 0usize;
    let seqs = (0..args.train_sequences.max(1))
        .map(|_| {
            let len = rng.random_range(base * 2 / 3..=base * 4 / 3).max(2);
            steps_total += len;
            let freq: Vec<f32> = (0..i).map(|_| rng.random_range(0.05f32..0.5)).collect();
            let phase: Vec<f32> = (0..i)
                .map(|_| rng.random_range(0.0f32..std::f32::consts::TAU))
                .collect();
            let x = |t: usize, f: usize| (freq[f] * t as f32 + phase[f]).sin();
            let mut inputs = Vec::with_capacity(len * i);
            let mut targets = Vec::with_capacity(len);
            for t in 0..len {
                for f in 0..i {
                    inputs.push(x(t, f) + rng.random_range(-0.05f32..0.05));
                }
                targets.push(x(t + 1, 0));
            }
            pb::TrainingSequence {
                inputs: Some(pb::Matrix {
                    rows: len as u32,
                    cols: i as u32,
                    values: inputs,
                }),
                targets: Some(pb::Matrix {
                    rows: len as u32,
                    cols: 1,
                    values: targets,
                }),
                ..Default::default()
            }
        })
        .collect::<Vec<_>>();
    let mean = steps_total as f64 / seqs.len() as f64;
    (seqs, mean)
}

fn snapshot_of(j: &pb::TrainingJob) -> JobSnapshot {
    let state = pb::JobState::try_from(j.state)
        .map(|s| s.as_str_name().trim_start_matches("JOB_STATE_").to_string())
        .unwrap_or_else(|_| format!("state {}", j.state));
    let p = j.progress.unwrap_or_default();
    JobSnapshot {
        state,
        epoch: p.epoch,
        batch: p.batch,
        batches_per_epoch: p.batches_per_epoch,
        batches_done: (p.epoch.max(1) as u64 - 1) * p.batches_per_epoch as u64 + p.batch as u64,
        sequences_per_second: p.sequences_per_second,
        train_loss: p.train_loss,
        elapsed_seconds: p.elapsed_seconds,
    }
}

async fn job_snapshot(c: &mut TrainClient, job_id: &str) -> JobSnapshot {
    match c
        .get_training_job(pb::GetTrainingJobRequest {
            job_id: job_id.to_string(),
        })
        .await
    {
        Ok(r) => snapshot_of(&r.into_inner()),
        Err(s) => JobSnapshot {
            state: format!("GetTrainingJob failed: {s}"),
            epoch: 0,
            batch: 0,
            batches_per_epoch: 0,
            batches_done: 0,
            sequences_per_second: f64::NAN,
            train_loss: f64::NAN,
            elapsed_seconds: f64::NAN,
        },
    }
}

impl TrainJob {
    /// Submits the job and waits until it has finished its first batch.
    async fn start(args: &Args, url: &str) -> Result<TrainJob, BoxError> {
        let mut client = TrainingServiceClient::new(connect(url).await?)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let (sequences, mean_seq_len) = training_data(args);
        let model = "lg-train".to_string();
        let req = pb::StartTrainingRequest {
            model: model.clone(),
            new_model: Some(pb::ModelSpec {
                input_size: args.train_input as u32,
                hidden_size: args.train_hidden as u32,
                num_layers: 1,
                output_size: 1,
                task: pb::Task::Regression as i32,
                description: "loadgen --train: noisy-sine next-step regression".into(),
                ..Default::default()
            }),
            hyperparameters: Some(pb::Hyperparameters {
                epochs: args.train_epochs as u32,
                batch_size: args.train_batch as u32,
                seed: args.seed,
                ..Default::default()
            }),
            sequences,
            ..Default::default()
        };
        let t0 = Instant::now();
        let r = client
            .start_training(req)
            .await
            .map_err(|s| format!("StartTraining: {s}"))?
            .into_inner();
        let submit_secs = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let deadline = t1 + Duration::from_secs(120);
        loop {
            let s = job_snapshot(&mut client, &r.job_id).await;
            match s.state.as_str() {
                "RUNNING" if s.batches_done > 0 => break,
                "QUEUED" | "RUNNING" if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                _ => {
                    return Err(format!(
                        "training job {} is {} after {:.1} s (expected RUNNING with progress)",
                        r.job_id,
                        s.state,
                        t1.elapsed().as_secs_f64()
                    )
                    .into())
                }
            }
        }
        let until_running_secs = t1.elapsed().as_secs_f64();
        eprintln!(
            "training job {} running ({} sequences, mean length {:.0}; first batch after {:.2} s; upload {:.2} s)",
            r.job_id, r.num_sequences, mean_seq_len, until_running_secs, submit_secs
        );
        Ok(TrainJob {
            client,
            job_id: r.job_id.clone(),
            report: TrainingReport {
                job_id: r.job_id,
                model,
                input_size: args.train_input,
                hidden_size: args.train_hidden,
                num_sequences: r.num_sequences as usize,
                mean_seq_len,
                batch_size: args.train_batch,
                epochs: args.train_epochs,
                threads_per_job: args.train_threads.max(1),
                nice: args.train_nice,
                submit_secs,
                until_running_secs,
                at_window_start: None,
                at_window_end: None,
                batches_in_window: 0,
                sequences_per_second_in_window: f64::NAN,
                running_throughout: false,
                final_state: String::new(),
            },
        })
    }

    /// Records the window's snapshots, cancels the job and waits for it to stop.
    async fn finish(
        mut self,
        snaps: Option<(JobSnapshot, JobSnapshot)>,
        secs: f64,
    ) -> TrainingReport {
        let mut rep = self.report;
        if let Some((a, b)) = snaps {
            rep.batches_in_window = b.batches_done.saturating_sub(a.batches_done);
            rep.sequences_per_second_in_window =
                (rep.batches_in_window * rep.batch_size as u64) as f64 / secs.max(1e-9);
            rep.running_throughout = a.state == "RUNNING" && b.state == "RUNNING";
            rep.at_window_start = Some(a);
            rep.at_window_end = Some(b);
        }
        let c = &mut self.client;
        rep.final_state = match c
            .cancel_training(pb::CancelTrainingRequest {
                job_id: self.job_id.clone(),
            })
            .await
        {
            Err(s) => format!("CancelTraining failed: {s}"),
            Ok(_) => {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let s = job_snapshot(c, &self.job_id).await;
                    if !matches!(s.state.as_str(), "QUEUED" | "RUNNING")
                        || Instant::now() > deadline
                    {
                        break s.state;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        rep
    }
}

/// One stream: its sessions in a closed loop. Replies come in request order,
/// so a FIFO of (session, send time) pairs them with their requests.
async fn run_stream(
    mut c: Client,
    sessions: Vec<String>,
    k: usize,
    cols: usize,
    inputs: Arc<Vec<f32>>,
    w: Window,
    out_cols: Arc<AtomicU64>,
) -> StreamOutcome {
    let mut o = StreamOutcome::default();
    if sessions.is_empty() {
        return o;
    }
    let (tx, rx) = mpsc::channel::<pb::StepRequest>(sessions.len() + 1);
    let mut next_rid: u64 = 0;
    let msg = |s: usize, rid: u64| pb::StepRequest {
        session_id: sessions[s].clone(),
        inputs: Some(pb::Matrix {
            rows: k as u32,
            cols: cols as u32,
            values: inputs.as_ref().clone(),
        }),
        request_id: rid,
        ..Default::default()
    };
    let mut inflight: VecDeque<(usize, u64, Instant)> = VecDeque::with_capacity(sessions.len());
    for s in 0..sessions.len() {
        let _ = tx.try_send(msg(s, next_rid));
        inflight.push_back((s, next_rid, Instant::now()));
        next_rid += 1;
    }
    let mut replies = match c.step_stream(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            o.errors += 1;
            o.first_error = Some(format!("StepStream: {e}"));
            return o;
        }
    };
    let mut tx = Some(tx);
    loop {
        let m = match tokio::time::timeout(Duration::from_secs(30), replies.message()).await {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                o.errors += 1;
                o.first_error
                    .get_or_insert_with(|| format!("stream ended: {e}"));
                break;
            }
            Err(_) => {
                o.first_error
                    .get_or_insert_with(|| "no reply for 30 s".into());
                break;
            }
        };
        let now = Instant::now();
        let Some((s, rid, sent)) = inflight.pop_front() else {
            o.first_error
                .get_or_insert_with(|| "a reply with nothing in flight".into());
            break;
        };
        if m.request_id != rid {
            o.first_error.get_or_insert_with(|| {
                format!(
                    "replies out of order: got request_id {} expecting {rid}",
                    m.request_id
                )
            });
        }
        let in_window = sent >= w.start && now <= w.end;
        match m.result {
            Some(pb::step_response::Result::Ok(r)) => {
                if in_window {
                    o.ok += 1;
                    o.latencies_us
                        .push((now - sent).as_micros().min(u32::MAX as u128) as u32);
                }
                if let Some(mx) = r.outputs {
                    out_cols.store(mx.cols as u64, Ordering::Relaxed);
                }
            }
            Some(pb::step_response::Result::Error(e)) => {
                if in_window {
                    o.errors += 1;
                }
                o.first_error
                    .get_or_insert_with(|| format!("step error {}: {}", e.code, e.message));
            }
            None => {
                o.errors += 1;
            }
        }
        if now < w.end {
            if let Some(t) = &tx {
                if t.send(msg(s, next_rid)).await.is_err() {
                    break;
                }
                inflight.push_back((s, next_rid, Instant::now()));
                next_rid += 1;
            }
        } else if inflight.is_empty() {
            // Everything answered: end the request stream; the server then ends its side.
            tx = None;
        }
    }
    drop(tx);
    o
}

// ---------------------------------------------------------------- statistics

fn latency(v: &mut [u32]) -> Latency {
    if v.is_empty() {
        return Latency {
            count: 0,
            p50_us: f64::NAN,
            p95_us: f64::NAN,
            p99_us: f64::NAN,
            max_us: f64::NAN,
            mean_us: f64::NAN,
        };
    }
    v.sort_unstable();
    let q = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1] as f64;
    Latency {
        count: v.len() as u64,
        p50_us: q(0.50),
        p95_us: q(0.95),
        p99_us: q(0.99),
        max_us: *v.last().unwrap() as f64,
        mean_us: v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64,
    }
}

type Hist = (u64, u64, [u64; BATCH_BUCKETS]);

fn hist_snapshot(s: &WorkerStats) -> Hist {
    let mut h = [0u64; BATCH_BUCKETS];
    for (d, a) in h.iter_mut().zip(s.batch_size_hist.iter()) {
        *d = a.load(Ordering::Relaxed);
    }
    (
        s.batches.load(Ordering::Relaxed),
        s.session_steps.load(Ordering::Relaxed),
        h,
    )
}

fn batch_diff(a: &Hist, b: &Hist) -> BatchStats {
    let batches = b.0 - a.0;
    let session_steps = b.1 - a.1;
    let histogram = (0..BATCH_BUCKETS)
        .filter(|&i| b.2[i] > a.2[i])
        .map(|i| (1u64 << i, b.2[i] - a.2[i]))
        .collect();
    BatchStats {
        batches,
        session_steps,
        mean_batch: if batches > 0 {
            session_steps as f64 / batches as f64
        } else {
            0.0
        },
        histogram,
    }
}

/// CPU ticks (user + system) of every thread of this process, by thread name.
fn thread_cpu_snapshot() -> HashMap<u64, (String, u64)> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(tid) = e.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "tid (comm) state ..." — comm may hold spaces; fields after ')' start at field 3.
        let (Some(l), Some(r)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[l + 1..r].to_string();
        let f: Vec<&str> = stat[r + 2..].split_whitespace().collect();
        let ticks = f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        out.insert(tid, (name, ticks));
    }
    out
}

fn cpu_diff(
    a: &HashMap<u64, (String, u64)>,
    b: &HashMap<u64, (String, u64)>,
    secs: f64,
) -> Vec<ThreadCpu> {
    // Clock ticks are 100 per second on Linux (USER_HZ).
    let hz = 100.0;
    let mut groups: Vec<(String, usize, u64)> = Vec::new();
    for (tid, (name, t1)) in b {
        let t0 = a.get(tid).map_or(0, |x| x.1);
        let group = if name.starts_with("gru-worker") {
            "server compute worker".to_string()
        } else if name.starts_with("lg-server") {
            "server runtime".to_string()
        } else if name.starts_with("train-") {
            "training threads".to_string()
        } else if name.starts_with("lg-client") {
            "client runtime".to_string()
        } else if name == "loadgen" {
            // The main thread, and unnamed threads (rayon's pool when --compute-threads > 1).
            "main + unnamed (rayon pool)".to_string()
        } else {
            format!("other ({name})")
        };
        match groups.iter_mut().find(|g| g.0 == group) {
            Some(g) => {
                g.1 += 1;
                g.2 += t1.saturating_sub(t0);
            }
            None => groups.push((group, 1, t1.saturating_sub(t0))),
        }
    }
    groups.sort_by(|x, y| x.0.cmp(&y.0));
    groups
        .into_iter()
        .map(|(group, threads, ticks)| ThreadCpu {
            group,
            threads,
            cores: ticks as f64 / hz / secs.max(1e-9),
        })
        .collect()
}

fn print_results(r: &Results) {
    let a = &r.args;
    println!(
        "mode: {} | sessions {} over {} streams on {} connections | k = {} | I = {} | output cols {} | {:.1} s measured after {:.1} s warm-up",
        r.mode, a.sessions, r.streams, r.connections, a.k, r.input_size, r.output_cols, r.measured_secs, a.warmup_secs
    );
    println!(
        "throughput: {:.0} steps/s, {:.0} messages/s ({} messages, {} errors)",
        r.steps_per_sec, r.messages_per_sec, r.messages, r.errors
    );
    let l = &r.latency;
    println!(
        "round trip per message: p50 {:.0} µs, p95 {:.0} µs, p99 {:.0} µs, max {:.0} µs, mean {:.0} µs",
        l.p50_us, l.p95_us, l.p99_us, l.max_us, l.mean_us
    );
    match &r.server_batches {
        Some(b) => {
            println!(
                "server batches: {} batches, {} session-steps, mean batch {:.1} ({})",
                b.batches, b.session_steps, b.mean_batch, r.server_batches_note
            );
            let hist: Vec<String> = b
                .histogram
                .iter()
                .map(|(lo, n)| {
                    if *lo == 1 {
                        format!("1: {n}")
                    } else {
                        format!("{lo}-{}: {n}", lo * 2 - 1)
                    }
                })
                .collect();
            println!("  batch size histogram: {}", hist.join(", "));
        }
        None => println!("server batches: {}", r.server_batches_note),
    }
    let cpu: Vec<String> = r
        .thread_cpu
        .iter()
        .map(|t| format!("{} ×{}: {:.2}", t.group, t.threads, t.cores))
        .collect();
    println!("CPU (cores busy, this process): {}", cpu.join(", "));
    if let Some(o) = &r.opens {
        println!(
            "{:?} load ({} idle sessions held): {} attempted, {} answered, {} refused (RESOURCE_EXHAUSTED), {} other errors",
            a.rate_rpc, a.idle_sessions, o.attempted, o.opened, o.refused, o.other_errors
        );
    }
    if let Some(t) = &r.training {
        println!(
            "training job {} ({} × H {} → 1, {} sequences of ~{:.0} steps, batch {}; threads {}, nice {}): {}",
            t.job_id,
            t.input_size,
            t.hidden_size,
            t.num_sequences,
            t.mean_seq_len,
            t.batch_size,
            t.threads_per_job,
            t.nice,
            if t.running_throughout {
                "RUNNING at both edges of the window"
            } else {
                "NOT running throughout the window"
            }
        );
        for (edge, s) in [("start", &t.at_window_start), ("end", &t.at_window_end)] {
            if let Some(s) = s {
                println!(
                    "  window {edge}: {} epoch {} batch {}/{} ({} batches done), {:.0} seqs/s in this epoch, loss {:.4}",
                    s.state, s.epoch, s.batch, s.batches_per_epoch, s.batches_done, s.sequences_per_second, s.train_loss
                );
            }
        }
        println!(
            "  in the window: {} batches, ~{:.0} seqs/s; after CancelTraining: {}",
            t.batches_in_window, t.sequences_per_second_in_window, t.final_state
        );
    }
    println!("load average at end: {}", r.load_average);
    if let Some(e) = &r.first_error {
        println!("first error: {e}");
    }
}
