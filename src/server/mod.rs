//! `run(config, listener, shutdown)`: the whole server, testable on port 0.

pub mod metrics;
pub mod telemetry;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic_health::ServingStatus;

use crate::engine::{Engine, EngineConfig};
use crate::service::pb::gru_service_server::GruServiceServer;
use crate::service::pb::training_service_server::TrainingServiceServer;
use crate::service::training::TrainingServiceImpl;
use crate::service::{pb, GruServiceImpl};

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
    /// Where to serve Prometheus `/metrics` over HTTP; None = not served.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// TLS on the gRPC port (rustls); None = plaintext.
    pub tls: Option<TlsFiles>,
    /// Bearer tokens; the default (none) turns authentication off.
    pub auth: crate::service::auth::Auth,
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
            tls: None,
            auth: crate::service::auth::Auth::default(),
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
}

const GRU_SERVICE: &str = "gru.v1.GruService";
const TRAINING_SERVICE: &str = "gru.v1.TrainingService";
/// Health-checked service names: the whole server ("") and each service.
const HEALTH_NAMES: [&str; 3] = ["", GRU_SERVICE, TRAINING_SERVICE];

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
    if let Some(addr) = config.metrics_listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| ServerError::Metrics(format!("bind {addr}: {e}")))?;
        tracing::info!(addr = ?listener.local_addr().ok(), "serving Prometheus metrics at /metrics");
        tokio::spawn(metrics::serve(listener, cancel.clone()));
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    // NOT_SERVING until the models are loaded.
    for svc in HEALTH_NAMES {
        health
            .set_service_status(svc, ServingStatus::NotServing)
            .await;
    }
    let cell = engine;

    let engine_config = config.engine.clone();
    let config_metrics = config.metrics_listen.is_some();
    let (load_cell, load_health, load_cancel) = (cell.clone(), health.clone(), cancel.clone());
    let loader = tokio::spawn(async move {
        let loaded = tokio::task::spawn_blocking(move || Engine::load(engine_config)).await;
        let engine = match loaded {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "loading models failed; serving NOT_SERVING");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "model loader panicked");
                return;
            }
        };
        let empty = engine.registry.is_empty();
        let sessions = engine.sessions.clone();
        let registry = engine.registry.clone();
        let poll = engine.config.model_poll;
        if config_metrics {
            tokio::spawn(metrics::refresh_gauges(engine.clone(), load_cancel.clone()));
        }
        let _ = load_cell.set(engine);
        // SERVING once a model is served: at once, or when a rescan or a
        // training job publishes the first one.
        let mut serving = false;
        if !empty {
            mark_serving(&load_health).await;
            serving = true;
        } else {
            tracing::warn!(
                "no model loaded; NOT_SERVING until one is published or found by a rescan"
            );
        }
        // Expire idle sessions in the background (lookups also check lazily),
        // and rescan the repository when asked to.
        let period =
            (sessions.ttl() / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
        let mut tick = tokio::time::interval(period);
        let mut rescan = tokio::time::interval(if poll.is_zero() {
            Duration::from_secs(3600)
        } else {
            poll
        });
        rescan.tick().await;
        loop {
            tokio::select! {
                _ = load_cancel.cancelled() => break,
                _ = tick.tick() => {
                    let n = sessions.sweep();
                    if n > 0 {
                        tracing::info!(expired = n, "expired idle sessions");
                    }
                    if !serving && !registry.is_empty() {
                        mark_serving(&load_health).await;
                        serving = true;
                    }
                }
                _ = rescan.tick(), if !poll.is_zero() => {
                    let reg = registry.clone();
                    match tokio::task::spawn_blocking(move || reg.scan()).await {
                        Ok(Ok(added)) if !added.is_empty() => {
                            tracing::info!(?added, "rescan loaded new model versions");
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "rescanning the model repository failed"),
                        Err(e) => tracing::warn!(error = %e, "rescan task failed"),
                    }
                }
            }
        }
    });

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // grpcurl 1.8 and Python's reflection client speak only v1alpha.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let service = GruServiceImpl::new(
        cell.clone(),
        cancel.clone(),
        config.max_streams,
        config.stream_idle_timeout,
    );
    // Authentication wraps the model services; health and reflection stay open.
    let gru = InterceptedService::new(
        GruServiceServer::new(service)
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes),
        config.auth.interceptor(false),
    );
    let training = InterceptedService::new(
        TrainingServiceServer::new(TrainingServiceImpl::new(cell.clone(), cancel.clone()))
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes),
        config.auth.interceptor(true),
    );

    let addr = listener.local_addr().ok();
    // TCP_NODELAY: a step reply is one small write; with Nagle's algorithm it
    // waits for the peer's delayed ACK (~40 ms) whenever a previous segment
    // is unacknowledged.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tracing::info!(?addr, "listening");
    let stop_cancel = cancel.clone();
    let mut stop_health = health.clone();
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
    tracing::info!(
        tls = config.tls.is_some(),
        auth = config.auth.enabled(),
        "security"
    );
    let server = builder
        .layer(metrics::RpcMetricsLayer)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(gru)
        .add_service(training)
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections; ending open streams");
            for svc in HEALTH_NAMES {
                stop_health
                    .set_service_status(svc, ServingStatus::NotServing)
                    .await;
                // Dropping the status channel ends open health Watch streams
                // (after they hear NOT_SERVING), which would otherwise hold
                // the drain for drain_timeout; re-adding it keeps Check
                // answering NOT_SERVING while draining.
                stop_health.clear_service_status(svc).await;
                stop_health
                    .set_service_status(svc, ServingStatus::NotServing)
                    .await;
            }
            stop_cancel.cancel();
        });
    let drain = config.drain_timeout;
    let result = tokio::select! {
        r = server => r.map_err(ServerError::from),
        _ = async { cancel.cancelled().await; tokio::time::sleep(drain).await } => {
            tracing::warn!(?drain, "drain timeout: closing with requests still in flight");
            Ok(())
        }
    };
    cancel.cancel();
    let _ = loader.await;
    if let Some(engine) = cell.get().cloned() {
        let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
    }
    tracing::info!("stopped");
    result
}

