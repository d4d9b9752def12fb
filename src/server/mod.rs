//! `run(config, listener, shutdown)`: the whole server, testable on port 0.

mod health;
pub mod http;
pub mod metrics;
mod process;
pub mod rpc;
pub mod telemetry;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic_health::server::HealthReporter;

use crate::engine::{Engine, EngineConfig};
use crate::service::pb::gru_service_server::GruServiceServer;
use crate::service::pb::training_service_server::TrainingServiceServer;
use crate::service::training::TrainingServiceImpl;
use crate::service::triton::pb::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::service::triton::{self, grpc::TritonGrpc, Triton, TritonSettings};
use crate::service::{pb, GruServiceImpl};

pub use health::{check_health, endpoint_uri, error_chain, probe_health, Health, ProbeTls};

/// Settings of the server; built from the command line in `config.rs`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub engine: EngineConfig,
    /// Largest request or response message (Predict batches can be large).
    pub max_message_bytes: usize,
    /// Most concurrently open StepStream streams.
    pub max_streams: usize,
    /// How long shutdown waits for in-flight requests before giving up.
    pub drain_timeout: Duration,
    /// A StepStream with no message for this long is ended.
    pub stream_idle_timeout: Duration,
    /// Whole-request deadline (unary RPCs; a stream's opening); None = none.
    pub request_timeout: Option<Duration>,
    /// Requests one connection may have in flight (HTTP/2 streams).
    pub max_concurrent_streams_per_connection: u32,
    /// HTTP/2 keepalive pings: interval, and how long to wait for the ack.
    pub http2_keepalive_interval: Option<Duration>,
    pub http2_keepalive_timeout: Duration,
    /// Where to serve Prometheus `/metrics` and the HTTP health checks
    /// (`/livez`, `/readyz`); None = not served.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// One log line per RPC (method, code, duration, peer, model, session).
    pub access_log: bool,
    /// Between the shutdown signal and closing the gRPC listener: readiness
    /// (HTTP and gRPC health) already says not ready, requests still served,
    /// so load balancers stop sending new work first.
    pub shutdown_delay: Duration,
    /// TLS on the gRPC port (rustls); None = plaintext.
    pub tls: Option<TlsFiles>,
    /// Bearer tokens; the default (none) turns authentication off.
    pub auth: crate::service::auth::Auth,
    /// The KServe v2 / Triton HTTP/JSON port; None = not served.
    pub http_listen: Option<std::net::SocketAddr>,
    /// A second gRPC port with the same services (Triton's 8001); None = none.
    pub triton_grpc_listen: Option<std::net::SocketAddr>,
}

/// PEM files for TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<std::path::PathBuf>,
}

impl TlsFiles {
    fn server_config(&self) -> Result<tonic::transport::ServerTlsConfig, ServerError> {
        let read = |p: &std::path::Path, what: &str| {
            std::fs::read(p).map_err(|e| ServerError::Tls(format!("{what} {}: {e}", p.display())))
        };
        let identity = tonic::transport::Identity::from_pem(
            read(&self.cert, "certificate")?,
            read(&self.key, "private key")?,
        );
        let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca {
            tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(
                ca,
                "client CA",
            )?));
        }
        Ok(tls)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            engine: EngineConfig::default(),
            max_message_bytes: 64 << 20,
            max_streams: 4096,
            drain_timeout: Duration::from_secs(10),
            stream_idle_timeout: Duration::from_secs(300),
            request_timeout: Some(Duration::from_secs(120)),
            max_concurrent_streams_per_connection: 1024,
            http2_keepalive_interval: Some(Duration::from_secs(30)),
            http2_keepalive_timeout: Duration::from_secs(10),
            metrics_listen: None,
            access_log: false,
            shutdown_delay: Duration::ZERO,
            tls: None,
            auth: crate::service::auth::Auth::default(),
            http_listen: None,
            triton_grpc_listen: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("{0}")]
    Engine(#[from] crate::engine::EngineError),
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Bind(String),
}

/// Serves until `shutdown` resolves, then stops accepting, ends open streams,
/// drains in-flight requests (at most `drain_timeout`), and stops the workers.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    run_with_engine(config, listener, shutdown, Arc::new(OnceLock::new())).await
}

/// [`run`], also publishing the engine into `engine` once its models are
/// loaded, so an embedder (the load generator, tests) can read the workers'
/// statistics. The cell must be empty.
pub async fn run_with_engine(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    engine: Arc<OnceLock<Engine>>,
) -> Result<(), ServerError> {
    let cancel = CancellationToken::new();
    let ready = Arc::new(http::Readiness::new(engine.clone()));
    // The HTTP port outlives the drain, so `/readyz` says 503 throughout it.
    let http_stop = CancellationToken::new();
    let _stop_http = http_stop.clone().drop_guard();
    if let Some(addr) = config.metrics_listen {
        serve_http(addr, ready.clone(), http_stop.clone()).await?;
    }
    let (health, health_service) = health::not_serving_reporter().await;
    // Models load in the background: the port answers (NOT_SERVING) meanwhile.
    let loader = tokio::spawn(start_engine(
        config.engine.clone(),
        config.metrics_listen.is_some(),
        engine.clone(),
        health.clone(),
        ready.clone(),
        cancel.clone(),
    ));

    let (reflection_v1, reflection_v1alpha) = reflection()?;
    // Authentication wraps the model services; health and reflection stay open.
    let gru = gru_service(&config, &engine, &cancel);
    let training = training_service(&config, &engine, &cancel);
    let triton_core = triton_core(&config, &engine, &ready);
    let triton = triton_service(&config, &triton_core, &cancel);
    if let Some(addr) = config.http_listen {
        serve_v2_http(addr, &config, triton_core, http_stop.clone()).await;
    }
    let incoming = incoming_all(listener, config.triton_grpc_listen).await?;
    let builder = transport(&config)?;
    tracing::info!(
        tls = config.tls.is_some(),
        auth = config.auth.enabled(),
        "security"
    );
    let server = builder
        .layer(rpc::RpcLayer {
            access_log: config.access_log,
        })
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(gru)
        .add_service(training)
        .add_service(triton)
        .serve_with_incoming_shutdown(
            incoming,
            stop_accepting(
                shutdown,
                health,
                ready,
                config.shutdown_delay,
                cancel.clone(),
            ),
        );
    let result = drain(server, &cancel, config.drain_timeout).await;
    cancel.cancel();
    let _ = loader.await;
    stop_engine(&engine).await;
    tracing::info!("stopped");
    result
}

/// Binds the HTTP port and serves `/metrics`, `/livez` and `/readyz` on it
/// until `stop`.
async fn serve_http(
    addr: std::net::SocketAddr,
    ready: Arc<http::Readiness>,
    stop: CancellationToken,
) -> Result<(), ServerError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| ServerError::Metrics(format!("bind {addr}: {e}")))?;
    // The recorder first: what is recorded before it is installed is lost.
    metrics::handle();
    let addr = listener.local_addr().unwrap_or(addr);
    tracing::info!(%addr, "serving Prometheus /metrics and HTTP health /livez, /readyz");
    tokio::spawn(http::serve(listener, ready, stop));
    Ok(())
}