async fn mark_serving(health: &tonic_health::server::HealthReporter) {
    for svc in HEALTH_NAMES {
        health.set_service_status(svc, ServingStatus::Serving).await;
    }
    tracing::info!("models loaded; serving");
}

/// TLS settings of the `gru-serve health` probe.
#[derive(Debug, Clone, Default)]
pub struct ProbeTls {
    pub ca: std::path::PathBuf,
    pub domain: Option<String>,
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// The `gru-serve health` probe: asks `addr`'s grpc.health.v1 Check for
/// `service` and says whether it answered SERVING. Errors name what failed
/// (bad address, unreachable, timeout, unknown service, TLS files).
pub async fn check_health(
    addr: &str,
    service: &str,
    timeout: Duration,
    tls: Option<&ProbeTls>,
) -> Result<bool, String> {
    use tonic_health::pb::health_check_response::ServingStatus as Wire;
    let mut endpoint = tonic::transport::Endpoint::from_shared(addr.to_string())
        .map_err(|e| format!("address '{addr}': {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    if let Some(t) = tls {
        let read =
            |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let mut c = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(&t.ca)?));
        if let Some(d) = &t.domain {
            c = c.domain_name(d.clone());
        }
        if let Some((cert, key)) = &t.client {
            c = c.identity(tonic::transport::Identity::from_pem(
                read(cert)?,
                read(key)?,
            ));
        }
        endpoint = endpoint.tls_config(c).map_err(|e| format!("TLS: {e}"))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let reply = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|s| format!("health check: {:?}: {}", s.code(), s.message()))?;
    Ok(reply.into_inner().status == Wire::Serving as i32)
}