/// Loads the models (off the async workers), publishes the engine into
/// `cell`, turns SERVING once a model is served, and keeps the engine's
/// housekeeping running until `cancel`. A failed load leaves the server
/// NOT_SERVING.
async fn start_engine(
    config: EngineConfig,
    gauges: bool,
    cell: Arc<OnceLock<Engine>>,
    health: HealthReporter,
    ready: Arc<http::Readiness>,
    cancel: CancellationToken,
) {
    let max_sessions = config.max_sessions;
    let engine = match tokio::task::spawn_blocking(move || Engine::load(config)).await {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "loading models failed; serving NOT_SERVING");
            ::metrics::counter!("gru_model_load_failures_total").increment(1);
            ready.load_failed(e.to_string());
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "model loader panicked");
            ready.load_failed(format!("the model loader panicked: {e}"));
            return;
        }
    };
    if gauges {
        tokio::spawn(metrics::refresh_gauges(
            engine.clone(),
            max_sessions,
            cancel.clone(),
        ));
    }
    engine.spawn_store_tasks(cancel.clone());
    let _ = cell.set(engine.clone());
    if !engine.has_models() {
        tracing::warn!(
            reason = %engine.no_models_reason(),
            "NOT_SERVING until a model is published or found by a rescan"
        );
    }
    let (serving_tx, serving) = tokio::sync::oneshot::channel();
    let turn_serving = async {
        // Err: housekeeping stopped before any model was served.
        if serving.await.is_ok() {
            health::mark_serving(&health).await;
        }
    };
    tokio::join!(engine.housekeeping(cancel, serving_tx), turn_serving);
}

/// Server reflection, v1 and v1alpha.
fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    ServerError,
> {
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(triton::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // grpcurl 1.8 and Python's reflection client speak only v1alpha.
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(triton::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    Ok((v1, v1alpha))
}

/// The gru.v1 model service, behind authentication.
fn gru_service(
    config: &ServerConfig,
    engine: &Arc<OnceLock<Engine>>,
    cancel: &CancellationToken,
) -> InterceptedService<GruServiceServer<GruServiceImpl>, impl Interceptor + Clone> {
    let service = GruServiceImpl::new(
        engine.clone(),
        cancel.clone(),
        config.max_streams,
        config.stream_idle_timeout,
    );
    InterceptedService::new(
        GruServiceServer::new(service)
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes),
        config.auth.interceptor(false),
    )
}

/// The training service, behind authentication with an admin token.
fn training_service(
    config: &ServerConfig,
    engine: &Arc<OnceLock<Engine>>,
    cancel: &CancellationToken,
) -> InterceptedService<TrainingServiceServer<TrainingServiceImpl>, impl Interceptor + Clone> {
    InterceptedService::new(
        TrainingServiceServer::new(TrainingServiceImpl::new(engine.clone(), cancel.clone()))
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes),
        config.auth.interceptor(true),
    )
}

/// The Triton protocol's core, shared by its gRPC service and HTTP port.
fn triton_core(
    config: &ServerConfig,
    engine: &Arc<OnceLock<Engine>>,
    ready: &Arc<http::Readiness>,
) -> Arc<Triton> {
    let ready = ready.clone();
    Arc::new(Triton::new(
        engine.clone(),
        TritonSettings {
            max_batch_size: config.engine.max_predict_sequences,
            max_sequences: config.engine.max_sessions,
        },
        Arc::new(move || ready.not_ready()),
    ))
}

/// `inference.GRPCInferenceService`, behind authentication like gru.v1.
fn triton_service(
    config: &ServerConfig,
    core: &Arc<Triton>,
    cancel: &CancellationToken,
) -> InterceptedService<GrpcInferenceServiceServer<TritonGrpc>, impl Interceptor + Clone> {
    let service = TritonGrpc::new(
        core.clone(),
        cancel.clone(),
        config.max_streams,
        config.stream_idle_timeout,
    );
    InterceptedService::new(
        GrpcInferenceServiceServer::new(service)
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes),
        config.auth.interceptor(false),
    )
}

/// Binds the v2 HTTP/JSON port and serves it until `stop`. A port that
/// cannot be bound is logged, not fatal: the default (8000, like Triton's)
/// may be taken on a shared host, and gRPC still serves.
async fn serve_v2_http(
    addr: std::net::SocketAddr,
    config: &ServerConfig,
    core: Arc<Triton>,
    stop: CancellationToken,
) {
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot bind the KServe v2 HTTP port (--http-listen); serving without it");
            return;
        }
    };
    let addr = listener.local_addr().unwrap_or(addr);
    tracing::info!(%addr, "serving the KServe v2 / Triton HTTP protocol");
    let ctx = triton::http::HttpContext {
        core,
        auth: config.auth.clone(),
        max_body_bytes: config.max_message_bytes,
    };
    tokio::spawn(triton::http::serve(listener, ctx, stop));
}

/// The connections of `listener` and, when set, of a second gRPC address.
async fn incoming_all(
    listener: TcpListener,
    second: Option<std::net::SocketAddr>,
) -> Result<impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>>, ServerError> {
    use tokio_stream::StreamExt;
    let extra: std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> + Send>,
    > = match second {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| ServerError::Bind(format!("--triton-grpc-listen {addr}: {e}")))?;
            Box::pin(incoming(l))
        }
        None => Box::pin(tokio_stream::pending()),
    };
    Ok(incoming(listener).merge(extra))
}

/// The accepted connections of `listener`.
fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    let addr = listener.local_addr().ok();
    // TCP_NODELAY: a step reply is one small write; with Nagle's algorithm it
    // waits for the peer's delayed ACK (~40 ms) whenever a previous segment
    // is unacknowledged.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    match addr {
        Some(addr) => tracing::info!(%addr, "listening"),
        None => tracing::info!("listening"),
    }
    incoming
}

/// The transport's settings: HTTP/2 limits and keepalives, the request
/// deadline, TLS.
fn transport(config: &ServerConfig) -> Result<tonic::transport::Server, ServerError> {
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(config.max_concurrent_streams_per_connection)
        .http2_keepalive_interval(config.http2_keepalive_interval)
        .http2_keepalive_timeout(Some(config.http2_keepalive_timeout))
        .tcp_keepalive(Some(Duration::from_secs(60)));
    if let Some(t) = config.request_timeout {
        builder = builder.timeout(t);
    }
    if let Some(tls) = &config.tls {
        builder = builder
            .tls_config(tls.server_config()?)
            .map_err(|e| ServerError::Tls(e.to_string()))?;
    }
    Ok(builder)
}

/// Resolves when `shutdown` does, once readiness says not ready (HTTP and
/// gRPC health), `delay` has passed, and open streams have been told to end
/// (`cancel`); then the server stops accepting.
async fn stop_accepting(
    shutdown: impl Future<Output = ()>,
    mut health: HealthReporter,
    ready: Arc<http::Readiness>,
    delay: Duration,
    cancel: CancellationToken,
) {
    shutdown.await;
    ready.drain();
    health::mark_draining(&mut health).await;
    if !delay.is_zero() {
        tracing::info!(
            delay_secs = delay.as_secs_f64(),
            "shutting down: not ready; still serving until the delay has passed"
        );
        tokio::time::sleep(delay).await;
    }
    tracing::info!("shutting down: no new connections; ending open streams");
    cancel.cancel();
}

/// Runs `server` until it has drained, or until `drain` has passed since
/// shutdown began (`cancel`), whichever is first.
async fn drain(
    server: impl Future<Output = Result<(), tonic::transport::Error>>,
    cancel: &CancellationToken,
    drain: Duration,
) -> Result<(), ServerError> {
    tokio::select! {
        r = server => r.map_err(ServerError::from),
        _ = async { cancel.cancelled().await; tokio::time::sleep(drain).await } => {
            tracing::warn!(drain_secs = drain.as_secs_f64(), "drain timeout: closing with requests still in flight");
            Ok(())
        }
    }
}

/// Stops the engine's workers and training jobs, if it was loaded, then
/// writes every session to the session store: after the drain and the
/// workers, so what is written is final.
async fn stop_engine(engine: &OnceLock<Engine>) {
    if let Some(engine) = engine.get().cloned() {
        let e = engine.clone();
        let _ = tokio::task::spawn_blocking(move || e.shutdown()).await;
        let started = std::time::Instant::now();
        match engine.flush_sessions().await {
            Ok(n) if n > 0 => tracing::info!(
                sessions = n,
                store = %engine.session_store(),
                secs = started.elapsed().as_secs_f64(),
                "sessions written for the next start"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!(
                error = %e,
                store = %engine.session_store(),
                "sessions could not be written at shutdown: progress since the last checkpoint is lost"
            ),
        }
    }
}
